//! The server's own background services and its shutdown signals:
//! readiness (`/readyz` turns 200 once the listeners answer as this
//! process), the drain that exits as soon as the last in-flight request
//! ends, and the signals that start a shutdown. Each runs as a named pingora
//! background service on a runtime of its own and stops with the server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;

use crate::gateway::tls_listen::TlsListener;
use crate::ops::metrics::metrics;
use crate::ops::signals::SignalPipe;
use crate::state::CounterStore;

/// SIGTERM (drain, then exit), SIGINT (exit now) and SIGQUIT (hand the
/// listeners over, then drain), caught from [`ShutdownSignals::register`]
/// on: a SIGTERM at any moment after it drains and exits 0. pingora's
/// server loop reads them through [`ShutdownSignalWatch`].
pub struct ShutdownSignals {
    term: Mutex<Option<SignalPipe>>,
    int: Mutex<Option<SignalPipe>>,
    quit: Mutex<Option<SignalPipe>>,
}

impl ShutdownSignals {
    /// Catches the three signals from now on.
    ///
    /// # Errors
    /// When a handler cannot be set up.
    pub fn register() -> std::io::Result<ShutdownSignals> {
        let pipe = |s| SignalPipe::register(s).map(|p| Mutex::new(Some(p)));
        Ok(ShutdownSignals {
            term: pipe(libc::SIGTERM)?,
            int: pipe(libc::SIGINT)?,
            quit: pipe(libc::SIGQUIT)?,
        })
    }
}

/// The next delivery on `pipe`; never when there is none (or it failed).
async fn delivered(pipe: Option<SignalPipe>) {
    if let Some(mut p) = pipe {
        if p.recv().await.is_ok() {
            return;
        }
        tracing::warn!("a shutdown signal can no longer be read");
    }
    std::future::pending::<()>().await;
}

#[async_trait]
impl ShutdownSignalWatch for ShutdownSignals {
    async fn recv(&self) -> ShutdownSignal {
        let (term, int, quit) = (
            self.term.lock().take(),
            self.int.lock().take(),
            self.quit.lock().take(),
        );
        tokio::select! {
            () = delivered(quit) => ShutdownSignal::GracefulUpgrade,
            () = delivered(term) => ShutdownSignal::GracefulTerminate,
            () = delivered(int) => ShutdownSignal::FastShutdown,
        }
    }
}

/// pingora's graceful shutdown always waits the whole grace period; this
/// exits as soon as the in-flight requests are done instead (or when it
/// runs out), once the counters have written what the finished requests
/// settled and the queued trace spans had their 2 s to leave.
pub struct Drain {
    /// Requests in flight (the gateway counts them).
    pub in_flight: Arc<AtomicUsize>,
    /// `shutdown_grace_period_seconds`.
    pub grace: Duration,
    /// Flushed before the exit.
    pub counters: Arc<dyn CounterStore>,
    /// The trace pipeline, flushed for at most 2 s before the exit.
    pub traces: Option<crate::ops::traces::Traces>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        tracing::info!(
            grace_s = self.grace.as_secs(),
            "SIGTERM: draining in-flight requests"
        );
        if let Some(m) = crate::ops::metrics::metrics() {
            m.draining.store(true, Ordering::Release);
        }
        let start = Instant::now();
        // Let pingora stop its listeners first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while self.in_flight.load(Ordering::Acquire) > 0 && start.elapsed() < self.grace {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.in_flight.load(Ordering::Acquire);
        // Every finished request has settled; write the usage now.
        self.counters.flush().await;
        if let Some(traces) = self.traces.clone() {
            // Blocks up to 2 s: off this runtime's thread.
            let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        }
        tracing::info!(left, "shutdown complete");
        std::process::exit(0);
    }
}

/// `/readyz` turns 200 only once every proxy listener answers, and answers
/// as this process: the probe carries a per-process token the proxy
/// recognises (pingora binds its listeners as its services start, and a
/// port someone else holds would otherwise look ready). A TLS listener
/// answers as this process when its handshake presents the certificate it
/// is serving. It starts after the file watcher is ready, so a SIGHUP sent
/// once `/readyz` says 200 reaches the watcher.
pub struct Readiness {
    targets: Vec<(SocketAddr, Option<Arc<TlsListener>>)>,
}

impl Readiness {
    /// Probes the listeners at `listen` (addresses as configured, with the
    /// TLS listener of each HTTPS one).
    pub fn new(listen: Vec<(String, Option<Arc<TlsListener>>)>) -> Readiness {
        let targets = listen
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
        Readiness { targets }
    }

    /// Whether every listener answers as this process (blocking probes).
    fn all_answer(&self) -> bool {
        self.targets.iter().all(|(addr, tls)| match tls {
            Some(tls) => tls.answers_as_this_process(addr),
            None => answers_as_this_process(addr),
        })
    }
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let start = Instant::now();
        loop {
            // The probes block (connect and read timeouts, TLS handshakes):
            // this service's runtime is its own.
            if self.all_answer() {
                if let Some(m) = metrics() {
                    m.listening.store(true, Ordering::Release);
                }
                tracing::info!(
                    after_ms = start.elapsed().as_millis() as u64,
                    "proxy listeners answer: ready"
                );
                return;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }
}

fn answers_as_this_process(addr: &SocketAddr) -> bool {
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
