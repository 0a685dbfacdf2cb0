//! The harness's protocol column: one request, written once, sent over
//! HTTP/1.1 (plain listener) and over HTTP/2 (HTTPS listener, ALPN `h2`),
//! reaches the upstream as the same HTTP/1.1 request. These tests hold the
//! harness to that, on requests the proxy forwards without reading their
//! body; the rules of the contract are tested over both protocols in their
//! own files.

use super::client::Proto;
use super::fixtures::*;
use super::harness::{expect_forwarded, expect_openai_error, Proxy, Upstreams};

#[test]
fn one_request_reaches_the_upstream_alike_over_both_protocols() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).https().start();
    for proto in Proto::ALL {
        for (framing, req) in [
            ("whole", proxy.post("/v1/chat/completions?x=1").json(CHAT)),
            (
                "chunked",
                proxy
                    .post("/v1/chat/completions?x=1")
                    .header("content-type", "application/json")
                    .chunked([&CHAT[..10], &CHAT[10..]]),
            ),
            (
                "exact",
                proxy
                    .post("/v1/chat/completions?x=1")
                    .header("content-type", "application/json")
                    .header("content-length", &CHAT.len().to_string())
                    .exact(CHAT),
            ),
        ] {
            let before = up.completions.count();
            let resp = req
                .key(BOT)
                .header("x-repeated", "one")
                .header("x-repeated", "two")
                .over(proto)
                .send();
            expect_forwarded(&resp);
            let seen = &up.completions.requests()[before];
            let case = format!("{proto:?} {framing}");
            assert_eq!(seen.method, "POST", "{case}");
            assert_eq!(seen.target, "/v1/chat/completions?x=1", "{case}");
            assert_eq!(seen.body, CHAT.as_bytes(), "{case}");
            assert_eq!(seen.header_all("x-repeated"), ["one", "two"], "{case}");
            assert_eq!(seen.header("content-type"), Some("application/json"));
            assert_eq!(seen.header("x-scopegate-key-id"), Some("key_bot"));
            assert_eq!(
                seen.header("host"),
                Some(up.completions.authority().as_str())
            );
        }
        let refused = proxy
            .post("/v1/chat/completions")
            .json(CHAT)
            .over(proto)
            .send();
        expect_openai_error(&refused, 401, "missing_api_key");
    }
    assert_eq!(up.completions.count(), 6);
}

#[test]
fn a_streamed_answer_is_read_piece_by_piece_over_both_protocols() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).https().start();
    for proto in Proto::ALL {
        let stream = up.completions.stream("text/event-stream");
        let mut open = proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .json(CHAT)
            .over(proto)
            .open();
        assert_eq!(open.status, 200, "{proto:?}");
        assert_eq!(open.header("content-type"), Some("text/event-stream"));
        stream.send("data: first\n\n");
        let first = open.read_until("first");
        assert!(!first.contains("second"), "{proto:?}: {first}");
        stream.send("data: second\n\n");
        stream.finish();
        let rest = String::from_utf8_lossy(&open.read_body()).into_owned();
        assert!(format!("{first}{rest}").contains("second"), "{proto:?}");
    }
}
