//! The local counter store: live counters in memory on the request path,
//! usage persisted to an embedded SQLite file (`state.path`).
//!
//! Each subject (key or workspace) owns its state behind its own small
//! lock in a `DashMap`; a request locks its subjects in one global order
//! (`SubjectId`'s), so two requests never deadlock and unrelated keys never
//! contend. Rate state is reset when a subject's rate limits change (a
//! fingerprint), so it survives a keys reload otherwise; usage is kept per
//! subject and period, whatever the limits.
//!
//! A background thread writes the rows that changed at most once a second
//! (a crash loses at most that second); [`LocalStore::flush_now`] writes
//! at once (SIGTERM). The file is held with an exclusive lock on
//! `<state.path>.lock`: a second scopegate cannot open it, while
//! `scopegate usage` reads it ([`read_usage_report`]). SQLite runs in WAL
//! mode, so readers never wait for the writer.
//!
//! Operators can read it with the `sqlite3` shell:
//!
//! ```sql
//! CREATE TABLE usage (
//!     scope            TEXT    NOT NULL,  -- 'key' | 'workspace'
//!     id               TEXT    NOT NULL,  -- key id or canonical workspace id
//!     period           TEXT    NOT NULL,  -- e.g. '2026-11', '2026-11-30', 'all'
//!     period_end_ms    INTEGER,           -- Unix ms when the period ends; NULL: never
//!     input_tokens     INTEGER NOT NULL,  -- all input, cached included
//!     output_tokens    INTEGER NOT NULL,
//!     cost_usd         REAL    NOT NULL,
//!     estimated_tokens INTEGER NOT NULL,  -- of input+output, counted as estimated
//!     reserved_tokens  INTEGER NOT NULL,  -- held by requests in flight at the last write
//!     reserved_cost    REAL    NOT NULL,
//!     updated_at_ms    INTEGER NOT NULL,  -- Unix ms of the last write
//!     cached_input_tokens INTEGER NOT NULL, -- of input_tokens, read from a cache
//!     cache_write_tokens  INTEGER NOT NULL, -- of input_tokens, written to a cache
//!     PRIMARY KEY (scope, id, period)
//! );
//! -- e.g.: sqlite3 -readonly state.db "SELECT * FROM usage WHERE id = 'key_bot'"
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;

use super::rules::{self, PeriodUsage, SubjectState};
use super::sqlite::{self, Db};
use super::{
    Admission, AdmitRequest, AdmitResult, Charge, CounterStore, StateError, SubjectId,
    SubjectLimits, UsageNow, UsageRow,
};
use crate::limits::rate::monotonic_ns;
use crate::limits::view::Reading;

type Cell = Arc<Mutex<SubjectState>>;

/// The subjects' counters. FxHash rather than SipHash: a subject is a key
/// or workspace of the keys file, never a client's choice, and it is
/// looked up several times per counted request.
type Subjects = DashMap<SubjectId, Cell, rustc_hash::FxBuildHasher>;

struct Inner {
    subjects: Subjects,
    next_id: AtomicU64,
    db: Option<Mutex<Db>>,
}

/// The local backend. Dropping it stops the writer and writes what is pending.
pub struct LocalStore {
    inner: Arc<Inner>,
    writer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("subjects", &self.inner.subjects.len())
            .field("persistent", &self.inner.db.is_some())
            .finish()
    }
}

impl LocalStore {
    /// A store that keeps everything in memory (tests, the Redis fallback).
    pub fn in_memory() -> LocalStore {
        LocalStore {
            inner: Arc::new(Inner {
                subjects: Subjects::default(),
                next_id: AtomicU64::new(1),
                db: None,
            }),
            writer: None,
        }
    }

    /// Opens the state file at `path` (creating it), loads its usage, and
    /// starts the once-a-second writer.
    ///
    /// # Errors
    /// [`StateError::File`] naming the file when its directory is missing,
    /// it cannot be written, another scopegate holds it, or it is not a
    /// SQLite database.
    pub fn open(path: &Path) -> Result<LocalStore, StateError> {
        let db = Db::open(path)?;
        let rows = db.load()?;
        let subjects = Subjects::default();
        for row in rows {
            let cell = subjects.entry(row.subject.clone()).or_default().clone();
            let mut st = cell.lock();
            st.periods.push(PeriodUsage {
                // Reservations belong to the process that made them.
                usage: UsageNow {
                    reserved_tokens: 0,
                    reserved_cost: 0.0,
                    ..row.usage
                },
                end_ms: row.period_end_ms,
                dirty: false,
            });
        }
        let inner = Arc::new(Inner {
            subjects,
            next_id: AtomicU64::new(1),
            db: Some(Mutex::new(db)),
        });
        // The write-behind keeps a thread of its own rather than a pingora
        // background service: SQLite writes block, the store is opened (and
        // used by `scopegate usage`) outside any server, and it must write
        // what is dirty when the store is dropped.
        let (stop, rx) = mpsc::channel::<()>();
        let thread_inner = inner.clone();
        let handle = std::thread::Builder::new()
            .name("scopegate-state-writer".into())
            .spawn(move || loop {
                let stopping = !matches!(
                    rx.recv_timeout(Duration::from_secs(1)),
                    Err(mpsc::RecvTimeoutError::Timeout)
                );
                if let Err(e) = thread_inner.write_dirty() {
                    tracing::warn!(error = %e, "writing usage to the state file failed; will retry");
                }
                if stopping {
                    break;
                }
            })
            .map_err(|e| StateError::File {
                path: path.display().to_string(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(LocalStore {
            inner,
            writer: Some((stop, handle)),
        })
    }

    /// [`CounterStore::admit`], synchronously (it never waits on I/O).
    pub fn admit_now(&self, req: &AdmitRequest<'_>) -> AdmitResult {
        self.admit_at(req, monotonic_ns())
    }

    /// `admit_now` at a given [`monotonic_ns`] instant.
    pub(crate) fn admit_at(&self, req: &AdmitRequest<'_>, now: u64) -> AdmitResult {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<usize> = (0..req.subjects.len()).collect();
        order.sort_by(|a, b| req.subjects[*a].subject.cmp(&req.subjects[*b].subject));
        order.dedup_by(|a, b| req.subjects[*a].subject == req.subjects[*b].subject);
        // Arcs first (one shard guard at a time), then locks in global order.
        let cells: Vec<Cell> = order
            .iter()
            .map(|&i| self.inner.cell(&req.subjects[i].subject))
            .collect();
        let mut guards: Vec<_> = cells.iter().map(|c| c.lock()).collect();
        let mut states: Vec<&mut SubjectState> = guards.iter_mut().map(|g| &mut **g).collect();
        let subjects: Vec<_> = order.iter().map(|&i| &req.subjects[i]).collect();
        rules::admit(&subjects, &mut states, req.estimate, now, id)
    }

    /// [`CounterStore::read`] at a given [`monotonic_ns`] instant.
    pub(crate) fn read_at(&self, subjects: &[SubjectLimits], now: u64) -> Vec<Reading> {
        subjects
            .iter()
            .map(|s| {
                let cell = self.inner.subjects.get(&s.subject).map(|c| c.clone());
                let guard = cell.as_ref().map(|c| c.lock());
                rules::read(s, guard.as_deref(), now)
            })
            .collect()
    }

    /// Settles (`Some`) or releases (`None`) at a given instant.
    pub(crate) fn finish_at(&self, admission: Admission, charge: Option<&Charge>, now: u64) {
        for part in &admission.parts {
            let cell = self.inner.cell(&part.limits.subject);
            let mut st = cell.lock();
            rules::settle_part(part, &mut st, charge, admission.has_estimate, now);
        }
    }

    /// Writes every changed row now.
    ///
    /// # Errors
    /// The database write failed (the rows stay pending).
    pub fn flush_now(&self) -> Result<(), StateError> {
        self.inner.write_dirty()
    }

    /// Every subject's usage in every period held in memory.
    pub fn report(&self) -> Vec<UsageRow> {
        let mut out = Vec::new();
        for (subject, cell) in self.inner.cells() {
            let st = cell.lock();
            for p in &st.periods {
                out.push(UsageRow {
                    subject: subject.clone(),
                    usage: p.now(),
                    period_end_ms: p.end_ms,
                    updated_at_ms: 0,
                });
            }
        }
        out.sort_by(|a, b| {
            (&a.subject, &a.usage.period_key).cmp(&(&b.subject, &b.usage.period_key))
        });
        out
    }
}

impl Inner {
    fn cell(&self, subject: &SubjectId) -> Cell {
        if let Some(c) = self.subjects.get(subject) {
            return c.clone();
        }
        self.subjects.entry(subject.clone()).or_default().clone()
    }

    fn cells(&self) -> Vec<(SubjectId, Cell)> {
        self.subjects
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    fn write_dirty(&self) -> Result<(), StateError> {
        let Some(db) = &self.db else { return Ok(()) };
        // One writer at a time: the thread and flush_now may race.
        let mut db = db.lock();
        let mut rows = Vec::new();
        for (subject, cell) in self.cells() {
            let mut st = cell.lock();
            for p in st.periods.iter_mut().filter(|p| p.dirty) {
                p.dirty = false;
                rows.push(UsageRow {
                    subject: subject.clone(),
                    usage: p.now(),
                    period_end_ms: p.end_ms,
                    updated_at_ms: 0,
                });
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let result = db.write(&rows);
        if result.is_err() {
            for r in &rows {
                let cell = self.cell(&r.subject);
                let mut st = cell.lock();
                if let Some(p) = st
                    .periods
                    .iter_mut()
                    .find(|p| p.usage.period_key == r.usage.period_key)
                {
                    p.dirty = true;
                }
            }
        }
        result
    }
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.writer.take() {
            let _ = stop.send(());
            let _ = handle.join();
        }
    }
}

#[async_trait]
impl CounterStore for LocalStore {
    async fn admit(&self, req: &AdmitRequest<'_>) -> AdmitResult {
        self.admit_now(req)
    }

    fn settle(&self, admission: Admission, charge: Charge) {
        self.finish_at(admission, Some(&charge), monotonic_ns());
    }

    fn release(&self, admission: Admission) {
        self.finish_at(admission, None, monotonic_ns());
    }

    fn usage(&self, subject: &SubjectId, period_key: &str) -> UsageNow {
        let Some(cell) = self.inner.subjects.get(subject).map(|c| c.clone()) else {
            return UsageNow {
                period_key: Arc::from(period_key),
                ..UsageNow::default()
            };
        };
        let st = cell.lock();
        st.period(period_key).map_or_else(
            || UsageNow {
                period_key: Arc::from(period_key),
                ..UsageNow::default()
            },
            PeriodUsage::now,
        )
    }

    async fn read(&self, subjects: &[SubjectLimits]) -> Option<Vec<Reading>> {
        Some(self.read_at(subjects, monotonic_ns()))
    }

    async fn flush(&self) {
        if let Err(e) = self.flush_now() {
            tracing::error!(error = %e, "writing usage to the state file at shutdown failed");
        }
    }
}

/// `scopegate usage` for `backend: local`: every row of the state file,
/// read without disturbing a running proxy. A missing file has no rows.
///
/// # Errors
/// [`StateError::File`] when the file cannot be read or is not a state database.
pub fn read_usage_report(path: &Path) -> Result<Vec<UsageRow>, StateError> {
    sqlite::read_rows_read_only(path)
}

#[cfg(test)]
mod tests;
