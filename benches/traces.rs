//! Criterion benches of a request's trace cost: the server span with its
//! attributes and the upstream call's client span, built and ended,
//! recorded (sampled) vs not sampled (ratio 0) vs tracing off; and the
//! whole CPU a recorded request costs the process once its spans are
//! exported over OTLP/HTTP (batching, encoding, sending), measured as
//! process CPU time.
//!
//! For scale: a request costs scopegate about 45 µs of CPU; the targets are
//! recorded ≤ 10 % of that (4.5 µs) and ratio 0 ≤ 1 % (0.45 µs).

use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use scopegate::ops::traces::{
    parse_traceparent, BatchOptions, GenAiApi, GenAiFacts, Incoming, RequestSpan, ServerFacts,
    TraceCounters, TraceSettings, Traces, TracingConfig, UpstreamCall, UpstreamOutcome,
    UsageSource,
};

// The allocator the scopegate binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Takes batches and forgets them: the request thread's share alone.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(black_box(batch));
        Ok(())
    }
}

const FACTS: ServerFacts<'static> = ServerFacts {
    method: "POST",
    path: "/v1/chat/completions",
    route: Some("/v1/chat/completions"),
    status: 200,
    protocol_version: "1.1",
    client_address: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
    server_port: Some(8080),
    request_id: "01JD7ZK3Q8W5V2T9R4N6M1B0XC",
    plane: Some("data"),
    decision: "allow",
    code: "ok",
    key_id: Some("key_service_42"),
    key_type: Some("service"),
    organisation_id: Some("org_bench"),
    workspace_id: Some("ws_17"),
};

const GENAI: GenAiFacts<'static> = GenAiFacts {
    api: GenAiApi::ChatCompletions,
    request_model: Some("gpt-4o-mini"),
    response_model: Some("gpt-4o-mini-2024-07-18"),
    max_tokens: Some(256),
    input_tokens: Some(412),
    output_tokens: Some(96),
    usage_source: Some(UsageSource::Reported),
    cost_usd: Some(0.000_119_4),
    first_event_ms: None,
};

const UPSTREAM: UpstreamCall<'static> = UpstreamCall {
    method: "POST",
    upstream: "completions",
    address: "127.0.0.1",
    port: 9001,
};

const CLIENT_PARENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Everything the gateway does with a request's spans.
fn request(mut span: RequestSpan) {
    let traceparent = span.start_upstream(&UPSTREAM);
    black_box(&traceparent);
    black_box(span.trace_id());
    span.end_upstream(UpstreamOutcome::Status(200));
    span.finish(&FACTS, Some(&GENAI));
}

fn pipeline(ratio: f64) -> Traces {
    Traces::with_exporter(
        Discard,
        ratio,
        "bench",
        BatchOptions::default(),
        TraceCounters::new().unwrap(),
    )
}

fn request_spans(c: &mut Criterion) {
    let mut g = c.benchmark_group("traces/request");
    g.measurement_time(Duration::from_secs(4));

    g.bench_function("off", |b| b.iter(|| request(black_box(RequestSpan::off()))));

    let unsampled = pipeline(0.0);
    g.bench_function("ratio 0 (not sampled)", |b| {
        b.iter(|| request(unsampled.begin(black_box(&Incoming::default()))))
    });

    let sampled = pipeline(1.0);
    g.bench_function("sampled", |b| {
        b.iter(|| request(sampled.begin(black_box(&Incoming::default()))))
    });
    g.bench_function("sampled, client traceparent", |b| {
        b.iter(|| {
            let incoming = Incoming::new(Some(black_box(CLIENT_PARENT)), None);
            request(sampled.begin(&incoming))
        })
    });
    g.finish();
    for (name, t) in [("ratio 0", &unsampled), ("sampled", &sampled)] {
        let c = t.counters();
        eprintln!(
            "{name}: {} spans exported, {} dropped (a drop is cheaper than a send)",
            c.exported.get(),
            c.dropped.get()
        );
    }

    // The same, in CPU time of the benchmarking thread: on a shared
    // machine wall time also counts the time other processes ran.
    let mut g = c.benchmark_group("traces/request thread CPU");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("off", |b| {
        b.iter_custom(|iters| {
            let start = thread_cpu();
            for _ in 0..iters {
                request(black_box(RequestSpan::off()));
            }
            thread_cpu() - start
        })
    });
    for (name, traces) in [("ratio 0 (not sampled)", &unsampled), ("sampled", &sampled)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = thread_cpu();
                for _ in 0..iters {
                    request(traces.begin(black_box(&Incoming::default())));
                }
                thread_cpu() - start
            })
        });
    }
    g.finish();

    c.bench_function("traces/parse traceparent", |b| {
        b.iter(|| parse_traceparent(black_box(CLIENT_PARENT)))
    });
}

/// A minimal OTLP/HTTP sink: reads each request and answers 200 without
/// decoding, so the measured CPU is mostly the exporter's.
fn sink() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if reader.get_mut().write_all(reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the whole process (every thread), user + system.
fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn exported_over_otlp(c: &mut Criterion) {
    let endpoint = sink();
    let block: TracingConfig =
        serde_yaml::from_str(&format!("otlp_endpoint: \"{endpoint}\"")).unwrap();
    let settings: TraceSettings = block.resolve(&mut |_, v| Ok(v.to_string())).unwrap();
    let traces = Traces::start(&settings, TraceCounters::new().unwrap()).unwrap();
    let mut g = c.benchmark_group("traces/process CPU per request");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(6));
    g.bench_function("sampled, exported over OTLP/HTTP", |b| {
        b.iter_custom(|iters| {
            let start = process_cpu();
            let mut left = iters;
            while left > 0 {
                // Chunks that fit the queue, each exported before the next.
                let n = left.min(500);
                for _ in 0..n {
                    request(traces.begin(&Incoming::default()));
                }
                traces.flush();
                left -= n;
            }
            process_cpu() - start
        })
    });
    g.finish();
    let c = traces.counters();
    eprintln!(
        "OTLP/HTTP: {} spans exported, {} dropped",
        c.exported.get(),
        c.dropped.get()
    );
    traces.shutdown();
}

criterion_group!(benches, request_spans, exported_over_otlp);
criterion_main!(benches);
