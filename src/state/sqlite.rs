//! The SQLite file behind the local backend: opening it (exclusively, with
//! clear errors), loading usage rows, writing dirty rows, and reading it
//! read-only for `scopegate usage` while the proxy runs. The schema is
//! documented in `local.rs`.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection, ErrorCode, OpenFlags};

use super::{Scope, StateError, SubjectId, UsageNow, UsageRow};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS usage (
    scope            TEXT    NOT NULL,
    id               TEXT    NOT NULL,
    period           TEXT    NOT NULL,
    period_end_ms    INTEGER,
    input_tokens     INTEGER NOT NULL DEFAULT 0,
    output_tokens    INTEGER NOT NULL DEFAULT 0,
    cost_usd         REAL    NOT NULL DEFAULT 0,
    estimated_tokens INTEGER NOT NULL DEFAULT 0,
    reserved_tokens  INTEGER NOT NULL DEFAULT 0,
    reserved_cost    REAL    NOT NULL DEFAULT 0,
    updated_at_ms    INTEGER NOT NULL DEFAULT 0,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, id, period)
)";

/// Columns added after the first schema: a state file written by an older
/// scopegate gains them (as 0) when opened.
const ADDED_COLUMNS: [&str; 2] = ["cached_input_tokens", "cache_write_tokens"];

/// Which of [`ADDED_COLUMNS`] the file's `usage` table lacks.
fn missing_columns(conn: &Connection) -> rusqlite::Result<Vec<&'static str>> {
    let mut st = conn.prepare("SELECT name FROM pragma_table_info('usage')")?;
    let have: Vec<String> = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(ADDED_COLUMNS
        .into_iter()
        .filter(|c| !have.iter().any(|h| h == c))
        .collect())
}

/// An open, exclusively held state file.
pub(crate) struct Db {
    conn: Connection,
    path: PathBuf,
    /// Held (flock) while this process owns the file.
    _lock: File,
}

fn file_error(path: &Path, reason: impl Into<String>) -> StateError {
    StateError::File {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn sqlite_error(path: &Path, e: &rusqlite::Error) -> StateError {
    let reason = match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            "not a SQLite database (corrupt, or another kind of file); move it away to start counting afresh".to_string()
        }
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            format!("cannot be written: {e}")
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            format!("locked by another process: {e}")
        }
        _ => e.to_string(),
    };
    file_error(path, reason)
}

fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Db {
    /// Opens (creating if needed) the state file for this process alone.
    ///
    /// # Errors
    /// The directory is missing, the file or its lock cannot be written,
    /// another scopegate holds it, or it is not a SQLite database.
    pub fn open(path: &Path) -> Result<Db, StateError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(file_error(
                path,
                format!("directory {} does not exist", dir.display()),
            ));
        }
        let lock_file = lock_path(path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_file)
            .map_err(|e| {
                file_error(
                    path,
                    format!("cannot be written (lock file {}: {e})", lock_file.display()),
                )
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(file_error(
                    path,
                    format!(
                        "in use by another running scopegate (it holds {})",
                        lock_file.display()
                    ),
                ))
            }
            Err(TryLockError::Error(e)) => {
                return Err(file_error(
                    path,
                    format!("cannot lock {}: {e}", lock_file.display()),
                ))
            }
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .map_err(|e| sqlite_error(path, &e))?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(|e| sqlite_error(path, &e))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| sqlite_error(path, &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "state file is not in WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(|e| sqlite_error(path, &e))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| sqlite_error(path, &e))?;
        for column in missing_columns(&conn).map_err(|e| sqlite_error(path, &e))? {
            conn.execute_batch(&format!(
                "ALTER TABLE usage ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
            ))
            .map_err(|e| sqlite_error(path, &e))?;
        }
        Ok(Db {
            conn,
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// Every usage row (reservations of a previous run are dead: zeroed).
    pub fn load(&self) -> Result<Vec<UsageRow>, StateError> {
        let mut rows = read_rows(&self.conn).map_err(|e| sqlite_error(&self.path, &e))?;
        for r in &mut rows {
            r.usage.reserved_tokens = 0;
            r.usage.reserved_cost = 0.0;
        }
        Ok(rows)
    }

    /// Upserts rows in one transaction.
    pub fn write(&mut self, rows: &[UsageRow]) -> Result<(), StateError> {
        let path = self.path.clone();
        let err = |e: rusqlite::Error| sqlite_error(&path, &e);
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO usage (scope, id, period, period_end_ms, input_tokens, output_tokens,
                        cost_usd, estimated_tokens, reserved_tokens, reserved_cost, updated_at_ms,
                        cached_input_tokens, cache_write_tokens)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                     ON CONFLICT (scope, id, period) DO UPDATE SET
                        period_end_ms = excluded.period_end_ms,
                        input_tokens = excluded.input_tokens,
                        output_tokens = excluded.output_tokens,
                        cost_usd = excluded.cost_usd,
                        estimated_tokens = excluded.estimated_tokens,
                        reserved_tokens = excluded.reserved_tokens,
                        reserved_cost = excluded.reserved_cost,
                        updated_at_ms = excluded.updated_at_ms,
                        cached_input_tokens = excluded.cached_input_tokens,
                        cache_write_tokens = excluded.cache_write_tokens",
                )
                .map_err(err)?;
            let now = now_ms();
            for r in rows {
                let u = &r.usage;
                st.execute(params![
                    r.subject.scope.as_str(),
                    &*r.subject.id,
                    &*u.period_key,
                    r.period_end_ms,
                    u.tokens_in as i64,
                    u.tokens_out as i64,
                    u.cost,
                    u.estimated_tokens as i64,
                    u.reserved_tokens as i64,
                    u.reserved_cost,
                    now,
                    u.cached_input as i64,
                    u.cache_write as i64,
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}

fn read_rows(conn: &Connection) -> rusqlite::Result<Vec<UsageRow>> {
    // A file of an older scopegate, read without being upgraded, lacks the
    // cache columns: they read as 0.
    let missing = missing_columns(conn)?;
    let column = |c: &str| if missing.contains(&c) { "0" } else { c }.to_string();
    let mut st = conn.prepare(&format!(
        "SELECT scope, id, period, period_end_ms, input_tokens, output_tokens, cost_usd,
                estimated_tokens, reserved_tokens, reserved_cost, updated_at_ms, {}, {}
         FROM usage ORDER BY scope, id, period",
        column("cached_input_tokens"),
        column("cache_write_tokens"),
    ))?;
    let rows = st.query_map([], |r| {
        let scope: String = r.get(0)?;
        let id: String = r.get(1)?;
        let period: String = r.get(2)?;
        Ok((
            scope,
            UsageRow {
                subject: SubjectId::key(id),
                period_end_ms: r.get(3)?,
                usage: UsageNow {
                    tokens_in: r.get::<_, i64>(4)?.max(0) as u64,
                    tokens_out: r.get::<_, i64>(5)?.max(0) as u64,
                    cached_input: r.get::<_, i64>(11)?.max(0) as u64,
                    cache_write: r.get::<_, i64>(12)?.max(0) as u64,
                    cost: r.get(6)?,
                    estimated_tokens: r.get::<_, i64>(7)?.max(0) as u64,
                    reserved_tokens: r.get::<_, i64>(8)?.max(0) as u64,
                    reserved_cost: r.get(9)?,
                    period_key: Arc::from(period),
                },
                updated_at_ms: r.get(10)?,
            },
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (scope, mut row) = row?;
        // Rows of an unknown scope (written by hand) are skipped.
        let Some(scope) = Scope::parse(&scope) else {
            continue;
        };
        row.subject.scope = scope;
        out.push(row);
    }
    Ok(out)
}

/// Reads every usage row of a state file without taking it over (the
/// proxy may be running). A missing file has no rows.
///
/// # Errors
/// The file cannot be opened or is not a scopegate state database.
pub fn read_rows_read_only(path: &Path) -> Result<Vec<UsageRow>, StateError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite_error(path, &e))?;
    conn.busy_timeout(std::time::Duration::from_secs(2))
        .map_err(|e| sqlite_error(path, &e))?;
    read_rows(&conn).map_err(|e| sqlite_error(path, &e))
}
