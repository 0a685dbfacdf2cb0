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

/// The completions upstream answers every request with [`USAGE_BODY`].
fn answers_with_usage(up: &Upstreams) {
    up.completions.reply(
        200,
        &[("content-type", "application/json")],
        USAGE_BODY.as_bytes(),
    );
}

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
    for (path, body, status, code) in [
        // The query parameter cannot smuggle a model past the check.
        (
            "/v1/chat/completions?model=gpt-4o",
            r#"{"model":"gpt-4o-mini","messages":[]}"#,
            403,
            "model_not_allowed",
        ),
        // Case variants of the field are refused, not ignored.
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","Model":"gpt-4o","messages":[]}"#,
            400,
            "invalid_json",
        ),
        // No model on an inference route.
        (
            "/v1/chat/completions",
            r#"{"messages":[]}"#,
            400,
            "missing_model",
        ),
        // A route whose model cannot be seen fails closed.
        (
            "/v1/batches",
            r#"{"input_file_id":"f"}"#,
            403,
            "model_not_allowed",
        ),
        // A body that is not a JSON object.
        ("/v1/chat/completions", "[1,2]", 400, "invalid_json"),
    ] {
        let resp = proxy.post(path).key(MINI_ONLY).json(body).send();
        expect_openai_error(&resp, status, code);
    }
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
    answers_with_usage(&up);
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
    let poll = poll_until(Duration::from_secs(3), || {
        usage_json(&proxy, "key_budget")[0]["used_tokens"] == 80
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
    answers_with_usage(&up);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("usage.db");
    let builder = with_state(&up, &state).keys(&keys_yaml_with(&spending_keys()));
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
    answers_with_usage(&up);
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
    answers_with_usage(&up);
    assert!(poll_until(Duration::from_secs(3), || proxy
        .post("/v1/chat/completions")
        .key(ONE_AT_A_TIME)
        .json(CHAT)
        .send()
        .status
        == 200));
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
    let up = Upstreams::start();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(USAGE_BODY.as_bytes()).unwrap();
    let compressed = gz.finish().unwrap();
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
        .send();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.body, compressed,
        "the client gets the upstream's bytes"
    );
    assert!(poll_until(Duration::from_secs(3), || {
        let v = usage_json(&proxy, "key_budget");
        v[0]["input_tokens"] == 30 && v[0]["output_tokens"] == 10 && v[0]["estimated_tokens"] == 0
    }));
}

#[test]
fn a_client_that_disconnects_mid_stream_is_charged_an_estimate() {
    let up = Upstreams::start();
    let proxy = start(&up);
    let stream = up.completions.stream("text/event-stream");
    let (mut conn, status, _) = proxy
        .post("/v1/chat/completions")
        .key(BUDGET)
        .json(r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#)
        .send_streaming();
    assert_eq!(status, 200);
    // 40 bytes of generated text: 10 output tokens estimated.
    let text = "x".repeat(40);
    stream.send(&format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n"
    ));
    conn.read_until(&text);
    drop(conn);
    // The upstream keeps going; the proxy notices the client is gone on its
    // next write and settles what it forwarded.
    std::thread::sleep(Duration::from_millis(100));
    stream.send("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"more\"}}]}\n\n");
    stream.send("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"more\"}}]}\n\n");
    assert!(
        poll_until(Duration::from_secs(5), || proxy.metric(
            "scopegate_tokens_total",
            &[
                ("workspace", "ws_prod"),
                ("kind", "output"),
                ("source", "estimated")
            ]
        ) >= 10.0),
        "no estimate was charged"
    );
    let input = proxy.metric(
        "scopegate_tokens_total",
        &[
            ("workspace", "ws_prod"),
            ("kind", "input"),
            ("source", "estimated"),
        ],
    );
    assert!(input > 0.0, "the reserved input was not charged");
    drop(stream);
}

#[test]
fn a_stream_cut_without_usage_is_charged_an_estimate() {
    let up = Upstreams::start();
    let proxy = start(&up);
    let stream = up.completions.stream("text/event-stream");
    let (mut conn, status, _) = proxy
        .post("/v1/chat/completions")
        .key(BUDGET)
        .json(r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#)
        .send_streaming();
    assert_eq!(status, 200);
    stream.send(&format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
        "y".repeat(80)
    ));
    stream.finish();
    let _ = conn.read_body();
    assert!(poll_until(Duration::from_secs(3), || {
        let v = usage_json(&proxy, "key_budget");
        v[0]["output_tokens"] == 20 && v[0]["estimated_tokens"].as_u64().unwrap_or(0) >= 20
    }));
}

#[test]
fn explain_reports_budget_and_model_refusals() {
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
    // 70 tokens an answer: two requests pass by reservation (0+17, 70+17
    // <= 90) and use 140, past the 90-token budget.
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
        .send();
    expect_openai_error(&resp, 412, "budget_exhausted");
    let run = explain("key_budget", Some(CHAT));
    assert!(run.stdout.contains("deny 412 budget_exhausted"), "{run:?}");
}

#[test]
fn concurrent_requests_never_pass_a_budget_by_reservation() {
    let up = Upstreams::start();
    up.completions.hang();
    let proxy = Proxy::builder(&up)
        .keys(&keys_yaml_with(&spending_keys()))
        .completions_yaml("read_timeout_ms: 1500")
        .start();
    // Each request reserves 17 tokens and none settles while the upstream
    // holds them: 90 tokens admit exactly 5 at once.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                s.spawn(|| {
                    proxy
                        .post("/v1/chat/completions")
                        .key(BUDGET)
                        .json(CHAT)
                        .send()
                        .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused = statuses.iter().filter(|s| **s == 412).count();
    let timed_out = statuses.iter().filter(|s| **s == 504).count();
    assert_eq!((refused, timed_out), (15, 5), "{statuses:?}");
    assert_eq!(up.completions.count(), 5);
    // The timed-out requests charged nothing and gave their reservations back.
    answers_with_usage(&up);
    let resp = proxy
        .post("/v1/chat/completions")
        .key(BUDGET)
        .json(CHAT)
        .send();
    assert_eq!(resp.status, 200);
}

#[test]
fn an_oversized_or_non_object_data_body_is_refused_and_never_forwarded() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .keys(&keys_yaml_with(&spending_keys()))
        .config("max_data_body_bytes: 1000")
        .start();
    let big = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(1000)
    );
    let resp = proxy
        .post("/v1/chat/completions")
        .key(BUDGET)
        .json(&big)
        .send();
    expect_openai_error(&resp, 413, "body_too_large");
    let resp = proxy
        .post("/v1/chat/completions")
        .key(BUDGET)
        .header("content-type", "application/json")
        .chunked([big.as_bytes()])
        .send();
    expect_openai_error(&resp, 413, "body_too_large");
    let resp = proxy
        .post("/v1/chat/completions")
        .key(BUDGET)
        .json("not json")
        .send();
    expect_openai_error(&resp, 400, "invalid_json");
    up.assert_untouched();
}

/// A proxy whose usage lives in `state`.
fn with_state(up: &Upstreams, state: &std::path::Path) -> super::harness::ProxyBuilder {
    Proxy::builder(up).config(&format!(
        "state: {{ backend: local, path: \"{}\" }}",
        state.display()
    ))
}

/// Runs `serve` on `builder`'s files in a new folder; it must fail. Returns stderr.
fn serve_fails(builder: super::harness::ProxyBuilder) -> String {
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
    let stderr = serve_fails(with_state(&up, &state));
    assert!(stderr.contains("usage.db"), "{stderr}");
    // Locked: a second proxy on the same state file refuses to start.
    let good = dir.path().join("good.db");
    let first = with_state(&up, &good).start();
    let stderr = serve_fails(with_state(&up, &good));
    assert!(stderr.contains("good.db"), "{stderr}");
    drop(first);
}

#[test]
fn a_client_that_asked_for_usage_still_gets_its_usage_chunk() {
    let up = Upstreams::start();
    let proxy = start(&up);
    let u = r#"{"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":10,"total_tokens":40}}"#;
    let c1 = r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}"#;
    let stream = up.completions.stream("text/event-stream");
    let body = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let (mut conn, status, _) = proxy
        .post("/v1/chat/completions")
        .key(BUDGET)
        .json(body)
        .send_streaming();
    assert_eq!(status, 200);
    let sent = format!("data: {c1}\n\ndata: {u}\n\ndata: [DONE]\n\n");
    stream.send(&sent);
    stream.finish();
    let got = String::from_utf8_lossy(&conn.read_body()).into_owned();
    assert_eq!(got, sent, "the stream the client asked for, byte for byte");
    assert_eq!(
        up.completions.only_request().body,
        body.as_bytes(),
        "nothing injected"
    );
}
