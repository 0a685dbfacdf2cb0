"""Soak: two scopegate replicas sharing one redis-server, Redis
restarted twice, every request must be answered and the shared limit must
hold outside the outages.

    python3 benches/load/soak.py path/to/scopegate [seconds=600]

A key limited to 600 requests a minute is hit by 8 client threads (~40 req/s
across both replicas). Redis is killed at 1/3 and 2/3 of the run and
restarted 5 s later (on_error: allow, timeout_ms: 50). Prints, per minute,
how many requests passed, and fails when any request got no answer (or a
5xx), or when a minute without an outage let more than the limit (plus the
GCRA burst of one period) through.
"""
import hashlib, http.client, json, os, socket, subprocess, sys, tempfile, threading, time

BIN = sys.argv[1]
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 600
KEY = "sgk-soak-" + os.urandom(6).hex()
LIMIT = 600


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream(threading.Thread):
    daemon = True

    def __init__(self):
        super().__init__()
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                b = b'{"ok":true}'
                self.send_response(200)
                self.send_header("content-length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)

    def run(self):
        self.server.serve_forever()


def main():
    tmp = tempfile.mkdtemp()
    up = Upstream()
    up.start()
    rport = free_port()
    redis_cmd = ["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no", "--dir", tmp]
    redis = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    with open(os.path.join(tmp, "keys.yaml"), "w") as f:
        f.write(f"""organisations:
  - id: org_s
    workspaces: [{{ id: ws_s }}]
keys:
  - id: key_soak
    name: soak
    type: workspace-service
    workspace_id: ws_s
    sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}"
    scopes: [configs.list]
    rate_limits: [{{ type: requests, unit: rpm, value: {LIMIT} }}]
""")
    proxies, ports = [], []
    for i in range(2):
        port, mport = free_port(), free_port()
        cfg = os.path.join(tmp, f"scopegate{i}.yaml")
        with open(cfg, "w") as f:
            f.write(f"""listen: "127.0.0.1:{port}"
metrics_listen: "127.0.0.1:{mport}"
keys_file: keys.yaml
threads: 1
state: {{ backend: redis, redis: {{ url: "redis://127.0.0.1:{rport}/0", timeout_ms: 50, on_error: allow }} }}
upstreams:
  completions: {{ url: "http://127.0.0.1:{up.server.server_address[1]}" }}
  admin: {{ url: "http://127.0.0.1:{up.server.server_address[1]}" }}
""")
        proxies.append(subprocess.Popen([BIN, "serve", "--config", cfg], stderr=open(os.path.join(tmp, f"log{i}"), "w")))
        ports.append(port)
    time.sleep(2)
    start = time.time()
    outages = []
    results = []  # (t, replica, status, latency)
    lock = threading.Lock()
    stop = threading.Event()

    def client(n):
        conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=5) for p in ports]
        i = n
        while not stop.is_set():
            r = i % 2
            i += 1
            t0 = time.time()
            try:
                conns[r].request("GET", "/v1/configs", headers={"x-portkey-api-key": KEY})
                resp = conns[r].getresponse()
                resp.read()
                status = resp.status
            except Exception:
                status = 0
                conns[r] = http.client.HTTPConnection("127.0.0.1", ports[r], timeout=5)
            with lock:
                results.append((t0 - start, r, status, time.time() - t0))
            time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    for frac in (1 / 3, 2 / 3):
        time.sleep(max(0, start + SECONDS * frac - time.time()))
        t_down = time.time() - start
        redis.kill()
        redis.wait()
        time.sleep(5)
        redis = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
        outages.append((t_down, time.time() - start + 3))
        print(f"redis restarted at {t_down:.0f}s", flush=True)
    time.sleep(max(0, start + SECONDS - time.time()))
    stop.set()
    for t in threads:
        t.join()
    for p in proxies:
        p.terminate()
        p.wait()
    redis.kill()
    failed = [r for r in results if r[2] == 0 or r[2] >= 500]
    slow = max(r[3] for r in results)
    print(f"requests: {len(results)}, unanswered or 5xx: {len(failed)}, slowest answer: {slow*1000:.0f} ms")
    bad_minutes = []
    for m in range(SECONDS // 60):
        window = [r for r in results if m * 60 <= r[0] < (m + 1) * 60]
        passed = sum(1 for r in window if r[2] == 200)
        in_outage = any(a < (m + 1) * 60 and b > m * 60 for a, b in outages)
        # GCRA lets a full period's burst through at once: at most 2 x LIMIT
        # in any 60 s window; during an outage each replica counts alone.
        cap = (4 if in_outage else 2) * LIMIT
        print(f"minute {m}: {len(window)} requests, {passed} passed{' (outage)' if in_outage else ''}")
        if passed > cap:
            bad_minutes.append(m)
    total_ok = sum(1 for r in results if r[2] == 200)
    print(f"passed in all: {total_ok} (limit {LIMIT}/min x {SECONDS/60:.0f} min = {LIMIT*SECONDS//60}, plus one burst)")
    if failed or bad_minutes:
        print(f"FAIL: unanswered {len(failed)}, minutes over the cap {bad_minutes}")
        sys.exit(1)
    print("ok")


main()
