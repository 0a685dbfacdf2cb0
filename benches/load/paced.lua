-- wrk script for benches/load/redis.sh: the request of post.lua, but each
-- connection waits DELAY_MS on average between its requests, so CONNS
-- connections offer about CONNS × 1000 / (DELAY_MS + latency) requests/s (a
-- paced load, not a saturating one; wrk cannot hold an exact rate, and oha is
-- not installed here).
-- Prints "WRKRESULT k=v ..." like post.lua, with p90 too.
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in five short words, please."}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("SG_KEY") or "")

local pause = tonumber(os.getenv("DELAY_MS") or "10")
-- ARRIVALS=sync: every connection waits exactly DELAY_MS, so connections that
-- start together stay in step and requests arrive in bursts of CONNS (each
-- burst queues at anything serial, such as Redis' script execution).
-- ARRIVALS=spread (default): each wait is drawn uniformly from 0..2×DELAY_MS
-- (same mean), so connections drift apart and arrivals are independent, as
-- from many unrelated clients.
local spread = (os.getenv("ARRIVALS") or "spread") ~= "sync"
math.randomseed(os.time())

function delay()
  if spread then
    return math.random(0, 2 * pause)
  end
  return pause
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d bytes=%d err_connect=%d err_read=%d err_write=%d err_timeout=%d err_status=%d p50_us=%d p90_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
