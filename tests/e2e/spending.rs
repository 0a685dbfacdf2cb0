//! SPEC 9 (issue #10): models, token limits, budgets and concurrency,
//! against the real binary and a recording upstream.

use std::time::Duration;

use scopegate::keys::digest_hex;

use super::fixtures::*;
use super::harness::{
    expect_forwarded, expect_openai_error, poll_until, run_scopegate, Proxy, Upstreams,
};

pub const MINI_ONLY: &str = "sk-test-mini-only";
pub const BUDGET: &str = "sk-test-budget";
pub const TPM: &str = "sk-test-tpm";
pub const ONE_AT_A_TIME: &str = "sk-test-one-at-a-time";

/// Keys with SPEC 9 limits, appended to the shared keys file.
fn spending_keys() -> String {
    let h = |s: &str| digest_hex(s.as_bytes());
    format!(
        r#"  - id: key_mini
    name: Mini only
    type: workspace-service
    workspace_id: ws_research
    sha256: "{}"
    scopes: ["completions.write"]
    models: ["gpt-4o-mini", "text-embedding-*"]
  - id: key_budget
    name: Budget
    type: workspace-service
    workspace_id: ws_prod
    sha256: "{}"
    scopes: ["completions.write"]
    usage_limits: {{ type: tokens, credit_limit: 90, periodic_reset: monthly }}
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
"#,
        h(MINI_ONLY),
        h(BUDGET),
        h(TPM),
        h(ONE_AT_A_TIME)
    )
}

fn start(up: &Upstreams) -> Proxy {
    Proxy::builder(up)
        .keys(&keys_yaml_with(&spending_keys()))
        .start()
}

const USAGE_BODY: &str = r#"{"id":"c1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":10,"total_tokens":40}}"#;

#[test]
fn a_model_outside_the_allowlist_is_403_and_never_forwarded() {
    let up = Upstreams::start();
    let proxy = start(&up);
    let resp = proxy
        .post("/v1/chat/completions")
        .key(MINI_ONLY)
        .json(r#"{"model":"gpt-4o","messages":[]}"#)
        .send();
    let msg = expect_openai_error(&resp, 403, "model_not_allowed");
    assert!(msg.contains("gpt-4o"), "{msg}");
    assert!(!msg.contains("text-embedding"), "the list leaked: {msg}");
    // The query parameter cannot smuggle a model past the check.
    let resp = proxy
        .post("/v1/chat/completions?model=gpt-4o")
        .key(MINI_ONLY)
        .json(r#"{"model":"gpt-4o-mini","messages":[]}"#)
        .send();
    expect_openai_error(&resp, 403, "model_not_allowed");
    // Case variants of the field are refused, not ignored.
    let resp = proxy
        .post("/v1/chat/completions")
        .key(MINI_ONLY)
        .json(r#"{"model":"gpt-4o-mini","Model":"gpt-4o","messages":[]}"#)
        .send();
    expect_openai_error(&resp, 400, "invalid_json");
    // No model on an inference route.
    let resp = proxy
        .post("/v1/chat/completions")
        .key(MINI_ONLY)
        .json(r#"{"messages":[]}"#)
        .send();
    expect_openai_error(&resp, 400, "missing_model");
    // A route whose model cannot be seen fails closed.
    let resp = proxy
        .post("/v1/batches")
        .key(MINI_ONLY)
        .json(r#"{"input_file_id":"f"}"#)
        .send();
    expect_openai_error(&resp, 403, "model_not_allowed");
    // A body that is not a JSON object.
    let resp = proxy
        .post("/v1/chat/completions")
        .key(MINI_ONLY)
        .json("[1,2]")
        .send();
    expect_openai_error(&resp, 400, "invalid_json");
    up.assert_untouched();
    // The allowed model passes, byte for byte.
    let body = r#"{"model":"gpt-4o-mini", "messages":[{"role":"user","content":"hi"}]}"#;
    let resp = proxy
        .post("/v1/chat/completions")
        .key(MINI_ONLY)
        .json(body)
        .send();
    expect_forwarded(&resp);
    assert_eq!(up.completions.only_request().body, body.as_bytes());
}

#[test]
fn a_multipart_model_is_checked() {
    let up = Upstreams::start();
    let proxy = start(&up);
    let body =
        "--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b--\r\n";
    let resp = proxy
        .post("/v1/audio/transcriptions")
        .key(MINI_ONLY)
        .header("content-type", "multipart/form-data; boundary=b")
        .body(body)
        .send();
    expect_openai_error(&resp, 403, "model_not_allowed");
    up.assert_untouched();
}

#[test]
fn a_token_budget_admits_by_reservation_then_answers_412() {
    let up = Upstreams::start();
    up.completions.reply(
        200,
        &[("content-type", "application/json")],
        USAGE_BODY.as_bytes(),
    );
    let proxy = start(&up);
    // Each request reserves len/4 = 17 tokens and settles the 40 the
    // upstream reports: after two (80 used), 80 + 17 > 90 refuses the third
    // by its reservation, and nothing more reaches the upstream.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .json(CHAT)
            .send();
        statuses.push(resp.status);
        if resp.status == 412 {
            expect_openai_error(&resp, 412, "budget_exhausted");
        }
    }
    assert_eq!(statuses, vec![200, 200, 412, 412]);
    assert_eq!(up.completions.count(), 2);
    let run = run_scopegate(
        proxy.keys_path().parent().unwrap(),
        &[
            "usage",
            "--config",
            proxy
                .keys_path()
                .with_file_name("scopegate.yaml")
                .to_str()
                .unwrap(),
            "--key",
            "key_budget",
            "--json",
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let poll = poll_until(Duration::from_secs(3), || {
        let run = run_scopegate(
            proxy.keys_path().parent().unwrap(),
            &[
                "usage",
                "--config",
                proxy
                    .keys_path()
                    .with_file_name("scopegate.yaml")
                    .to_str()
                    .unwrap(),
                "--key",
                "key_budget",
                "--json",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
        v[0]["used_tokens"] == 80
    });
    assert!(poll, "usage did not reach 80 tokens in the state file");
    let m = proxy.metric(
        "scopegate_tokens_total",
        &[
            ("workspace", "ws_prod"),
            ("kind", "input"),
            ("source", "reported"),
        ],
    );
    assert_eq!(m, 60.0);
}

#[test]
fn usage_survives_a_restart() {
    let up = Upstreams::start();
    up.completions.reply(
        200,
        &[("content-type", "application/json")],
        USAGE_BODY.as_bytes(),
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("usage.db");
    let builder = Proxy::builder(&up)
        .keys(&keys_yaml_with(&spending_keys()))
        .config(&format!(
            "state: {{ backend: local, path: \"{}\" }}",
            state.display()
        ));
    let mut proxy = builder.clone().start();
    for _ in 0..2 {
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BUDGET)
            .json(CHAT)
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
        .send();
    expect_openai_error(&resp, 412, "budget_exhausted");
    assert_eq!(up.completions.count(), 2);
}

#[test]
fn a_stream_gets_usage_upstream_and_the_client_sees_the_stream_it_asked_for() {
    let up = Upstreams::start();
    let proxy = start(&up);
    let chunk = |s: &str| format!("data: {s}\n\n");
    let c1 = r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hel"}}],"usage":null}"#;
    let c2 = r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo"}}],"usage":null}"#;
    let u = r#"{"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":10,"total_tokens":40}}"#;
    let stream = up.completions.stream("text/event-stream");
    let (mut conn, status, _) = proxy
        .post("/v1/chat/completions")
        .key(BUDGET)
        .json(r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#)
        .send_streaming();
    assert_eq!(status, 200);
    stream.send(&chunk(c1));
    let first = conn.read_until("hel");
    assert!(first.contains("hel"));
    stream.send(&chunk(c2));
    stream.send(&chunk(u));
    stream.send("data: [DONE]\n\n");
    stream.finish();
    let rest = String::from_utf8_lossy(&conn.read_body()).into_owned();
    let all = format!("{first}{rest}");
    assert!(
        !all.contains("prompt_tokens"),
        "usage chunk reached the client: {all}"
    );
    assert!(
        !all.contains("\"usage\""),
        "usage:null reached the client: {all}"
    );
    assert!(all.contains("[DONE]"));
    let seen = up.completions.only_request();
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert!(poll_until(Duration::from_secs(3), || proxy.metric(
        "scopegate_tokens_total",
        &[
            ("workspace", "ws_prod"),
            ("kind", "output"),
            ("source", "reported")
        ]
    ) == 10.0));
}

#[test]
fn a_token_rate_limit_refuses_with_headers_and_says_when_a_request_can_never_pass() {
    let up = Upstreams::start();
    up.completions.reply(
        200,
        &[("content-type", "application/json")],
        USAGE_BODY.as_bytes(),
    );
    let proxy = start(&up);
    let resp = proxy
        .post("/v1/chat/completions")
        .key(TPM)
        .json(r#"{"model":"m","max_tokens":5000,"messages":[]}"#)
        .send();
    let msg = expect_openai_error(&resp, 429, "rate_limited");
    assert!(msg.contains("whole"), "{msg}");
    up.assert_untouched();
    let resp = proxy
        .post("/v1/chat/completions")
        .key(TPM)
        .json(CHAT)
        .send();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-ratelimit-limit-tokens"), Some("1000"));
    assert!(resp.header("x-ratelimit-remaining-tokens").is_some());
    assert!(resp.header("x-ratelimit-reset-tokens").is_some());
}

#[test]
fn max_concurrent_requests_refuses_a_second_request_in_flight_and_recovers() {
    let up = Upstreams::start();
    let proxy = start(&up);
    let stream = up.completions.stream("text/event-stream");
    let (_conn, status, _) = proxy
        .post("/v1/chat/completions")
        .key(ONE_AT_A_TIME)
        .json(CHAT)
        .send_streaming();
    assert_eq!(status, 200);
    let resp = proxy
        .post("/v1/chat/completions")
        .key(ONE_AT_A_TIME)
        .json(CHAT)
        .send();
    expect_openai_error(&resp, 429, "concurrency_limited");
    stream.send("data: [DONE]\n\n");
    stream.finish();
    drop(_conn);
    up.completions.reply(
        200,
        &[("content-type", "application/json")],
        USAGE_BODY.as_bytes(),
    );
    assert!(poll_until(Duration::from_secs(3), || proxy
        .post("/v1/chat/completions")
        .key(ONE_AT_A_TIME)
        .json(CHAT)
        .send()
        .status
        == 200));
}
