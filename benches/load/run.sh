#!/usr/bin/env bash
# benches/load/run.sh — scopegate load benchmark.
#
# Measures, side by side and in one run, on this machine and over loopback only:
#   direct        the load generator straight to the upstream (an nginx `return 200`)
#   nginx         nginx as a plain reverse proxy (1 worker, upstream keepalive, no auth)
#   pingora       pingora as a plain reverse proxy (examples/plain_pingora.rs: 1 thread, no filters)
#   scopegate     scopegate serve, threads: 1, 10,000 keys, log_format json, RUST_LOG=warn
#   scopegate+log the same with the access log on (RUST_LOG=info, output to /dev/null)
#   scopegate+usage the same proxy and keys file as `scopegate`, presenting key_limited,
#                 which has a token rate limit and a usage budget (accounting on)
#   scopegate+cost the same, presenting key_cost: a token rate limit, a cost budget priced by
#                 model_prices and a models allowlist (every metering check on)
#   scopegate+traces  the same as `scopegate` with tracing on at sample_ratio 1.0: every
#                 request's two spans exported over OTLP/HTTP to the upstream nginx (a sink
#                 answering POST /v1/traces with an empty 200)
#   scopegate+traces0 the same with sample_ratio 0: tracing on, nothing recorded
#   scopegate+tokens the same config and keys, with org_bench also accepting identity tokens
#                 (RS256, JWK set in a file): the requests rotate over SUBJECTS tokens of as many
#                 distinct subjects (examples/mint_tokens.rs), all verified and cached after one
#                 warm-up pass; reported as requests per proxy CPU-second against `scopegate`
#                 (target: ≥ 0.90 of the plain key's)
# and, with SSE=1, SSE first-event latency with accounting off and on, then SSE_HOLD
# concurrent accounted streams held open, through examples/sse_first_event.rs.
# then counts user-space instructions per request of nginx, pingora, scopegate and
# scopegate+usage under callgrind (repeatable whatever else the machine does) and prints
# them at once as a table with the cost-per-request ratios and their targets (scopegate ÷
# pingora ≤ 1.25, scopegate+usage ÷ scopegate ≤ 1.10, pass/fail); INSTR_KEEP keeps the
# callgrind files for callgrind_annotate. Last, a Markdown report of everything (also
# written to benches/load/results-<date>.md).
# See benches/load/README.md for what each column means and the caveats.
#
# usage: benches/load/run.sh            (as root: it may apt-get/cargo install tools)
# env:   ROUNDS=3      rounds; the order of targets rotates each round
#        DURATION=10   seconds of each measurement (max-throughput run and fixed-rate run)
#        RATE=2000     requests/s of the fixed-rate latency run
#        CONNS=32      connections (wrk -c and oha -c)
#        WARMUP=2      seconds of warm-up load before each target's measurements
#        KEYS=10000 WORKSPACES=100   size of the generated keys file
#        LOG_RUN=1     0: skip the scopegate+log target
#        USAGE_RUN=1   0: skip the scopegate+usage target
#        TRACES_RUN=1  0: skip the scopegate+traces and scopegate+traces0 targets (and, with
#                      SSE=1, the `tracing_on`/`tracing_off` kinds: two more scopegates, one
#                      with tracing on)
#        TOKENS_RUN=1  0: skip the scopegate+tokens target
#        SUBJECTS=10000  identity tokens (distinct subjects) minted for scopegate+tokens
#        TARGETS="..." run only these targets (e.g. "scopegate scopegate+usage")
#        SSE=0         1: the SSE phase (needs target/release/examples/sse_first_event)
#        SSE_STREAMS=2000 SSE_HOLD=1000  sequential streams per key; streams held at once
#        PINGORA_RUN=1 0: skip the plain pingora target
#        INSTR=1       0: skip the callgrind instruction counts
#        INSTR_REQUESTS=5000  requests counted per target under callgrind
#        INSTR_TARGETS="nginx pingora scopegate scopegate+usage"  the targets counted under
#                      callgrind (scopegate+log may be added: the access log on, to /dev/null)
#        INSTR_KEEP=DIR  also copy each target's callgrind output to DIR/callgrind-TARGET.out
#                      and write DIR/callgrind-TARGET.{inclusive,self}.txt (callgrind_annotate)
#        OHA=1         0: no oha (not installed, no time to build it): no fixed-rate latency
#                      run, and callgrind is driven by wrk for INSTR_SECS seconds instead.
#                      scopegate+tokens is always driven by wrk (oha cannot rotate a header):
#                      no fixed-rate latency for it, and wrk for INSTR_SECS under callgrind
#        INSTR_SECS=10 seconds of wrk load counted under callgrind when OHA=0
#        BASE_BIN=path another scopegate binary (e.g. an earlier commit's release build) measured
#                      beside this one, with the same config, keys and requests: adds the targets
#                      `base` and `base+usage` (rounds and callgrind), for before/after in one run
#        SKIP_BUILD=1  do not run `cargo build --release` first
#        BASE_PORT=18080  first port tried; free ports are picked upward from it
#        KEEP_TMP=1    keep the raw-output dir (default: kept; set 0 to delete)
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
RATE=${RATE:-2000}
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-2}
KEYS=${KEYS:-10000}
WORKSPACES=${WORKSPACES:-100}
LOG_RUN=${LOG_RUN:-1}
USAGE_RUN=${USAGE_RUN:-1}
TRACES_RUN=${TRACES_RUN:-1}
TOKENS_RUN=${TOKENS_RUN:-1}
SUBJECTS=${SUBJECTS:-10000}
SSE=${SSE:-0}
SSE_STREAMS=${SSE_STREAMS:-2000}
SSE_HOLD=${SSE_HOLD:-1000}
PINGORA_RUN=${PINGORA_RUN:-1}
INSTR=${INSTR:-1}
INSTR_REQUESTS=${INSTR_REQUESTS:-5000}
INSTR_TARGETS=${INSTR_TARGETS:-}
INSTR_KEEP=${INSTR_KEEP:-}
OHA=${OHA:-1}
INSTR_SECS=${INSTR_SECS:-10}
SKIP_BUILD=${SKIP_BUILD:-0}
BASE_PORT=${BASE_PORT:-18080}
KEEP_TMP=${KEEP_TMP:-1}
PROXY_CPU=1   # the proxy under test
LOAD_CPU=0    # the load generator and the upstream

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN="$REPO/target/release/scopegate"
BASE_BIN=${BASE_BIN:-}
[[ -z $BASE_BIN || -x $BASE_BIN ]] || { echo "run.sh: BASE_BIN $BASE_BIN is not an executable" >&2; exit 1; }
PLAIN="$REPO/target/release/examples/plain_pingora"
SSE_EX="$REPO/target/release/examples/sse_first_event"
# the token minter: its speed does not matter (10,000 RS256 signatures take ~8 s in a debug
# build), so a debug build is used when there is no release one
MINT="$REPO/target/release/examples/mint_tokens"
[[ -x $MINT ]] || MINT="$REPO/target/debug/examples/mint_tokens"
HOST=127.0.0.1   # the only address this script ever sends traffic to

log() { printf '[run.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '\nrun.sh: FAILED: %s\n' "$*" >&2; exit 1; }

for v in ROUNDS DURATION RATE CONNS WARMUP KEYS WORKSPACES BASE_PORT INSTR_REQUESTS SSE_STREAMS SSE_HOLD SUBJECTS; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ $(nproc) -ge 2 ]] || die "needs at least 2 CPUs (proxy on CPU $PROXY_CPU, load on CPU $LOAD_CPU)"

# ---------------------------------------------------------------- tools
ensure_tools() {
  local missing=()
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v curl >/dev/null || missing+=(curl)
  command -v taskset >/dev/null || missing+=(util-linux)
  command -v pgrep >/dev/null || missing+=(procps)
  command -v ss >/dev/null || missing+=(iproute2)
  if [[ $INSTR == 1 ]]; then
    command -v valgrind >/dev/null || missing+=(valgrind)
  fi
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    [[ $EUID -eq 0 ]] || die "missing ${missing[*]}; run as root or install them"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"
  command -v python3 >/dev/null || die "python3 is needed (keys file generation, summaries)"
  # Fixed-rate latency: Debian has no wrk2, and wrk 4 cannot hold a rate, so oha -q.
  if [[ $OHA == 1 ]] && ! command -v oha >/dev/null; then
    log "installing oha (cargo install oha --locked; a few minutes the first time)"
    cargo install oha --locked >&2 || die "cargo install oha failed"
  fi
}

# ---------------------------------------------------------------- ports
declare -A TAKEN=()
port_free() { [[ -z $(ss -Htln "sport = :$1" 2>/dev/null) ]]; }
pick_port() {  # pick_port VAR: the next free port >= NEXT_PORT into VAR (no subshell: state)
  local p=$NEXT_PORT
  while [[ -n ${TAKEN[$p]:-} ]] || ! port_free "$p"; do
    p=$((p + 1)); ((p < BASE_PORT + 200)) || die "no free port in $BASE_PORT..$((BASE_PORT + 199))"
  done
  TAKEN[$p]=1; NEXT_PORT=$((p + 1)); printf -v "$1" '%s' "$p"
}
need_free() { port_free "$1" || die "port $1 ($2) is in use by another process"; }

# ---------------------------------------------------------------- processes
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n ${TMP:-} && $KEEP_TMP == 0 ]]; then rm -rf "$TMP"; fi
  [[ -n ${TMP:-} && -d ${TMP:-/nonexistent} ]] && log "raw outputs: $TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stop_pid() {  # stop_pid PID: TERM, wait up to 10 s, then KILL
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local keep=(); for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# all pids of a process tree root (nginx master + workers; scopegate is one process)
tree_pids() { echo "$1"; pgrep -P "$1" 2>/dev/null || true; }
# CPU time in clock ticks (utime+stime, every thread) summed over the given pids.
cpu_ticks() {
  local t=0 pid v
  for pid in "$@"; do
    v=$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}') || die "pid $pid vanished"
    t=$((t + v))
  done
  echo "$t"
}
rss_kib() {
  local t=0 pid v
  for pid in "$@"; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status") || die "pid $pid vanished"
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

wait_http() {  # wait_http URL PID WHAT [curl args...]: poll until 200, at most WAIT_SECS (30) s
  local url=$1 pid=$2 what=$3 secs=${WAIT_SECS:-30}; shift 3
  for _ in $(seq $((secs * 10))); do
    kill -0 "$pid" 2>/dev/null || die "$what exited during start-up (see $TMP)"
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" 2>/dev/null) == 200 ]] && return 0
    sleep 0.1
  done
  die "$what not ready after $secs s ($url)"
}

# ---------------------------------------------------------------- set-up
ensure_tools
if [[ $SKIP_BUILD != 1 ]]; then
  log "cargo build --release (SKIP_BUILD=1 skips)"
  ok=0
  for attempt in 1 2 3; do
    if (cd "$REPO" && cargo build --release --bin scopegate --example plain_pingora --example sse_first_event --example mint_tokens >&2); then ok=1; break; fi
    log "build failed (attempt $attempt); retrying in 20 s"; sleep 20
  done
  ((ok)) || die "cargo build --release failed"
fi
[[ -x $BIN ]] || die "$BIN not found (build it or drop SKIP_BUILD=1)"
if [[ $PINGORA_RUN == 1 || $INSTR == 1 ]]; then
  [[ -x $PLAIN ]] || die "$PLAIN not found (cargo build --release --example plain_pingora, or drop SKIP_BUILD=1)"
fi
if [[ $SSE == 1 ]]; then
  [[ -x $SSE_EX ]] || die "$SSE_EX not found (cargo build --release --example sse_first_event)"
fi
if [[ $TOKENS_RUN == 1 ]]; then
  [[ -x $MINT ]] || die "no examples/mint_tokens build (cargo build --example mint_tokens, or TOKENS_RUN=0)"
fi

TMP=$(mktemp -d /tmp/scopegate-load.XXXXXX)
mkdir -p "$TMP/raw" "$TMP/upstream" "$TMP/proxy" "$TMP/sg"
log "raw outputs go to $TMP"
NEXT_PORT=$BASE_PORT
pick_port UP_PORT; pick_port NGX_PORT; pick_port SG_PORT; pick_port SG_MPORT; pick_port PP_PORT
pick_port SSE_UP_PORT; pick_port SSE_TR_PORT; pick_port SSE_TR_MPORT; pick_port SSE_UT_PORT; pick_port SSE_UT_MPORT
SSE_TR_PIDS=()
log "ports: upstream $UP_PORT, nginx proxy $NGX_PORT, pingora $PP_PORT, scopegate $SG_PORT (metrics $SG_MPORT)"

NGINX=$(command -v nginx)
USER_LINE=""; [[ $EUID -eq 0 ]] && USER_LINE="user root;"
REQ_BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in five short words, please."}]}'
RESP_BODY='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, nice to meet you!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":9,"total_tokens":28}}'

# keepalive_requests is raised everywhere so that no side closes a kept-alive
# connection after nginx's default 1000 requests (that would add reconnects to every
# target differently).
cat >"$TMP/upstream/nginx.conf" <<EOF
$USER_LINE
worker_processes 1;
daemon off;
pid $TMP/upstream/nginx.pid;
error_log $TMP/upstream/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path $TMP/upstream/client_body;
  server {
    listen $HOST:$UP_PORT;
    location = /v1/chat/completions {
      default_type application/json;
      return 200 '$RESP_BODY';
    }
    # the trace sink of scopegate+traces: an OTLP/HTTP answer with no partial failure
    location = /v1/traces {
      default_type application/x-protobuf;
      return 200 '';
    }
    location / { return 404; }
  }
}
EOF
cat >"$TMP/proxy/nginx.conf" <<EOF
$USER_LINE
worker_processes 1;
daemon off;
pid $TMP/proxy/nginx.pid;
error_log $TMP/proxy/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path $TMP/proxy/client_body;
  proxy_temp_path $TMP/proxy/proxy_temp;
  upstream up {
    server $HOST:$UP_PORT;
    keepalive 64;
    keepalive_requests 10000000;
  }
  server {
    listen $HOST:$NGX_PORT;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
"$NGINX" -t -q -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" 2>"$TMP/upstream/t.log" || die "upstream nginx.conf invalid: $(cat "$TMP/upstream/t.log")"
"$NGINX" -t -q -p "$TMP/proxy" -c "$TMP/proxy/nginx.conf" 2>"$TMP/proxy/t.log" || die "proxy nginx.conf invalid: $(cat "$TMP/proxy/t.log")"

log "generating $KEYS keys in $WORKSPACES workspaces"
# STATE_APART=1 (default) keeps state.db out of the keys file's folder: scopegate watches
# that folder, and every write-behind of state.db (once a second) would make it re-read and
# hash the whole keys file (see docs/benchmarks.md, 2026-11-30). 0: state.db beside it.
STATE_PATH=../state/state.db; mkdir -p "$TMP/state"
[[ ${STATE_APART:-1} == 0 ]] && STATE_PATH=state.db
GEN_ARGS=(); [[ $USAGE_RUN == 1 || $SSE == 1 ]] && GEN_ARGS=(--limited-secret-out "$TMP/sg/secret-limited" --cost-secret-out "$TMP/sg/secret-cost")
# scopegate+tokens: the same keys file (same keys, same hashes) with org_bench accepting tokens
[[ $TOKENS_RUN == 1 ]] && GEN_ARGS+=(--identity-tokens-out "$TMP/sg/keys-tokens.yaml")
USED=$(python3 "$HERE/gen_keys.py" "$TMP/sg/keys.yaml" "$TMP/sg/secret" --keys "$KEYS" --workspaces "$WORKSPACES" "${GEN_ARGS[@]}")
SG_KEY=$(cat "$TMP/sg/secret"); export SG_KEY
PLAIN_KEY=$SG_KEY; LIMITED_KEY=""; COST_KEY=""; NKEYS=$KEYS
if [[ -f $TMP/sg/secret-limited ]]; then
  LIMITED_KEY=$(cat "$TMP/sg/secret-limited"); COST_KEY=$(cat "$TMP/sg/secret-cost"); NKEYS=$((KEYS + 2))
fi
log "the benchmark presents ${USED% *} (workspace ${USED#* })"
cat >"$TMP/sg/scopegate.yaml" <<EOF
listen: ["$HOST:$SG_PORT"]
metrics_listen: "$HOST:$SG_MPORT"
threads: 1
keys_file: keys.yaml
reload_poll_interval_ms: 1000
max_inspect_body_bytes: 65536
log_format: json
shutdown_grace_period_seconds: 1
state: { path: $STATE_PATH }
upstreams:
  completions: { url: "http://$HOST:$UP_PORT", connect_timeout_ms: 2000, read_timeout_ms: 60000 }
  admin: { url: "http://$HOST:$UP_PORT" }
EOF
"$BIN" check --config "$TMP/sg/scopegate.yaml" >"$TMP/sg/check.out" 2>&1 || die "scopegate check failed: $(head -20 "$TMP/sg/check.out")"
# scopegate+traces(0): the same config with a tracing block, exporting to the upstream nginx
# (the sink) every 5 s, the default
for v in "traces 1.0" "traces0 0"; do
  cp "$TMP/sg/scopegate.yaml" "$TMP/sg/${v% *}.yaml"
  printf 'tracing:\n  otlp_endpoint: "http://%s:%s"\n  sample_ratio: %s\n' "$HOST" "$UP_PORT" "${v#* }" \
    >>"$TMP/sg/${v% *}.yaml"
  "$BIN" check --config "$TMP/sg/${v% *}.yaml" >"$TMP/sg/check-${v% *}.out" 2>&1 \
    || die "scopegate check failed (${v% *}): $(head -20 "$TMP/sg/check-${v% *}.out")"
done
# scopegate+tokens: SUBJECTS RS256 tokens (one per subject, valid 30 days) and their JWK set
# beside keys-tokens.yaml; the same config pointing at that keys file
TOKENS_FILE="$TMP/sg/tokens.txt"; FIRST_TOKEN=""
if [[ $TOKENS_RUN == 1 ]]; then
  log "minting $SUBJECTS identity tokens ($MINT)"
  "$MINT" "$TMP/sg" "$SUBJECTS" "$WORKSPACES" >"$TMP/sg/mint.out" 2>&1 || die "mint_tokens failed: $(cat "$TMP/sg/mint.out")"
  [[ $(wc -l <"$TOKENS_FILE") == "$SUBJECTS" ]] || die "mint_tokens wrote $(wc -l <"$TOKENS_FILE") tokens, not $SUBJECTS"
  FIRST_TOKEN=$(head -1 "$TOKENS_FILE")
  sed 's/^keys_file: keys.yaml$/keys_file: keys-tokens.yaml/' "$TMP/sg/scopegate.yaml" >"$TMP/sg/tokens.yaml"
  "$BIN" check --config "$TMP/sg/tokens.yaml" >"$TMP/sg/check-tokens.out" 2>&1 \
    || die "scopegate check failed (tokens): $(head -20 "$TMP/sg/check-tokens.out")"
fi
log "scopegate check: $(head -1 "$TMP/sg/check.out")"

# ---------------------------------------------------------------- facts
WRK_VER=$(wrk -v 2>&1 | head -1 | sed 's/ Copyright.*//' || true)
OHA_VER="not used (OHA=0)"; [[ $OHA == 1 ]] && OHA_VER=$(oha --version 2>&1 | head -1)
GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$REPO" status --porcelain -- src examples benches Cargo.toml Cargo.lock 2>/dev/null) ]] && GIT_REV="$GIT_REV (+ uncommitted changes in src/examples/benches/Cargo)"
FACTS="$TMP/facts.md"
{
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- cpus: $(nproc) × $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "- memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "- kernel: $(uname -sr)"
  echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- $("$NGINX" -v 2>&1)"
  echo "- wrk: $WRK_VER"
  echo "- oha: $OHA_VER"
  echo "- rustc: $(rustc --version 2>/dev/null || echo unknown)"
  echo "- scopegate: $GIT_REV, target/release/scopegate"
  echo "- settings: ROUNDS=$ROUNDS DURATION=${DURATION}s RATE=$RATE CONNS=$CONNS WARMUP=${WARMUP}s KEYS=$KEYS WORKSPACES=$WORKSPACES USAGE_RUN=$USAGE_RUN TOKENS_RUN=$TOKENS_RUN SUBJECTS=$SUBJECTS OHA=$OHA INSTR_SECS=$INSTR_SECS SSE=$SSE"
  echo "- pinning: proxy under test on CPU $PROXY_CPU; wrk/oha and the upstream nginx on CPU $LOAD_CPU"
} >"$FACTS"
cat "$FACTS" >&2

# ---------------------------------------------------------------- upstream
need_free "$UP_PORT" upstream
taskset -c "$LOAD_CPU" "$NGINX" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" 2>>"$TMP/upstream/stderr.log" &
UP_PID=$!; PIDS+=("$UP_PID")
wait_http "http://$HOST:$UP_PORT/v1/chat/completions" "$UP_PID" "upstream nginx" -X POST -d "$REQ_BODY"

# ---------------------------------------------------------------- targets
if [[ -n ${TARGETS:-} ]]; then
  read -r -a TARGETS <<<"$TARGETS"
else
  TARGETS=(direct nginx)
  [[ $PINGORA_RUN == 1 ]] && TARGETS+=(pingora)
  TARGETS+=(scopegate)
  [[ $LOG_RUN == 1 ]] && TARGETS+=(scopegate+log)
  [[ $USAGE_RUN == 1 ]] && TARGETS+=(scopegate+usage scopegate+cost)
  [[ $TRACES_RUN == 1 ]] && TARGETS+=(scopegate+traces scopegate+traces0)
  [[ $TOKENS_RUN == 1 ]] && TARGETS+=(scopegate+tokens)
  [[ -n $BASE_BIN ]] && TARGETS+=(base)
  [[ -n $BASE_BIN && $USAGE_RUN == 1 ]] && TARGETS+=(base+usage)
fi
for t in "${TARGETS[@]}"; do
  case $t in
    direct | nginx | pingora | scopegate | scopegate+log | scopegate+traces | scopegate+traces0) ;;
    scopegate+usage) [[ -n $LIMITED_KEY ]] || die "scopegate+usage needs USAGE_RUN=1" ;;
    scopegate+cost) [[ -n $COST_KEY ]] || die "scopegate+cost needs USAGE_RUN=1" ;;
    scopegate+tokens) [[ -n $FIRST_TOKEN ]] || die "scopegate+tokens needs TOKENS_RUN=1" ;;
    base) [[ -n $BASE_BIN ]] || die "target base needs BASE_BIN" ;;
    base+usage) [[ -n $BASE_BIN && -n $LIMITED_KEY ]] || die "base+usage needs BASE_BIN and USAGE_RUN=1" ;;
    *) die "unknown target '$t'" ;;
  esac
done
if [[ -n $INSTR_TARGETS ]]; then
  read -r -a INSTR_TARGETS <<<"$INSTR_TARGETS"
else
  INSTR_TARGETS=(nginx pingora scopegate)
  [[ -n $LIMITED_KEY ]] && INSTR_TARGETS+=(scopegate+usage scopegate+cost)
  [[ $TRACES_RUN == 1 ]] && INSTR_TARGETS+=(scopegate+traces scopegate+traces0)
  [[ $TOKENS_RUN == 1 ]] && INSTR_TARGETS+=(scopegate+tokens)
  [[ -n $BASE_BIN ]] && INSTR_TARGETS+=(base)
  [[ -n $BASE_BIN && -n $LIMITED_KEY ]] && INSTR_TARGETS+=(base+usage)
fi
if [[ $INSTR == 1 ]]; then
  for t in "${INSTR_TARGETS[@]}"; do
    case $t in
      nginx | pingora | scopegate | scopegate+log | scopegate+traces | scopegate+traces0) ;;
      scopegate+usage) [[ -n $LIMITED_KEY ]] || die "INSTR_TARGETS: scopegate+usage needs USAGE_RUN=1" ;;
      scopegate+cost) [[ -n $COST_KEY ]] || die "INSTR_TARGETS: scopegate+cost needs USAGE_RUN=1" ;;
      scopegate+tokens) [[ -n $FIRST_TOKEN ]] || die "INSTR_TARGETS: scopegate+tokens needs TOKENS_RUN=1" ;;
      base) [[ -n $BASE_BIN ]] || die "INSTR_TARGETS: base needs BASE_BIN" ;;
      base+usage) [[ -n $BASE_BIN && -n $LIMITED_KEY ]] || die "INSTR_TARGETS: base+usage needs BASE_BIN and USAGE_RUN=1" ;;
      *) die "INSTR_TARGETS: unknown or uncountable target '$t'" ;;
    esac
  done
  if [[ -n $INSTR_KEEP ]]; then
    mkdir -p "$INSTR_KEEP" || die "INSTR_KEEP: cannot create $INSTR_KEEP"
    INSTR_KEEP=$(cd "$INSTR_KEEP" && pwd)
  fi
fi
PROXY_PID=""

start_target() {  # start_target NAME ROUND -> sets URL, PROXY_PID
  local t=$1 r=$2
  PROXY_PID=""
  # the key wrk (post.lua reads SG_KEY), oha and the smoke test present; scopegate+tokens:
  # the smoke test presents the first token, wrk rotates over all of them (tokens.lua)
  SG_KEY=$PLAIN_KEY; [[ $t == *+usage ]] && SG_KEY=$LIMITED_KEY; [[ $t == *+cost ]] && SG_KEY=$COST_KEY
  WRK_SCRIPT=post.lua
  [[ $t == scopegate+tokens ]] && { SG_KEY=$FIRST_TOKEN; WRK_SCRIPT=tokens.lua; }
  case $t in
    direct) URL="http://$HOST:$UP_PORT" ;;
    nginx)
      need_free "$NGX_PORT" "nginx proxy"
      taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP/proxy" -c "$TMP/proxy/nginx.conf" 2>>"$TMP/proxy/stderr.log" &
      PROXY_PID=$!; PIDS+=("$PROXY_PID"); URL="http://$HOST:$NGX_PORT"
      wait_http "$URL/v1/chat/completions" "$PROXY_PID" "nginx proxy" -X POST -d "$REQ_BODY" ;;
    pingora)
      need_free "$PP_PORT" "pingora proxy"
      taskset -c "$PROXY_CPU" "$PLAIN" "$HOST:$PP_PORT" "$HOST:$UP_PORT" >"$TMP/proxy/pingora-r$r.log" 2>&1 &
      PROXY_PID=$!; PIDS+=("$PROXY_PID"); URL="http://$HOST:$PP_PORT"
      wait_http "$URL/v1/chat/completions" "$PROXY_PID" "pingora proxy" -X POST -d "$REQ_BODY" ;;
    scopegate | scopegate+log | scopegate+usage | scopegate+cost | scopegate+traces | scopegate+traces0 | scopegate+tokens | base | base+usage)
      local level=warn out="$TMP/sg/stderr-r$r.log" bin=$BIN config="$TMP/sg/scopegate.yaml"
      [[ $t == scopegate+log ]] && { level=info; out=/dev/null; }
      [[ $t == base* ]] && bin=$BASE_BIN
      [[ $t == scopegate+traces* || $t == scopegate+tokens ]] && config="$TMP/sg/${t#scopegate+}.yaml"
      need_free "$SG_PORT" scopegate; need_free "$SG_MPORT" "scopegate metrics"
      RUST_LOG=$level taskset -c "$PROXY_CPU" "$bin" serve --config "$config" >"$out" 2>&1 &
      PROXY_PID=$!; PIDS+=("$PROXY_PID"); URL="http://$HOST:$SG_PORT"
      wait_http "http://$HOST:$SG_MPORT/readyz" "$PROXY_PID" "scopegate" ;;
  esac
}

smoke() {  # smoke NAME: one correct request through the target; scopegate also denies
  local t=$1 body code
  body=$(curl -s -X POST -H 'Content-Type: application/json' -H "Authorization: Bearer $SG_KEY" -d "$REQ_BODY" "$URL/v1/chat/completions" -w '\n%{http_code}')
  code=${body##*$'\n'}; body=${body%$'\n'*}
  [[ $code == 200 && $body == "$RESP_BODY" ]] || die "$t: smoke request got $code: $body"
  if [[ $t == scopegate* || $t == base* ]]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer sgk-bench-wrong" -d "$REQ_BODY" "$URL/v1/chat/completions")
    [[ $code == 401 ]] || die "$t: a wrong key got $code, expected 401"
    local nkeys
    nkeys=$(curl -s "http://$HOST:$SG_MPORT/metrics" | awk '/^scopegate_keys[{ ]/ {s += $NF} END {print s + 0}')
    if [[ $nkeys != 0 && $nkeys != "$NKEYS" ]]; then die "$t: scopegate_keys sums to $nkeys, expected $NKEYS"; fi
    [[ $nkeys == 0 ]] && log "warning: no scopegate_keys gauge on /metrics; key count not checked"
  fi
  return 0
}

run_wrk() {  # run_wrk OUTFILE SECONDS -> prints "requests duration_us p50_us p99_us"
  local out=$1 secs=$2 line
  SG_TOKENS_START=${SG_TOKENS_START:-0} timeout $((secs + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${secs}s" --latency -s "$HERE/${WRK_SCRIPT:-post.lua}" "$URL/v1/chat/completions" >"$out" 2>&1 \
    || die "wrk failed (see $out)"
  line=$(grep '^WRKRESULT ' "$out") || die "no WRKRESULT in $out"
  local requests duration_us err_connect err_read err_write err_timeout err_status p50_us p99_us bytes
  eval "$(sed 's/^WRKRESULT //; s/ /; /g' <<<"$line")"
  ((err_status == 0)) || die "$out: $err_status responses were not 2xx/3xx"
  ((err_connect + err_read + err_write + err_timeout == 0)) \
    || die "$out: socket errors: connect $err_connect, read $err_read, write $err_write, timeout $err_timeout"
  ((requests > 0)) || die "$out: no requests completed"
  echo "$requests $duration_us $p50_us $p99_us"
}

run_oha() {  # run_oha OUTFILE -> prints "p50_us p99_us"
  local out=$1 n=$((RATE * DURATION))
  timeout $((DURATION + 60)) taskset -c "$LOAD_CPU" oha --no-tui --output-format json \
    -n "$n" -q "$RATE" -c "$CONNS" --latency-correction \
    -m POST -T application/json -H "Authorization: Bearer $SG_KEY" -d "$REQ_BODY" \
    "$URL/v1/chat/completions" >"$out" 2>"$out.stderr" || die "oha failed (see $out.stderr)"
  python3 "$HERE/oha_summary.py" "$out" "$n" || die "oha run not clean (see $out)"
}

# scopegate+tokens: tokens.lua reads the tokens from here
export SG_TOKENS=$TOKENS_FILE

# scopegate+tokens: one pass over every token before anything is counted, so that each is
# verified (RS256) and cached once and the measured requests are cache hits, as in a proxy
# that has been up for a while. wrk runs of SECONDS each, every one starting where the last
# one's completed requests end, less CONNS (they may have been in flight when it stopped),
# until the starts have gone past every token.
warm_tokens() {  # warm_tokens RAWFILE-PREFIX SECONDS
  local prefix=$1 secs=$2 start=0 k=0 w c
  while ((start < SUBJECTS)); do
    k=$((k + 1)); ((k <= 200)) || die "token warm-up pass not done after 200 wrk runs"
    w=$(SG_TOKENS_START=$start run_wrk "$prefix-pass$k.txt" "$secs"); c=${w%% *}
    ((c > CONNS)) || die "token warm-up pass: only $c requests in ${secs}s"
    start=$((start + c - CONNS))
  done
  log "token warm-up pass: $SUBJECTS tokens in $k wrk run(s) of ${secs}s"
}

RESULTS="$TMP/results.tsv"
printf 'round\ttarget\trps\tcpu_s_per_100k\tbusy_pct\tp50_us\tp99_us\trss_mib\twrk_p50_us\twrk_p99_us\n' >"$RESULTS"
TCK=$(getconf CLK_TCK)

measure() {  # measure NAME ROUND
  local t=$1 r=$2 tag="r$2-${1/+/-}"
  start_target "$t" "$r"
  smoke "$t"
  [[ $t == scopegate+tokens ]] && warm_tokens "$TMP/raw/$tag-warmup" "$WARMUP"
  log "round $r: $t: warm-up ${WARMUP}s"
  run_wrk "$TMP/raw/$tag-warmup.txt" "$WARMUP" >/dev/null
  local pids=() c0=0 c1=0 w
  if [[ -n $PROXY_PID ]]; then mapfile -t pids < <(tree_pids "$PROXY_PID"); c0=$(cpu_ticks "${pids[@]}"); fi
  log "round $r: $t: max throughput, wrk -t1 -c$CONNS -d${DURATION}s"
  w=$(run_wrk "$TMP/raw/$tag-wrk.txt" "$DURATION")
  [[ -n $PROXY_PID ]] && c1=$(cpu_ticks "${pids[@]}")
  local requests duration_us wp50 wp99; read -r requests duration_us wp50 wp99 <<<"$w"
  # oha presents one key: no fixed-rate run for scopegate+tokens
  local use_oha=$OHA; [[ $t == scopegate+tokens ]] && use_oha=0
  [[ $use_oha == 1 ]] && log "round $r: $t: fixed rate, oha -q $RATE for ${DURATION}s"
  local o p50=NA p99=NA
  if [[ $use_oha == 1 ]]; then o=$(run_oha "$TMP/raw/$tag-oha.json"); read -r p50 p99 <<<"$o"; fi
  local cpu=NA busy=NA rss=NA
  if [[ -n $PROXY_PID ]]; then
    mapfile -t pids < <(tree_pids "$PROXY_PID")
    rss=$(awk -v k="$(rss_kib "${pids[@]}")" 'BEGIN {printf "%.1f", k / 1024}')
    # what scopegate counted (scopegate+usage: reported tokens, no refusals)
    [[ $t == scopegate* || $t == base* ]] && { curl -s "http://$HOST:$SG_MPORT/metrics" | grep -E '^scopegate_(tokens_total|requests_total|usage_limit_ratio|token_verifications_total|jwks_keys)' >"$TMP/raw/$tag-metrics.txt" || true; }
    if [[ $t == scopegate+tokens ]]; then
      # every token presented verified (from the cache or not); none refused
      local ok bad
      ok=$(awk '/^scopegate_token_verifications_total\{.*result="ok"/ {s += $NF} END {print s + 0}' "$TMP/raw/$tag-metrics.txt")
      bad=$(awk '/^scopegate_token_verifications_total\{/ && !/result="ok"/ {s += $NF} END {print s + 0}' "$TMP/raw/$tag-metrics.txt")
      ((ok >= requests + SUBJECTS)) && [[ $bad == 0 ]] \
        || die "$t: scopegate_token_verifications_total: ok $ok (expected ≥ $((requests + SUBJECTS))), refused $bad"
    fi
    cpu=$(awk -v d=$((c1 - c0)) -v t="$TCK" -v n="$requests" 'BEGIN {printf "%.3f", d / t / n * 100000}')
    busy=$(awk -v d=$((c1 - c0)) -v t="$TCK" -v us="$duration_us" 'BEGIN {printf "%.0f", d / t / (us / 1e6) * 100}')
    stop_pid "$PROXY_PID"; PROXY_PID=""
  fi
  local rps; rps=$(awk -v n="$requests" -v us="$duration_us" 'BEGIN {printf "%.0f", n / (us / 1e6)}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$rps" "$cpu" "$busy" "$p50" "$p99" "$rss" "$wp50" "$wp99" >>"$RESULTS"
  log "round $r: $t: $rps req/s, cpu ${cpu} s/100k, busy ${busy}%, p50 ${p50}µs p99 ${p99}µs @${RATE}rps, rss ${rss} MiB"
}

START=$SECONDS
for ((r = 1; r <= ROUNDS; r++)); do
  n=${#TARGETS[@]}; k=$(((r - 1) % n))
  order=("${TARGETS[@]:k}" "${TARGETS[@]:0:k}")
  log "round $r/$ROUNDS: order ${order[*]}"
  for t in "${order[@]}"; do measure "$t" "$r"; done
done
log "measurements took $((SECONDS - START)) s"

# ---------------------------------------------------------------- instructions per request
# callgrind counts the instructions a process executes in user space: the same count for the
# same binary and requests whatever else the machine does, so it is the steady complement to
# the CPU-seconds above (it leaves out the kernel's side: syscalls, TCP, wake-ups).
INSTR_TSV="$TMP/instructions.tsv"
printf 'target\trequests\tinstructions\n' >"$INSTR_TSV"
# The keys-file poll is on a wall-clock timer; under valgrind's ~50× slowdown it would run
# 50× as often per request, so the counted scopegate polls once an hour instead.
sed 's/^reload_poll_interval_ms: .*/reload_poll_interval_ms: 3600000/' "$TMP/sg/scopegate.yaml" >"$TMP/sg/callgrind.yaml"
for v in traces traces0 tokens; do
  [[ -f $TMP/sg/$v.yaml ]] || continue
  sed 's/^reload_poll_interval_ms: .*/reload_poll_interval_ms: 3600000/' "$TMP/sg/$v.yaml" >"$TMP/sg/callgrind-$v.yaml"
done

count_instructions() {  # count_instructions NAME URL READY_URL CMD...
  local t=$1 url=$2 ready=$3; shift 3
  local out="$TMP/raw/callgrind-$t.out" pid level=warn plog="$TMP/raw/callgrind-$t.log"
  # scopegate+log: one access-log line per request, formatted and written to /dev/null
  [[ $t == scopegate+log ]] && { level=info; plog=/dev/null; }
  RUST_LOG=$level taskset -c "$PROXY_CPU" valgrind --tool=callgrind --instr-atstart=no \
    --log-file="$TMP/raw/callgrind-$t.valgrind.log" \
    --callgrind-out-file="$out" "$@" >"$plog" 2>&1 &
  pid=$!; PIDS+=("$pid")
  # valgrind start-up (and scopegate's keys load) is slow
  WAIT_SECS=120 wait_http "$ready" "$pid" "$t under valgrind"
  local counted=$INSTR_REQUESTS use_oha=$OHA
  WRK_SCRIPT=post.lua
  # scopegate+tokens: wrk rotating over the tokens (oha presents one key), after a pass over
  # all of them (every token verified and cached before counting starts)
  if [[ $t == scopegate+tokens ]]; then
    use_oha=0; WRK_SCRIPT=tokens.lua
    URL=$url CONNS=8 warm_tokens "$TMP/raw/callgrind-$t-warmup" 5
  fi
  if [[ $use_oha == 1 ]]; then
    local oha_args=(--no-tui --output-format json -c 8 -m POST -T application/json
      -H "Authorization: Bearer $SG_KEY" -d "$REQ_BODY" "$url/v1/chat/completions")
    taskset -c "$LOAD_CPU" oha -n 500 "${oha_args[@]}" >/dev/null 2>&1 || die "$t: oha warm-up failed"
    callgrind_control -i on "$pid" >/dev/null || die "callgrind_control failed for $t"
    taskset -c "$LOAD_CPU" oha -n "$INSTR_REQUESTS" "${oha_args[@]}" >"$TMP/raw/callgrind-$t-oha.json" 2>&1 \
      || die "$t: oha failed under callgrind"
  else
    # wrk for a fixed time; its count of completed requests is the divisor (the few in
    # flight when counting stops are within a request or two of 8 connections)
    URL=$url run_wrk "$TMP/raw/callgrind-$t-warmup.txt" 2 >/dev/null
    callgrind_control -i on "$pid" >/dev/null || die "callgrind_control failed for $t"
    local w; w=$(URL=$url CONNS=8 run_wrk "$TMP/raw/callgrind-$t-wrk.txt" "$INSTR_SECS")
    counted=${w%% *}
  fi
  callgrind_control -i off "$pid" >/dev/null || die "callgrind_control -i off failed for $t"
  callgrind_control -d "$pid" >/dev/null || die "callgrind_control -d failed for $t"
  if [[ $use_oha == 1 ]]; then
    python3 "$HERE/oha_summary.py" "$TMP/raw/callgrind-$t-oha.json" "$INSTR_REQUESTS" >/dev/null \
      || die "$t: not every counted request was 2xx (see $TMP/raw/callgrind-$t-oha.json)"
  fi
  stop_pid "$pid"
  local total
  total=$(awk '/^totals:/ {print $2}' "$out".* 2>/dev/null | tail -1 || true)
  [[ $total =~ ^[0-9]+$ ]] && ((total > 0)) || die "$t: no callgrind totals in $out.* (see $TMP/raw/callgrind-$t.valgrind.log)"
  printf '%s\t%s\t%s\n' "$t" "$counted" "$total" >>"$INSTR_TSV"
  log "instructions: $t: $((total / counted)) per request ($counted requests)"
  if [[ -n $INSTR_KEEP ]]; then
    # the dump taken at `callgrind_control -d` holds the counted requests (the file written
    # at exit holds nothing: counting was off by then)
    local dump kept="$INSTR_KEEP/callgrind-$t.out"
    dump=$(grep -l "^totals: $total\$" "$out".* 2>/dev/null | tail -1 || true)
    [[ -n $dump ]] || dump=$(ls "$out".* | tail -1)
    cp "$dump" "$kept"
    printf '%s\n' "$counted" >"$INSTR_KEEP/callgrind-$t.requests"
    callgrind_annotate --inclusive=yes --threshold=99.9 "$kept" >"$INSTR_KEEP/callgrind-$t.inclusive.txt" 2>/dev/null \
      || log "warning: callgrind_annotate failed for $t"
    callgrind_annotate --inclusive=no --threshold=99.9 "$kept" >"$INSTR_KEEP/callgrind-$t.self.txt" 2>/dev/null \
      || log "warning: callgrind_annotate failed for $t"
    log "instructions: $t: kept $kept ($counted requests; callgrind_annotate outputs beside it)"
  fi
}

if [[ $INSTR == 1 ]]; then
  log "instructions per request under callgrind ($INSTR_REQUESTS requests each): ${INSTR_TARGETS[*]}"
  SG_KEY=$PLAIN_KEY   # the rounds leave the last target's key here
  need_free "$NGX_PORT" "nginx proxy"; need_free "$PP_PORT" "pingora proxy"
  need_free "$SG_PORT" scopegate; need_free "$SG_MPORT" "scopegate metrics"
  for t in "${INSTR_TARGETS[@]}"; do
    case $t in
      nginx)
        count_instructions nginx "http://$HOST:$NGX_PORT" "http://$HOST:$NGX_PORT/v1/chat/completions" \
          "$NGINX" -p "$TMP/proxy" -c "$TMP/proxy/nginx.conf" -g "master_process off;" ;;
      pingora)
        count_instructions pingora "http://$HOST:$PP_PORT" "http://$HOST:$PP_PORT/v1/chat/completions" \
          "$PLAIN" "$HOST:$PP_PORT" "$HOST:$UP_PORT" ;;
      scopegate | scopegate+log)
        count_instructions "$t" "http://$HOST:$SG_PORT" "http://$HOST:$SG_MPORT/readyz" \
          "$BIN" serve --config "$TMP/sg/callgrind.yaml" ;;
      scopegate+traces | scopegate+traces0)
        count_instructions "$t" "http://$HOST:$SG_PORT" "http://$HOST:$SG_MPORT/readyz" \
          "$BIN" serve --config "$TMP/sg/callgrind-${t#scopegate+}.yaml" ;;
      scopegate+tokens)
        count_instructions "$t" "http://$HOST:$SG_PORT" "http://$HOST:$SG_MPORT/readyz" \
          "$BIN" serve --config "$TMP/sg/callgrind-tokens.yaml" ;;
      base)
        count_instructions base "http://$HOST:$SG_PORT" "http://$HOST:$SG_MPORT/readyz" \
          "$BASE_BIN" serve --config "$TMP/sg/callgrind.yaml" ;;
      base+usage)
        SG_KEY=$LIMITED_KEY count_instructions base+usage "http://$HOST:$SG_PORT" "http://$HOST:$SG_MPORT/readyz" \
          "$BASE_BIN" serve --config "$TMP/sg/callgrind.yaml" ;;
      scopegate+usage)
        SG_KEY=$LIMITED_KEY count_instructions scopegate+usage "http://$HOST:$SG_PORT" "http://$HOST:$SG_MPORT/readyz" \
          "$BIN" serve --config "$TMP/sg/callgrind.yaml" ;;
      scopegate+cost)
        SG_KEY=$COST_KEY count_instructions scopegate+cost "http://$HOST:$SG_PORT" "http://$HOST:$SG_MPORT/readyz" \
          "$BIN" serve --config "$TMP/sg/callgrind.yaml" ;;
    esac
  done
  # the instruction counts and the cost-per-request ratios, as soon as they are known
  python3 "$HERE/summarize.py" --instructions "$INSTR_TSV" >"$TMP/instructions.md" || die "summarize --instructions failed"
  printf '\n' >&2; cat "$TMP/instructions.md" >&2
  if [[ -n $INSTR_KEEP ]]; then cp "$TMP/instructions.md" "$INSTR_KEEP/instructions.md"; fi
fi

# ---------------------------------------------------------------- SSE first event (accounting)
# examples/sse_first_event.rs runs its own upstream (CPU 0, with the client) that answers every
# stream with its first event at once; scopegate (CPU 1, threads: 1, the same keys file) points
# its completions upstream at it. Sequential streams alternate the plain and the limited key
# (first-event latency, accounting off vs on), then SSE_HOLD accounted streams are held open at
# once while scopegate's VmRSS is read, then all are finished and checked.
SSE_TSV="$TMP/sse.tsv"
if [[ $SSE == 1 ]]; then
  sed "s|http://$HOST:$UP_PORT|http://$HOST:$SSE_UP_PORT|" "$TMP/sg/scopegate.yaml" >"$TMP/sg/sse.yaml"
  # two sockets per held stream in each process, plus slack
  want=$((SSE_HOLD * 3 + 1024)); hard=$(ulimit -Hn)
  [[ $hard != unlimited ]] && ((want > hard)) && want=$hard
  ulimit -n "$want" 2>/dev/null || log "warning: could not raise the open-files limit to $want"
  need_free "$SG_PORT" scopegate; need_free "$SG_MPORT" "scopegate metrics"
  RUST_LOG=warn taskset -c "$PROXY_CPU" "$BIN" serve --config "$TMP/sg/sse.yaml" >"$TMP/sg/stderr-sse.log" 2>&1 &
  SSE_PID=$!; PIDS+=("$SSE_PID")
  wait_http "http://$HOST:$SG_MPORT/readyz" "$SSE_PID" "scopegate (SSE)"
  TRACED_ARGS=()
  if [[ $TRACES_RUN == 1 ]]; then
    # two more scopegates on their own ports and state files, the same config, one with
    # tracing on at ratio 1.0 (spans exported to the upstream nginx, the sink) and one
    # without: the `tracing_on` and `tracing_off` kinds, each a process serving the same
    # share of the streams
    for v in on off; do
      port=$SSE_TR_PORT; mport=$SSE_TR_MPORT
      [[ $v == off ]] && { port=$SSE_UT_PORT; mport=$SSE_UT_MPORT; }
      sed -e "s|^listen: .*|listen: [\"$HOST:$port\"]|" \
        -e "s|^metrics_listen: .*|metrics_listen: \"$HOST:$mport\"|" \
        -e "s|^state: .*|state: { path: ../state/state-tracing-$v.db }|" "$TMP/sg/sse.yaml" >"$TMP/sg/sse-tracing-$v.yaml"
      [[ $v == on ]] && printf 'tracing:\n  otlp_endpoint: "http://%s:%s"\n  sample_ratio: 1.0\n' "$HOST" "$UP_PORT" >>"$TMP/sg/sse-tracing-$v.yaml"
      RUST_LOG=warn taskset -c "$PROXY_CPU" "$BIN" serve --config "$TMP/sg/sse-tracing-$v.yaml" >"$TMP/sg/stderr-sse-tracing-$v.log" 2>&1 &
      pid=$!; PIDS+=("$pid"); SSE_TR_PIDS+=("$pid")
      wait_http "http://$HOST:$mport/readyz" "$pid" "scopegate (SSE, tracing $v)"
    done
    TRACED_ARGS=(--traced-proxy "$HOST:$SSE_TR_PORT" --untraced-proxy "$HOST:$SSE_UT_PORT")
  fi
  log "SSE: $SSE_STREAMS streams per key, then $SSE_HOLD held at once"
  taskset -c "$LOAD_CPU" "$SSE_EX" --proxy "$HOST:$SG_PORT" --upstream "$HOST:$SSE_UP_PORT" \
    --plain-key "$PLAIN_KEY" --limited-key "$LIMITED_KEY" --streams "$SSE_STREAMS" "${TRACED_ARGS[@]}" \
    --hold "$SSE_HOLD" --proxy-pid "$SSE_PID" --tsv "$SSE_TSV" >"$TMP/raw/sse.txt" 2>&1 \
    || die "sse_first_event failed: $(tail -5 "$TMP/raw/sse.txt")"
  for pid in "${SSE_TR_PIDS[@]}"; do stop_pid "$pid"; done
  cat "$TMP/raw/sse.txt" >&2
  curl -s "http://$HOST:$SG_MPORT/metrics" | grep -E '^scopegate_(tokens_total|requests_total)' >"$TMP/raw/sse-metrics.txt" || true
  if grep -qi 'error' "$TMP/sg/stderr-sse.log"; then log "warning: scopegate logged errors during SSE (see $TMP/sg/stderr-sse.log)"; fi
  stop_pid "$SSE_PID"
  # the same number of streams held with the plain key, on a fresh scopegate, to compare RSS
  RUST_LOG=warn taskset -c "$PROXY_CPU" "$BIN" serve --config "$TMP/sg/sse.yaml" >"$TMP/sg/stderr-sse-plain.log" 2>&1 &
  SSE_PID=$!; PIDS+=("$SSE_PID")
  wait_http "http://$HOST:$SG_MPORT/readyz" "$SSE_PID" "scopegate (SSE, plain key)"
  taskset -c "$LOAD_CPU" "$SSE_EX" --proxy "$HOST:$SG_PORT" --upstream "$HOST:$SSE_UP_PORT" \
    --plain-key "$PLAIN_KEY" --limited-key "$LIMITED_KEY" --streams 0 --hold-with plain \
    --hold "$SSE_HOLD" --proxy-pid "$SSE_PID" --tsv "$TMP/sse-plain.tsv" >"$TMP/raw/sse-plain.txt" 2>&1 \
    || die "sse_first_event (plain key) failed: $(tail -5 "$TMP/raw/sse-plain.txt")"
  cat "$TMP/raw/sse-plain.txt" >&2
  tail -n +2 "$TMP/sse-plain.tsv" >>"$SSE_TSV"
  stop_pid "$SSE_PID"
fi

# ---------------------------------------------------------------- report
OUT="$HERE/results-$(date +%Y-%m-%d-%H%M).md"
python3 "$HERE/summarize.py" "$RESULTS" "$FACTS" "$TMP" "$INSTR_TSV" "$SSE_TSV" >"$TMP/results.md" || die "summarize failed"
cp "$TMP/results.md" "$OUT"
cat "$TMP/results.md"
log "written to $OUT"
