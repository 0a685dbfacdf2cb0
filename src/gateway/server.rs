//! Wiring: load and check everything, then run pingora with the gateway
//! and its background services (the file watcher, readiness, the metrics
//! listener, the drain), until a shutdown signal.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::ServiceWithDependents;

use crate::config::{Config, LogFormat};
use crate::decision::routes::RouteTable;
use crate::gateway::background::{Drain, Readiness, ShutdownSignals};
use crate::gateway::conn_guard::{ConnLimit, Deadlines, GuardedApp, ListenerGate};
use crate::gateway::proxy::{Gateway, Upstream};
use crate::gateway::tls_listen::{CertPairs, TlsListener};
use crate::identity::keys::{self, KeyStore};
use crate::ops::metrics::{metrics, MetricsListener};
use crate::ops::reload::Reloader;
use crate::ops::tokens::{JwksService, TokenKeys};
use crate::ops::traces::{TraceCounters, Traces};
use crate::ops::watch::Watcher;

/// Sets up `tracing` on stderr; `RUST_LOG` filters.
///
/// Whatever `RUST_LOG` says, the HTTP libraries under the proxy log at most
/// `info`: pingora's `debug`/`trace` lines dump request and response
/// headers (API keys, provider keys from `set_headers`) and h2's dump
/// header frames, and a secret must never reach a log at any level.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let cap = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() <= tracing::Level::INFO || !dumps_headers(meta.target())
    });
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(cap)
        .with(crate::gateway::conn_guard::QuietHeaderErrors);
    let _ = match format {
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_current_span(false))
            .try_init(),
        LogFormat::Pretty => registry.with(layer).try_init(),
    };
}

/// Targets whose verbose levels print headers.
fn dumps_headers(target: &str) -> bool {
    [
        "pingora",
        "h2",
        "hyper",
        "http",
        "tower",
        "rustls",
        "tokio_rustls",
    ]
    .iter()
    .any(|p| target.starts_with(p))
}

/// Runs the proxy until SIGTERM/SIGINT. Never returns.
///
/// # Errors
/// Start-up failures (bad upstream, unbindable metrics address).
pub fn serve(config: Config, table: RouteTable, store: KeyStore) -> anyhow::Result<()> {
    serve_with(config, table, store, Vec::new())
}

/// [`serve`], with `extra` services run beside the proxy (the demo's
/// upstreams).
///
/// # Errors
/// Start-up failures (bad upstream, unbindable metrics address).
pub fn serve_with(
    config: Config,
    table: RouteTable,
    store: KeyStore,
    extra: Vec<Box<dyn ServiceWithDependents>>,
) -> anyhow::Result<()> {
    // First, so that a SIGTERM at any moment from here on drains and exits 0.
    let signals = ShutdownSignals::register()
        .map_err(|e| anyhow::anyhow!("cannot catch shutdown signals: {e}"))?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    // Usage must survive restarts: a state file that cannot be used stops
    // the start, naming the file, rather than counting into the void.
    let counters = open_counters(&config)?;
    // The start-up load's text and document are garbage now.
    keys::release_freed_memory();
    let table = Arc::new(table);
    if let Some(m) = metrics() {
        m.keys_loaded(&store.load());
    }
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => {
            let parsed = addr
                .parse()
                .map_err(|e| anyhow::anyhow!("metrics_listen `{addr}`: {e}"))?;
            Some(
                MetricsListener::bind(parsed)
                    .map_err(|e| anyhow::anyhow!("metrics_listen `{addr}`: {e}"))?,
            )
        }
        None => None,
    };
    let tls = check_listeners(&config)?;
    check_open_file_limit(config.max_client_connections);
    // The keys reloader loads the JWK set files now; identity tokens
    // verify against them and against the sets the `jwks` service fetches.
    let reloader = Reloader::new(config.keys_file.clone(), table.clone(), store.clone());
    let tokens = TokenKeys::new(store.clone(), reloader.jwks_sets());
    let traces = start_traces(&config)?;
    let gateway = gateway(
        &config,
        table.clone(),
        store.clone(),
        in_flight.clone(),
        counters.clone(),
    )?
    .with_tokens(tokens.clone())
    .with_traces(traces.clone());

    let threads = config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(config.shutdown_grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        // One single-threaded runtime per worker thread: a request stays on
        // the thread that accepted it, with no cross-thread wake-ups.
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.add_service(proxy_service(&server, &config, gateway, &tls)?);
    add_background_services(
        &mut server,
        &config,
        Background {
            reloader,
            tokens,
            tls,
            metrics_listener,
            drain: Drain {
                in_flight,
                grace: Duration::from_secs(config.shutdown_grace_period_seconds),
                counters,
                traces: traces.clone(),
            },
        },
    )?;

    for service in extra {
        server.add_boxed_service(service);
    }

    log_serving(&config, threads);
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    // A fast shutdown (SIGINT) ends here without the drain: spans queued
    // still get their 2 s.
    if let Some(t) = traces {
        t.shutdown();
    }
    std::process::exit(0)
}

fn log_serving(config: &Config, threads: usize) {
    let listen: Vec<String> = config
        .listen
        .iter()
        .map(|l| match &l.tls {
            Some(_) => format!("https://{}", l.address),
            None => format!("http://{}", l.address),
        })
        .collect();
    tracing::info!(
        ?listen,
        metrics = ?config.metrics_listen,
        threads,
        keys_file = %config.keys_file.display(),
        "scopegate serving"
    );
}

/// The trace pipeline, when the config (or the `OTEL_*` variables) turn
/// tracing on (docs/reference.md#traces): its own threads, export off the
/// request path. The two trace counters are registered either way, so
/// dashboards find them at 0.
///
/// # Errors
/// The exporter cannot start (no thread, no CA certificates for an
/// `https` collector).
fn start_traces(config: &Config) -> anyhow::Result<Option<Traces>> {
    let counters = crate::ops::traces::register_counters(prometheus::default_registry())
        .or_else(|_| TraceCounters::new())
        .map_err(|e| anyhow::anyhow!("trace counters: {e}"))?;
    let Some(settings) = &config.tracing else {
        return Ok(None);
    };
    let traces = Traces::start(settings, counters).map_err(|e| anyhow::anyhow!("tracing: {e}"))?;
    tracing::info!(
        endpoint = %settings.endpoint,
        protocol = settings.protocol.as_str(),
        sample_ratio = settings.sample_ratio,
        "exporting traces"
    );
    Ok(Some(traces))
}

/// pingora binds its listeners later, on a service thread that panics on
/// failure and leaves the process running without them. Fail here first,
/// with the address in the message, while exiting non-zero still means
/// something. Returns the TLS listeners, loaded.
fn check_listeners(config: &Config) -> anyhow::Result<Vec<Arc<TlsListener>>> {
    for l in &config.listen {
        let addr = &l.address;
        std::net::TcpListener::bind(addr.as_str())
            .map_err(|e| anyhow::anyhow!("listen `{addr}`: {e}"))?;
    }
    let tls = crate::gateway::tls_listen::load_listeners(config).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("{}", lines.join("\n"))
    })?;
    if let Some(m) = metrics() {
        for l in &tls {
            m.tls_loaded(l.address(), l.resolver().current().not_after);
        }
    }
    Ok(tls)
}

/// The proxy application over the config's upstreams.
fn gateway(
    config: &Config,
    table: Arc<RouteTable>,
    store: KeyStore,
    in_flight: Arc<AtomicUsize>,
    counters: Arc<dyn crate::state::CounterStore>,
) -> anyhow::Result<Gateway> {
    let completions = Upstream::from_config("completions", &config.upstreams.completions)?;
    let admin = Upstream::from_config("admin", &config.upstreams.admin)?;
    Ok(Gateway::new(
        table,
        store,
        completions,
        admin,
        config.max_inspect_body_bytes,
        in_flight,
        crate::gateway::proxy::Spending {
            counters,
            max_data_body: config.max_data_body_bytes,
            inject_stream_usage: config.inject_stream_usage,
            body_read_timeout_ms: config.body_read_timeout_ms,
            default_output_reservation: config.default_output_reservation,
        },
    ))
}

/// The listening service: pingora listens on plain TCP everywhere; the app
/// takes each connection's slot under `max_client_connections` first and
/// does the TLS handshake of an HTTPS listener itself, within
/// `header_read_timeout_ms`.
fn proxy_service(
    server: &Server,
    config: &Config,
    gateway: Gateway,
    tls: &[Arc<TlsListener>],
) -> anyhow::Result<
    pingora::services::listening::Service<GuardedApp<pingora::proxy::HttpProxy<Gateway>>>,
> {
    let mut gates = Vec::with_capacity(config.listen.len());
    for l in &config.listen {
        let address = l
            .address
            .parse()
            .map_err(|e| anyhow::anyhow!("listen `{}`: {e}", l.address))?;
        let tls = match tls.iter().find(|t| t.address() == l.address) {
            Some(t) => Some(Arc::new(t.settings()?.build())),
            None => None,
        };
        gates.push(ListenerGate {
            address,
            label: l.address.clone(),
            tls,
        });
    }
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let mut http = pingora::proxy::http_proxy(&server.configuration, gateway);
    let mut options = HttpServerOptions::default();
    // An HTTP/2 connection with no open stream closes after idle_timeout_ms.
    options.h2_idle_timeout = Some(idle);
    http.server_options = Some(options);
    let app = GuardedApp::new(
        http,
        Deadlines {
            header: Duration::from_millis(config.header_read_timeout_ms),
            idle,
        },
        ConnLimit::new(config.max_client_connections),
        gates,
    );
    let mut proxy = pingora::services::listening::Service::new("scopegate proxy".to_string(), app);
    for l in &config.listen {
        proxy.add_tcp(&l.address);
    }
    Ok(proxy)
}

/// What the background services are made of.
struct Background {
    reloader: Reloader,
    tokens: Arc<TokenKeys>,
    tls: Vec<Arc<TlsListener>>,
    metrics_listener: Option<MetricsListener>,
    drain: Drain,
}

/// The background services, each named and on a runtime of its own: the
/// file watcher (keys file, its JWK set files, certificate pairs), the
/// readiness probe (after the watcher: a SIGHUP sent once `/readyz` says 200
/// must reach it), the metrics listener, the drain, and the fetches of the
/// identity providers' `jwks_url`s.
fn add_background_services(
    server: &mut Server,
    config: &Config,
    bg: Background,
) -> anyhow::Result<()> {
    let watcher = Watcher::new(config.reload_poll_interval_ms)
        .map_err(|e| anyhow::anyhow!("cannot catch SIGHUP: {e}"))?;
    let reloader = bg.reloader;
    watcher.register(reloader.jwks_files());
    watcher.register(Box::new(reloader));
    if !bg.tls.is_empty() {
        watcher.register(Box::new(CertPairs::new(bg.tls.clone())));
    }
    let watch = server.add_service(background_service("watch", watcher));
    let probe_targets = config
        .listen
        .iter()
        .map(|l| {
            let tls = bg.tls.iter().find(|t| t.address() == l.address).cloned();
            (l.address.clone(), tls)
        })
        .collect();
    let ready = server.add_service(background_service("ready", Readiness::new(probe_targets)));
    ready.add_dependency(&watch);
    if let Some(m) = bg.metrics_listener {
        server.add_service(background_service("metrics", m));
    }
    server.add_service(background_service("drain", bg.drain));
    server.add_service(background_service("jwks", JwksService(bg.tokens)));
    Ok(())
}

/// Every client connection is a file descriptor, and so is every upstream
/// connection of a request in flight: `max_client_connections` protects the
/// proxy only below the open-file limit. Raises the soft limit to the hard
/// one (the soft default, often 1024, is for `select()`, which is not used
/// here) and warns when the limit leaves less than one upstream connection
/// per client connection.
fn check_open_file_limit(max_client_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; only the soft limit changes.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    let limit: u64 = lim.rlim_cur;
    let needed = (max_client_connections as u64).saturating_mul(2);
    if limit < needed {
        tracing::warn!(
            open_file_limit = limit,
            max_client_connections,
            "the open-file limit is below twice max_client_connections: clients could use up \
             the file descriptors upstream connections need; raise the limit (ulimit -n, \
             LimitNOFILE) or lower max_client_connections"
        );
    }
}

/// The counter store of `state` (the reference on limits shared by replicas).
///
/// # Errors
/// The state file cannot be opened (corrupt, locked by another scopegate,
/// unwritable folder) or the Redis URL is invalid.
pub fn open_counters(config: &Config) -> anyhow::Result<Arc<dyn crate::state::CounterStore>> {
    use crate::state::{LocalStore, OnError, RedisConfig, RedisStore};
    match &config.state.redis {
        None => {
            let store = LocalStore::open(&config.state.path).map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(Arc::new(store))
        }
        Some(r) => {
            let mut cfg = RedisConfig::new(r.url.clone());
            cfg.timeout = Duration::from_millis(r.timeout_ms);
            cfg.on_error = if r.deny_on_error {
                OnError::Deny
            } else {
                OnError::Allow
            };
            cfg.key_prefix = r.key_prefix.clone();
            // For the e2e tests only (not a user setting): a short lease, so
            // a killed replica's slots free in seconds, renewed 3× per lease.
            if let Some(ms) = std::env::var("SCOPEGATE_TEST_LEASE_MS")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|ms| *ms >= 100)
            {
                cfg.lease = Duration::from_millis(ms);
                cfg.renew_every = Duration::from_millis(ms / 3);
            }
            let store = RedisStore::open(cfg, Arc::new(crate::ops::metrics::StateMetricsSink))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(Arc::new(store))
        }
    }
}
