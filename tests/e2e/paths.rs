//! The reference on canonical paths: only canonical paths are routed, and they go upstream unchanged.
//! Every request here is written as raw bytes, so nothing normalises the
//! path on the way out. A refusal comes before the key is even looked at.

use super::fixtures::*;
use super::harness::{expect_forwarded, expect_openai_error, Proxy, Upstreams};

/// Sends `GET target` with a valid key and asserts 400 `invalid_path` in
/// OpenAI's shape.
#[track_caller]
fn assert_invalid_path(proxy: &Proxy, target: &str) {
    let resp = proxy.get(target).key(BOT).send();
    assert_eq!(
        resp.status,
        400,
        "{target:?} was not refused: {} {}",
        resp.status,
        resp.text()
    );
    expect_openai_error(&resp, 400, "invalid_path");
}

/// Starts a proxy, checks every target is refused as `invalid_path`, and
/// that neither upstream saw any of them.
#[track_caller]
fn assert_all_invalid(targets: &[&str]) {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    for target in targets {
        assert_invalid_path(&proxy, target);
    }
    up.assert_untouched();
}

#[test]
fn empty_segment_is_400() {
    assert_all_invalid(&[
        "/v1//models",
        "//v1/models",
        "/v1/files//content",
        "/v1/files/file_1//content",
    ]);
}

#[test]
fn dot_segments_are_400() {
    assert_all_invalid(&[
        "/v1/./models",
        "/v1/files/../models",
        "/v1/files/.",
        "/v1/files/..",
        "/./v1/models",
    ]);
}

#[test]
fn backslash_is_400() {
    assert_all_invalid(&["/v1/files/a\\b", "/v1\\models", "/v1/files/\\"]);
}

#[test]
fn raw_control_character_is_refused() {
    // pingora's parser may refuse these before scopegate sees them; any 400
    // will do, as long as nothing goes upstream.
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    for target in [
        &b"/v1/files/a\x01b"[..],
        b"/v1/files/a\x7fb",
        b"/v1/files/a\x1bb",
    ] {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target);
        request.extend_from_slice(b" HTTP/1.1\r\nhost: scopegate\r\n");
        request.extend_from_slice(format!("x-portkey-api-key: {BOT}\r\n\r\n").as_bytes());
        let resp = proxy.raw(&request);
        assert_eq!(resp.status, 400, "{target:?}: {}", resp.text());
    }
    up.assert_untouched();
}

#[test]
fn invalid_percent_encoding_is_400() {
    assert_all_invalid(&[
        "/v1/files/%zz",
        "/v1/files/%4",
        "/v1/files/a%",
        "/v1/files/%g0",
        "/v1/files/%%41",
    ]);
}

#[test]
fn encoded_slash_is_400() {
    assert_all_invalid(&["/v1/files/a%2Fb", "/v1/files/a%2fb", "/v1%2Fmodels"]);
}

#[test]
fn encoded_backslash_is_400() {
    assert_all_invalid(&["/v1/files/a%5Cb", "/v1/files/a%5cb"]);
}

#[test]
fn encoded_dot_is_400() {
    assert_all_invalid(&[
        "/v1/files/%2E",
        "/v1/files/%2e%2e",
        "/v1/files/a%2Eb",
        "/v1/files/.%2E",
    ]);
}

#[test]
fn encoded_control_character_is_400() {
    assert_all_invalid(&[
        "/v1/files/a%00b",
        "/v1/files/a%0Ab",
        "/v1/files/a%0db",
        "/v1/files/a%1F",
        "/v1/files/a%7F",
    ]);
}

#[test]
fn encoded_unreserved_character_is_400() {
    assert_all_invalid(&[
        "/v1/files/%41",
        "/v1/files/%61bc",
        "/v1/files/a%7E",
        "/v1/files/a%7e",
        "/v1/files/a%2Db",
        "/v1/files/a%5Fb",
        "/v1/files/file%30",
        "/v1/%6Dodels",
    ]);
}

#[test]
fn invalid_path_is_checked_before_the_key() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let no_key = proxy.get("/v1//models").send();
    let bad_key = proxy.get("/v1/./models").key(UNKNOWN).send();

    expect_openai_error(&no_key, 400, "invalid_path");
    expect_openai_error(&bad_key, 400, "invalid_path");
    up.assert_untouched();
}

#[test]
fn non_canonical_control_plane_path_is_400_in_openai_shape() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy.get("/v1/admin//workspaces").key(ADMIN).send();
    let dotted = proxy.get("/v1/admin/workspaces/%2E").key(ADMIN).send();

    expect_openai_error(&resp, 400, "invalid_path");
    expect_openai_error(&dotted, 400, "invalid_path");
    up.assert_untouched();
}

#[test]
fn allowed_encodings_pass_unchanged() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let targets = [
        "/v1/files/a%20b",
        "/v1/files/caf%C3%A9",
        "/v1/files/a%2Bb",
        "/v1/files/100%25",
        "/v1/files/a%3Ab%40c",
        "/v1/files/file-1.jsonl_v2~x",
    ];

    for target in targets {
        let resp = proxy.get(target).key(BOT).send();
        assert_eq!(resp.status, 200, "{target:?} refused: {}", resp.text());
        expect_forwarded(&resp);
    }

    let seen: Vec<_> = up
        .completions
        .requests()
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert_eq!(seen, targets);
}

#[test]
fn trailing_slash_is_a_different_path() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let completions = proxy
        .post("/v1/chat/completions/")
        .key(BOT)
        .json(CHAT)
        .send();
    let models = proxy.get("/v1/models/").key(BOT).send();
    let workspaces = proxy.get("/v1/admin/workspaces/").key(ADMIN).send();

    expect_openai_error(&completions, 404, "route_not_found");
    expect_openai_error(&models, 404, "route_not_found");
    expect_openai_error(&workspaces, 404, "route_not_found");
    up.assert_untouched();
}

/// `GET <target bytes> HTTP/1.1` with `key`, written byte for byte.
fn raw_get(proxy: &Proxy, target: &[u8], key: &str) -> super::client::Response {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nhost: scopegate\r\n");
    request.extend_from_slice(format!("x-portkey-api-key: {key}\r\n\r\n").as_bytes());
    proxy.raw(&request)
}

#[test]
fn raw_non_ascii_bytes_in_path_or_query_are_invalid_path_and_use_no_quota() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .keys(&keys_yaml_with(&limited_key_entry()))
        .start();
    // U+0085 (NEL), U+00E9, U+2028 raw as UTF-8, in the path and the query;
    // on a data-plane and a control-plane path.
    for target in [
        &b"/v1/files/\xc2\x85"[..],
        b"/v1/files/caf\xc3\xa9",
        b"/v1/files/a\xe2\x80\xa8b",
        b"/v1/models?x=\xc2\x85",
        b"/v1/models?workspace_id=caf\xc3\xa9",
        b"/v1/configs/\xc2\x85",
    ] {
        let resp = raw_get(&proxy, target, LIMITED);
        let message = expect_openai_error(&resp, 400, "invalid_path");
        assert!(message.contains("non-ASCII"), "{target:?}: {message}");
        assert_eq!(resp.header("x-ratelimit-remaining-requests"), None);
    }
    // Bytes that are not UTF-8 never reach the decision: any 400 will do.
    for target in [&b"/v1/files/\xff"[..], b"/v1/files/a\x85b"] {
        let resp = raw_get(&proxy, target, LIMITED);
        assert_eq!(resp.status, 400, "{target:?}: {}", resp.text());
    }
    // Percent-encoded C1 controls are control characters too.
    for target in ["/v1/files/%C2%85", "/v1/files/a%c2%9fb"] {
        let resp = proxy.get(target).key(LIMITED).send();
        expect_openai_error(&resp, 400, "invalid_path");
    }
    up.assert_untouched();
    // None of the refusals used the key's two requests an hour.
    for target in ["/v1/files/caf%C3%A9", "/v1/models?x=%C2%85"] {
        let resp = proxy.get(target).key(LIMITED).send();
        expect_forwarded(&resp);
    }
    let seen: Vec<_> = up
        .completions
        .requests()
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert_eq!(seen, ["/v1/files/caf%C3%A9", "/v1/models?x=%C2%85"]);
}
