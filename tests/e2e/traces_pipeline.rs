//! The trace export pipeline against a real OTLP receiver, over OTLP/HTTP
//! and gRPC: spans arrive with their attributes, and a collector that is
//! down, refusing or slow never holds up the code that ends spans; what it
//! loses is counted.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use scopegate::ops::traces::{
    BatchOptions, GenAiApi, GenAiFacts, Incoming, RequestSpan, ServerFacts, TraceCounters,
    TraceSettings, Traces, TracingConfig, UpstreamCall, UpstreamOutcome, UsageSource,
};

use super::harness::poll_until;
use super::otlp::{Mode, OtlpReceiver};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// What ending 1,000 spans may take at most, whatever the collector does:
/// 50 ms optimised. An unoptimised test build takes about 9 ms alone and
/// was seen at 87 ms with the whole suite running on two busy cores, hence
/// 250 ms there. An end that waited for a failing collector would take far
/// longer: its retries alone wait 700 ms, a slow export 1 s.
const END_BUDGET: Duration = if cfg!(debug_assertions) {
    Duration::from_millis(250)
} else {
    Duration::from_millis(50)
};

/// Settings for `rx` through the config block, as an operator writes it.
fn settings(rx: &OtlpReceiver, grpc: bool) -> TraceSettings {
    settings_for(&rx.endpoint(), grpc)
}

fn settings_for(endpoint: &str, grpc: bool) -> TraceSettings {
    let yaml = format!(
        "otlp_endpoint: \"{endpoint}\"\nprotocol: {}\nheaders: {{ x-tenant: \"${{TENANT}}\" }}\n\
         service_name: scopegate-test\n",
        if grpc { "grpc" } else { "http/protobuf" },
    );
    let block: TracingConfig = serde_yaml::from_str(&yaml).unwrap();
    let mut s = block
        .resolve(&mut |_at: &str, v: &str| Ok(v.replace("${TENANT}", "acme")))
        .unwrap();
    s.batch = BatchOptions {
        queue_size: 256,
        max_batch: 256,
        delay: Duration::from_millis(100),
    };
    s
}

fn facts() -> ServerFacts<'static> {
    ServerFacts {
        method: "POST",
        path: "/v1/chat/completions",
        route: Some("/v1/chat/completions"),
        status: 200,
        protocol_version: "2",
        client_address: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        server_port: Some(8443),
        request_id: "req-42",
        plane: Some("data"),
        decision: "allow",
        code: "ok",
        key_id: Some("svc-key"),
        key_type: Some("service"),
        organisation_id: Some("org-a"),
        workspace_id: Some("ws-a"),
    }
}

const GENAI: GenAiFacts<'static> = GenAiFacts {
    api: GenAiApi::ChatCompletions,
    request_model: Some("gpt-4o-mini"),
    response_model: Some("gpt-4o-mini-2024-07-18"),
    max_tokens: Some(64),
    input_tokens: Some(11),
    output_tokens: Some(22),
    usage_source: Some(UsageSource::Reported),
    cost_usd: Some(0.0001),
    first_event_ms: Some(15),
};

/// One request with an upstream call, as the gateway will drive it.
fn one_request(traces: &Traces) -> String {
    let incoming = Incoming::new(Some(CLIENT_PARENT.as_bytes()), Some(b"vendor=x"));
    let mut span = traces.begin(&incoming);
    let traceparent = span
        .start_upstream(&UpstreamCall {
            method: "POST",
            upstream: "completions",
            address: "127.0.0.1",
            port: 9001,
        })
        .unwrap();
    span.end_upstream(UpstreamOutcome::Status(200));
    span.finish(&facts(), Some(&GENAI));
    traceparent.to_str().unwrap().to_string()
}

fn spans_arrive_with_their_attributes(rx: &OtlpReceiver, traces: &Traces) {
    let traceparent = one_request(traces);
    let spans = rx.wait_for_spans(2, Duration::from_secs(10));
    assert_eq!(spans.len(), 2, "{spans:?}");
    // SERVER = 2, CLIENT = 3 in the OTLP enum.
    let server = spans.iter().find(|s| s.span.kind == 2).unwrap();
    let client = spans.iter().find(|s| s.span.kind == 3).unwrap();
    assert_eq!(server.span.name, "POST /v1/chat/completions");
    assert_eq!(server.trace_id(), CLIENT_TRACE);
    assert_eq!(server.parent_span_id(), "00f067aa0ba902b7");
    assert_eq!(client.trace_id(), CLIENT_TRACE);
    assert_eq!(client.parent_span_id(), server.span_id());
    assert_eq!(
        traceparent,
        format!("00-{CLIENT_TRACE}-{}-01", client.span_id()),
        "the upstream's traceparent names the client span"
    );
    let strings = [
        ("http.request.method", "POST"),
        ("url.path", "/v1/chat/completions"),
        ("http.route", "/v1/chat/completions"),
        ("network.protocol.version", "2"),
        ("client.address", "127.0.0.1"),
        ("scopegate.request_id", "req-42"),
        ("scopegate.plane", "data"),
        ("scopegate.decision", "allow"),
        ("scopegate.code", "ok"),
        ("scopegate.key.id", "svc-key"),
        ("scopegate.key.type", "service"),
        ("scopegate.organisation.id", "org-a"),
        ("scopegate.workspace.id", "ws-a"),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "gpt-4o-mini"),
        ("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
        ("scopegate.usage.source", "reported"),
    ];
    for (key, want) in strings {
        assert_eq!(server.str_attr(key), Some(want), "{key}");
    }
    let ints = [
        ("http.response.status_code", 200),
        ("server.port", 8443),
        ("gen_ai.request.max_tokens", 64),
        ("gen_ai.usage.input_tokens", 11),
        ("gen_ai.usage.output_tokens", 22),
        ("scopegate.stream.first_event_ms", 15),
    ];
    for (key, want) in ints {
        assert_eq!(server.int_attr(key), Some(want), "{key}");
    }
    assert!(server.attr("scopegate.cost_usd").is_some());
    assert_eq!(client.str_attr("server.address"), Some("127.0.0.1"));
    assert_eq!(client.int_attr("server.port"), Some(9001));
    assert_eq!(client.str_attr("scopegate.upstream"), Some("completions"));
    assert_eq!(client.int_attr("http.response.status_code"), Some(200));
    for s in &spans {
        assert_eq!(s.resource_str("service.name"), Some("scopegate-test"));
        assert_eq!(
            s.resource_str("service.version"),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(s.resource_str("telemetry.sdk.language"), Some("rust"));
        assert_eq!(s.scope, "scopegate");
    }
    assert!(
        rx.last_headers()
            .iter()
            .any(|(n, v)| n == "x-tenant" && v == "acme"),
        "{:?}",
        rx.last_headers()
    );
    assert!(poll_until(Duration::from_secs(5), || traces
        .counters()
        .exported
        .get()
        == 2));
    assert_eq!(traces.counters().dropped.get(), 0);
    assert!(traces.shutdown(), "nothing left to flush");
}

#[test]
fn spans_reach_an_otlp_http_receiver() {
    let rx = OtlpReceiver::start_http();
    let traces = Traces::start(&settings(&rx, false), TraceCounters::new().unwrap()).unwrap();
    spans_arrive_with_their_attributes(&rx, &traces);
}

#[test]
fn spans_reach_an_otlp_grpc_receiver() {
    let rx = OtlpReceiver::start_grpc();
    let traces = Traces::start(&settings(&rx, true), TraceCounters::new().unwrap()).unwrap();
    spans_arrive_with_their_attributes(&rx, &traces);
}

#[test]
fn the_standard_variables_alone_turn_export_on() {
    for grpc in [false, true] {
        let rx = if grpc {
            OtlpReceiver::start_grpc()
        } else {
            OtlpReceiver::start_http()
        };
        let endpoint = rx.endpoint();
        let lookup = move |name: &str| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" if grpc => Some("grpc".to_string()),
            "OTEL_SERVICE_NAME" => Some("from-env".to_string()),
            _ => None,
        };
        let mut s = TraceSettings::from_env(&lookup).unwrap().unwrap();
        s.batch.delay = Duration::from_millis(50);
        let traces = Traces::start(&s, TraceCounters::new().unwrap()).unwrap();
        let span = traces.begin(&Incoming::default());
        span.finish(&facts(), None);
        let got = rx.wait_for_spans(1, Duration::from_secs(10));
        assert_eq!(got[0].resource_str("service.name"), Some("from-env"));
        assert_eq!(got[0].span.parent_span_id, Vec::<u8>::new(), "a root");
        assert!(traces.shutdown());
    }
}

#[test]
fn the_pipeline_starts_and_stops_inside_a_runtime() {
    // The server may start it from async code; it must not need that
    // runtime, nor block it.
    let rx = OtlpReceiver::start_grpc();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let s = settings(&rx, true);
    let traces = rt.block_on(async { Traces::start(&s, TraceCounters::new().unwrap()).unwrap() });
    rt.block_on(async {
        traces.begin(&Incoming::default()).finish(&facts(), None);
    });
    rx.wait_for_spans(1, Duration::from_secs(10));
    let stopped = rt.block_on(async {
        let t = traces.clone();
        tokio::task::spawn_blocking(move || t.shutdown())
            .await
            .unwrap()
    });
    assert!(stopped);
}

/// Ends 1,000 recorded spans (begun beforehand) and returns how long the
/// ends took.
fn end_1000(traces: &Traces) -> Duration {
    let spans: Vec<RequestSpan> = (0..1000)
        .map(|_| traces.begin(&Incoming::default()))
        .collect();
    assert!(spans.iter().all(RequestSpan::is_recording));
    let f = facts();
    let started = Instant::now();
    for span in spans {
        span.finish(&f, Some(&GENAI));
    }
    started.elapsed()
}

/// A failing collector: ending spans stays fast and every span is counted
/// as dropped (3,000 of them), none as exported.
fn failing_collector_costs_nothing(endpoint: &str, grpc: bool) {
    let mut s = settings_for(endpoint, grpc);
    // A slow export gives up after a second, so the test sees its drops
    // soon; the ends must be fast whatever this is.
    s.export_timeout = Duration::from_secs(1);
    let traces = Traces::start(&s, TraceCounters::new().unwrap()).unwrap();
    // Three rounds, judged by the fastest: a test binary on a busy machine
    // is preempted now and then, while an end that waited for the
    // collector would make every round slow.
    let rounds: Vec<Duration> = (0..3).map(|_| end_1000(&traces)).collect();
    let took = rounds.iter().min().copied().unwrap_or_default();
    assert!(
        took < END_BUDGET,
        "ending 1,000 spans took {rounds:?} (grpc: {grpc})"
    );
    let c = traces.counters().clone();
    assert!(
        poll_until(Duration::from_secs(20), || c.dropped.get() == 3000),
        "dropped {} exported {} (grpc: {grpc})",
        c.dropped.get(),
        c.exported.get()
    );
    assert_eq!(c.exported.get(), 0);
    let started = Instant::now();
    traces.shutdown();
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A loopback address with nothing listening.
fn closed_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

#[test]
fn a_collector_that_is_down_costs_requests_nothing() {
    for grpc in [false, true] {
        failing_collector_costs_nothing(&closed_endpoint(), grpc);
    }
}

#[test]
fn a_refusing_collector_costs_requests_nothing_and_export_resumes() {
    for grpc in [false, true] {
        let rx = if grpc {
            OtlpReceiver::start_grpc()
        } else {
            OtlpReceiver::start_http()
        };
        rx.set_mode(Mode::Unavailable);
        failing_collector_costs_nothing(&rx.endpoint(), grpc);
        assert!(rx.exports() > 0, "the receiver was asked");
        assert!(rx.spans().is_empty());

        // Once it answers again, spans flow.
        rx.set_mode(Mode::Ok);
        let traces = Traces::start(&settings(&rx, grpc), TraceCounters::new().unwrap()).unwrap();
        one_request(&traces);
        rx.wait_for_spans(2, Duration::from_secs(10));
        assert!(traces.shutdown());
    }
}

#[test]
fn a_slow_collector_costs_requests_nothing() {
    for grpc in [false, true] {
        let rx = if grpc {
            OtlpReceiver::start_grpc()
        } else {
            OtlpReceiver::start_http()
        };
        rx.set_mode(Mode::Slow);
        failing_collector_costs_nothing(&rx.endpoint(), grpc);
    }
}

#[test]
fn shutdown_waits_at_most_two_seconds_for_a_slow_collector() {
    for grpc in [false, true] {
        let rx = if grpc {
            OtlpReceiver::start_grpc()
        } else {
            OtlpReceiver::start_http()
        };
        rx.set_mode(Mode::Slow);
        // The default export timeout (10 s): the flush must not wait for it.
        let mut s = settings(&rx, grpc);
        s.batch.delay = Duration::from_secs(5);
        let traces = Traces::start(&s, TraceCounters::new().unwrap()).unwrap();
        for _ in 0..10 {
            one_request(&traces);
        }
        let started = Instant::now();
        let flushed = traces.shutdown();
        let took = started.elapsed();
        assert!(!flushed, "a 10 s collector cannot take the spans in 2 s");
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_millis(2600),
            "shutdown took {took:?} (grpc: {grpc})"
        );
        // What was queued is lost, and counted, once the export is cut off.
        let c = traces.counters();
        assert!(
            poll_until(Duration::from_secs(5), || c.dropped.get() == 20),
            "dropped {}",
            c.dropped.get()
        );
    }
}
