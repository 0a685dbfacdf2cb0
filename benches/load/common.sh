# benches/load/common.sh — the helpers redis.sh and tls.sh share. Source it after setting
# HOST and BASE_PORT; it defines:
#   log MSG / die MSG          progress and failure lines named after the calling script
#   PIDS+=(pid)                processes to TERM when the script exits (trap set here)
#   stop PID                   TERM, wait up to 5 s, then KILL
#   pick VAR                   the next free TCP port on $HOST from $BASE_PORT, into VAR
#   cpu_ticks PID...           utime + stime of the processes, in clock ticks (TCK per second)
#   wait_url CURL-ARGS...      until curl answers 200 (30 s), else die
#   REQ, RESP                  the chat completion request sent and the upstream's canned answer
#   upstream_conf DIR PORT     writes DIR/nginx.conf: nginx on $HOST:PORT answering RESP
#                              to POST /v1/chat/completions (user root when run as root)
SCRIPT_NAME=$(basename "$0")
log() { printf '[%s %(%H:%M:%S)T] %s\n' "$SCRIPT_NAME" -1 "$*" >&2; }
die() { printf '\n%s: FAILED: %s\n' "$SCRIPT_NAME" "$*" >&2; exit 1; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
stop() {
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true
}
port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
NEXT=$BASE_PORT
pick() { while ! port_free "$NEXT"; do NEXT=$((NEXT + 1)); done; printf -v "$1" '%s' "$NEXT"; NEXT=$((NEXT + 1)); }
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}'))); done; echo "$t"; }
TCK=$(getconf CLK_TCK)
wait_url() {
  for _ in $(seq 300); do
    [[ $(curl -sk -o /dev/null -w '%{http_code}' "$@") == 200 ]] && return 0; sleep 0.1
  done
  die "not ready: $*"
}
RESP='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, nice to meet you!"},"finish_reason":"stop"}]}'
REQ='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in five short words, please."}]}'
USER_LINE=""; [[ $EUID -eq 0 ]] && USER_LINE="user root;"
upstream_conf() {
  cat >"$1/nginx.conf" <<CONF
$USER_LINE
worker_processes 1; daemon off; pid $1/nginx.pid; error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 10000000; keepalive_timeout 120s;
  client_body_temp_path $1/body;
  server { listen $HOST:$2;
    location = /v1/chat/completions { default_type application/json; return 200 '$RESP'; } }
}
CONF
}
