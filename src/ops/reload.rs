//! Live reload of the keys file (docs/reference.md#live-reload), as one
//! [`Watched`] of the [`Watcher`](super::watch::Watcher), and of the JWK set
//! files the keys file names.
//!
//! A reload parses and validates the whole file off the request path, then
//! swaps the snapshot in atomically; any failure leaves the last good
//! snapshot in force and is logged with its position and counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::idle;
use super::watch::{folder_of, in_folders, Trigger, Watched};
use crate::decision::routes::RouteTable;
use crate::diag::Diagnostic;
use crate::identity::keys::{self, Digest, JwksSource, KeyStore, OrgIdx, Snapshot};
use crate::identity::token::files::{load_files, load_jwks_file};
use crate::identity::token::JwksSet;
use crate::ops::metrics::metrics;

/// Loads the keys file against the route table, and checks that every
/// custom scope an extra route needs is declared in `custom_scopes`.
///
/// # Errors
/// Every problem of the keys file.
pub fn load_keys(keys_file: &Path, table: &RouteTable) -> Result<Snapshot, Vec<Diagnostic>> {
    let text = keys::read_keys_file(keys_file).map_err(|d| vec![d])?;
    load_keys_text(&text, keys_file, table)
}

/// [`load_keys`] for text already read from `keys_file` (the reloader
/// parses exactly the bytes it compared).
///
/// # Errors
/// Every problem of the keys file.
pub fn load_keys_text(
    text: &str,
    keys_file: &Path,
    table: &RouteTable,
) -> Result<Snapshot, Vec<Diagnostic>> {
    load_keys_text_digested(text, keys::digest(text.as_bytes()), keys_file, table)
}

/// [`load_keys_text`] for text whose SHA-256 the caller already has.
///
/// # Errors
/// Every problem of the keys file.
pub fn load_keys_text_digested(
    text: &str,
    text_digest: Digest,
    keys_file: &Path,
    table: &RouteTable,
) -> Result<Snapshot, Vec<Diagnostic>> {
    let snap = keys::parse_keys_str_digested(text, text_digest, keys_file, table.registry())?;
    let missing: Vec<Diagnostic> = table
        .custom_scopes()
        .filter(|s| !snap.custom_scopes().iter().any(|c| c == s))
        .map(|s| {
            Diagnostic::file(
                keys_file,
                format!("scope `{s}` is used by an extra route in the server config but is not listed in custom_scopes"),
            )
        })
        .collect();
    if missing.is_empty() {
        Ok(snap)
    } else {
        Err(missing)
    }
}

/// How often a poll reads the content even when `stat` says nothing moved.
const FULL_CHECK: Duration = Duration::from_secs(60);
/// A file changed less than this before a look may change again within the
/// same timestamp tick, invisibly to `stat` (Linux ticks are ≤ 10 ms; some
/// filesystems keep whole or even two seconds).
const RACY: Duration = Duration::from_secs(3);
/// How long a content written in place (same inode) must stay unchanged
/// before it is loaded: a writer that writes in several steps (two
/// `write()`s 1.2 s apart, say) must not have its half-written file loaded.
/// An atomic replacement (new inode: rename, ConfigMap symlink swap) and
/// SIGHUP load at once. Measured from the file's mtime, so the 2 s bound of
/// docs/reference.md#live-reload holds for in-place writers too.
pub const SETTLE: Duration = Duration::from_millis(1300);

/// The keys file, as the [`Watcher`](super::watch::Watcher) sees it: reads
/// it when it changed, swaps new snapshots into the store, and has the JWK
/// sets it names loaded again.
pub struct Reloader {
    path: PathBuf,
    table: Arc<RouteTable>,
    store: KeyStore,
    detector: ChangeDetector,
    /// The file's identity when the keys in force were read.
    loaded_identity: Option<(u64, u64)>,
    /// A content written in place, waiting to settle.
    pending: Option<Pending>,
    jwks: Arc<Mutex<JwksFiles>>,
}

impl Reloader {
    /// A reloader for the keys file at `path`, whose keys in force are
    /// `store`'s; its JWK set files are loaded now.
    pub fn new(path: PathBuf, table: Arc<RouteTable>, store: KeyStore) -> Reloader {
        // The digest of the text the keys in force were parsed from, so a
        // write between the start-up load and the first look is still a
        // change.
        let seed = store.load().source_digest().copied();
        let detector = ChangeDetector::new(seed, FULL_CHECK);
        let loaded_identity = detector.identity_now(&path);
        let mut jwks = JwksFiles {
            keys_file: path.clone(),
            store: store.clone(),
            sets: Arc::new(ArcSwap::from_pointee(JwksSets::new())),
            good: HashMap::new(),
            seen: None,
        };
        jwks.load(None, "start-up");
        Reloader {
            path,
            table,
            store,
            detector,
            loaded_identity,
            pending: None,
            jwks: Arc::new(Mutex::new(jwks)),
        }
    }

    /// The JWK sets of the `jwks_file`s of the keys in force, as last
    /// loaded (swapped whole on every reload).
    pub fn jwks_sets(&self) -> Arc<ArcSwap<JwksSets>> {
        self.jwks.lock().sets.clone()
    }

    /// What watches the JWK set files themselves: a change to one of them
    /// alone loads the sets again.
    pub fn jwks_files(&self) -> Box<dyn Watched> {
        Box::new(JwksWatch(self.jwks.clone()))
    }

    /// Parses `text`, the bytes the detector just compared, so what is
    /// loaded is what was seen (and the digest it compared is theirs: a
    /// pending text is loaded only once a look found it unchanged).
    fn reload(&self, trigger: Trigger, text: Result<String, Diagnostic>) {
        let started = Instant::now();
        let text = text.map(Arc::new).map_err(|d| vec![d]);
        let seen = self.detector.digest;
        let result = match &text {
            // Built on an idle-class thread, so that a request thread
            // sharing the core runs first (`idle`).
            Ok(text) => {
                let (text, path, table) = (text.clone(), self.path.clone(), self.table.clone());
                idle::at_idle(idle::START, idle::GRACE, move || match seen {
                    Some(d) => load_keys_text_digested(&text, d, &path, &table),
                    None => load_keys_text(&text, &path, &table),
                })
            }
            Err(problems) => Err(problems.clone()),
        };
        let how = trigger.as_str();
        match result {
            Ok(snap) => {
                let keys = snap.keys().len();
                // The old snapshot goes once the last request holding it
                // has ended, freed at idle priority rather than by that
                // request (`retire`).
                retire(self.store.swap(snap));
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
                // The organisations (and their files) may have changed.
                self.jwks
                    .lock()
                    .load(text.as_ref().ok().map(|t| t.as_str()), how);
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

impl Watched for Reloader {
    fn folders(&self) -> Vec<PathBuf> {
        vec![folder_of(&self.path)]
    }

    fn concerns(&self, paths: &[PathBuf]) -> bool {
        concerns_file_in(paths, &self.path)
    }

    fn look(&mut self, trigger: Trigger) -> Option<Duration> {
        // An event, a signal or a pending content always reads the
        // content; a timed poll reads it only when `stat` cannot vouch for
        // it.
        let thorough = trigger != Trigger::Poll || self.pending.is_some();
        if let Look::Read { changed, text } = self.detector.look(&self.path, thorough) {
            let identity = self.detector.identity();
            if trigger == Trigger::Signal || (changed && identity != self.loaded_identity) {
                // SIGHUP, or an atomic replacement: complete by construction.
                self.pending = None;
                self.loaded_identity = identity;
                self.reload(trigger, text);
            } else if changed {
                self.pending = Some(Pending {
                    text,
                    seen: Instant::now(),
                    written: self.detector.changed_at(),
                    trigger,
                });
            } else if self.pending.as_ref().is_some_and(Pending::ready) {
                if let Some(p) = self.pending.take() {
                    self.loaded_identity = identity;
                    self.reload(p.trigger, p.text);
                }
            }
        }
        self.pending.as_ref().map(Pending::ready_in)
    }
}

/// Frees a replaced snapshot once no request holds it any more: the
/// reloader's runtime waits for that, and the freeing itself (every key,
/// map and string of a 10,000-key file, several milliseconds) runs at idle
/// priority (`idle::drop_at_idle`), followed by handing the freed memory
/// back. A request that ended holding the last reference would otherwise
/// free the whole snapshot itself while requests queue behind it on its
/// thread (the p99 of a rewrite storm). Outside a runtime (tests, tools) it
/// is dropped at once, as before.
fn retire(old: Arc<Snapshot>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        drop(old);
        return;
    };
    if Arc::strong_count(&old) == 1 {
        idle::drop_at_idle(old, keys::release_freed_memory);
        return;
    }
    runtime.spawn(async move {
        // Most requests end within milliseconds; a stream or tunnel may
        // hold the snapshot for hours, so the checks slow down to one a
        // second.
        let mut wait = Duration::from_millis(10);
        while Arc::strong_count(&old) > 1 {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
        idle::drop_at_idle(old, keys::release_freed_memory);
    });
}

/// A content written in place that has not yet been unchanged for [`SETTLE`].
struct Pending {
    text: Result<String, Diagnostic>,
    /// When the reloader first read it.
    seen: Instant,
    /// When the file says it was written.
    written: Option<SystemTime>,
    trigger: Trigger,
}

impl Pending {
    /// Unchanged for [`SETTLE`]: since it was first read, or by its mtime.
    fn ready(&self) -> bool {
        self.ready_in().is_zero()
    }

    fn ready_in(&self) -> Duration {
        let by_seen = SETTLE.saturating_sub(self.seen.elapsed());
        let by_mtime = self
            .written
            .and_then(|w| SystemTime::now().duration_since(w).ok())
            .map_or(SETTLE, |age| SETTLE.saturating_sub(age));
        by_seen.min(by_mtime)
    }
}

/// The JWK sets of the organisations whose `identity_tokens` name a
/// `jwks_file`.
pub type JwksSets = HashMap<OrgIdx, Arc<JwksSet>>;

/// The `jwks_file`s of the keys in force: loaded at start, after every keys
/// reload, and when one of them changes. The sets are kept whole in an
/// `ArcSwap`; a file that fails to load leaves its last good set in force
/// (the others load).
pub(crate) struct JwksFiles {
    keys_file: PathBuf,
    store: KeyStore,
    sets: Arc<ArcSwap<JwksSets>>,
    /// The last good set of each file, by path.
    good: HashMap<PathBuf, Arc<JwksSet>>,
    /// Of the files' contents at the last look.
    seen: Option<Digest>,
}

impl JwksFiles {
    /// The files the keys in force name.
    fn files(&self) -> Vec<PathBuf> {
        self.store
            .load()
            .identity()
            .all()
            .filter_map(|s| match &s.jwks {
                JwksSource::File(path) => Some(path.clone()),
                JwksSource::Url { .. } => None,
            })
            .collect()
    }

    /// One digest over every file's path and content (or that it could not
    /// be read).
    fn digest(&self) -> Digest {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for path in self.files() {
            h.update(path.as_os_str().as_encoded_bytes());
            match std::fs::read(&path) {
                Ok(bytes) => {
                    h.update((bytes.len() as u64).to_le_bytes());
                    h.update(&bytes);
                }
                Err(_) => h.update(u64::MAX.to_le_bytes()),
            }
        }
        h.finalize().into()
    }

    /// Loads the sets of the keys in force. `keys_text`, when at hand,
    /// positions a problem at the field naming a file that cannot be read.
    fn load(&mut self, keys_text: Option<&str>, how: &str) {
        use crate::ops::tokens::token_metrics;
        self.seen = Some(self.digest());
        let snap = self.store.load();
        // Every problem, positioned (a file that cannot be read at the
        // field naming it), for the log.
        if let Err(problems) = load_files(&snap, &self.keys_file, keys_text.unwrap_or_default()) {
            for p in &problems {
                tracing::error!(trigger = how, problem = %p, "JWK set load rejected; that set's last good keys stay in force");
            }
        }
        let mut sets = JwksSets::new();
        let mut good = HashMap::new();
        for settings in snap.identity().all() {
            let JwksSource::File(path) = &settings.jwks else {
                continue;
            };
            let org = settings.organisation;
            let org_id = &snap.organisation(org).id;
            let set = match load_jwks_file(path) {
                Ok(set) => {
                    if let Some(m) = token_metrics() {
                        m.refreshed(org_id, "ok", Some(set.len()));
                    }
                    Some(Arc::new(set))
                }
                Err(_) => {
                    if let Some(m) = token_metrics() {
                        m.refreshed(org_id, "invalid", None);
                    }
                    self.good.get(path).cloned()
                }
            };
            if let Some(set) = set {
                good.insert(path.clone(), set.clone());
                sets.insert(org, set);
            }
        }
        let n = sets.len();
        self.good = good;
        self.sets.store(Arc::new(sets));
        if n > 0 {
            tracing::info!(trigger = how, sets = n, "JWK sets loaded");
        }
    }
}

/// The [`Watched`] side of [`JwksFiles`].
struct JwksWatch(Arc<Mutex<JwksFiles>>);

impl Watched for JwksWatch {
    fn folders(&self) -> Vec<PathBuf> {
        let mut folders: Vec<PathBuf> =
            self.0.lock().files().iter().map(|f| folder_of(f)).collect();
        folders.dedup();
        folders
    }

    fn concerns(&self, paths: &[PathBuf]) -> bool {
        self.0
            .lock()
            .files()
            .iter()
            .any(|f| concerns_file_in(paths, f))
    }

    fn look(&mut self, trigger: Trigger) -> Option<Duration> {
        let mut files = self.0.lock();
        if files.files().is_empty() {
            return None;
        }
        if trigger == Trigger::Signal || files.seen != Some(files.digest()) {
            files.load(None, trigger.as_str());
        }
        None
    }
}

/// Whether an event may have changed `file`: [`concerns_keys_file`] for
/// the event's paths in `file`'s folder (the watcher watches other folders
/// too).
fn concerns_file_in(paths: &[PathBuf], file: &Path) -> bool {
    let folder = [folder_of(file)];
    let here: Vec<PathBuf> = paths
        .iter()
        .filter(|p| in_folders(std::slice::from_ref(*p), &folder))
        .cloned()
        .collect();
    (paths.is_empty() || !here.is_empty()) && concerns_keys_file(&here, file.file_name())
}

/// Whether an event in the keys file's folder may have changed the keys
/// file: it names the file, a Kubernetes ConfigMap/Secret swap entry
/// (`..data`, `..2026_11_30_…`), or nothing at all. Other files there (the
/// usage database written every second, editors' swap files) are not
/// worth re-reading a large keys file for.
fn concerns_keys_file(paths: &[PathBuf], name: Option<&std::ffi::OsStr>) -> bool {
    paths.is_empty()
        || paths.iter().any(|p| match p.file_name() {
            None => true,
            Some(n) => Some(n) == name || n.to_string_lossy().starts_with(".."),
        })
}

/// Tells whether the keys file's content changed since it last looked.
///
/// Hashing the whole file on every poll is not free: 18 MB at 100,000 keys
/// cost ~2 % of a core at the default 1 s poll. So a poll first compares
/// what `stat` says (device, inode, size, mtime, ctime — through symlinks,
/// so a ConfigMap swap moves it) and reads the content only when `stat`
/// cannot vouch for it:
/// - the stamp moved;
/// - the file last changed less than [`RACY`] before the previous look
///   (a second write inside the same timestamp tick leaves the stamp as it
///   was; git's index has the same "racily clean" rule);
/// - `full_check` has passed since the last read (clocks that disagree,
///   e.g. a network filesystem's).
struct ChangeDetector {
    stamp: Option<Stamp>,
    digest: Option<Digest>,
    /// Wall-clock time just before the last `stat` that led to a read.
    looked_at: SystemTime,
    read_at: Instant,
    full_check: Duration,
}

/// What a look found.
enum Look {
    /// `stat` vouched that nothing changed; the content was not read.
    Skipped,
    /// The content was read: whether it differs, and the text (or why it
    /// could not be read) for the reload to parse.
    Read {
        changed: bool,
        text: Result<String, Diagnostic>,
    },
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

impl Stamp {
    /// When the file last changed, by its own timestamps.
    fn changed_at(&self) -> Option<SystemTime> {
        let at = |(s, ns): (i64, i64)| {
            let s = u64::try_from(s).ok()?;
            let ns = u32::try_from(ns).ok()?;
            UNIX_EPOCH.checked_add(Duration::new(s, ns))
        };
        at(self.mtime.max(self.ctime))
    }
}

impl ChangeDetector {
    /// `digest`: of the text the keys in force came from. The first look
    /// always reads.
    fn new(digest: Option<Digest>, full_check: Duration) -> ChangeDetector {
        ChangeDetector {
            stamp: None,
            digest,
            looked_at: UNIX_EPOCH,
            read_at: Instant::now(),
            full_check,
        }
    }

    /// Looks at the file; `thorough` reads the content whatever `stat` says.
    fn look(&mut self, path: &Path, thorough: bool) -> Look {
        let now = SystemTime::now();
        // stat before reading: a write in between moves the next stamp.
        let stamp = read_stamp(path);
        let vouched = !thorough
            && stamp.is_some()
            && stamp == self.stamp
            && !self.racy(&stamp)
            && self.read_at.elapsed() < self.full_check;
        if vouched {
            return Look::Skipped;
        }
        self.stamp = stamp;
        self.looked_at = now;
        self.read_at = Instant::now();
        // Reading and hashing a large file is a few milliseconds of CPU:
        // done at idle priority too, like the build (`idle`).
        let path = path.to_path_buf();
        let (text, digest) = idle::at_idle(idle::START, idle::GRACE, move || {
            let text = crate::identity::keys::read_keys_file(&path);
            let digest = text
                .as_ref()
                .ok()
                .map(|t| crate::identity::keys::digest(t.as_bytes()));
            (text, digest)
        });
        let changed = digest != self.digest;
        self.digest = digest;
        Look::Read { changed, text }
    }

    /// Device and inode of the file (through symlinks) at the last read.
    fn identity(&self) -> Option<(u64, u64)> {
        self.stamp.map(|s| (s.dev, s.ino))
    }

    /// Device and inode of the file now.
    fn identity_now(&self, path: &Path) -> Option<(u64, u64)> {
        read_stamp(path).map(|s| (s.dev, s.ino))
    }

    /// When the file last changed, by its timestamps, at the last read.
    fn changed_at(&self) -> Option<SystemTime> {
        self.stamp.as_ref().and_then(Stamp::changed_at)
    }

    /// Whether the file changed so close to the last look that a write
    /// since may have kept the same stamp.
    fn racy(&self, stamp: &Option<Stamp>) -> bool {
        match stamp.as_ref().and_then(Stamp::changed_at) {
            Some(at) => at + RACY > self.looked_at,
            None => true,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write test file");
    }

    /// A detector that has read `path` as it is now.
    fn seen(path: &Path, full_check: Duration) -> ChangeDetector {
        let mut d = ChangeDetector::new(None, full_check);
        assert!(matches!(d.look(path, false), Look::Read { .. }));
        d
    }

    /// Pretends the last look was long after the file's last change, as on
    /// a poll minutes after the last write.
    fn age(d: &mut ChangeDetector) {
        d.looked_at = SystemTime::now() + Duration::from_secs(60);
    }

    fn changed(look: Look) -> Option<bool> {
        match look {
            Look::Skipped => None,
            Look::Read { changed, .. } => Some(changed),
        }
    }

    #[test]
    fn only_events_about_the_keys_file_trigger() {
        let name = Some(std::ffi::OsStr::new("keys.yaml"));
        let p = |s: &str| vec![PathBuf::from(s)];
        assert!(concerns_keys_file(&p("/c/keys.yaml"), name));
        assert!(concerns_keys_file(&p("/c/..data"), name));
        assert!(concerns_keys_file(&p("/c/..2026_11_30_10_00_00.123"), name));
        assert!(concerns_keys_file(&[], name));
        assert!(concerns_keys_file(
            &[
                PathBuf::from("/c/keys.yaml.tmp"),
                PathBuf::from("/c/keys.yaml")
            ],
            name
        ));
        assert!(!concerns_keys_file(&p("/c/state.db-wal"), name));
        assert!(!concerns_keys_file(&p("/c/.keys.yaml.swp"), name));
    }

    #[test]
    fn an_untouched_file_is_not_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        write(&path, "keys: []\n");
        let mut d = seen(&path, HOUR);
        age(&mut d);
        assert_eq!(changed(d.look(&path, false)), None, "stat vouches for it");
        assert_eq!(changed(d.look(&path, true)), Some(false), "thorough reads");
    }

    #[test]
    fn a_rewrite_is_seen_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        write(&path, "keys: []\n");
        let mut d = seen(&path, HOUR);
        age(&mut d);
        write(&path, "keys: [] # a longer file\n");
        assert_eq!(changed(d.look(&path, false)), Some(true), "size moved");
        age(&mut d);
        assert_eq!(changed(d.look(&path, false)), None, "seen once, not again");
    }

    #[test]
    fn the_same_bytes_written_again_are_no_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        write(&path, "keys: []\n");
        let mut d = seen(&path, HOUR);
        age(&mut d);
        d.stamp = None; // as if stat moved
        write(&path, "keys: []\n");
        assert_eq!(changed(d.look(&path, false)), Some(false));
    }

    #[test]
    fn a_rewrite_stat_cannot_see_is_read_while_the_file_is_racy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        write(&path, "keys: [a]\n");
        let mut d = seen(&path, HOUR);
        // Same size, and the stamp put back: only the content moved, as with
        // two writes inside one timestamp tick.
        let before = d.stamp;
        write(&path, "keys: [b]\n");
        d.stamp = read_stamp(&path);
        assert_ne!(before, None);
        // The file changed just now, less than RACY before the last look.
        assert_eq!(changed(d.look(&path, false)), Some(true), "racy: read");
    }

    #[test]
    fn a_rewrite_stat_cannot_see_waits_for_an_event_or_the_full_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        write(&path, "keys: [a]\n");
        let mut d = seen(&path, HOUR);
        age(&mut d);
        write(&path, "keys: [b]\n");
        d.stamp = read_stamp(&path);
        assert_eq!(
            changed(d.look(&path, false)),
            None,
            "stat alone cannot tell"
        );
        assert_eq!(changed(d.look(&path, true)), Some(true), "an event reads");

        let mut full = seen(&path, Duration::ZERO);
        age(&mut full);
        write(&path, "keys: [c]\n");
        full.stamp = read_stamp(&path);
        assert_eq!(changed(full.look(&path, false)), Some(true), "full check");
    }

    #[test]
    fn a_file_that_appears_or_goes_is_a_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        let mut d = seen(&path, HOUR);
        assert_eq!(changed(d.look(&path, false)), Some(false), "still missing");
        write(&path, "keys: []\n");
        assert_eq!(changed(d.look(&path, false)), Some(true), "appeared");
        std::fs::remove_file(&path).expect("remove");
        let look = d.look(&path, false);
        assert!(
            matches!(
                &look,
                Look::Read {
                    changed: true,
                    text: Err(_)
                }
            ),
            "gone, with the reason for the reload to report"
        );
    }

    #[test]
    fn the_first_look_compares_with_what_was_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        write(&path, "keys: [new]\n");
        let loaded = crate::identity::keys::digest(b"keys: [old]\n");
        let mut d = ChangeDetector::new(Some(loaded), HOUR);
        assert_eq!(
            changed(d.look(&path, false)),
            Some(true),
            "written after the load"
        );

        let mut same =
            ChangeDetector::new(Some(crate::identity::keys::digest(b"keys: [new]\n")), HOUR);
        assert_eq!(changed(same.look(&path, false)), Some(false));
    }

    #[test]
    fn a_change_to_a_jwks_file_alone_loads_the_sets_again() {
        use crate::identity::token::testing::{jwks_json, TestKey};
        const KEYS: &str = "\
organisations:
  - id: org_a
    workspaces: [{ id: ws_a }]
    identity_tokens:
      issuer: https://idp.a/
      audience: scopegate
      jwks_file: jwks/a.json
keys: []
";
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_file = dir.path().join("keys.yaml");
        write(&keys_file, KEYS);
        std::fs::create_dir(dir.path().join("jwks")).expect("mkdir");
        let jwks_file = dir.path().join("jwks/a.json");
        write(&jwks_file, &jwks_json(&[&TestKey::es256("k1")]));
        let table = Arc::new(RouteTable::build(&[], true).expect("table"));
        let snap = load_keys(&keys_file, &table).expect("keys");
        let reloader = Reloader::new(keys_file, table, KeyStore::new(snap));
        let sets = reloader.jwks_sets();
        let kid = |k: &str| {
            sets.load()
                .get(&OrgIdx(0))
                .is_some_and(|s| s.find(k).is_some())
        };
        assert!(kid("k1"), "loaded at start");

        let mut files = reloader.jwks_files();
        let event = vec![jwks_file.clone()];
        assert!(files.concerns(&event), "an event on the JWK set file");
        assert!(!reloader.concerns(&event), "is none of the keys file's");
        assert_eq!(files.folders(), vec![dir.path().join("jwks")]);
        files.look(Trigger::Poll);
        assert!(kid("k1"), "unchanged: the same sets");

        write(&jwks_file, &jwks_json(&[&TestKey::es256("k2")]));
        files.look(Trigger::FsEvent);
        assert!(kid("k2") && !kid("k1"), "the new set is in force");

        write(&jwks_file, "not json");
        files.look(Trigger::FsEvent);
        assert!(kid("k2"), "a bad set leaves the last good one in force");
    }

    /// A replaced snapshot is freed by the reloader's runtime, never by the
    /// request that held it last.
    #[test]
    fn a_replaced_snapshot_is_freed_off_the_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_file = dir.path().join("keys.yaml");
        write(&keys_file, "organisations: [{id: org_a}]\nkeys: []\n");
        let table = RouteTable::build(&[], true).expect("table");
        let old = Arc::new(load_keys(&keys_file, &table).expect("keys"));
        let watched = Arc::downgrade(&old);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let request = old.clone();
            retire(old);
            drop(request);
            assert_eq!(
                watched.strong_count(),
                1,
                "the request's drop was not the last: the reaper holds it"
            );
            // Freed at idle priority: soon on an idle machine, later on a
            // busy one (a parallel test run).
            for _ in 0..3000 {
                if watched.strong_count() == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(watched.strong_count(), 0, "freed after");
        });
        // Outside a runtime: dropped at once.
        let again = Arc::new(load_keys(&keys_file, &table).expect("keys"));
        let watched = Arc::downgrade(&again);
        retire(again);
        assert_eq!(watched.strong_count(), 0);
    }
}
