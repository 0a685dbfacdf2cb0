//! Live reload of the keys file (SPEC 6).
//!
//! Three triggers feed one loop on a thread of its own: filesystem events
//! on the keys file's folder (so atomic renames, in-place rewrites and
//! Kubernetes ConfigMap symlink swaps are all seen), SIGHUP, and a content
//! poll. A reload parses and validates the whole file off the request path,
//! then swaps the snapshot in atomically; any failure leaves the last good
//! snapshot in force and is logged with its position and counted.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::keys::KeyStore;
use crate::metrics::metrics;
use crate::routes::RouteTable;

/// Why a reload was attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// Something changed in the folder.
    FsEvent,
    /// SIGHUP: reload even if the content looks the same.
    Signal,
}

/// Quiet time that ends a burst of filesystem events.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest a burst may postpone a reload.
const DEBOUNCE_MAX: Duration = Duration::from_millis(500);

/// Watches the keys file and swaps new snapshots into the store.
pub struct Reloader {
    path: PathBuf,
    table: Arc<RouteTable>,
    store: KeyStore,
    poll: Duration,
}

impl Reloader {
    /// A reloader for `path`, polling every `poll_ms`.
    pub fn new(path: PathBuf, table: Arc<RouteTable>, store: KeyStore, poll_ms: u64) -> Reloader {
        Reloader {
            path,
            table,
            store,
            poll: Duration::from_millis(poll_ms.max(10)),
        }
    }

    /// Starts the watcher, the SIGHUP listener and the reload loop.
    ///
    /// # Errors
    /// When the threads cannot be started. A folder that cannot be watched
    /// only logs a warning: polling and SIGHUP still work.
    pub fn spawn(self) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel::<Trigger>();

        let watcher = {
            let tx = tx.clone();
            let dir = self
                .path
                .parent()
                .map(Path::to_path_buf)
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from("."));
            let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    if !matches!(ev.kind, notify::EventKind::Access(_)) {
                        let _ = tx.send(Trigger::FsEvent);
                    }
                }
            });
            match watcher {
                Ok(mut w) => {
                    use notify::Watcher as _;
                    match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                        Ok(()) => Some(w),
                        Err(e) => {
                            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the keys folder; relying on polling and SIGHUP");
                            None
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no filesystem watcher; relying on polling and SIGHUP");
                    None
                }
            }
        };

        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
        std::thread::Builder::new()
            .name("scopegate-sighup".into())
            .spawn(move || {
                for _ in signals.forever() {
                    if tx.send(Trigger::Signal).is_err() {
                        return;
                    }
                }
            })?;

        std::thread::Builder::new()
            .name("scopegate-reload".into())
            .spawn(move || {
                let _watcher = watcher;
                self.run(rx);
            })?;
        Ok(())
    }

    fn run(self, rx: mpsc::Receiver<Trigger>) {
        let mut last_seen = read_fingerprint(&self.path);
        let mut next_poll = Instant::now() + self.poll;
        loop {
            let wait = next_poll.saturating_duration_since(Instant::now());
            let trigger = match rx.recv_timeout(wait) {
                Ok(t) => Some(debounce(&rx, t)),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if trigger.is_none() {
                next_poll = Instant::now() + self.poll;
            }
            let now_seen = read_fingerprint(&self.path);
            let changed = now_seen != last_seen;
            if trigger == Some(Trigger::Signal) || changed {
                self.reload(trigger);
                last_seen = now_seen;
            }
        }
    }

    fn reload(&self, trigger: Option<Trigger>) {
        let started = Instant::now();
        let previous = self.store.load();
        let result = crate::server::load_keys(&self.path, &self.table, Some(&previous));
        let how = match trigger {
            Some(Trigger::Signal) => "sighup",
            Some(Trigger::FsEvent) => "fs-event",
            None => "poll",
        };
        match result {
            Ok(snap) => {
                let keys = snap.keys().len();
                // The old snapshot goes when the last request holding it ends.
                drop(self.store.swap(snap));
                crate::keys::release_freed_memory();
                // Count only once the new keys are in force, so a reader
                // of the counter never sees the old keys afterwards.
                if let Some(m) = metrics() {
                    m.keys_loaded(&self.store.load());
                }
                tracing::info!(
                    trigger = how,
                    keys,
                    took_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "keys reloaded"
                );
            }
            Err(problems) => {
                if let Some(m) = metrics() {
                    m.keys_load_failed();
                }
                for p in &problems {
                    tracing::error!(trigger = how, problem = %p, "keys reload rejected; the last good keys stay in force");
                }
            }
        }
    }
}

/// Collects the rest of a burst of triggers; a signal in the burst wins.
fn debounce(rx: &mpsc::Receiver<Trigger>, first: Trigger) -> Trigger {
    let start = Instant::now();
    let mut t = first;
    while start.elapsed() < DEBOUNCE_MAX {
        match rx.recv_timeout(DEBOUNCE) {
            Ok(next) => {
                if next == Trigger::Signal {
                    t = Trigger::Signal;
                }
            }
            Err(_) => break,
        }
    }
    t
}

/// What the file holds now (through symlinks), or that it cannot be read.
fn read_fingerprint(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| crate::keys::digest(&b))
}
