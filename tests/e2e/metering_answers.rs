//! Usage found in upstream answers of any size or nesting depth, read in
//! constant memory: answers that the old whole-answer readers could not
//! read (over 16 MiB, decoding past 64 MiB, nested past serde_json's 128
//! levels) and an Anthropic stream cut after `message_start` are charged
//! exactly what the upstream reported — over HTTP/1.1 and HTTP/2 alike
//! (the protocol is a column of each test: [`Proto::ALL`]).

use std::io::Write;
use std::time::Duration;

use scopegate::identity::keys::digest_hex;

use super::client::Proto;
use super::fixtures::*;
use super::harness::{poll_until, run_scopegate, Proxy, Upstreams};

const METERED: &str = "sk-test-metered-answers";

fn start(up: &Upstreams) -> Proxy {
    let key = format!(
        r#"  - id: key_metered
    name: Metered
    type: workspace-service
    workspace_id: ws_prod
    sha256: "{}"
    scopes: ["completions.write"]
    usage_limits: {{ type: tokens, credit_limit: 1000000000 }}
"#,
        digest_hex(METERED.as_bytes())
    );
    Proxy::builder(up)
        .keys(&keys_yaml_with(&key))
        .https()
        .start()
}

/// The key's (input, output, estimated) tokens as `scopegate usage` reads
/// them from the state file.
fn charged(proxy: &Proxy) -> (u64, u64, u64) {
    let config = proxy.keys_path().with_file_name("scopegate.yaml");
    let run = run_scopegate(
        proxy.keys_path().parent().unwrap(),
        &[
            "usage",
            "--config",
            config.to_str().unwrap(),
            "--key",
            "key_metered",
            "--json",
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    let n = |name: &str| v[0][name].as_u64().unwrap_or(u64::MAX);
    (n("input_tokens"), n("output_tokens"), n("estimated_tokens"))
}

/// Waits until the key was charged `expected` (input, output, estimated).
fn expect_charged(proxy: &Proxy, expected: (u64, u64, u64)) {
    let mut last = (0, 0, 0);
    let reached = poll_until(Duration::from_secs(10), || {
        last = charged(proxy);
        last == expected
    });
    assert!(reached, "charged {last:?}, expected {expected:?}");
}

/// `depth` nested objects and arrays: `{"a":[{"a":[ ... 1 ... ]}]}`.
fn nested(depth: usize) -> String {
    let mut out = String::with_capacity(depth * 8);
    for _ in 0..depth {
        out.push_str(r#"{"a":["#);
    }
    out.push('1');
    for _ in 0..depth {
        out.push_str("]}");
    }
    out
}

/// A chat answer whose message content is `text`, usage at the end.
fn chat_answer(text: &str, prompt: u64, completion: u64) -> Vec<u8> {
    format!(
        r#"{{"id":"c1","object":"chat.completion","model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion}}}}}"#
    )
    .into_bytes()
}

#[test]
fn a_json_answer_over_16_mib_is_charged_its_reported_usage() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        let body = chat_answer(&"x".repeat(17 << 20), 11, 4242);
        up.completions
            .reply(200, &[("content-type", "application/json")], &body);
        let proxy = start(&up);
        let resp = proxy
            .post("/v1/chat/completions")
            .key(METERED)
            .json(CHAT)
            .over(proto)
            .send();
        assert_eq!(resp.status, 200, "{proto:?}");
        assert!(
            resp.body == body,
            "the client gets the answer byte for byte"
        );
        expect_charged(&proxy, (11, 4242, 0));
    }
}

#[test]
fn a_gzip_answer_decoding_past_64_mib_is_charged_its_reported_usage() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        let body = chat_answer(&"y".repeat(65 << 20), 13, 777);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&body).unwrap();
        let compressed = gz.finish().unwrap();
        drop(body);
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
            .key(METERED)
            .json(CHAT)
            .over(proto)
            .send();
        assert_eq!(resp.status, 200, "{proto:?}");
        assert!(
            resp.body == compressed,
            "the client gets the upstream's bytes"
        );
        expect_charged(&proxy, (13, 777, 0));
    }
}

#[test]
fn a_large_window_brotli_answer_passes_unchanged_and_is_charged_an_estimate() {
    // A `br` header asking for "large window brotli" (outside RFC 7932, a
    // 1 GiB window): not decoded, so no usage is found; the client still
    // gets the upstream's bytes, and the request is charged its reserved
    // input (body bytes / 4) and no output, as estimated.
    let stream: &[u8] = &[0x11, 0x1e, 0x11, 0x00, 0x04, 0xd5, 0xf8];
    let reserved = CHAT.len() as u64 / 4;
    for proto in Proto::ALL {
        let up = Upstreams::start();
        up.completions.reply(
            200,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "br"),
            ],
            stream,
        );
        let proxy = start(&up);
        let resp = proxy
            .post("/v1/chat/completions")
            .key(METERED)
            .json(CHAT)
            .over(proto)
            .send();
        assert_eq!(resp.status, 200, "{proto:?}");
        assert_eq!(resp.body, stream, "the client gets the upstream's bytes");
        expect_charged(&proxy, (reserved, 0, reserved));
    }
}

#[test]
fn a_responses_stream_whose_usage_follows_a_130_level_tool_schema_is_charged_it() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        let proxy = start(&up);
        let stream = up.completions.stream("text/event-stream");
        let mut conn = proxy
            .post("/v1/responses")
            .key(METERED)
            .json(r#"{"model":"gpt-4o-mini","stream":true,"input":"hi"}"#)
            .over(proto)
            .open();
        assert_eq!(conn.status, 200, "{proto:?}");
        let completed = format!(
            "event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"resp_1\",\"model\":\"gpt-4o-mini\",\"tools\":[{{\"type\":\"function\",\"name\":\"f\",\"parameters\":{}}}],\"usage\":{{\"input_tokens\":21,\"input_tokens_details\":{{\"cached_tokens\":8}},\"output_tokens\":5}}}}}}\n\n",
            nested(130)
        );
        let sent = format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"hello\"}}\n\n{completed}"
        );
        stream.send(&sent);
        stream.finish();
        let got = conn.read_body();
        assert!(got == sent.as_bytes(), "the client gets the stream as sent");
        expect_charged(&proxy, (21, 5, 0));
    }
}

#[test]
fn an_anthropic_answer_with_a_130_level_tool_input_is_charged_its_reported_usage() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        let body = format!(
            r#"{{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[{{"type":"text","text":"Let me look."}},{{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}],"stop_reason":"tool_use","usage":{{"input_tokens":30,"cache_creation_input_tokens":5,"cache_read_input_tokens":7,"output_tokens":9}}}}"#,
            nested(130)
        );
        up.completions.reply(
            200,
            &[("content-type", "application/json")],
            body.as_bytes(),
        );
        let proxy = start(&up);
        let resp = proxy
            .post("/v1/messages")
            .key(METERED)
            .json(r#"{"model":"claude-sonnet-4-20250514","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#)
            .over(proto)
            .send();
        assert_eq!(resp.status, 200, "{proto:?}");
        assert_eq!(resp.body, body.as_bytes());
        // Anthropic's input is the sum of the uncached, written and read tokens.
        expect_charged(&proxy, (30 + 5 + 7, 9, 0));
    }
}

#[test]
fn an_anthropic_stream_cut_after_message_start_is_charged_the_input_it_reported() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        let proxy = start(&up);
        let stream = up.completions.stream("text/event-stream");
        // A request whose reservation (body bytes / 4) differs from the input
        // the upstream reports.
        let request = format!(
            r#"{{"model":"claude-sonnet-4-20250514","max_tokens":100,"stream":true,"messages":[{{"role":"user","content":"{}"}}]}}"#,
            "q".repeat(400)
        );
        let mut conn = proxy
            .post("/v1/messages")
            .key(METERED)
            .json(&request)
            .over(proto)
            .open();
        assert_eq!(conn.status, 200, "{proto:?}");
        // 41 bytes of text: 10 output tokens estimated.
        let text = "z".repeat(41);
        stream.send(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-20250514\",\"content\":[],\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":3,\"output_tokens\":1}}}\n\n",
        );
        stream.send(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n"
        ));
        // The stream ends here: no message_delta, no message_stop.
        stream.finish();
        let got = String::from_utf8_lossy(&conn.read_body()).into_owned();
        assert!(got.contains(&text));
        expect_charged(&proxy, (25 + 3, 10, 25 + 3 + 10));
        let estimated_input = proxy.metric(
            "scopegate_tokens_total",
            &[
                ("workspace", "ws_prod"),
                ("kind", "input"),
                ("source", "estimated"),
            ],
        );
        assert_eq!(estimated_input, 28.0);
    }
}
