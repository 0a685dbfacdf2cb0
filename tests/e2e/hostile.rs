//! What an adversarial review found. Each test sends the exact
//! bytes and checks what the upstream received (or that it received
//! nothing).

use std::io::Read;
use std::time::{Duration, Instant};

use super::client::Conn;
#[allow(unused_imports)]
use super::fixtures::keys_yaml_with;
use super::fixtures::*;
use super::harness::{
    expect_forwarded, expect_openai_error, expect_portkey_error, Proxy, Upstreams,
};

/// A JSON body of exactly `len` bytes that names `ws_research`.
fn json_of_len(len: usize) -> Vec<u8> {
    let head = br#"{"workspace_id":"ws_research","pad":""#;
    let tail = br#""}"#;
    let mut body = head.to_vec();
    body.resize(len - tail.len(), b'x');
    body.extend_from_slice(tail);
    assert_eq!(body.len(), len);
    body
}

#[test]
fn inspected_bodies_of_any_size_up_to_the_limit_reach_the_upstream_exactly() {
    let up = Upstreams::start();
    let limit = 300_000;
    let proxy = Proxy::builder(&up)
        .config(&format!("max_inspect_body_bytes: {limit}"))
        .start();
    let mut n = 0;
    for len in [65_535, 65_536, 65_537, 200_000, limit] {
        let body = json_of_len(len);
        for chunked in [false, true] {
            let req = proxy.post("/v1/configs").key(BOT);
            let req = if chunked {
                req.header("content-type", "application/json")
                    .chunked(body.chunks(10_000))
            } else {
                req.json(&body)
            };
            let resp = req.send();
            expect_forwarded(&resp);
            let seen = &up.admin.requests()[n];
            n += 1;
            assert_eq!(seen.body.len(), len, "chunked={chunked}");
            assert!(
                seen.body == body,
                "body differs upstream (len {len}, chunked={chunked})"
            );
            assert_eq!(seen.header("x-scopegate-workspace-id"), Some("ws_research"));
        }
    }
    // One byte over the limit is refused and never forwarded.
    let resp = proxy
        .post("/v1/configs")
        .key(BOT)
        .json(json_of_len(limit + 1))
        .send();
    expect_portkey_error(&resp, 413, "body_too_large");
    assert_eq!(up.admin.count(), n);
}

#[test]
fn a_large_inspected_body_is_checked_not_just_forwarded() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config("max_inspect_body_bytes: 200000")
        .start();
    let mut body = br#"{"pad":""#.to_vec();
    body.resize(100_000, b'x');
    body.extend_from_slice(br#"","workspace_id":"ws_prod"}"#);
    let resp = proxy.post("/v1/configs").key(BOT).json(&body).send();
    expect_portkey_error(&resp, 403, "workspace_mismatch");
    up.assert_untouched();
}

#[test]
fn identity_and_key_headers_spelled_with_underscores_are_stripped() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let resp = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .header("x_scopegate_workspace_id", "ws_other")
        .header("X_Scopegate_Key_Id", "key_admin")
        .header("x-scopegate_user-id", "usr_mallory")
        .header("x_portkey_api_key", ADMIN)
        .header("x_api_key", "anything")
        .header("api_key", "anything")
        .json(CHAT)
        .send();
    expect_forwarded(&resp);
    let seen = up.completions.only_request();
    for (name, _) in &seen.headers {
        let dashed = name.replace('_', "-");
        assert!(
            !name.contains('_')
                || !(dashed.starts_with("x-scopegate-") || dashed.ends_with("api-key")),
            "{name} reached the upstream: {seen:?}"
        );
    }
    assert_eq!(seen.header("x-scopegate-workspace-id"), Some("ws_research"));
    assert_eq!(seen.header("x-scopegate-key-id"), Some("key_bot"));
}

#[test]
fn a_repeated_content_type_on_an_inspected_body_is_415() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let resp = proxy
        .post("/v1/configs")
        .key(BOT)
        .header("content-type", "application/json")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(br#"{"workspace_id":"ws_research"}"#)
        .send();
    expect_portkey_error(&resp, 415, "unsupported_media_type");
    up.assert_untouched();
}

#[test]
fn workspace_spellings_an_upstream_could_read_are_checked() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    for body in [
        r#"{"Workspace_ID":"ws_prod"}"#,
        r#"{"WORKSPACE_ID":"ws_other"}"#,
    ] {
        let resp = proxy.post("/v1/configs").key(BOT).json(body).send();
        expect_portkey_error(&resp, 403, "workspace_mismatch");
    }
    let resp = proxy
        .post("/v1/configs")
        .key(BOT)
        .json(r#"{"workspace_id":"ws_research","WORKSPACE_ID":"ws_prod"}"#)
        .send();
    expect_portkey_error(&resp, 400, "invalid_json");
    for query in [
        "workspace_id[]=ws_prod",
        "WORKSPACE_ID=ws_prod",
        "x=1;workspace_id=ws_prod",
    ] {
        let resp = proxy.get(&format!("/v1/configs?{query}")).key(BOT).send();
        expect_portkey_error(&resp, 403, "workspace_mismatch");
    }
    let resp = proxy
        .get("/v1/configs?workspace_id=ws_research&WORKSPACE_ID=ws_prod")
        .key(BOT)
        .send();
    expect_portkey_error(&resp, 400, "conflicting_workspace");
    up.assert_untouched();
    // The same spellings naming the key's own workspace pass.
    let resp = proxy
        .get("/v1/configs?Workspace_Id[]=research")
        .key(BOT)
        .send();
    expect_forwarded(&resp);
}

#[test]
fn websocket_upgrades_are_refused_and_never_reach_the_upstream() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    for path in ["/v1/configs", "/v1/files", "/v1/models"] {
        let resp = proxy
            .get(path)
            .key(BOT)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send();
        assert_eq!(resp.status, 400, "{path}: {}", resp.text());
        assert_eq!(
            resp.json()["error"]["code"]
                .as_str()
                .or(resp.json()["data"]["code"].as_str()),
            Some("upgrade_not_allowed")
        );
    }
    up.assert_untouched();
}

#[test]
fn expect_100_continue_denials_answer_at_once() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let mut conn = Conn::open(proxy.addr());
    let started = Instant::now();
    conn.send(
        b"POST /v1/configs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 30\r\nexpect: 100-continue\r\n\r\n",
    );
    let (status, _) = conn.read_head();
    assert_eq!(status, 401);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    up.assert_untouched();
}

#[test]
fn expect_100_continue_gets_continue_before_an_inspected_body_is_read() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let body = br#"{"workspace_id":"ws_research"}"#;
    let mut conn = Conn::open(proxy.addr());
    send_continue_head(&mut conn, body.len());
    let (status, _) = conn.read_head();
    assert_eq!(status, 100, "no 100 Continue before the body");
    conn.send(body);
    let (status, _) = conn.read_head();
    assert_eq!(status, 200);
    let seen = up.admin.only_request();
    assert_eq!(seen.body, body);
    assert_eq!(seen.header("expect"), None);
}

#[test]
fn method_override_headers_are_stripped() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let resp = proxy
        .post("/v1/configs")
        .key(BOT)
        .header("x-http-method-override", "DELETE")
        .header("X-HTTP-Method", "DELETE")
        .header("x-method-override", "DELETE")
        .header("x_http_method_override", "DELETE")
        .json(r#"{"name":"c"}"#)
        .send();
    expect_forwarded(&resp);
    let seen = up.admin.only_request();
    assert_eq!(seen.method, "POST");
    for (name, _) in &seen.headers {
        assert!(
            !name.replace('_', "-").contains("method"),
            "{name} reached upstream"
        );
    }
}

#[test]
fn trace_logging_never_prints_a_secret() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).env("RUST_LOG", "trace").start();
    let resp = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .header("authorization", "Bearer sk-provider-secret-1")
        .json(CHAT)
        .send();
    expect_forwarded(&resp);
    let resp = proxy
        .post("/v1/configs")
        .bearer(ADMIN)
        .json(r#"{"workspace_id":"ws_research"}"#)
        .send();
    expect_forwarded(&resp);
    let mut logs = proxy.logs();
    // Give the log writer a moment to flush the last lines.
    std::thread::sleep(Duration::from_millis(200));
    logs.push_str(&proxy.logs());
    assert!(logs.len() > 100, "no trace logs at all?");
    for secret in [BOT, ADMIN, "sk-provider-secret-1"] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
    let _ = std::io::empty().read(&mut [0u8; 1]);
}

/// A keys file written in place in two steps (1 s apart)
/// never loads half-written; the finished file is in force soon after.
#[test]
fn a_keys_file_written_in_place_in_two_steps_never_loads_half() {
    use std::io::Write;
    const LATE: &str = "sk-test-late-revoked";
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config("reload_poll_interval_ms: 100")
        .start();
    let entry = format!(
        "  - id: key_late\n    name: late\n    type: workspace-service\n    \
         workspace_id: ws_research\n    sha256: \"{}\"\n    scopes: [\"completions.write\"]\n",
        scopegate::identity::keys::digest_hex(LATE.as_bytes())
    );
    let full = keys_yaml_with(&format!("{entry}    status: revoked\n"));
    let half = keys_yaml_with(&entry);
    assert!(full.starts_with(&half), "the first step must be a prefix");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(proxy.keys_path())
        .unwrap();
    file.write_all(half.as_bytes()).unwrap();
    file.flush().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1000) {
        let resp = proxy.chat(LATE);
        assert_ne!(resp.status, 200, "the half-written keys file was loaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    file.write_all(&full.as_bytes()[half.len()..]).unwrap();
    file.flush().unwrap();
    drop(file);
    let written = Instant::now();
    loop {
        let resp = proxy.chat(LATE);
        assert_ne!(resp.status, 200, "the half-written keys file was loaded");
        if resp.status == 401 && resp.text().contains("revoked_api_key") {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(2),
            "the finished file was not in force within 2 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(up.completions.count(), 0, "key_late reached the upstream");
}

/// A body the proxy must read that never ends is answered 408 within
/// `body_read_timeout_ms`, never forwarded, and other clients are served
/// meanwhile.
#[test]
fn a_body_that_never_ends_is_408_and_does_not_slow_others() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config("body_read_timeout_ms: 800")
        .start();
    let mut slow = Conn::open(proxy.addr());
    let started = Instant::now();
    slow.send(
        format!(
            "POST /v1/configs HTTP/1.1\r\nhost: x\r\nx-portkey-api-key: {BOT}\r\n\
             content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"a\":"
        )
        .as_bytes(),
    );
    // Meanwhile another client is served at once.
    let t = Instant::now();
    let resp = proxy.get("/v1/configs").key(BOT).send();
    expect_forwarded(&resp);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // Trickle a byte now and then: per-read timeouts alone would wait.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(200));
        slow.send(b" ");
    }
    let resp = slow.read_response();
    expect_portkey_error(&resp, 408, "request_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        up.admin.count(),
        1,
        "only the other client's request was forwarded"
    );
}

/// Oversized header sections are refused by the HTTP layer (pingora: 400)
/// and never forwarded; the listener keeps serving.
#[test]
fn too_many_headers_are_refused_and_the_listener_keeps_serving() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let mut req = format!("GET /v1/configs HTTP/1.1\r\nhost: x\r\nx-portkey-api-key: {BOT}\r\n");
    for i in 0..10_000 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let resp = proxy.raw(req.as_bytes());
    assert_eq!(resp.status, 400, "{}", resp.text());
    up.assert_untouched();
    assert_eq!(header_errors(&proxy, "rejected"), 1.0);
    let resp = proxy.get("/v1/configs").key(BOT).send();
    expect_forwarded(&resp);
}

// ---------------------------------------------------------------------------
// The request header deadline (`header_read_timeout_ms`, `conn_guard`).

/// The header deadline the tests below run with.
const HEADER_TIMEOUT: Duration = Duration::from_millis(1000);
/// How late after its deadline a connection may be cut.
const CUT_SLACK: Duration = Duration::from_millis(500);
/// The pace of a trickling client.
const TRICKLE_EVERY: Duration = Duration::from_millis(100);

fn header_errors(proxy: &Proxy, reason: &str) -> f64 {
    proxy.metric(
        "scopegate_downstream_header_errors_total",
        &[("reason", reason)],
    )
}

fn header_deadline_proxy(up: &Upstreams) -> Proxy {
    Proxy::builder(up)
        .config(&format!(
            "header_read_timeout_ms: {}",
            HEADER_TIMEOUT.as_millis()
        ))
        .start()
}

/// A whole keep-alive request for the admin upstream.
fn configs_request() -> Vec<u8> {
    format!("GET /v1/configs HTTP/1.1\r\nhost: x\r\nx-portkey-api-key: {BOT}\r\n\r\n").into_bytes()
}

/// Trickles `configs_request()` on `conn` until the proxy answers; checks
/// that the answer is the 408 and came at the deadline (counted from
/// `since`), and that the connection is then closed.
#[track_caller]
fn expect_cut_at_the_deadline(conn: &mut Conn, since: Instant) {
    let request = configs_request();
    let sent = conn.trickle(&request, TRICKLE_EVERY);
    let at = since.elapsed();
    assert!(sent < request.len(), "the whole header went through");
    let resp = conn.read_response();
    expect_openai_error(&resp, 408, "request_timeout");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(
        at >= HEADER_TIMEOUT - TRICKLE_EVERY && at < HEADER_TIMEOUT + CUT_SLACK,
        "cut after {at:?}"
    );
    assert!(conn.is_closed_by_peer(), "the connection stayed open");
}

#[test]
fn a_header_trickled_one_byte_at_a_time_is_408_at_the_deadline_and_never_forwarded() {
    let up = Upstreams::start();
    let proxy = header_deadline_proxy(&up);
    let text = proxy.metrics_get("/metrics").text();
    for reason in ["timeout", "rejected", "closed"] {
        let line = format!("scopegate_downstream_header_errors_total{{reason=\"{reason}\"}} 0");
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
    let mut conn = Conn::open(proxy.addr());
    expect_cut_at_the_deadline(&mut conn, Instant::now());
    up.assert_untouched();
    assert_eq!(header_errors(&proxy, "timeout"), 1.0);
    // Counted, not an ERROR line per connection (pingora's is dropped).
    let logs = proxy.logs();
    assert!(!logs.contains("while reading request headers"), "{logs}");
}

#[test]
fn a_connection_that_sends_nothing_is_closed_at_the_header_deadline() {
    let up = Upstreams::start();
    let proxy = header_deadline_proxy(&up);
    let mut conn = Conn::open(proxy.addr());
    let started = Instant::now();
    let resp = conn.read_response();
    let at = started.elapsed();
    expect_openai_error(&resp, 408, "request_timeout");
    assert!(
        at >= HEADER_TIMEOUT - TRICKLE_EVERY && at < HEADER_TIMEOUT + CUT_SLACK,
        "cut after {at:?}"
    );
    assert!(conn.is_closed_by_peer());
    assert_eq!(header_errors(&proxy, "timeout"), 1.0);
}

#[test]
fn an_idle_keep_alive_gap_is_not_cut_but_a_trickled_next_header_is() {
    let up = Upstreams::start();
    let proxy = header_deadline_proxy(&up);
    let mut conn = Conn::open(proxy.addr());
    conn.send(&configs_request());
    expect_forwarded(&conn.read_response());
    // Idle longer than the header deadline: keep-alive, not a header, is
    // what is awaited (the gap is the behaviour under test).
    std::thread::sleep(HEADER_TIMEOUT + Duration::from_millis(500));
    conn.send(&configs_request());
    expect_forwarded(&conn.read_response());
    // The third request is trickled: cut from its first byte.
    expect_cut_at_the_deadline(&mut conn, Instant::now());
    assert_eq!(up.admin.count(), 2);
    assert_eq!(header_errors(&proxy, "timeout"), 1.0);
}

#[test]
fn normal_requests_are_served_promptly_during_a_trickling_attack() {
    let up = Upstreams::start();
    let proxy = header_deadline_proxy(&up);
    let addr = proxy.addr();
    let attackers: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let since = Instant::now();
                expect_cut_at_the_deadline(&mut conn, since);
            })
        })
        .collect();
    for _ in 0..10 {
        let t = Instant::now();
        expect_forwarded(&proxy.get("/v1/configs").key(BOT).send());
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "a normal request took {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for a in attackers {
        a.join().expect("an attacker was not cut as expected");
    }
    assert_eq!(up.admin.count(), 10);
    assert_eq!(header_errors(&proxy, "timeout"), 20.0);
}

#[test]
fn a_100_continue_body_sent_long_after_the_header_deadline_succeeds() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config("header_read_timeout_ms: 500")
        .config("body_read_timeout_ms: 5000")
        .start();
    let body = br#"{"workspace_id":"ws_research"}"#;
    let mut conn = Conn::open(proxy.addr());
    send_continue_head(&mut conn, body.len());
    let (status, _) = conn.read_head();
    assert_eq!(status, 100);
    // Twice the header deadline after the 100 (the delay is the test).
    std::thread::sleep(Duration::from_millis(1000));
    conn.send(body);
    let resp = conn.read_response();
    expect_forwarded(&resp);
    assert_eq!(up.admin.only_request().body, body);
    assert_eq!(header_errors(&proxy, "timeout"), 0.0);
}

#[test]
fn a_client_closing_in_the_middle_of_a_header_is_counted_as_closed() {
    let up = Upstreams::start();
    let proxy = header_deadline_proxy(&up);
    let mut conn = Conn::open(proxy.addr());
    conn.send(b"GET /v1/configs HTTP/1.1\r\nhost: x\r\n");
    drop(conn);
    assert!(
        super::harness::poll_until(Duration::from_secs(2), || header_errors(&proxy, "closed")
            == 1.0),
        "closed = {}",
        header_errors(&proxy, "closed")
    );
    assert_eq!(header_errors(&proxy, "timeout"), 0.0);
    up.assert_untouched();
}

/// The head of an inspected `POST /v1/configs` of `len` bytes with
/// `Expect: 100-continue`, without its body.
fn send_continue_head(conn: &mut Conn, len: usize) {
    conn.send(
        format!(
            "POST /v1/configs HTTP/1.1\r\nhost: x\r\nx-portkey-api-key: {BOT}\r\n\
             content-type: application/json\r\ncontent-length: {len}\r\nexpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    );
}
