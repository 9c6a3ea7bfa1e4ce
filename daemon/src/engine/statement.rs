//! Running one client statement: prepare (cached), bind, step under the
//! guard, collect rows within the result limit, and turn SQLite's errors
//! into typed answers. The writer and the readers both go through here, so
//! a statement behaves the same whichever connection serves it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nexusd_protocol::{
    ErrorBody, ErrorKind, Executed, Params, ResponseBody, Rows, Statement, Value,
};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ffi};

use super::functions::{self, ClientCounts};
use super::guard::{Guard, Refusal, Scope};
use super::parts::{Head, PART_BYTES, Parts};
use super::slowlog;
use super::transactions::Owner;

/// Whether any client has asked for declared column types
/// (`features::DECLTYPES`) since the daemon started. Until one does,
/// results are built without them, which saves an allocation per column of
/// every answer; after that every result has them, and the sessions send
/// them only to the clients that asked.
static DECLTYPES_WANTED: AtomicBool = AtomicBool::new(false);

/// A client asked for declared types: build results with them from now on.
pub(crate) fn want_decltypes() {
    DECLTYPES_WANTED.store(true, Ordering::Relaxed);
}

/// Limits one client statement runs under, and whose it is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatementLimits<'a> {
    pub(crate) deadline: Instant,
    pub(crate) started: Instant,
    pub(crate) timeout: Duration,
    pub(crate) max_result_bytes: usize,
    /// Set when `deadline` is the reader's cap on an open read transaction
    /// (`--max-read-ms`) rather than the request's own time limit.
    pub(crate) read_cap: Option<Duration>,
    /// Set when `deadline` is earlier than the request's own: the writer
    /// stops the statement there so that the writes batched before it
    /// commit by their deadlines, and runs it again alone.
    pub(crate) yields: bool,
    /// The client that sent it: the slow-statement log names it, and SQL's
    /// `last_insert_rowid()` answers its last inserted rowid.
    pub(crate) owner: &'a Owner,
    /// Where a result over one part goes ahead in parts, when the client
    /// takes them and this thread may wait for it; `None`: a result over
    /// `max_result_bytes` fails with `TooLarge`.
    pub(crate) parts: Option<&'a Parts>,
}

impl<'a> StatementLimits<'a> {
    /// The limits of `owner`'s request that arrived at `arrived` and must
    /// be done by `deadline`.
    pub(crate) fn for_request(
        arrived: Instant,
        deadline: Instant,
        max_result_bytes: usize,
        owner: &'a Owner,
    ) -> Self {
        StatementLimits {
            deadline,
            started: arrived,
            timeout: deadline.saturating_duration_since(arrived),
            max_result_bytes,
            read_cap: None,
            yields: false,
            owner,
            parts: None,
        }
    }
}

/// What one statement produced.
pub(crate) enum Output {
    Executed(Executed),
    Rows(Rows),
}

impl From<Output> for ResponseBody {
    fn from(out: Output) -> ResponseBody {
        match out {
            Output::Executed(e) => ResponseBody::Executed(e),
            Output::Rows(r) => ResponseBody::Rows(r),
        }
    }
}

/// What a reader made of a statement: it ran, or SQLite does not report it
/// read-only, so it was not run and belongs on the writer.
pub(crate) enum ReadOnly {
    Ran(Output),
    NotReadOnly,
}

/// Whether to keep the rows a statement returns.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
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
pub(crate) fn rows_size(rows: &Rows) -> usize {
    rows.rows
        .iter()
        .flatten()
        .map(|v| VALUE_OVERHEAD + v.heap_size())
        .sum()
}

/// The error for a result over the limit; nothing was applied.
pub(crate) fn too_large(rows: usize, limit: usize) -> ErrorBody {
    ErrorBody::new(
        ErrorKind::TooLarge,
        format!(
            "the result exceeds the limit of {limit} bytes after {rows} rows; nothing was \
             applied; add a LIMIT and page through it (WHERE key > ? ORDER BY key LIMIT n), \
             or raise --max-result-bytes"
        ),
    )
}

/// Prepares (cached), binds and runs one client statement under `guard`,
/// whatever it does: the writer's way.
pub(crate) fn run_statement(
    conn: &Connection,
    guard: &Guard,
    scope: Scope,
    st: &Statement,
    want: Want,
    limits: &StatementLimits,
) -> Result<Output, ErrorBody> {
    match run(conn, guard, scope, st, want, limits, Only::Any)? {
        ReadOnly::Ran(out) => Ok(out),
        // `Only::Any` runs every statement, and only `Scope::Snapshot`
        // asks for the writer.
        ReadOnly::NotReadOnly => Err(ErrorBody::new(
            ErrorKind::Internal,
            "a statement on the writer was handed back for the writer",
        )),
    }
}

/// Whether `st` writes and returns rows (`INSERT`, `UPDATE` or `DELETE ...
/// RETURNING`): such a statement has made its changes before its first row
/// is read, so stopping it part way through its rows leaves them made.
/// Prepared under the guard as `run` prepares it, so the run that follows
/// finds it in the cache; a statement that fails to prepare is `false`,
/// and fails as it would have when it runs.
pub(crate) fn writes_rows(
    conn: &Connection,
    guard: &Guard,
    scope: Scope,
    st: &Statement,
    deadline: Instant,
) -> bool {
    if is_blank(&st.sql) {
        return false;
    }
    guard.client(deadline, scope, || match conn.prepare_cached(&st.sql) {
        Ok(stmt) if guard.control_allowed() => {
            // A savepoint is kept out of the cache (see `run_guarded`).
            stmt.discard();
            false
        }
        Ok(stmt) => !stmt.readonly() && stmt.column_count() > 0,
        Err(_) => false,
    })
}

/// Runs one client statement only if SQLite reports it read-only
/// (`sqlite3_stmt_readonly`), checked before it runs: the readers' way, and
/// a snapshot transaction's. In `Scope::Snapshot` a savepoint is handed
/// back too: it means the transaction is about to write.
pub(crate) fn run_if_read_only(
    conn: &Connection,
    guard: &Guard,
    scope: Scope,
    st: &Statement,
    want: Want,
    limits: &StatementLimits,
) -> Result<ReadOnly, ErrorBody> {
    run(conn, guard, scope, st, want, limits, Only::ReadOnly)
}

/// Which statements `run` runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    Any,
    ReadOnly,
}

fn run(
    conn: &Connection,
    guard: &Guard,
    scope: Scope,
    st: &Statement,
    want: Want,
    limits: &StatementLimits,
    only: Only,
) -> Result<ReadOnly, ErrorBody> {
    let began = Instant::now();
    let owner = limits.owner;
    functions::set_client(ClientCounts {
        rowid: owner.last_rowid.load(Ordering::Relaxed),
        changes: count(owner.changes.load(Ordering::Relaxed)),
        total_changes: count(owner.total_changes.load(Ordering::Relaxed)),
    });
    forget_last_insert_rowid(conn);
    let total_before = conn.total_changes();
    let mut result = guard.client(limits.deadline, scope, || {
        run_guarded(conn, guard, st, want, limits, only).or_else(|e| error_body(e, guard, limits))
    });
    // Kept even when the statement failed or is rolled back, as SQLite
    // keeps a connection's.
    let inserted = conn.last_insert_rowid();
    if inserted != 0 {
        owner.last_rowid.store(inserted, Ordering::Relaxed);
    }
    let changed = conn.total_changes().saturating_sub(total_before);
    if changed != 0 {
        owner.total_changes.fetch_add(changed, Ordering::Relaxed);
    }
    // The answer carries it too, for a driver's per-connection total; a
    // failure's too, as SQLite counts what it changed before it failed.
    match &mut result {
        Ok(ReadOnly::Ran(Output::Executed(e))) => e.total_changes = changed,
        Ok(ReadOnly::Ran(Output::Rows(r))) => r.total_changes = changed,
        Ok(ReadOnly::NotReadOnly) => {}
        Err(e) => e.total_changes = changed,
    }
    // The statement's own time: a slow client's taking of the parts is
    // its client's, not the statement's.
    let ran = began
        .elapsed()
        .saturating_sub(limits.parts.map_or(Duration::ZERO, |p| p.sending()));
    if slowlog::is_slow(ran) {
        let ran_on = if scope != Scope::Request {
            "transaction"
        } else if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            "reader"
        } else {
            "writer"
        };
        let error = result.as_ref().err().map(|e| e.message.clone());
        slowlog::record(
            st,
            limits.owner,
            ran,
            began.saturating_duration_since(limits.started),
            ran_on,
            error,
        );
    }
    result
}

fn run_guarded(
    conn: &Connection,
    guard: &Guard,
    st: &Statement,
    want: Want,
    limits: &StatementLimits,
    only: Only,
) -> Result<ReadOnly, StatementError> {
    if is_blank(&st.sql) {
        // SQLite prepares nothing from this, and stepping nothing is
        // SQLITE_MISUSE, "bad parameter or other API misuse". Answer as
        // `sqlite3` does: nothing ran, and there is nothing to bind.
        let given = st.params.len();
        if given > 0 {
            return Err(StatementError::Bind(format!(
                "the SQL text holds no statement (only whitespace, comments or semicolons), but \
                 {given} value(s) were given; send the statement with its parameters"
            )));
        }
        return Ok(ReadOnly::Ran(match want {
            Want::Rows => Output::Rows(Rows::default()),
            Want::Changes | Want::Either => Output::Executed(Executed::new(0, 0)),
        }));
    }
    let mut stmt = conn.prepare_cached(&st.sql)?;
    if guard.control_allowed() {
        // A savepoint, allowed in this transaction: run it, and keep it out
        // of the cache, where it would escape the next check.
        let result = run_prepared(conn, &mut stmt, st, want, limits, only);
        stmt.discard();
        return result;
    }
    run_prepared(conn, &mut stmt, st, want, limits, only)
}

fn run_prepared(
    conn: &Connection,
    stmt: &mut rusqlite::CachedStatement<'_>,
    st: &Statement,
    want: Want,
    limits: &StatementLimits,
    only: Only,
) -> Result<ReadOnly, StatementError> {
    if only == Only::ReadOnly && !stmt.readonly() {
        return Ok(ReadOnly::NotReadOnly);
    }
    bind(stmt, &st.params)?;
    let dml = is_dml(stmt, &st.sql);
    if dml {
        // A DML statement that fails leaves SQLite's changes() at 0.
        limits.owner.changes.store(0, Ordering::Relaxed);
    }
    let columns = stmt.column_count();
    let keep_rows = match want {
        Want::Changes => false,
        Want::Rows => true,
        Want::Either => columns > 0,
    };
    let mut out = Rows::default();
    if keep_rows && DECLTYPES_WANTED.load(Ordering::Relaxed) {
        for c in stmt.columns() {
            out.columns.push(c.name().to_owned());
            out.decltypes.push(c.decl_type().map(str::to_owned));
        }
    } else if keep_rows {
        out.columns = stmt.column_names().map(String::from).collect();
    }
    // With parts, the rows held here go to the client whenever the next
    // row would take them over one part; without, over the limit fails.
    let held_bytes = match limits.parts {
        Some(_) => limits.max_result_bytes.min(PART_BYTES),
        None => limits.max_result_bytes,
    };
    let mut size = 0usize;
    let mut seen = 0usize;
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next()? {
        if !keep_rows {
            continue;
        }
        seen += 1;
        let mut values = Vec::with_capacity(columns);
        let mut row_size = 0usize;
        for i in 0..columns {
            let v = to_value(row.get_ref(i)?);
            row_size += VALUE_OVERHEAD + v.heap_size();
            values.push(v);
        }
        if size + row_size > held_bytes {
            match limits.parts {
                // A row over the limit would not fit a frame: no part can
                // carry it.
                Some(_) if row_size > limits.max_result_bytes => {
                    return Err(StatementError::RowTooLarge {
                        row: seen,
                        bytes: row_size,
                        limit: limits.max_result_bytes,
                    });
                }
                Some(parts) => {
                    if !out.rows.is_empty() {
                        let head = Head {
                            columns: &out.columns,
                            decltypes: &out.decltypes,
                        };
                        parts
                            .send(head, std::mem::take(&mut out.rows), limits.deadline)
                            .map_err(StatementError::Parts)?;
                    }
                    size = 0;
                }
                None => {
                    return Err(StatementError::TooLarge {
                        rows: seen,
                        limit: limits.max_result_bytes,
                    });
                }
            }
        }
        size += row_size;
        out.rows.push(values);
    }
    drop(rows);
    // sqlite3_changes() keeps the count of the last INSERT, UPDATE or
    // DELETE, so it is this statement's own (0 included) only if it is one.
    let rows_affected = if dml { conn.changes() } else { 0 };
    if dml {
        limits.owner.changes.store(rows_affected, Ordering::Relaxed);
    }
    if keep_rows {
        // INSERT ... RETURNING: the client's driver sets its lastrowid
        // from this, as sqlite3 does (0 for any statement that inserted
        // nothing: the connection's was set to 0 before it ran).
        out.last_insert_rowid = conn.last_insert_rowid();
        return Ok(ReadOnly::Ran(Output::Rows(out)));
    }
    Ok(ReadOnly::Ran(Output::Executed(Executed::new(
        rows_affected,
        conn.last_insert_rowid(),
    ))))
}

/// Whether the statement is an INSERT, UPDATE, DELETE or REPLACE (a WITH
/// clause before it included): one that sets SQLite's `changes()`, even
/// when it changed no row. DDL, pragmas and savepoints write too, but set
/// nothing.
fn is_dml(stmt: &rusqlite::CachedStatement<'_>, sql: &str) -> bool {
    if stmt.readonly() {
        return false;
    }
    let text = skip_blank(sql);
    let word = &text[..text
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(text.len())];
    ["INSERT", "UPDATE", "DELETE", "REPLACE", "WITH"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(word))
}

/// A count as SQL's integers hold it.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Sets the connection's last-insert rowid to 0 before a client's
/// statement, so that what the statement answers is its own: the rowid of
/// the last row it inserted, or 0 if it inserted none. Without this, an
/// UPDATE, an `INSERT OR IGNORE` that was ignored, or an upsert that
/// updated would answer the rowid some other client's write left on the
/// writer's connection. SQL's `last_insert_rowid()` answers the client's
/// own value instead (`functions.rs`).
fn forget_last_insert_rowid(conn: &Connection) {
    // SAFETY: the handle is the open connection `conn` owns, used on this
    // thread only; the call sets one field of it and cannot fail.
    unsafe { rusqlite::ffi::sqlite3_set_last_insert_rowid(conn.handle(), 0) }
}

/// Whether `sql` holds no statement: only whitespace, comments and
/// semicolons, which SQLite's tokenizer skips.
pub fn is_blank(sql: &str) -> bool {
    skip_blank(sql).is_empty()
}

/// `sql` from its first statement on: past the whitespace, comments and
/// semicolons before it (an unclosed `/*` comment runs to the end). Looks
/// no further than the first other character.
pub fn skip_blank(sql: &str) -> &str {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\x0c' | b'\r' | b';' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |n| i + n + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = b[i + 2..]
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map_or(b.len(), |n| i + 2 + n + 2);
            }
            // Every byte skipped is ASCII, so `i` is on a char boundary.
            _ => return &sql[i..],
        }
    }
    ""
}

enum StatementError {
    Sqlite(rusqlite::Error),
    Bind(String),
    TooLarge {
        rows: usize,
        limit: usize,
    },
    /// One row alone is over the limit, so no part can carry it.
    RowTooLarge {
        row: usize,
        bytes: usize,
        limit: usize,
    },
    /// A part of the result could not go to the client.
    Parts(ErrorBody),
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

/// The typed answer to a failed statement; or, for a savepoint the guard
/// stopped in a snapshot, "this belongs on the writer".
fn error_body(
    e: StatementError,
    guard: &Guard,
    limits: &StatementLimits,
) -> Result<ReadOnly, ErrorBody> {
    Err(match e {
        StatementError::Bind(msg) => ErrorBody {
            kind: ErrorKind::Sql,
            code: ffi::SQLITE_RANGE,
            extended_code: ffi::SQLITE_RANGE,
            message: msg,
            statement_index: None,
            total_changes: 0,
        },
        StatementError::TooLarge { rows, limit } => too_large(rows, limit),
        StatementError::RowTooLarge { row, bytes, limit } => ErrorBody::new(
            ErrorKind::TooLarge,
            format!(
                "row {row} of the result alone is {bytes} bytes, over the limit of {limit} \
                 bytes; nothing was applied; select fewer or shorter columns (substr() of a \
                 long value), or raise --max-result-bytes"
            ),
        ),
        StatementError::Parts(e) => e,
        StatementError::Sqlite(e) => return sqlite_error_body(e, guard, limits),
    })
}

fn sqlite_error_body(
    e: rusqlite::Error,
    guard: &Guard,
    limits: &StatementLimits,
) -> Result<ReadOnly, ErrorBody> {
    let (code, extended, message) = match &e {
        rusqlite::Error::SqliteFailure(err, msg) => (
            err.code as i32,
            err.extended_code,
            msg.clone().unwrap_or_else(|| err.to_string()),
        ),
        rusqlite::Error::MultipleStatement => {
            return Err(ErrorBody {
                kind: ErrorKind::Sql,
                code: ffi::SQLITE_MISUSE,
                extended_code: ffi::SQLITE_MISUSE,
                message: "the SQL holds more than one statement; send one statement per \
                          request, or several statements as a batch"
                    .into(),
                statement_index: None,
                total_changes: 0,
            });
        }
        other => (ffi::SQLITE_ERROR, ffi::SQLITE_ERROR, other.to_string()),
    };
    let primary = extended & 0xff;
    if primary == ffi::SQLITE_AUTH {
        match guard.take_refusal() {
            Some(Refusal::NeedsWriter) => return Ok(ReadOnly::NotReadOnly),
            Some(Refusal::Refused(why)) => {
                return Err(ErrorBody {
                    kind: ErrorKind::Refused,
                    code: ffi::SQLITE_AUTH,
                    extended_code: extended,
                    message: why,
                    statement_index: None,
                    total_changes: 0,
                });
            }
            None => {}
        }
    }
    if primary == ffi::SQLITE_INTERRUPT
        && let Some(cap) = limits.read_cap
    {
        return Err(ErrorBody::new(
            ErrorKind::Timeout,
            format!(
                "read interrupted after {} ms: it hit the cap of {} ms on an open read \
                 transaction (--max-read-ms), which keeps a slow read from holding back WAL \
                 checkpoints. Nothing was changed. Narrow the query (an index, LIMIT), page \
                 through the table, or raise max-read-ms in the config",
                limits.started.elapsed().as_millis(),
                cap.as_millis()
            ),
        ));
    }
    if primary == ffi::SQLITE_INTERRUPT && limits.yields {
        // Never sent: the writer runs the statement again. The slow log
        // shows it.
        return Err(ErrorBody::new(
            ErrorKind::Timeout,
            format!(
                "stopped after {} ms, within its time limit of {} ms, so that the writes \
                 batched before it commit by their deadlines; rolled back, and run again at \
                 once in a batch of its own",
                limits.started.elapsed().as_millis(),
                limits.timeout.as_millis()
            ),
        ));
    }
    if primary == ffi::SQLITE_INTERRUPT {
        return Err(ErrorBody::new(
            ErrorKind::Timeout,
            format!(
                "interrupted after {} ms: the request exceeded its time limit of {} ms and was \
                 rolled back; nothing was applied. Narrow the statement, or send a larger \
                 timeout (the daemon caps it at --max-request-timeout)",
                limits.started.elapsed().as_millis(),
                limits.timeout.as_millis()
            ),
        ));
    }
    if message.starts_with("cannot VACUUM") {
        // Every client statement runs inside the daemon's transaction, where
        // SQLite never runs VACUUM: so VACUUM and VACUUM INTO from a client
        // always end here, whatever their target.
        return Err(ErrorBody {
            kind: ErrorKind::Refused,
            code: ffi::SQLITE_AUTH,
            extended_code: ffi::SQLITE_AUTH,
            message: "VACUUM is refused from clients: it would rebuild the database under every \
                      other client, and VACUUM INTO would write a file wherever the statement \
                      says. Run `nexusd ctl vacuum` to rebuild it, or `nexusd ctl backup PATH` \
                      for a compact copy (what VACUUM INTO makes)"
                .into(),
            statement_index: None,
            total_changes: 0,
        });
    }
    let _ = code;
    Err(ErrorBody {
        kind: ErrorKind::Sql,
        code: primary,
        extended_code: extended,
        message,
        statement_index: None,
        total_changes: 0,
    })
}

/// A failure of one of the daemon's own statements (BEGIN, COMMIT, a
/// checkpoint...), with SQLite's codes. It says nothing of what was
/// applied: the caller adds that where it is known.
pub(crate) fn own_statement_error(what: &str, e: &rusqlite::Error) -> ErrorBody {
    let (code, extended) = match e {
        rusqlite::Error::SqliteFailure(err, _) => (err.extended_code & 0xff, err.extended_code),
        _ => (ffi::SQLITE_ERROR, ffi::SQLITE_ERROR),
    };
    ErrorBody {
        kind: ErrorKind::Sql,
        code,
        extended_code: extended,
        message: format!("{what} failed: {e}"),
        statement_index: None,
        total_changes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::db::{Synchronous, open_writer};

    static TESTER: Owner = Owner::new(1, String::new(), None);

    fn limits() -> StatementLimits<'static> {
        let now = Instant::now();
        StatementLimits {
            deadline: now + Duration::from_secs(5),
            started: now,
            timeout: Duration::from_secs(5),
            max_result_bytes: 1 << 20,
            read_cap: None,
            yields: false,
            owner: &TESTER,
            parts: None,
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
        let (conn, guard) = open_writer(
            &dir.path().join("t.db"),
            Synchronous::Full,
            4 << 20,
            false,
            None,
        )
        .expect("open");
        (dir, conn, guard)
    }

    /// Text with no statement in it runs as nothing, as in `sqlite3`,
    /// instead of failing with SQLite's "bad parameter or other API
    /// misuse"; a statement after a comment still runs.
    #[test]
    fn text_with_no_statement_runs_as_nothing() {
        let (_dir, conn, guard) = open();
        let run = |st: &Statement, want| {
            run_statement(&conn, &guard, Scope::Request, st, want, &limits())
        };
        for sql in [
            "",
            "  \n\t",
            ";",
            " ; ;",
            "-- a comment",
            "-- one\n-- two\n",
            "/* block */",
            "/* unclosed",
            "/**/;--",
        ] {
            assert!(is_blank(sql), "{sql:?}");
            for want in [Want::Changes, Want::Either] {
                match run(&stmt(sql), want) {
                    Ok(Output::Executed(e)) => assert_eq!(e.rows_affected, 0, "{sql:?}"),
                    other => panic!("{sql:?}: {:?}", other.map(|_| "rows")),
                }
            }
            match run(&stmt(sql), Want::Rows) {
                Ok(Output::Rows(r)) => assert!(r.columns.is_empty() && r.rows.is_empty()),
                other => panic!("{sql:?}: {:?}", other.map(|_| "executed")),
            }
            let with_value = Statement {
                sql: sql.into(),
                params: Params::Positional(vec![Value::Integer(1)]),
            };
            let err = match run(&with_value, Want::Either) {
                Err(e) => e,
                Ok(_) => panic!("{sql:?} took a value"),
            };
            assert!(
                err.message.contains("holds no statement"),
                "{}",
                err.message
            );
        }
        for sql in [
            "-- c\nSELECT 1",
            "/* c */ SELECT 1",
            "; SELECT 1",
            " SELECT 1",
        ] {
            assert!(!is_blank(sql), "{sql:?}");
            assert_eq!(skip_blank(sql), "SELECT 1", "{sql:?}");
        }
        assert_eq!(skip_blank("-"), "-");
        assert_eq!(skip_blank("/* é */é"), "é");
        match run(&stmt("/* c */ SELECT 7"), Want::Either) {
            Ok(Output::Rows(r)) => assert_eq!(r.rows, [[Value::Integer(7)]]),
            other => panic!("{:?}", other.map(|_| "executed")),
        }
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
            "PRAGMA locking_mode = EXCLUSIVE",
            "PRAGMA recursive_triggers = ON",
            "PRAGMA foreign_keys = OFF",
            "PRAGMA wal_checkpoint",
            "PRAGMA wal_checkpoint(TRUNCATE)",
            "PRAGMA schema_version = 3",
        ] {
            let err = match run_statement(
                &conn,
                &guard,
                Scope::Request,
                &stmt(sql),
                Want::Changes,
                &limits(),
            ) {
                Err(e) => e,
                Ok(_) => panic!("{sql} was allowed"),
            };
            assert_eq!(err.kind, ErrorKind::Refused, "{sql}: {err:?}");
            assert!(err.message.contains("refused"), "{sql}: {}", err.message);
            if sql.contains("wal_checkpoint") {
                assert!(
                    err.message.contains("checkpoints the WAL itself")
                        && err.message.contains("nexusd ctl checkpoint"),
                    "{sql}: {}",
                    err.message
                );
            }
        }
        // The connection settings are untouched.
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
    }

    /// A program's start-up pragmas that ask for what the daemon already
    /// does run without error and change nothing: `sqlite3` programs keep
    /// them when they move to nexusd.
    #[test]
    fn settings_the_daemon_already_has_are_accepted_and_change_nothing() {
        let (_dir, conn, guard) = open();
        let run = |sql: &str| {
            run_statement(
                &conn,
                &guard,
                Scope::Request,
                &stmt(sql),
                Want::Either,
                &limits(),
            )
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        };
        let Output::Rows(mode) = run("PRAGMA journal_mode=WAL") else {
            panic!("journal_mode answered no rows");
        };
        assert_eq!(mode.rows, [[Value::Text("wal".into())]]);
        for sql in [
            "PRAGMA journal_mode = 'wal'",
            "PRAGMA foreign_keys = ON",
            "PRAGMA foreign_keys=1",
            "PRAGMA busy_timeout = 30000",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA synchronous = OFF",
            // The "performance" block of many programs: ignored, since the
            // daemon tunes its shared connections and no answer changes.
            "PRAGMA cache_size = -64000",
            "PRAGMA temp_store = MEMORY",
            "PRAGMA mmap_size = 268435456",
            "PRAGMA wal_autocheckpoint = 1000",
            "PRAGMA journal_size_limit = 67108864",
            "PRAGMA cache_spill = OFF",
            "PRAGMA automatic_index = OFF",
            "PRAGMA threads = 4",
            "PRAGMA soft_heap_limit = 1000000",
            "PRAGMA hard_heap_limit = 1000000",
            "PRAGMA analysis_limit = 400",
        ] {
            run(sql);
        }
        let read = |name: &str| -> i64 {
            conn.pragma_query_value(None, name, |r| r.get(0))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        assert_eq!(read("cache_size"), -2000, "SQLite's default cache stays");
        assert_eq!(read("temp_store"), 0);
        assert_eq!(read("mmap_size"), 0);
        assert_eq!(
            read("wal_autocheckpoint"),
            0,
            "the daemon checkpoints itself"
        );
        assert_eq!(read("automatic_index"), 1);
        assert_eq!(read("soft_heap_limit"), 0);
        assert_eq!(read("hard_heap_limit"), 0);
        let timeout: i64 = conn
            .pragma_query_value(None, "busy_timeout", |r| r.get(0))
            .expect("busy_timeout");
        assert_eq!(timeout, super::super::db::BUSY_TIMEOUT.as_millis() as i64);
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .expect("synchronous");
        assert_eq!(sync, 2, "the writer's own synchronous level is untouched");
        let fk: i64 = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .expect("foreign_keys");
        assert_eq!(fk, 1);
    }

    #[test]
    fn refuses_temp_objects_in_every_client_scope() {
        let (_dir, conn, guard) = open();
        run_statement(
            &conn,
            &guard,
            Scope::Request,
            &stmt("CREATE TABLE t(a)"),
            Want::Changes,
            &limits(),
        )
        .expect("create");
        for scope in [Scope::Request, Scope::Transaction] {
            for (sql, kind) in [
                ("CREATE TEMP TABLE scratch(a)", "TABLE scratch"),
                (
                    "CREATE TEMPORARY TABLE scratch AS SELECT 1",
                    "TABLE scratch",
                ),
                ("CREATE TABLE temp.scratch(a)", "TABLE scratch"),
                ("CREATE TEMP VIEW v AS SELECT 1", "VIEW v"),
                (
                    "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
                    "TRIGGER tr",
                ),
            ] {
                let err =
                    match run_statement(&conn, &guard, scope, &stmt(sql), Want::Changes, &limits())
                    {
                        Err(e) => e,
                        Ok(_) => panic!("{sql} was allowed in {scope:?}"),
                    };
                assert_eq!(err.kind, ErrorKind::Refused, "{sql}: {err:?}");
                assert!(
                    err.message
                        .contains(&format!("CREATE TEMP {kind} is refused"))
                        && err.message.contains("every client shares"),
                    "{sql}: {}",
                    err.message
                );
            }
        }
        let temps: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_temp_master", [], |r| r.get(0))
            .expect("temp schema");
        assert_eq!(temps, 0, "a refused TEMP object was created");
    }

    #[test]
    fn refuses_vacuum_and_vacuum_into_pointing_to_ctl() {
        let (dir, conn, guard) = open();
        let target = dir.path().join("copy.db");
        for sql in [
            "VACUUM".to_owned(),
            format!("VACUUM INTO '{}'", target.display()),
        ] {
            // As the writer runs client statements: inside its transaction.
            conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
            let err = match run_statement(
                &conn,
                &guard,
                Scope::Request,
                &stmt(&sql),
                Want::Changes,
                &limits(),
            ) {
                Err(e) => e,
                Ok(_) => panic!("{sql} was allowed"),
            };
            conn.execute_batch("ROLLBACK").expect("rollback");
            assert_eq!(err.kind, ErrorKind::Refused, "{sql}: {err:?}");
            assert!(
                err.message.contains("nexusd ctl vacuum") && err.message.contains("ctl backup"),
                "{sql}: {}",
                err.message
            );
        }
        assert!(!target.exists(), "VACUUM INTO wrote its file");
    }

    #[test]
    fn has_sqlites_math_functions() {
        // As the sqlite3 module of most Python builds has them (see
        // .cargo/config.toml).
        let (_dir, conn, guard) = open();
        let out = run_statement(
            &conn,
            &guard,
            Scope::Request,
            &stmt("SELECT floor(5.52 / 2.4), sqrt(16.0), pow(2, 10)"),
            Want::Rows,
            &limits(),
        )
        .expect("math functions");
        let Output::Rows(out) = out else {
            panic!("not rows")
        };
        assert_eq!(
            out.rows,
            vec![vec![
                Value::Real(2.0),
                Value::Real(4.0),
                Value::Real(1024.0)
            ]]
        );
    }

    #[test]
    fn allows_reading_pragmas() {
        let (_dir, conn, guard) = open();
        run_statement(
            &conn,
            &guard,
            Scope::Request,
            &stmt("CREATE TABLE t(a)"),
            Want::Changes,
            &limits(),
        )
        .expect("create");
        for sql in [
            "PRAGMA table_info(t)",
            "PRAGMA integrity_check",
            "PRAGMA journal_mode",
            "PRAGMA user_version = 7",
            "PRAGMA user_version",
        ] {
            run_statement(
                &conn,
                &guard,
                Scope::Request,
                &stmt(sql),
                Want::Rows,
                &limits(),
            )
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
        let err = match run_statement(&conn, &guard, Scope::Request, &stmt(sql), Want::Rows, &l) {
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
        let err = match run_statement(&conn, &guard, Scope::Request, &stmt(sql), Want::Rows, &l) {
            Err(e) => e,
            Ok(_) => panic!("an oversized result was returned"),
        };
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert!(err.message.contains("10000"), "{}", err.message);
    }

    #[test]
    fn a_result_over_the_limit_goes_ahead_in_parts_that_each_fit() {
        let (_dir, conn, guard) = open();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<Vec<Value>>>::new()));
        let sink = got.clone();
        let parts = Parts::new(move |_head, rows, _deadline, _beat| {
            sink.lock().expect("parts").push(rows);
            Ok(())
        });
        let mut l = limits();
        l.max_result_bytes = 10_000;
        l.parts = Some(&parts);
        let sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 5000) \
                   SELECT x, 'abcdefgh' AS t FROM c";
        let last = match run_statement(&conn, &guard, Scope::Request, &stmt(sql), Want::Rows, &l) {
            Ok(Output::Rows(r)) => r,
            Ok(_) => panic!("a query answered no rows"),
            Err(e) => panic!("a result in parts failed: {}", e.message),
        };
        assert_eq!(last.columns, ["x", "t"]);
        let parts = got.lock().expect("parts");
        assert!(parts.len() > 5, "{} parts for 5,000 rows", parts.len());
        for part in parts.iter() {
            let size = rows_size(&Rows {
                rows: part.clone(),
                ..Rows::default()
            });
            assert!(size <= 10_000, "a part of {size} bytes, over the limit");
        }
        let all: Vec<Value> = parts
            .iter()
            .flatten()
            .chain(last.rows.iter())
            .map(|row| row[0].clone())
            .collect();
        let expected: Vec<Value> = (1..=5000).map(Value::Integer).collect();
        assert_eq!(
            all, expected,
            "the parts and the answer, in order, are the result"
        );
    }

    #[test]
    fn a_row_over_the_limit_fails_even_with_parts_and_a_failed_part_fails_the_read() {
        let (_dir, conn, guard) = open();
        let parts = Parts::new(|_, _, _, _| Ok(()));
        let mut l = limits();
        l.max_result_bytes = 10_000;
        l.parts = Some(&parts);
        let sql = "SELECT 1 UNION ALL SELECT zeroblob(20000)";
        let err = match run_statement(&conn, &guard, Scope::Request, &stmt(sql), Want::Rows, &l) {
            Err(e) => e,
            Ok(_) => panic!("a row over the limit was returned"),
        };
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert!(
            err.message.contains("row 2") && err.message.contains("20009 bytes"),
            "{}",
            err.message
        );

        let refusing =
            Parts::new(|_, _, _, _| Err(ErrorBody::new(ErrorKind::Timeout, "client slow")));
        l.parts = Some(&refusing);
        let sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 5000) \
                   SELECT x FROM c";
        let err = match run_statement(&conn, &guard, Scope::Request, &stmt(sql), Want::Rows, &l) {
            Err(e) => e,
            Ok(_) => panic!("a read whose part could not go was answered"),
        };
        assert_eq!(
            (err.kind, err.message.as_str()),
            (ErrorKind::Timeout, "client slow")
        );
    }

    #[test]
    fn parameter_count_mismatch_names_both_counts() {
        let (_dir, conn, guard) = open();
        let st = Statement {
            sql: "SELECT ?1, ?2".into(),
            params: Params::Positional(vec![Value::Integer(1)]),
        };
        let err = match run_statement(&conn, &guard, Scope::Request, &st, Want::Rows, &limits()) {
            Err(e) => e,
            Ok(_) => panic!("bound too few parameters"),
        };
        assert!(
            err.message.contains("2 parameter(s) but 1"),
            "{}",
            err.message
        );
    }

    #[test]
    fn readers_run_only_what_sqlite_reports_read_only() {
        let (_dir, conn, guard) = open();
        run_statement(
            &conn,
            &guard,
            Scope::Request,
            &stmt("CREATE TABLE t(a)"),
            Want::Changes,
            &limits(),
        )
        .expect("create");
        match run_if_read_only(
            &conn,
            &guard,
            Scope::Request,
            &stmt("SELECT count(*) FROM t"),
            Want::Rows,
            &limits(),
        ) {
            Ok(ReadOnly::Ran(Output::Rows(r))) => {
                assert_eq!(r.rows, vec![vec![Value::Integer(0)]]);
            }
            _ => panic!("a SELECT is read-only and runs"),
        }
        for sql in [
            "INSERT INTO t VALUES (1)",
            "INSERT INTO t VALUES (1) RETURNING a",
        ] {
            match run_if_read_only(
                &conn,
                &guard,
                Scope::Request,
                &stmt(sql),
                Want::Rows,
                &limits(),
            ) {
                Ok(ReadOnly::NotReadOnly) => {}
                _ => panic!("{sql} writes, so it is handed back unrun"),
            }
        }
        let ResponseBody::Rows(r) = run_statement(
            &conn,
            &guard,
            Scope::Request,
            &stmt("SELECT count(*) FROM t"),
            Want::Rows,
            &limits(),
        )
        .expect("count")
        .into() else {
            panic!("rows")
        };
        assert_eq!(r.rows, vec![vec![Value::Integer(0)]], "nothing was run");
    }
}
