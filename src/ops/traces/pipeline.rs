//! The export pipeline: ended spans go into a bounded queue and leave in
//! batches, off the request path.
//!
//! ```text
//! request thread ──on_end──▶ Gate ──▶ BatchSpanProcessor queue (bounded, try_send)
//!                              │            │ own thread "OpenTelemetry.Traces.BatchProcessor":
//!                              │            ▼ a batch every `delay`, or when `max_batch` wait
//!                      full: dropped   Counted ──▶ OnRuntime ──▶ OTLP exporter (HTTP or gRPC)
//!                                                    │ spawned on the exporter's own
//!                                                    ▼ current-thread runtime, thread "scopegate-otlp"
//! ```
//!
//! Ending a span costs a counter bump and a `try_send`: it never waits for
//! the collector. The SDK's queue drops rather than blocks when full, but
//! does not say how many it dropped, so [`Gate`] keeps its own count of
//! spans between `on_end` and export and refuses (and counts) a span once
//! the queue would be full; with the SDK's queue as large as the gate's, the
//! SDK itself never drops. [`Counted`] sees every batch the exporter is
//! given: exported when the collector took it, dropped when it did not.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounter, Registry};

use super::config::{BatchOptions, Protocol, TraceSettings};

/// How long a shutdown may spend flushing queued spans.
pub const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Export failures are logged at most this often (each one is counted).
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// The exporter's thread.
const EXPORT_THREAD_NAME: &str = "scopegate-otlp";

/// `scopegate_trace_spans_exported_total` and
/// `scopegate_trace_spans_dropped_total`.
#[derive(Clone, Debug)]
pub struct TraceCounters {
    /// Spans the collector accepted.
    pub exported: IntCounter,
    /// Spans lost: the queue was full, the collector failed or was too
    /// slow, or the span ended after shutdown began.
    pub dropped: IntCounter,
}

impl TraceCounters {
    /// Fresh counters, registered nowhere (see [`TraceCounters::register`]).
    ///
    /// # Errors
    /// Never in practice: the names and help texts are valid.
    pub fn new() -> prometheus::Result<TraceCounters> {
        Ok(TraceCounters {
            exported: IntCounter::new(
                "scopegate_trace_spans_exported_total",
                "Trace spans the OpenTelemetry collector accepted.",
            )?,
            dropped: IntCounter::new(
                "scopegate_trace_spans_dropped_total",
                "Trace spans dropped: export queue full, collector failed, slow or absent.",
            )?,
        })
    }

    /// Registers both counters in `registry`.
    ///
    /// # Errors
    /// When a metric of the same name is already registered there.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.exported.clone()))?;
        registry.register(Box::new(self.dropped.clone()))?;
        Ok(())
    }
}

/// New counters registered in `registry`: what the server calls once.
///
/// # Errors
/// As [`TraceCounters::register`].
pub fn register_counters(registry: &Registry) -> prometheus::Result<TraceCounters> {
    let counters = TraceCounters::new()?;
    counters.register(registry)?;
    Ok(counters)
}

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The exporter's thread or runtime could not be made.
    #[error("cannot start the trace exporter's thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The OTLP exporter refused its settings.
    #[error("cannot build the OTLP trace exporter: {0}")]
    Exporter(String),
}

/// The running pipeline; cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Traces {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    provider: SdkTracerProvider,
    pub(crate) tracer: SdkTracer,
    /// `sample_ratio` for new traces, clamped to 0..=1.
    pub(crate) ratio: f64,
    pub(crate) closed: Arc<AtomicBool>,
    runtime: Mutex<Option<ExportRuntime>>,
    counters: TraceCounters,
}

impl fmt::Debug for Traces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Traces")
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Traces {
    /// Starts exporting to the collector `settings` name: the batch
    /// processor's thread, and the exporter on its own small runtime and
    /// thread (`scopegate-otlp`), so nothing runs on the proxy's threads.
    ///
    /// # Errors
    /// When the thread cannot start or the exporter refuses its settings
    /// (for an `https` collector: no system CA certificates).
    pub fn start(settings: &TraceSettings, counters: TraceCounters) -> Result<Traces, StartError> {
        let runtime = ExportRuntime::spawn()?;
        let exporter = {
            // tonic's channel spawns its worker on the current runtime.
            let _enter = runtime.handle.enter();
            build_otlp_exporter(settings)
        };
        let exporter = match exporter {
            Ok(e) => e,
            Err(e) => {
                runtime.stop();
                return Err(e);
            }
        };
        let bridged = OnRuntime {
            exporter: Arc::new(exporter),
            handle: runtime.handle.clone(),
            // The exporter keeps its own time limit; this one only ends an
            // export that ignored it.
            limit: settings.export_timeout + Duration::from_secs(1),
        };
        Ok(Traces::assemble(
            bridged,
            settings.sample_ratio,
            &settings.service_name,
            settings.batch,
            counters,
            Some(runtime),
        ))
    }

    /// The same pipeline around any exporter, run on the batch processor's
    /// thread: for tests and benchmarks that need no collector.
    pub fn with_exporter<E: SpanExporter + 'static>(
        exporter: E,
        sample_ratio: f64,
        service_name: &str,
        batch: BatchOptions,
        counters: TraceCounters,
    ) -> Traces {
        Traces::assemble(exporter, sample_ratio, service_name, batch, counters, None)
    }

    fn assemble<E: SpanExporter + 'static>(
        exporter: E,
        sample_ratio: f64,
        service_name: &str,
        batch: BatchOptions,
        counters: TraceCounters,
        runtime: Option<ExportRuntime>,
    ) -> Traces {
        let queue_size = batch.queue_size.max(1);
        let queued = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let counted = Counted {
            inner: exporter,
            queued: queued.clone(),
            counters: counters.clone(),
            last_logged: AtomicU64::new(0),
            started: Instant::now(),
        };
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(queue_size)
            .with_max_export_batch_size(batch.max_batch.clamp(1, queue_size))
            .with_scheduled_delay(batch.delay)
            .build();
        let gate = Gate {
            inner: BatchSpanProcessor::new(counted, config),
            queued,
            capacity: queue_size,
            counters: counters.clone(),
            closed: closed.clone(),
        };
        // The SDK's detectors read OTEL_RESOURCE_ATTRIBUTES (for example
        // Kubernetes pod attributes); `service.name` is always ours.
        let resource = Resource::builder()
            .with_service_name(service_name.to_string())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let ratio = if sample_ratio.is_finite() {
            sample_ratio.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(gate)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("scopegate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        Traces {
            inner: Arc::new(Inner {
                provider,
                tracer,
                ratio,
                closed,
                runtime: Mutex::new(runtime),
                counters,
            }),
        }
    }

    /// The exported and dropped counters.
    pub fn counters(&self) -> &TraceCounters {
        &self.inner.counters
    }

    /// Exports what is queued now and waits for it (at most 5 s, the SDK's
    /// limit). For tests; the server only flushes at shutdown.
    pub fn flush(&self) -> bool {
        self.inner.provider.force_flush().is_ok()
    }

    /// Stops taking spans, exports what is queued for at most
    /// [`SHUTDOWN_FLUSH_TIMEOUT`], and stops the exporter's thread. True
    /// when everything queued was exported in time. A second call does
    /// nothing. Blocks its caller up to 2 s: call it from a thread that is
    /// not a runtime's worker (or through `spawn_blocking`).
    pub fn shutdown(&self) -> bool {
        self.inner.shutdown()
    }
}

impl Inner {
    /// Ends a recorded span. The SDK discards a span that ends after
    /// shutdown without a word; it is counted as dropped here.
    pub(crate) fn end(&self, mut span: Span) {
        use opentelemetry::trace::Span as _;
        if self.closed.load(Ordering::Acquire) && span.is_recording() {
            self.counters.dropped.inc();
        }
        span.end();
    }

    fn shutdown(&self) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        let flushed = self
            .provider
            .shutdown_with_timeout(SHUTDOWN_FLUSH_TIMEOUT)
            .is_ok();
        if !flushed {
            tracing::warn!(
                "trace export did not finish within {} s at shutdown; queued spans are dropped",
                SHUTDOWN_FLUSH_TIMEOUT.as_secs()
            );
        }
        let runtime = match self.runtime.lock() {
            Ok(mut r) => r.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(runtime) = runtime {
            runtime.stop();
        }
        flushed
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Bounded: without it the SDK's own drop would wait up to 5 s.
        self.shutdown();
    }
}

/// In front of the SDK's batch processor: counts the spans between
/// `on_end` and export, and drops (and counts) a span that would overflow
/// the queue or that ends after shutdown began.
#[derive(Debug)]
struct Gate {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    counters: TraceCounters,
    closed: Arc<AtomicBool>,
}

impl SpanProcessor for Gate {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.closed.load(Ordering::Acquire) {
            self.counters.dropped.inc();
            return;
        }
        // Invariant: spans handed on and not yet given to the exporter
        // <= capacity, so the SDK's queue (as large) is never full.
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.counters.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts what each export did with its batch.
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
    counters: TraceCounters,
    /// Milliseconds after `started` of the last logged failure, plus one
    /// (0: none yet).
    last_logged: AtomicU64,
    started: Instant,
}

impl<E> fmt::Debug for Counted<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counted").finish_non_exhaustive()
    }
}

impl<E> Counted<E> {
    fn failed(&self, spans: usize, error: &OTelSdkError) {
        self.counters.dropped.inc_by(spans as u64);
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_logged.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= FAILURE_LOG_INTERVAL.as_millis() as u64;
        if due
            && self
                .last_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                spans,
                "trace export failed, spans dropped (counted in \
                 scopegate_trace_spans_dropped_total; logged at most once a minute): {error}"
            );
        }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        self.queued.fetch_sub(spans, Ordering::AcqRel);
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            match &result {
                Ok(()) => self.counters.exported.inc_by(spans as u64),
                Err(e) => self.failed(spans, e),
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Runs each export on the exporter's runtime; the batch processor's
/// thread waits for the result.
struct OnRuntime {
    exporter: Arc<opentelemetry_otlp::SpanExporter>,
    handle: tokio::runtime::Handle,
    limit: Duration,
}

impl fmt::Debug for OnRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnRuntime").finish_non_exhaustive()
    }
}

impl SpanExporter for OnRuntime {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let exporter = self.exporter.clone();
        let limit = self.limit;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // On a stopped runtime the task is dropped unrun and `rx` says so.
        self.handle.spawn(async move {
            let result = match tokio::time::timeout(limit, exporter.export(batch)).await {
                Ok(r) => r,
                Err(_) => Err(OTelSdkError::Timeout(limit)),
            };
            let _ = tx.send(result);
        });
        async move {
            rx.await.unwrap_or_else(|_| {
                Err(OTelSdkError::InternalFailure(
                    "the trace exporter has stopped".to_string(),
                ))
            })
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any export holds a
        // clone.
        if let Some(exporter) = Arc::get_mut(&mut self.exporter) {
            exporter.set_resource(resource);
        }
    }
}

/// The exporter's own current-thread runtime on its own thread: the
/// OpenTelemetry SDK's batch processor (a thread of the SDK's own) hands it
/// the exports, and a slow or absent collector must cost the proxy's
/// runtimes nothing; the pipeline also runs outside any server (tests,
/// benches). Stopped with the pipeline.
struct ExportRuntime {
    handle: tokio::runtime::Handle,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl ExportRuntime {
    fn spawn() -> std::io::Result<ExportRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(EXPORT_THREAD_NAME.to_string())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Dropping the runtime cancels an export still in flight.
            })?;
        Ok(ExportRuntime {
            handle,
            stop,
            thread,
        })
    }

    /// Stops the runtime; does not wait for its thread.
    fn stop(self) {
        let _ = self.stop.send(());
        drop(self.thread);
    }
}

fn build_otlp_exporter(
    settings: &TraceSettings,
) -> Result<opentelemetry_otlp::SpanExporter, StartError> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
    let https = settings.endpoint.starts_with("https://");
    let built = match settings.protocol {
        Protocol::HttpProtobuf => {
            let client: Arc<dyn opentelemetry_http::HttpClient> = if https {
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_provider_and_native_roots(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .map_err(|e| {
                        StartError::Exporter(format!(
                            "no CA certificates for the https collector: {e}"
                        ))
                    })?
                    .https_only()
                    .enable_http1()
                    .build();
                Arc::new(opentelemetry_http::hyper::HyperClient::new(
                    connector,
                    settings.export_timeout,
                    None,
                ))
            } else {
                Arc::new(
                    opentelemetry_http::hyper::HyperClient::with_default_connector(
                        settings.export_timeout,
                        None,
                    ),
                )
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(settings.export_timeout)
                .with_headers(settings.headers.iter().cloned().collect())
                .with_shared_http_client(client)
                .build()
        }
        Protocol::Grpc => {
            let mut headers = http::HeaderMap::new();
            for (name, value) in &settings.headers {
                let name = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| StartError::Exporter(format!("header name: {e}")))?;
                let value = http::HeaderValue::from_str(value).map_err(|_| {
                    StartError::Exporter(format!("header {name}: not a valid value"))
                })?;
                headers.insert(name, value);
            }
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(settings.export_timeout)
                .with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers),
                );
            if https {
                builder = builder.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_native_roots(),
                );
            }
            builder.build()
        }
    };
    built.map_err(|e| StartError::Exporter(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Condvar;

    use super::*;
    use crate::ops::traces::context::Incoming;
    use crate::ops::traces::span::ServerFacts;

    /// Holds every export until released.
    #[derive(Debug, Default)]
    struct Stuck {
        released: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Stuck {
        fn release(&self) {
            let (lock, cv) = &*self.released;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
    }

    impl SpanExporter for Stuck {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            let (lock, cv) = &*self.released;
            let mut released = lock.lock().unwrap();
            while !*released {
                released = cv.wait(released).unwrap();
            }
            Ok(())
        }
    }

    fn facts() -> ServerFacts<'static> {
        ServerFacts {
            method: "GET",
            path: "/v1/models",
            route: Some("/v1/models"),
            status: 200,
            protocol_version: "1.1",
            client_address: None,
            server_port: Some(8080),
            request_id: "r",
            plane: Some("data"),
            decision: "allow",
            code: "ok",
            key_id: Some("k"),
            key_type: Some("service"),
            organisation_id: None,
            workspace_id: None,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let stuck = Stuck::default();
        let released = stuck.released.clone();
        let batch = BatchOptions {
            queue_size: 100,
            max_batch: 10,
            delay: Duration::from_millis(10),
        };
        let traces = Traces::with_exporter(stuck, 1.0, "t", batch, TraceCounters::new().unwrap());
        let spans: Vec<_> = (0..1000)
            .map(|_| traces.begin(&Incoming::default()))
            .collect();
        let started = Instant::now();
        for span in spans {
            span.finish(&facts(), None);
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "1,000 span ends took {took:?}"
        );
        let c = traces.counters();
        // At most the queue plus the batch being exported got through.
        assert!(c.dropped.get() >= 1000 - 100 - 10, "{}", c.dropped.get());
        Stuck {
            released: released.clone(),
        }
        .release();
        assert!(traces.flush());
        assert_eq!(c.exported.get() + c.dropped.get(), 1000);
        assert!(c.exported.get() >= 100);

        // A span that ends once shutdown began is dropped and counted.
        let late = traces.begin(&Incoming::default());
        let before = c.dropped.get();
        assert!(traces.shutdown());
        late.finish(&facts(), None);
        assert_eq!(c.dropped.get(), before + 1);
        let mut after = traces.begin(&Incoming::default());
        assert!(!after.is_recording());
        let call = crate::ops::traces::span::UpstreamCall {
            method: "GET",
            upstream: "completions",
            address: "u",
            port: 1,
        };
        assert_eq!(after.start_upstream(&call), None, "no all-zero traceparent");
        // A second shutdown does nothing.
        assert!(!traces.shutdown());
    }

    #[test]
    fn counters_register_once_per_registry() {
        let registry = Registry::new();
        let c = register_counters(&registry).unwrap();
        c.dropped.inc();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.contains(&"scopegate_trace_spans_dropped_total".to_string()));
        assert!(names.contains(&"scopegate_trace_spans_exported_total".to_string()));
        assert!(register_counters(&registry).is_err());
    }
}
