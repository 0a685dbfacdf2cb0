//! The reference on the decision order and on what goes upstream: the key may come in `x-portkey-api-key`,
//! `Authorization: Bearer`, `x-api-key` (Anthropic's SDKs) or `api-key`
//! (Azure OpenAI's clients), in that order of precedence. Upstream, the
//! carrying header is removed, and so is any other key header holding a key
//! of the keys file; the others pass as provider keys.

use super::client::Proto;
use super::fixtures::*;
use super::harness::{expect_forwarded, expect_openai_error, Proxy, Upstreams};

#[test]
fn each_key_header_alone_carries_the_key_and_is_removed_upstream() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    for (header, value) in [
        ("x-portkey-api-key", BOT.to_string()),
        ("authorization", format!("Bearer {BOT}")),
        ("x-api-key", BOT.to_string()),
        ("api-key", BOT.to_string()),
        ("X-Api-Key", BOT.to_string()),
    ] {
        let before = up.completions.count();
        let resp = proxy
            .post("/v1/messages")
            .header(header, &value)
            .json(CHAT)
            .send();
        expect_forwarded(&resp);
        let seen = &up.completions.requests()[before];
        for h in ["x-portkey-api-key", "authorization", "x-api-key", "api-key"] {
            assert_eq!(
                seen.header(h),
                None,
                "{h} reached upstream (key in {header})"
            );
        }
        assert_eq!(
            seen.header("x-scopegate-key-id"),
            Some("key_bot"),
            "{header}"
        );
        assert!(
            !format!("{:?}", seen.headers).contains(BOT),
            "the key reached the upstream: {seen:?}"
        );
    }
}

#[test]
fn precedence_follows_the_contract() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    // Higher-precedence header with an unknown key wins over a valid one
    // lower down: the request is refused, never "rescued".
    let pairs: [(&str, String, &str, &str); 6] = [
        (
            "x-portkey-api-key",
            UNKNOWN.into(),
            "authorization",
            "bearer",
        ),
        ("x-portkey-api-key", UNKNOWN.into(), "x-api-key", "plain"),
        ("x-portkey-api-key", UNKNOWN.into(), "api-key", "plain"),
        (
            "authorization",
            format!("Bearer {UNKNOWN}"),
            "x-api-key",
            "plain",
        ),
        (
            "authorization",
            format!("Bearer {UNKNOWN}"),
            "api-key",
            "plain",
        ),
        ("x-api-key", UNKNOWN.into(), "api-key", "plain"),
    ];
    for (high, high_value, low, kind) in pairs {
        let low_value = if kind == "bearer" {
            format!("Bearer {BOT}")
        } else {
            BOT.to_string()
        };
        let resp = proxy
            .post("/v1/chat/completions")
            .header(high, &high_value)
            .header(low, &low_value)
            .json(CHAT)
            .send();
        expect_openai_error(&resp, 401, "invalid_api_key");
    }
    up.assert_untouched();
    // And the other way round: the valid key up high passes.
    for (high, high_value, low) in [
        ("x-portkey-api-key", BOT.to_string(), "x-api-key"),
        ("authorization", format!("Bearer {BOT}"), "api-key"),
        ("x-api-key", BOT.to_string(), "api-key"),
    ] {
        let resp = proxy
            .post("/v1/chat/completions")
            .header(high, &high_value)
            .header(low, UNKNOWN)
            .json(CHAT)
            .send();
        expect_forwarded(&resp);
    }
}

#[test]
fn a_non_bearer_authorization_carries_no_key_so_x_api_key_does() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let resp = proxy
        .post("/v1/chat/completions")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .header("x-api-key", BOT)
        .json(CHAT)
        .send();
    expect_forwarded(&resp);
    let seen = up.completions.only_request();
    assert_eq!(seen.header("authorization"), Some("Basic dXNlcjpwYXNz"));
    assert_eq!(seen.header("x-api-key"), None);
}

#[test]
fn each_key_header_repeated_is_invalid_api_key() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    for header in ["x-portkey-api-key", "x-api-key", "api-key"] {
        let resp = proxy
            .post("/v1/chat/completions")
            .header(header, BOT)
            .header(header, BOT)
            .json(CHAT)
            .send();
        expect_openai_error(&resp, 401, "invalid_api_key");
    }
    let resp = proxy
        .post("/v1/chat/completions")
        .header("authorization", &format!("Bearer {BOT}"))
        .header("authorization", &format!("Bearer {BOT}"))
        .json(CHAT)
        .send();
    expect_openai_error(&resp, 401, "invalid_api_key");
    up.assert_untouched();
}

#[test]
fn a_second_header_holding_a_scopegate_key_is_removed_too() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    // Azure-style clients send one key in two headers; another scopegate
    // key in a second header must not reach the upstream either.
    let resp = proxy
        .post("/v1/chat/completions")
        .header("api-key", BOT)
        .header("x-api-key", ALICE)
        .header("authorization", &format!("Bearer {BOT}"))
        .json(CHAT)
        .send();
    expect_forwarded(&resp);
    let seen = up.completions.only_request();
    assert_eq!(seen.header("x-scopegate-key-id"), Some("key_bot"));
    for h in ["authorization", "x-api-key", "api-key"] {
        assert_eq!(seen.header(h), None, "{h} reached upstream");
    }
}

#[test]
fn provider_keys_in_other_key_headers_pass_untouched() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let resp = proxy
        .post("/v1/messages")
        .key(BOT)
        .header("x-api-key", "sk-ant-provider-123")
        .header("api-key", "azure-provider-456")
        .header("authorization", "Bearer sk-openai-789")
        .json(CHAT)
        .send();
    expect_forwarded(&resp);
    let seen = up.completions.only_request();
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-provider-123"));
    assert_eq!(seen.header("api-key"), Some("azure-provider-456"));
    assert_eq!(seen.header("authorization"), Some("Bearer sk-openai-789"));
    assert_eq!(seen.header("x-portkey-api-key"), None);

    // Key in x-api-key: a provider key in api-key still passes.
    let resp = proxy
        .post("/v1/messages")
        .header("x-api-key", BOT)
        .header("api-key", "azure-provider-456")
        .json(CHAT)
        .send();
    expect_forwarded(&resp);
    let seen = &up.completions.requests()[1];
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("api-key"), Some("azure-provider-456"));
}

#[test]
fn missing_key_message_names_every_header() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let resp = proxy.post("/v1/chat/completions").json(CHAT).send();
    let message = expect_openai_error(&resp, 401, "missing_api_key");
    for h in ["x-portkey-api-key", "Bearer", "x-api-key", "api-key"] {
        assert!(message.contains(h), "{message}");
    }
    up.assert_untouched();
}

#[test]
fn the_carrying_header_is_never_logged_or_labelled() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let resp = proxy
        .post("/v1/chat/completions")
        .header("x-api-key", BOT)
        .json(CHAT)
        .send();
    expect_forwarded(&resp);
    let metrics = proxy.metrics_get("/metrics").text();
    assert!(!metrics.contains(BOT));
    assert!(!metrics.contains("x-api-key"));
    assert!(!proxy.logs().contains(BOT));
}

/// A key of the keys file never reaches the upstream in a key header,
/// whatever form it has there — bare (`Authorization: <key>`), after
/// `Bearer`, or after another scheme — and whichever header carried the
/// presented key; over both protocols and both forward paths (a body
/// pingora streams, a control-plane body the proxy inspected and sends).
#[test]
fn a_key_of_the_keys_file_in_any_form_never_reaches_the_upstream() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).https().start();
    // (the header carrying the presented key BOT, the other key header,
    // its value holding a key of the file)
    let bare = ALICE.to_string();
    let token = format!("Token {ALICE}");
    let bearer = format!("bearer   {BOT}");
    let other_scheme = format!("Key {BOT}");
    let rows: [(&str, String, &str, &str); 6] = [
        ("x-portkey-api-key", BOT.into(), "authorization", &bare),
        ("x-portkey-api-key", BOT.into(), "authorization", &token),
        ("x-api-key", BOT.into(), "authorization", &bare),
        ("authorization", format!("Bearer {BOT}"), "api-key", &bearer),
        ("x-api-key", BOT.into(), "api-key", &other_scheme),
        ("x-api-key", BOT.into(), "api-key", &token),
    ];
    for proto in Proto::ALL {
        for (carrier, value, other, held) in &rows {
            for (path, body) in [
                ("/v1/chat/completions", CHAT),
                ("/v1/configs", r#"{"name":"c"}"#),
            ] {
                let resp = proxy
                    .post(path)
                    .header(carrier, value)
                    .header(other, held)
                    .json(body)
                    .over(proto)
                    .send();
                let case = format!("{proto:?} {path} key in {carrier}, {other}: {held}");
                expect_forwarded(&resp);
                let seen = if path == "/v1/configs" {
                    up.admin.requests().pop()
                } else {
                    up.completions.requests().pop()
                }
                .expect("forwarded");
                assert_eq!(seen.header("x-scopegate-key-id"), Some("key_bot"), "{case}");
                assert_eq!(seen.body, body.as_bytes(), "{case}");
                let all = format!("{:?}", seen.headers);
                assert!(!all.contains(BOT) && !all.contains(ALICE), "{case}: {all}");
                for h in [*carrier, *other] {
                    assert_eq!(seen.header(h), None, "{case}: {h} reached upstream");
                }
            }
        }
        // A provider key, bare or after a scheme, passes.
        for provider in [
            "sk-openai-789",
            "Bearer sk-openai-789",
            "Token sk-openai-789",
        ] {
            let resp = proxy
                .post("/v1/chat/completions")
                .key(BOT)
                .header("authorization", provider)
                .json(CHAT)
                .over(proto)
                .send();
            expect_forwarded(&resp);
            let seen = up.completions.requests().pop().expect("forwarded");
            assert_eq!(seen.header("authorization"), Some(provider), "{proto:?}");
        }
    }
}
