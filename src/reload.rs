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
/// How often a poll reads the content even when `stat` says nothing moved.
const FULL_CHECK: Duration = Duration::from_secs(60);

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
        let mut detector = ChangeDetector::new(&self.path, FULL_CHECK);
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
            // An event or a signal always reads the content; a timed poll
            // reads it only when `stat` moved (or a minute has passed).
            let changed = detector.changed(&self.path, trigger.is_some());
            if trigger == Some(Trigger::Signal) || changed {
                self.reload(trigger);
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

/// Tells whether the keys file's content changed since it last looked.
///
/// Hashing the whole file on every poll is not free: 18 MB at 100,000 keys
/// cost ~2 % of a core at the default 1 s poll. So a poll first compares
/// what `stat` says (device, inode, size, mtime, ctime — through symlinks,
/// so a ConfigMap swap moves it) and reads the content only when that moved
/// on this poll or the one before. The second look catches a same-size
/// rewrite inside the timestamp tick of the write before it: a tick (at most
/// 10 ms on Linux) is shorter than the shortest poll interval (50 ms). On
/// filesystems with coarser timestamps the content is also read whenever
/// `full_check` has passed since the last read.
struct ChangeDetector {
    stamp: Option<Stamp>,
    moved_last_poll: bool,
    digest: Option<[u8; 32]>,
    read_at: Instant,
    full_check: Duration,
}

/// The cheap part of a file's identity and state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl ChangeDetector {
    fn new(path: &Path, full_check: Duration) -> ChangeDetector {
        ChangeDetector {
            stamp: read_stamp(path),
            moved_last_poll: false,
            digest: read_fingerprint(path),
            read_at: Instant::now(),
            full_check,
        }
    }

    /// Whether the content differs from the last look. `thorough` reads the
    /// content whatever `stat` says.
    fn changed(&mut self, path: &Path, thorough: bool) -> bool {
        // stat before reading: a write in between moves the next stamp.
        let stamp = read_stamp(path);
        let moved = stamp != self.stamp;
        let second_look = std::mem::replace(&mut self.moved_last_poll, moved);
        self.stamp = stamp;
        if !thorough && !moved && !second_look && self.read_at.elapsed() < self.full_check {
            return false;
        }
        self.read_at = Instant::now();
        let digest = read_fingerprint(path);
        let changed = digest != self.digest;
        self.digest = digest;
        changed
    }
}

fn read_stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// What the file holds now (through symlinks), or that it cannot be read.
fn read_fingerprint(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| crate::keys::digest(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write test file");
    }

    #[test]
    fn a_poll_sees_a_rewrite_and_not_an_untouched_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        write(&path, "keys: []\n");
        let mut d = ChangeDetector::new(&path, Duration::from_secs(3600));
        assert!(!d.changed(&path, false), "nothing was written");
        write(&path, "keys: [] # a longer file\n");
        assert!(
            d.changed(&path, false),
            "a rewrite moves size, mtime and ctime"
        );
        assert!(!d.changed(&path, false), "seen once, not again");
    }

    #[test]
    fn the_same_bytes_written_again_are_no_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        write(&path, "keys: []\n");
        let mut d = ChangeDetector::new(&path, Duration::from_secs(3600));
        write(&path, "keys: []\n");
        assert!(
            !d.changed(&path, false),
            "stat moved but the content did not"
        );
        assert!(!d.changed(&path, true));
    }

    #[test]
    fn a_file_that_appears_or_goes_is_a_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        let mut d = ChangeDetector::new(&path, Duration::from_secs(3600));
        assert!(!d.changed(&path, false), "still missing");
        write(&path, "keys: []\n");
        assert!(d.changed(&path, false), "appeared");
        std::fs::remove_file(&path).expect("remove");
        assert!(d.changed(&path, false), "gone");
    }

    #[test]
    fn an_unmoved_stamp_still_gets_a_full_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        write(&path, "keys: []\n");
        // A rewrite stat cannot see, simulated: the detector's stamp is
        // taken after the rewrite, its digest before.
        let mut stale = ChangeDetector::new(&path, Duration::from_secs(3600));
        write(&path, "keys: [a]\n");
        stale.stamp = read_stamp(&path);
        assert!(!stale.changed(&path, false), "stat alone cannot tell");
        assert!(
            stale.changed(&path, true),
            "an event or a signal reads the content"
        );

        // The poll after a move looks again.
        let mut second = ChangeDetector::new(&path, Duration::from_secs(3600));
        write(&path, "keys: [c]\n");
        second.stamp = read_stamp(&path);
        second.moved_last_poll = true;
        assert!(
            second.changed(&path, false),
            "the second look reads the content"
        );
        assert!(!second.changed(&path, false), "and then stat decides again");

        let mut checked = ChangeDetector::new(&path, Duration::ZERO);
        write(&path, "keys: [b]\n");
        checked.stamp = read_stamp(&path);
        assert!(
            checked.changed(&path, false),
            "the full check reads the content"
        );
    }
}
