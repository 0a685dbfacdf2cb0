"""Slow and oversized request headers vs normal traffic.

    python3 benches/load/slow_clients.py PROXY_URL KEY [completions|admin] [options]

Against a running scopegate (PROXY_URL such as http://127.0.0.1:8080 or
https://…; certificates are not verified), KEY a valid secret, and the
upstream the normal requests go to (`completions`: POST /v1/chat/completions
with a small chat body, the default; `admin`: GET /v1/configs).

Two phases of --duration seconds each, one after the other in the same run:

1. baseline: normal requests only, at a fixed pace (--rate, default 200/s)
   over --conns keep-alive connections (default 8);
2. attack: the same normal requests while, from a separate process,
   - --trickle connections (default 200) send a request header at one byte
     per --trickle-every seconds (default 1); each one cut is reopened, so
     that many are always trickling;
   - --flood connections (default 50) each send, in a loop, requests with
     64 KiB of headers (--flood-header-bytes; 1 KiB header lines up to that
     size) and an unknown key (answered 401 by the proxy itself, no upstream
     involved), reading each answer;
   - --many-headers connections (default 5) each send, in a loop, a request
     with 10,000 headers (pingora answers 400 and closes).

Prints, per phase, the normal requests' count, failures, achieved rate and
latency p50/p90/p99/max (measured from each request's scheduled start, so
a stall is not hidden by the pacing), then how the hostile connections
ended (status or closed, and after how long). python3 standard library only.
"""
import argparse
import json
import multiprocessing
import selectors
import socket
import ssl
import sys
import threading
import time
from urllib.parse import urlsplit

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("proxy_url")
    p.add_argument("key")
    p.add_argument("upstream", nargs="?", default="completions", choices=["completions", "admin"])
    p.add_argument("--duration", type=float, default=30.0, help="seconds per phase (default 30)")
    p.add_argument("--rate", type=float, default=200.0, help="normal requests per second (default 200)")
    p.add_argument("--conns", type=int, default=8, help="keep-alive connections for normal requests")
    p.add_argument("--trickle", type=int, default=200, help="trickling-header connections (default 200)")
    p.add_argument("--trickle-every", type=float, default=1.0, help="seconds between trickled bytes")
    p.add_argument("--flood", type=int, default=50, help="64 KiB-header connections (default 50)")
    p.add_argument("--flood-rate", type=float, default=0.0,
                   help="flood requests per second over all flood connections (default 0: each "
                        "connection sends its next request as soon as it has the answer)")
    p.add_argument("--flood-header-bytes", type=int, default=65536,
                   help="header bytes per flood request (default 65536; e.g. 512 for the same flood "
                        "with ordinary headers, to compare)")
    p.add_argument("--pid", type=int, default=0,
                   help="scopegate's process id (same machine): report its CPU use per phase")
    p.add_argument("--many-headers", type=int, default=5, help="10,000-header connections (default 5)")
    return p.parse_args()


class Target:
    def __init__(self, url):
        u = urlsplit(url)
        self.tls = u.scheme == "https"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if self.tls else 80)
        self.authority = f"{self.host}:{self.port}"

    def connect(self, timeout=10.0):
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            sock = ctx.wrap_socket(sock, server_hostname=self.host)
        return sock


def read_response(f):
    """Reads one response from a buffered socket file; returns the status
    and whether the connection stays open. Raises on a closed connection."""
    line = f.readline()
    if not line:
        raise ConnectionError("closed")
    status = int(line.split()[1])
    length, close, chunked = 0, False, False
    while True:
        h = f.readline()
        if not h:
            raise ConnectionError("closed in the head")
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and "close" in value:
            close = True
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
    if chunked:
        while True:
            size = int(f.readline().split(b";")[0], 16)
            f.read(size + 2)
            if size == 0:
                break
    elif length:
        f.read(length)
    return status, not close


def normal_request(target, key, upstream):
    if upstream == "admin":
        return (
            f"GET /v1/configs HTTP/1.1\r\nhost: {target.authority}\r\n"
            f"x-portkey-api-key: {key}\r\n\r\n"
        ).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {target.authority}\r\n"
        f"x-portkey-api-key: {key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(CHAT)}\r\n\r\n"
    ).encode() + CHAT


def paced_normal(target, request, rate, conns, duration):
    """`rate` requests/s over `conns` keep-alive connections for `duration`
    s; returns (latencies in s from the scheduled start, failures). A
    request whose turn comes after the phase has ended (the proxy fell
    behind) is not sent and counts as a failure, `behind schedule`."""
    latencies, failures, lock = [], {}, threading.Lock()
    start = time.monotonic() + 0.2
    interval = conns / rate

    def worker(i):
        sock, f = None, None
        n = 0
        while True:
            scheduled = start + (i / conns) * interval + n * interval
            if scheduled >= start + duration:
                break
            n += 1
            delay = scheduled - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif time.monotonic() > start + duration:
                with lock:
                    failures["behind schedule"] = failures.get("behind schedule", 0) + 1
                continue
            try:
                if sock is None:
                    sock = target.connect()
                    f = sock.makefile("rb")
                sock.sendall(request)
                status, keep = read_response(f)
                done = time.monotonic()
                with lock:
                    if status == 200:
                        latencies.append(done - scheduled)
                    else:
                        failures[f"status {status}"] = failures.get(f"status {status}", 0) + 1
                if not keep:
                    sock.close()
                    sock = None
            except Exception as e:  # noqa: BLE001 - counted, the run goes on
                with lock:
                    failures[type(e).__name__] = failures.get(type(e).__name__, 0) + 1
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failures


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


# --- hostile clients (run in their own process) -----------------------------


def trickler(target, n, every, stop, endings):
    """Keeps `n` connections trickling a header, one byte per `every` s."""
    header = b"GET /v1/configs HTTP/1.1\r\nhost: x\r\n" + b"".join(
        b"x-trickle-%d: %s\r\n" % (i, b"v" * 40) for i in range(100)
    )
    sel = selectors.DefaultSelector()
    conns = {}

    def open_one(at):
        try:
            s = target.connect()
            s.setblocking(False)
        except Exception as e:  # noqa: BLE001
            endings.append(("trickle", f"connect failed: {type(e).__name__}", 0.0))
            return
        conns[s] = {"opened": time.monotonic(), "sent": 0, "next": at}
        sel.register(s, selectors.EVENT_READ)

    def end(s, how):
        c = conns.pop(s)
        endings.append(("trickle", how, time.monotonic() - c["opened"]))
        sel.unregister(s)
        s.close()

    now = time.monotonic()
    for i in range(n):
        open_one(now + every * i / n)  # spread over one period
    while not stop.is_set():
        now = time.monotonic()
        for s, c in list(conns.items()):
            if c["next"] <= now and c["sent"] < len(header):
                try:
                    c["sent"] += s.send(header[c["sent"] : c["sent"] + 1])
                    c["next"] = now + every
                except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pass
                except Exception as e:  # noqa: BLE001
                    end(s, f"send failed: {type(e).__name__}")
                    open_one(time.monotonic())
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            except Exception as e:  # noqa: BLE001
                end(s, f"reset ({type(e).__name__})")
                open_one(time.monotonic())
                continue
            if data.startswith(b"HTTP/1."):
                how = "status " + data.split(b" ", 2)[1].decode()
            elif not data:
                how = "closed"
            else:
                how = "other bytes"
            end(s, how)
            open_one(time.monotonic())
    for s in list(conns):
        end(s, "still open at the end")


def looper(target, request, label, stop, endings, interval=0.0):
    """Sends `request` in a loop on one connection (reopened when closed),
    one every `interval` seconds when it is set."""
    sock, f, opened = None, None, 0.0
    next_at = time.monotonic()
    while not stop.is_set():
        if interval:
            next_at += interval
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        try:
            if sock is None:
                sock = target.connect()
                f = sock.makefile("rb")
                opened = time.monotonic()
            t = time.monotonic()
            sock.sendall(request)
            status, keep = read_response(f)
            endings.append((label, f"status {status}", time.monotonic() - t))
            if not keep:
                sock.close()
                sock = None
        except Exception as e:  # noqa: BLE001
            endings.append((label, f"closed/error ({type(e).__name__})", time.monotonic() - opened))
            if sock is not None:
                sock.close()
            sock = None
            time.sleep(0.01)
    if sock is not None:
        sock.close()


def hostile_process(url, args, ready, stop, out):
    target = Target(url)
    endings = []
    t_stop = threading.Event()
    head = b"GET /v1/configs HTTP/1.1\r\nhost: x\r\nx-portkey-api-key: sk-unknown-flood-key\r\n"
    pads, left, i = [], args.flood_header_bytes - len(head) - 2, 0
    while left > 12:
        value = min(1010, left - 12)
        pads.append(b"x-pad-%02d: %s\r\n" % (i, b"a" * value))
        left -= len(pads[-1])
        i += 1
    big = head + b"".join(pads) + b"\r\n"
    many = (
        b"GET /v1/configs HTTP/1.1\r\nhost: x\r\n"
        + b"".join(b"x-h%d: v\r\n" % i for i in range(10_000))
        + b"\r\n"
    )
    threads = [
        threading.Thread(
            target=trickler, args=(target, args.trickle, args.trickle_every, t_stop, endings), daemon=True
        )
    ]
    threads += [
        threading.Thread(
            target=looper,
            args=(target, big, f"{len(big)} B header", t_stop, endings,
                  args.flood / args.flood_rate if args.flood_rate else 0.0),
            daemon=True,
        )
        for _ in range(args.flood)
    ]
    threads += [
        threading.Thread(target=looper, args=(target, many, "10000 headers", t_stop, endings), daemon=True)
        for _ in range(args.many_headers)
    ]
    for t in threads:
        t.start()
    ready.set()
    stop.wait()
    t_stop.set()
    for t in threads:
        t.join(timeout=15)
    out.put(endings)


# --- report -------------------------------------------------------------------


def phase_line(name, latencies, failures, duration):
    lat = sorted(latencies)
    ms = lambda v: f"{v * 1000:8.2f}"  # noqa: E731
    fails = sum(failures.values())
    return (
        f"{name:<10} {len(lat):>7} {fails:>6} {len(lat) / duration:>8.1f} "
        f"{ms(percentile(lat, 50))} {ms(percentile(lat, 90))} {ms(percentile(lat, 99))} "
        f"{ms(lat[-1] if lat else float('nan'))}"
        + (f"   failures: {json.dumps(failures)}" if failures else "")
    )


def summarize_endings(endings):
    groups = {}
    for kind, how, secs in endings:
        groups.setdefault((kind, how), []).append(secs)
    lines = []
    for (kind, how), secs in sorted(groups.items()):
        secs.sort()
        lines.append(
            f"  {kind:<14} {how:<34} {len(secs):>7}   time s: min {secs[0]:.2f} "
            f"p50 {percentile(secs, 50):.2f} max {secs[-1]:.2f}"
        )
    return "\n".join(lines)


def cpu_seconds(pid):
    """utime + stime of a process and its threads, in seconds (0 without --pid)."""
    if not pid:
        return 0.0
    import os
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    args = parse_args()
    target = Target(args.proxy_url)
    request = normal_request(target, args.key, args.upstream)
    # One request first: fail fast on a wrong URL or key.
    lat, fails = paced_normal(target, request, 10, 1, 0.1)
    if fails or not lat:
        sys.exit(f"slow_clients: the first normal request failed: {fails}")

    print(f"# slow_clients: {args.proxy_url} ({args.upstream}), {args.duration:g} s per phase, "
          f"{args.rate:g} req/s over {args.conns} connections")
    c0 = cpu_seconds(args.pid)
    base = paced_normal(target, request, args.rate, args.conns, args.duration)
    c1 = cpu_seconds(args.pid)

    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=hostile_process, args=(args.proxy_url, args, ready, stop, out))
    proc.start()
    ready.wait(30)
    time.sleep(min(2.0, args.duration / 5))  # let the attackers connect
    c2 = cpu_seconds(args.pid)
    attack = paced_normal(target, request, args.rate, args.conns, args.duration)
    c3 = cpu_seconds(args.pid)
    stop.set()
    endings = out.get(timeout=60)
    proc.join(timeout=30)

    print(f"# hostile: {args.trickle} trickling (1 byte/{args.trickle_every:g} s), "
          f"{args.flood} × {args.flood_header_bytes:,} B headers "
          f"{f'at {args.flood_rate:g} req/s in all' if args.flood_rate else 'in a closed loop'}, "
          f"{args.many_headers} × 10,000 headers in a loop")
    print(f"{'phase':<10} {'ok':>7} {'failed':>6} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8}")
    print(phase_line("baseline", *base, args.duration))
    print(phase_line("attack", *attack, args.duration))
    if args.pid:
        print(f"# scopegate CPU: baseline {100 * (c1 - c0) / args.duration:.0f} %, "
              f"attack {100 * (c3 - c2) / args.duration:.0f} % of one core")
    print("# how the hostile connections ended (count; time from connect or send to the end):")
    print(summarize_endings(endings))


if __name__ == "__main__":
    main()
