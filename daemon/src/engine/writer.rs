//! The writer actor: one OS thread that owns the only read-write connection.
//!
//! It drains a bounded queue. Whatever queued up while the previous commit
//! ran becomes the next batch: `BEGIN IMMEDIATE`, then each request inside a
//! `SAVEPOINT` of its own (`RELEASE` on success, `ROLLBACK TO` on error), then
//! one `COMMIT`. A request is answered only after that COMMIT returned, so an
//! acknowledged write is durable. A lone request waits for nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use nexusd_protocol::{
    CheckpointMode, CheckpointResult, ErrorBody, ErrorKind, ResponseBody, Statement,
    StatementResult,
};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::CheckpointGate;
use super::backlog::{Backlog, Holder, Job};
use super::db::{self, Synchronous, epoch};
use super::guard::{Guard, Heartbeat, Pulse, Scope};
use super::parts::Parts;
use super::relay::{self, Ack, Relay, Reply, Sink};
use super::statement::{self, Output, StatementLimits, Want, own_statement_error};
use super::syncer::Syncer;
use super::transactions::{End, Owner, Txn, TxnMsg, conflict};
use super::vigil::Vigil;
use crate::histogram::Histogram;
use nexusd_protocol::TxnOp;

/// The longest the restart of the WAL after a finished checkpoint waits
/// for the reads still on it: longer than a snapshot of reads in place
/// lives (`readers::SNAPSHOT_HOLD`), far shorter than a long read.
const RESTART_WAIT: Duration = Duration::from_millis(5);
/// The longest maintenance that copies `bytes` should take (a checkpoint
/// of a WAL that size, a VACUUM): its waits for reads (5 s at most) and a
/// sync, with room to spare, plus the copy at a slow disk's 10 MiB/s. The
/// writer shows a heartbeat that long at most.
fn copy_bound(bytes: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(bytes / (10 * 1024 * 1024 / 1000))
}

/// A PASSIVE checkpoint (which waits on no lock) of a WAL under this
/// copies too little to outlast a watchdog period even on a slow disk, and
/// while a read holds the WAL one runs after every batch: it goes without
/// the vigil, and so without waking its thread.
const VIGIL_FROM: u64 = 8 * 1024 * 1024;

/// A batch's requests that have run wait for its commit. A statement that
/// runs long after them is stopped this long before the first of their
/// deadlines, so that they commit in time; it runs again at once, first in
/// a batch of its own.
const COMMIT_MARGIN: Duration = Duration::from_millis(100);

/// Least time between two checkpoints that hold writes back.
const FORCED_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// Litestream mode: how long after a try at a checkpoint over the WAL's
/// bound that found the WAL held (a live Litestream reading it) the next
/// try waits. After a try that succeeded, the next comes as soon as the
/// WAL is back at its bound.
const LITESTREAM_FORCED_INTERVAL: Duration = Duration::from_secs(1);

/// Requests per commit.
const BATCH_SIZE_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Seconds from BEGIN to the end of COMMIT.
const COMMIT_SECONDS_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// What a client's write request asks for.
pub enum WriteOp {
    Execute(Statement),
    Query(Statement),
    Batch(Vec<Statement>),
}

/// The writer's own maintenance, run between batches, outside any
/// transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WriterAdmin {
    /// Answers `Ok` once the writer reaches it: proof that the writer loop
    /// is alive and taking work (the systemd watchdog depends on it).
    Ping,
    Checkpoint(CheckpointMode),
    Vacuum,
    Optimize,
}

/// The daemon's own statements. Each runs as its text plus a comment with a
/// nonce drawn at start (see `own_statements`).
#[derive(Debug, Clone, Copy)]
enum Own {
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackTo,
    BatchSavepoint,
    BatchRelease,
    BatchRollbackTo,
    Vacuum,
    Optimize,
}

impl Own {
    const ALL: [Own; 11] = [
        Own::Begin,
        Own::Commit,
        Own::Rollback,
        Own::Savepoint,
        Own::Release,
        Own::RollbackTo,
        Own::BatchSavepoint,
        Own::BatchRelease,
        Own::BatchRollbackTo,
        Own::Vacuum,
        Own::Optimize,
    ];

    fn sql(self) -> &'static str {
        match self {
            Own::Begin => "BEGIN IMMEDIATE",
            Own::Commit => "COMMIT",
            Own::Rollback => "ROLLBACK",
            Own::Savepoint => "SAVEPOINT req",
            Own::Release => "RELEASE req",
            Own::RollbackTo => "ROLLBACK TO req",
            Own::BatchSavepoint => "SAVEPOINT nexusd_batch",
            Own::BatchRelease => "RELEASE nexusd_batch",
            Own::BatchRollbackTo => "ROLLBACK TO nexusd_batch",
            Own::Vacuum => "VACUUM",
            Own::Optimize => "PRAGMA optimize",
        }
    }
}

/// The daemon's own texts, indexed by `Own`, with the nonce no client can
/// send (see `db::own_text`).
fn own_statements() -> Vec<String> {
    Own::ALL.iter().map(|own| db::own_text(own.sql())).collect()
}

/// The owner of writes submitted from inside the daemon's process.
static IN_PROCESS: OnceLock<Arc<Owner>> = OnceLock::new();

/// How often the writer, holding an interactive transaction, wakes to show
/// it is alive (the systemd watchdog reads the heartbeat).
const HEARTBEAT: Duration = Duration::from_millis(100);

/// What the writer takes from its queue.
enum Work {
    /// A client's write, and the client it came from.
    Op(WriteOp, Arc<Owner>),
    Admin(WriterAdmin),
    /// An interactive transaction to hold: run between batches, after the
    /// batch before it has committed.
    Transaction(TxnStart),
}

/// An interactive transaction handed to the writer.
pub(crate) struct TxnStart {
    pub(crate) txn: Arc<Txn>,
    pub(crate) rx: flume::Receiver<TxnMsg>,
    /// A deferred transaction moving over: the commit count its snapshot
    /// saw. Any other count now means a conflict.
    pub(crate) snapshot_seq: Option<u64>,
    /// The request that moved it over (its first write), answered on the
    /// job's reply; `None` answers `Begun`.
    pub(crate) first: Option<TxnOp>,
    /// Where that request's result goes ahead in parts, if it is a query
    /// and its client takes them.
    pub(crate) parts: Option<Parts>,
}

struct WriteJob {
    work: Work,
    arrived: Instant,
    deadline: Instant,
    reply: Reply,
    /// Where the reply goes back through (the I/O thread that sent it).
    relay: Option<Relay>,
    /// It ran long after others in a batch and yielded to their commit: it
    /// runs next, first in a batch, where nothing waits for it.
    alone: bool,
}

impl Job for WriteJob {
    fn overdue(&self, now: Instant) -> bool {
        self.deadline <= now && matches!(self.work, Work::Op(..) | Work::Transaction(_))
    }

    fn expire(self, holder: Holder) {
        let body = match self.work {
            Work::Transaction(start) => {
                start.txn.end(End::NotStarted);
                ResponseBody::Error(End::NotStarted.error(start.txn.id))
            }
            _ => ResponseBody::Error(ErrorBody::new(
                ErrorKind::Timeout,
                format!(
                    "timed out after {} ms waiting for the writer, {}",
                    self.arrived.elapsed().as_millis(),
                    holder.explain()
                ),
            )),
        };
        let _ = self.reply.send(body);
    }
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub queue_capacity: usize,
    /// Most requests committed in one transaction.
    pub max_batch: usize,
    /// Longest a transaction stays open before it is committed with the
    /// requests it has so far.
    pub max_txn_time: Duration,
    pub max_result_bytes: usize,
    /// After a commit that leaves the WAL file at least this large, the
    /// writer runs a PASSIVE checkpoint before the next batch.
    pub checkpoint_wal_bytes: u64,
    /// Litestream mode (`--litestream`): Litestream runs the checkpoints,
    /// and the writer checkpoints only once the WAL holds this many bytes.
    pub litestream_max_wal_bytes: Option<u64>,
}

/// Counters the writer keeps; read by `ctl status`, `stats` and `metrics`.
pub(crate) struct WriterStats {
    pub(crate) writes_committed: AtomicU64,
    pub(crate) batches_committed: AtomicU64,
    pub(crate) batch_size: Histogram,
    pub(crate) commit_seconds: Histogram,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) checkpoints_busy: AtomicU64,
    /// Checkpoints that ran, but stopped at a frame a read still needs.
    pub(crate) checkpoints_partial: AtomicU64,
    pub(crate) checkpointed_frames: AtomicU64,
    /// Litestream mode: checkpoints the writer ran itself because the WAL
    /// reached its bound (each makes Litestream take a new snapshot).
    pub(crate) forced_checkpoints: AtomicU64,
    /// COMMITs that changed the database, of any kind (VACUUM and PRAGMA
    /// optimize included), counted by SQLite's WAL hook inside each: a
    /// deferred transaction's snapshot, or a read in place's, is current
    /// while this is unchanged.
    pub(crate) commit_seq: AtomicU64,
    /// Microseconds the writer spent holding interactive transactions.
    pub(crate) txn_held_micros: AtomicU64,
    /// Statements stopped because they ran long after other requests in
    /// their batch, near those requests' deadlines, and run again alone.
    pub(crate) yields: AtomicU64,
    /// When the writer last showed it was alive, in nanoseconds since
    /// `epoch()`: while it holds a transaction, and, through its guard's
    /// progress handler, while SQLite works on a statement.
    heartbeat: Pulse,
}

impl Default for WriterStats {
    fn default() -> Self {
        WriterStats {
            writes_committed: AtomicU64::new(0),
            batches_committed: AtomicU64::new(0),
            batch_size: Histogram::new(BATCH_SIZE_BOUNDS),
            commit_seconds: Histogram::new(COMMIT_SECONDS_BOUNDS),
            checkpoints: AtomicU64::new(0),
            checkpoints_busy: AtomicU64::new(0),
            checkpoints_partial: AtomicU64::new(0),
            checkpointed_frames: AtomicU64::new(0),
            forced_checkpoints: AtomicU64::new(0),
            commit_seq: AtomicU64::new(0),
            txn_held_micros: AtomicU64::new(0),
            yields: AtomicU64::new(0),
            heartbeat: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// The handle every connection holds. The writer stops once all handles are
/// dropped and the queue is drained.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriteJob>,
    pub(crate) stats: Arc<WriterStats>,
    /// Read for what holds the writer (`doing`).
    backlog: Arc<Backlog<WriteJob>>,
}

impl WriterHandle {
    /// Queues a client's write and waits for its answer, which comes only
    /// after the COMMIT holding it returned. A request that cannot even be
    /// queued by its deadline is answered "timed out, not applied".
    /// The write is this process's own: a caller inside it, such as the
    /// benches, not a connected client.
    pub async fn submit(&self, op: WriteOp, arrived: Instant, deadline: Instant) -> ResponseBody {
        let owner = IN_PROCESS.get_or_init(|| {
            Arc::new(Owner::new(
                0,
                "in-process".to_owned(),
                Some(std::process::id()),
            ))
        });
        self.send(Work::Op(op, owner.clone()), arrived, deadline)
            .await
    }

    /// Hands an interactive transaction to the writer and waits for the
    /// answer to its begin (or to its first write, when it moves over).
    pub(crate) async fn submit_transaction(
        &self,
        start: TxnStart,
        arrived: Instant,
        deadline: Instant,
    ) -> ResponseBody {
        self.send(Work::Transaction(start), arrived, deadline).await
    }

    /// Queues an immediate transaction for the writer without waiting for
    /// the writer to reach it: its requests wait on its channel meanwhile,
    /// so the writer finds the first one there when it does. `Err` (a
    /// timeout, or the writer gone) when it could not even be queued.
    pub(crate) async fn enqueue_transaction(
        &self,
        start: TxnStart,
        arrived: Instant,
        deadline: Instant,
    ) -> Result<(), ResponseBody> {
        // Nobody waits for this reply: a failure reaches the transaction's
        // requests as its end.
        let (reply, _) = oneshot::channel();
        let job = WriteJob {
            work: Work::Transaction(start),
            arrived,
            deadline,
            reply: Reply::Waiter(reply),
            relay: None,
            alone: false,
        };
        match tokio::time::timeout_at(deadline.into(), self.tx.send(job)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(writer_gone()),
            Err(_) => Err(ResponseBody::Error(ErrorBody::new(
                ErrorKind::Timeout,
                format!(
                    "timed out after {} ms waiting for room in the writer queue; the \
                     transaction was not begun. The daemon is saturated: retry later",
                    arrived.elapsed().as_millis()
                ),
            ))),
        }
    }

    /// How long since the writer last showed it was alive: while it holds
    /// an interactive transaction, or while SQLite works on a statement (a
    /// long one included: its progress handler beats). `None` if it has
    /// shown nothing since it last let a transaction go.
    pub(crate) fn heartbeat_age(&self) -> Option<Duration> {
        let beat = self.stats.heartbeat.load(Ordering::Relaxed);
        (beat != 0).then(|| {
            Duration::from_nanos((epoch().elapsed().as_nanos() as u64).saturating_sub(beat))
        })
    }

    /// Queues maintenance, run between batches, and waits for its answer.
    pub(crate) async fn maintain(&self, admin: WriterAdmin, deadline: Instant) -> ResponseBody {
        self.send(Work::Admin(admin), Instant::now(), deadline)
            .await
    }

    async fn send(&self, work: Work, arrived: Instant, deadline: Instant) -> ResponseBody {
        let (reply, rx) = oneshot::channel();
        let job = WriteJob {
            work,
            arrived,
            deadline,
            reply: Reply::Waiter(reply),
            relay: relay::here(),
            alone: false,
        };
        let sent = tokio::time::timeout_at(deadline.into(), self.tx.send(job)).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return writer_gone(),
            Err(_) => return queue_timeout(arrived),
        }
        rx.await.unwrap_or_else(|_| writer_gone())
    }

    /// Queues a client's write whose answer goes to `sink` (from this I/O
    /// thread's relay, after the COMMIT holding it and its sync), without a
    /// task waiting for it. When the queue is full, returns the wait for
    /// room, for the caller to spawn: it answers "timed out, not applied"
    /// if no room comes by the deadline.
    pub(crate) fn submit_to(
        &self,
        op: WriteOp,
        owner: Arc<Owner>,
        arrived: Instant,
        deadline: Instant,
        sink: Sink,
    ) -> Result<(), WaitForRoom> {
        let job = WriteJob {
            work: Work::Op(op, owner),
            arrived,
            deadline,
            reply: Reply::Sink(sink),
            relay: relay::here(),
            alone: false,
        };
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            // The job's sink answers as it drops: the writer is gone.
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => {
                let tx = self.tx.clone();
                Err(Box::pin(async move {
                    match tokio::time::timeout_at(deadline.into(), tx.reserve()).await {
                        Ok(Ok(permit)) => permit.send(job),
                        Ok(Err(_)) => drop(job),
                        Err(_) => {
                            let _ = job.reply.send(queue_timeout(arrived));
                        }
                    }
                }))
            }
        }
    }

    /// Requests queued and not yet taken by the writer.
    pub(crate) fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// What the writer is doing now, for `ctl status`: "idle", "running a
    /// batch of writes for 2 ms", "held by transaction 7 for 1200 ms"...
    pub(crate) fn doing(&self) -> String {
        self.backlog.holder().describe()
    }
}

/// A write waiting for room in the writer's queue, to be spawned.
pub(crate) type WaitForRoom = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

fn writer_gone() -> ResponseBody {
    relay::stopped_before_answering()
}

fn queue_timeout(arrived: Instant) -> ResponseBody {
    ResponseBody::Error(ErrorBody::new(
        ErrorKind::Timeout,
        format!(
            "timed out after {} ms waiting for room in the writer queue; not applied. The \
             daemon is saturated: retry later or raise --writer-queue",
            arrived.elapsed().as_millis()
        ),
    ))
}

/// Opens the database on a new thread and starts the writer there. Returns
/// once the database is open, or with the reason it could not be. `gate`
/// is raised while a forced checkpoint waits for reads to leave the WAL;
/// the readers sharing it hold new reads back meanwhile, so the wait ends.
pub fn spawn(
    config: WriterConfig,
    gate: CheckpointGate,
) -> anyhow::Result<(WriterHandle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
    let stats = Arc::new(WriterStats::default());
    let backlog = Arc::new(Backlog::new(rx, config.queue_capacity));
    let swept = backlog.clone();
    let handle_backlog = backlog.clone();
    // Wherever the writer shows it is alive while something holds it, what
    // waits behind is answered by its deadline.
    let heartbeat = Heartbeat::new(
        stats.heartbeat.clone(),
        Some(Arc::new(move |now| swept.sweep(now))),
    );
    let (opened_tx, opened_rx) = std::sync::mpsc::sync_channel(1);
    let thread_stats = stats.clone();
    let thread = std::thread::Builder::new()
        .name("nexusd-writer".into())
        .spawn(move || {
            // SQLite reports the WAL's length after each commit; the
            // checkpoint decision reads it instead of stat-ing the file.
            // Each such commit also moves the commit count, inside the
            // COMMIT and so before any reply: whatever the code path, no
            // commit on this connection leaves a snapshot looking current.
            let wal_frames = Arc::new(AtomicU64::new(0));
            let frames = wal_frames.clone();
            let hook_stats = thread_stats.clone();
            let opened = db::open_writer(
                &config.path,
                config.synchronous,
                config.checkpoint_wal_bytes,
                config.litestream_max_wal_bytes.is_some(),
                Some(heartbeat.clone()),
            )
            .and_then(|(mut conn, guard)| {
                conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
                    frames.store(u64::try_from(pages).unwrap_or(0), Ordering::Relaxed);
                    hook_stats.commit_seq.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }))?;
                let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
                // FULL is NORMAL plus a sync of the WAL after each commit;
                // the syncer does that sync, off this thread.
                let syncer = match config.synchronous {
                    Synchronous::Full => {
                        conn.pragma_update(None, "synchronous", 1)?;
                        Some(Syncer::spawn(&config.path)?)
                    }
                    Synchronous::Normal => None,
                };
                let vigil = Vigil::spawn("nexusd-vigil", heartbeat.clone())
                    .context("could not start the writer's vigil thread")?;
                Ok((
                    conn,
                    guard,
                    u64::try_from(page_size).unwrap_or(4096),
                    syncer,
                    vigil,
                ))
            });
            let (conn, guard, page_size, syncer, vigil) = match opened {
                Ok(c) => {
                    let _ = opened_tx.send(Ok(()));
                    c
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            let mut writer = Writer {
                syncer,
                vigil,
                own: own_statements(),
                gate,
                wal_frames,
                page_size,
                last_forced: Instant::now(),
                litestream_held_at: None,
                conn,
                guard,
                config,
                stats: thread_stats.clone(),
                heartbeat,
                backlog,
            };
            writer.run();
            writer.close();
        })
        .context("could not start the writer thread")?;
    opened_rx
        .recv()
        .context("the writer thread died while opening the database")??;
    Ok((
        WriterHandle {
            tx,
            stats,
            backlog: handle_backlog,
        },
        thread,
    ))
}

struct Writer {
    /// Sends replies once their commit is durable; `None` under
    /// `synchronous=normal`, where a reply goes as soon as COMMIT returns.
    syncer: Option<Syncer>,
    /// Shows the heartbeat while a checkpoint runs, which SQLite's progress
    /// handler does not see.
    vigil: Vigil,
    /// The daemon's own statements' texts, indexed by `Own`.
    own: Vec<String>,
    gate: CheckpointGate,
    /// Frames in the WAL after the last commit (from SQLite's WAL hook);
    /// reset when a checkpoint starts the WAL over.
    wal_frames: Arc<AtomicU64>,
    page_size: u64,
    /// When the last TRUNCATE over the hard bound was tried.
    last_forced: Instant,
    /// Litestream mode: when the last checkpoint over the bound found the
    /// WAL held; `None` after one that succeeded.
    litestream_held_at: Option<Instant>,
    conn: Connection,
    guard: Guard,
    config: WriterConfig,
    stats: Arc<WriterStats>,
    /// Beats the pulse and sweeps the backlog.
    heartbeat: Heartbeat,
    /// The queue, and the jobs taken from it but not yet run (a batch cut
    /// short by the transaction time limit, or retried after SQLite
    /// aborted a batch).
    backlog: Arc<Backlog<WriteJob>>,
}

/// A job that ran inside the open transaction, waiting for COMMIT.
struct Done {
    job: WriteJob,
    body: ResponseBody,
    /// What it added to its client's `total_changes()`.
    changed: u64,
}

impl Done {
    /// The job, to run again: SQLite rolled back the transaction it ran
    /// in, so what it changed there no longer counts for its client (it is
    /// counted when it runs again).
    fn undone(self) -> WriteJob {
        if let Work::Op(_, owner) = &self.job.work {
            owner
                .total_changes
                .fetch_sub(self.changed, Ordering::Relaxed);
        }
        self.job
    }
}

/// What `job`'s client's statements have changed since it connected.
fn total_changes_of(job: &WriteJob) -> u64 {
    match &job.work {
        Work::Op(_, owner) => owner.total_changes.load(Ordering::Relaxed),
        Work::Admin(_) | Work::Transaction(_) => 0,
    }
}

impl Writer {
    fn run(&mut self) {
        loop {
            if !self.backlog.wait() {
                return;
            }
            self.backlog.fill(self.config.max_batch);
            if let Some(job) = self.backlog.pop() {
                match job.work {
                    Work::Admin(admin) => {
                        let body = self.run_admin(admin);
                        if matches!(admin, WriterAdmin::Vacuum | WriterAdmin::Optimize) {
                            self.ack(vec![Ack {
                                reply: job.reply,
                                body,
                                relay: job.relay,
                            }]);
                        } else {
                            let _ = job.reply.send(body);
                        }
                        continue;
                    }
                    Work::Transaction(start) => {
                        self.run_transaction(start, job.arrived, job.deadline, job.reply);
                        self.maybe_checkpoint();
                        continue;
                    }
                    work => self.backlog.push_front(WriteJob { work, ..job }),
                }
            }
            self.run_batch();
            self.maybe_checkpoint();
        }
    }

    /// Maintenance between batches; no transaction is open.
    fn run_admin(&mut self, admin: WriterAdmin) -> ResponseBody {
        let what = match admin {
            WriterAdmin::Ping => None,
            WriterAdmin::Checkpoint(_) => Some("a checkpoint"),
            WriterAdmin::Vacuum => Some("VACUUM"),
            WriterAdmin::Optimize => Some("PRAGMA optimize"),
        };
        if let Some(what) = what {
            self.backlog.held_by(Holder::Maintenance {
                what,
                since: Instant::now(),
            });
        }
        match admin {
            WriterAdmin::Ping => ResponseBody::Ok,
            WriterAdmin::Checkpoint(mode)
                if self.config.litestream_max_wal_bytes.is_some()
                    && !matches!(mode, CheckpointMode::Passive) =>
            {
                ResponseBody::Error(ErrorBody::new(
                    ErrorKind::Refused,
                    format!(
                        "a {} checkpoint starts the WAL over, which makes Litestream take a new \
                         full snapshot; in Litestream mode Litestream runs the checkpoints. Use \
                         `nexusd ctl checkpoint passive`, or let Litestream checkpoint",
                        mode.as_sql()
                    ),
                ))
            }
            WriterAdmin::Checkpoint(mode) => match self.checkpoint(mode) {
                Ok(r) => ResponseBody::Checkpoint(r),
                Err(e) => ResponseBody::Error(own_statement_error("wal_checkpoint", &e)),
            },
            WriterAdmin::Vacuum => {
                let before = db::file_size(&self.config.path);
                // VACUUM copies the file into a temporary database, then
                // back through the WAL; SQLite calls no progress handler in
                // the copy back.
                let vacuum = || self.exec_own(Own::Vacuum);
                match self
                    .vigil
                    .over("VACUUM", copy_bound(before.saturating_mul(2)), vacuum)
                {
                    Ok(()) => ResponseBody::Text(format!(
                        "vacuumed: database file {} -> {} bytes (the WAL holds the change \
                         until the next checkpoint)",
                        before,
                        db::file_size(&self.config.path)
                    )),
                    Err(e) => ResponseBody::Error(own_statement_error("VACUUM", &e)),
                }
            }
            WriterAdmin::Optimize => match self.exec_own(Own::Optimize) {
                Ok(()) => ResponseBody::Text("optimized (PRAGMA optimize)".into()),
                Err(e) => ResponseBody::Error(own_statement_error("PRAGMA optimize", &e)),
            },
        }
    }

    fn checkpoint(&mut self, mode: CheckpointMode) -> rusqlite::Result<CheckpointResult> {
        let sql = format!("PRAGMA wal_checkpoint({})", mode.as_sql());
        let wal_bytes = self.wal_frames.load(Ordering::Relaxed) * self.page_size;
        self.backlog.held_by(Holder::Maintenance {
            what: "a checkpoint",
            since: Instant::now(),
        });
        let run = || {
            self.conn.query_row(&sql, [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
        };
        let (busy, log, done) = if mode == CheckpointMode::Passive && wal_bytes < VIGIL_FROM {
            run()?
        } else {
            self.vigil.over("checkpoint", copy_bound(wal_bytes), run)?
        };
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        if busy != 0 {
            self.stats.checkpoints_busy.fetch_add(1, Ordering::Relaxed);
        } else if done < log {
            self.stats
                .checkpoints_partial
                .fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .checkpointed_frames
            .fetch_add(u64::try_from(done.max(0)).unwrap_or(0), Ordering::Relaxed);
        if busy == 0 && matches!(mode, CheckpointMode::Restart | CheckpointMode::Truncate) {
            // The next commit writes from the WAL's beginning.
            self.wal_frames.store(0, Ordering::Relaxed);
        }
        Ok(CheckpointResult {
            busy: busy != 0,
            wal_frames: log,
            checkpointed_frames: done,
        })
    }

    /// A checkpoint that waits at most `wait` for the reads in its way
    /// (SQLite's busy timeout, the writer's usual one back after it).
    fn checkpoint_waiting(
        &mut self,
        mode: CheckpointMode,
        wait: Duration,
    ) -> rusqlite::Result<CheckpointResult> {
        self.conn.busy_timeout(wait)?;
        let result = self.checkpoint(mode);
        if let Err(e) = self.conn.busy_timeout(db::BUSY_TIMEOUT) {
            tracing::error!(error = %e, "could not restore the writer's busy timeout");
        }
        result
    }

    /// The daemon checkpoints here, between batches, instead of inside a
    /// COMMIT (automatic checkpoints are off on the writer): the replies of
    /// the batch that filled the WAL are already out.
    ///
    /// At `checkpoint_wal_bytes` it runs a PASSIVE checkpoint, which never
    /// waits. Reads that overlap back to back can keep the WAL from ever
    /// starting over, though, so at four times that it runs a TRUNCATE
    /// checkpoint, which holds new writes while the reads already open
    /// finish; `--max-read-ms` bounds that wait (and the busy timeout caps
    /// it at 5 s). At most every `FORCED_CHECKPOINT_INTERVAL`.
    fn maybe_checkpoint(&mut self) {
        let size = self.wal_frames.load(Ordering::Relaxed) * self.page_size;
        if let Some(bound) = self.config.litestream_max_wal_bytes {
            if size >= bound {
                self.force_checkpoint_for_litestream(size, bound);
            }
            return;
        }
        if size < self.config.checkpoint_wal_bytes {
            return;
        }
        let hard = size >= self.config.checkpoint_wal_bytes.saturating_mul(4);
        if hard && self.last_forced.elapsed() >= FORCED_CHECKPOINT_INTERVAL {
            self.last_forced = Instant::now();
            let started = Instant::now();
            self.gate.hold();
            let result = self.checkpoint(CheckpointMode::Truncate);
            self.gate.release();
            match result {
                Ok(r) if r.busy => tracing::warn!(
                    wal_bytes = size,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "the WAL is over its bound and a read outlasted the checkpoint's wait; \
                     retrying after the next batch"
                ),
                Ok(_) => tracing::debug!(
                    wal_bytes = size,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "WAL truncated"
                ),
                Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
            }
            return;
        }
        match self.checkpoint(CheckpointMode::Passive) {
            Ok(r) if r.busy || r.checkpointed_frames < r.wal_frames => tracing::debug!(
                wal_frames = r.wal_frames,
                checkpointed = r.checkpointed_frames,
                "checkpoint could not finish: a read is still using older frames"
            ),
            Ok(_) => {
                // Everything is in the database file: restart the WAL from
                // its beginning. RESTART, not TRUNCATE: the next commits
                // overwrite the file's blocks instead of growing it, so a
                // sync writes no inode (the file's size is unchanged).
                // A read whose snapshot began after the last commit still
                // holds the WAL, and both would wait for it to end: a
                // short wait lets the snapshots of reads in place (1 ms)
                // go, without holding every write behind a long read.
                // If a read is still there, the WAL goes on, and restarts
                // after a later checkpoint, or at a commit that finds no
                // read in its way (SQLite's own restart, which never
                // waits).
                match self.checkpoint_waiting(CheckpointMode::Restart, RESTART_WAIT) {
                    Ok(r) if r.busy => tracing::debug!(
                        "the WAL is checkpointed, but a read is still on it: not restarted yet"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
        }
    }

    /// Litestream mode, the WAL at its bound: Litestream is not
    /// checkpointing (stopped, or stuck), so the writer does, to keep the
    /// disk from filling. A TRUNCATE that waits for nobody: while
    /// Litestream holds its read transaction it cannot finish, and that is
    /// right, since a live Litestream checkpoints on its own. Once it
    /// succeeds, Litestream finds the WAL started over and takes a new full
    /// snapshot when it next syncs: the cost of a bounded WAL.
    ///
    /// A try that finds the WAL held is not repeated for
    /// `LITESTREAM_FORCED_INTERVAL`; after one that succeeds the next comes
    /// as soon as the WAL is back at its bound, so however fast the writes,
    /// the WAL passes the bound by at most a batch while Litestream is
    /// down.
    fn force_checkpoint_for_litestream(&mut self, size: u64, bound: u64) {
        if self
            .litestream_held_at
            .is_some_and(|at| at.elapsed() < LITESTREAM_FORCED_INTERVAL)
        {
            return;
        }
        self.litestream_held_at = Some(Instant::now());
        match self.checkpoint_waiting(CheckpointMode::Truncate, Duration::ZERO) {
            Ok(r) if !r.busy => {
                self.litestream_held_at = None;
                self.stats
                    .forced_checkpoints
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    wal_bytes = size,
                    litestream_max_wal_bytes = bound,
                    "the WAL reached litestream-max-wal-bytes: Litestream is not checkpointing \
                     it (is `litestream replicate` running?), so nexusd truncated it; Litestream \
                     takes a new full snapshot when it next syncs"
                );
            }
            Ok(_) => tracing::warn!(
                wal_bytes = size,
                litestream_max_wal_bytes = bound,
                "the WAL is over litestream-max-wal-bytes and a reader (Litestream's, if it \
                 is running) holds it; Litestream's own truncate-page-n checkpoint should \
                 follow. Check `litestream status` and its log"
            ),
            Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
        }
    }

    /// Runs jobs from `pending` in one transaction, up to the batch size and
    /// the transaction time limit.
    fn run_batch(&mut self) {
        let started = Instant::now();
        self.backlog.held_by(Holder::Batch { since: started });
        if let Err(e) = self.exec_own(Own::Begin) {
            let body = not_applied(own_statement_error("BEGIN IMMEDIATE", &e));
            tracing::error!(error = %e, "could not begin a write transaction");
            for job in self.backlog.take_all() {
                let _ = job.reply.send(ResponseBody::Error(body.clone()));
            }
            return;
        }
        let mut done: Vec<Done> = Vec::new();
        // The first deadline among `done`: they must commit by then.
        let mut commit_by: Option<Instant> = None;
        let mut ran = 0usize;
        while ran < self.config.max_batch && started.elapsed() < self.config.max_txn_time {
            // Maintenance and interactive transactions wait for this
            // batch's commit: nothing due is held back by them. A request
            // that yielded to the commit of others waits for it too, to run
            // first in the next batch.
            let Some(job) = self
                .backlog
                .pop_if(|job| matches!(job.work, Work::Op(..)) && (done.is_empty() || !job.alone))
            else {
                break;
            };
            ran += 1;
            if Instant::now() >= job.deadline {
                let body = not_started(&job);
                let _ = job.reply.send(body);
                continue;
            }
            let yield_at = commit_by
                .map(|by| by.checked_sub(COMMIT_MARGIN).unwrap_or(by))
                .filter(|&at| at < job.deadline);
            // Only the writer runs a client's writes outside a
            // transaction, so this thread alone moves the count meanwhile.
            let counted = total_changes_of(&job);
            match self.run_job(&job, yield_at) {
                Ok(body) => {
                    commit_by = Some(commit_by.map_or(job.deadline, |by| by.min(job.deadline)));
                    let changed = total_changes_of(&job).saturating_sub(counted);
                    done.push(Done { job, body, changed });
                }
                Err(err)
                    if err.kind == ErrorKind::Timeout
                        && yield_at.is_some_and(|at| Instant::now() >= at)
                        && Instant::now() < job.deadline =>
                {
                    // Stopped for the others' sake, and rolled back; it runs
                    // again, first in the next batch.
                    tracing::info!(
                        ran_ms = job.arrived.elapsed().as_millis() as u64,
                        waiting = done.len(),
                        "a statement ran long after other requests in its batch; it was \
                         stopped so that they commit by their deadline, and runs again alone"
                    );
                    self.stats.yields.fetch_add(1, Ordering::Relaxed);
                    let job = WriteJob { alone: true, ..job };
                    self.backlog.push_front(job);
                    if self.conn.is_autocommit() {
                        // SQLite rolled the whole transaction back: the
                        // others run again first.
                        for d in done.into_iter().rev() {
                            self.backlog.push_front(d.undone());
                        }
                        return;
                    }
                    break;
                }
                Err(err) => {
                    if self.conn.is_autocommit() {
                        // SQLite rolled the whole transaction back (a trigger's
                        // RAISE(ROLLBACK), an I/O error): the jobs run so far
                        // were not applied, so they run again in the next one.
                        tracing::warn!(message = %err.message, "a request aborted its batch; re-running the others");
                        let _ = job.reply.send(ResponseBody::Error(err));
                        for d in done.into_iter().rev() {
                            self.backlog.push_front(d.undone());
                        }
                        return;
                    }
                    let _ = job.reply.send(ResponseBody::Error(err));
                }
            }
        }
        match self.exec_own(Own::Commit) {
            Ok(()) => {
                self.stats
                    .writes_committed
                    .fetch_add(done.len() as u64, Ordering::Relaxed);
                self.stats.batches_committed.fetch_add(1, Ordering::Relaxed);
                self.stats.batch_size.observe(done.len() as f64);
                self.stats
                    .commit_seconds
                    .observe_duration(started.elapsed());
                self.ack(
                    done.into_iter()
                        .map(|d| Ack {
                            reply: d.job.reply,
                            body: d.body,
                            relay: d.job.relay,
                        })
                        .collect(),
                );
            }
            Err(e) => {
                tracing::error!(error = %e, requests = done.len(), "COMMIT failed; the batch is rolled back");
                if !self.conn.is_autocommit() {
                    let _ = self.exec_own(Own::Rollback);
                }
                let body = not_applied(own_statement_error("COMMIT", &e));
                for d in done {
                    let _ = d.job.reply.send(ResponseBody::Error(body.clone()));
                }
            }
        }
    }

    /// Runs one job inside a savepoint of its own; interrupted at its
    /// deadline, or at `yield_at` if that comes first.
    fn run_job(
        &mut self,
        job: &WriteJob,
        yield_at: Option<Instant>,
    ) -> Result<ResponseBody, ErrorBody> {
        self.exec_own(Own::Savepoint).map_err(|e| {
            let mut body = own_statement_error("SAVEPOINT", &e);
            body.message.push_str("; this request was not run");
            body
        })?;
        let (op, owner) = match &job.work {
            Work::Op(op, owner) => (op, owner),
            Work::Admin(_) | Work::Transaction(_) => {
                return Err(ErrorBody::new(
                    ErrorKind::Internal,
                    "maintenance or a transaction reached the batch loop; they run between \
                     batches",
                ));
            }
        };
        let mut limits = StatementLimits::for_request(
            job.arrived,
            job.deadline,
            self.config.max_result_bytes,
            owner,
        );
        if let Some(at) = yield_at.filter(|&at| at < limits.deadline) {
            limits.deadline = at;
            limits.yields = true;
        }
        let result = match op {
            WriteOp::Execute(st) => self
                .run_one(st, Scope::Request, Want::Changes, &limits)
                .map(Into::into),
            // A query that writes answers its rows if it has columns
            // (RETURNING), else its changes.
            WriteOp::Query(st) => self
                .run_one(st, Scope::Request, Want::Either, &limits)
                .map(Into::into),
            WriteOp::Batch(stmts) => self.run_statements(stmts, Scope::Request, &limits),
        };
        if self.conn.is_autocommit() {
            // The transaction is gone; there is no savepoint to release.
            return result;
        }
        match &result {
            Ok(_) => self
                .exec_own(Own::Release)
                .map_err(|e| own_statement_error("RELEASE", &e))?,
            Err(_) => {
                self.exec_own(Own::RollbackTo)
                    .and_then(|()| self.exec_own(Own::Release))
                    .map_err(|e| own_statement_error("ROLLBACK TO", &e))?;
            }
        }
        result
    }

    fn run_one(
        &self,
        st: &Statement,
        scope: Scope,
        want: Want,
        limits: &StatementLimits,
    ) -> Result<Output, ErrorBody> {
        statement::run_statement(&self.conn, &self.guard, scope, st, want, limits)
    }

    /// A batch's statements in order, stopping at the first failure; the
    /// caller's savepoint makes it all or nothing. The result limit holds
    /// for the whole answer, not per statement.
    fn run_statements(
        &self,
        stmts: &[Statement],
        scope: Scope,
        limits: &StatementLimits,
    ) -> Result<ResponseBody, ErrorBody> {
        let mut results = Vec::with_capacity(stmts.len());
        let (mut size, mut row_count) = (0usize, 0usize);
        // What the statements before a failure changed, which SQLite
        // counts though the batch is rolled back.
        let mut changed = 0;
        for (i, st) in stmts.iter().enumerate() {
            match self.run_one(st, scope, Want::Either, limits) {
                Ok(Output::Executed(e)) => {
                    changed += e.total_changes;
                    results.push(StatementResult::Executed(e));
                }
                Ok(Output::Rows(r)) => {
                    changed += r.total_changes;
                    size += statement::rows_size(&r);
                    row_count += r.rows.len();
                    if size > limits.max_result_bytes {
                        let mut e = statement::too_large(row_count, limits.max_result_bytes);
                        e.total_changes = changed;
                        return Err(e);
                    }
                    results.push(StatementResult::Rows(r));
                }
                Err(mut e) => {
                    e.total_changes += changed;
                    e.statement_index = Some(u32::try_from(i).unwrap_or(u32::MAX));
                    e.message = format!(
                        "statement {} of the batch's {} failed, so none of the batch was applied: {}",
                        i + 1,
                        stmts.len(),
                        e.message
                    );
                    return Err(e);
                }
            }
        }
        Ok(ResponseBody::Batch(results))
    }

    /// Sends the replies of what just committed: at once under
    /// `synchronous=normal`, else once the syncer has made it durable.
    fn ack(&self, acks: Vec<Ack>) {
        match &self.syncer {
            Some(syncer) => syncer.after_sync(acks),
            None => relay::deliver(acks),
        }
    }

    /// Holds one interactive transaction: `BEGIN IMMEDIATE`, then its
    /// requests, one at a time from its channel, until it commits, rolls
    /// back, or ends (its channel closes: expired, its connection closed,
    /// an operator). Every other write waits in the queue meanwhile; the
    /// batch before it has already committed and been answered.
    fn run_transaction(
        &mut self,
        start: TxnStart,
        arrived: Instant,
        deadline: Instant,
        reply: Reply,
    ) {
        let TxnStart {
            txn,
            rx,
            snapshot_seq,
            first,
            parts,
        } = start;
        if let Some(gone) = txn.end_error() {
            // Ended while it waited (its connection closed, say).
            let _ = reply.send(ResponseBody::Error(gone));
            return;
        }
        if Instant::now() >= deadline {
            txn.end(End::NotStarted);
            let _ = reply.send(ResponseBody::Error(End::NotStarted.error(txn.id)));
            return;
        }
        if let Some(seq) = snapshot_seq
            && seq != self.stats.commit_seq.load(Ordering::SeqCst)
        {
            txn.end(End::Conflict);
            let _ = reply.send(ResponseBody::Error(conflict(txn.id)));
            return;
        }
        if let Err(e) = self.exec_own(Own::Begin) {
            let body = not_applied(own_statement_error("BEGIN IMMEDIATE", &e));
            txn.end(End::Aborted(body.message.clone()));
            let _ = reply.send(ResponseBody::Error(body));
            return;
        }
        let held = Instant::now();
        self.backlog.held_by(Holder::Transaction {
            id: txn.id,
            since: held,
        });
        txn.writer_took_it();
        let mut open = match first {
            None => {
                let _ = reply.send(ResponseBody::Begun(txn.id));
                true
            }
            Some(op) => self.txn_request(
                &txn,
                TxnMsg {
                    op,
                    parts,
                    arrived,
                    deadline,
                    reply,
                },
            ),
        };
        while open {
            // However busy the transaction keeps the writer, what waits
            // behind it is answered by its deadline (the beat sweeps).
            self.heartbeat.beat();
            match rx.recv_timeout(HEARTBEAT) {
                Ok(msg) => open = self.txn_request(&txn, msg),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => {
                    // Ended from outside: its lease, its connection, or an
                    // operator. Whoever ended it recorded why.
                    if !self.conn.is_autocommit() {
                        let _ = self.exec_own(Own::Rollback);
                    }
                    open = false;
                }
            }
        }
        self.stats.heartbeat.store(0, Ordering::Relaxed);
        self.stats
            .txn_held_micros
            .fetch_add(held.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// Serves one request of the open transaction; returns whether it is
    /// still open.
    fn txn_request(&mut self, txn: &Arc<Txn>, msg: TxnMsg) -> bool {
        let TxnMsg {
            op,
            parts,
            arrived,
            deadline,
            reply,
        } = msg;
        if Instant::now() >= deadline && !matches!(op, TxnOp::Rollback) {
            let body = ResponseBody::Error(ErrorBody::new(
                ErrorKind::Timeout,
                format!(
                    "timed out after {} ms before the writer reached it; this request was not \
                     run, and transaction {} is still open",
                    arrived.elapsed().as_millis(),
                    txn.id
                ),
            ));
            let _ = reply.send(body);
            return true;
        }
        let mut limits = StatementLimits::for_request(
            arrived,
            deadline,
            self.config.max_result_bytes,
            &txn.owner,
        );
        // This client's transaction holds the writer anyway, so the writer
        // may wait for it to take its result in parts, up to the request's
        // deadline, showing its heartbeat meanwhile, and no longer than the
        // transaction lasts (its lease, its connection, an operator).
        let parts = parts.map(|p| {
            let (heartbeat, txn) = (self.heartbeat.clone(), txn.clone());
            p.beating(move || {
                heartbeat.beat();
                txn.end_error().map_or(Ok(()), Err)
            })
        });
        let scope = Scope::Transaction;
        let result = match &op {
            TxnOp::Execute(st) => self
                .run_one(st, scope, Want::Changes, &limits)
                .map(Into::into),
            TxnOp::Query(st) => {
                limits.parts = parts.as_ref();
                self.txn_query(st, &limits)
            }
            TxnOp::Batch(stmts) => self.txn_batch(stmts, &limits),
            TxnOp::Commit => {
                let started = Instant::now();
                match self.exec_own(Own::Commit) {
                    Ok(()) => {
                        self.stats.writes_committed.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .commit_seconds
                            .observe_duration(started.elapsed());
                        txn.end(End::Committed);
                        self.ack(vec![Ack {
                            reply,
                            body: ResponseBody::Ok,
                            relay: None,
                        }]);
                        return false;
                    }
                    Err(e) => {
                        if !self.conn.is_autocommit() {
                            let _ = self.exec_own(Own::Rollback);
                        }
                        let body = not_applied(own_statement_error("COMMIT", &e));
                        txn.end(End::Aborted(body.message.clone()));
                        let _ = reply.send(ResponseBody::Error(body));
                        return false;
                    }
                }
            }
            TxnOp::Rollback => {
                let _ = self.exec_own(Own::Rollback);
                txn.end(End::RolledBack);
                let _ = reply.send(ResponseBody::Ok);
                return false;
            }
        };
        if self.conn.is_autocommit() {
            // SQLite rolled the whole transaction back (an interrupt, ON
            // CONFLICT ROLLBACK, an I/O error): it is over.
            let why = match &result {
                Err(e) => e.message.clone(),
                Ok(_) => "the transaction ended inside a statement".to_owned(),
            };
            let mut body = End::Aborted(why.clone()).error(txn.id);
            if let Err(e) = &result {
                body.code = e.code;
                body.extended_code = e.extended_code;
                body.statement_index = e.statement_index;
            }
            txn.end(End::Aborted(why));
            let _ = reply.send(ResponseBody::Error(body));
            return false;
        }
        let _ = reply.send(result.unwrap_or_else(ResponseBody::Error));
        true
    }

    /// A batch inside a transaction: all or nothing, in a savepoint of its
    /// own, leaving the transaction open either way.
    fn txn_batch(
        &mut self,
        stmts: &[Statement],
        limits: &StatementLimits,
    ) -> Result<ResponseBody, ErrorBody> {
        self.in_savepoint(|w| w.run_statements(stmts, Scope::Transaction, limits))
    }

    /// A query inside a transaction. One that writes and returns rows
    /// (`RETURNING`) has made its changes before its first row, so if its
    /// result stops part way (over the limit, its client gone) SQLite keeps
    /// them: it runs in a savepoint of its own, rolled back then. Others
    /// need none (SQLite undoes a statement that fails), and a client's own
    /// `SAVEPOINT` or `RELEASE` must not be nested in one.
    fn txn_query(
        &mut self,
        st: &Statement,
        limits: &StatementLimits,
    ) -> Result<ResponseBody, ErrorBody> {
        let scope = Scope::Transaction;
        if !statement::writes_rows(&self.conn, &self.guard, scope, st, limits.deadline) {
            return self
                .run_one(st, scope, Want::Either, limits)
                .map(Into::into);
        }
        self.in_savepoint(|w| w.run_one(st, scope, Want::Either, limits).map(Into::into))
    }

    /// Runs `work` in a savepoint inside the open transaction, released if
    /// it succeeds and rolled back to if it fails; the transaction stays
    /// open either way, unless SQLite ended it.
    fn in_savepoint(
        &mut self,
        work: impl FnOnce(&mut Self) -> Result<ResponseBody, ErrorBody>,
    ) -> Result<ResponseBody, ErrorBody> {
        self.exec_own(Own::BatchSavepoint)
            .map_err(|e| own_statement_error("SAVEPOINT", &e))?;
        let result = work(self);
        if self.conn.is_autocommit() {
            return result;
        }
        let end = match &result {
            Ok(_) => self.exec_own(Own::BatchRelease),
            Err(_) => self
                .exec_own(Own::BatchRollbackTo)
                .and_then(|()| self.exec_own(Own::BatchRelease)),
        };
        end.map_err(|e| own_statement_error("closing the request's savepoint", &e))?;
        result
    }

    /// Runs one of the daemon's own statements, outside the guard, from
    /// the statement cache under its nonced text.
    fn exec_own(&self, own: Own) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(&self.own[own as usize])?
            .execute([])
            .map(|_| ())
    }

    /// Checkpoints and truncates the WAL so the file stands alone.
    fn close(mut self) {
        // The replies still waiting for a sync go first.
        if let Some(syncer) = self.syncer.take() {
            syncer.finish();
        }
        if self.config.litestream_max_wal_bytes.is_some() {
            // Litestream may still be reading the WAL: it is its to
            // checkpoint. Closing the connection still checkpoints it when no
            // one else has the database open (SQLite's rule).
            tracing::info!("Litestream mode: no final checkpoint; Litestream runs them");
            if let Err((_, e)) = self.conn.close() {
                tracing::warn!(error = %e, "closing the database failed");
            }
            return;
        }
        match self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            }) {
            Ok((busy, log, done)) => {
                tracing::info!(
                    busy,
                    wal_frames = log,
                    checkpointed = done,
                    "final checkpoint"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "final checkpoint failed; the WAL is kept and replayed on next open")
            }
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "closing the database failed");
        }
    }
}

/// Adds to a failure of the daemon's own BEGIN or COMMIT what it means for
/// the transaction's requests: none of them was applied.
fn not_applied(mut body: ErrorBody) -> ErrorBody {
    body.message
        .push_str("; nothing in this transaction was applied");
    body
}

fn not_started(job: &WriteJob) -> ResponseBody {
    ResponseBody::Error(ErrorBody::new(
        ErrorKind::Timeout,
        format!(
            "timed out after {} ms in the writer queue before it started; not applied. The \
             daemon is saturated: retry later, or send a larger timeout",
            job.arrived.elapsed().as_millis()
        ),
    ))
}
