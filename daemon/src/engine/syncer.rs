//! Durability off the writer's path: with `synchronous=full` the writer
//! commits under SQLite's `synchronous=NORMAL` (no fsync inside COMMIT) and
//! hands the replies of what it committed to the syncer, which `fdatasync`s
//! the WAL file and only then sends them. That is the one extra sync FULL
//! adds in WAL mode, done on another thread: the writer goes on with the
//! next batch or transaction meanwhile, and one sync covers every commit
//! that landed while the last one ran (pipelined group commit).
//!
//! A reply is sent only after a sync that began after its COMMIT returned,
//! so an acknowledged write survives power loss, as under FULL.
//!
//! A failed sync ends the process. After an fsync error the kernel may
//! have dropped the dirty pages or marked them clean, so neither a retry
//! nor the page cache says what is on disk (PostgreSQL's "fsyncgate"
//! lesson). The syncer answers the writes it could not make durable with
//! `Io`, outcome unknown, gives the sessions a moment to send that, and
//! exits with `EXIT_SYNC_FAILED` without serving anything more; systemd
//! (`Restart=on-failure`) starts it again from what the disk holds.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::Context;
use nexusd_protocol::{ErrorBody, ErrorKind, ResponseBody};

use super::relay::{self, Ack};

/// Batches of replies waiting for a sync.
const QUEUE: usize = 1024;

/// The exit status after a failed sync of the WAL (EX_IOERR).
pub(crate) const EXIT_SYNC_FAILED: i32 = 74;

/// How long the sessions get to send the `Io` answers before the exit.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

/// Syncs the WAL after commits, then sends their replies (`Ack`s, through
/// the I/O threads' relays): a reply waits for the durability it promises.
pub(crate) struct Syncer {
    tx: flume::Sender<Vec<Ack>>,
    thread: JoinHandle<()>,
}

impl Syncer {
    /// Starts the syncer for the WAL of the database at `db_path`.
    pub(crate) fn spawn(db_path: &Path) -> anyhow::Result<Syncer> {
        let mut wal = db_path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let (tx, rx) = flume::bounded::<Vec<Ack>>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("nexusd-syncer".into())
            .spawn(move || run(&wal, rx))
            .context("could not start the syncer thread")?;
        Ok(Syncer { tx, thread })
    }

    /// Sends `acks` once the WAL holding their commit is on disk. Blocks
    /// only when the syncer is a full queue behind.
    pub(crate) fn after_sync(&self, acks: Vec<Ack>) {
        if acks.is_empty() {
            return;
        }
        if let Err(flume::SendError(acks)) = self.tx.send(acks) {
            // The syncer is gone (it panicked): nobody can vouch for these.
            let body = ResponseBody::Error(ErrorBody::new(
                ErrorKind::Internal,
                "the commit happened, but the syncer that makes it durable has stopped; it may \
                 not survive a power loss. The daemon needs a restart",
            ));
            relay::deliver(
                acks.into_iter()
                    .map(|ack| Ack {
                        body: body.clone(),
                        ..ack
                    })
                    .collect(),
            );
        }
    }

    /// Sends what is still waiting, then stops.
    pub(crate) fn finish(self) {
        drop(self.tx);
        if self.thread.join().is_err() {
            tracing::error!("the syncer thread panicked");
        }
    }
}

fn run(wal: &Path, rx: flume::Receiver<Vec<Ack>>) {
    let mut file: Option<File> = None;
    while let Ok(mut acks) = rx.recv() {
        // Everything that queued up while the last sync ran rides on this
        // one.
        while let Ok(more) = rx.try_recv() {
            acks.extend(more);
        }
        let synced = sync(wal, &mut file);
        if let Err(e) = &synced {
            tracing::error!(
                wal = %wal.display(),
                error = %e,
                "fsync of the WAL failed: answering the writes it held, then exiting with status \
                 {EXIT_SYNC_FAILED} so that nothing more is served from a file whose state on \
                 disk is unknown; under systemd the daemon restarts from what the disk holds"
            );
            for ack in &mut acks {
                ack.body = ResponseBody::Error(ErrorBody::new(
                    ErrorKind::Io,
                    format!(
                        "the write's outcome is unknown: it committed, but the fsync of {} that \
                         makes it durable returned {e}, so it may or may not be on disk. nexusd \
                         exits now and restarts from what the disk holds; check for the write \
                         before retrying it, and see to the disk under the database",
                        wal.display()
                    ),
                ));
            }
        }
        relay::deliver(acks);
        if synced.is_err() {
            std::thread::sleep(EXIT_GRACE);
            std::process::exit(EXIT_SYNC_FAILED);
        }
    }
}

/// `fdatasync` of the WAL: it flushes what SQLite wrote through its own
/// descriptor, as the file's data is the inode's.
fn sync(wal: &Path, file: &mut Option<File>) -> std::io::Result<()> {
    if file.is_none() {
        *file = Some(OpenOptions::new().read(true).write(true).open(wal)?);
    }
    match file {
        Some(f) => f.sync_data(),
        None => Ok(()),
    }
}
