-- wrk script for benches/load/run.sh's scopegate+tokens target: the same request as
-- post.lua (POST /v1/chat/completions, the same ~100-byte JSON body), but the
-- Authorization header rotates over every identity token in the file $SG_TOKENS (one a
-- line, minted by examples/mint_tokens.rs for as many distinct subjects): request k
-- presents token (SG_TOKENS_START + k) mod n, so each subject is seen once every n requests.
-- The requests are formatted once, in init, so that the rotation costs wrk nothing per
-- request. With one wrk thread (-t1, as run.sh runs it) the rotation is a single sequence.
-- At the end it prints the "WRKRESULT k=v ..." line run.sh parses, as post.lua does.
local body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in five short words, please."}]}'
local requests = {}
local n, i = 0, 0

function init(args)
  local path = os.getenv("SG_TOKENS")
  if not path or path == "" then error("SG_TOKENS is not set") end
  for line in io.lines(path) do
    if line ~= "" then
      n = n + 1
      requests[n] = wrk.format("POST", "/v1/chat/completions",
        { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. line }, body)
    end
  end
  if n == 0 then error("no tokens in " .. path) end
  i = (tonumber(os.getenv("SG_TOKENS_START") or "0") or 0) % n
end

function request()
  i = i % n + 1
  return requests[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d bytes=%d err_connect=%d err_read=%d err_write=%d err_timeout=%d err_status=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
