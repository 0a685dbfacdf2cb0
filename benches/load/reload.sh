#!/usr/bin/env bash
# benches/load/reload.sh — what a keys-file reload costs a running scopegate.
#
# Starts `scopegate serve` (threads: 1, CPU 1, no traffic) on a generated keys file
# (gen_keys.py), then rewrites the file RELOADS times, each time with a content that
# differs (a comment line), waits for each "keys reloaded" log line, and reports:
#   - took_ms: the reloader's own figure (parse, validate, build, swap, drop, release)
#   - reload thread CPU per reload: utime+stime of the reload thread (`BG watch`)
#     (/proc/PID/task/TID/stat), which also holds the change detector's reads and hashes
#   - whole process CPU per reload (every thread), page faults per reload, RSS after
# MODE=rename (default) writes a new file and renames it over the keys file (one read
# and hash by the detector, then the reload); MODE=inplace rewrites the file in place
# (the detector reads it, waits for it to settle, reads it again, then reloads).
#
# LOAD=1 adds requests: an nginx upstream and a paced wrk (paced.lua: CONNS connections, each
# waiting DELAY_MS on average, about 1,000 req/s) run first for LOAD_SECS without reloads (the
# baseline), then for LOAD_SECS again while a new version of the file is renamed over it every
# STORM_EVERY (0.5) s (a rewrite storm; the versions are written before it starts, so this
# script does next to nothing beside the load generator; RELOADS is ignored); reports both
# runs' request latency p50/p90/p99 and their ratio (target: p99 during the storm ≤ 1.2 × the
# baseline's).
#
# usage: benches/load/reload.sh    (needs target/release/scopegate, python3)
# env:   KEYS=10000 WORKSPACES=100 RELOADS=20 MODE=rename|inplace BUDGETS=0 (1: every key
#        has a usage budget, gen_keys.py --usage-limits) BIN=target/release/scopegate
#        BASE_PORT=28080 CPU=1 (the CPU scopegate is pinned to)
#        LOAD=0 (1: requests during the reloads, as above) LOAD_SECS=30 CONNS=10 DELAY_MS=10
#        LOAD_CPU=0 (the CPU wrk and nginx are pinned to)
set -euo pipefail
KEYS=${KEYS:-10000}
WORKSPACES=${WORKSPACES:-100}
RELOADS=${RELOADS:-20}
MODE=${MODE:-rename}
BUDGETS=${BUDGETS:-0}
BASE_PORT=${BASE_PORT:-28080}
CPU=${CPU:-1}
LOAD=${LOAD:-0}
LOAD_SECS=${LOAD_SECS:-30}
CONNS=${CONNS:-10}
DELAY_MS=${DELAY_MS:-10}
LOAD_CPU=${LOAD_CPU:-0}
HOST=127.0.0.1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${BIN:-$REPO/target/release/scopegate}
# shellcheck source=common.sh
source "$HERE/common.sh"
[[ -x $BIN ]] || die "$BIN not found (cargo build --release --bin scopegate)"
[[ $MODE == rename || $MODE == inplace ]] || die "MODE must be rename or inplace"
[[ $RELOADS =~ ^[0-9]+$ && $RELOADS -gt 0 ]] || die "RELOADS must be a positive integer"

TMP=$(mktemp -d /tmp/scopegate-reload.XXXXXX)
mkdir -p "$TMP/keys" "$TMP/state"
GEN=(--keys "$KEYS" --workspaces "$WORKSPACES"); [[ $BUDGETS == 1 ]] && GEN+=(--usage-limits)
python3 "$HERE/gen_keys.py" "$TMP/keys/keys.yaml" "$TMP/secret" "${GEN[@]}" >/dev/null
cp "$TMP/keys/keys.yaml" "$TMP/base.yaml"
BYTES=$(stat -c %s "$TMP/base.yaml")
pick PORT; pick MPORT
UPSTREAM_URL="http://$HOST:9"
if [[ $LOAD == 1 ]]; then
  command -v wrk >/dev/null || die "LOAD=1 needs wrk"
  pick UP_PORT; mkdir -p "$TMP/up"; upstream_conf "$TMP/up" "$UP_PORT"
  taskset -c "$LOAD_CPU" "$(command -v nginx)" -p "$TMP/up" -c "$TMP/up/nginx.conf" 2>"$TMP/up/stderr.log" &
  PIDS+=($!)
  UPSTREAM_URL="http://$HOST:$UP_PORT"
fi
cat >"$TMP/keys/scopegate.yaml" <<EOF
listen: ["$HOST:$PORT"]
metrics_listen: "$HOST:$MPORT"
threads: 1
keys_file: keys.yaml
reload_poll_interval_ms: 1000
log_format: json
shutdown_grace_period_seconds: 1
state: { path: ../state/state.db }
upstreams:
  completions: { url: "$UPSTREAM_URL" }
  admin: { url: "$UPSTREAM_URL" }
EOF
LOG="$TMP/scopegate.log"
RUST_LOG=info taskset -c "$CPU" "$BIN" serve --config "$TMP/keys/scopegate.yaml" >"$LOG" 2>&1 &
PID=$!; PIDS+=("$PID")
wait_url "http://$HOST:$MPORT/readyz"
TID=""
for t in /proc/$PID/task/*; do
  # The reload runs on the watcher's thread (`BG watch`); before the one
  # watcher it had a thread of its own. comm keeps 15 characters.
  case $(cat "$t/comm") in "BG watch" | scopegate-reloa*) TID=${t##*/} ;; esac
done
[[ -n $TID ]] || die "no reload thread (BG watch) in process $PID"
ticks() { sed 's/^.*) //' "$1" | awk '{print $12 + $13}'; }
faults() { sed 's/^.*) //' "/proc/$PID/stat" | awk '{print $8}'; }   # minflt
reloaded() { grep -c '"keys reloaded"' "$LOG" || true; }
# paced requests for LOAD_SECS: prints "p50 p90 p99 requests errors" (µs)
paced() {
  SG_KEY=$(cat "$TMP/secret") DELAY_MS=$DELAY_MS taskset -c "$LOAD_CPU" \
    wrk -t1 -c"$CONNS" -d"${LOAD_SECS}s" -s "$HERE/paced.lua" "http://$HOST:$PORT" >"$1" 2>&1 || true
  local line; line=$(grep WRKRESULT "$1") || die "wrk printed no result (see $1)"
  python3 - "$line" <<'PY'
import sys
kv = dict(p.split("=") for p in sys.argv[1].split()[1:])
errors = sum(int(kv[k]) for k in kv if k.startswith("err_"))
print(kv["p50_us"], kv["p90_us"], kv["p99_us"], kv["requests"], errors)
PY
}
if [[ $LOAD == 1 ]]; then
  # This script's own work (writing the 2 MB file, polling the log) runs beside the load
  # generator, not on the proxy's CPU: what is measured is the proxy's reload.
  taskset -cp "$LOAD_CPU" $$ >/dev/null
  wait_url -X POST -H "Authorization: Bearer $(cat "$TMP/secret")" -d "$REQ" "http://$HOST:$PORT/v1/chat/completions"
  log "baseline: ${LOAD_SECS}s of paced requests, no reloads"
  read -r b50 b90 b99 breq berr <<<"$(paced "$TMP/wrk-baseline.txt")"
  log "baseline: p50 ${b50} µs, p99 ${b99} µs, $breq requests, $berr errors"
  # The storm's files are written before it starts, so that during it this script only
  # renames one over the keys file every STORM_EVERY seconds (no 2 MB writes, no log
  # polling beside the load generator: the baseline has neither).
  STORM_EVERY=${STORM_EVERY:-0.5}
  STORM_FILES=$(awk -v s="$LOAD_SECS" -v e="$STORM_EVERY" 'BEGIN {printf "%d", s / e + 1}')
  mkdir -p "$TMP/storm"
  for i in $(seq "$STORM_FILES"); do { cat "$TMP/base.yaml"; echo "# reload $i"; } >"$TMP/storm/$i.yaml"; done
  SG_KEY=$(cat "$TMP/secret") DELAY_MS=$DELAY_MS taskset -c "$LOAD_CPU" \
    wrk -t1 -c"$CONNS" -d"${LOAD_SECS}s" -s "$HERE/paced.lua" "http://$HOST:$PORT" >"$TMP/wrk-storm.txt" 2>&1 &
  WRK=$!
  RELOADS=1000000
fi
before=$(reloaded)
t0=$(ticks "/proc/$PID/task/$TID/stat"); p0=$(ticks "/proc/$PID/stat"); f0=$(faults)
log "$KEYS keys ($BYTES bytes), $( ((LOAD == 1)) && echo "reloads for ${LOAD_SECS}s" || echo "$RELOADS reloads") by $MODE"
for i in $(seq "$RELOADS"); do
  if [[ $LOAD == 1 ]]; then
    if ! kill -0 "$WRK" 2>/dev/null || ((i > STORM_FILES)); then break; fi
    mv "$TMP/storm/$i.yaml" "$TMP/keys/keys.yaml"
    sleep "$STORM_EVERY"
    continue
  fi
  { cat "$TMP/base.yaml"; echo "# reload $i"; } >"$TMP/next.yaml"
  if [[ $MODE == rename ]]; then
    mv "$TMP/next.yaml" "$TMP/keys/keys.yaml"
  else
    cat "$TMP/next.yaml" >"$TMP/keys/keys.yaml"
  fi
  for _ in $(seq 300); do
    (($(reloaded) >= before + i)) && break
    sleep 0.05
  done
  (($(reloaded) >= before + i)) || die "reload $i not seen in 15 s (see $LOG)"
  sleep 0.3   # let the detector's and the writer's follow-ups end before the next write
done
if [[ $LOAD == 1 ]]; then
  wait "$WRK" || true
  sleep 1   # the last rename's reload
  RELOADS=$(($(reloaded) - before))
fi
t1=$(ticks "/proc/$PID/task/$TID/stat"); p1=$(ticks "/proc/$PID/stat"); f1=$(faults)
if [[ $LOAD == 1 ]]; then
  line=$(grep WRKRESULT "$TMP/wrk-storm.txt") || die "wrk printed no result during the storm"
  read -r s50 s90 s99 sreq serr <<<"$(python3 - "$line" <<'PY'
import sys
kv = dict(p.split("=") for p in sys.argv[1].split()[1:])
errors = sum(int(kv[k]) for k in kv if k.startswith("err_"))
print(kv["p50_us"], kv["p90_us"], kv["p99_us"], kv["requests"], errors)
PY
)"
  ((RELOADS > 0)) || die "no reload completed during the storm"
fi
rss=$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$PID/status")
grep -q 'keys reload rejected' "$LOG" && die "a reload was rejected (see $LOG)"
python3 - "$LOG" "$before" "$RELOADS" "$TCK" "$((t1 - t0))" "$((p1 - p0))" "$((f1 - f0))" "$rss" "$KEYS" "$BYTES" "$MODE" <<'PY'
import json, statistics, sys
log, before, n, tck, thread, proc, faults, rss, keys, size, mode = sys.argv[1:]
before, n, tck = int(before), int(n), int(tck)
took = []
for line in open(log):
    if '"keys reloaded"' in line:
        ev = json.loads(line)
        took.append(float(ev.get("took_ms", ev.get("fields", {}).get("took_ms", "nan"))))
took = took[before:before + n]
ms = lambda ticks: int(ticks) / tck * 1000 / n
print(f"| keys | file bytes | mode | reloads | took_ms median (min–max) | reload thread CPU ms / reload | process CPU ms / reload | page faults / reload | RSS MiB after |")
print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
print(f"| {int(keys):,} | {int(size):,} | {mode} | {n} | {statistics.median(took):.1f} ({min(took):.1f}–{max(took):.1f}) "
      f"| {ms(thread):.1f} | {ms(proc):.1f} | {int(faults) / n:,.0f} | {rss} |")
PY
if [[ $LOAD == 1 ]]; then
  printf '\n| requests (%s s each, paced, about %s req/s offered) | requests | errors | p50 µs | p90 µs | p99 µs |\n|---|---:|---:|---:|---:|---:|\n' \
    "$LOAD_SECS" "$((CONNS * 1000 / DELAY_MS))"
  printf '| baseline, no reloads | %s | %s | %s | %s | %s |\n' "$breq" "$berr" "$b50" "$b90" "$b99"
  printf '| during %s reloads | %s | %s | %s | %s | %s |\n' "$RELOADS" "$sreq" "$serr" "$s50" "$s90" "$s99"
  awk -v a="$s50" -v b="$b50" -v c="$s99" -v d="$b99" \
    'BEGIN {printf "\nstorm ÷ baseline: p50 %.2f×, p99 %.2f× (target p99 ≤ 1.2×)\n", a / b, c / d}'
fi
stop "$PID"
rm -rf "$TMP"
