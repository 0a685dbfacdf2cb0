//! Connection handling: upstream connections are pooled, a JSON error
//! does not cost the client its keep-alive connection, and client
//! connections cannot be held for free (`idle_timeout_ms`,
//! `max_client_connections`; the HTTPS side is in `tls_listener`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::client::{Conn, Req};
use super::fixtures::*;
use super::harness::{
    expect_forwarded, expect_openai_error, expect_portkey_error, poll_until, Proxy, Upstreams,
};

#[test]
fn upstream_connections_are_reused() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    for _ in 0..5 {
        expect_forwarded(
            &proxy
                .post("/v1/chat/completions")
                .key(BOT)
                .json(CHAT)
                .send(),
        );
    }

    let seen = up.completions.requests();
    assert_eq!(seen.len(), 5);
    assert!(
        up.completions.connections() < 5,
        "5 requests used {} upstream connections (connection ids {:?})",
        up.completions.connections(),
        seen.iter().map(|r| r.connection).collect::<Vec<_>>()
    );
}

#[test]
fn denied_request_keeps_the_client_connection_open() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let mut conn = Conn::open(proxy.addr());

    conn.send(&proxy.get("/v1/models").to_bytes());
    let denied = conn.read_response();
    conn.send(&proxy.get("/v1/no-such-route").key(BOT).to_bytes());
    let not_found = conn.read_response();
    conn.send(&proxy.get("/v1/models").key(BOT).to_bytes());
    let allowed = conn.read_response();

    expect_openai_error(&denied, 401, "missing_api_key");
    assert_ne!(denied.header("connection"), Some("close"));
    expect_openai_error(&not_found, 404, "route_not_found");
    expect_forwarded(&allowed);
    assert_eq!(up.completions.only_request().target, "/v1/models");
}

/// After a refusal of a request that carried a body, the connection either
/// goes on cleanly (the body was drained) or is closed with
/// `Connection: close` — never is the unread body taken for the next request.
fn next_request_after(
    proxy: &Proxy,
    up: &Upstreams,
    denied: Req,
    check: impl Fn(&super::client::Response),
) {
    let mut conn = Conn::open(proxy.addr());
    conn.send(&denied.to_bytes());
    let first = conn.read_response();
    check(&first);

    if first.header("connection") == Some("close") {
        assert!(
            conn.is_closed_by_peer(),
            "Connection: close but the connection stays open"
        );
        return;
    }
    conn.send(
        &proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .json(CHAT)
            .to_bytes(),
    );
    let second = conn.read_response();
    expect_forwarded(&second);
    let seen = up.completions.only_request();
    assert_eq!(seen.body, CHAT.as_bytes());
    assert_eq!(up.admin.count(), 0);
}

#[test]
fn refused_request_with_a_body_does_not_corrupt_the_next_one() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let denied = proxy.post("/v1/chat/completions").json(CHAT);
    next_request_after(&proxy, &up, denied, |resp| {
        expect_openai_error(resp, 401, "missing_api_key");
    });
}

#[test]
fn body_too_large_does_not_corrupt_the_next_request() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config("max_inspect_body_bytes: 1024")
        .start();
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(8000));

    let denied = proxy.post("/v1/configs").key(BOT).json(big);
    next_request_after(&proxy, &up, denied, |resp| {
        expect_portkey_error(resp, 413, "body_too_large");
    });
}

// ---------------------------------------------------------------------------
// Idle keep-alive connections and the bound on open connections.

/// The idle timeout the tests below run with.
const IDLE: Duration = Duration::from_millis(300);
/// How late after its idle timeout a connection may be closed.
const CLOSE_SLACK: Duration = Duration::from_millis(700);

/// How long after `since` the peer closed `stream` (EOF or reset); `None`
/// when it is still open after `wait`. Bytes that arrive are skipped.
pub fn closed_after(stream: &mut TcpStream, since: Instant, wait: Duration) -> Option<Duration> {
    let until = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = until.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(since.elapsed()),
        }
    }
}

/// A keep-alive request for the admin upstream (answered with a body).
fn configs(proxy: &Proxy) -> Vec<u8> {
    proxy.get("/v1/configs").key(BOT).to_bytes()
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_idle_timeout_ms_and_a_busy_one_is_not() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config(&format!("idle_timeout_ms: {}", IDLE.as_millis()))
        .start();

    let mut idle = TcpStream::connect(proxy.addr()).expect("connect");
    idle.write_all(&configs(&proxy)).expect("write");
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).expect("response");
    assert_eq!(&head, b"HTTP/1.1 200");
    let since = Instant::now();
    let watcher =
        std::thread::spawn(move || closed_after(&mut idle, since, Duration::from_secs(5)));

    // Meanwhile a connection that sends a request every half idle timeout
    // stays open: the clock starts again after each request.
    let mut busy = Conn::open(proxy.addr());
    for _ in 0..6 {
        busy.send(&configs(&proxy));
        expect_forwarded(&busy.read_response());
        std::thread::sleep(IDLE / 2);
    }
    busy.send(&configs(&proxy));
    expect_forwarded(&busy.read_response());

    let closed = watcher
        .join()
        .expect("watcher")
        .expect("the idle connection stayed open");
    // The proxy's clock started a little before `since` (the lower bound
    // only shows that something else did not close it at once).
    assert!(
        closed >= IDLE / 2 && closed < IDLE + CLOSE_SLACK,
        "closed after {closed:?}"
    );
    // Idleness is not a header error: nothing was answered or counted.
    assert_eq!(
        proxy.metric(
            "scopegate_downstream_header_errors_total",
            &[("reason", "timeout")]
        ),
        0.0
    );
    assert_eq!(up.admin.count(), 8);
}

/// Opens a connection, has one request answered on it (so it is admitted),
/// and keeps it open.
fn admitted(proxy: &Proxy) -> Conn {
    let mut conn = Conn::open(proxy.addr());
    conn.send(&configs(proxy));
    expect_forwarded(&conn.read_response());
    conn
}

/// Whether a new connection to `addr` carrying a request is closed at once
/// without an answer.
fn is_refused(addr: SocketAddr, request: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).expect("connect");
    let since = Instant::now();
    let _ = s.write_all(request);
    let mut head = [0u8; 12];
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    match s.read(&mut head) {
        Ok(0) | Err(_) => since.elapsed() < Duration::from_secs(1),
        Ok(_) => false,
    }
}

#[test]
fn connections_beyond_max_client_connections_are_closed_at_once_counted_and_served_once_one_closes()
{
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config("max_client_connections: 3")
        .start();
    let listener = proxy.addr().to_string();
    let refused = || {
        proxy.metric(
            "scopegate_downstream_connections_refused_total",
            &[("listener", &listener)],
        )
    };
    let line =
        format!("scopegate_downstream_connections_refused_total{{listener=\"{listener}\"}} 0");
    let text = proxy.metrics_get("/metrics").text();
    assert!(text.contains(&line), "{line} missing:\n{text}");

    let mut held: Vec<Conn> = (0..3).map(|_| admitted(&proxy)).collect();
    let request = configs(&proxy);
    assert!(
        is_refused(proxy.addr(), &request),
        "a fourth connection was served"
    );
    assert_eq!(refused(), 1.0);
    assert_eq!(up.admin.count(), 3, "the refused request went up");

    // The open ones are not disturbed.
    held[0].send(&request);
    expect_forwarded(&held[0].read_response());

    // Once one closes, a new connection is served.
    drop(held.pop());
    assert!(
        poll_until(Duration::from_secs(5), || !is_refused(
            proxy.addr(),
            &request
        )),
        "no new connection was served after one closed"
    );
    assert!(refused() >= 1.0);
    held[1].send(&request);
    expect_forwarded(&held[1].read_response());
}
