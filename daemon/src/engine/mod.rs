//! The engine: everything that touches the database file. The writer
//! actor owns the only read-write connection; the reader pool serves
//! read-only statements; the statement guard and runner are shared by both;
//! maintenance (backup, integrity check) runs on connections of its own.
//!
//! Nothing in here knows about sockets, sessions or access rules: the
//! dispatcher above hands it statements with their deadlines.

mod db;
mod guard;
mod maintenance;
mod readers;
mod statement;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use nexusd_protocol::{ErrorBody, ErrorKind, ResponseBody};

pub use db::Synchronous;
pub(crate) use db::check_sqlite_version;
pub(crate) use readers::{ReadOutcome, ReaderPool};
pub use writer::{WriteOp, WriterConfig, WriterHandle, spawn as spawn_writer};
pub(crate) use writer::{WriterAdmin, WriterStats};

/// Raised by the writer while a forced checkpoint waits for reads to leave
/// the WAL; readers do not start a read while it is up, so the wait ends.
#[derive(Clone, Default)]
pub struct CheckpointGate(Arc<AtomicBool>);

impl CheckpointGate {
    fn hold(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    fn is_held(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The writer and the readers, as the rest of the daemon reaches them.
pub(crate) struct Engine {
    pub(crate) writer: WriterHandle,
    pub(crate) readers: ReaderPool,
    db_path: PathBuf,
}

/// The engine's threads, joined at the end of the daemon's life.
pub(crate) struct EngineThreads {
    writer: JoinHandle<()>,
    readers: Vec<JoinHandle<()>>,
}

impl EngineThreads {
    /// Waits for the writer (which commits what it holds, checkpoints and
    /// closes the file once every handle is dropped) and the readers.
    pub(crate) fn join(self) {
        if self.writer.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
        for reader in self.readers {
            if reader.join().is_err() {
                tracing::error!("a reader thread panicked");
            }
        }
    }
}

/// Opens the database: the writer first (it creates the file and sets WAL
/// mode), then `readers` read-only connections sharing the writer's
/// checkpoint gate.
pub(crate) fn open(
    writer: WriterConfig,
    readers: usize,
    max_read_ms: u64,
) -> anyhow::Result<(Engine, EngineThreads)> {
    let gate = CheckpointGate::default();
    let db_path = writer.path.clone();
    let reader_config = readers::ReaderConfig {
        path: db_path.clone(),
        count: readers,
        queue_capacity: writer.queue_capacity,
        max_result_bytes: writer.max_result_bytes,
        max_read_ms,
    };
    let (writer, writer_thread) = writer::spawn(writer, gate.clone())?;
    let (readers, reader_threads) = readers::spawn(reader_config, gate)?;
    Ok((
        Engine {
            writer,
            readers,
            db_path,
        },
        EngineThreads {
            writer: writer_thread,
            readers: reader_threads,
        },
    ))
}

impl Engine {
    pub(crate) fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// The database file's size in bytes.
    pub(crate) fn db_bytes(&self) -> u64 {
        db::file_size(&self.db_path)
    }

    /// The WAL file's size in bytes.
    pub(crate) fn wal_bytes(&self) -> u64 {
        let mut wal = self.db_path.clone().into_os_string();
        wal.push("-wal");
        db::file_size(Path::new(&wal))
    }

    /// `PRAGMA integrity_check` (or `quick_check`) on a read-only
    /// connection of its own; answers SQLite's lines as `Text`.
    pub(crate) async fn integrity_check(&self, quick: bool) -> ResponseBody {
        let path = self.db_path.clone();
        blocking(move || maintenance::integrity_check(&path, quick).map(ResponseBody::Text)).await
    }

    /// A consistent copy of the database at `dest`, taken while writes go
    /// on; answers `Text` saying what was written.
    pub(crate) async fn backup(&self, dest: PathBuf) -> ResponseBody {
        let path = self.db_path.clone();
        blocking(move || maintenance::backup(&path, &dest).map(ResponseBody::Text)).await
    }
}

/// Runs blocking maintenance off the async threads.
async fn blocking(
    f: impl FnOnce() -> Result<ResponseBody, ErrorBody> + Send + 'static,
) -> ResponseBody {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => ResponseBody::Error(e),
        Err(e) => ResponseBody::Error(ErrorBody::new(
            ErrorKind::Internal,
            format!("the maintenance task failed: {e}"),
        )),
    }
}
