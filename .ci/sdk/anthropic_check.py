"""Drives the real Anthropic Python SDK through scopegate (docs/reference.md#credentials).

Starts a recording upstream that answers /v1/messages in Anthropic's shape
(JSON and `stream: true` events), runs `scopegate serve` on a temp config
whose workspace key is presented by the SDK in `x-api-key` (its default) and
as a Bearer token (`auth_token`), and fails when the SDK sees an error or the
upstream received the scopegate key in any header.

    python anthropic_check.py path/to/scopegate
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic

KEY = "sgk-ci-anthropic-" + os.urandom(8).hex()
for _var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
    os.environ.pop(_var, None)
RECORDED = []


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        RECORDED.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
        req = json.loads(body)
        message = {
            "id": "msg_ci", "type": "message", "role": "assistant", "model": req["model"],
            "content": [{"type": "text", "text": "Hello from upstream"}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 4},
        }
        if req.get("stream"):
            events = [
                ("message_start", {"type": "message_start", "message": {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
                ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello from upstream"}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 4}}),
                ("message_stop", {"type": "message_stop"}),
            ]
            payload = "".join(f"event: {n}\ndata: {json.dumps(d)}\n\n" for n, d in events).encode()
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
        else:
            payload = json.dumps(message).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(binary):
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    up = f"http://127.0.0.1:{upstream.server_address[1]}"
    port, mport = free_port(), free_port()
    while mport == port:
        mport = free_port()
    tmp = tempfile.mkdtemp()
    with open(os.path.join(tmp, "keys.yaml"), "w") as f:
        f.write(f"""organisations:
  - id: org_ci
    workspaces: [{{ id: ws_ci }}]
keys:
  - id: key_sdk
    name: SDK check
    type: workspace-service
    workspace_id: ws_ci
    sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}"
    scopes: [completions.write]
""")
    with open(os.path.join(tmp, "scopegate.yaml"), "w") as f:
        f.write(f"""listen: "127.0.0.1:{port}"
metrics_listen: "127.0.0.1:{mport}"
keys_file: keys.yaml
upstreams:
  completions: {{ url: "{up}" }}
  admin: {{ url: "{up}" }}
""")
    proxy = subprocess.Popen([binary, "serve", "--config", os.path.join(tmp, "scopegate.yaml")],
                             stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{mport}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or proxy.poll() is not None:
                raise SystemExit("scopegate did not become ready")
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        clients = {
            "x-api-key (api_key)": anthropic.Anthropic(api_key=KEY, base_url=base, max_retries=0),
            "x-api-key (explicit header)": anthropic.Anthropic(api_key=None, base_url=base, max_retries=0,
                                                           default_headers={"x-api-key": KEY}),
            "Bearer (auth_token)": anthropic.Anthropic(auth_token=KEY, base_url=base, max_retries=0),
        }
        for name, client in clients.items():
            msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=32,
                                         messages=[{"role": "user", "content": "hi"}])
            assert msg.content[0].text == "Hello from upstream", (name, msg)
            text = ""
            with client.messages.stream(model="claude-sonnet-4-5", max_tokens=32,
                                        messages=[{"role": "user", "content": "hi"}]) as stream:
                for t in stream.text_stream:
                    text += t
            assert text == "Hello from upstream", (name, text)
            print(f"ok: {name}: JSON and streaming through scopegate")
        assert len(RECORDED) == 6, RECORDED
        for r in RECORDED:
            flat = json.dumps(r["headers"]).lower()
            assert KEY.lower() not in flat, f"the scopegate key reached the upstream: {r['headers']}"
            assert r["headers"].get("x-scopegate-key-id") == "key_sdk", r["headers"]
        print(f"ok: {len(RECORDED)} upstream requests, none carried the scopegate key")
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        upstream.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
