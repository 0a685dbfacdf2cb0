//! Protocol upgrades only on routes that opt in
//! (`upgrade: websocket`). A raw TCP upstream answers a WebSocket handshake
//! with `101` and then echoes bytes; the tests check what it received (or
//! that it received nothing), that bytes pass both ways, and that a tunnel
//! holds its key's concurrency slot exactly as long as it is open.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use scopegate::identity::keys::digest_hex;

use super::client::Conn;
use super::fixtures::*;
use super::harness::{expect_openai_error, poll_until, Proxy, Upstreams};

/// The opted-in data-plane route, plus one without the opt-in.
const ROUTES: &str = r#"routes:
  - { methods: [GET], path: "/v1/realtime", plane: data, scopes: [completions.write], upgrade: websocket }
  - { methods: [GET], path: "/v1/plain", plane: data, scopes: [completions.write] }"#;

/// workspace-service on ws_research, `completions.write`,
/// `max_concurrent_requests: 1`.
const ONE_AT_A_TIME: &str = "sk-test-ws-one";
/// workspace-service on ws_research, `completions.write`, a token rate limit.
const TOKEN_LIMITED: &str = "sk-test-ws-tokens";
/// workspace-service on ws_research, `completions.write`, 2 requests an hour.
const TWO_AN_HOUR: &str = "sk-test-ws-two";
/// workspace-service on ws_research, `completions.write`, only
/// `gpt-4o-realtime*` models.
const REALTIME_ONLY: &str = "sk-test-ws-realtime";

fn keys() -> String {
    let entry = |id: &str, secret: &str, extra: &str| {
        format!(
            "  - id: {id}\n    type: workspace-service\n    workspace_id: ws_research\n    \
             sha256: \"{}\"\n    scopes: [\"completions.write\"]\n{extra}",
            digest_hex(secret.as_bytes())
        )
    };
    keys_yaml_with(
        &[
            entry(
                "key_ws_one",
                ONE_AT_A_TIME,
                "    max_concurrent_requests: 1\n",
            ),
            entry(
                "key_ws_tokens",
                TOKEN_LIMITED,
                "    rate_limits: [{ type: tokens, unit: rph, value: 100000 }]\n",
            ),
            entry(
                "key_ws_two",
                TWO_AN_HOUR,
                "    rate_limits: [{ type: requests, unit: rph, value: 2 }]\n",
            ),
            entry(
                "key_ws_realtime",
                REALTIME_ONLY,
                "    models: [\"gpt-4o-realtime*\"]\n",
            ),
        ]
        .concat(),
    )
}

/// A request head as the WebSocket upstream received it.
#[derive(Debug, Clone)]
struct Head {
    request_line: String,
    /// Lower-cased names, in order.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct WsShared {
    heads: Mutex<Vec<Head>>,
    /// Tunnels whose echo loop is running.
    open: AtomicUsize,
    /// Keep the upstream side open (silent) after the client side ends.
    linger: AtomicBool,
}

/// A raw TCP upstream: an `Upgrade` request gets `101` and an echo of every
/// byte until the client side ends (or sends `bye`, on which the upstream
/// closes first); anything else gets a small 200 and a close.
struct WsUpstream {
    addr: SocketAddr,
    shared: Arc<WsShared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WsUpstream {
    fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind ws upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(WsShared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let (shared, stop) = (shared.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let shared = shared.clone();
                            thread::spawn(move || serve(stream, &shared));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
        });
        WsUpstream {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<Head> {
        self.shared.heads.lock().unwrap().clone()
    }

    fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut stream: TcpStream, shared: &WsShared) {
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let head = Head {
        request_line,
        headers,
    };
    let upgrade = head.header("upgrade").is_some();
    shared.heads.lock().unwrap().push(head);
    if !upgrade {
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        );
        return;
    }
    // What came after the head already belongs to the tunnel.
    let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let early = seen[end..].to_vec();
    if stream
        .write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n",
        )
        .is_err()
    {
        return;
    }
    shared.open.fetch_add(1, Ordering::SeqCst);
    if !early.is_empty() {
        let _ = stream.write_all(&early);
    }
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) if &buf[..n] == b"bye" => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    if shared.linger.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_secs(20));
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    shared.open.fetch_sub(1, Ordering::SeqCst);
}

struct Setup {
    ws: WsUpstream,
    up: Upstreams,
    proxy: Proxy,
}

/// A proxy whose completions upstream is the WebSocket upstream.
fn setup() -> Setup {
    let ws = WsUpstream::start();
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .completions_url(&ws.url())
        .keys(&keys())
        .config(ROUTES)
        .start();
    Setup { ws, up, proxy }
}

/// The handshake a browser sends, less `Origin`.
fn handshake(proxy: &Proxy, path: &str) -> super::client::Req {
    proxy
        .get(path)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
}

/// Opens a tunnel: asserts the `101`, returns the connection.
#[track_caller]
fn open_tunnel(proxy: &Proxy, key: &str) -> Conn {
    let (conn, status, headers) = handshake(proxy, "/v1/realtime").key(key).send_streaming();
    assert_eq!(status, 101, "headers {headers:?}");
    assert!(
        headers.iter().any(|(n, _)| n == "x-request-id"),
        "{headers:?}"
    );
    conn
}

/// Writes `bytes` into a tunnel and reads the same bytes back.
#[track_caller]
fn echo(conn: &mut Conn, bytes: &[u8]) {
    conn.send(bytes);
    let mut got = Vec::new();
    while got.len() < bytes.len() {
        let piece = conn.read_piece().expect("tunnel closed before the echo");
        got.extend_from_slice(&piece);
    }
    assert_eq!(got, bytes);
}

#[test]
fn an_opted_in_route_tunnels_a_websocket_both_ways_without_the_key() {
    let s = setup();
    let (mut conn, status, _) = handshake(&s.proxy, "/v1/realtime")
        .key(BOT)
        .header("x-scopegate-workspace-id", "ws_other")
        .header("x-http-method-override", "DELETE")
        .send_streaming();
    assert_eq!(status, 101);
    echo(&mut conn, b"hello");
    // Bytes that look like HTTP are not inspected: they are tunnel data.
    echo(
        &mut conn,
        b"GET /v1/admin/workspaces HTTP/1.1\r\nx-portkey-api-key: x\r\n\r\n",
    );
    let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    echo(&mut conn, &binary);

    let heads = s.ws.heads();
    assert_eq!(heads.len(), 1, "{heads:#?}");
    let head = &heads[0];
    assert_eq!(head.request_line, "GET /v1/realtime HTTP/1.1");
    assert_eq!(head.header("x-portkey-api-key"), None, "{head:#?}");
    assert_eq!(head.header("x-http-method-override"), None, "{head:#?}");
    assert_eq!(head.header("x-scopegate-key-id"), Some("key_bot"));
    assert_eq!(head.header("x-scopegate-workspace-id"), Some("ws_research"));
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert_eq!(
        head.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    drop(conn);
    assert!(
        poll_until(Duration::from_secs(5), || s.ws.open() == 0),
        "the upstream side of the tunnel stayed open after the client left"
    );
    s.up.assert_untouched();
}

#[test]
fn an_upgrade_with_a_bad_key_or_scope_never_reaches_the_upstream() {
    let s = setup();
    let resp = handshake(&s.proxy, "/v1/realtime").send();
    expect_openai_error(&resp, 401, "missing_api_key");
    let resp = handshake(&s.proxy, "/v1/realtime").key(UNKNOWN).send();
    expect_openai_error(&resp, 401, "invalid_api_key");
    let resp = handshake(&s.proxy, "/v1/realtime").key(VK_LISTER).send();
    expect_openai_error(&resp, 403, "missing_scope");
    let resp = handshake(&s.proxy, "/v1/realtime").key(ADMIN).send();
    expect_openai_error(&resp, 403, "admin_key_not_allowed");
    assert!(s.ws.heads().is_empty(), "{:#?}", s.ws.heads());
    s.up.assert_untouched();
}

#[test]
fn an_upgrade_on_a_route_without_the_opt_in_is_still_refused() {
    let s = setup();
    for path in ["/v1/plain", "/v1/models", "/v1/files"] {
        let resp = handshake(&s.proxy, path).key(BOT).send();
        expect_openai_error(&resp, 400, "upgrade_not_allowed");
    }
    assert!(s.ws.heads().is_empty(), "{:#?}", s.ws.heads());
    s.up.assert_untouched();
}

#[test]
fn other_upgrade_tokens_are_refused_on_the_opted_in_route() {
    let s = setup();
    for token in ["h2c", "websocket, h2c", "TLS/1.0"] {
        let resp = s
            .proxy
            .get("/v1/realtime")
            .key(BOT)
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", token)
            .header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA")
            .send();
        let message = expect_openai_error(&resp, 400, "upgrade_not_allowed");
        assert!(message.contains("Only WebSocket"), "{token}: {message}");
    }
    // Upgrade repeated, or on HTTP/1.0.
    let resp = handshake(&s.proxy, "/v1/realtime")
        .key(BOT)
        .header("upgrade", "websocket")
        .send();
    expect_openai_error(&resp, 400, "upgrade_not_allowed");
    let resp = s.proxy.raw(
        format!(
            "GET /v1/realtime HTTP/1.0\r\nhost: x\r\nx-portkey-api-key: {BOT}\r\n\
             connection: Upgrade\r\nupgrade: websocket\r\n\r\n"
        )
        .as_bytes(),
    );
    expect_openai_error(&resp, 400, "upgrade_not_allowed");
    assert!(s.ws.heads().is_empty(), "{:#?}", s.ws.heads());
}

/// What a tunnel carries is never read, so the handshake is where a key
/// restricted by `models` shows its model: the `model` query parameter
/// must name an allowed one.
#[test]
fn a_model_restricted_key_gets_a_tunnel_only_for_an_allowed_model() {
    let s = setup();
    for (path, status, code) in [
        ("/v1/realtime", 400, "missing_model"),
        ("/v1/realtime?model=gpt-4o", 403, "model_not_allowed"),
        (
            "/v1/realtime?model=gpt-4o-realtime-preview&Model=gpt-4o",
            403,
            "model_not_allowed",
        ),
    ] {
        let resp = handshake(&s.proxy, path).key(REALTIME_ONLY).send();
        expect_openai_error(&resp, status, code);
    }
    assert!(s.ws.heads().is_empty(), "{:#?}", s.ws.heads());
    let (mut conn, status, _) = handshake(&s.proxy, "/v1/realtime?model=gpt-4o-realtime-preview")
        .key(REALTIME_ONLY)
        .send_streaming();
    assert_eq!(status, 101);
    echo(&mut conn, b"hello");
    let heads = s.ws.heads();
    assert_eq!(heads.len(), 1);
    assert_eq!(
        heads[0].request_line,
        "GET /v1/realtime?model=gpt-4o-realtime-preview HTTP/1.1"
    );
    assert_eq!(
        heads[0].header("x-scopegate-key-id"),
        Some("key_ws_realtime")
    );
    s.up.assert_untouched();
}

#[test]
fn a_key_whose_tokens_are_counted_gets_no_tunnel() {
    let s = setup();
    let resp = handshake(&s.proxy, "/v1/realtime")
        .key(TOKEN_LIMITED)
        .send();
    let message = expect_openai_error(&resp, 400, "upgrade_not_allowed");
    assert!(message.contains("cannot be counted"), "{message}");
    assert!(s.ws.heads().is_empty(), "{:#?}", s.ws.heads());
    // Its plain requests on the same route pass.
    let resp = s.proxy.get("/v1/realtime").key(TOKEN_LIMITED).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.body, b"ok");
}

#[test]
fn a_tunnel_is_one_request_for_request_rate_limits() {
    let s = setup();
    let mut conn = open_tunnel(&s.proxy, TWO_AN_HOUR);
    for i in 0..20 {
        echo(&mut conn, format!("message {i}").as_bytes());
    }
    drop(conn);
    let resp = s.proxy.get("/v1/realtime").key(TWO_AN_HOUR).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-ratelimit-remaining-requests"), Some("0"));
    let resp = handshake(&s.proxy, "/v1/realtime").key(TWO_AN_HOUR).send();
    expect_openai_error(&resp, 429, "rate_limited");
    assert_eq!(s.ws.heads().len(), 2);
}

#[test]
fn a_tunnel_holds_its_concurrency_slot_until_it_closes() {
    let s = setup();
    let mut first = open_tunnel(&s.proxy, ONE_AT_A_TIME);
    echo(&mut first, b"one");
    // While it is open, neither another tunnel nor a plain request passes.
    let resp = handshake(&s.proxy, "/v1/realtime")
        .key(ONE_AT_A_TIME)
        .send();
    expect_openai_error(&resp, 429, "concurrency_limited");
    let resp = s.proxy.get("/v1/realtime").key(ONE_AT_A_TIME).send();
    expect_openai_error(&resp, 429, "concurrency_limited");
    echo(&mut first, b"still open");

    // The client leaves: the slot comes back.
    drop(first);
    let mut second = None;
    assert!(
        poll_until(Duration::from_secs(5), || {
            let (conn, status, _) = handshake(&s.proxy, "/v1/realtime")
                .key(ONE_AT_A_TIME)
                .send_streaming();
            if status == 101 {
                second = Some(conn);
            }
            status == 101
        }),
        "the slot was not released after the client closed its tunnel"
    );
    let mut second = second.expect("second tunnel");
    echo(&mut second, b"two");

    // The upstream ends the tunnel: the client sees the close, and the slot
    // comes back again.
    second.send(b"bye");
    assert!(second.read_piece().is_none(), "the tunnel should end");
    assert!(
        poll_until(Duration::from_secs(5), || {
            s.proxy.get("/v1/realtime").key(ONE_AT_A_TIME).send().status == 200
        }),
        "the slot was not released after the upstream closed the tunnel"
    );
    let mut third = open_tunnel(&s.proxy, ONE_AT_A_TIME);
    echo(&mut third, b"three");
}

/// Opens a tunnel on a bare socket (to abort it with a reset).
fn raw_tunnel(proxy: &Proxy, key: &str) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(&handshake(proxy, "/v1/realtime").key(key).to_bytes())
        .expect("write handshake");
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).expect("read head"), 1, "closed");
        seen.push(byte[0]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    stream
}

/// Closes a socket with a reset (`SO_LINGER` 0) rather than a FIN.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor `stream` owns, with a value of the
    // size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
    drop(stream);
}

#[test]
fn a_client_that_resets_its_tunnel_gives_the_slot_back_even_if_the_upstream_lingers() {
    let s = setup();
    // The upstream keeps its side open after the client side ends.
    s.ws.shared.linger.store(true, Ordering::SeqCst);
    let mut stream = raw_tunnel(&s.proxy, ONE_AT_A_TIME);
    stream.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"ping");
    let resp = s.proxy.get("/v1/realtime").key(ONE_AT_A_TIME).send();
    expect_openai_error(&resp, 429, "concurrency_limited");
    reset(stream);
    assert!(
        poll_until(Duration::from_secs(5), || {
            s.proxy.get("/v1/realtime").key(ONE_AT_A_TIME).send().status == 200
        }),
        "the slot was not released after the client reset its tunnel"
    );
}

#[test]
fn a_tunnel_the_upstream_is_silent_in_ends_after_its_read_timeout() {
    let ws = WsUpstream::start();
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .completions_url(&ws.url())
        .completions_yaml("read_timeout_ms: 500")
        .keys(&keys())
        .config(ROUTES)
        .start();
    let mut conn = open_tunnel(&proxy, ONE_AT_A_TIME);
    echo(&mut conn, b"one");
    let started = std::time::Instant::now();
    assert!(conn.read_piece().is_none(), "the idle tunnel should end");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(
        poll_until(Duration::from_secs(5), || {
            proxy.get("/v1/realtime").key(ONE_AT_A_TIME).send().status == 200
        }),
        "the slot was not released after the tunnel timed out"
    );
}
