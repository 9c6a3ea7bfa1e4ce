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

/// `<path>.lock`: the lock file a daemon holds beside its database (and
/// beside its socket).
pub fn lock_path_for(path: &std::path::Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// The line of a database's lock file that names the socket of the daemon
/// serving it; the first line is the daemon's pid.
const SOCKET_LINE: &str = "socket ";

/// A database lock file's contents: the pid, then the socket.
pub fn db_lock_contents(pid: u32, socket: &std::path::Path) -> String {
    format!("{pid}\n{SOCKET_LINE}{}\n", socket.display())
}

/// The socket a database lock file's contents name, if any (a daemon that
/// stopped cleanly empties the file).
pub fn socket_in_db_lock(contents: &str) -> Option<PathBuf> {
    contents
        .lines()
        .find_map(|l| l.strip_prefix(SOCKET_LINE))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Where to connect for `path`: `path` itself, unless it is not a socket
/// but a database file that a daemon serves, when that daemon's socket (as
/// its lock file beside the database names it). So a program may name its
/// database where it named it for SQLite.
pub fn resolve_socket(path: &std::path::Path) -> PathBuf {
    if !not_a_socket(path) {
        return path.to_owned();
    }
    std::fs::read_to_string(lock_path_for(path))
        .ok()
        .and_then(|c| socket_in_db_lock(&c))
        .unwrap_or_else(|| path.to_owned())
}

/// Whether `path` is there but is not a socket (a database file, say):
/// nothing can connect to it, and it will not become a socket by waiting.
pub fn not_a_socket(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| !m.file_type().is_socket())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_db_lock_names_its_socket_and_an_emptied_one_nothing() {
        let c = db_lock_contents(42, std::path::Path::new("/run/nexusd/nexusd.sock"));
        assert_eq!(c.lines().next(), Some("42"));
        assert_eq!(
            socket_in_db_lock(&c),
            Some(PathBuf::from("/run/nexusd/nexusd.sock"))
        );
        assert_eq!(socket_in_db_lock(""), None);
        assert_eq!(socket_in_db_lock("42"), None);
    }
}
