//! The guard's state machine over an in-memory connection (real time,
//! short deadlines).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf};
use tokio::time::{sleep, timeout, Instant};

use super::*;

const DEADLINE: Duration = Duration::from_millis(200);
/// Scheduling slack allowed past a deadline.
const SLACK: Duration = Duration::from_millis(150);

/// The idle timeout of tests that do not look at it: out of their way.
const LONG_IDLE: Duration = Duration::from_secs(30);

fn guarded() -> (HeaderGuard, DuplexStream) {
    guarded_with(LONG_IDLE)
}

fn guarded_with(idle: Duration) -> (HeaderGuard, DuplexStream) {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let deadlines = Deadlines {
        header: DEADLINE,
        idle,
    };
    (HeaderGuard::http1(Box::new(server), deadlines), client)
}

fn guarded_h2() -> (HeaderGuard, DuplexStream) {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let deadlines = Deadlines {
        header: DEADLINE,
        idle: LONG_IDLE,
    };
    (HeaderGuard::h2(Box::new(server), deadlines), client)
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads from the guard until it fails; panics on EOF.
async fn read_until_error(guard: &mut HeaderGuard) -> io::Error {
    let mut buf = [0u8; 64];
    loop {
        match guard.read(&mut buf).await {
            Ok(0) => panic!("EOF instead of an error"),
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

/// What the client received within 300 ms of quiet.
async fn received(client: &mut ReadHalf<DuplexStream>) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(Ok(n)) = timeout(Duration::from_millis(300), client.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(out).expect("utf-8 reply")
}

#[track_caller]
fn assert_is_408(reply: &str) {
    assert!(reply.starts_with("HTTP/1.1 408 "), "{reply:?}");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\ncontent-length: {}", body.len())),
        "{head}"
    );
    let id = head
        .split("\r\nx-request-id: ")
        .nth(1)
        .and_then(|rest| rest.split("\r\n").next())
        .expect("x-request-id");
    assert_eq!(id.len(), 32, "{id}");
    let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(json["error"]["code"], "request_timeout", "{json}");
    assert_eq!(json["error"]["type"], "invalid_request_error", "{json}");
}

#[tokio::test]
async fn a_header_trickled_past_the_deadline_is_answered_408_and_the_read_fails() {
    let (mut guard, client) = guarded();
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for b in b"GET /v1/models HTTP/1.1\r\nhost: x\r\n".iter() {
            if client_tx.write_all(&[*b]).await.is_err() {
                break;
            }
            sleep(Duration::from_millis(20)).await;
        }
        client_tx
    });
    let err = read_until_error(&mut guard).await;
    let elapsed = started.elapsed();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(
        elapsed >= DEADLINE && elapsed < DEADLINE + SLACK,
        "{elapsed:?}"
    );
    assert_eq!(guard.ending(), Some(Ending::Timeout));
    assert_is_408(&received(&mut client_rx).await);
    // Nothing more is read or written on this connection.
    assert!(guard.read(&mut [0u8; 8]).await.is_err());
    assert!(guard.write_all(b"HTTP/1.1 400").await.is_err());
    drop(trickle.await);
}

#[tokio::test]
async fn a_silent_connection_is_answered_408_at_the_deadline_from_the_hand_over() {
    let (mut guard, client) = guarded();
    let (mut client_rx, _client_tx) = tokio::io::split(client);
    let started = Instant::now();
    sleep(DEADLINE / 2).await;
    let err = read_until_error(&mut guard).await;
    let elapsed = started.elapsed();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(
        elapsed >= DEADLINE && elapsed < DEADLINE + SLACK,
        "the clock runs from the hand-over, not from the first read: {elapsed:?}"
    );
    assert_eq!(guard.ending(), Some(Ending::Timeout));
    assert_is_408(&received(&mut client_rx).await);
}

#[tokio::test]
async fn a_read_after_the_deadline_fails_even_when_bytes_are_waiting() {
    let (mut guard, mut client) = guarded();
    client.write_all(b"GET / HT").await.unwrap();
    sleep(DEADLINE + Duration::from_millis(20)).await;
    let err = guard.read(&mut [0u8; 64]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
}

#[tokio::test]
async fn a_body_after_the_header_is_not_timed() {
    let (mut guard, mut client) = guarded();
    client
        .write_all(b"POST / HTTP/1.1\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(guard.read(&mut buf).await.unwrap() > 0);
    guard.header_done();
    guard
        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        .await
        .unwrap();
    let late = tokio::spawn(async move {
        sleep(DEADLINE * 2).await;
        client.write_all(b"body").await.unwrap();
        client
    });
    let n = guard.read(&mut buf).await.expect("the body, however late");
    assert_eq!(&buf[..n], b"body");
    assert_eq!(guard.ending(), None);
    drop(late.await);
}

/// Serves one whole request on `guard` and marks it done.
async fn serve_one(guard: &mut HeaderGuard, client: &mut DuplexStream) {
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(guard.read(&mut buf).await.unwrap() > 0);
    guard.header_done();
    guard.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
    guard.request_done();
}

#[tokio::test]
async fn an_idle_gap_is_not_header_time_and_the_next_header_is_timed_from_its_first_byte() {
    let (mut guard, mut client) = guarded();
    serve_one(&mut guard, &mut client).await;
    let mut buf = [0u8; 256];
    // Idle for twice the header deadline: no error (the idle clock runs).
    let idle = timeout(DEADLINE * 2, guard.read(&mut buf)).await;
    assert!(idle.is_err(), "the idle read ended: {idle:?}");
    // The next header's clock starts at its first byte.
    client.write_all(b"G").await.unwrap();
    assert_eq!(guard.read(&mut buf).await.unwrap(), 1);
    let first_byte = Instant::now();
    let err = read_until_error(&mut guard).await;
    let elapsed = first_byte.elapsed();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(
        elapsed >= DEADLINE - Duration::from_millis(5) && elapsed < DEADLINE + SLACK,
        "{elapsed:?}"
    );
    assert_eq!(guard.ending(), Some(Ending::Timeout));
    assert!(!guard.idle_closed());
}

#[tokio::test]
async fn an_idle_keep_alive_connection_closes_quietly_at_the_idle_timeout() {
    let idle = Duration::from_millis(300);
    let (mut guard, client) = guarded_with(idle);
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    client_tx
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(guard.read(&mut buf).await.unwrap() > 0);
    guard.header_done();
    guard.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
    guard.flush().await.unwrap();
    guard.request_done();
    let idle_from = Instant::now();
    let err = guard.read(&mut buf).await.expect_err("closed for idleness");
    let elapsed = idle_from.elapsed();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(elapsed >= idle && elapsed < idle + SLACK, "{elapsed:?}");
    assert!(guard.idle_closed());
    assert_eq!(guard.ending(), None, "idleness is not a header error");
    // The client got its response and nothing after it (no 408).
    assert_eq!(received(&mut client_rx).await, "HTTP/1.1 200 OK\r\n\r\n");
    assert!(guard.read(&mut buf).await.is_err(), "stays closed");
}

#[tokio::test]
async fn a_request_already_in_when_the_idle_clock_runs_out_is_still_read() {
    let idle = Duration::from_millis(100);
    let (mut guard, mut client) = guarded_with(idle);
    serve_one(&mut guard, &mut client).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    sleep(idle * 2).await;
    let mut buf = [0u8; 256];
    assert!(guard.read(&mut buf).await.expect("the waiting request") > 0);
    assert!(!guard.idle_closed());
}

#[tokio::test]
async fn the_idle_clock_starts_again_after_every_request() {
    let idle = Duration::from_millis(300);
    let (mut guard, mut client) = guarded_with(idle);
    for _ in 0..3 {
        serve_one(&mut guard, &mut client).await;
        // Two thirds of the idle timeout between requests, three times.
        sleep(idle * 2 / 3).await;
    }
    assert!(!guard.idle_closed());
    assert_eq!(guard.ending(), None);
}

#[test]
fn pingoras_keep_alive_is_set_past_both_clocks() {
    let backstop = |header_ms, idle_ms| {
        HeaderGuard::http1(
            Box::new(tokio::io::duplex(64).0),
            Deadlines {
                header: Duration::from_millis(header_ms),
                idle: Duration::from_millis(idle_ms),
            },
        )
        .keepalive_backstop_secs()
    };
    assert_eq!(backstop(10_000, 60_000), 61);
    assert_eq!(backstop(10_000, 300), 11);
    assert_eq!(backstop(10_000, 120_500), 121);
}

#[tokio::test]
async fn an_http2_preface_that_is_late_fails_the_read_without_a_reply() {
    let (mut guard, client) = guarded_h2();
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    // The server's SETTINGS go out before the client's preface is in.
    guard.write_all(b"\0\0\0\x04\0\0\0\0\0").await.unwrap();
    guard.flush().await.unwrap();
    client_tx.write_all(&H2_PREFACE[..10]).await.unwrap();
    let started = Instant::now();
    let err = read_until_error(&mut guard).await;
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(
        started.elapsed() < DEADLINE + SLACK,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(guard.ending(), Some(Ending::Timeout));
    let seen = received(&mut client_rx).await;
    assert_eq!(seen, "\0\0\0\x04\0\0\0\0\0", "no 408 on HTTP/2");
}

#[tokio::test]
async fn an_http2_connection_is_not_timed_once_its_preface_is_in() {
    let (mut guard, mut client) = guarded_h2();
    guard.write_all(b"\0\0\0\x04\0\0\0\0\0").await.unwrap();
    client.write_all(H2_PREFACE).await.unwrap();
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < H2_PREFACE.len() {
        got += guard.read(&mut buf).await.unwrap();
    }
    let late = tokio::spawn(async move {
        sleep(DEADLINE * 2).await;
        client.write_all(b"frames").await.unwrap();
        client
    });
    let n = guard
        .read(&mut buf)
        .await
        .expect("read long after the deadline");
    assert_eq!(&buf[..n], b"frames");
    assert_eq!(guard.ending(), None);
    drop(late.await);
}

#[tokio::test]
async fn a_guard_gives_its_connection_slot_back_when_dropped() {
    let limit = ConnLimit::new(1);
    let (guard, _client) = guarded();
    let guard = guard.holding(limit.try_acquire().expect("a slot"));
    assert!(limit.try_acquire().is_none());
    drop(guard);
    assert_eq!(limit.open(), 0);
    assert!(limit.try_acquire().is_some());
}

#[tokio::test]
async fn a_next_header_sent_whole_after_a_long_idle_gap_is_served() {
    let (mut guard, mut client) = guarded();
    let mut buf = [0u8; 256];
    for _ in 0..2 {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(guard.read(&mut buf).await.unwrap() > 0);
        guard.header_done();
        guard.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        guard.request_done();
        sleep(DEADLINE + Duration::from_millis(50)).await;
    }
    assert_eq!(guard.ending(), None);
}

#[tokio::test]
async fn a_response_to_a_header_not_yet_whole_counts_as_rejected() {
    let (mut guard, mut client) = guarded();
    client.write_all(b"GET /\x01 HTTP/1.1\r\n").await.unwrap();
    assert!(guard.read(&mut [0u8; 64]).await.unwrap() > 0);
    guard
        .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(guard.ending(), Some(Ending::Rejected));
}

#[tokio::test]
async fn a_response_after_the_header_is_done_counts_nothing() {
    let (mut guard, mut client) = guarded();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(guard.read(&mut [0u8; 64]).await.unwrap() > 0);
    guard.header_done();
    guard
        .write_all(b"HTTP/1.1 404 Not Found\r\n\r\n")
        .await
        .unwrap();
    guard.request_done();
    // The end of the previous response, before any byte of the next header.
    guard.write_all(b"").await.unwrap();
    assert_eq!(guard.ending(), None);
}

#[tokio::test]
async fn a_client_closing_mid_header_counts_as_closed() {
    let (mut guard, mut client) = guarded();
    client.write_all(b"GET / HTTP/1.1\r\nho").await.unwrap();
    drop(client);
    let mut buf = [0u8; 64];
    assert!(guard.read(&mut buf).await.unwrap() > 0);
    assert_eq!(guard.read(&mut buf).await.unwrap(), 0);
    assert_eq!(guard.ending(), Some(Ending::Closed));
}

#[tokio::test]
async fn a_client_closing_before_any_byte_counts_nothing() {
    let (mut guard, client) = guarded();
    drop(client);
    assert_eq!(guard.read(&mut [0u8; 64]).await.unwrap(), 0);
    assert_eq!(guard.ending(), None);
}

#[test]
fn reasons_are_the_metric_labels() {
    let labels: Vec<&str> = [Ending::Timeout, Ending::Rejected, Ending::Closed]
        .iter()
        .map(|e| e.as_str())
        .collect();
    assert_eq!(labels, crate::ops::metrics::HEADER_ERROR_REASONS);
}

/// Counts the events that reach the layers under the filter.
struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
    fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn pingoras_client_caused_errors_are_not_logged_as_errors() {
    use tracing_subscriber::prelude::*;
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry()
        .with(QuietHeaderErrors)
        .with(Count(seen.clone()));
    tracing::subscriber::with_default(subscriber, || {
        tracing::error!(
            target: "pingora_proxy",
            "Fail to proxy: Downstream ReadError context: while reading request headers"
        );
        tracing::error!(target: "pingora_proxy", "Fail to proxy: upstream refused");
        tracing::error!(
            target: "pingora_core::apps",
            "H2 handshake error HandshakeError context: while h2 handshaking with client"
        );
        tracing::error!(target: "scopegate", "while reading request headers");
        tracing::info!(target: "pingora_proxy", "while reading request headers");
    });
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
}
