//! The engine: everything that touches the database file. The writer
//! actor owns the only read-write connection; the reader pool serves
//! read-only statements; the statement guard and runner are shared by both;
//! maintenance (backup, integrity check) runs on connections of its own.
//!
//! Nothing in here knows about sockets, sessions or access rules: the
//! dispatcher above hands it statements with their deadlines.

mod backlog;
mod db;
mod functions;
mod guard;
mod maintenance;
mod parts;
mod readers;
mod relay;
pub(crate) mod slowlog;
mod statement;
mod syncer;
mod transactions;
mod vigil;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use std::time::Instant;

use nexusd_protocol::{ErrorBody, ErrorKind, ResponseBody, TxnMode, TxnOp};

pub use db::Synchronous;
pub(crate) use db::check_sqlite_version;
pub(crate) use parts::{BEAT_EVERY, Beat, PARTS_AHEAD, Parts};
pub(crate) use readers::{
    InPlace, InPlaceCounts, ReadOutcome, ReaderPool, allow_inline_reads, end_stale_snapshots,
};
pub(crate) use relay::{Sink, relay_for_this_thread};
pub(crate) use statement::want_decltypes;
pub use statement::{is_blank, skip_blank};
use transactions::{End, TxnMsg};
pub(crate) use transactions::{Leases, Owner, Route, Transactions, TxnStats};
use writer::TxnStart;
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
    pub(crate) transactions: Arc<Transactions>,
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
        synchronous: writer.synchronous,
        count: readers,
        queue_capacity: writer.queue_capacity,
        max_result_bytes: writer.max_result_bytes,
        max_read_ms,
    };
    let max_result_bytes = writer.max_result_bytes;
    let synchronous = writer.synchronous;
    let (writer, writer_thread) = writer::spawn(writer, gate.clone())?;
    let transactions = Arc::new(Transactions::new(
        db_path.clone(),
        synchronous,
        max_result_bytes,
        writer.stats.clone(),
    ));
    let (readers, reader_threads) = readers::spawn(reader_config, gate, writer.stats.clone())?;
    Ok((
        Engine {
            writer,
            readers,
            transactions,
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

impl Engine {
    /// Opens an interactive transaction for `owner`; answers `Begun`. An
    /// immediate one answers once it is queued for the writer (its
    /// statements run when the writer takes it up, in queue order); the
    /// others once their snapshot is taken.
    pub(crate) async fn begin(
        &self,
        mode: TxnMode,
        owner: Arc<Owner>,
        max_open: usize,
        arrived: Instant,
        deadline: Instant,
    ) -> ResponseBody {
        let open = self.transactions.open_count();
        if open >= max_open {
            return ResponseBody::Error(ErrorBody::new(
                ErrorKind::Overloaded,
                format!(
                    "{open} transactions are open, the daemon's limit (max-transactions); \
                     nothing was begun. Retry later, or raise max-transactions"
                ),
            ));
        }
        match mode {
            TxnMode::Immediate => {
                let (txn, rx) = self.transactions.register_immediate(owner);
                let start = TxnStart {
                    txn: txn.clone(),
                    rx,
                    snapshot_seq: None,
                    first: None,
                    parts: None,
                };
                // Answered once queued: the client's first statement then
                // waits on the transaction's channel, and the writer finds
                // it there, instead of waiting a round trip for it.
                match self
                    .writer
                    .enqueue_transaction(start, arrived, deadline)
                    .await
                {
                    Ok(()) => ResponseBody::Begun(txn.id),
                    Err(body) => {
                        txn.end(End::NotStarted);
                        self.transactions.forget(txn.id);
                        body
                    }
                }
            }
            TxnMode::Deferred | TxnMode::ReadOnly => {
                // An idle connection begins at once, here; only opening a
                // new one waits on a blocking thread.
                if let Some(begun) = self.transactions.begin_snapshot_idle(&owner, mode) {
                    return begun.map_or_else(ResponseBody::Error, |t| ResponseBody::Begun(t.id));
                }
                let txns = self.transactions.clone();
                blocking(move || {
                    txns.begin_snapshot(owner, mode)
                        .map(|t| ResponseBody::Begun(t.id))
                })
                .await
            }
        }
    }

    /// One request on transaction `id`, which `client_id` must have opened.
    pub(crate) async fn in_transaction(
        &self,
        id: u64,
        client_id: u64,
        op: TxnOp,
        parts: Option<Parts>,
        arrived: Instant,
        deadline: Instant,
    ) -> ResponseBody {
        let txns = &self.transactions;
        txns.busy(id, true);
        let ending = matches!(op, TxnOp::Commit | TxnOp::Rollback);
        let mut route = txns.route(id, client_id, op);
        let mut parts = parts;
        if let Route::Snapshot(op) = route {
            // Blocking: SQLite runs on the transaction's own connection.
            let txns = txns.clone();
            (route, parts) = tokio::task::spawn_blocking(move || {
                let route =
                    txns.serve_snapshot(id, client_id, op, parts.as_ref(), arrived, deadline);
                (route, parts)
            })
            .await
            .unwrap_or_else(|e| {
                let failed = ResponseBody::Error(ErrorBody::new(
                    ErrorKind::Internal,
                    format!("the transaction's task failed: {e}"),
                ));
                (Route::Done(failed), None)
            });
        }
        self.follow(id, ending, route, parts, arrived, deadline)
            .await
    }

    /// The rest of a query or statement `Transactions::in_place` routed to
    /// the writer: the transaction holds it, or is moving to it with this
    /// request.
    pub(crate) async fn to_the_writer(
        &self,
        id: u64,
        route: Route,
        parts: Option<Parts>,
        arrived: Instant,
        deadline: Instant,
    ) -> ResponseBody {
        self.transactions.busy(id, true);
        self.follow(id, false, route, parts, arrived, deadline)
            .await
    }

    /// Serves a request on transaction `id` the way `route` says, past the
    /// snapshot, then marks it done (and forgets the transaction if the
    /// request ended it).
    async fn follow(
        &self,
        id: u64,
        ending: bool,
        route: Route,
        parts: Option<Parts>,
        arrived: Instant,
        deadline: Instant,
    ) -> ResponseBody {
        let body = match route {
            Route::Done(body) => body,
            Route::Snapshot(_) => ResponseBody::Error(ErrorBody::new(
                ErrorKind::Internal,
                "a snapshot request was routed twice",
            )),
            Route::Writer(tx, op) => self.to_writer(id, tx, op, parts, arrived, deadline).await,
            Route::MoveToWriter { txn, rx, seq, op } => {
                let start = TxnStart {
                    txn,
                    rx,
                    snapshot_seq: seq,
                    first: Some(op),
                    parts,
                };
                self.writer
                    .submit_transaction(start, arrived, deadline)
                    .await
            }
        };
        self.transactions.busy(id, false);
        self.forget_if_over(id, ending, &body);
        body
    }

    /// Sends a request to the writer holding transaction `id`.
    async fn to_writer(
        &self,
        id: u64,
        tx: flume::Sender<TxnMsg>,
        op: TxnOp,
        parts: Option<Parts>,
        arrived: Instant,
        deadline: Instant,
    ) -> ResponseBody {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let msg = TxnMsg {
            op,
            parts,
            arrived,
            deadline,
            reply: relay::Reply::Waiter(reply),
        };
        match tokio::time::timeout_at(deadline.into(), tx.send_async(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return ResponseBody::Error(self.transactions.end_reason(id)),
            Err(_) => {
                return ResponseBody::Error(ErrorBody::new(
                    ErrorKind::Timeout,
                    format!(
                        "timed out after {} ms waiting to reach transaction {id}'s queue; this \
                         request was not run",
                        arrived.elapsed().as_millis()
                    ),
                ));
            }
        }
        // Our sender must not keep the channel open: ending the
        // transaction closes it, and the writer rolls back at once.
        drop(tx);
        answer
            .await
            .unwrap_or_else(|_| ResponseBody::Error(self.transactions.end_reason(id)))
    }

    /// Forgets a transaction its request ended: committed, rolled back,
    /// or over (its end was counted where it ended).
    fn forget_if_over(&self, id: u64, ending: bool, body: &ResponseBody) {
        let over = match body {
            ResponseBody::Error(e) => {
                matches!(e.kind, ErrorKind::Conflict | ErrorKind::TransactionExpired)
            }
            ResponseBody::Ok => ending,
            _ => false,
        };
        if over {
            self.transactions.forget(id);
        }
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
