//! Maintenance that runs on read-only connections of its own, beside the
//! writer and the readers: the online backup and the integrity check.

use std::path::Path;
use std::time::{Duration, Instant};

use nexusd_protocol::paths::backup_partial_path;
use nexusd_protocol::{ErrorBody, ErrorKind};
use rusqlite::{Connection, OpenFlags};

use super::functions;
use super::statement::own_statement_error;

/// How long a maintenance connection waits on a lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn io_error(message: String) -> ErrorBody {
    ErrorBody::new(ErrorKind::Io, message)
}

fn invalid(message: String) -> ErrorBody {
    ErrorBody::new(ErrorKind::InvalidArgument, message)
}

/// A read-only connection of its own; failing to open one is the daemon's
/// I/O trouble, not the request's SQL.
fn open(db_path: &Path) -> Result<Connection, ErrorBody> {
    let conn = Connection::open_with_flags(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| {
        io_error(format!(
            "could not open a read-only maintenance connection to {}: {e}; check that the file \
             is there and readable by the daemon",
            db_path.display()
        ))
    })?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| io_error(format!("could not set busy_timeout: {e}")))?;
    // integrity_check and VACUUM INTO evaluate indexed expressions, which
    // may call the daemon's functions.
    functions::install(&conn)
        .map_err(|e| io_error(format!("could not add nexusd's SQL functions: {e}")))?;
    Ok(conn)
}

/// SQLite's lines from `PRAGMA integrity_check` (or `quick_check`); "ok"
/// when sound.
pub(super) fn integrity_check(db_path: &Path, quick: bool) -> Result<String, ErrorBody> {
    let conn = open(db_path)?;
    let sql = if quick {
        "PRAGMA quick_check"
    } else {
        "PRAGMA integrity_check"
    };
    let mut st = conn
        .prepare(sql)
        .map_err(|e| own_statement_error(sql, &e))?;
    let lines = st
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| own_statement_error(sql, &e))?;
    Ok(lines.join("\n"))
}

/// A consistent copy as of the moment it starts: `VACUUM INTO` runs in one
/// read transaction on its own read-only connection, so the writer keeps
/// committing meanwhile. Written beside the destination, synced, checked
/// with integrity_check, then renamed into place.
pub(super) fn backup(db_path: &Path, dest: &Path) -> Result<String, ErrorBody> {
    if !dest.is_absolute() {
        return Err(invalid(format!(
            "backup destination {} is not an absolute path; give the full path (the daemon \
             writes it, from its own working directory)",
            dest.display()
        )));
    }
    if dest.exists() {
        return Err(invalid(format!(
            "backup destination {} already exists; nexusd never overwrites a file: remove it or \
             choose another name",
            dest.display()
        )));
    }
    match dest.parent() {
        Some(dir) if dir.is_dir() => {}
        _ => {
            return Err(invalid(format!(
                "the directory of backup destination {} does not exist (or the daemon cannot \
                 see it: under systemd only its StateDirectory is writable); create it or choose \
                 another",
                dest.display()
            )));
        }
    }
    let partial = backup_partial_path(dest);
    let _ = std::fs::remove_file(&partial);
    let started = Instant::now();
    match write_checked_copy(db_path, &partial, dest) {
        Ok(bytes) => Ok(format!(
            "backup written to {} ({bytes} bytes in {} ms); integrity_check ok; it holds every \
             commit up to the moment it started",
            dest.display(),
            started.elapsed().as_millis()
        )),
        Err(mut e) => {
            let _ = std::fs::remove_file(&partial);
            e.message = format!(
                "backup to {} failed, nothing was left there: {}",
                dest.display(),
                e.message
            );
            Err(e)
        }
    }
}

/// Writes the copy to `partial`, syncs and checks it, then renames it to
/// `dest`. Returns its size.
fn write_checked_copy(db_path: &Path, partial: &Path, dest: &Path) -> Result<u64, ErrorBody> {
    let conn = open(db_path)?;
    let target = partial
        .to_str()
        .ok_or_else(|| invalid(format!("{} is not valid UTF-8", partial.display())))?;
    conn.execute("VACUUM INTO ?1", [target])
        .map_err(|e| io_error(format!("writing {} failed: {e}", partial.display())))?;
    drop(conn);
    let file = std::fs::File::open(partial)
        .and_then(|f| f.sync_all().map(|()| f))
        .map_err(|e| io_error(format!("syncing {} failed: {e}", partial.display())))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let copy = Connection::open_with_flags(partial, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| io_error(format!("opening the copy failed: {e}")))?;
    functions::install(&copy)
        .map_err(|e| io_error(format!("could not add nexusd's SQL functions: {e}")))?;
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| io_error(format!("checking the copy failed: {e}")))?;
    drop(copy);
    if check != "ok" {
        return Err(io_error(format!(
            "the copy failed integrity_check: {check}"
        )));
    }
    std::fs::rename(partial, dest).map_err(|e| {
        io_error(format!(
            "renaming the copy to {} failed: {e}",
            dest.display()
        ))
    })?;
    if let Some(dir) = dest.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(bytes)
}
