#!/usr/bin/env bash
# benches/load/redis.sh — what the Redis counter store (the reference on limits shared by replicas) costs per request:
# the same scopegate binary in local mode and in Redis mode, in one run, beside the loopback
# round trip to that Redis.
#
# One upstream (nginx `return 200`), one redis-server (no persistence) and the load generator
# share CPU 0; scopegate (threads: 1, 10,000 keys + the two below, RUST_LOG=warn) is on CPU 1.
# Two keys with limits, so that every request makes Redis' admission round trip:
#   rate   rate_limits: [{type: requests, unit: rpm, value: 1000000}]   (never refuses)
#   conc   the same plus max_concurrent_requests: 1000: a lease per request, so each request
#          also sends a settlement (off the response path) to give its slot back
# Per round, for each mode (order alternates by round) and key:
#   a paced load: wrk -t1 -c$CONNS with a $DELAY_MS pause per connection between requests
#   (≈ CONNS × 1000 / DELAY_MS req/s; 20 × 10 ms ≈ 2,000 req/s) for $DURATION s; ARRIVALS=spread
#   (default) draws each pause from 0..2×DELAY_MS so arrivals are independent, ARRIVALS=sync
#   keeps the connections in step (bursts of CONNS requests at once; see paced.lua) →
#   p50/p90/p99 latency, req/s, proxy CPU-µs per request (utime+stime from /proc), and in Redis
#   mode redis-server's CPU-µs per request and its server-side µs per EVALSHA (commandstats).
# And the round trips: redis-benchmark -t ping -c 1 (one connection, closed loop) → p50, and the
# same for the admission script alone (EVALSHA with the rate key's arguments, read from
# src/state/redis.rs), so the added latency can be set against what Redis itself takes.
# A closed loop on one core keeps both ends awake; the admissions meet another situation (a
# paced open loop, across cores, beside the HTTP load), so each round also measures the round
# trip as they meet it: while the local-mode load runs, benches/redis_rtt.rs (the redis crate's
# ConnectionManager on a single-threaded runtime, like a pingora worker) on scopegate's CPU
# starts a PING — then, in a second run, the admission EVALSHA — every 1/RATE s, RATE = that
# load's req/s. Those loads' own HTTP figures are not used.
# Every response must be 2xx, else it fails; scopegate_state_errors_total (round trips over
# timeout_ms = 50, answered from the replica's own counters under on_error: allow) is reported.
#
# usage: benches/load/redis.sh   (BIN=target/release/scopegate by default; nginx, wrk,
#        redis-server, redis-benchmark, redis-cli, python3, curl, taskset)
#        and benches/redis_rtt.rs (built here with cargo bench --no-run unless RTT_BIN is given)
# env:   ROUNDS=3 DURATION=10 CONNS=20 DELAY_MS=10 KEYS=10000 BASE_PORT=38080 PIN=1 BIN=...
#        REDIS_CPU=<cpu> puts redis-server elsewhere than the load's CPU (e.g. REDIS_CPU=1: on
#        scopegate's CPU)
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-20}
DELAY_MS=${DELAY_MS:-10}
KEYS=${KEYS:-10000}
BASE_PORT=${BASE_PORT:-38080}
PIN=${PIN:-1}
ARRIVALS=${ARRIVALS:-spread}
export ARRIVALS
PROXY_CPU=1
LOAD_CPU=0
# PIN=0: nothing pinned (taskset over both CPUs), to see what pinning does to the hops
[[ $PIN == 1 ]] || { PROXY_CPU=0,1; LOAD_CPU=0,1; }
REDIS_CPU=${REDIS_CPU:-$LOAD_CPU}
HOST=127.0.0.1

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${BIN:-$REPO/target/release/scopegate}
export PATH="$PATH:/usr/sbin"

# shellcheck source=common.sh
source "$HERE/common.sh"
[[ -x $BIN ]] || die "$BIN not found: cargo build --release --bin scopegate (or BIN=target/debug/scopegate)"
if [[ -z ${RTT_BIN:-} ]]; then
  RTT_BIN=$(cd "$REPO" && cargo bench --bench redis_rtt --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "redis_rtt" and m.get("executable"):
        print(m["executable"])') || true
fi
[[ -x ${RTT_BIN:-} ]] || die "benches/redis_rtt.rs did not build (cargo bench --bench redis_rtt --no-run)"
for t in nginx wrk redis-server redis-benchmark redis-cli python3 curl taskset; do
  command -v "$t" >/dev/null || die "$t missing"
done
NGINX=$(command -v nginx)

TMP=$(mktemp -d /tmp/scopegate-redis.XXXXXX)
mkdir -p "$TMP/up" "$TMP/sg" "$TMP/redis"
pick UP; pick SG; pick SG_M; pick REDIS
rcli() { redis-cli -h $HOST -p "$REDIS" "$@"; }
# scopegate_state_errors_total summed over `op` (round trips that failed or exceeded timeout_ms)
state_errors() { curl -s "http://$HOST:$SG_M/metrics" | awk '/^scopegate_state_errors_total/ {s += $NF} END {print s + 0}'; }


python3 "$HERE/gen_keys.py" "$TMP/sg/keys.yaml" "$TMP/secret" --keys "$KEYS" >/dev/null
declare -A SECRET=([rate]="sgk-bench-redis-rate-$RANDOM$RANDOM" [conc]="sgk-bench-redis-conc-$RANDOM$RANDOM")
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
cat >>"$TMP/sg/keys.yaml" <<EOF
  - id: key_bench_rate
    type: workspace-service
    workspace_id: ws_0
    sha256: "$(sha "${SECRET[rate]}")"
    scopes: ["completions.write"]
    rate_limits: [{ type: requests, unit: rpm, value: 1000000 }]
  - id: key_bench_conc
    type: workspace-service
    workspace_id: ws_1
    sha256: "$(sha "${SECRET[conc]}")"
    scopes: ["completions.write"]
    rate_limits: [{ type: requests, unit: rpm, value: 1000000 }]
    max_concurrent_requests: 1000
EOF

upstream_conf "$TMP/up" "$UP"
for mode in local redis; do
  cat >"$TMP/sg/$mode.yaml" <<EOF
listen: ["$HOST:$SG"]
metrics_listen: "$HOST:$SG_M"
threads: 1
keys_file: keys.yaml
log_format: json
upstreams:
  completions: { url: "http://$HOST:$UP" }
  admin: { url: "http://$HOST:$UP" }
EOF
done
echo 'state: { backend: local, path: state.db }' >>"$TMP/sg/local.yaml"
echo "state: { backend: redis, redis: { url: \"redis://$HOST:$REDIS/0\", timeout_ms: 50, on_error: allow, key_prefix: \"bench:\" } }" >>"$TMP/sg/redis.yaml"

taskset -c $LOAD_CPU "$NGINX" -p "$TMP/up" -c "$TMP/up/nginx.conf" 2>>"$TMP/up/stderr" &
UP_PID=$!; PIDS+=("$UP_PID")
taskset -c $REDIS_CPU redis-server --bind $HOST --port "$REDIS" --save "" --appendonly no \
  --dir "$TMP/redis" >"$TMP/redis/log" 2>&1 &
REDIS_PID=$!; PIDS+=("$REDIS_PID")
wait_url -X POST -d "$REQ" "http://$HOST:$UP/v1/chat/completions"
for _ in $(seq 100); do [[ $(rcli ping 2>/dev/null) == PONG ]] && break; sleep 0.05; done
[[ $(rcli ping) == PONG ]] || die "redis-server did not start"

# paced KEY PIDS...: prints "rps p50_us p90_us p99_us errors proxy_cpu_us_per_req"
paced() {
  local key=$1; shift
  local before after out
  before=$(cpu_ticks "$@")
  out=$(SG_KEY=$key DELAY_MS=$DELAY_MS taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" \
    -s "$HERE/paced.lua" "http://$HOST:$SG/v1/chat/completions" 2>&1) || die "wrk: $out"
  after=$(cpu_ticks "$@")
  local line; line=$(grep WRKRESULT <<<"$out") || die "no WRKRESULT: $out"
  python3 - "$line" "$((after - before))" "$TCK" <<'PY'
import sys
kv = dict(p.split("=") for p in sys.argv[1].split()[1:])
ticks, tck = int(sys.argv[2]), int(sys.argv[3])
req = int(kv["requests"])
errs = sum(int(kv[k]) for k in kv if k.startswith("err_"))
print(f'{req / (int(kv["duration_us"]) / 1e6):.0f} {kv["p50_us"]} {kv["p90_us"]} {kv["p99_us"]} {errs} '
      f'{ticks / tck / max(req, 1) * 1e6:.1f} {req}')
PY
}

# The admission script alone (the rate key's arguments), for its round trip beside PING's.
ADMIT_SHA=$(rcli script load "$(python3 - "$REPO/src/state/redis.rs" <<'PY'
import re, sys
print(re.search(r'pub const ADMIT_LUA: &str = r#"(.*?)"#;', open(sys.argv[1]).read(), re.S).group(1))
PY
)")
ADMIT_ARGS=(evalsha "$ADMIT_SHA" 4 'bench:{ws_0}:key:bench:rate:1' 'bench:{ws_0}:key:bench:lease'
  'bench:{ws_0}:key:bench:res' 'bench:{ws_0}:key:bench:usage:all'
  m:1 30000 0 0 0.0 1 1 0 0 0.0 -1 1000000 60000000)
[[ $(rcli "${ADMIT_ARGS[@]}" | head -1) == 0 ]] || die "the admission script did not admit"

RESULTS="$TMP/results.txt"; : >"$RESULTS"
RTT="$TMP/rtt.txt"; : >"$RTT"
PACED_RTT="$TMP/paced-rtt.txt"; : >"$PACED_RTT"
ADMIT_RTT="$TMP/admit-rtt.txt"; : >"$ADMIT_RTT"
for round in $(seq "$ROUNDS"); do
  ((round % 2 == 0)) && MODES=(redis local) || MODES=(local redis)
  # The loopback round trip to this Redis, one connection, closed loop.
  taskset -c $LOAD_CPU redis-benchmark -h $HOST -p "$REDIS" -t ping -c 1 -n 50000 --csv \
    >>"$RTT" 2>/dev/null
  taskset -c $LOAD_CPU redis-benchmark -h $HOST -p "$REDIS" -c 1 -n 20000 --csv "${ADMIT_ARGS[@]}" \
    2>/dev/null | tail -1 >>"$ADMIT_RTT"
  for mode in "${MODES[@]}"; do
    (cd "$TMP/sg" && RUST_LOG=warn exec taskset -c $PROXY_CPU "$BIN" serve --config "$mode.yaml" \
      >/dev/null 2>>"$TMP/sg/stderr-$mode") &
    PID=$!; PIDS+=("$PID")
    wait_url "http://$HOST:$SG_M/readyz"
    for v in rate conc; do
      wait_url -X POST -H "Authorization: Bearer ${SECRET[$v]}" -H 'content-type: application/json' \
        -d "$REQ" "http://$HOST:$SG/v1/chat/completions"
    done
    PROC=$(echo "$PID"; pgrep -P "$PID" || true)
    for v in rate conc; do
      # warm-up, then the measured run
      SG_KEY=${SECRET[$v]} DELAY_MS=$DELAY_MS taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d2s \
        -s "$HERE/paced.lua" "http://$HOST:$SG/v1/chat/completions" >/dev/null 2>&1 || true
      rcli config resetstat >/dev/null
      e_before=$(state_errors)
      r_before=$(cpu_ticks "$REDIS_PID")
      # shellcheck disable=SC2086
      m=$(paced "${SECRET[$v]}" $PROC)
      r_after=$(cpu_ticks "$REDIS_PID")
      e_after=$(state_errors)
      req=${m##* }
      redis_cpu=$(python3 -c "print(f'{($r_after - $r_before) / $TCK / max($req, 1) * 1e6:.1f}')")
      evalsha=$(rcli info commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:.*usec_per_call=\([0-9.]*\).*/\1/p')
      [[ $mode == redis ]] || { redis_cpu=0; evalsha=0; }
      echo "$round $mode $v ${m% *} $redis_cpu ${evalsha:-0} $((e_after - e_before)) $req" >>"$RESULTS"
      if [[ $mode == local && $v == rate ]]; then RATE=$(awk '{print $1}' <<<"$m"); fi
    done
    if [[ $mode == local ]]; then
      # The round trip as the admissions meet it: paced, from scopegate's CPU, beside this load.
      for what in ping admit; do
        [[ $what == ping ]] && CMD=(ping) || CMD=("${ADMIT_ARGS[@]}")
        SG_KEY=${SECRET[rate]} DELAY_MS=$DELAY_MS taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" \
          -d"$((DURATION + 1))s" -s "$HERE/paced.lua" "http://$HOST:$SG/v1/chat/completions" \
          >/dev/null 2>&1 &
        WRK=$!
        sleep 0.5
        out=$(taskset -c $PROXY_CPU "$RTT_BIN" "redis://$HOST:$REDIS/0" "$RATE" "$((DURATION - 1))" \
          "${CMD[@]}") || die "redis_rtt: $out"
        wait "$WRK" || true
        line=$(grep RTTRESULT <<<"$out") || die "no RTTRESULT: $out"
        grep -q ' errors=0 ' <<<"$line" || die "redis_rtt errors: $line"
        echo "$round $what $line" >>"$PACED_RTT"
      done
    fi
    stop "$PID"
    log "round $round $mode done"
  done
done

python3 - "$RESULTS" "$RTT" "$ADMIT_RTT" "$PACED_RTT" <<'PY'
import csv, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r, mode, v, rps, p50, p90, p99, errs, cpu, rcpu, evalsha, serrs, req = line.split()
    if int(errs):
        sys.exit(f"redis.sh: FAILED: {errs} HTTP errors in {line.strip()}")
    rows.setdefault((mode, v), []).append(dict(r=int(r), rps=float(rps), p50=int(p50), p90=int(p90),
                                               p99=int(p99), cpu=float(cpu), rcpu=float(rcpu),
                                               evalsha=float(evalsha), serrs=int(serrs), req=int(req)))
rtt = [float(row["p50_latency_ms"]) * 1000 for row in csv.DictReader(open(sys.argv[2]))
       if row.get("test") == "PING_MBULK"]
med = statistics.median
def m(mode, v, k): return med([x[k] for x in rows[(mode, v)]])
def rng(xs): return f"{min(xs):.0f}–{max(xs):.0f}"
print("| key | mode | req/s | p50 µs | p90 µs | p99 µs | proxy CPU-µs/req | redis-server CPU-µs/req | Redis µs per EVALSHA | state errors / requests |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for v in ("rate", "conc"):
    for mode in ("local", "redis"):
        rs = rows[(mode, v)]
        serrs = f'{sum(x["serrs"] for x in rs)} / {sum(x["req"] for x in rs)}'
        extra = (f'{m(mode, v, "rcpu"):.1f} | {m(mode, v, "evalsha"):.1f} | {serrs}' if mode == "redis" else "– | – | –")
        print(f'| {v} | {mode} | {m(mode, v, "rps"):.0f} | {m(mode, v, "p50"):.0f} ({rng([x["p50"] for x in rs])}) | '
              f'{m(mode, v, "p90"):.0f} | {m(mode, v, "p99"):.0f} | {m(mode, v, "cpu"):.1f} | {extra} |')
print()
for v in ("rate", "conc"):
    by_round = {x["r"]: x for x in rows[("local", v)]}
    added = [x["p50"] - by_round[x["r"]]["p50"] for x in rows[("redis", v)]]
    added99 = [x["p99"] - by_round[x["r"]]["p99"] for x in rows[("redis", v)]]
    cpu = [x["cpu"] - by_round[x["r"]]["cpu"] for x in rows[("redis", v)]]
    print(f"- {v}: Redis mode adds p50 {med(added):+.0f} µs (rounds {', '.join(f'{a:+d}' for a in added)}), "
          f"p99 {med(added99):+.0f} µs, proxy CPU {med(cpu):+.1f} µs per request")
admit = [float(row[4]) * 1000 for row in csv.reader(open(sys.argv[3]))]
print(f"- loopback round trip to this Redis (redis-benchmark -t ping -c 1, PING_MBULK p50): "
      f"{med(rtt):.0f} µs (rounds {', '.join(f'{x:.0f}' for x in rtt)}); "
      f"the admission script alone (EVALSHA, -c 1, p50): {med(admit):.0f} µs "
      f"(rounds {', '.join(f'{x:.0f}' for x in admit)})")
paced = {}
for line in open(sys.argv[4]):
    r, what, _, *kv = line.split()
    paced.setdefault(what, []).append(dict(p.split("=") for p in kv))
for what, label in (("ping", "PING"), ("admit", "the admission EVALSHA")):
    xs = paced.get(what, [])
    if xs:
        p50 = [int(x["p50_us"]) for x in xs]
        print(f"- round trip as the admissions meet it ({label}, paced at the local run's req/s from scopegate's CPU "
              f"during the local-mode load, redis crate ConnectionManager on a current-thread runtime): "
              f"p50 {med(p50):.0f} µs (rounds {', '.join(str(x) for x in p50)}), "
              f"p90 {med([int(x['p90_us']) for x in xs]):.0f}, p99 {med([int(x['p99_us']) for x in xs]):.0f} µs")
PY
echo "- rounds: $ROUNDS (median shown, min–max of p50 in brackets), $DURATION s per run after a 2 s warm-up;"
echo "  wrk -t1 -c$CONNS, $DELAY_MS ms on average between a connection's requests (ARRIVALS=$ARRIVALS); scopegate on CPU $PROXY_CPU,"
echo "  wrk and the upstream nginx on CPU $LOAD_CPU, redis-server on CPU $REDIS_CPU; all responses 2xx"
echo "- binary: $BIN"
echo "- machine: $(nproc) CPUs, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- raw outputs: $TMP"
