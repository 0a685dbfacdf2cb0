//! ONE watcher for every file scopegate reloads while it runs: the keys
//! file and the JWK set files it names ([`super::reload`]), the TLS
//! listeners' certificate pairs (registered by the gateway). It knows
//! nothing of what it watches: each caller registers a [`Watched`] that
//! names its folders, says which filesystem events concern it, and does the
//! looking and reloading.
//!
//! Three triggers feed one loop: filesystem events in the folders (so
//! atomic renames, in-place rewrites and Kubernetes ConfigMap/Secret symlink
//! swaps are all seen), SIGHUP (caught from [`Watcher::new`] on, so a SIGHUP
//! never ends the process), and a poll every `reload_poll_interval_ms`.
//! A burst of triggers is collected first; a SIGHUP in it wins. The loop
//! runs as the pingora background service "watch" (thread "BG watch"), on a runtime
//! of its own (a reload of a large keys file blocks only it), and stops
//! with the server.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::sync::mpsc;

use super::signals::SignalPipe;

/// Quiet time that ends a burst of triggers.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest a burst may postpone a look.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(500);

/// Why a watched set of files is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A filesystem event that concerns it.
    FsEvent,
    /// SIGHUP: reload even if the content looks the same.
    Signal,
    /// The poll, or the time it asked to be looked at again.
    Poll,
}

impl Trigger {
    /// The label in logs: `fs-event`, `sighup`, `poll`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FsEvent => "fs-event",
            Trigger::Signal => "sighup",
            Trigger::Poll => "poll",
        }
    }
}

/// Files the watcher looks after, and what a look does.
pub trait Watched: Send {
    /// The folders whose events may concern it (asked again after every
    /// look: a reload may name new files).
    fn folders(&self) -> Vec<PathBuf>;
    /// Whether an event on `paths` (in one of the watched folders) may have
    /// changed its files. An event that names no path concerns everyone.
    fn concerns(&self, paths: &[PathBuf]) -> bool;
    /// Looks at the files and reloads what changed. Returns how soon it
    /// wants another look regardless of the poll (a content written in
    /// place, waiting to settle), if it does.
    fn look(&mut self, trigger: Trigger) -> Option<Duration>;
}

/// The folder a file's events arrive in.
pub fn folder_of(file: &Path) -> PathBuf {
    file.parent()
        .map(Path::to_path_buf)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Whether an event on `paths` happened in (or to) one of `folders`.
pub fn in_folders(paths: &[PathBuf], folders: &[PathBuf]) -> bool {
    paths.is_empty()
        || paths.iter().any(|p| {
            folders
                .iter()
                .any(|f| p == f || p.parent().is_some_and(|parent| parent == f))
        })
}

struct Entry {
    watched: Box<dyn Watched>,
    /// When it asked to be looked at again.
    due: Option<Instant>,
}

/// The watcher: register what to watch, then hand it to pingora as a
/// background service.
pub struct Watcher {
    poll: Duration,
    entries: Mutex<Vec<Entry>>,
    sighup: Mutex<Option<SignalPipe>>,
}

impl Watcher {
    /// A watcher polling every `poll_ms`; SIGHUP is caught from now on.
    ///
    /// # Errors
    /// When the SIGHUP handler cannot be set up.
    pub fn new(poll_ms: u64) -> std::io::Result<Watcher> {
        Ok(Watcher {
            poll: Duration::from_millis(poll_ms.max(10)),
            entries: Mutex::new(Vec::new()),
            sighup: Mutex::new(Some(SignalPipe::register(libc::SIGHUP)?)),
        })
    }

    /// Adds a set of files to watch.
    pub fn register(&self, watched: Box<dyn Watched>) {
        self.entries.lock().push(Entry { watched, due: None });
    }

    /// Runs the loop until `shutdown`; `ready` is told once the folders are
    /// watched.
    async fn run(&self, mut shutdown: ShutdownWatch, ready: ServiceReadyNotifier) {
        lower_thread_priority();
        let mut entries = std::mem::take(&mut *self.entries.lock());
        let mut sighup = self.sighup.lock().take();
        let (tx, mut events) = mpsc::unbounded_channel::<Vec<PathBuf>>();
        let mut folders = Folders::new(tx);
        folders.watch(entries.iter().flat_map(|e| e.watched.folders()));
        ready.notify_ready();
        let mut next_poll = Instant::now() + self.poll;
        loop {
            let wake = entries
                .iter()
                .filter_map(|e| e.due)
                .fold(next_poll, Instant::min);
            let mut burst = Burst::default();
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(paths) = events.recv() => burst.paths.push(paths),
                Some(()) = next_signal(&mut sighup) => burst.signal = true,
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            if burst.any() {
                burst.collect(&mut events, &mut sighup).await;
            }
            let now = Instant::now();
            let poll_due = now >= next_poll;
            if poll_due {
                next_poll = now + self.poll;
            }
            for e in &mut entries {
                let trigger = if burst.signal {
                    Trigger::Signal
                } else if burst.paths.iter().any(|p| e.watched.concerns(p)) {
                    Trigger::FsEvent
                } else if poll_due || e.due.is_some_and(|d| now >= d) {
                    Trigger::Poll
                } else {
                    continue;
                };
                e.due = e.watched.look(trigger).map(|d| Instant::now() + d);
            }
            folders.watch(entries.iter().flat_map(|e| e.watched.folders()));
        }
    }
}

#[async_trait]
impl BackgroundService for Watcher {
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready_notifier: ServiceReadyNotifier,
    ) {
        self.run(shutdown, ready_notifier).await;
    }
}

/// Reloads are background work: this service's one thread ("BG watch")
/// runs at nice [`WATCH_NICE`], and hands a reload's heavy steps to an
/// idle-class thread (`ops::idle`); a step it takes back from that thread
/// (on a core the requests keep busy) runs here, where the scheduler gives a
/// request thread sharing the core about nine tenths of it. Raising a nice
/// value needs no privilege; a failure is logged and the thread keeps its
/// priority.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread's own id, no memory
        // passed. On Linux, PRIO_PROCESS with a thread id sets that one
        // thread's nice value (setpriority(2), NOTES).
        let tid = unsafe { libc::gettid() } as libc::id_t;
        // Never raise it: a proxy started niced further keeps that.
        let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        if current >= WATCH_NICE {
            return;
        }
        let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, WATCH_NICE) };
        if set != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not lower the reload thread's priority"
            );
        }
    }
}

/// The nice value of the watcher's thread (0 is the default; 19 the lowest).
const WATCH_NICE: libc::c_int = 10;

/// The next SIGHUP; never, without a handler (or once it failed).
async fn next_signal(pipe: &mut Option<SignalPipe>) -> Option<()> {
    match pipe {
        Some(p) => match p.recv().await {
            Ok(()) => Some(()),
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP can no longer be read; relying on events and polling");
                *pipe = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// The triggers of one burst.
#[derive(Default)]
struct Burst {
    signal: bool,
    paths: Vec<Vec<PathBuf>>,
}

impl Burst {
    fn any(&self) -> bool {
        self.signal || !self.paths.is_empty()
    }

    /// Collects the rest of the burst: until [`DEBOUNCE`] passes quietly,
    /// at most [`DEBOUNCE_MAX`].
    async fn collect(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Vec<PathBuf>>,
        sighup: &mut Option<SignalPipe>,
    ) {
        let start = Instant::now();
        while start.elapsed() < DEBOUNCE_MAX {
            tokio::select! {
                Some(paths) = events.recv() => self.paths.push(paths),
                Some(()) = next_signal(sighup) => self.signal = true,
                () = tokio::time::sleep(DEBOUNCE) => break,
            }
        }
    }
}

/// The filesystem watcher and the folders it watches.
struct Folders {
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
}

impl Folders {
    fn new(tx: mpsc::UnboundedSender<Vec<PathBuf>>) -> Folders {
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                if !matches!(ev.kind, notify::EventKind::Access(_)) {
                    let _ = tx.send(ev.paths);
                }
            }
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "no filesystem watcher; relying on polling and SIGHUP");
                None
            }
        };
        Folders {
            watcher,
            watched: HashSet::new(),
        }
    }

    /// Watches every folder of `folders` not watched yet.
    fn watch(&mut self, folders: impl Iterator<Item = PathBuf>) {
        use notify::Watcher as _;
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for dir in folders {
            if self.watched.contains(&dir) {
                continue;
            }
            if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a folder; relying on polling and SIGHUP");
            }
            // Tried once: a folder that cannot be watched is polled.
            self.watched.insert(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_watcher_thread_runs_niced_and_only_itself() {
        let nice_of_this_thread =
            || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let before = nice_of_this_thread();
        let niced = std::thread::spawn(move || {
            lower_thread_priority();
            nice_of_this_thread()
        })
        .join()
        .expect("thread");
        assert_eq!(niced, before.max(WATCH_NICE));
        assert_eq!(nice_of_this_thread(), before, "other threads keep theirs");
    }

    #[test]
    fn events_concern_the_files_of_their_folders() {
        let folders = vec![PathBuf::from("/etc/tls"), PathBuf::from(".")];
        let p = |s: &str| vec![PathBuf::from(s)];
        assert!(in_folders(&p("/etc/tls/cert.pem"), &folders));
        assert!(in_folders(&p("/etc/tls"), &folders), "the folder itself");
        assert!(in_folders(&p("./key.pem"), &folders));
        assert!(in_folders(&[], &folders), "an event without paths");
        assert!(!in_folders(&p("/etc/other/cert.pem"), &folders));
    }

    #[test]
    fn a_file_without_a_folder_is_in_the_current_one() {
        assert_eq!(folder_of(Path::new("keys.yaml")), PathBuf::from("."));
        assert_eq!(folder_of(Path::new("/c/keys.yaml")), PathBuf::from("/c"));
    }
}
