#!/usr/bin/env bash
# benches/load/usage_at_scale.sh — `scopegate usage` with 100,000 keys (the accounting target:
# under a second).
#
# Generates KEYS keys, each with a monthly token budget (gen_keys.py --usage-limits), lets
# `scopegate serve` create state.db (and stops it), inserts one usage row per key for the
# current month with sqlite3 (the schema of src/state/local.rs), then times with hyperfine:
#   scopegate usage                    (the table of every key)
#   scopegate usage --json
#   scopegate usage --key key_50000    (one key; still loads the whole keys file)
# and `scopegate check` (keys load alone) to show what of it is the keys file.
#
# usage: benches/load/usage_at_scale.sh   (needs target/release/scopegate, sqlite3, hyperfine)
# env:   KEYS=100000 RUNS=10 BASE_PORT=38080
set -euo pipefail

KEYS=${KEYS:-100000}
RUNS=${RUNS:-10}
BASE_PORT=${BASE_PORT:-38080}
HOST=127.0.0.1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${BIN:-$REPO/target/release/scopegate}

log() { printf '[usage_at_scale.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '\nusage_at_scale.sh: FAILED: %s\n' "$*" >&2; exit 1; }
[[ -x $BIN ]] || die "$BIN not found: cargo build --release --bin scopegate"
for t in sqlite3 hyperfine python3 curl; do command -v "$t" >/dev/null || die "$t missing"; done

TMP=$(mktemp -d /tmp/scopegate-usage.XXXXXX)
SG_PID=""
cleanup() { [[ -n $SG_PID ]] && kill -TERM "$SG_PID" 2>/dev/null; log "raw outputs: $TMP"; }
trap cleanup EXIT
port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
P=$BASE_PORT; while ! port_free "$P"; do P=$((P + 1)); done
M=$((P + 1)); while ! port_free "$M"; do M=$((M + 1)); done

log "generating $KEYS keys with usage_limits"
python3 "$HERE/gen_keys.py" "$TMP/keys.yaml" "$TMP/secret" --keys "$KEYS" --usage-limits >/dev/null
cat >"$TMP/scopegate.yaml" <<EOF
listen: ["$HOST:$P"]
metrics_listen: "$HOST:$M"
threads: 1
keys_file: keys.yaml
state: { path: state.db }
upstreams:
  completions: { url: "http://$HOST:9" }
  admin: { url: "http://$HOST:9" }
EOF

log "scopegate serve creates state.db"
"$BIN" serve --config "$TMP/scopegate.yaml" >"$TMP/serve.log" 2>&1 &
SG_PID=$!
for _ in $(seq 300); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$HOST:$M/readyz") == 200 ]] && break
  kill -0 "$SG_PID" 2>/dev/null || die "scopegate exited (see $TMP/serve.log)"
  sleep 0.1
done
kill -TERM "$SG_PID"; wait "$SG_PID" 2>/dev/null || true; SG_PID=""
[[ -f $TMP/state.db ]] || die "no state.db after serve (see $TMP/serve.log)"

# one row per key for this month (UTC), as the proxy writes them
read -r PERIOD END_MS NOW_MS < <(python3 -c '
import datetime as d
n = d.datetime.now(d.timezone.utc)
e = d.datetime(n.year + (n.month == 12), n.month % 12 + 1, 1, tzinfo=d.timezone.utc)
print(f"{n.year:04}-{n.month:02}", int(e.timestamp() * 1000), int(n.timestamp() * 1000))')
log "inserting $KEYS usage rows for period $PERIOD"
sqlite3 "$TMP/state.db" <<EOF
.timeout 5000
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $KEYS)
INSERT OR REPLACE INTO usage (scope, id, period, period_end_ms, input_tokens, output_tokens,
  cost_usd, estimated_tokens, reserved_tokens, reserved_cost, updated_at_ms)
SELECT 'key', 'key_' || i, '$PERIOD', $END_MS, 1000 + i, 500 + i % 997, 0.0, 0, 0, 0.0, $NOW_MS FROM n;
COMMIT;
EOF
ROWS=$(sqlite3 -readonly "$TMP/state.db" "SELECT count(*) FROM usage WHERE scope = 'key' AND period = '$PERIOD'")
[[ $ROWS == "$KEYS" ]] || die "expected $KEYS rows, found $ROWS"

# a sanity check of what the command prints
"$BIN" usage --config "$TMP/scopegate.yaml" --key key_50000 >"$TMP/one.txt" 2>&1 || die "scopegate usage --key failed: $(cat "$TMP/one.txt")"
# key_50000: 51,000 input + 650 output tokens
grep -qw '51650' "$TMP/one.txt" || die "key_50000's usage (51650 tokens) not in: $(head -5 "$TMP/one.txt")"
LINES=$("$BIN" usage --config "$TMP/scopegate.yaml" | wc -l)
log "scopegate usage prints $LINES lines"

OUT="$HERE/results-usage-$(date -u +%Y-%m-%d-%H%M).md"
cd "$TMP"
hyperfine --warmup 2 --runs "$RUNS" --export-markdown "$TMP/hyperfine.md" --export-json "$TMP/hyperfine.json" \
  -n "scopegate check (keys load only)" "$BIN check --config $TMP/scopegate.yaml" \
  -n "scopegate usage" "$BIN usage --config $TMP/scopegate.yaml" \
  -n "scopegate usage --json" "$BIN usage --config $TMP/scopegate.yaml --json" \
  -n "scopegate usage --key key_50000" "$BIN usage --config $TMP/scopegate.yaml --key key_50000" \
  >"$TMP/hyperfine.txt" 2>&1 || die "hyperfine failed: $(tail -5 "$TMP/hyperfine.txt")"
{
  echo "# \`scopegate usage\` with $KEYS keys"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- cpus: $(nproc) × $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "- load average at start of timing: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- scopegate: $(git -C "$REPO" rev-parse --short HEAD), target/release/scopegate"
  echo "- keys file: $KEYS workspace keys with usage_limits ($(du -h "$TMP/keys.yaml" | cut -f1)); state.db: $ROWS rows for $PERIOD ($(du -h "$TMP/state.db" | cut -f1))"
  echo "- output: $LINES lines"
  echo "- hyperfine --warmup 2 --runs $RUNS"
  echo
  python3 "$HERE/hyperfine_medians.py" "$TMP/hyperfine.json"
  echo
  cat "$TMP/hyperfine.md"
  echo
  echo '```'
  cat "$TMP/hyperfine.txt"
  echo '```'
} >"$OUT"
cat "$OUT"
log "written to $OUT"
