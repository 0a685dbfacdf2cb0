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
# usage: benches/load/reload.sh    (needs target/release/scopegate, python3)
# env:   KEYS=10000 WORKSPACES=100 RELOADS=20 MODE=rename|inplace BUDGETS=0 (1: every key
#        has a usage budget, gen_keys.py --usage-limits) BIN=target/release/scopegate
#        BASE_PORT=28080 CPU=1 (the CPU scopegate is pinned to)
set -euo pipefail
KEYS=${KEYS:-10000}
WORKSPACES=${WORKSPACES:-100}
RELOADS=${RELOADS:-20}
MODE=${MODE:-rename}
BUDGETS=${BUDGETS:-0}
BASE_PORT=${BASE_PORT:-28080}
CPU=${CPU:-1}
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
  completions: { url: "http://$HOST:9" }
  admin: { url: "http://$HOST:9" }
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
before=$(reloaded)
t0=$(ticks "/proc/$PID/task/$TID/stat"); p0=$(ticks "/proc/$PID/stat"); f0=$(faults)
log "$KEYS keys ($BYTES bytes), $RELOADS reloads by $MODE"
for i in $(seq "$RELOADS"); do
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
t1=$(ticks "/proc/$PID/task/$TID/stat"); p1=$(ticks "/proc/$PID/stat"); f1=$(faults)
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
stop "$PID"
rm -rf "$TMP"
