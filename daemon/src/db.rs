//! Opening connections, their settings, the statement guard, and running one
//! client statement. Both the writer and the readers go through here, so a
//! statement behaves the same whichever connection serves it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nexusd_protocol::{ErrorBody, ErrorKind, Executed, Params, Rows, Statement, Value};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ffi};

/// Oldest bundled SQLite we accept: 3.7.0 to 3.51.2 can lose data when a
/// WAL reset races a checkpoint.
pub const MIN_SQLITE_VERSION: i32 = 3_051_003;
const JOURNAL_MODE: &str = "wal";
/// How long a connection waits on a lock held outside nexusd (a backup
/// tool, say) before reporting SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;
/// VM instructions between two looks at the request deadline.
const PROGRESS_OPS: i32 = 1000;

/// The durability of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync the WAL on every commit: survives power loss.
    Full,
    /// fsync only at checkpoints: survives a process crash, but a power loss
    /// can drop the last commits.
    Normal,
}

impl Synchronous {
    fn pragma_value(self) -> i64 {
        match self {
            Synchronous::Full => 2,
            Synchronous::Normal => 1,
        }
    }
}

/// Refuses the version of SQLite this binary was built with if it is old.
pub fn check_sqlite_version() -> anyhow::Result<()> {
    if rusqlite::version_number() < MIN_SQLITE_VERSION {
        bail!(
            "SQLite {} is too old: nexusd needs 3.51.3 or newer (older versions can lose \
             WAL data); rebuild with the bundled SQLite",
            rusqlite::version()
        );
    }
    Ok(())
}

/// Opens the one read-write connection. Only the writer thread calls this.
pub fn open_writer(
    path: &Path,
    sync: Synchronous,
    checkpoint_wal_bytes: u64,
) -> anyhow::Result<(Connection, Guard)> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("could not open database {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", JOURNAL_MODE, |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case(JOURNAL_MODE) {
        bail!(
            "database {} refused WAL mode (it stayed in {mode}); is it on a filesystem without \
             shared memory support?",
            path.display()
        );
    }
    conn.pragma_update(None, "synchronous", sync.pragma_value())?;
    let got: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    if got != sync.pragma_value() {
        bail!(
            "SQLite kept synchronous={got}, expected {}",
            sync.pragma_value()
        );
    }
    conn.pragma_update(None, "foreign_keys", true)?;
    let fk: bool = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
    if !fk {
        bail!("SQLite refused to turn foreign keys on");
    }
    // The writer checkpoints between batches itself (writer.rs), not inside
    // a COMMIT; after a full checkpoint the WAL is cut back to this size.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    let limit = i64::try_from(checkpoint_wal_bytes.saturating_mul(4)).unwrap_or(i64::MAX);
    conn.pragma_update(None, "journal_size_limit", limit)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let guard = Guard::install(&mut conn)?;
    Ok((conn, guard))
}

/// A file's size in bytes; 0 when it does not exist.
pub fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Opens one read-only connection for the reader pool. The writer must have
/// opened the file first, so that it exists and is in WAL mode.
pub fn open_reader(path: &Path) -> anyhow::Result<(Connection, Guard)> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("could not open database {} read-only", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let guard = Guard::install(&mut conn)?;
    Ok((conn, guard))
}

/// SQLite's authorizer and progress handler, bound to one connection.
///
/// While `client` is set, the authorizer refuses what would take the
/// daemon's transactions or connection settings away from it; the daemon's
/// own statements (BEGIN IMMEDIATE, SAVEPOINT...) run with it cleared. The
/// progress handler interrupts a statement once its deadline has passed.
#[derive(Clone)]
pub struct Guard {
    client: Arc<AtomicBool>,
    refusal: Arc<Mutex<Option<String>>>,
    /// Nanoseconds since `epoch()`; 0 means no deadline.
    deadline: Arc<AtomicU64>,
}

pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Guard {
    fn install(conn: &mut Connection) -> anyhow::Result<Guard> {
        let guard = Guard {
            client: Arc::new(AtomicBool::new(false)),
            refusal: Arc::new(Mutex::new(None)),
            deadline: Arc::new(AtomicU64::new(0)),
        };
        let g = guard.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if !g.client.load(Ordering::Relaxed) {
                return Authorization::Allow;
            }
            match refusal(&ctx) {
                None => Authorization::Allow,
                Some(why) => {
                    if let Ok(mut slot) = g.refusal.lock() {
                        *slot = Some(why);
                    }
                    Authorization::Deny
                }
            }
        }))?;
        let g = guard.clone();
        conn.progress_handler(
            PROGRESS_OPS,
            Some(move || {
                let deadline = g.deadline.load(Ordering::Relaxed);
                deadline != 0 && epoch().elapsed().as_nanos() as u64 > deadline
            }),
        )?;
        Ok(guard)
    }

    /// Runs `f` as client code: guarded, and interrupted at `deadline`.
    pub fn client<T>(&self, deadline: Instant, f: impl FnOnce() -> T) -> T {
        let nanos = deadline
            .saturating_duration_since(epoch())
            .as_nanos()
            .max(1);
        self.deadline
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.client.store(true, Ordering::Relaxed);
        if let Ok(mut slot) = self.refusal.lock() {
            *slot = None;
        }
        let out = f();
        self.client.store(false, Ordering::Relaxed);
        self.deadline.store(0, Ordering::Relaxed);
        out
    }

    fn take_refusal(&self) -> Option<String> {
        self.refusal.lock().ok().and_then(|mut s| s.take())
    }
}

/// Pragmas that only read, or read the schema; they may take an argument
/// that selects what to read (a table name, a row limit).
const READING_PRAGMAS: &[&str] = &[
    "application_id",
    "collation_list",
    "compile_options",
    "data_version",
    "database_list",
    "foreign_key_check",
    "foreign_key_list",
    "freelist_count",
    "function_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "module_list",
    "page_count",
    "pragma_list",
    "quick_check",
    "schema_version",
    "table_info",
    "table_list",
    "table_xinfo",
    "user_version",
];

/// Pragmas that change only the database file's content, not the
/// connection; they may be set, and go through the writer like any write.
const FILE_PRAGMAS: &[&str] = &["application_id", "user_version", "optimize"];

/// Why nexusd refuses this action, or `None` to allow it.
fn refusal(ctx: &AuthContext<'_>) -> Option<String> {
    match ctx.action {
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => Some(
            "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE) is refused: \
             nexusd runs every request in a transaction of its own; send statements that must \
             apply together as one batch"
                .into(),
        ),
        AuthAction::Attach { filename } => Some(format!(
            "ATTACH '{filename}' is refused: a nexusd daemon serves only its own database file"
        )),
        AuthAction::Detach { database_name } => Some(format!(
            "DETACH {database_name} is refused: a nexusd daemon serves only its own database file"
        )),
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let allowed = FILE_PRAGMAS.contains(&name.as_str())
                || (READING_PRAGMAS.contains(&name.as_str())
                    && (pragma_value.is_none() || !is_setter(&name)))
                || pragma_value.is_none() && is_readable_setting(&name);
            if allowed {
                None
            } else {
                let shown = match pragma_value {
                    Some(v) => format!("PRAGMA {pragma_name} = {v}"),
                    None => format!("PRAGMA {pragma_name}"),
                };
                Some(format!(
                    "{shown} is refused: nexusd owns journal mode, locking, synchronous and the \
                     other connection settings; read-only pragmas such as table_info and \
                     integrity_check are allowed"
                ))
            }
        }
        _ => None,
    }
}

/// Reading pragmas whose argument would instead set something.
fn is_setter(name: &str) -> bool {
    matches!(name, "schema_version")
}

/// Connection settings that may be read (no argument) but not set.
fn is_readable_setting(name: &str) -> bool {
    matches!(
        name,
        "journal_mode"
            | "synchronous"
            | "foreign_keys"
            | "encoding"
            | "page_size"
            | "auto_vacuum"
            | "cache_size"
            | "busy_timeout"
            | "locking_mode"
            | "wal_autocheckpoint"
            | "max_page_count"
            | "temp_store"
            | "secure_delete"
            | "recursive_triggers"
            | "query_only"
            | "journal_size_limit"
            | "mmap_size"
    )
}

/// Limits one client statement runs under.
#[derive(Debug, Clone, Copy)]
pub struct StatementLimits {
    pub deadline: Instant,
    pub started: Instant,
    pub timeout: Duration,
    pub max_result_bytes: usize,
    /// Set when `deadline` is the reader's cap on an open read transaction
    /// (`--max-read-ms`) rather than the request's own time limit.
    pub read_cap: Option<Duration>,
}

/// What one statement produced.
pub enum Output {
    Executed(Executed),
    Rows(Rows),
}

/// Whether to keep the rows a statement returns.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// `execute`: step to completion, discard rows, count changes.
    Changes,
    /// `query`: collect the rows.
    Rows,
    /// batch: rows if the statement has columns, else changes.
    Either,
}

/// Per-value overhead counted against the result-size limit, roughly what
/// the value costs on the wire and in memory.
const VALUE_OVERHEAD: usize = 9;

/// What `rows` counts against the result-size limit.
pub fn rows_size(rows: &Rows) -> usize {
    rows.rows
        .iter()
        .flatten()
        .map(|v| VALUE_OVERHEAD + v.heap_size())
        .sum()
}

/// The error for a result over the limit; nothing was applied.
pub fn too_large(rows: usize, limit: usize) -> ErrorBody {
    ErrorBody::new(
        ErrorKind::TooLarge,
        format!(
            "the result exceeds the limit of {limit} bytes after {rows} rows; nothing was \
             applied; add a LIMIT and page through it (WHERE key > ? ORDER BY key LIMIT n), \
             or raise --max-result-bytes"
        ),
    )
}

/// Prepares (cached), binds and runs one client statement under `guard`.
/// `only_readonly` makes it refuse, before running, a statement SQLite does
/// not report as read-only; the caller then routes it to the writer.
pub fn run_statement(
    conn: &Connection,
    guard: &Guard,
    st: &Statement,
    want: Want,
    limits: &StatementLimits,
    only_readonly: bool,
) -> Result<Option<Output>, ErrorBody> {
    guard.client(limits.deadline, || {
        run_guarded(conn, st, want, limits, only_readonly).map_err(|e| error_body(e, guard, limits))
    })
}

fn run_guarded(
    conn: &Connection,
    st: &Statement,
    want: Want,
    limits: &StatementLimits,
    only_readonly: bool,
) -> Result<Option<Output>, StatementError> {
    let mut stmt = conn.prepare_cached(&st.sql)?;
    if only_readonly && !stmt.readonly() {
        return Ok(None);
    }
    bind(&mut stmt, &st.params)?;
    let columns = stmt.column_count();
    let total_before = conn.total_changes();
    let keep_rows = match want {
        Want::Changes => false,
        Want::Rows => true,
        Want::Either => columns > 0,
    };
    let mut out = Rows {
        columns: if keep_rows {
            stmt.column_names().map(String::from).collect()
        } else {
            Vec::new()
        },
        rows: Vec::new(),
    };
    let mut size = 0usize;
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next()? {
        if !keep_rows {
            continue;
        }
        let mut values = Vec::with_capacity(columns);
        for i in 0..columns {
            let v = to_value(row.get_ref(i)?);
            size += VALUE_OVERHEAD + v.heap_size();
            values.push(v);
        }
        out.rows.push(values);
        if size > limits.max_result_bytes {
            return Err(StatementError::TooLarge {
                rows: out.rows.len(),
                limit: limits.max_result_bytes,
            });
        }
    }
    drop(rows);
    if keep_rows {
        return Ok(Some(Output::Rows(out)));
    }
    // sqlite3_changes() keeps the count of the last INSERT/UPDATE/DELETE, so
    // it is only this statement's if the total moved.
    let rows_affected = if conn.total_changes() != total_before {
        conn.changes()
    } else {
        0
    };
    Ok(Some(Output::Executed(Executed {
        rows_affected,
        last_insert_rowid: conn.last_insert_rowid(),
    })))
}

enum StatementError {
    Sqlite(rusqlite::Error),
    Bind(String),
    TooLarge { rows: usize, limit: usize },
}

impl From<rusqlite::Error> for StatementError {
    fn from(e: rusqlite::Error) -> Self {
        StatementError::Sqlite(e)
    }
}

fn bind(stmt: &mut rusqlite::CachedStatement<'_>, params: &Params) -> Result<(), StatementError> {
    let expected = stmt.parameter_count();
    match params {
        Params::Positional(values) => {
            if values.len() != expected {
                return Err(StatementError::Bind(format!(
                    "the statement has {expected} parameter(s) but {} value(s) were given; pass \
                     exactly one value per parameter",
                    values.len()
                )));
            }
            for (i, v) in values.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, SqlValue(v))?;
            }
        }
        Params::Named(pairs) => {
            if pairs.len() != expected {
                return Err(StatementError::Bind(format!(
                    "the statement has {expected} parameter(s) but {} named value(s) were given",
                    pairs.len()
                )));
            }
            for (name, v) in pairs {
                let Some(idx) = stmt.parameter_index(name)? else {
                    return Err(StatementError::Bind(format!(
                        "the statement has no parameter named {name:?}; names include their \
                         prefix, as in \":id\""
                    )));
                };
                stmt.raw_bind_parameter(idx, SqlValue(v))?;
            }
        }
    }
    Ok(())
}

struct SqlValue<'a>(&'a Value);

impl rusqlite::ToSql for SqlValue<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn to_value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn error_body(e: StatementError, guard: &Guard, limits: &StatementLimits) -> ErrorBody {
    match e {
        StatementError::Bind(msg) => ErrorBody {
            kind: ErrorKind::Sql,
            code: ffi::SQLITE_RANGE,
            extended_code: ffi::SQLITE_RANGE,
            message: msg,
            statement_index: None,
        },
        StatementError::TooLarge { rows, limit } => too_large(rows, limit),
        StatementError::Sqlite(e) => sqlite_error_body(e, guard, limits),
    }
}

fn sqlite_error_body(e: rusqlite::Error, guard: &Guard, limits: &StatementLimits) -> ErrorBody {
    let (code, extended, message) = match &e {
        rusqlite::Error::SqliteFailure(err, msg) => (
            err.code as i32,
            err.extended_code,
            msg.clone().unwrap_or_else(|| err.to_string()),
        ),
        rusqlite::Error::MultipleStatement => {
            return ErrorBody {
                kind: ErrorKind::Sql,
                code: ffi::SQLITE_MISUSE,
                extended_code: ffi::SQLITE_MISUSE,
                message: "the SQL holds more than one statement; send one statement per \
                          request, or several statements as a batch"
                    .into(),
                statement_index: None,
            };
        }
        other => (ffi::SQLITE_ERROR, ffi::SQLITE_ERROR, other.to_string()),
    };
    let primary = extended & 0xff;
    if primary == ffi::SQLITE_AUTH
        && let Some(why) = guard.take_refusal()
    {
        return ErrorBody {
            kind: ErrorKind::Refused,
            code: ffi::SQLITE_AUTH,
            extended_code: extended,
            message: why,
            statement_index: None,
        };
    }
    if primary == ffi::SQLITE_INTERRUPT
        && let Some(cap) = limits.read_cap
    {
        return ErrorBody::new(
            ErrorKind::Timeout,
            format!(
                "read interrupted after {} ms: it hit the cap of {} ms on an open read \
                 transaction (--max-read-ms), which keeps a slow read from holding back WAL \
                 checkpoints. Nothing was changed. Narrow the query (an index, LIMIT), page \
                 through the table, or raise max-read-ms in the config",
                limits.started.elapsed().as_millis(),
                cap.as_millis()
            ),
        );
    }
    if primary == ffi::SQLITE_INTERRUPT {
        return ErrorBody::new(
            ErrorKind::Timeout,
            format!(
                "interrupted after {} ms: the request exceeded its time limit of {} ms and was \
                 rolled back; nothing was applied. Narrow the statement, or send a larger \
                 timeout (the daemon caps it at --max-request-timeout)",
                limits.started.elapsed().as_millis(),
                limits.timeout.as_millis()
            ),
        );
    }
    let _ = code;
    ErrorBody {
        kind: ErrorKind::Sql,
        code: primary,
        extended_code: extended,
        message,
        statement_index: None,
    }
}

/// Error for a failure of the daemon's own statements (BEGIN, COMMIT...).
pub fn internal_error(what: &str, e: &rusqlite::Error) -> ErrorBody {
    let (code, extended) = match e {
        rusqlite::Error::SqliteFailure(err, _) => (err.extended_code & 0xff, err.extended_code),
        _ => (ffi::SQLITE_ERROR, ffi::SQLITE_ERROR),
    };
    ErrorBody {
        kind: ErrorKind::Sql,
        code,
        extended_code: extended,
        message: format!("{what} failed: {e}; nothing in this transaction was applied"),
        statement_index: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> StatementLimits {
        let now = Instant::now();
        StatementLimits {
            deadline: now + Duration::from_secs(5),
            started: now,
            timeout: Duration::from_secs(5),
            max_result_bytes: 1 << 20,
            read_cap: None,
        }
    }

    fn stmt(sql: &str) -> Statement {
        Statement {
            sql: sql.into(),
            params: Params::default(),
        }
    }

    fn open() -> (tempfile::TempDir, Connection, Guard) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (conn, guard) =
            open_writer(&dir.path().join("t.db"), Synchronous::Full, 4 << 20).expect("open");
        (dir, conn, guard)
    }

    #[test]
    fn refuses_transaction_control_and_connection_pragmas() {
        let (_dir, conn, guard) = open();
        for sql in [
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT x",
            "RELEASE x",
            "ATTACH 'other.db' AS o",
            "DETACH main",
            "PRAGMA journal_mode = DELETE",
            "PRAGMA synchronous = OFF",
            "PRAGMA locking_mode = EXCLUSIVE",
            "PRAGMA foreign_keys = OFF",
            "PRAGMA wal_checkpoint",
            "PRAGMA schema_version = 3",
        ] {
            let err =
                match run_statement(&conn, &guard, &stmt(sql), Want::Changes, &limits(), false) {
                    Err(e) => e,
                    Ok(_) => panic!("{sql} was allowed"),
                };
            assert_eq!(err.kind, ErrorKind::Refused, "{sql}: {err:?}");
            assert!(err.message.contains("refused"), "{sql}: {}", err.message);
        }
        // The connection settings are untouched.
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn allows_reading_pragmas() {
        let (_dir, conn, guard) = open();
        run_statement(
            &conn,
            &guard,
            &stmt("CREATE TABLE t(a)"),
            Want::Changes,
            &limits(),
            false,
        )
        .expect("create");
        for sql in [
            "PRAGMA table_info(t)",
            "PRAGMA integrity_check",
            "PRAGMA journal_mode",
            "PRAGMA user_version = 7",
            "PRAGMA user_version",
        ] {
            run_statement(&conn, &guard, &stmt(sql), Want::Rows, &limits(), false)
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
    }

    #[test]
    fn runaway_statement_is_interrupted() {
        let (_dir, conn, guard) = open();
        let mut l = limits();
        l.deadline = Instant::now() + Duration::from_millis(50);
        let sql =
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c";
        let err = match run_statement(&conn, &guard, &stmt(sql), Want::Rows, &l, false) {
            Err(e) => e,
            Ok(_) => panic!("an endless query finished"),
        };
        assert_eq!(err.kind, ErrorKind::Timeout, "{err:?}");
    }

    #[test]
    fn oversized_result_fails_clearly() {
        let (_dir, conn, guard) = open();
        let mut l = limits();
        l.max_result_bytes = 10_000;
        let sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 100000) SELECT x, 'abcdefgh' FROM c";
        let err = match run_statement(&conn, &guard, &stmt(sql), Want::Rows, &l, false) {
            Err(e) => e,
            Ok(_) => panic!("an oversized result was returned"),
        };
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert!(err.message.contains("10000"), "{}", err.message);
    }

    #[test]
    fn parameter_count_mismatch_names_both_counts() {
        let (_dir, conn, guard) = open();
        let st = Statement {
            sql: "SELECT ?1, ?2".into(),
            params: Params::Positional(vec![Value::Integer(1)]),
        };
        let err = match run_statement(&conn, &guard, &st, Want::Rows, &limits(), false) {
            Err(e) => e,
            Ok(_) => panic!("bound too few parameters"),
        };
        assert!(
            err.message.contains("2 parameter(s) but 1"),
            "{}",
            err.message
        );
    }
}
