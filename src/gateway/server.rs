//! Wiring: load and check everything, then run pingora with the gateway,
//! the metrics listener, the keys reloader and graceful shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::config::{Config, LogFormat};
use crate::decision::routes::RouteTable;
use crate::gateway::conn_guard::{ConnLimit, Deadlines, GuardedApp, ListenerGate};
use crate::gateway::proxy::{Gateway, Upstream};
use crate::gateway::tls_listen::{CertWatcher, TlsListener};
use crate::identity::keys::{self, KeyStore};
use crate::ops::metrics::metrics;
use crate::ops::reload::Reloader;

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
    // First, so that a SIGTERM at any moment from here on drains and exits 0.
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Usage must survive restarts: a state file that cannot be used stops
    // the start, naming the file, rather than counting into the void.
    let counters = open_counters(&config)?;
    spawn_shutdown_watch(
        in_flight.clone(),
        Duration::from_secs(config.shutdown_grace_period_seconds),
        counters.clone(),
    );
    // The start-up load's text and document are garbage now.
    keys::release_freed_memory();
    let table = Arc::new(table);
    let m = metrics();
    if let Some(m) = m {
        m.keys_loaded(&store.load());
    }
    if let Some(addr) = &config.metrics_listen {
        let addr = addr
            .parse()
            .map_err(|e| anyhow::anyhow!("metrics_listen `{addr}`: {e}"))?;
        crate::ops::metrics::spawn_listener(addr)
            .map_err(|e| anyhow::anyhow!("metrics_listen `{addr}`: {e}"))?;
    }
    // pingora binds its listeners later, on a service thread that panics on
    // failure and leaves the process running without them. Fail here first,
    // with the address in the message, while exiting non-zero still means
    // something.
    for l in &config.listen {
        let addr = &l.address;
        std::net::TcpListener::bind(addr.as_str())
            .map_err(|e| anyhow::anyhow!("listen `{addr}`: {e}"))?;
    }
    let tls = crate::gateway::tls_listen::load_listeners(&config).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("{}", lines.join("\n"))
    })?;
    if let Some(m) = m {
        for l in &tls {
            m.tls_loaded(l.address(), l.resolver().current().not_after);
        }
    }
    check_open_file_limit(config.max_client_connections);
    let completions = Upstream::from_config("completions", &config.upstreams.completions)?;
    let admin = Upstream::from_config("admin", &config.upstreams.admin)?;
    let gateway = Gateway::new(
        table.clone(),
        store.clone(),
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
    );

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
    let tls_of = |address: &str| tls.iter().find(|t| t.address() == address).cloned();
    // pingora listens on plain TCP everywhere: the app takes each
    // connection's slot under max_client_connections first and does the TLS
    // handshake of an HTTPS listener itself, within header_read_timeout_ms.
    let mut gates = Vec::with_capacity(config.listen.len());
    for l in &config.listen {
        let address = l
            .address
            .parse()
            .map_err(|e| anyhow::anyhow!("listen `{}`: {e}", l.address))?;
        let tls = match tls_of(&l.address) {
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
    server.add_service(proxy);

    Reloader::new(
        config.keys_file.clone(),
        table,
        store,
        config.reload_poll_interval_ms,
    )
    .spawn()?;
    let probe_targets = config
        .listen
        .iter()
        .map(|l| (l.address.clone(), tls_of(&l.address)))
        .collect();
    // Before readiness: a SIGHUP sent once `/readyz` says 200 must reach it.
    CertWatcher::new(tls, config.reload_poll_interval_ms).spawn()?;
    spawn_readiness_probe(probe_targets);

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
    server.run_forever()
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

/// `/readyz` turns 200 only once every proxy listener answers, and answers
/// as this process: the probe carries a per-process token the proxy
/// recognises (pingora binds its listeners inside `run_forever`, and a port
/// someone else holds would otherwise look ready). A TLS listener answers as
/// this process when its handshake presents the certificate it is serving.
fn spawn_readiness_probe(listen: Vec<(String, Option<Arc<TlsListener>>)>) {
    let _ = std::thread::Builder::new()
        .name("scopegate-ready".into())
        .spawn(move || {
            let targets: Vec<(std::net::SocketAddr, Option<Arc<TlsListener>>)> = listen
                .into_iter()
                .filter_map(|(a, tls)| {
                    use std::net::ToSocketAddrs as _;
                    let addr = a.to_socket_addrs().ok().and_then(|mut it| it.next())?;
                    Some((addr, tls))
                })
                .map(|(mut a, tls)| {
                    if a.ip().is_unspecified() {
                        a.set_ip(if a.is_ipv4() {
                            std::net::Ipv4Addr::LOCALHOST.into()
                        } else {
                            std::net::Ipv6Addr::LOCALHOST.into()
                        });
                    }
                    (a, tls)
                })
                .collect();
            let start = Instant::now();
            loop {
                let all = targets.iter().all(|(addr, tls)| match tls {
                    Some(tls) => tls.answers_as_this_process(addr),
                    None => answers_as_this_process(addr),
                });
                if all {
                    if let Some(m) = metrics() {
                        m.listening.store(true, Ordering::Release);
                    }
                    tracing::info!(
                        after_ms = start.elapsed().as_millis() as u64,
                        "proxy listeners answer: ready"
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
}

fn answers_as_this_process(addr: &std::net::SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(addr, Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let request = format!(
        "GET / HTTP/1.1\r\nHost: probe\r\n{}: {}\r\nConnection: close\r\n\r\n",
        crate::gateway::proxy::PROBE_HEADER,
        crate::gateway::proxy::probe_token()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 204"
}

/// The counter store of `state` (SPEC 10).
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

/// pingora's graceful shutdown always waits the whole grace period; exit as
/// soon as the in-flight requests are done instead (or when it runs out).
fn spawn_shutdown_watch(
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    grace: Duration,
    counters: Arc<dyn crate::state::CounterStore>,
) {
    let signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM]);
    let Ok(mut signals) = signals else {
        tracing::warn!("cannot watch SIGTERM; relying on pingora's grace period");
        return;
    };
    let _ = std::thread::Builder::new()
        .name("scopegate-shutdown".into())
        .spawn(move || {
            if signals.forever().next().is_none() {
                return;
            }
            tracing::info!(
                grace_s = grace.as_secs(),
                "SIGTERM: draining in-flight requests"
            );
            let start = Instant::now();
            // Let pingora stop its listeners first.
            std::thread::sleep(Duration::from_millis(50));
            while in_flight.load(Ordering::Acquire) > 0 && start.elapsed() < grace {
                std::thread::sleep(Duration::from_millis(10));
            }
            let left = in_flight.load(Ordering::Acquire);
            // Every finished request has settled; write the usage now.
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(counters.flush());
            }
            tracing::info!(left, "shutdown complete");
            std::process::exit(0);
        });
}
