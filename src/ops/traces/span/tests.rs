use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry::Value;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::*;
use crate::ops::traces::config::BatchOptions;
use crate::ops::traces::context::parse_traceparent;
use crate::ops::traces::pipeline::TraceCounters;

/// Keeps every exported span.
#[derive(Clone, Debug, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

fn pipeline(ratio: f64) -> (Traces, Collect) {
    let collect = Collect::default();
    let traces = Traces::with_exporter(
        collect.clone(),
        ratio,
        "test-service",
        BatchOptions {
            queue_size: 64,
            max_batch: 16,
            delay: Duration::from_millis(20),
        },
        TraceCounters::new().unwrap(),
    );
    (traces, collect)
}

fn exported(traces: &Traces, collect: &Collect) -> Vec<SpanData> {
    assert!(traces.flush());
    collect.0.lock().unwrap().clone()
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn s(v: &str) -> Value {
    Value::from(v.to_string())
}

const CLIENT_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn incoming(traceparent: &str) -> Incoming {
    Incoming::new(Some(traceparent.as_bytes()), Some(b"vendor=1"))
}

fn facts(status: u16) -> ServerFacts<'static> {
    ServerFacts {
        method: "POST",
        path: "/v1/chat/completions",
        route: Some("/v1/chat/completions"),
        status,
        protocol_version: "1.1",
        client_address: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        server_port: Some(8080),
        request_id: "req-1",
        plane: Some("data"),
        decision: "allow",
        code: "ok",
        key_id: Some("key-1"),
        key_type: Some("service"),
        organisation_id: Some("org-1"),
        workspace_id: Some("ws-1"),
    }
}

const UPSTREAM: UpstreamCall<'static> = UpstreamCall {
    method: "POST",
    upstream: "completions",
    address: "llm.internal",
    port: 9001,
};

#[test]
fn a_request_span_carries_the_http_and_scopegate_attributes() {
    let (traces, collect) = pipeline(1.0);
    let span = traces.begin(&Incoming::default());
    assert!(span.is_on() && span.is_recording());
    let trace_id = span.trace_id().unwrap();
    span.finish(&facts(200), None);
    let spans = exported(&traces, &collect);
    assert_eq!(spans.len(), 1);
    let sp = &spans[0];
    assert_eq!(sp.name, "POST /v1/chat/completions");
    assert_eq!(sp.span_kind, SpanKind::Server);
    assert_eq!(sp.status, Status::Unset);
    assert_eq!(sp.parent_span_id, SpanId::INVALID, "a new trace's root");
    assert_eq!(trace_id, sp.span_context.trace_id().to_string());
    assert_eq!(trace_id.len(), 32);
    let want: Vec<(&str, Value)> = vec![
        ("http.request.method", s("POST")),
        ("url.path", s("/v1/chat/completions")),
        ("http.route", s("/v1/chat/completions")),
        ("http.response.status_code", Value::I64(200)),
        ("network.protocol.version", s("1.1")),
        ("client.address", s("10.1.2.3")),
        ("server.port", Value::I64(8080)),
        ("scopegate.request_id", s("req-1")),
        ("scopegate.plane", s("data")),
        ("scopegate.decision", s("allow")),
        ("scopegate.code", s("ok")),
        ("scopegate.key.id", s("key-1")),
        ("scopegate.key.type", s("service")),
        ("scopegate.organisation.id", s("org-1")),
        ("scopegate.workspace.id", s("ws-1")),
    ];
    for (key, value) in &want {
        assert_eq!(attr(sp, key), Some(value), "{key}");
    }
    assert_eq!(sp.attributes.len(), want.len(), "{:?}", sp.attributes);
    assert!(attr(sp, "gen_ai.operation.name").is_none());
    assert_eq!(traces.counters().exported.get(), 1);
    assert_eq!(traces.counters().dropped.get(), 0);
}

#[test]
fn unknown_facts_are_left_out_and_the_query_never_goes_in() {
    let (traces, collect) = pipeline(1.0);
    let span = traces.begin(&Incoming::default());
    span.finish(
        &ServerFacts {
            method: "GET",
            path: "/nowhere?api_key=sgk-secret-value&x=1",
            route: None,
            status: 404,
            key_id: None,
            key_type: None,
            organisation_id: None,
            workspace_id: None,
            client_address: None,
            server_port: None,
            plane: None,
            decision: "deny",
            code: "route_not_found",
            ..facts(404)
        },
        None,
    );
    let spans = exported(&traces, &collect);
    let sp = &spans[0];
    assert_eq!(sp.name, "GET");
    assert_eq!(attr(sp, "url.path"), Some(&s("/nowhere")));
    assert_eq!(sp.status, Status::Unset, "a 4xx is not a server error");
    for absent in [
        "http.route",
        "client.address",
        "server.port",
        "scopegate.plane",
        "scopegate.key.id",
        "scopegate.key.type",
        "scopegate.organisation.id",
        "scopegate.workspace.id",
    ] {
        assert!(attr(sp, absent).is_none(), "{absent}");
    }
    let everything = format!("{spans:?}");
    assert!(!everything.contains("sgk-secret-value"), "{everything}");
    assert!(!everything.contains("api_key"), "{everything}");
}

#[test]
fn a_5xx_is_an_error_and_an_invented_method_is_other() {
    let (traces, collect) = pipeline(1.0);
    traces.begin(&Incoming::default()).finish(
        &ServerFacts {
            method: "BREW",
            status: 502,
            code: "upstream_unavailable",
            ..facts(502)
        },
        None,
    );
    let sp = &exported(&traces, &collect)[0];
    assert_eq!(sp.name, "HTTP /v1/chat/completions");
    assert_eq!(attr(sp, "http.request.method"), Some(&s("_OTHER")));
    assert_eq!(attr(sp, "http.request.method_original"), Some(&s("BREW")));
    assert_eq!(sp.status, Status::error("upstream_unavailable"));
}

#[test]
fn a_sampled_client_parent_makes_the_span_its_child() {
    let (traces, collect) = pipeline(0.0);
    let mut span = traces.begin(&incoming(CLIENT_PARENT));
    assert!(
        span.is_recording(),
        "the client's sampled flag decides, not the ratio"
    );
    assert_eq!(
        span.trace_id().as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(span.tracestate(), Some("vendor=1"));
    let upstream = span.start_upstream(&UPSTREAM).unwrap();
    span.end_upstream(UpstreamOutcome::Status(200));
    span.finish(&facts(200), None);
    let spans = exported(&traces, &collect);
    assert_eq!(spans.len(), 2);
    let client = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .unwrap();
    let server = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .unwrap();
    let parent = parse_traceparent(CLIENT_PARENT.as_bytes()).unwrap();
    assert_eq!(server.span_context.trace_id(), parent.trace_id);
    assert_eq!(server.parent_span_id, parent.parent_id);
    assert!(server.parent_span_is_remote);
    assert_eq!(client.span_context.trace_id(), parent.trace_id);
    assert_eq!(client.parent_span_id, server.span_context.span_id());
    assert!(!client.parent_span_is_remote);
    // The traceparent sent upstream names the client span, sampled.
    let sent = parse_traceparent(upstream.as_bytes()).unwrap();
    assert_eq!(sent.trace_id, parent.trace_id);
    assert_eq!(sent.parent_id, client.span_context.span_id());
    assert!(sent.sampled);
    assert_eq!(client.name, "POST");
    assert_eq!(attr(client, "server.address"), Some(&s("llm.internal")));
    assert_eq!(attr(client, "server.port"), Some(&Value::I64(9001)));
    assert_eq!(attr(client, "scopegate.upstream"), Some(&s("completions")));
    assert_eq!(
        attr(client, "http.response.status_code"),
        Some(&Value::I64(200))
    );
    assert_eq!(client.status, Status::Unset);
    // The upstream call lies within the request.
    assert!(client.start_time >= server.start_time);
    assert!(client.end_time <= server.end_time);
}

#[test]
fn an_unsampled_client_parent_records_nothing_but_passes_its_decision_on() {
    let (traces, collect) = pipeline(1.0);
    let unsampled = CLIENT_PARENT.replace("-01", "-00");
    let mut span = traces.begin(&incoming(&unsampled));
    assert!(span.is_on());
    assert!(!span.is_recording());
    assert_eq!(span.trace_id(), None);
    let sent = span.start_upstream(&UPSTREAM).unwrap();
    let sent = parse_traceparent(sent.as_bytes()).unwrap();
    assert_eq!(
        sent.trace_id,
        TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736u128)
    );
    assert!(!sent.sampled);
    span.end_upstream(UpstreamOutcome::Status(200));
    span.finish(&facts(200), None);
    assert!(exported(&traces, &collect).is_empty());
}

#[test]
fn the_ratio_decides_for_new_traces() {
    let (none, collect) = pipeline(0.0);
    let mut span = none.begin(&Incoming::default());
    assert!(span.is_on() && !span.is_recording());
    let sent = parse_traceparent(span.start_upstream(&UPSTREAM).unwrap().as_bytes()).unwrap();
    assert!(!sent.sampled);
    span.finish(&facts(200), None);
    assert!(exported(&none, &collect).is_empty());

    // About half at 0.5: the trace id decides, so a large sample is near.
    let (half, collect) = pipeline(0.5);
    let recorded = (0..2000)
        .filter(|_| half.begin(&Incoming::default()).is_recording())
        .count();
    assert!((800..1200).contains(&recorded), "{recorded} of 2000");
    drop(collect);
}

#[test]
fn an_invalid_traceparent_starts_a_new_trace_and_drops_tracestate() {
    let (traces, _collect) = pipeline(1.0);
    let span = traces.begin(&incoming(&CLIENT_PARENT.to_uppercase()));
    assert!(span.is_recording());
    assert_ne!(
        span.trace_id().as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(span.tracestate(), None);
}

#[test]
fn upstream_failures_and_error_statuses_mark_the_client_span() {
    let (traces, collect) = pipeline(1.0);
    let mut span = traces.begin(&Incoming::default());
    let first = span.start_upstream(&UPSTREAM).unwrap();
    // A retried connection: the first attempt ends as failed.
    let second = span.start_upstream(&UPSTREAM).unwrap();
    assert_ne!(first, second);
    span.end_upstream(UpstreamOutcome::Failed("connect"));
    span.finish(&facts(502), None);

    let mut other = traces.begin(&Incoming::default());
    other.start_upstream(&UPSTREAM).unwrap();
    other.end_upstream(UpstreamOutcome::Status(503));
    other.finish(&facts(503), None);

    let mut open = traces.begin(&Incoming::default());
    open.start_upstream(&UPSTREAM).unwrap();
    open.finish(&facts(499), None);

    let spans = exported(&traces, &collect);
    let clients: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .collect();
    assert_eq!(clients.len(), 4);
    let error_types: Vec<Option<&Value>> = clients.iter().map(|c| attr(c, "error.type")).collect();
    assert!(error_types.contains(&Some(&s("retried"))));
    assert!(error_types.contains(&Some(&s("connect"))));
    assert!(error_types.contains(&Some(&s("503"))));
    assert!(
        error_types.contains(&Some(&s("other"))),
        "ended with the request"
    );
    assert!(clients
        .iter()
        .all(|c| matches!(c.status, Status::Error { .. })));
}

#[test]
fn genai_attributes_follow_the_api() {
    let (traces, collect) = pipeline(1.0);
    let chat = GenAiFacts {
        api: GenAiApi::ChatCompletions,
        request_model: Some("gpt-4o"),
        response_model: Some("gpt-4o-2024-08-06"),
        max_tokens: Some(256),
        input_tokens: Some(12),
        output_tokens: Some(34),
        usage_source: Some(UsageSource::Reported),
        cost_usd: Some(0.00042),
        first_event_ms: Some(87),
    };
    traces
        .begin(&Incoming::default())
        .finish(&facts(200), Some(&chat));
    let messages = GenAiFacts {
        api: GenAiApi::Messages,
        request_model: Some("claude-sonnet"),
        response_model: None,
        max_tokens: None,
        input_tokens: Some(5),
        output_tokens: Some(0),
        usage_source: Some(UsageSource::Estimated),
        cost_usd: None,
        first_event_ms: None,
    };
    traces.begin(&Incoming::default()).finish(
        &ServerFacts {
            path: "/v1/messages",
            route: Some("/v1/messages"),
            ..facts(200)
        },
        Some(&messages),
    );
    let spans = exported(&traces, &collect);
    let chat_span = spans
        .iter()
        .find(|s| s.name == "POST /v1/chat/completions")
        .unwrap();
    let want = [
        ("gen_ai.operation.name", s("chat")),
        ("gen_ai.provider.name", s("openai")),
        ("gen_ai.request.model", s("gpt-4o")),
        ("gen_ai.response.model", s("gpt-4o-2024-08-06")),
        ("gen_ai.request.max_tokens", Value::I64(256)),
        ("gen_ai.usage.input_tokens", Value::I64(12)),
        ("gen_ai.usage.output_tokens", Value::I64(34)),
        ("scopegate.usage.source", s("reported")),
        ("scopegate.cost_usd", Value::F64(0.00042)),
        ("scopegate.stream.first_event_ms", Value::I64(87)),
    ];
    for (key, value) in &want {
        assert_eq!(attr(chat_span, key), Some(value), "{key}");
    }
    let msg_span = spans
        .iter()
        .find(|s| s.name == "POST /v1/messages")
        .unwrap();
    assert_eq!(
        attr(msg_span, "gen_ai.provider.name"),
        Some(&s("anthropic"))
    );
    assert_eq!(attr(msg_span, "gen_ai.operation.name"), Some(&s("chat")));
    assert_eq!(
        attr(msg_span, "scopegate.usage.source"),
        Some(&s("estimated"))
    );
    assert_eq!(
        attr(msg_span, "gen_ai.usage.output_tokens"),
        Some(&Value::I64(0))
    );
    for absent in [
        "gen_ai.response.model",
        "gen_ai.request.max_tokens",
        "scopegate.cost_usd",
        "scopegate.stream.first_event_ms",
    ] {
        assert!(attr(msg_span, absent).is_none(), "{absent}");
    }
}

#[test]
fn genai_api_names() {
    let table = [
        ("chat", "chat", "openai"),
        ("completions", "text_completion", "openai"),
        ("embeddings", "embeddings", "openai"),
        ("responses", "chat", "openai"),
        ("messages", "chat", "anthropic"),
    ];
    for (meter, op, provider) in table {
        let api = GenAiApi::from_meter(meter).unwrap();
        assert_eq!(api.operation_name(), op, "{meter}");
        assert_eq!(api.provider_name(), provider, "{meter}");
    }
    assert_eq!(GenAiApi::from_meter("batches"), None);
}

#[test]
fn tracing_off_does_nothing() {
    let mut span = RequestSpan::off();
    assert!(!span.is_on() && !span.is_recording());
    assert_eq!(span.trace_id(), None);
    assert_eq!(span.tracestate(), None);
    assert_eq!(span.start_upstream(&UPSTREAM), None);
    span.end_upstream(UpstreamOutcome::Status(200));
    span.finish(&facts(200), None);
    // A recorded request's spans are boxed; an unsampled one's ids are
    // kept inline (no allocation), which the context can afford.
    assert!(std::mem::size_of::<RequestSpan>() <= 64);
}

#[test]
fn an_unsampled_request_sends_its_ids_without_asking_the_sdk() {
    let (traces, none_kept) = pipeline(0.0);
    let mut span = traces.begin(&Incoming::default());
    assert!(span.is_on() && !span.is_recording() && !span.client_sent());
    assert_eq!(span.trace_id(), None);
    let sent = parse_traceparent(span.start_upstream(&UPSTREAM).unwrap().as_bytes()).unwrap();
    assert!(!sent.sampled);
    // Another request gets other ids.
    let mut other = traces.begin(&Incoming::default());
    let again = parse_traceparent(other.start_upstream(&UPSTREAM).unwrap().as_bytes()).unwrap();
    assert_ne!(sent.trace_id, again.trace_id);
    span.end_upstream(UpstreamOutcome::Status(200));
    span.finish(&facts(200), None);
    // A client's unsampled parent: its trace continues, not recorded, and
    // its tracestate goes on; even at ratio 1.
    let (all, all_kept) = pipeline(1.0);
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let mut joined = all.begin(&incoming(parent));
    assert!(joined.is_on() && !joined.is_recording());
    assert_eq!(joined.tracestate(), Some("vendor=1"));
    let sent = parse_traceparent(joined.start_upstream(&UPSTREAM).unwrap().as_bytes()).unwrap();
    assert_eq!(
        sent.trace_id,
        parse_traceparent(parent.as_bytes()).unwrap().trace_id
    );
    assert!(!sent.sampled);
    assert_ne!(
        sent.parent_id,
        parse_traceparent(parent.as_bytes()).unwrap().parent_id
    );
    joined.finish(&facts(200), None);
    assert!(exported(&traces, &none_kept).is_empty(), "nothing recorded");
    assert!(exported(&all, &all_kept).is_empty(), "nothing recorded");
}

#[test]
fn a_request_span_can_live_in_a_shared_request_context() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RequestSpan>();
    send_sync::<Traces>();
}
