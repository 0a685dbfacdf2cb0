//! Prometheus metrics (the reference on metrics, health and logs) and the small HTTP listener that serves
//! `/metrics`, `/healthz` and `/readyz`.
//!
//! Everything lives in prometheus' default registry (which also carries the
//! standard `process_*` metrics). Label values are bounded: route patterns,
//! error codes, and workspace ids from the keys file, never client input.

use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use prometheus::{
    register_gauge, register_gauge_vec, register_histogram_vec, register_int_counter_vec,
    register_int_gauge_vec, Encoder, Gauge, GaugeVec, Histogram, HistogramVec, IntCounter,
    IntCounterVec, IntGaugeVec, TextEncoder,
};

use crate::decision::errors::ErrorCode;
use crate::identity::keys::Snapshot;
use crate::identity::scopes::KeyType;

/// Histogram buckets: from 100 µs (a denial) to 60 s (a long LLM stream).
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The metric families.
pub struct Metrics {
    /// `scopegate_requests_total`.
    pub requests: IntCounterVec,
    /// `scopegate_workspace_requests_total`.
    pub workspace_requests: IntCounterVec,
    /// `scopegate_request_duration_seconds`.
    pub duration: HistogramVec,
    /// `scopegate_upstream_responses_total`.
    pub upstream_responses: IntCounterVec,
    /// `scopegate_upstream_errors_total`.
    pub upstream_errors: IntCounterVec,
    /// `scopegate_keys`.
    pub keys: IntGaugeVec,
    /// `scopegate_keys_reloads_total`.
    pub reloads: IntCounterVec,
    /// `scopegate_keys_last_reload_success_timestamp_seconds`.
    pub last_reload_success: Gauge,
    /// `scopegate_tls_reloads_total`.
    pub tls_reloads: IntCounterVec,
    /// `scopegate_tls_certificate_expiry_timestamp_seconds`.
    pub tls_expiry: GaugeVec,
    /// `scopegate_downstream_header_errors_total{reason}`.
    pub header_errors: IntCounterVec,
    /// `scopegate_downstream_connections_refused_total{listener}`.
    pub connections_refused: IntCounterVec,
    /// Set once keys are loaded.
    pub ready: AtomicBool,
    /// Set at SIGTERM: `/readyz` answers 503 `draining` from then on, so a
    /// load balancer stops sending new requests while in-flight ones finish.
    pub draining: AtomicBool,
    /// Set once the proxy listeners accept connections; `/readyz` needs both.
    pub listening: AtomicBool,
}

/// The `reason` values of `scopegate_downstream_header_errors_total`.
pub const HEADER_ERROR_REASONS: [&str; 3] = ["timeout", "rejected", "closed"];

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// The process-wide metrics; `None` only if registration failed (then
/// nothing is counted, but requests still flow).
pub fn metrics() -> Option<&'static Metrics> {
    METRICS.get_or_init(|| Metrics::register().ok()).as_ref()
}

impl Metrics {
    fn register() -> prometheus::Result<Metrics> {
        let build = register_int_gauge_vec!(
            "scopegate_build_info",
            "Build information; the value is always 1.",
            &["version"]
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let m = Metrics {
            requests: register_int_counter_vec!(
                "scopegate_requests_total",
                "Requests decided, by plane, route pattern, decision and code.",
                &["plane", "route", "decision", "code"]
            )?,
            workspace_requests: register_int_counter_vec!(
                "scopegate_workspace_requests_total",
                "Requests by the workspace they act in (canonical id or none) and decision.",
                &["workspace", "decision"]
            )?,
            duration: register_histogram_vec!(
                "scopegate_request_duration_seconds",
                "Time from the request's arrival to the end of its response.",
                &["plane"],
                DURATION_BUCKETS.to_vec()
            )?,
            upstream_responses: register_int_counter_vec!(
                "scopegate_upstream_responses_total",
                "Responses from upstreams by status class.",
                &["upstream", "status_class"]
            )?,
            upstream_errors: register_int_counter_vec!(
                "scopegate_upstream_errors_total",
                "Failures talking to upstreams, by kind.",
                &["upstream", "kind"]
            )?,
            keys: register_int_gauge_vec!(
                "scopegate_keys",
                "Keys in the snapshot in force, by type (whatever their status).",
                &["type"]
            )?,
            reloads: register_int_counter_vec!(
                "scopegate_keys_reloads_total",
                "Keys file loads (the load at start counts), by result.",
                &["result"]
            )?,
            last_reload_success: register_gauge!(
                "scopegate_keys_last_reload_success_timestamp_seconds",
                "Unix time of the last successful keys load."
            )?,
            tls_reloads: register_int_counter_vec!(
                "scopegate_tls_reloads_total",
                "Loads of TLS listener certificate and key pairs (the load at start counts), by \
                 result.",
                &["result"]
            )?,
            tls_expiry: register_gauge_vec!(
                "scopegate_tls_certificate_expiry_timestamp_seconds",
                "Unix time at which the certificate a TLS listener serves expires.",
                &["listener"]
            )?,
            header_errors: register_int_counter_vec!(
                "scopegate_downstream_header_errors_total",
                "HTTP/1 connections that ended before a whole request header arrived, by reason: \
                 timeout (answered 408), rejected (answered 400 by the HTTP layer), closed (by \
                 the client).",
                &["reason"]
            )?,
            connections_refused: register_int_counter_vec!(
                "scopegate_downstream_connections_refused_total",
                "Client connections closed at once because max_client_connections were open, by \
                 listener (the listen address as written in the config).",
                &["listener"]
            )?,
            ready: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        };
        for t in KeyType::ALL {
            m.keys.with_label_values(&[t.as_str()]).set(0);
        }
        for r in ["success", "failure"] {
            m.reloads.with_label_values(&[r]).inc_by(0);
            m.tls_reloads.with_label_values(&[r]).inc_by(0);
        }
        for r in HEADER_ERROR_REASONS {
            m.header_errors.with_label_values(&[r]).inc_by(0);
        }
        Ok(m)
    }

    /// Records a successful keys load and the new key counts.
    pub fn keys_loaded(&self, snap: &Snapshot) {
        for t in KeyType::ALL {
            self.keys
                .with_label_values(&[t.as_str()])
                .set(snap.count_by_type(t) as i64);
        }
        self.reloads.with_label_values(&["success"]).inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.last_reload_success.set(now);
        self.ready.store(true, Ordering::Release);
    }

    /// Records a failed keys load.
    pub fn keys_load_failed(&self) {
        self.reloads.with_label_values(&["failure"]).inc();
    }

    /// Records a certificate pair put in force on `listener` (its address),
    /// expiring at `not_after` (Unix seconds).
    pub fn tls_loaded(&self, listener: &str, not_after: i64) {
        self.tls_reloads.with_label_values(&["success"]).inc();
        self.tls_expiry
            .with_label_values(&[listener])
            .set(not_after as f64);
    }

    /// Records a connection that ended before its request header was
    /// whole; `reason` is one of [`HEADER_ERROR_REASONS`].
    pub fn header_error(&self, reason: &'static str) {
        self.header_errors.with_label_values(&[reason]).inc();
    }

    /// The refused-connections counter of `listener` (its address as
    /// written in the config), present from now on at 0.
    pub fn refused_connections_of(&self, listener: &str) -> IntCounter {
        self.connections_refused.with_label_values(&[listener])
    }

    /// Records a certificate pair that was refused (the old one stays).
    pub fn tls_load_failed(&self) {
        self.tls_reloads.with_label_values(&["failure"]).inc();
    }
}

/// The Prometheus text exposition of the default registry.
pub fn render() -> String {
    let families = prometheus::gather();
    let mut buf = Vec::new();
    if TextEncoder::new().encode(&families, &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: u16, body: String, ct: &'static str| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ct),
        );
        resp
    };
    Ok(match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => text(200, render(), "text/plain; version=0.0.4; charset=utf-8"),
        ("GET", "/healthz") => text(200, "ok\n".into(), "text/plain"),
        ("GET", "/readyz") => match readiness() {
            None => text(200, "ready\n".into(), "text/plain"),
            Some(why) => text(503, format!("{why}\n"), "text/plain"),
        },
        _ => text(404, "not found\n".into(), "text/plain"),
    })
}

/// Why `/readyz` is not 200 yet (or no longer), or `None` when ready.
fn readiness() -> Option<&'static str> {
    let Some(m) = metrics() else {
        return Some("starting");
    };
    if m.draining.load(Ordering::Acquire) {
        Some("draining")
    } else if !m.ready.load(Ordering::Acquire) {
        Some("keys not loaded")
    } else if !m.listening.load(Ordering::Acquire) {
        Some("listeners not ready")
    } else {
        None
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the
/// process ends.
///
/// # Errors
/// When the listener fails.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, hyper::service::service_fn(handle))
                .await;
        });
    }
}

/// The `/metrics`, `/healthz` and `/readyz` listener, as the pingora
/// background service "metrics" (thread "BG metrics"): a runtime of its own, so a
/// saturated proxy can still be scraped; it stops with the server.
pub struct MetricsListener {
    listener: parking_lot::Mutex<Option<std::net::TcpListener>>,
}

impl MetricsListener {
    /// Binds the metrics address now (so a bad address stops the start).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub fn bind(addr: SocketAddr) -> std::io::Result<MetricsListener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(MetricsListener {
            listener: parking_lot::Mutex::new(Some(listener)),
        })
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for MetricsListener {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().take() else {
            return;
        };
        // It serves through a drain (`/readyz` says so), until the server
        // shuts its runtime down.
        match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => {
                if let Err(e) = serve(l).await {
                    tracing::error!(error = %e, "metrics listener stopped");
                }
            }
            Err(e) => tracing::error!(error = %e, "metrics listener failed"),
        }
    }
}

/// One finished request, as the metrics see it.
pub struct RequestOutcome<'a> {
    /// `data`, `control` or `none`.
    pub plane: &'a str,
    /// The matched pattern, or `None` for `unmatched`. Patterns live in the
    /// route table for the life of the process.
    pub route: Option<&'a Arc<str>>,
    /// The code the proxy answered with; `None` is `ok`.
    pub code: Option<ErrorCode>,
    /// Canonical workspace id, or `None`.
    pub workspace: Option<&'a Arc<str>>,
    /// Time from arrival to the end of the response.
    pub elapsed_seconds: f64,
}

/// Whether a code still counts as an allowed request (the policy allowed
/// it; the upstream failed it).
pub fn is_allowed(code: Option<ErrorCode>) -> bool {
    matches!(
        code,
        None | Some(ErrorCode::UpstreamUnavailable | ErrorCode::UpstreamTimeout)
    )
}

type RequestKey = (usize, u8, u8);

thread_local! {
    // Label lookups in prometheus take a read lock on a shared map; each
    // worker thread keeps its own handles instead, so counting a request
    // touches only atomics. Keys are bounded: route patterns of the table
    // (by address; the table lives as long as the process) × codes, and
    // workspace ids from the keys file.
    // The maps hash with FxHash, not SipHash: their keys come from the
    // route table, the codes and the keys file, never from a client, and a
    // lookup is on every request.
    static REQUESTS: RefCell<FxHashMap<RequestKey, IntCounter>> = RefCell::new(FxHashMap::default());
    static WORKSPACES: RefCell<FxHashMap<Arc<str>, [IntCounter; 2]>> = RefCell::new(FxHashMap::default());
    static NO_WORKSPACE: RefCell<Option<[IntCounter; 2]>> = const { RefCell::new(None) };
    static UPSTREAM: RefCell<FxHashMap<(bool, &'static str, &'static str), IntCounter>> = RefCell::new(FxHashMap::default());
    static DURATIONS: RefCell<FxHashMap<&'static str, Histogram>> = RefCell::new(FxHashMap::default());
}

fn code_index(code: Option<ErrorCode>) -> u8 {
    code.map_or(u8::MAX, |c| c as u8)
}

fn plane_label(plane: &str) -> &'static str {
    match plane {
        "data" => "data",
        "control" => "control",
        _ => "none",
    }
}

impl Metrics {
    /// Counts one finished request in `requests_total`,
    /// `workspace_requests_total` and the duration histogram.
    pub fn record_request(&self, r: &RequestOutcome<'_>) {
        let plane = plane_label(r.plane);
        let allowed = is_allowed(r.code);
        let decision = if allowed { "allow" } else { "deny" };
        let key = (
            r.route.map_or(0, |p| Arc::as_ptr(p) as *const u8 as usize),
            plane.as_bytes()[0],
            code_index(r.code),
        );
        REQUESTS.with(|cache| {
            let mut cache = cache.borrow_mut();
            cache
                .entry(key)
                .or_insert_with(|| {
                    self.requests.with_label_values(&[
                        plane,
                        r.route.map_or("unmatched", |p| &**p),
                        decision,
                        r.code.map_or("ok", |c| c.as_str()),
                    ])
                })
                .inc();
        });
        let ws_index = usize::from(!allowed);
        match r.workspace {
            Some(ws) => WORKSPACES.with(|cache| {
                let mut cache = cache.borrow_mut();
                if let Some(c) = cache.get(&**ws) {
                    c[ws_index].inc();
                } else {
                    let pair = [
                        self.workspace_requests.with_label_values(&[ws, "allow"]),
                        self.workspace_requests.with_label_values(&[ws, "deny"]),
                    ];
                    pair[ws_index].inc();
                    cache.insert(ws.clone(), pair);
                }
            }),
            None => NO_WORKSPACE.with(|cache| {
                cache.borrow_mut().get_or_insert_with(|| {
                    [
                        self.workspace_requests
                            .with_label_values(&["none", "allow"]),
                        self.workspace_requests.with_label_values(&["none", "deny"]),
                    ]
                })[ws_index]
                    .inc();
            }),
        }
        DURATIONS.with(|cache| {
            cache
                .borrow_mut()
                .entry(plane)
                .or_insert_with(|| self.duration.with_label_values(&[plane]))
                .observe(r.elapsed_seconds);
        });
    }
}

impl Metrics {
    /// Counts an upstream response by status class.
    pub fn upstream_response(&self, upstream: &'static str, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.upstream_counter(true, upstream, class);
    }

    /// Counts a failure talking to an upstream (`connect`, `timeout`,
    /// `reset`, `other`).
    pub fn upstream_error(&self, upstream: &'static str, kind: &'static str) {
        self.upstream_counter(false, upstream, kind);
    }

    fn upstream_counter(&self, response: bool, upstream: &'static str, label: &'static str) {
        UPSTREAM.with(|cache| {
            cache
                .borrow_mut()
                .entry((response, upstream, label))
                .or_insert_with(|| {
                    let vec = if response {
                        &self.upstream_responses
                    } else {
                        &self.upstream_errors
                    };
                    vec.with_label_values(&[upstream, label])
                })
                .inc();
        });
    }
}

/// The usage metrics (the reference on what clients and operators see of usage and on limits shared by replicas): tokens, cost, budgets, in-flight
/// requests, and the shared-state store's round trips.
pub struct UsageMetrics {
    /// `scopegate_tokens_total{workspace, kind, source}`.
    pub tokens: IntCounterVec,
    /// `scopegate_cost_usd_total{workspace}`.
    pub cost: prometheus::CounterVec,
    /// `scopegate_usage_limit_ratio{scope, id}`.
    pub limit_ratio: prometheus::GaugeVec,
    /// `scopegate_in_flight_requests{plane}`.
    pub in_flight: IntGaugeVec,
    /// `scopegate_unpriced_tokens_total{workspace}`.
    pub unpriced: IntCounterVec,
    /// `scopegate_state_errors_total{op}`.
    pub state_errors: IntCounterVec,
    /// `scopegate_state_duration_seconds{op}`.
    pub state_duration: HistogramVec,
}

static USAGE_METRICS: OnceLock<Option<UsageMetrics>> = OnceLock::new();

/// The process-wide usage metrics (see [`metrics`]).
pub fn usage_metrics() -> Option<&'static UsageMetrics> {
    USAGE_METRICS
        .get_or_init(|| UsageMetrics::register().ok())
        .as_ref()
}

impl UsageMetrics {
    fn register() -> prometheus::Result<UsageMetrics> {
        let m = UsageMetrics {
            tokens: register_int_counter_vec!(
                "scopegate_tokens_total",
                "Tokens counted, by workspace, kind (input: all input; output; cached_input and cache_write: of the input, read from and written to a prompt cache) and source (reported/estimated).",
                &["workspace", "kind", "source"]
            )?,
            cost: prometheus::register_counter_vec!(
                "scopegate_cost_usd_total",
                "Cost counted in US dollars, from model_prices, by workspace.",
                &["workspace"]
            )?,
            limit_ratio: prometheus::register_gauge_vec!(
                "scopegate_usage_limit_ratio",
                "Usage of the current period over credit_limit, for keys and workspaces with usage_limits.",
                &["scope", "id"]
            )?,
            in_flight: register_int_gauge_vec!(
                "scopegate_in_flight_requests",
                "Requests in flight, by plane.",
                &["plane"]
            )?,
            unpriced: register_int_counter_vec!(
                "scopegate_unpriced_tokens_total",
                "Tokens of models that no model_prices pattern prices (counted at cost 0).",
                &["workspace"]
            )?,
            state_errors: register_int_counter_vec!(
                "scopegate_state_errors_total",
                "Failed or timed-out round trips to the shared-state store, by operation.",
                &["op"]
            )?,
            state_duration: register_histogram_vec!(
                "scopegate_state_duration_seconds",
                "Round trips to the shared-state store, by operation.",
                &["op"],
                vec![0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]
            )?,
        };
        for p in ["data", "control"] {
            m.in_flight.with_label_values(&[p]).set(0);
        }
        Ok(m)
    }
}

/// A counted request's settlement, as the usage metrics count it.
#[derive(Clone, Copy, Debug, Default)]
pub struct SettledCounts {
    /// All input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Of the input, read from a prompt cache.
    pub cached_input: u64,
    /// Of the input, written to a prompt cache.
    pub cache_write: u64,
    /// Estimated by the proxy rather than reported.
    pub estimated: bool,
    /// Its cost in USD (0 when unpriced).
    pub cost: f64,
    /// No price matched its model.
    pub unpriced: bool,
}

/// One workspace's settlement series, looked up once per worker thread.
#[derive(Default)]
struct SettleHandles {
    /// `scopegate_tokens_total` by kind (input, output, cached_input,
    /// cache_write) and source (reported, estimated), made when first used.
    tokens: [[Option<IntCounter>; 2]; 4],
    cost: Option<prometheus::Counter>,
    unpriced: Option<IntCounter>,
}

thread_local! {
    // As the request counters: workspace ids come from the keys file, never
    // a client, so FxHash and a map bounded by the file's workspaces.
    static SETTLED: RefCell<FxHashMap<Arc<str>, SettleHandles>> = RefCell::new(FxHashMap::default());
}

impl UsageMetrics {
    /// Counts a settled request's tokens and cost in `workspace`: input and
    /// output always (a zero too, so the series exist), the cached kinds,
    /// the cost and the unpriced tokens when there are any.
    pub fn settled(&self, workspace: &Arc<str>, c: &SettledCounts) {
        const KINDS: [&str; 4] = ["input", "output", "cached_input", "cache_write"];
        let source = usize::from(c.estimated);
        let counts = [c.input, c.output, c.cached_input, c.cache_write];
        SETTLED.with(|cache| {
            let mut cache = cache.borrow_mut();
            let h = cache.entry(workspace.clone()).or_default();
            for (i, n) in counts.into_iter().enumerate() {
                if n > 0 || i < 2 {
                    h.tokens[i][source]
                        .get_or_insert_with(|| {
                            let src = if c.estimated { "estimated" } else { "reported" };
                            self.tokens.with_label_values(&[workspace, KINDS[i], src])
                        })
                        .inc_by(n);
                }
            }
            if c.cost > 0.0 {
                h.cost
                    .get_or_insert_with(|| self.cost.with_label_values(&[workspace]))
                    .inc_by(c.cost);
            }
            if c.unpriced && c.input + c.output > 0 {
                h.unpriced
                    .get_or_insert_with(|| self.unpriced.with_label_values(&[workspace]))
                    .inc_by(c.input + c.output);
            }
        });
    }
}

/// Wires the store's round trips to the metrics above.
pub struct StateMetricsSink;

impl crate::state::StateMetrics for StateMetricsSink {
    fn error(&self, op: &'static str) {
        if let Some(m) = usage_metrics() {
            m.state_errors.with_label_values(&[op]).inc();
        }
    }

    fn round_trip(&self, op: &'static str, seconds: f64) {
        if let Some(m) = usage_metrics() {
            m.state_duration.with_label_values(&[op]).observe(seconds);
        }
    }
}
