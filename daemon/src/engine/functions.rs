//! SQL functions the daemon adds to its connections.
//!
//! `last_insert_rowid()` replaces SQLite's own, which answers for the
//! connection: here every client shares the writer's connection, and reads
//! run on readers that never insert, so SQLite's would answer another
//! client's rowid, or 0. This one answers the client's own: the rowid the
//! statement itself inserted last, while it runs (in a trigger too, as
//! SQLite's does), else the last one the client's earlier statements
//! inserted.
//!
//! `changes()` and `total_changes()` replace SQLite's for the same reason,
//! and answer what SQLite's answer while a statement runs, for the client:
//! the rows its last completed INSERT, UPDATE or DELETE changed, and the
//! rows all its statements changed since it connected. One difference is
//! left: in a trigger's body, `changes()` does not see the body's own
//! earlier statements.
//!
//! `regexp(pattern, text)` is what SQLite calls for `text REGEXP pattern`
//! and its core leaves to the application. Python programs register one
//! with `create_function` (SQLAlchemy's SQLite dialect does so on every
//! connection); here statements run in the daemon, so the daemon brings it.
//!
//! The pattern syntax is Rust's `regex` crate: Python `re`'s, without
//! look-around and backreferences, and matching in time linear in the text,
//! so no pattern a client sends can stall a reader or the writer. A match is
//! `re.search`'s: anywhere in the text unless the pattern anchors it.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;

use regex::bytes::{Regex, RegexBuilder};
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ffi};

/// The most memory one compiled pattern may take. A pattern over it (a
/// large repetition of a Unicode class, say) fails with a clear error
/// instead of taking the daemon's memory.
const PATTERN_SIZE_LIMIT: usize = 4 << 20;

/// Adds the daemon's functions to `conn`. Every connection that runs a
/// client's statement, or checks a schema that may use them (an index on a
/// REGEXP expression), gets them.
pub(crate) fn install(conn: &Connection) -> rusqlite::Result<()> {
    // Innocuous: no side effects, so a view or trigger in the schema may
    // call it. Deterministic: usable in indexes and CHECK constraints.
    let innocuous = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function(
        "regexp",
        2,
        innocuous | FunctionFlags::SQLITE_DETERMINISTIC,
        regexp,
    )?;
    conn.create_scalar_function("last_insert_rowid", 0, innocuous, last_insert_rowid)?;
    conn.create_scalar_function("changes", 0, innocuous, |_| {
        Ok(CLIENT.with(Cell::get).changes)
    })?;
    conn.create_scalar_function("total_changes", 0, innocuous, |_| {
        Ok(CLIENT.with(Cell::get).total_changes)
    })
}

/// What the client whose statement a thread runs now had done before the
/// statement began.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ClientCounts {
    /// The rowid it last inserted.
    pub(super) rowid: i64,
    /// The rows its last INSERT, UPDATE or DELETE changed.
    pub(super) changes: i64,
    /// The rows its statements changed in all.
    pub(super) total_changes: i64,
}

thread_local! {
    static CLIENT: Cell<ClientCounts> = const {
        Cell::new(ClientCounts { rowid: 0, changes: 0, total_changes: 0 })
    };
}

/// Before a client's statement: what its client had done. The statement
/// runner also sets the connection's own rowid to 0 (see
/// `statement::forget_last_insert_rowid`).
pub(super) fn set_client(counts: ClientCounts) {
    CLIENT.with(|c| c.set(counts));
}

/// `last_insert_rowid()`: the connection's own value once the running
/// statement has inserted a row (it was 0 when the statement began), else
/// the client's. A row inserted with rowid 0 reads as none, the one case
/// where this differs from SQLite's.
fn last_insert_rowid(ctx: &Context<'_>) -> rusqlite::Result<i64> {
    // SAFETY: the handle is the connection running this statement, on this
    // thread; the reference does not outlive the call.
    let own = unsafe { ctx.get_connection() }?.last_insert_rowid();
    Ok(if own != 0 {
        own
    } else {
        CLIENT.with(Cell::get).rowid
    })
}

/// `regexp(pattern, text)`: 1 if the pattern matches somewhere in the text,
/// 0 if not, NULL if either is NULL (as SQLite's NULL rules go).
fn regexp(ctx: &Context<'_>) -> rusqlite::Result<Option<bool>> {
    if matches!(ctx.get_raw(0), ValueRef::Null) {
        return Ok(None);
    }
    let text = match ctx.get_raw(1) {
        ValueRef::Null => return Ok(None),
        value => as_text(value),
    };
    // SQLite keeps the compiled pattern with the statement while the
    // pattern argument stays the same, so a scan compiles it once.
    let re: Arc<Regex> = match ctx.get_aux(0)? {
        Some(re) => re,
        None => ctx.set_aux(0, compile(&as_text(ctx.get_raw(0)))?)?,
    };
    Ok(Some(re.is_match(&text)))
}

/// A value as the text a pattern is matched against: text and blobs as
/// their bytes (borrowed: a scan copies no row), numbers as their decimal
/// text.
fn as_text(value: ValueRef<'_>) -> Cow<'_, [u8]> {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => Cow::Borrowed(bytes),
        ValueRef::Integer(i) => Cow::Owned(i.to_string().into_bytes()),
        ValueRef::Real(f) => Cow::Owned(real_text(f).into_bytes()),
        ValueRef::Null => Cow::Borrowed(&[]),
    }
}

/// A real as SQLite writes one: integral values keep a `.0`.
fn real_text(f: f64) -> String {
    let text = f.to_string();
    if f.is_finite() && !text.contains(['.', 'e', 'E']) {
        format!("{text}.0")
    } else {
        text
    }
}

fn compile(pattern: &[u8]) -> rusqlite::Result<Regex> {
    let Ok(source) = std::str::from_utf8(pattern) else {
        return Err(pattern_error(
            &String::from_utf8_lossy(pattern),
            "it is not valid UTF-8",
        ));
    };
    RegexBuilder::new(source)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| pattern_error(source, &reason(&e)))
}

/// regex's error, on one line: its syntax errors draw the pattern with a
/// caret under the fault, then say what is wrong on a line of its own.
fn reason(e: &regex::Error) -> String {
    match e {
        regex::Error::CompiledTooBig(limit) => format!(
            "compiled, it would take more than {limit} bytes; use a smaller repetition or a \
             narrower class (\\d and \\w match all of Unicode's digits and letters; [0-9] and \
             [A-Za-z0-9_] are far smaller)"
        ),
        other => {
            let text = other.to_string();
            text.lines()
                .find_map(|line| line.trim().strip_prefix("error: "))
                .map_or_else(|| text.replace('\n', " "), str::to_owned)
        }
    }
}

/// An SQLITE_ERROR with nexusd's message: an OperationalError in Python,
/// as a failing function is under `sqlite3`.
fn pattern_error(pattern: &str, why: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        ffi::Error::new(ffi::SQLITE_ERROR),
        Some(format!(
            "REGEXP pattern '{}' cannot be used: {why}. nexusd's REGEXP takes Python re's \
             syntax without look-around and backreferences (Rust's regex crate); rewrite the \
             pattern, or filter those rows in your program",
            pattern.replace('\'', "''")
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory database");
        install(&conn).expect("install");
        conn
    }

    fn matches(conn: &Connection, text: &str, pattern: &str) -> Option<i64> {
        conn.query_row("SELECT ?1 REGEXP ?2", [text, pattern], |r| r.get(0))
            .expect("query")
    }

    #[test]
    fn regexp_searches_as_python_re_search_does() {
        let conn = conn();
        assert_eq!(matches(&conn, "abcde", "a.cde"), Some(1));
        assert_eq!(matches(&conn, "abcde", "bcd"), Some(1), "unanchored");
        assert_eq!(matches(&conn, "abcde", "^bcd"), Some(0));
        assert_eq!(matches(&conn, "abcde", "(?i)ABC"), Some(1), "inline flags");
        assert_eq!(
            matches(&conn, "héllo wörld", r"\bw\w+d$"),
            Some(1),
            "Unicode"
        );
        let row: (Option<i64>, Option<i64>, i64, i64) = conn
            .query_row(
                "SELECT NULL REGEXP 'a', 'a' REGEXP NULL, 123 REGEXP '^12', 2.0 REGEXP '^2\\.0$'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .expect("query");
        assert_eq!(
            row,
            (None, None, 1, 1),
            "NULLs give NULL; numbers match as their text"
        );
        let not: i64 = conn
            .query_row("SELECT 'abc' NOT REGEXP 'x'", [], |r| r.get(0))
            .expect("query");
        assert_eq!(not, 1);
    }

    #[test]
    fn a_regexp_can_be_indexed_and_scanned() {
        let conn = conn();
        conn.execute_batch(
            "CREATE TABLE t(s TEXT);
             CREATE INDEX t_digits ON t(s REGEXP '^[0-9]+$');
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
             INSERT INTO t SELECT CASE WHEN i % 2 THEN i ELSE 'x' || i END FROM n;",
        )
        .expect("schema and rows");
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM t WHERE s REGEXP '^[0-9]+$'",
                [],
                |r| r.get(0),
            )
            .expect("query");
        assert_eq!(n, 500);
    }

    #[test]
    fn a_pattern_regex_cannot_run_is_an_error_that_says_why() {
        let conn = conn();
        for (pattern, says) in [
            ("(?=a)b", "look-around"),
            (r"(a)\1", "backreferences"),
            ("a(", "unclosed group"),
            (r"\w{1000}", "more than"),
        ] {
            let err = conn
                .query_row("SELECT 'a' REGEXP ?1", [pattern], |r| r.get::<_, i64>(0))
                .expect_err(pattern);
            let rusqlite::Error::SqliteFailure(code, Some(message)) = &err else {
                panic!("{pattern}: {err:?}");
            };
            assert_eq!(
                code.code,
                rusqlite::ErrorCode::Unknown,
                "{pattern}: SQLITE_ERROR"
            );
            assert!(
                message.contains(&format!("REGEXP pattern '{pattern}' cannot"))
                    && message.contains(says),
                "{pattern}: {message}"
            );
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }
}
