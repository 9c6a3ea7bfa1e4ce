//! Opening connections and their settings. The writer opens the one
//! read-write connection, the readers their read-only ones, both through
//! here, so the pragmas live in one place.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags};

use super::functions;
use super::guard::{Guard, Heartbeat};

/// Oldest bundled SQLite we accept: 3.7.0 to 3.51.2 can lose data when a
/// WAL reset races a checkpoint.
const MIN_SQLITE_VERSION: i32 = 3_051_003;
const JOURNAL_MODE: &str = "wal";
/// How long a connection waits on a lock held outside nexusd (a backup
/// tool, say) before reporting SQLITE_BUSY.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;

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
pub(crate) fn check_sqlite_version() -> anyhow::Result<()> {
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
pub(crate) fn open_writer(
    path: &Path,
    sync: Synchronous,
    checkpoint_wal_bytes: u64,
    litestream: bool,
    heartbeat: Option<Heartbeat>,
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
    functions::install(&conn)?;
    let guard = Guard::install(&mut conn, litestream, sync == Synchronous::Full, heartbeat)?;
    Ok((conn, guard))
}

/// A file's size in bytes; 0 when it does not exist.
pub(crate) fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Opens one read-only connection for the reader pool. The writer must have
/// opened the file first, so that it exists and is in WAL mode. `sync` is
/// the durability the daemon promises (the writer's), which the guard
/// needs to answer a client's `PRAGMA synchronous`.
pub(crate) fn open_reader(path: &Path, sync: Synchronous) -> anyhow::Result<(Connection, Guard)> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("could not open database {} read-only", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    functions::install(&conn)?;
    let guard = Guard::install(&mut conn, false, sync == Synchronous::Full, None)?;
    Ok((conn, guard))
}

/// One of the daemon's own statement texts, made private to this process.
///
/// The authorizer runs when a statement is prepared, and the prepared
/// statement cache is keyed by text: a client statement with the same text
/// as one of the daemon's own would reuse the daemon's, authorized when the
/// daemon prepared it, and could COMMIT a group from inside it. So the
/// daemon's own texts carry a random nonce, drawn once per process, that no
/// client can send.
pub(crate) fn own_text(sql: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    static NONCE: OnceLock<u64> = OnceLock::new();
    let nonce = NONCE.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    format!("{sql} /* nexusd {nonce:016x} */")
}

/// The instant the daemon's monotonic nanosecond counters start from
/// (statement deadlines, reads in progress).
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}
