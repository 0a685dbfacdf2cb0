//! Connection handling: upstream connections are pooled, and a JSON error
//! does not cost the client its keep-alive connection.

use super::client::{Conn, Req};
use super::fixtures::*;
use super::harness::{
    expect_forwarded, expect_openai_error, expect_portkey_error, Proxy, Upstreams,
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
