//! The reference on models, tokens and budgets: models, token limits, budgets and concurrency, against the real
//! binary and a recording upstream — every request over HTTP/1.1 and over
//! HTTP/2 (the protocol is a column of each table, [`Proto::ALL`]).
//!
//! A test whose counters would carry over from one protocol to the next
//! starts a proxy per protocol; the others share one.

use std::time::Duration;

use scopegate::identity::keys::digest_hex;

use super::client::{Proto, Response};
use super::fixtures::*;
use super::harness::{
    expect_forwarded, expect_openai_error, poll_until, run_scopegate, Proxy, ProxyBuilder,
    Upstreams,
};
use super::upstream::Recorded;

pub const MINI_ONLY: &str = "sk-test-mini-only";
pub const BUDGET: &str = "sk-test-budget";
pub const TPM: &str = "sk-test-tpm";
pub const ONE_AT_A_TIME: &str = "sk-test-one-at-a-time";
/// Only a request rate limit: nothing of its body is read or counted.
pub const REQUESTS_ONLY: &str = "sk-test-requests-only";

/// Keys with spending limits, appended to the shared keys file.
fn spending_keys() -> String {
    let h = |s: &str| digest_hex(s.as_bytes());
    format!(
        r#"  - id: key_mini
    name: Mini only
    type: workspace-service
    workspace_id: ws_research
    sha256: "{}"
    scopes: ["completions.write"]
    models: ["gpt-4o-mini", "text-embedding-*", "whisper-1"]
  - id: key_budget
    name: Budget
    type: workspace-service
    workspace_id: ws_prod
    sha256: "{}"
    scopes: ["completions.write"]
    usage_limits: {{ type: tokens, credit_limit: 90, alert_threshold: 50, periodic_reset: monthly }}
  - id: key_tpm
    name: Tokens per minute
    type: workspace-service
    workspace_id: ws_prod
    sha256: "{}"
    scopes: ["completions.write"]
    rate_limits: [{{ type: tokens, unit: rpm, value: 1000 }}]
  - id: key_one
    name: One at a time
    type: workspace-service
    workspace_id: ws_prod
    sha256: "{}"
    scopes: ["completions.write"]
    max_concurrent_requests: 1
  - id: key_requests_only
    name: Requests only
    type: workspace-service
    workspace_id: ws_prod
    sha256: "{}"
    scopes: ["completions.write"]
    rate_limits: [{{ type: requests, unit: rph, value: 1000 }}]
"#,
        h(MINI_ONLY),
        h(BUDGET),
        h(TPM),
        h(ONE_AT_A_TIME),
        h(REQUESTS_ONLY),
    )
}

/// The spending keys, an HTTPS listener for the HTTP/2 column, and no
/// default output reservation: [`CHAT`] names no `max_tokens`, and the
/// budget arithmetic of these tests counts its input only (the default has
/// tests of its own).
fn builder(up: &Upstreams) -> ProxyBuilder {
    Proxy::builder(up)
        .https()
        .keys(&keys_yaml_with(&spending_keys()))
        .config("default_output_reservation: 0")
}

fn start(up: &Upstreams) -> Proxy {
    builder(up).start()
}

const USAGE_BODY: &str = r#"{"id":"c1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":10,"total_tokens":40}}"#;

/// The completions upstream answers every request with [`USAGE_BODY`].
fn answers_with_usage(up: &Upstreams) {
    up.completions.reply(
        200,
        &[("content-type", "application/json")],
        USAGE_BODY.as_bytes(),
    );
}

/// Asserts the upstream received exactly the request the proxy checked:
/// the body byte for byte, framed by a `content-length` of its size, the
/// client's content type, the upstream's `Host`, the key's identity and no
/// key header.
#[track_caller]
pub fn assert_received_exactly(up: &Upstreams, seen: &Recorded, body: &[u8], content_type: &str) {
    assert_eq!(
        seen.body,
        body,
        "body differs upstream: {:?}",
        String::from_utf8_lossy(&seen.body)
    );
    assert_eq!(seen.header("content-type"), Some(content_type), "{seen:?}");
    assert_eq!(
        seen.header("content-length"),
        Some(body.len().to_string().as_str()),
        "{seen:?}"
    );
    assert_eq!(seen.header("transfer-encoding"), None, "{seen:?}");
    assert_eq!(
        seen.header("host"),
        Some(up.completions.authority().as_str())
    );
    assert!(seen.header("x-scopegate-key-id").is_some(), "{seen:?}");
    for h in ["x-portkey-api-key", "authorization", "x-api-key", "api-key"] {
        assert_eq!(seen.header(h), None, "{h} reached the upstream");
    }
}

#[test]
fn model_refusals_never_reach_the_upstream_and_the_allowed_model_passes_byte_for_byte() {
    let up = Upstreams::start();
    let proxy = start(&up);
    let json = "application/json";
    // (path, content type, body, status, code)
    let refusals: &[(&str, &str, &str, u16, &str)] = &[
        (
            "/v1/chat/completions",
            json,
            r#"{"model":"gpt-4o","messages":[]}"#,
            403,
            "model_not_allowed",
        ),
        // The query parameter cannot smuggle a model past the check.
        (
            "/v1/chat/completions?model=gpt-4o",
            json,
            r#"{"model":"gpt-4o-mini","messages":[]}"#,
            403,
            "model_not_allowed",
        ),
        // Case variants of the field are refused, not ignored.
        (
            "/v1/chat/completions",
            json,
            r#"{"model":"gpt-4o-mini","Model":"gpt-4o","messages":[]}"#,
            400,
            "invalid_json",
        ),
        // No model on an inference route.
        (
            "/v1/chat/completions",
            json,
            r#"{"messages":[]}"#,
            400,
            "missing_model",
        ),
        // A route whose model cannot be seen fails closed.
        (
            "/v1/batches",
            json,
            r#"{"input_file_id":"f"}"#,
            403,
            "model_not_allowed",
        ),
        // A body that is not a JSON object.
        ("/v1/chat/completions", json, "[1,2]", 400, "invalid_json"),
        // Any +json type is read as JSON, and checked.
        (
            "/v1/chat/completions",
            "application/vnd.api+json",
            r#"{"model":"gpt-4o","messages":[]}"#,
            403,
            "model_not_allowed",
        ),
        // A body declared as something else would reach an upstream that
        // parses JSON whatever the header says: it is not read, so refused.
        (
            "/v1/chat/completions?model=gpt-4o-mini",
            "text/plain",
            r#"{"model":"gpt-4o"}"#,
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/chat/completions?model=gpt-4o-mini",
            "application/x-www-form-urlencoded",
            r#"{"model":"gpt-4o"}"#,
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/embeddings?model=text-embedding-3-small",
            "text/plain; charset=utf-8",
            r#"{"model":"gpt-4o","input":"x"}"#,
            415,
            "unsupported_media_type",
        ),
    ];
    for proto in Proto::ALL {
        for (path, content_type, body, status, code) in refusals {
            let resp = proxy
                .post(path)
                .key(MINI_ONLY)
                .header("content-type", content_type)
                .body(body)
                .over(proto)
                .send();
            let msg = expect_openai_error(&resp, *status, code);
            assert!(!msg.contains("text-embedding"), "the list leaked: {msg}");
            if *code == "model_not_allowed" && !path.starts_with("/v1/batches") {
                assert!(msg.contains("gpt-4o"), "{proto:?} {path}: {msg}");
            }
        }
        // No Content-Type at all; and two of them, one JSON.
        let none = proxy
            .post("/v1/chat/completions?model=gpt-4o-mini")
            .key(MINI_ONLY)
            .body(r#"{"model":"gpt-4o"}"#)
            .over(proto)
            .send();
        expect_openai_error(&none, 415, "unsupported_media_type");
        let twice = proxy
            .post("/v1/chat/completions?model=gpt-4o-mini")
            .key(MINI_ONLY)
            .header("content-type", "text/plain")
            .header("content-type", "application/json")
            .body(r#"{"model":"gpt-4o"}"#)
            .over(proto)
            .send();
        let msg = expect_openai_error(&twice, 415, "unsupported_media_type");
        assert!(msg.contains("more than once"), "{msg}");
        // A chunked body of another type is refused before it is read.
        let chunked = proxy
            .post("/v1/chat/completions?model=gpt-4o-mini")
            .key(MINI_ONLY)
            .header("content-type", "text/plain")
            .chunked([r#"{"model":"#, r#""gpt-4o"}"#])
            .over(proto)
            .send();
        expect_openai_error(&chunked, 415, "unsupported_media_type");
    }
    up.assert_untouched();

    // The allowed model passes, byte for byte, whatever the JSON type.
    for proto in Proto::ALL {
        for content_type in ["application/json", "application/vnd.example+json; v=1"] {
            let before = up.completions.count();
            let body = r#"{"model":"gpt-4o-mini", "messages":[{"role":"user","content":"hi"}]}"#;
            let resp = proxy
                .post("/v1/chat/completions")
                .key(MINI_ONLY)
                .header("content-type", content_type)
                .body(body)
                .over(proto)
                .send();
            expect_forwarded(&resp);
            let seen = &up.completions.requests()[before];
            assert_received_exactly(&up, seen, body.as_bytes(), content_type);
        }
    }
}

#[test]
fn a_multipart_model_is_checked_and_an_allowed_one_passes_byte_for_byte() {
    let up = Upstreams::start();
    let proxy = start(&up);
    let form = |model: &str| {
        format!("--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--b--\r\n")
    };
    let ct = "multipart/form-data; boundary=b";
    for proto in Proto::ALL {
        let resp = proxy
            .post("/v1/audio/transcriptions")
            .key(MINI_ONLY)
            .header("content-type", ct)
            .body(form("whisper-2"))
            .over(proto)
            .send();
        expect_openai_error(&resp, 403, "model_not_allowed");
        let resp = proxy
            .post("/v1/audio/transcriptions")
            .key(MINI_ONLY)
            .header("content-type", ct)
            .body("not multipart at all")
            .over(proto)
            .send();
        expect_openai_error(&resp, 400, "invalid_json");
    }
    up.assert_untouched();
    for proto in Proto::ALL {
        let before = up.completions.count();
        let body = form("whisper-1");
        let resp = proxy
            .post("/v1/audio/transcriptions")
            .key(MINI_ONLY)
            .header("content-type", ct)
            .body(&body)
            .over(proto)
            .send();
        expect_forwarded(&resp);
        let seen = &up.completions.requests()[before];
        assert_received_exactly(&up, seen, body.as_bytes(), ct);
    }
}

#[test]
fn other_data_routes_stream_a_body_of_another_type_untouched() {
    let up = Upstreams::start();
    let proxy = start(&up);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    for proto in Proto::ALL {
        for key in [MINI_ONLY, BUDGET, TPM] {
            let before = up.completions.count();
            let resp = proxy
                .post("/v1/files")
                .key(key)
                .header("content-type", "application/octet-stream")
                .body(&bytes)
                .over(proto)
                .send();
            expect_forwarded(&resp);
            let seen = &up.completions.requests()[before];
            assert_eq!(seen.body, bytes, "{proto:?} {key}");
            assert_eq!(
                seen.header("content-type"),
                Some("application/octet-stream")
            );
        }
    }
}

#[test]
fn a_token_budget_admits_by_reservation_then_answers_412() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        answers_with_usage(&up);
        let proxy = start(&up);
        // Each request reserves len/4 = 17 tokens and settles the 40 the
        // upstream reports: after two (80 used), 80 + 17 > 90 refuses the
        // third by its reservation, and nothing more reaches the upstream.
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let resp = proxy
                .post("/v1/chat/completions")
                .key(BUDGET)
                .json(CHAT)
                .over(proto)
                .send();
            statuses.push(resp.status);
            if resp.status == 412 {
                expect_openai_error(&resp, 412, "budget_exhausted");
            }
        }
        assert_eq!(statuses, vec![200, 200, 412, 412], "{proto:?}");
        assert_eq!(up.completions.count(), 2);
        for seen in up.completions.requests() {
            assert_received_exactly(&up, &seen, CHAT.as_bytes(), "application/json");
        }
        let poll = poll_until(Duration::from_secs(3), || {
            usage_json(&proxy, "key_budget")[0]["used_tokens"] == 80
        });
        assert!(
            poll,
            "{proto:?}: usage did not reach 80 tokens in the state file"
        );
        let m = proxy.metric(
            "scopegate_tokens_total",
            &[
                ("workspace", "ws_prod"),
                ("kind", "input"),
                ("source", "reported"),
            ],
        );
        assert_eq!(m, 60.0, "{proto:?}");
    }
}

/// Every counted request is sent by the proxy itself, so its answer is
/// read for usage: a chunked body, an HTTP/2 body without a length and a
/// request with no body at all settle what the upstream reported, never an
/// estimate.
#[test]
fn every_counted_answer_is_metered_whatever_the_framing() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        answers_with_usage(&up);
        let proxy = start(&up);
        let chunked = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .header("content-type", "application/json")
            .chunked([&CHAT[..20], &CHAT[20..]])
            .over(proto)
            .send();
        assert_eq!(chunked.status, 200, "{proto:?}: {}", chunked.text());
        assert_received_exactly(
            &up,
            &up.completions.requests()[0],
            CHAT.as_bytes(),
            "application/json",
        );
        let empty = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .over(proto)
            .send();
        assert_eq!(empty.status, 200, "{proto:?}: {}", empty.text());
        assert_eq!(up.completions.requests()[1].body, b"");
        assert!(
            poll_until(Duration::from_secs(3), || {
                let v = usage_json(&proxy, "key_budget");
                v[0]["input_tokens"] == 60
                    && v[0]["output_tokens"] == 20
                    && v[0]["estimated_tokens"] == 0
            }),
            "{proto:?}: {}",
            usage_json(&proxy, "key_budget")
        );
    }
}

#[test]
fn usage_survives_a_restart() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        answers_with_usage(&up);
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("usage.db");
        let builder = with_state(builder(&up), &state);
        let mut proxy = builder.clone().start();
        for _ in 0..2 {
            let resp = proxy
                .post("/v1/chat/completions")
                .key(BUDGET)
                .json(CHAT)
                .over(proto)
                .send();
            assert_eq!(resp.status, 200);
        }
        proxy.terminate();
        assert!(proxy.wait_exit(Duration::from_secs(10)).success());
        let proxy = builder.start();
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .json(CHAT)
            .over(proto)
            .send();
        expect_openai_error(&resp, 412, "budget_exhausted");
        assert_eq!(up.completions.count(), 2, "{proto:?}");
    }
}

#[test]
fn a_stream_gets_usage_upstream_and_the_client_sees_the_stream_it_asked_for() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        let proxy = start(&up);
        let chunk = |s: &str| format!("data: {s}\n\n");
        let c1 = r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hel"}}],"usage":null}"#;
        let c2 = r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo"}}],"usage":null}"#;
        let u = r#"{"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":10,"total_tokens":40}}"#;
        let stream = up.completions.stream("text/event-stream");
        let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
        let mut open = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .json(body)
            .over(proto)
            .open();
        assert_eq!(open.status, 200);
        stream.send(&chunk(c1));
        let first = open.read_until("hel");
        stream.send(&chunk(c2));
        stream.send(&chunk(u));
        stream.send("data: [DONE]\n\n");
        stream.finish();
        let rest = String::from_utf8_lossy(&open.read_body()).into_owned();
        let all = format!("{first}{rest}");
        assert!(
            !all.contains("prompt_tokens"),
            "{proto:?}: usage chunk reached the client: {all}"
        );
        assert!(!all.contains("\"usage\""), "{proto:?}: usage:null: {all}");
        assert!(all.contains("[DONE]"));
        // Upstream: the same body with only include_usage added.
        let seen = up.completions.only_request();
        let injected = r#"{"stream_options":{"include_usage":true},"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
        assert_received_exactly(&up, &seen, injected.as_bytes(), "application/json");
        assert!(poll_until(Duration::from_secs(3), || proxy.metric(
            "scopegate_tokens_total",
            &[
                ("workspace", "ws_prod"),
                ("kind", "output"),
                ("source", "reported")
            ]
        ) == 10.0));
    }
}

#[test]
fn a_token_rate_limit_refuses_with_headers_and_says_when_a_request_can_never_pass() {
    let up = Upstreams::start();
    answers_with_usage(&up);
    let proxy = start(&up);
    for proto in Proto::ALL {
        let resp = proxy
            .post("/v1/chat/completions")
            .key(TPM)
            .json(r#"{"model":"m","max_tokens":5000,"messages":[]}"#)
            .over(proto)
            .send();
        let msg = expect_openai_error(&resp, 429, "rate_limited");
        assert!(msg.contains("whole"), "{msg}");
    }
    up.assert_untouched();
    for proto in Proto::ALL {
        let resp = proxy
            .post("/v1/chat/completions")
            .key(TPM)
            .json(CHAT)
            .over(proto)
            .send();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-ratelimit-limit-tokens"), Some("1000"));
        assert!(resp.header("x-ratelimit-remaining-tokens").is_some());
        assert!(resp.header("x-ratelimit-reset-tokens").is_some());
    }
}

/// The reservation: body bytes ÷ 4, plus the requested maximum output
/// times `n`, or `default_output_reservation` times `n` on routes that
/// generate text. Seen in `x-ratelimit-remaining-tokens`, which a token
/// rate limit answers at admission, before anything settles.
#[test]
fn the_reservation_counts_n_and_reserves_a_default_output() {
    // The upstream reports no usage: settlement charges an estimate, so
    // each row starts on a fresh proxy (a fresh minute of 1000 tokens).
    // (config, path, body, Some(output reserved) | None: 429, never passes);
    // the input is the body's length ÷ 4.
    let rows: &[(&str, &str, &str, Option<u64>)] = &[
        (
            "",
            "/v1/chat/completions",
            r#"{"model":"m","max_tokens":300,"n":2}"#,
            Some(600),
        ),
        (
            "",
            "/v1/chat/completions",
            r#"{"model":"m","max_tokens":300,"n":4}"#,
            None,
        ),
        (
            "",
            "/v1/chat/completions",
            r#"{"model":"m","max_tokens":300,"n":0}"#,
            Some(300),
        ),
        (
            "",
            "/v1/completions",
            r#"{"model":"m","max_tokens":100,"n":null}"#,
            Some(100),
        ),
        (
            "",
            "/v1/responses",
            r#"{"model":"m","max_output_tokens":50}"#,
            Some(50),
        ),
        // No maximum: the default (4096 tokens) is more than the whole limit.
        (
            "",
            "/v1/chat/completions",
            r#"{"model":"m","messages":[]}"#,
            None,
        ),
        ("", "/v1/messages", r#"{"model":"m","messages":[]}"#, None),
        ("", "/v1/responses", r#"{"model":"m","input":"hi"}"#, None),
        // Embeddings generate no text: their input only.
        (
            "",
            "/v1/embeddings",
            r#"{"model":"m","input":"hi there"}"#,
            Some(0),
        ),
        (
            "default_output_reservation: 100",
            "/v1/chat/completions",
            r#"{"model":"m","messages":[],"n":3}"#,
            Some(300),
        ),
        (
            "default_output_reservation: 100",
            "/v1/chat/completions",
            r#"{"model":"m","messages":[],"n":12}"#,
            None,
        ),
        (
            "default_output_reservation: 0",
            "/v1/chat/completions",
            r#"{"model":"m","messages":[]}"#,
            Some(0),
        ),
    ];
    for proto in Proto::ALL {
        for (config, path, body, reserved) in rows {
            let up = Upstreams::start();
            let proxy = Proxy::builder(&up)
                .https()
                .keys(&keys_yaml_with(&spending_keys()))
                .config(config)
                .start();
            let resp = proxy.post(path).key(TPM).json(body).over(proto).send();
            let case = format!("{proto:?} {config:?} {path} {body}");
            match reserved {
                Some(output) => {
                    assert_eq!(resp.status, 200, "{case}: {}", resp.text());
                    let r = body.len() as u64 / 4 + output;
                    assert_eq!(
                        resp.header("x-ratelimit-remaining-tokens"),
                        Some((1000 - r).to_string().as_str()),
                        "{case}"
                    );
                    assert_received_exactly(
                        &up,
                        &up.completions.only_request(),
                        body.as_bytes(),
                        "application/json",
                    );
                }
                None => {
                    let msg = expect_openai_error(&resp, 429, "rate_limited");
                    assert!(msg.contains("whole"), "{case}: {msg}");
                    up.assert_untouched();
                }
            }
        }
    }
}

#[test]
fn max_concurrent_requests_refuses_a_second_request_in_flight_and_recovers() {
    let up = Upstreams::start();
    let proxy = start(&up);
    for proto in Proto::ALL {
        let stream = up.completions.stream("text/event-stream");
        let before = up.completions.count();
        let open = proxy
            .post("/v1/chat/completions")
            .key(ONE_AT_A_TIME)
            .json(CHAT)
            .over(proto)
            .open();
        assert_eq!(open.status, 200);
        for second in Proto::ALL {
            let resp = proxy
                .post("/v1/chat/completions")
                .key(ONE_AT_A_TIME)
                .json(CHAT)
                .over(second)
                .send();
            expect_openai_error(&resp, 429, "concurrency_limited");
        }
        assert_eq!(up.completions.count(), before + 1);
        stream.send("data: [DONE]\n\n");
        stream.finish();
        drop(open);
        answers_with_usage(&up);
        assert!(poll_until(Duration::from_secs(3), || proxy
            .post("/v1/chat/completions")
            .key(ONE_AT_A_TIME)
            .json(CHAT)
            .over(proto)
            .send()
            .status
            == 200));
    }
}

fn usage_json(proxy: &Proxy, key: &str) -> serde_json::Value {
    let config = proxy.keys_path().with_file_name("scopegate.yaml");
    let run = run_scopegate(
        proxy.keys_path().parent().unwrap(),
        &[
            "usage",
            "--config",
            config.to_str().unwrap(),
            "--key",
            key,
            "--json",
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    serde_json::from_str(&run.stdout).unwrap_or_default()
}

#[test]
fn a_gzip_compressed_answer_is_counted_exactly() {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(USAGE_BODY.as_bytes()).unwrap();
    let compressed = gz.finish().unwrap();
    for proto in Proto::ALL {
        let up = Upstreams::start();
        up.completions.reply(
            200,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            &compressed,
        );
        let proxy = start(&up);
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .json(CHAT)
            .over(proto)
            .send();
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.body, compressed,
            "the client gets the upstream's bytes"
        );
        assert!(poll_until(Duration::from_secs(3), || {
            let v = usage_json(&proxy, "key_budget");
            v[0]["input_tokens"] == 30
                && v[0]["output_tokens"] == 10
                && v[0]["estimated_tokens"] == 0
        }));
    }
}

#[test]
fn a_client_that_disconnects_mid_stream_is_charged_an_estimate() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        let proxy = start(&up);
        let stream = up.completions.stream("text/event-stream");
        let mut open = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .json(r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#)
            .over(proto)
            .open();
        assert_eq!(open.status, 200);
        // 40 bytes of generated text: 10 output tokens estimated.
        let text = "x".repeat(40);
        stream.send(&format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n"
        ));
        open.read_until(&text);
        drop(open);
        // The upstream keeps going; the proxy notices the client is gone on
        // its next write and settles what it forwarded.
        let more = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"more\"}}]}\n\n";
        let estimated = |kind: &str| {
            proxy.metric(
                "scopegate_tokens_total",
                &[
                    ("workspace", "ws_prod"),
                    ("kind", kind),
                    ("source", "estimated"),
                ],
            )
        };
        assert!(
            poll_until(Duration::from_secs(5), || {
                stream.send(more);
                estimated("output") >= 10.0
            }),
            "{proto:?}: no estimate was charged"
        );
        assert!(
            estimated("input") > 0.0,
            "{proto:?}: the reserved input was not charged"
        );
        drop(stream);
    }
}

#[test]
fn a_stream_cut_without_usage_is_charged_an_estimate() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        let proxy = start(&up);
        let stream = up.completions.stream("text/event-stream");
        let mut open = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .json(r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#)
            .over(proto)
            .open();
        assert_eq!(open.status, 200);
        stream.send(&format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "y".repeat(80)
        ));
        stream.finish();
        let _ = open.read_body();
        assert!(
            poll_until(Duration::from_secs(3), || {
                let v = usage_json(&proxy, "key_budget");
                v[0]["output_tokens"] == 20 && v[0]["estimated_tokens"].as_u64().unwrap_or(0) >= 20
            }),
            "{proto:?}"
        );
    }
}

#[test]
fn explain_reports_budget_and_model_refusals() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        answers_with_usage(&up);
        let proxy = start(&up);
        let dir = proxy.keys_path().parent().unwrap().to_path_buf();
        let config = proxy.keys_path().with_file_name("scopegate.yaml");
        let explain = |key: &str, body: Option<&str>| {
            let mut args = vec![
                "explain",
                "--config",
                config.to_str().unwrap(),
                "--key-id",
                key,
            ];
            let body_path = dir.join("body.json");
            if let Some(b) = body {
                std::fs::write(&body_path, b).unwrap();
                args.extend(["--body", body_path.to_str().unwrap()]);
            }
            args.extend(["POST", "/v1/chat/completions"]);
            run_scopegate(&dir, &args)
        };
        let run = explain("key_mini", Some(r#"{"model":"gpt-4o","messages":[]}"#));
        assert!(run.stdout.contains("model_not_allowed"), "{run:?}");
        let run = explain("key_budget", Some(CHAT));
        assert!(run.stdout.contains("decision:  allow"), "{run:?}");
        // 70 tokens an answer: two requests pass by reservation (0+17,
        // 70+17 <= 90) and use 140, past the 90-token budget.
        up.completions.reply(
            200,
            &[("content-type", "application/json")],
            USAGE_BODY
                .replace("\"prompt_tokens\":30", "\"prompt_tokens\":60")
                .as_bytes(),
        );
        for _ in 0..2 {
            let resp = proxy
                .post("/v1/chat/completions")
                .key(BUDGET)
                .json(CHAT)
                .over(proto)
                .send();
            assert_eq!(resp.status, 200);
        }
        assert!(poll_until(Duration::from_secs(3), || {
            usage_json(&proxy, "key_budget")[0]["used_tokens"] == 140
        }));
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .json(CHAT)
            .over(proto)
            .send();
        expect_openai_error(&resp, 412, "budget_exhausted");
        let run = explain("key_budget", Some(CHAT));
        assert!(run.stdout.contains("deny 412 budget_exhausted"), "{run:?}");
    }
}

#[test]
fn concurrent_requests_never_pass_a_budget_by_reservation() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        up.completions.hang();
        let proxy = builder(&up)
            .completions_yaml("read_timeout_ms: 1500")
            .start();
        // Each request reserves 17 tokens and none settles while the
        // upstream holds them: 90 tokens admit exactly 5 at once.
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..20)
                .map(|_| {
                    s.spawn(|| {
                        proxy
                            .post("/v1/chat/completions")
                            .key(BUDGET)
                            .json(CHAT)
                            .over(proto)
                            .send()
                            .status
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let refused = statuses.iter().filter(|s| **s == 412).count();
        let timed_out = statuses.iter().filter(|s| **s == 504).count();
        assert_eq!((refused, timed_out), (15, 5), "{proto:?}: {statuses:?}");
        assert_eq!(up.completions.count(), 5);
        // The timed-out requests charged nothing and gave their
        // reservations back.
        answers_with_usage(&up);
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .json(CHAT)
            .over(proto)
            .send();
        assert_eq!(resp.status, 200, "{proto:?}");
    }
}

#[test]
fn an_oversized_or_non_object_data_body_is_refused_and_never_forwarded() {
    let up = Upstreams::start();
    let proxy = builder(&up).config("max_data_body_bytes: 1000").start();
    let big = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(1000)
    );
    for proto in Proto::ALL {
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .json(&big)
            .over(proto)
            .send();
        expect_openai_error(&resp, 413, "body_too_large");
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .header("content-type", "application/json")
            .chunked([&big[..500], &big[500..]])
            .over(proto)
            .send();
        expect_openai_error(&resp, 413, "body_too_large");
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .json("not json")
            .over(proto)
            .send();
        expect_openai_error(&resp, 400, "invalid_json");
    }
    up.assert_untouched();
}

/// Tokens the proxy cannot see are refused to keys whose tokens are
/// counted: batches (the requests are in a file), stored-prompt
/// completions, background responses. Keys that only restrict models, or
/// only limit requests, are not refused for it.
#[test]
fn usage_the_proxy_cannot_see_is_refused_to_keys_that_count_tokens() {
    let up = Upstreams::start();
    let proxy = start(&up);
    let refusals: &[(&str, &str, &str)] = &[
        (
            "/v1/batches",
            r#"{"input_file_id":"f","endpoint":"/v1/chat/completions"}"#,
            "POST /v1/batches",
        ),
        (
            "/v1/prompts/pp_1/completions",
            r#"{"variables":{}}"#,
            "POST /v1/prompts/{id}/completions",
        ),
        (
            "/v1/responses",
            r#"{"model":"gpt-4o-mini","input":"hi","background":true}"#,
            "background",
        ),
    ];
    for proto in Proto::ALL {
        for key in [BUDGET, TPM] {
            for (path, body, names) in refusals {
                let resp = proxy.post(path).key(key).json(body).over(proto).send();
                let msg = expect_openai_error(&resp, 403, "usage_not_metered");
                assert!(msg.contains(names), "{proto:?} {path}: {msg}");
            }
            // A batch's body of another type is not needed to refuse it.
            let resp = proxy
                .post("/v1/batches")
                .key(key)
                .header("content-type", "text/plain")
                .body("x")
                .over(proto)
                .send();
            expect_openai_error(&resp, 403, "usage_not_metered");
        }
    }
    up.assert_untouched();
    // The same requests pass for a key that does not count tokens, and a
    // response that is not in the background passes for the one that does.
    for proto in Proto::ALL {
        for (path, body, _) in refusals {
            let before = up.completions.count();
            let resp = proxy
                .post(path)
                .key(REQUESTS_ONLY)
                .json(body)
                .over(proto)
                .send();
            expect_forwarded(&resp);
            assert_eq!(up.completions.requests()[before].body, body.as_bytes());
        }
        let before = up.completions.count();
        let body =
            r#"{"model":"gpt-4o-mini","input":"hi","background":false,"max_output_tokens":5}"#;
        let resp = proxy
            .post("/v1/responses")
            .key(BUDGET)
            .json(body)
            .over(proto)
            .send();
        expect_forwarded(&resp);
        assert_received_exactly(
            &up,
            &up.completions.requests()[before],
            body.as_bytes(),
            "application/json",
        );
    }
}

/// A proxy whose usage lives in `state`.
fn with_state(builder: ProxyBuilder, state: &std::path::Path) -> ProxyBuilder {
    builder.config(&format!(
        "state: {{ backend: local, path: \"{}\" }}",
        state.display()
    ))
}

/// Runs `serve` on `builder`'s files in a new folder; it must fail. Returns stderr.
fn serve_fails(builder: ProxyBuilder) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = builder.write_files(dir.path(), super::harness::free_port_pair());
    let out = std::process::Command::new(super::harness::scopegate_bin())
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_corrupt_or_locked_state_file_stops_the_start_naming_the_file() {
    let up = Upstreams::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("usage.db");
    std::fs::write(&state, b"this is not an SQLite database, not at all").unwrap();
    let stderr = serve_fails(with_state(Proxy::builder(&up), &state));
    assert!(stderr.contains("usage.db"), "{stderr}");
    // Locked: a second proxy on the same state file refuses to start.
    let good = dir.path().join("good.db");
    let first = with_state(Proxy::builder(&up), &good).start();
    let stderr = serve_fails(with_state(Proxy::builder(&up), &good));
    assert!(stderr.contains("good.db"), "{stderr}");
    drop(first);
}

#[test]
fn a_client_that_asked_for_usage_still_gets_its_usage_chunk() {
    let u = r#"{"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":10,"total_tokens":40}}"#;
    let c1 = r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}"#;
    let body = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let up = Upstreams::start();
    let proxy = start(&up);
    for proto in Proto::ALL {
        let before = up.completions.count();
        let stream = up.completions.stream("text/event-stream");
        let mut open = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .json(body)
            .over(proto)
            .open();
        assert_eq!(open.status, 200);
        let sent = format!("data: {c1}\n\ndata: {u}\n\ndata: [DONE]\n\n");
        stream.send(&sent);
        stream.finish();
        let got = String::from_utf8_lossy(&open.read_body()).into_owned();
        assert_eq!(got, sent, "{proto:?}: the stream the client asked for");
        assert_received_exactly(
            &up,
            &up.completions.requests()[before],
            body.as_bytes(),
            "application/json",
        );
    }
}

/// The proxy's own forward path (a body it read) says in the access log why
/// the upstream failed, as pingora's path does.
#[test]
fn a_failed_upstream_exchange_of_a_read_body_is_logged_with_its_error() {
    let up = Upstreams::start();
    let proxy = builder(&up)
        .completions_url(&super::upstream::closed_port_url())
        .start();
    for proto in Proto::ALL {
        let resp: Response = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .json(CHAT)
            .over(proto)
            .send();
        expect_openai_error(&resp, 502, "upstream_unavailable");
    }
    let lines: Vec<serde_json::Value> = proxy
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["target"] == "scopegate::access")
        .collect();
    assert_eq!(lines.len(), 2, "{}", proxy.logs());
    for line in lines {
        assert_eq!(line["code"], "upstream_unavailable", "{line}");
        let error = line["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "no error in the access log: {line}");
    }
}

/// The proxy's own forward (a body it read) sends on a pooled upstream
/// connection first; one that closes before answering is retried once on a
/// new connection, with the same request byte for byte, and the answer is
/// counted once.
#[test]
fn a_pooled_connection_closed_unanswered_is_retried_once_with_the_same_request() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        let flaky = super::upstream::ClosesPooled::start(USAGE_BODY);
        let proxy = builder(&up).completions_url(&flaky.url()).start();
        for i in 0..3 {
            let resp = proxy
                .post("/v1/chat/completions")
                .key(TPM)
                .json(CHAT)
                .over(proto)
                .send();
            assert_eq!(resp.status, 200, "{proto:?} request {i}: {resp:?}");
            assert_eq!(resp.text(), USAGE_BODY, "{proto:?}");
        }
        let seen = flaky.seen();
        // Connection 0 answers request 0 and drops request 1; connection 1
        // answers request 1 (sent again) and drops request 2; connection 2
        // answers request 2.
        let conns: Vec<usize> = seen.iter().map(|(c, _)| *c).collect();
        assert_eq!(conns, vec![0, 0, 1, 1, 2], "{proto:?}");
        assert_eq!(seen[1].1, seen[2].1, "{proto:?}: the retry differs");
        assert_eq!(seen[3].1, seen[4].1, "{proto:?}: the retry differs");
        let text = String::from_utf8_lossy(&seen[2].1).to_ascii_lowercase();
        assert!(text.ends_with(CHAT), "{proto:?}: {text}");
        assert!(
            text.contains("\r\nx-scopegate-key-id: key_tpm\r\n"),
            "{text}"
        );
        assert!(
            !text.contains("sk-test"),
            "a key reached the upstream: {text}"
        );
        let counted = poll_until(Duration::from_secs(3), || {
            proxy.metric(
                "scopegate_tokens_total",
                &[
                    ("workspace", "ws_prod"),
                    ("kind", "input"),
                    ("source", "reported"),
                ],
            ) == 90.0
        });
        assert!(
            counted,
            "{proto:?}: three answers of 30 input tokens each, counted once"
        );
        up.assert_untouched();
    }
}
