//! The reference on what goes upstream: responses, SSE streams included, are streamed through without
//! buffering. The test holds the upstream's last chunk back until the client
//! has seen the first one, so a buffering proxy cannot pass.

use super::fixtures::*;
use super::harness::{Proxy, Upstreams};

#[test]
fn sse_chunks_reach_the_client_before_the_upstream_finishes() {
    let up = Upstreams::start();
    let stream = up.completions.stream("text/event-stream");
    let proxy = Proxy::start(&up);
    stream.send("data: {\"delta\":\"first\"}\n\n");

    let (mut conn, status, headers) = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .json(r#"{"model":"m","stream":true,"messages":[]}"#)
        .send_streaming();
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(n, v)| n == "content-type" && v.starts_with("text/event-stream")));
    assert!(headers.iter().any(|(n, _)| n == "x-request-id"));

    // The upstream has not been allowed to send anything else yet.
    let first = conn.read_until("first");
    assert!(!first.contains("second"));

    stream.send("data: {\"delta\":\"second\"}\n\n");
    conn.read_until("second");

    stream.send("data: [DONE]\n\n");
    stream.finish();
    let rest = String::from_utf8_lossy(&conn.read_body()).into_owned();
    assert!(rest.contains("[DONE]"), "rest: {rest:?}");
}

#[test]
fn sse_stream_on_the_control_plane_is_not_buffered_either() {
    let up = Upstreams::start();
    let stream = up.admin.stream("text/event-stream");
    let proxy = Proxy::start(&up);
    stream.send("event: progress\ndata: 10\n\n");

    let (mut conn, status, _) = proxy
        .get("/v1/logs/exports/exp_1")
        .key(BOT)
        .send_streaming();
    assert_eq!(status, 200);
    conn.read_until("data: 10");

    stream.send("event: done\ndata: 100\n\n");
    stream.finish();
    let rest = String::from_utf8_lossy(&conn.read_body()).into_owned();
    assert!(rest.contains("data: 100"), "rest: {rest:?}");
}
