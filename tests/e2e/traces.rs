//! Traces end to end (docs/reference.md#traces): the real binary exports
//! to a real OTLP receiver, over OTLP/HTTP and gRPC, while clients talk to
//! it over HTTP/1.1 and HTTP/2. One server span per request (refused ones
//! too), one client span per upstream call, the client's trace continued
//! and its sampling decision followed, the `traceparent` sent upstream
//! naming the upstream call, GenAI attributes on counted requests, never a
//! secret in the exported bytes, and a collector that is down, slow or
//! refusing costs the requests nothing.

use std::time::{Duration, Instant};

use scopegate::identity::keys::digest_hex;

use super::client::Proto;
use super::fixtures::*;
use super::harness::{expect_forwarded, poll_until, Proxy, ProxyBuilder, Upstreams};
use super::otlp::{Mode, OtlpReceiver, ReceivedSpan};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
const TRACESTATE: &str = "vendor=abc,other=x1";
/// A key whose tokens are counted (a usage limit), for the GenAI attributes.
const COUNTED: &str = "sk-test-traces-counted-key";
/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
/// How long spans may take to arrive (the batch interval is 100 ms here).
const ARRIVAL: Duration = Duration::from_secs(10);

/// Both receivers: OTLP/HTTP and OTLP/gRPC.
fn receivers() -> [(OtlpReceiver, bool); 2] {
    [
        (OtlpReceiver::start_http(), false),
        (OtlpReceiver::start_grpc(), true),
    ]
}

/// What `${TRACE_TENANT}` in the export headers expands to.
const TENANT: &str = "tenant-secret-value";

/// The `tracing` block for `rx`, with `extra` lines.
fn tracing_block(rx: &OtlpReceiver, grpc: bool, extra: &str) -> String {
    tracing_block_for(&rx.endpoint(), grpc, extra)
}

fn tracing_block_for(endpoint: &str, grpc: bool, extra: &str) -> String {
    format!(
        "tracing:\n  otlp_endpoint: \"{endpoint}\"\n  protocol: {}\n  headers: {{ x-tenant: \"${{TRACE_TENANT}}\" }}\n{extra}",
        if grpc { "grpc" } else { "http/protobuf" },
    )
}

/// A proxy with an HTTPS listener (for [`Proto::H2`]) exporting to `rx`
/// every 100 ms.
fn traced(up: &Upstreams, rx: &OtlpReceiver, grpc: bool, extra: &str) -> ProxyBuilder {
    traced_to(up, &rx.endpoint(), grpc, extra)
}

fn traced_to(up: &Upstreams, endpoint: &str, grpc: bool, extra: &str) -> ProxyBuilder {
    Proxy::builder(up)
        .https()
        .keys(&keys())
        .config(&tracing_block_for(endpoint, grpc, extra))
        .env("TRACE_TENANT", TENANT)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
}

fn keys() -> String {
    let counted = format!(
        "  - id: key_counted\n    type: workspace-service\n    workspace_id: ws_prod\n    \
         sha256: \"{}\"\n    scopes: [\"completions.write\"]\n    \
         usage_limits: {{ type: tokens, credit_limit: 1000000000 }}\n",
        digest_hex(COUNTED.as_bytes())
    );
    format!(
        "{}model_prices:\n  \"gpt-4o-mini*\": {{ input: 1.0, output: 2.0 }}\n  \
         \"claude-sonnet-4*\": {{ input: 3.0, output: 15.0 }}\n",
        keys_yaml_with(&counted)
    )
}

fn server_spans(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.span.kind == SERVER).collect()
}

fn client_spans(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.span.kind == CLIENT).collect()
}

/// The access-log line (JSON) of the request with `request_id`.
fn access_line(proxy: &Proxy, request_id: &str) -> serde_json::Value {
    let mut found = serde_json::Value::Null;
    poll_until(Duration::from_secs(5), || {
        found = proxy
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["request_id"] == request_id && v["message"] == "request")
            .unwrap_or_default();
        !found.is_null()
    });
    found
}

#[test]
fn a_request_continues_the_clients_trace_and_the_upstream_call_is_its_child() {
    for (rx, grpc) in receivers() {
        let up = Upstreams::start();
        let proxy = traced(&up, &rx, grpc, "").start();
        for (i, proto) in Proto::ALL.into_iter().enumerate() {
            let resp = proxy
                .post("/v1/chat/completions?api-version=secret-query")
                .key(BOT)
                .header("traceparent", SAMPLED)
                .header("tracestate", TRACESTATE)
                .json(CHAT)
                .over(proto)
                .send();
            expect_forwarded(&resp);
            let spans = rx.wait_for_spans(2 * (i + 1), ARRIVAL);
            let server = *server_spans(&spans).last().unwrap();
            let client = *client_spans(&spans).last().unwrap();
            let ctx = format!("{proto:?} grpc={grpc}");
            assert_eq!(server.trace_id(), CLIENT_TRACE, "{ctx}");
            assert_eq!(server.parent_span_id(), CLIENT_SPAN, "{ctx}");
            assert_eq!(server.span.name, "POST /v1/chat/completions", "{ctx}");
            assert_eq!(client.trace_id(), CLIENT_TRACE, "{ctx}");
            assert_eq!(client.parent_span_id(), server.span_id(), "{ctx}");
            assert_eq!(client.span.name, "POST", "{ctx}");

            // Upstream: one traceparent, naming the client span; the
            // client's tracestate beside it.
            let seen = up.completions.requests().pop().unwrap();
            assert_eq!(
                seen.header_all("traceparent"),
                [format!("00-{CLIENT_TRACE}-{}-01", client.span_id())],
                "{ctx}"
            );
            assert_eq!(seen.header_all("tracestate"), [TRACESTATE], "{ctx}");

            let version = if proto == Proto::H2 { "2" } else { "1.1" };
            for (key, want) in [
                ("http.request.method", "POST"),
                ("url.path", "/v1/chat/completions"),
                ("http.route", "/v1/chat/completions"),
                ("network.protocol.version", version),
                ("client.address", "127.0.0.1"),
                ("scopegate.request_id", resp.request_id()),
                ("scopegate.plane", "data"),
                ("scopegate.decision", "allow"),
                ("scopegate.code", "ok"),
                ("scopegate.key.id", "key_bot"),
                ("scopegate.key.type", "workspace-service"),
                ("scopegate.organisation.id", "org_acme"),
            ] {
                assert_eq!(server.str_attr(key), Some(want), "{key} {ctx}");
            }
            assert_eq!(server.int_attr("http.response.status_code"), Some(200));
            assert!(server.int_attr("server.port").is_some(), "{ctx}");
            assert!(
                server.attr("gen_ai.operation.name").is_none(),
                "not counted: no GenAI attributes ({ctx})"
            );
            assert_eq!(client.str_attr("scopegate.upstream"), Some("completions"));
            assert_eq!(client.str_attr("server.address"), Some("127.0.0.1"));
            assert_eq!(client.int_attr("http.response.status_code"), Some(200));
            assert_eq!(server.resource_str("service.name"), Some("scopegate"));

            let line = access_line(&proxy, resp.request_id());
            assert_eq!(line["trace_id"], CLIENT_TRACE, "{ctx}: {line}");
        }
        assert!(
            rx.last_headers()
                .iter()
                .any(|(n, v)| n == "x-tenant" && v == TENANT),
            "the block's headers go with each export"
        );
        assert!(poll_until(ARRIVAL, || proxy
            .metric("scopegate_trace_spans_exported_total", &[])
            >= 4.0));
        assert_eq!(
            proxy.metric("scopegate_trace_spans_dropped_total", &[]),
            0.0
        );
    }
}

/// A counted request is sent by the proxy itself; when the pooled
/// connection it took was closed by the upstream, the request goes again on
/// a new one as a new upstream call: the first call's span ends as
/// `retried`, and the request sent again names the second call.
#[test]
fn a_retried_upstream_call_ends_the_first_span_as_retried() {
    let rx = OtlpReceiver::start_http();
    let up = Upstreams::start();
    let flaky = super::upstream::ClosesPooled::start(r#"{"ok":true}"#);
    let proxy = traced(&up, &rx, false, "")
        .completions_url(&flaky.url())
        .start();
    for _ in 0..2 {
        let resp = proxy
            .post("/v1/chat/completions")
            .key(COUNTED)
            .header("traceparent", SAMPLED)
            .json(CHAT)
            .send();
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    // Two server spans, three client spans (one retried).
    let spans = rx.wait_for_spans(5, ARRIVAL);
    let servers = server_spans(&spans);
    assert_eq!(servers.len(), 2);
    let second = servers
        .iter()
        .find(|s| {
            client_spans(&spans)
                .iter()
                .filter(|c| c.parent_span_id() == s.span_id())
                .count()
                == 2
        })
        .expect("a request with two upstream calls");
    let calls: Vec<&ReceivedSpan> = client_spans(&spans)
        .into_iter()
        .filter(|c| c.parent_span_id() == second.span_id())
        .collect();
    let (retried, answered): (Vec<&ReceivedSpan>, Vec<&ReceivedSpan>) = calls
        .iter()
        .partition(|c| c.str_attr("error.type") == Some("retried"));
    assert_eq!((retried.len(), answered.len()), (1, 1), "{calls:?}");
    assert_eq!(answered[0].int_attr("http.response.status_code"), Some(200));
    // What the upstream received: the dropped attempt named the first
    // call, the one sent again names the second.
    let seen = flaky.seen();
    assert_eq!(seen.len(), 3, "request, dropped attempt, sent again");
    let traceparent = |raw: &[u8]| {
        String::from_utf8_lossy(raw)
            .lines()
            .find_map(|l| l.strip_prefix("traceparent: ").map(str::to_string))
            .unwrap_or_default()
    };
    assert_eq!(
        traceparent(&seen[1].1),
        format!("00-{CLIENT_TRACE}-{}-01", retried[0].span_id())
    );
    assert_eq!(
        traceparent(&seen[2].1),
        format!("00-{CLIENT_TRACE}-{}-01", answered[0].span_id())
    );
}

#[test]
fn the_clients_sampled_flag_decides_and_the_ratio_decides_for_new_traces() {
    let rx = OtlpReceiver::start_http();
    let up = Upstreams::start();
    let proxy = traced(&up, &rx, false, "  sample_ratio: 0\n").start();
    for proto in Proto::ALL {
        // Not sampled by the client: nothing recorded, the decision passed on.
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .header("traceparent", UNSAMPLED)
            .header("tracestate", TRACESTATE)
            .json(CHAT)
            .over(proto)
            .send();
        expect_forwarded(&resp);
        let seen = up.completions.requests().pop().unwrap();
        let tp = seen.header_all("traceparent");
        assert_eq!(tp.len(), 1, "{tp:?}");
        assert!(
            tp[0].starts_with(&format!("00-{CLIENT_TRACE}-")) && tp[0].ends_with("-00"),
            "{tp:?}"
        );
        assert_ne!(tp[0], UNSAMPLED, "scopegate's own span id");
        assert_eq!(seen.header_all("tracestate"), [TRACESTATE]);
        assert!(access_line(&proxy, resp.request_id())["trace_id"].is_null());

        // A new trace at ratio 0: not recorded, a fresh trace id upstream.
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .json(CHAT)
            .over(proto)
            .send();
        expect_forwarded(&resp);
        let seen = up.completions.requests().pop().unwrap();
        let tp = seen.header("traceparent").unwrap().to_string();
        assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
        assert!(!tp.contains(CLIENT_TRACE));
        assert!(seen.header("tracestate").is_none());

        // An invalid traceparent is a new trace too, and its tracestate is dropped.
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .header(
                "traceparent",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            )
            .header("tracestate", TRACESTATE)
            .json(CHAT)
            .over(proto)
            .send();
        expect_forwarded(&resp);
        let seen = up.completions.requests().pop().unwrap();
        assert!(seen.header("traceparent").unwrap().ends_with("-00"));
        assert!(seen.header("tracestate").is_none());

        // The client's sampled flag wins over the ratio.
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .header("traceparent", SAMPLED)
            .json(CHAT)
            .over(proto)
            .send();
        expect_forwarded(&resp);
    }
    let spans = rx.wait_for_spans(4, ARRIVAL);
    // Only the two requests the client sampled, two spans each; give any
    // stray span a batch interval to show up.
    std::thread::sleep(Duration::from_millis(500));
    let spans_now = rx.spans();
    assert_eq!(spans_now.len(), 4, "{spans_now:#?}");
    assert!(spans.iter().all(|s| s.trace_id() == CLIENT_TRACE));
}

#[test]
fn with_tracing_off_traceparent_and_tracestate_pass_untouched() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).https().start();
    for proto in Proto::ALL {
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .header("traceparent", SAMPLED)
            .header("tracestate", TRACESTATE)
            .json(CHAT)
            .over(proto)
            .send();
        expect_forwarded(&resp);
        let seen = up.completions.requests().pop().unwrap();
        assert_eq!(seen.header_all("traceparent"), [SAMPLED], "{proto:?}");
        assert_eq!(seen.header_all("tracestate"), [TRACESTATE], "{proto:?}");
        assert!(access_line(&proxy, resp.request_id())["trace_id"].is_null());
    }
    // The counters exist at 0 all the same.
    let text = proxy.metrics_get("/metrics").text();
    assert!(
        text.contains("scopegate_trace_spans_exported_total 0"),
        "{text}"
    );
    assert!(
        text.contains("scopegate_trace_spans_dropped_total 0"),
        "{text}"
    );
}

#[test]
fn refused_and_failed_requests_get_a_server_span_too() {
    let rx = OtlpReceiver::start_grpc();
    let up = Upstreams::start();
    let proxy = traced(&up, &rx, true, "")
        .admin_url(&super::upstream::closed_port_url())
        .start();
    // Refused: 401, no upstream call, not an error of the proxy's.
    let resp = proxy
        .post("/v1/chat/completions")
        .key(UNKNOWN)
        .header("traceparent", SAMPLED)
        .json(CHAT)
        .send();
    assert_eq!(resp.status, 401);
    up.assert_untouched();
    // No route: named after the method alone.
    let resp404 = proxy.get("/nowhere").key(BOT).send();
    assert_eq!(resp404.status, 404);
    // The upstream is down: 502, an error, with a failed client span.
    let resp502 = proxy.get("/v1/audit-logs").key(ADMIN).send();
    assert_eq!(resp502.status, 502);
    let spans = rx.wait_for_spans(4, ARRIVAL);
    let by_id = |id: &str| {
        *server_spans(&spans)
            .iter()
            .find(|s| s.str_attr("scopegate.request_id") == Some(id))
            .unwrap_or_else(|| panic!("no span for {id}: {spans:#?}"))
    };
    let refused = by_id(resp.request_id());
    assert_eq!(refused.trace_id(), CLIENT_TRACE);
    assert_eq!(refused.str_attr("scopegate.decision"), Some("deny"));
    assert_eq!(refused.str_attr("scopegate.code"), Some("invalid_api_key"));
    assert_eq!(refused.int_attr("http.response.status_code"), Some(401));
    assert!(refused.str_attr("scopegate.key.id").is_none());
    // OTLP status codes: 0 unset, 2 error.
    assert_ne!(refused.span.status.as_ref().map_or(0, |s| s.code), 2);
    let unrouted = by_id(resp404.request_id());
    assert_eq!(unrouted.span.name, "GET");
    assert!(unrouted.str_attr("http.route").is_none());
    let failed = by_id(resp502.request_id());
    assert_eq!(failed.span.name, "GET /v1/audit-logs");
    assert_eq!(
        failed.str_attr("scopegate.code"),
        Some("upstream_unavailable")
    );
    assert_eq!(failed.span.status.as_ref().map(|s| s.code), Some(2));
    let client = client_spans(&spans)
        .into_iter()
        .find(|c| c.parent_span_id() == failed.span_id())
        .expect("the failed upstream call's span");
    assert_eq!(client.str_attr("error.type"), Some("connect"));
    assert_eq!(client.str_attr("scopegate.upstream"), Some("admin"));
}

/// One counted API: the request, the upstream's answer, and the
/// attributes expected.
struct Case {
    path: &'static str,
    body: &'static str,
    content_type: &'static str,
    answer: &'static str,
    operation: &'static str,
    provider: &'static str,
    request_model: &'static str,
    response_model: &'static str,
    max_tokens: Option<i64>,
    tokens: (i64, i64),
    priced: bool,
    stream: bool,
}

const JSON: &str = "application/json";
const SSE: &str = "text/event-stream";

const CASES: &[Case] = &[
    Case {
        path: "/v1/chat/completions",
        body: r#"{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#,
        content_type: JSON,
        answer: r#"{"id":"c1","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#,
        operation: "chat",
        provider: "openai",
        request_model: "gpt-4o-mini",
        response_model: "gpt-4o-mini-2024-07-18",
        max_tokens: Some(50),
        tokens: (11, 7),
        priced: true,
        stream: false,
    },
    Case {
        path: "/v1/chat/completions",
        body: r#"{"model":"gpt-4o-mini","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        content_type: SSE,
        answer: "data: {\"id\":\"c1\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello\"}}]}\n\n\
                 data: {\"id\":\"c1\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":8,\"total_tokens\":20}}\n\n\
                 data: [DONE]\n\n",
        operation: "chat",
        provider: "openai",
        request_model: "gpt-4o-mini",
        response_model: "gpt-4o-mini-2024-07-18",
        max_tokens: Some(50),
        tokens: (12, 8),
        priced: true,
        stream: true,
    },
    Case {
        path: "/v1/responses",
        body: r#"{"model":"gpt-4o-mini","max_output_tokens":60,"input":"hi"}"#,
        content_type: JSON,
        answer: r#"{"id":"resp_1","object":"response","model":"gpt-4o-mini-2024-07-18","output":[{"type":"message","content":[{"type":"output_text","text":"hello"}]}],"usage":{"input_tokens":13,"output_tokens":9,"total_tokens":22}}"#,
        operation: "chat",
        provider: "openai",
        request_model: "gpt-4o-mini",
        response_model: "gpt-4o-mini-2024-07-18",
        max_tokens: Some(60),
        tokens: (13, 9),
        priced: true,
        stream: false,
    },
    Case {
        path: "/v1/responses",
        body: r#"{"model":"gpt-4o-mini","max_output_tokens":60,"stream":true,"input":"hi"}"#,
        content_type: SSE,
        answer: "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hello\"}\n\n\
                 event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-4o-mini-2024-07-18\",\"usage\":{\"input_tokens\":14,\"output_tokens\":10}}}\n\n",
        operation: "chat",
        provider: "openai",
        request_model: "gpt-4o-mini",
        response_model: "gpt-4o-mini-2024-07-18",
        max_tokens: Some(60),
        tokens: (14, 10),
        priced: true,
        stream: true,
    },
    Case {
        path: "/v1/messages",
        body: r#"{"model":"claude-sonnet-4","max_tokens":70,"messages":[{"role":"user","content":"hi"}]}"#,
        content_type: JSON,
        answer: r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"hello"}],"usage":{"input_tokens":15,"output_tokens":11}}"#,
        operation: "chat",
        provider: "anthropic",
        request_model: "claude-sonnet-4",
        response_model: "claude-sonnet-4-20250514",
        max_tokens: Some(70),
        tokens: (15, 11),
        priced: true,
        stream: false,
    },
    Case {
        path: "/v1/messages",
        body: r#"{"model":"claude-sonnet-4","max_tokens":70,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        content_type: SSE,
        answer: "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-20250514\",\"content\":[],\"usage\":{\"input_tokens\":16,\"output_tokens\":1}}}\n\n\
                 event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hello\"}}\n\n\
                 event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":12}}\n\n\
                 event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        operation: "chat",
        provider: "anthropic",
        request_model: "claude-sonnet-4",
        response_model: "claude-sonnet-4-20250514",
        max_tokens: Some(70),
        tokens: (16, 12),
        priced: true,
        stream: true,
    },
    Case {
        path: "/v1/embeddings",
        body: r#"{"model":"text-embedding-3-small","input":"hi"}"#,
        content_type: JSON,
        answer: r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":17,"total_tokens":17}}"#,
        operation: "embeddings",
        provider: "openai",
        request_model: "text-embedding-3-small",
        response_model: "text-embedding-3-small",
        max_tokens: None,
        tokens: (17, 0),
        priced: false,
        stream: false,
    },
];

#[test]
fn counted_requests_carry_genai_attributes_from_json_and_sse_answers() {
    let rx = OtlpReceiver::start_http();
    let up = Upstreams::start();
    let proxy = traced(&up, &rx, false, "").start();
    let mut expected = 0;
    for proto in Proto::ALL {
        for case in CASES {
            up.completions.reply(
                200,
                &[("content-type", case.content_type)],
                case.answer.as_bytes(),
            );
            let resp = proxy
                .post(case.path)
                .key(COUNTED)
                .header("traceparent", SAMPLED)
                .header("tracestate", TRACESTATE)
                .json(case.body)
                .over(proto)
                .send();
            let ctx = format!("{} stream={} {proto:?}", case.path, case.stream);
            assert_eq!(resp.status, 200, "{ctx}: {}", resp.text());
            // Sent by the proxy itself (a counted request): one traceparent
            // upstream too, in the client's trace.
            let seen = up.completions.requests().pop().unwrap();
            let tp = seen.header_all("traceparent");
            assert!(
                tp.len() == 1
                    && tp[0].starts_with(&format!("00-{CLIENT_TRACE}-"))
                    && tp[0] != SAMPLED,
                "{ctx}: {tp:?}"
            );
            assert_eq!(seen.header_all("tracestate"), [TRACESTATE], "{ctx}");
            expected += 2;
            let spans = rx.wait_for_spans(expected, ARRIVAL);
            let server = spans
                .iter()
                .find(|s| s.str_attr("scopegate.request_id") == Some(resp.request_id()))
                .unwrap_or_else(|| panic!("{ctx}: no span"));
            for (key, want) in [
                ("gen_ai.operation.name", case.operation),
                ("gen_ai.provider.name", case.provider),
                ("gen_ai.request.model", case.request_model),
                ("gen_ai.response.model", case.response_model),
                ("scopegate.usage.source", "reported"),
                ("scopegate.key.id", "key_counted"),
                ("scopegate.workspace.id", "ws_prod"),
            ] {
                assert_eq!(server.str_attr(key), Some(want), "{key} {ctx}");
            }
            assert_eq!(
                server.int_attr("gen_ai.request.max_tokens"),
                case.max_tokens,
                "{ctx}"
            );
            assert_eq!(
                server.int_attr("gen_ai.usage.input_tokens"),
                Some(case.tokens.0),
                "{ctx}"
            );
            assert_eq!(
                server.int_attr("gen_ai.usage.output_tokens"),
                Some(case.tokens.1),
                "{ctx}"
            );
            let cost = match server.attr("scopegate.cost_usd") {
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::DoubleValue(c)) => {
                    Some(*c)
                }
                _ => None,
            };
            assert_eq!(cost.is_some(), case.priced, "{ctx}: {cost:?}");
            if let Some(c) = cost {
                assert!(c > 0.0, "{ctx}: {c}");
            }
            let first = server.int_attr("scopegate.stream.first_event_ms");
            assert_eq!(first.is_some(), case.stream, "{ctx}: {first:?}");
        }
    }
}

#[test]
fn a_stream_the_client_leaves_is_settled_and_traced() {
    let rx = OtlpReceiver::start_grpc();
    let up = Upstreams::start();
    let proxy = traced(&up, &rx, true, "").start();
    for (i, proto) in Proto::ALL.into_iter().enumerate() {
        let stream = up.completions.stream(SSE);
        stream.send(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude-sonnet-4-20250514\",\"content\":[],\"usage\":{\"input_tokens\":21,\"output_tokens\":1}}}\n\n",
        );
        let mut open = proxy
            .post("/v1/messages")
            .key(COUNTED)
            .json(r#"{"model":"claude-sonnet-4","max_tokens":70,"stream":true,"messages":[]}"#)
            .over(proto)
            .open();
        assert_eq!(open.status, 200);
        let request_id = open.header("x-request-id").unwrap().to_string();
        open.read_until("message_start");
        drop(open);
        // The upstream goes on; the proxy notices the client left when it
        // next writes.
        stream.send("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hello there\"}}\n\n");
        let arrived = poll_until(ARRIVAL, || {
            rx.spans()
                .iter()
                .any(|s| s.str_attr("scopegate.request_id") == Some(request_id.as_str()))
        });
        if !arrived {
            stream.send("event: ping\ndata: {}\n\n");
        }
        let spans = rx.wait_for_spans(2 * (i + 1), ARRIVAL);
        let server = spans
            .iter()
            .find(|s| s.str_attr("scopegate.request_id") == Some(request_id.as_str()))
            .expect("the server span");
        assert_eq!(server.str_attr("gen_ai.provider.name"), Some("anthropic"));
        assert_eq!(
            server.int_attr("gen_ai.usage.input_tokens"),
            Some(21),
            "{proto:?}"
        );
        assert!(server.str_attr("scopegate.usage.source").is_some());
        assert!(server.int_attr("scopegate.stream.first_event_ms").is_some());
        stream.finish();
    }
}

#[test]
fn no_secret_query_or_body_reaches_the_exported_bytes() {
    const MARKER: &str = "body-marker-never-exported";
    const QUERY: &str = "query-marker-never-exported";
    for (rx, grpc) in receivers() {
        let up = Upstreams::start();
        let proxy = traced(&up, &rx, grpc, "").start();
        let body = format!(
            r#"{{"model":"gpt-4o-mini","max_tokens":5,"messages":[{{"role":"user","content":"{MARKER}"}}]}}"#
        );
        up.completions.reply(
            200,
            &[("content-type", JSON)],
            format!(
                r#"{{"id":"c","model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"{MARKER}"}}}}],"usage":{{"prompt_tokens":1,"completion_tokens":1}}}}"#
            )
            .as_bytes(),
        );
        let mut sent = 0;
        for proto in Proto::ALL {
            for (secret, how) in [
                (COUNTED, "x-portkey-api-key"),
                (BOT, "authorization"),
                (UNKNOWN, "x-api-key"),
            ] {
                let req = proxy
                    .post(&format!("/v1/chat/completions?key={QUERY}&token={secret}"))
                    .header("cookie", "session=cookie-secret-value")
                    .header("x-upstream-token", "header-secret-value")
                    .json(&body)
                    .over(proto);
                let req = match how {
                    "authorization" => req.bearer(secret),
                    name => req.header(name, secret),
                };
                let resp = req.send();
                assert!(resp.status == 200 || resp.status == 401, "{}", resp.status);
                sent += 1;
            }
        }
        let spans = rx.wait_for_spans(sent, ARRIVAL);
        assert!(spans.iter().any(|s| s.span.kind == CLIENT));
        let raw = rx.raw();
        assert!(!raw.is_empty());
        let bytes = String::from_utf8_lossy(&raw);
        for needle in [
            COUNTED,
            BOT,
            UNKNOWN,
            "sk-test",
            MARKER,
            QUERY,
            "?key=",
            "cookie-secret-value",
            "header-secret-value",
            "Bearer",
            TENANT, // the export header's value never goes in a span
        ] {
            assert!(
                !bytes.contains(needle),
                "`{needle}` in the exported bytes (grpc={grpc})"
            );
        }
        assert!(
            bytes.contains("/v1/chat/completions"),
            "the scan sees the spans"
        );
    }
}

/// Longest any one request may take while the collector misbehaves: a
/// request that waited for it would take 10 s (slow) or its retries'
/// backoff (refusing, down); a busy CI machine stays far below.
const SLOWEST_REQUEST: Duration = Duration::from_secs(2);

/// 1,000 requests (4 clients × 250, each on a new connection): every one
/// answered normally, none slow.
fn thousand_requests_answered(proxy: &Proxy, ctx: &str) {
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..250 {
                    let started = Instant::now();
                    let resp = proxy.chat(BOT);
                    let took = started.elapsed();
                    expect_forwarded(&resp);
                    assert!(took < SLOWEST_REQUEST, "{ctx}: a request took {took:?}");
                }
            });
        }
    });
}

/// A proxy exporting to a collector in `mode` (`None`: nothing listens)
/// over each protocol, under 1,000 requests: all answered, what the
/// collector did not take counted as dropped, nothing as exported.
fn collector_costs_requests_nothing(mode: Option<Mode>) {
    for grpc in [false, true] {
        let rx = if grpc {
            OtlpReceiver::start_grpc()
        } else {
            OtlpReceiver::start_http()
        };
        let endpoint = match mode {
            Some(m) => {
                rx.set_mode(m);
                rx.endpoint()
            }
            None => {
                let endpoint = rx.endpoint();
                drop(rx);
                endpoint
            }
        };
        let up = Upstreams::start();
        let proxy = traced_to(&up, &endpoint, grpc, "").start();
        let ctx = format!("{mode:?} grpc={grpc}");
        thousand_requests_answered(&proxy, &ctx);
        let dropped = || proxy.metric("scopegate_trace_spans_dropped_total", &[]);
        // A slow collector holds each export 10 s (not waited for here):
        // 2,000 spans wait beside the batch in flight, and a queue of 2,048
        // overflows once the requests go on.
        let at_least = if mode == Some(Mode::Slow) {
            1.0
        } else {
            2000.0
        };
        if mode == Some(Mode::Slow) {
            thousand_requests_answered(&proxy, &ctx);
        }
        assert!(
            poll_until(Duration::from_secs(20), || dropped() >= at_least),
            "{ctx}: dropped {}",
            dropped()
        );
        assert_eq!(
            proxy.metric("scopegate_trace_spans_exported_total", &[]),
            0.0,
            "{ctx}"
        );
    }
}

#[test]
fn a_collector_that_is_down_costs_requests_nothing() {
    collector_costs_requests_nothing(None);
}

#[test]
fn a_slow_collector_costs_requests_nothing() {
    collector_costs_requests_nothing(Some(Mode::Slow));
}

#[test]
fn a_refusing_collector_costs_requests_nothing() {
    collector_costs_requests_nothing(Some(Mode::Unavailable));
}

#[test]
fn sigterm_exports_what_is_queued_and_a_slow_collector_holds_the_exit_at_most_two_seconds() {
    for grpc in [false, true] {
        // The default 5 s interval: only the shutdown flush can send it.
        let rx = if grpc {
            OtlpReceiver::start_grpc()
        } else {
            OtlpReceiver::start_http()
        };
        let up = Upstreams::start();
        let mut proxy = Proxy::builder(&up)
            .config(&tracing_block(&rx, grpc, ""))
            .env("TRACE_TENANT", TENANT)
            .start();
        expect_forwarded(&proxy.chat(BOT));
        proxy.terminate();
        let status = proxy.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0));
        let spans = rx.wait_for_spans(2, Duration::from_secs(1));
        assert_eq!(spans.len(), 2, "grpc={grpc}");

        // A collector that takes 10 s per export.
        let slow = if grpc {
            OtlpReceiver::start_grpc()
        } else {
            OtlpReceiver::start_http()
        };
        slow.set_mode(Mode::Slow);
        let mut proxy = Proxy::builder(&up)
            .config(&tracing_block(&slow, grpc, ""))
            .env("TRACE_TENANT", TENANT)
            .start();
        expect_forwarded(&proxy.chat(BOT));
        let started = Instant::now();
        proxy.terminate();
        let status = proxy.wait_exit(Duration::from_secs(10));
        let took = started.elapsed();
        assert_eq!(status.code(), Some(0));
        assert!(
            took < Duration::from_millis(3500),
            "exit took {took:?} (grpc={grpc})"
        );
    }
}
