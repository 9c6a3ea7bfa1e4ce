//! Sole ownership of the database file and the socket path: an exclusive
//! `flock` on a lock file beside each, holding the owner's pid. The kernel
//! drops the lock when the process dies, however it dies, so a lock file
//! left by a killed daemon never blocks a restart.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, bail};

/// Held for the life of the daemon; the lock goes when this is dropped.
#[derive(Debug)]
pub(crate) struct LockFile {
    file: File,
}

impl LockFile {
    /// Takes the lock at `path`, or fails naming the pid that holds it.
    /// `what` describes the resource for the message, e.g. "database x.db".
    pub(crate) fn acquire(path: &Path, what: &str) -> anyhow::Result<LockFile> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("could not open lock file {}", path.display()))?;
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut contents = String::new();
                let _ = file.read_to_string(&mut contents);
                let pid = contents.lines().next().unwrap_or_default().trim();
                let owner = if pid.is_empty() {
                    "another nexusd".to_owned()
                } else {
                    format!("a running nexusd (pid {pid})")
                };
                bail!(
                    "{what} is owned by {owner}; stop that daemon first, or give this one \
                     another --db and --socket"
                );
            }
            return Err(err).with_context(|| format!("could not lock {}", path.display()));
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(file, "{}", std::process::id())?;
        file.sync_all().ok();
        Ok(LockFile { file })
    }

    /// Adds the socket of the daemon that holds this database lock, so a
    /// client given the database's path finds the daemon serving it
    /// (`nexusd_protocol::paths::resolve_socket`).
    pub(crate) fn record_socket(&mut self, socket: &Path) -> std::io::Result<()> {
        let socket = std::fs::canonicalize(socket).unwrap_or_else(|_| socket.to_owned());
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(
            nexusd_protocol::paths::db_lock_contents(std::process::id(), &socket).as_bytes(),
        )?;
        self.file.sync_all()
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Empty the pid before the kernel releases the lock, so nobody reads
        // a dead pid as an owner. The file itself stays: removing it would
        // race with a daemon that opened it and is about to lock it.
        let _ = self.file.set_len(0);
    }
}

pub(crate) use nexusd_protocol::paths::lock_path_for;
