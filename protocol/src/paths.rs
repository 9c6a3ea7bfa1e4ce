//! Default locations, shared by the daemon and every client so that both
//! agree with no flags given.

use std::path::PathBuf;

/// Environment variable naming the socket path.
pub const SOCKET_ENV: &str = "NEXUSD_SOCKET";
/// Environment variable naming the database file.
pub const DB_ENV: &str = "NEXUSD_DB";

/// `$NEXUSD_SOCKET`, else `$XDG_RUNTIME_DIR/nexusd.sock`, else
/// `/tmp/nexusd-<uid>.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = non_empty_env(SOCKET_ENV) {
        return PathBuf::from(p);
    }
    if let Some(dir) = non_empty_env("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("nexusd.sock");
    }
    PathBuf::from(format!("/tmp/nexusd-{}.sock", current_uid()))
}

/// `$NEXUSD_DB`, else `$XDG_DATA_HOME/nexusd/nexusd.db`, else
/// `./nexusd.db`.
pub fn default_db_path() -> PathBuf {
    if let Some(p) = non_empty_env(DB_ENV) {
        return PathBuf::from(p);
    }
    if let Some(dir) = non_empty_env("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("nexusd").join("nexusd.db");
    }
    PathBuf::from("nexusd.db")
}

/// The file a backup to `dest` is written to before it is renamed into
/// place: `.NAME.partial` beside it. The daemon writes it; `nexusd ctl
/// backup` watches its size to draw progress.
pub fn backup_partial_path(dest: &std::path::Path) -> PathBuf {
    let name = dest
        .file_name()
        .map_or_else(|| "backup".into(), |n| n.to_string_lossy().into_owned());
    dest.with_file_name(format!(".{name}.partial"))
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn current_uid() -> u32 {
    // /proc/self belongs to the process's effective uid; this keeps the
    // crate free of libc.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}
