#!/usr/bin/env bash
# benches/load/tls.sh — HTTPS for clients: what TLS costs through scopegate,
# beside nginx terminating TLS with the same certificate, in the same run.
#
# One upstream (nginx `return 200`, CPU 0) and, in turn on CPU 1, two proxies that each
# have a plain and an HTTPS listener with the same EC P-256 certificate:
#   nginx      1 worker, upstream keepalive 64, ssl_protocols TLSv1.2 TLSv1.3
#   scopegate  threads: 1, 10,000 keys, RUST_LOG=warn
# For each proxy and scheme (http, https), with wrk on CPU 0:
#   keep-alive   wrk -t1 -c32 -d$DURATION: requests/s, proxy CPU-seconds per 100k requests
#   latency      wrk -t1 -c1  -d$DURATION: p50 and p99 of one connection's requests
#   handshakes   (https only) the same as keep-alive with `Connection: close`: every request
#                is a new TCP connection and a full TLS handshake (wrk does not resume
#                sessions); requests/s = handshakes/s, and CPU-ms per 1,000 handshakes
# Then, if EXAMPLE is built, 100 SSE streams on one HTTP/2 connection (examples/h2_sse_streams.rs).
#
# usage: benches/load/tls.sh   (needs target/release/scopegate; nginx, wrk, openssl, python3)
# env:   ROUNDS=2 DURATION=5 KEYS=10000 BASE_PORT=28080
set -euo pipefail

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
KEYS=${KEYS:-10000}
BASE_PORT=${BASE_PORT:-28080}
PROXY_CPU=1
LOAD_CPU=0
HOST=127.0.0.1

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${BIN:-$REPO/target/release/scopegate}
EXAMPLE=${EXAMPLE:-$REPO/target/debug/examples/h2_sse_streams}
export PATH="$PATH:/usr/sbin"
NGINX=$(command -v nginx)

# shellcheck source=common.sh
source "$HERE/common.sh"
[[ -x $BIN ]] || die "$BIN not found: cargo build --release --bin scopegate"
for t in wrk openssl python3 curl taskset; do command -v "$t" >/dev/null || die "$t missing"; done

TMP=$(mktemp -d /tmp/scopegate-tls.XXXXXX)
mkdir -p "$TMP/up" "$TMP/ngx" "$TMP/sg"
pick UP; pick NGX_HTTP; pick NGX_TLS; pick SG_HTTP; pick SG_TLS; pick SG_M


openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 30 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
python3 "$HERE/gen_keys.py" "$TMP/sg/keys.yaml" "$TMP/secret" --keys "$KEYS" >/dev/null
export SG_KEY; SG_KEY=$(cat "$TMP/secret")

upstream_conf "$TMP/up" "$UP"
cat >"$TMP/ngx/nginx.conf" <<EOF
$USER_LINE
worker_processes 1; daemon off; pid $TMP/ngx/nginx.pid; error_log $TMP/ngx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 10000000; keepalive_timeout 120s;
  client_body_temp_path $TMP/ngx/body; proxy_temp_path $TMP/ngx/proxy;
  upstream up { server $HOST:$UP; keepalive 64; keepalive_requests 10000000; }
  ssl_certificate $TMP/cert.pem; ssl_certificate_key $TMP/key.pem;
  ssl_protocols TLSv1.2 TLSv1.3;
  server { listen $HOST:$NGX_HTTP; listen $HOST:$NGX_TLS ssl;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF
cat >"$TMP/sg/scopegate.yaml" <<EOF
listen:
  - "$HOST:$SG_HTTP"
  - address: "$HOST:$SG_TLS"
    tls: { cert_file: $TMP/cert.pem, key_file: $TMP/key.pem }
metrics_listen: "$HOST:$SG_M"
threads: 1
keys_file: keys.yaml
log_format: json
upstreams:
  completions: { url: "http://$HOST:$UP" }
  admin: { url: "http://$HOST:$UP" }
EOF

taskset -c $LOAD_CPU "$NGINX" -p "$TMP/up" -c "$TMP/up/nginx.conf" 2>>"$TMP/up/stderr" &
UP_PID=$!; PIDS+=("$UP_PID")
wait_url -X POST -d "$REQ" "http://$HOST:$UP/v1/chat/completions"

# run NAME PIDS... -- wrk args: prints "rps cpu_ms_per_1k p50_us p99_us errors"
measure() {
  local pids=() ; while [[ $1 != -- ]]; do pids+=("$1"); shift; done; shift
  local before after out
  before=$(cpu_ticks "${pids[@]}")
  out=$(taskset -c $LOAD_CPU wrk -t1 -s "$HERE/post.lua" "$@" 2>&1) || die "wrk: $out"
  after=$(cpu_ticks "${pids[@]}")
  local line; line=$(grep WRKRESULT <<<"$out") || die "no WRKRESULT: $out"
  python3 - "$line" "$((after - before))" "$TCK" "$DURATION" <<'PY'
import sys
kv = dict(p.split("=") for p in sys.argv[1].split()[1:])
ticks, tck, dur = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
req = int(kv["requests"])
errs = sum(int(kv[k]) for k in kv if k.startswith("err_"))
cpu_s = ticks / tck
print(f'{req / (int(kv["duration_us"]) / 1e6):.0f} {cpu_s / max(req, 1) * 1e6:.1f} {kv["p50_us"]} {kv["p99_us"]} {errs}')
PY
}

RESULTS="$TMP/results.txt"; : >"$RESULTS"
TARGETS=(nginx scopegate)
for round in $(seq "$ROUNDS"); do
  ((round % 2 == 0)) && TARGETS=(scopegate nginx) || TARGETS=(nginx scopegate)
  for target in "${TARGETS[@]}"; do
    case $target in
      nginx)
        taskset -c $PROXY_CPU "$NGINX" -p "$TMP/ngx" -c "$TMP/ngx/nginx.conf" 2>>"$TMP/ngx/stderr" &
        PID=$!; HTTP=$NGX_HTTP; TLS=$NGX_TLS ;;
      scopegate)
        (cd "$TMP/sg" && RUST_LOG=warn exec taskset -c $PROXY_CPU "$BIN" serve --config scopegate.yaml >/dev/null 2>>"$TMP/sg/stderr") &
        PID=$!; HTTP=$SG_HTTP; TLS=$SG_TLS
        wait_url "http://$HOST:$SG_M/readyz" ;;
    esac
    PIDS+=("$PID")
    wait_url -X POST -H "Authorization: Bearer $SG_KEY" -H 'content-type: application/json' -d "$REQ" "http://$HOST:$HTTP/v1/chat/completions"
    wait_url -X POST -H "Authorization: Bearer $SG_KEY" -H 'content-type: application/json' -d "$REQ" "https://$HOST:$TLS/v1/chat/completions"
    sleep 0.5
    PROC=$(echo "$PID"; pgrep -P "$PID" || true)
    # shellcheck disable=SC2086
    for scheme in http https; do
      [[ $scheme == http ]] && port=$HTTP || port=$TLS
      url="$scheme://$HOST:$port/v1/chat/completions"
      taskset -c $LOAD_CPU wrk -t1 -c8 -d1s -s "$HERE/post.lua" "$url" >/dev/null 2>&1 || true
      echo "$round $target $scheme keepalive $(measure $PROC -- -c32 -d"${DURATION}s" --latency "$url")" >>"$RESULTS"
      echo "$round $target $scheme latency $(measure $PROC -- -c1 -d"${DURATION}s" --latency "$url")" >>"$RESULTS"
      if [[ $scheme == https ]]; then
        echo "$round $target $scheme handshake $(measure $PROC -- -c32 -d"${DURATION}s" -H 'Connection: close' "$url")" >>"$RESULTS"
      fi
    done
    stop "$PID"
    log "round $round $target done"
  done
done

python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r, target, scheme, kind, rps, cpu, p50, p99, errs = line.split()
    if int(errs):
        sys.exit(f"tls.sh: FAILED: {errs} errors in {line.strip()}")
    rows.setdefault((target, scheme, kind), []).append((float(rps), float(cpu), int(p50), int(p99)))
med = lambda xs: statistics.median(xs)
def get(t, s, k, i): return med([x[i] for x in rows[(t, s, k)]])
print("| proxy | scheme | keep-alive req/s | CPU-µs per request | 1-connection p50 µs | p99 µs | added p50 vs http µs | new TLS handshakes/s | CPU-µs per handshake+request |")
print("|---|---|---|---|---|---|---|---|---|")
for t in ("nginx", "scopegate"):
    for s in ("http", "https"):
        hs = f'{get(t, s, "handshake", 0):.0f} | {get(t, s, "handshake", 1):.0f}' if s == "https" else "– | –"
        added = get(t, s, "latency", 2) - get(t, "http", "latency", 2)
        print(f'| {t} | {s} | {get(t, s, "keepalive", 0):.0f} | {get(t, s, "keepalive", 1):.1f} | '
              f'{get(t, s, "latency", 2):.0f} | {get(t, s, "latency", 3):.0f} | {added:+.0f} | {hs} |')
PY
echo
echo "- rounds: $ROUNDS (median shown), $DURATION s per measurement; proxy on CPU $PROXY_CPU, wrk and the upstream nginx on CPU $LOAD_CPU"
echo "- certificate: EC P-256 self-signed, the same files for both; wrk (OpenSSL) negotiates TLS 1.3 and offers no ALPN, so HTTP/1.1"
echo "- machine: $(nproc) CPUs, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- raw outputs: $TMP"
if [[ -x $EXAMPLE ]]; then
  echo
  # Not pinned: it runs scopegate itself, as its child.
  "$EXAMPLE" "$BIN" 100 10 50
fi
