//! Cached input priced on its own, and cost budgets closed to unpriced
//! models (docs/reference.md#cached-input-and-prices,
//! docs/reference.md#unpriced-models): a mock upstream answers with
//! cached-token usage in every shape the proxy reads — chat, Responses and
//! Anthropic messages, as JSON, as SSE and gzip-compressed — over HTTP/1.1
//! and HTTP/2 ([`Proto::ALL`]), and the cost each answer adds is checked
//! exactly, in the proxy's counters (the key's own view) and in the state
//! file (`scopegate usage`).

use std::io::Write;
use std::time::Duration;

use scopegate::identity::keys::digest_hex;

use super::client::Proto;
use super::fixtures::*;
use super::harness::{expect_openai_error, poll_until, run_scopegate, Proxy, Upstreams};

const CACHED: &str = "sk-test-cached-pricing";
const COST: &str = "sk-test-cost-budget";

/// Prices of these tests: gpt-4o with a cached price, claude with both.
const PRICES: &str = r#"model_prices:
  "gpt-4o*": { input: 2.50, output: 10.00, cached_input: 1.25 }
  "claude-sonnet-4*": { input: 3.00, output: 15.00, cached_input: 0.30, cache_write: 3.75 }
"#;

fn key(id: &str, secret: &str, extra: &str) -> String {
    format!(
        "  - id: {id}\n    name: {id}\n    type: workspace-service\n    workspace_id: ws_prod\n    \
         sha256: \"{}\"\n    scopes: [\"completions.write\"]\n{extra}",
        digest_hex(secret.as_bytes())
    )
}

fn keys() -> String {
    let budget = "    usage_limits: { type: cost, credit_limit: 1000, periodic_reset: monthly }\n";
    let mut yaml = keys_yaml_with(
        &[
            key("key_cached", CACHED, budget),
            key("key_cost", COST, budget),
        ]
        .concat(),
    );
    yaml.push_str(PRICES);
    yaml
}

/// What one answer reports: (input, cached, written, output) and its cost.
#[derive(Clone, Copy, Debug)]
struct Usage {
    input: u64,
    cached: u64,
    written: u64,
    output: u64,
    cost: f64,
}

/// OpenAI: `prompt_tokens` 2000 of which 1500 cached, 100 out, at
/// input 2.50, cached 1.25, output 10.00 (the reference's example).
const OPENAI: Usage = Usage {
    input: 2000,
    cached: 1500,
    written: 0,
    output: 100,
    cost: (500.0 * 2.50 + 1500.0 * 1.25 + 100.0 * 10.00) / 1e6,
};

/// Anthropic: `input_tokens` 200, 1000 read from the cache, 500 written,
/// 300 out, at 3.00 / 0.30 / 3.75 / 15.00: input 1700.
const ANTHROPIC: Usage = Usage {
    input: 1700,
    cached: 1000,
    written: 500,
    output: 300,
    cost: (200.0 * 3.00 + 1000.0 * 0.30 + 500.0 * 3.75 + 300.0 * 15.00) / 1e6,
};

const CHAT_USAGE: &str = r#""usage":{"prompt_tokens":2000,"completion_tokens":100,"total_tokens":2100,"prompt_tokens_details":{"cached_tokens":1500,"audio_tokens":0}}"#;
const RESPONSES_USAGE: &str = r#""usage":{"input_tokens":2000,"input_tokens_details":{"cached_tokens":1500},"output_tokens":100,"total_tokens":2100}"#;

fn chat_json() -> String {
    format!(
        r#"{{"id":"c1","object":"chat.completion","model":"gpt-4o-2024-08-06","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],{CHAT_USAGE}}}"#
    )
}

fn chat_sse() -> String {
    format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"hi\"}}}}],\"usage\":null}}\n\n\
         data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],{CHAT_USAGE}}}\n\n\
         data: [DONE]\n\n"
    )
}

fn responses_json() -> String {
    format!(
        r#"{{"id":"resp_1","object":"response","status":"completed","model":"gpt-4o-2024-08-06","output":[{{"type":"message","role":"assistant","content":[{{"type":"output_text","text":"hi"}}]}}],{RESPONSES_USAGE}}}"#
    )
}

fn responses_sse() -> String {
    format!(
        "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}}\n\n\
         event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"resp_1\",\"model\":\"gpt-4o-2024-08-06\",\"status\":\"completed\",{RESPONSES_USAGE}}}}}\n\n"
    )
}

fn messages_json() -> String {
    r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":200,"cache_creation_input_tokens":500,"cache_read_input_tokens":1000,"output_tokens":300}}"#.to_string()
}

fn messages_sse() -> String {
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-20250514\",\"content\":[],\"usage\":{\"input_tokens\":200,\"cache_creation_input_tokens\":500,\"cache_read_input_tokens\":1000,\"output_tokens\":1}}}\n\n\
     event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n\
     event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":300}}\n\n\
     event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        .to_string()
}

fn gzip(body: &str) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(body.as_bytes()).unwrap();
    gz.finish().unwrap()
}

/// One shape: the route, the request body, the answer's content type,
/// whether it is gzipped, the answer, and what it reports.
struct Shape {
    name: &'static str,
    path: &'static str,
    request: &'static str,
    content_type: &'static str,
    gzipped: bool,
    answer: String,
    usage: Usage,
}

fn shapes() -> Vec<Shape> {
    let chat = r#"{"model":"gpt-4o","max_tokens":200,"messages":[{"role":"user","content":"hi"}]}"#;
    let chat_stream = r#"{"model":"gpt-4o","max_tokens":200,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let responses = r#"{"model":"gpt-4o","max_output_tokens":200,"input":"hi"}"#;
    let responses_stream =
        r#"{"model":"gpt-4o","max_output_tokens":200,"stream":true,"input":"hi"}"#;
    let messages = r#"{"model":"claude-sonnet-4-20250514","max_tokens":400,"messages":[{"role":"user","content":"hi"}]}"#;
    let messages_stream = r#"{"model":"claude-sonnet-4-20250514","max_tokens":400,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (json, sse) = ("application/json", "text/event-stream");
    let shape = |name, path, request, content_type, gzipped, answer: String, usage| Shape {
        name,
        path,
        request,
        content_type,
        gzipped,
        answer,
        usage,
    };
    vec![
        shape(
            "chat json",
            "/v1/chat/completions",
            chat,
            json,
            false,
            chat_json(),
            OPENAI,
        ),
        shape(
            "chat sse",
            "/v1/chat/completions",
            chat_stream,
            sse,
            false,
            chat_sse(),
            OPENAI,
        ),
        shape(
            "chat json gzip",
            "/v1/chat/completions",
            chat,
            json,
            true,
            chat_json(),
            OPENAI,
        ),
        shape(
            "chat sse gzip",
            "/v1/chat/completions",
            chat_stream,
            sse,
            true,
            chat_sse(),
            OPENAI,
        ),
        shape(
            "responses json",
            "/v1/responses",
            responses,
            json,
            false,
            responses_json(),
            OPENAI,
        ),
        shape(
            "responses sse",
            "/v1/responses",
            responses_stream,
            sse,
            false,
            responses_sse(),
            OPENAI,
        ),
        shape(
            "responses sse gzip",
            "/v1/responses",
            responses_stream,
            sse,
            true,
            responses_sse(),
            OPENAI,
        ),
        shape(
            "messages json",
            "/v1/messages",
            messages,
            json,
            false,
            messages_json(),
            ANTHROPIC,
        ),
        shape(
            "messages json gzip",
            "/v1/messages",
            messages,
            json,
            true,
            messages_json(),
            ANTHROPIC,
        ),
        shape(
            "messages sse",
            "/v1/messages",
            messages_stream,
            sse,
            false,
            messages_sse(),
            ANTHROPIC,
        ),
        shape(
            "messages sse gzip",
            "/v1/messages",
            messages_stream,
            sse,
            true,
            messages_sse(),
            ANTHROPIC,
        ),
    ]
}

/// The key's usage limit as its own view shows it: (used, reserved).
fn viewed_usage(proxy: &Proxy, secret: &str) -> (f64, f64) {
    let v = proxy.get("/v1/scopegate/key").key(secret).send().json();
    let usage = v["limits"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|i| i["scope"] == "key" && i["type"] == "usage")
                .cloned()
        })
        .unwrap_or_default();
    (
        usage["used"].as_f64().unwrap_or(-1.0),
        usage["reserved"].as_f64().unwrap_or(-1.0),
    )
}

/// `scopegate usage --key ID --json` against the proxy's own config.
fn usage_json(proxy: &Proxy, key_id: &str) -> serde_json::Value {
    let config = proxy.keys_path().with_file_name("scopegate.yaml");
    let run = run_scopegate(
        proxy.keys_path().parent().unwrap(),
        &[
            "usage",
            "--config",
            config.to_str().unwrap(),
            "--key",
            key_id,
            "--json",
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap_or_default()[0].clone()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

#[test]
fn cached_input_is_priced_on_its_own_in_every_answer_shape() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).keys(&keys()).https().start();
    let mut total = Usage {
        input: 0,
        cached: 0,
        written: 0,
        output: 0,
        cost: 0.0,
    };
    for proto in Proto::ALL {
        for s in shapes() {
            let mut headers = vec![("content-type", s.content_type)];
            let body = if s.gzipped {
                headers.push(("content-encoding", "gzip"));
                gzip(&s.answer)
            } else {
                s.answer.clone().into_bytes()
            };
            up.completions.reply(200, &headers, &body);
            let resp = proxy
                .post(s.path)
                .key(CACHED)
                .json(s.request)
                .over(proto)
                .send();
            assert_eq!(resp.status, 200, "{} {proto:?}: {}", s.name, resp.text());
            total.input += s.usage.input;
            total.cached += s.usage.cached;
            total.written += s.usage.written;
            total.output += s.usage.output;
            total.cost += s.usage.cost;
            // Settled with the price of each kind of input token, and the
            // reservation given back.
            let mut seen = (0.0, 0.0);
            let settled = poll_until(Duration::from_secs(5), || {
                seen = viewed_usage(&proxy, CACHED);
                close(seen.0, total.cost) && seen.1 == 0.0
            });
            assert!(
                settled,
                "{} {proto:?}: used {seen:?}, expected {}",
                s.name, total.cost
            );
        }
    }
    // The state file holds the same, with the cache split beside the input.
    let mut last = serde_json::Value::Null;
    let stored = poll_until(Duration::from_secs(10), || {
        last = usage_json(&proxy, "key_cached");
        last["input_tokens"] == total.input
    });
    assert!(stored, "{last:#}");
    assert_eq!(last["cached_input_tokens"], total.cached, "{last:#}");
    assert_eq!(last["cache_write_tokens"], total.written, "{last:#}");
    assert_eq!(last["output_tokens"], total.output, "{last:#}");
    assert_eq!(last["estimated_tokens"], 0, "every answer reported usage");
    let cost = last["cost_usd"].as_f64().unwrap_or_default();
    assert!(close(cost, total.cost), "{cost} vs {}", total.cost);
    // Token counts: all input alike; the cache kinds besides.
    let tokens = |kind: &str| {
        proxy.metric(
            "scopegate_tokens_total",
            &[
                ("workspace", "ws_prod"),
                ("kind", kind),
                ("source", "reported"),
            ],
        )
    };
    assert_eq!(tokens("input"), total.input as f64);
    assert_eq!(tokens("cached_input"), total.cached as f64);
    assert_eq!(tokens("cache_write"), total.written as f64);
    assert_eq!(tokens("output"), total.output as f64);
    assert_eq!(up.completions.count(), 2 * shapes().len());
}

#[test]
fn a_cost_budget_cannot_reach_an_unpriced_model_by_body_query_or_multipart() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).keys(&keys()).https().start();
    let multipart = |model: &str| {
        format!("--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--b--\r\n")
    };
    let form = "multipart/form-data; boundary=b";
    for proto in Proto::ALL {
        for (path, content_type, body, status, code) in [
            (
                "/v1/chat/completions",
                "application/json",
                r#"{"model":"o1-mini","messages":[]}"#.to_string(),
                403,
                "model_not_priced",
            ),
            (
                "/v1/chat/completions?model=o1-mini",
                "application/json",
                r#"{"model":"gpt-4o","messages":[]}"#.to_string(),
                403,
                "model_not_priced",
            ),
            (
                "/v1/chat/completions?model=o1-mini",
                "application/json",
                "{}".to_string(),
                403,
                "model_not_priced",
            ),
            (
                "/v1/embeddings",
                form,
                multipart("o1-embed"),
                403,
                "model_not_priced",
            ),
            (
                "/v1/messages",
                "application/json",
                r#"{"model":"claude-opus-4","messages":[]}"#.to_string(),
                403,
                "model_not_priced",
            ),
            (
                "/v1/chat/completions",
                "application/json",
                r#"{"messages":[]}"#.to_string(),
                400,
                "missing_model",
            ),
        ] {
            let resp = proxy
                .post(path)
                .key(COST)
                .header("content-type", content_type)
                .body(&body)
                .over(proto)
                .send();
            let message = expect_openai_error(&resp, status, code);
            if code == "model_not_priced" {
                assert!(message.contains("has no price"), "{message}");
                assert_eq!(resp.json()["error"]["type"], "permission_error");
            }
        }
    }
    up.assert_untouched();
    // A priced model still passes, by the body or by the query alone.
    assert_eq!(
        proxy
            .post("/v1/chat/completions")
            .key(COST)
            .json(r#"{"model":"gpt-4o-mini","messages":[]}"#)
            .send()
            .status,
        200
    );
    assert_eq!(
        proxy
            .post("/v1/embeddings")
            .key(COST)
            .header("content-type", form)
            .body(multipart("gpt-4o-embed"))
            .send()
            .status,
        200
    );
    assert_eq!(up.completions.count(), 2);
}

#[test]
fn check_warns_about_an_allowlist_pattern_no_price_covers() {
    let up = Upstreams::start();
    let extra = key(
        "key_allowlist",
        "sk-test-allowlist",
        "    models: [\"gpt-4o-mini\", \"o1-*\"]\n    usage_limits: { type: cost, credit_limit: 5 }\n",
    );
    let mut yaml = keys_yaml_with(&extra);
    yaml.push_str(PRICES);
    let dir = tempfile::tempdir().unwrap();
    let config = Proxy::builder(&up)
        .keys(&yaml)
        .write_files(dir.path(), (1, 2));
    let run = run_scopegate(dir.path(), &["check", "--config", config.to_str().unwrap()]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "a warning, not an error: {run:?}"
    );
    assert!(
        run.stderr.contains("warning: keys[")
            && run
                .stderr
                .contains("(key_allowlist): the model pattern `o1-*` has no price"),
        "{run:?}"
    );
    assert!(
        !run.stderr.contains("`gpt-4o-mini` has no price"),
        "{run:?}"
    );
}

#[test]
fn usage_against_a_config_whose_state_file_does_not_exist_says_so() {
    let up = Upstreams::start();
    let dir = tempfile::tempdir().unwrap();
    let config = Proxy::builder(&up)
        .keys(&keys())
        .write_files(dir.path(), (1, 2));
    let run = run_scopegate(dir.path(), &["usage", "--config", config.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        run.stderr.contains("state.db does not exist")
            && run.stderr.contains(&*dir.path().to_string_lossy()),
        "names the file it looked for: {run:?}"
    );
    assert!(run.stdout.is_empty(), "no zeros printed: {run:?}");
}
