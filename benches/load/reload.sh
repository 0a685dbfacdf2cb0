#!/usr/bin/env bash
# benches/load/reload.sh — what a keys-file reload costs a running scopegate.
#
# Starts `scopegate serve` (threads: 1, CPU 1, no traffic) on a generated keys file
# (gen_keys.py), then rewrites the file RELOADS times, each time with a content that
# differs (a comment line), waits for each "keys reloaded" log line, and reports:
#   - took_ms: the reloader's own figure (parse, validate, build, swap; the old snapshot
#     is freed afterwards)
#   - reload threads CPU per reload: utime+stime of the watcher (`BG watch`) and of the
#     idle-class thread that reads, hashes, builds and frees for it (`scopegate idle`)
#     (/proc/PID/task/TID/stat)
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
# baseline's), and each thread's CPU time in both runs.
# SATURATE=1 keeps the proxy's core busy with unpaced requests (wrk -c32) during the
# RELOADS rewrites and reports how long each took to be in force (from the write to the
# "keys reloaded" line): what the idle-priority reload costs a saturated proxy.
#
# usage: benches/load/reload.sh    (needs target/release/scopegate, python3)
# env:   KEYS=10000 WORKSPACES=100 RELOADS=20 MODE=rename|inplace BUDGETS=0 (1: every key
#        has a usage budget, gen_keys.py --usage-limits) BIN=target/release/scopegate
#        BASE_PORT=28080 CPU=1 (the CPU scopegate is pinned to)
#        LOAD=0 (1: requests during the reloads, as above) LOAD_SECS=30 CONNS=10 DELAY_MS=10
#        SATURATE=0 (1: unpaced requests during the RELOADS rewrites, as above)
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
SATURATE=${SATURATE:-0}
if [[ $LOAD == 1 || $SATURATE == 1 ]]; then
  command -v wrk >/dev/null || die "LOAD=1 and SATURATE=1 need wrk"
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
# The reload is driven by the watcher's thread (`BG watch`), which has the file read and
# the snapshot built and freed on an idle-class thread (`scopegate idle`, since 2026-12-08,
# made at the first reload); before the one watcher it had a thread of its own. comm keeps
# 15 characters.
ticks() { sed 's/^.*) //' "$1" | awk '{print $12 + $13}'; }
reload_ticks() {
  local t=0 task
  for task in /proc/$PID/task/*; do
    case $(cat "$task/comm" 2>/dev/null) in
      "BG watch" | "scopegate idle" | scopegate-reloa*) t=$((t + $(ticks "$task/stat"))) ;;
    esac
  done
  echo "$t"
}
faults() { sed 's/^.*) //' "/proc/$PID/stat" | awk '{print $8}'; }   # minflt
reloaded() { grep -c '"keys reloaded"' "$LOG" || true; }
# every thread's CPU ticks, one "name<TAB>tid<TAB>ticks" line each
threads() { for t in /proc/$PID/task/*; do printf '%s\t%s\t%s\n' "$(cat "$t/comm")" "${t##*/}" "$(ticks "$t/stat")"; done; }
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
  threads >"$TMP/threads-b0"
  read -r b50 b90 b99 breq berr <<<"$(paced "$TMP/wrk-baseline.txt")"
  log "baseline: p50 ${b50} µs, p99 ${b99} µs, $breq requests, $berr errors"
  threads >"$TMP/threads-b1"
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
if [[ $SATURATE == 1 ]]; then
  # The proxy's core kept busy by unpaced requests for the whole run.
  taskset -cp "$LOAD_CPU" $$ >/dev/null
  wait_url -X POST -H "Authorization: Bearer $(cat "$TMP/secret")" -d "$REQ" "http://$HOST:$PORT/v1/chat/completions"
  SG_KEY=$(cat "$TMP/secret") taskset -c "$LOAD_CPU" \
    wrk -t1 -c32 -d3600s -s "$HERE/post.lua" "http://$HOST:$PORT" >"$TMP/wrk-saturate.txt" 2>&1 &
  SAT=$!; PIDS+=("$SAT")
  sleep 2
fi
SEEN=()
before=$(reloaded)
t0=$(reload_ticks); p0=$(ticks "/proc/$PID/stat"); f0=$(faults); threads >"$TMP/threads-s0"
log "$KEYS keys ($BYTES bytes), $( ((LOAD == 1)) && echo "reloads for ${LOAD_SECS}s" || echo "$RELOADS reloads") by $MODE"
for i in $(seq "$RELOADS"); do
  if [[ $LOAD == 1 ]]; then
    if ! kill -0 "$WRK" 2>/dev/null || ((i > STORM_FILES)); then break; fi
    mv "$TMP/storm/$i.yaml" "$TMP/keys/keys.yaml"
    sleep "$STORM_EVERY"
    continue
  fi
  { cat "$TMP/base.yaml"; echo "# reload $i"; } >"$TMP/next.yaml"
  written=$(date +%s%N)
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
  SEEN+=($((($(date +%s%N) - written) / 1000000)))
  sleep 0.3   # let the detector's and the writer's follow-ups end before the next write
done
if [[ $LOAD == 1 ]]; then
  wait "$WRK" || true
  sleep 1   # the last rename's reload
  RELOADS=$(($(reloaded) - before))
fi
t1=$(reload_ticks); p1=$(ticks "/proc/$PID/stat"); f1=$(faults); threads >"$TMP/threads-s1"
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
print(f"| keys | file bytes | mode | reloads | took_ms median (min–max) | reload threads CPU ms / reload | process CPU ms / reload | page faults / reload | RSS MiB after |")
print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
print(f"| {int(keys):,} | {int(size):,} | {mode} | {n} | {statistics.median(took):.1f} ({min(took):.1f}–{max(took):.1f}) "
      f"| {ms(thread):.1f} | {ms(proc):.1f} | {int(faults) / n:,.0f} | {rss} |")
PY
if ((${#SEEN[@]} > 0)); then
  [[ $SATURATE == 1 ]] && kill "$SAT" 2>/dev/null
  printf '%s\n' "${SEEN[@]}" | sort -n | awk -v sat="$SATURATE" '{v[NR] = $1} END {
    printf "\nfrom the write to the \"keys reloaded\" line (polled every 50 ms)%s: median %d ms, max %d ms\n",
      (sat == 1 ? ", the proxy core saturated by unpaced requests" : ""), v[int((NR + 1) / 2)], v[NR]}'
fi
if [[ $LOAD == 1 ]]; then
  printf '\n| requests (%s s each, paced, about %s req/s offered) | requests | errors | p50 µs | p90 µs | p99 µs |\n|---|---:|---:|---:|---:|---:|\n' \
    "$LOAD_SECS" "$((CONNS * 1000 / DELAY_MS))"
  printf '| baseline, no reloads | %s | %s | %s | %s | %s |\n' "$breq" "$berr" "$b50" "$b90" "$b99"
  printf '| during %s reloads | %s | %s | %s | %s | %s |\n' "$RELOADS" "$sreq" "$serr" "$s50" "$s90" "$s99"
  awk -v a="$s50" -v b="$b50" -v c="$s99" -v d="$b99" \
    'BEGIN {printf "\nstorm ÷ baseline: p50 %.2f×, p99 %.2f× (target p99 ≤ 1.2×)\n", a / b, c / d}'
  # Where the CPU went, thread by thread: the baseline's LOAD_SECS and the storm's
  # (the storm's run ends a second after the load generator's).
  python3 - "$TMP" "$TCK" "$((p1 - p0))" "$RELOADS" <<'PY'
import sys
tmp, tck, proc, reloads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def read(name):
    out = {}
    for line in open(f"{tmp}/{name}"):
        comm, tid, ticks = line.rstrip("\n").split("\t")
        out[tid] = (comm, int(ticks))
    return out
b0, b1, s0, s1 = (read(n) for n in ("threads-b0", "threads-b1", "threads-s0", "threads-s1"))
rows = {}
for tid, (comm, t) in s1.items():
    base = b1.get(tid, (comm, 0))[1] - b0.get(tid, (comm, 0))[1]
    storm = t - s0.get(tid, (comm, 0))[1]
    if base or storm:
        rows[tid] = (comm, base, storm)
print("\n| thread | tid | baseline CPU ms | storm CPU ms |\n|---|---:|---:|---:|")
for tid, (comm, base, storm) in sorted(rows.items(), key=lambda r: -r[1][2]):
    print(f"| {comm} | {tid} | {base * 1000 // tck:,} | {storm * 1000 // tck:,} |")
requests = sum(storm for comm, _, storm in rows.values() if comm == "scopegate proxy")
print(f"\nCPU per reload, every thread but the request threads: {(proc - requests) * 1000 / tck / reloads:.1f} ms")
PY
fi
stop "$PID"
rm -rf "$TMP"
