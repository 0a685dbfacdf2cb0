#!/usr/bin/env bash
# benches/load/traces_down.sh — memory with the trace collector down.
#
# Runs the release scopegate with tracing on at sample_ratio 1.0, its
# collector an address where nothing listens (every export is refused), in
# front of an nginx upstream, and offers it a paced load (wrk, paced.lua) for
# MINUTES minutes. Prints VmRSS and VmHWM of the proxy once a minute, the
# requests answered, and the trace counters (spans exported and dropped):
# the export queue is bounded, so memory must stay flat however long the
# collector is away.
#
# usage: benches/load/traces_down.sh
# env:   MINUTES=10     how long the collector stays down under load
#        CONNS=10       wrk connections; each waits DELAY_MS on average
#        DELAY_MS=10    between requests (10 × 1000/10 ≈ 1,000 req/s offered)
#        KEYS=1000      keys in the keys file
#        SKIP_BUILD=0   1: use target/release/scopegate as it is
#        SCOPEGATE_BIN=path  another scopegate binary (implies nothing is built)
#        TRACING=1      0: the same run without the tracing block (the control: what the
#                       resident size does under the same load with tracing off)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MINUTES=${MINUTES:-10}
CONNS=${CONNS:-10}
DELAY_MS=${DELAY_MS:-10}
KEYS=${KEYS:-1000}
SKIP_BUILD=${SKIP_BUILD:-0}
TRACING=${TRACING:-1}
HOST=127.0.0.1
UP_PORT=${UP_PORT:-18591}
SG_PORT=${SG_PORT:-18592}
SG_MPORT=${SG_MPORT:-18593}
DOWN_PORT=${DOWN_PORT:-18594}
BIN=${SCOPEGATE_BIN:-"$REPO/target/release/scopegate"}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

log() { printf '[traces_down %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v wrk >/dev/null || die "wrk is not installed"
[[ -x $NGINX ]] || die "nginx is not installed"
if [[ $SKIP_BUILD != 1 && -z ${SCOPEGATE_BIN:-} ]]; then
  (cd "$REPO" && cargo build --release --bin scopegate) || die "release build failed"
fi
[[ -x $BIN ]] || die "no $BIN (build it, or SKIP_BUILD=0)"

TMP=$(mktemp -d /tmp/scopegate-traces-down.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

mkdir -p "$TMP/up/logs" "$TMP/sg"
cat >"$TMP/up/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $TMP/up/logs/error.log warn;
pid $TMP/up/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen $HOST:$UP_PORT;
    location / {
      default_type application/json;
      return 200 '{"id":"chatcmpl-bench","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":9,"total_tokens":28}}';
    }
  }
}
EOF
"$NGINX" -p "$TMP/up" -c "$TMP/up/nginx.conf" 2>"$TMP/up/stderr.log" &
PIDS+=($!)

python3 "$HERE/gen_keys.py" "$TMP/sg/keys.yaml" "$TMP/sg/secret" --keys "$KEYS" --workspaces 10 >/dev/null
SG_KEY=$(cat "$TMP/sg/secret"); export SG_KEY
cat >"$TMP/sg/scopegate.yaml" <<EOF
listen: ["$HOST:$SG_PORT"]
metrics_listen: "$HOST:$SG_MPORT"
threads: 1
keys_file: keys.yaml
log_format: json
shutdown_grace_period_seconds: 1
upstreams:
  completions: { url: "http://$HOST:$UP_PORT" }
  admin: { url: "http://$HOST:$UP_PORT" }
EOF
if [[ $TRACING == 1 ]]; then
  printf 'tracing:\n  otlp_endpoint: "http://%s:%s"\n  sample_ratio: 1.0\n' "$HOST" "$DOWN_PORT" >>"$TMP/sg/scopegate.yaml"
fi
"$BIN" check --config "$TMP/sg/scopegate.yaml" >/dev/null || die "scopegate check failed"
RUST_LOG=warn "$BIN" serve --config "$TMP/sg/scopegate.yaml" >"$TMP/sg/stderr.log" 2>&1 &
SG_PID=$!; PIDS+=("$SG_PID")
for _ in $(seq 1 100); do
  curl -fs "http://$HOST:$SG_MPORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://$HOST:$SG_MPORT/readyz" >/dev/null || die "scopegate did not become ready (see $TMP/sg/stderr.log)"

rss() { awk '/^VmRSS:/ {r=$2} /^VmHWM:/ {h=$2} END {print r, h}' "/proc/$SG_PID/status"; }
counter() { curl -fs "http://$HOST:$SG_MPORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

log "warm-up: 10 s of the same load"
DELAY_MS=$DELAY_MS wrk -t1 -c"$CONNS" -d10s -s "$HERE/paced.lua" "http://$HOST:$SG_PORT" >"$TMP/warmup.txt" 2>&1
read -r rss0 hwm0 <<<"$(rss)"
log "$( ((TRACING == 1)) && echo "collector down" || echo "tracing off (control)"), $MINUTES min at about $((CONNS * 1000 / DELAY_MS)) req/s offered"
DELAY_MS=$DELAY_MS wrk -t1 -c"$CONNS" -d"$((MINUTES * 60))s" -s "$HERE/paced.lua" "http://$HOST:$SG_PORT" >"$TMP/wrk.txt" 2>&1 &
WRK_PID=$!; PIDS+=("$WRK_PID")
printf '| minute | VmRSS kB | VmHWM kB | spans exported | spans dropped |\n|---:|---:|---:|---:|---:|\n'
printf '| 0 | %s | %s | %s | %s |\n' "$rss0" "$hwm0" "$(counter scopegate_trace_spans_exported_total)" "$(counter scopegate_trace_spans_dropped_total)"
for m in $(seq 1 "$MINUTES"); do
  sleep 60
  kill -0 "$SG_PID" 2>/dev/null || die "scopegate exited (see $TMP/sg/stderr.log)"
  read -r r h <<<"$(rss)"
  printf '| %s | %s | %s | %s | %s |\n' "$m" "$r" "$h" "$(counter scopegate_trace_spans_exported_total)" "$(counter scopegate_trace_spans_dropped_total)"
done
wait "$WRK_PID" || true
line=$(grep WRKRESULT "$TMP/wrk.txt" || true)
[[ -n $line ]] || die "wrk printed no result (see $TMP/wrk.txt)"
printf '\nwrk: %s\n' "${line#WRKRESULT }"
read -r r h <<<"$(rss)"
printf 'VmRSS before %s kB, after %s kB (%+d kB); VmHWM %s kB\n' "$rss0" "$r" "$((r - rss0))" "$h"
log "raw outputs: $TMP"
