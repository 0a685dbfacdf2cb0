//! The reference on shutdown: SIGTERM stops accepting, lets in-flight requests (streams too)
//! finish within `shutdown_grace_period_seconds`, then exits 0.

use std::time::Duration;

use super::fixtures::*;
use super::harness::{accepts, expect_forwarded, poll_until, Proxy, Upstreams};

const GRACE_SECONDS: u64 = 2;

/// Upper bound for the exit: the grace period plus time to wind down.
fn exit_bound() -> Duration {
    Duration::from_secs(GRACE_SECONDS + 8)
}

#[test]
fn sigterm_lets_an_in_flight_stream_finish_and_exits_zero() {
    let up = Upstreams::start();
    let stream = up.completions.stream("text/event-stream");
    let mut proxy = Proxy::builder(&up).grace_seconds(GRACE_SECONDS).start();
    stream.send("data: one\n\n");
    let (mut conn, status, _) = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .json(CHAT)
        .send_streaming();
    assert_eq!(status, 200);
    conn.read_until("data: one");

    proxy.terminate();
    // Sync point: once the listener is closed the signal has been handled.
    // Whether it closes at all is `sigterm_stops_accepting_new_connections`.
    let _ = poll_until(Duration::from_secs(5), || !accepts(proxy.addr()));
    // While the stream drains, readiness says so: a load balancer stops
    // sending new requests to this replica.
    let ready = proxy.metrics_get("/readyz");
    assert_eq!(ready.status, 503, "/readyz during the drain: {ready:?}");
    assert_eq!(ready.text().trim(), "draining");

    stream.send("data: two\n\n");
    conn.read_until("data: two");
    stream.send("data: [DONE]\n\n");
    stream.finish();
    let rest = String::from_utf8_lossy(&conn.read_body()).into_owned();
    assert!(rest.contains("[DONE]"), "stream cut short: {rest:?}");

    let exit = proxy.wait_exit(exit_bound());
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
}

#[test]
fn sigterm_stops_accepting_new_connections() {
    let up = Upstreams::start();
    let mut proxy = Proxy::builder(&up).grace_seconds(GRACE_SECONDS).start();
    expect_forwarded(
        &proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .json(CHAT)
            .send(),
    );

    proxy.terminate();

    assert!(
        poll_until(Duration::from_secs(5), || !accepts(proxy.addr())),
        "the proxy port still accepts connections 5 s after SIGTERM"
    );
    let exit = proxy.wait_exit(exit_bound());
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
}

#[test]
fn sigterm_when_idle_exits_zero_within_the_grace_period() {
    let up = Upstreams::start();
    let mut proxy = Proxy::builder(&up).grace_seconds(1).start();

    proxy.terminate();

    let exit = proxy.wait_exit(Duration::from_secs(1 + 8));
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
}

#[test]
fn sigterm_right_after_readyz_still_exits_zero() {
    let up = Upstreams::start();
    let mut proxy = Proxy::builder(&up)
        .grace_seconds(1)
        .ready_on_readyz_alone()
        .start();

    // An orchestrator may stop a pod the moment it reports ready.
    proxy.terminate();

    let exit = proxy.wait_exit(Duration::from_secs(1 + 8));
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
}
