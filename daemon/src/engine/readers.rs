//! The reader pool: read-only WAL connections, one per thread, sharing one
//! bounded queue. It mirrors the writer: a `ReaderPool` handle (Clone,
//! holds the queue's sender), a `ReaderConfig`, and one `Reader` per thread
//! with a run loop over the queue.
//!
//! A reader runs a statement only if SQLite reports it read-only
//! (`sqlite3_stmt_readonly`); anything else is handed back for the writer.
//! Each statement in the pool runs in its own implicit read transaction,
//! so it sees every commit acknowledged before it started.
//!
//! Reads in place: a thread that serves connections (see `io_threads`)
//! first runs a read on a read-only connection of its own, with a budget
//! of `INLINE_BUDGET`. Most reads (a point read takes a few microseconds)
//! finish there, and skip two thread wakeups: the hop to a reader thread
//! and back. A read that runs out of budget, or meets a lock (that
//! connection never waits for one), is stopped, having changed nothing,
//! and goes to the pool as before, with its full time limit; so a slow
//! query holds a connection thread up for at most the budget.
//!
//! Snapshots in place: beginning and ending a read transaction costs SQLite
//! more than a point read (its WAL read lock, the file's shared lock, a
//! mutex every connection of the process shares). So a thread's reads in
//! place share one read transaction for as long as the writer commits
//! nothing: each read first compares the writer's commit count with the
//! count read before the snapshot began, and starts a new snapshot if it
//! moved. A write acknowledged before a read arrived was counted before
//! the read compares, so the read sees it. A snapshot is let go after
//! `SNAPSHOT_HOLD` at most (`end_stale_snapshots`), and at once when a
//! checkpoint waits for reads to leave the WAL.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use nexusd_protocol::{ErrorBody, ErrorKind, ResponseBody, Statement};
use rusqlite::Connection;
use tokio::sync::{Notify, oneshot};

use super::CheckpointGate;
use super::db::{self, Synchronous, epoch};
use super::guard::{Guard, Scope};
use super::parts::{PART_BYTES, Parts};
use super::statement::{self, ReadOnly, StatementLimits, Want};
use super::transactions::Owner;
use super::writer::WriterStats;

/// How often a reader held at the checkpoint gate looks again.
const GATE_POLL: Duration = Duration::from_millis(1);

/// The longest a read runs in place on a connection thread before it is
/// interrupted and handed to the pool.
pub(super) const INLINE_BUDGET: Duration = Duration::from_micros(200);

/// The longest a thread's reads in place keep one snapshot, commits or
/// not: a checkpoint restarting the WAL waits at most about this long.
const SNAPSHOT_HOLD: Duration = Duration::from_millis(1);

thread_local! {
    /// This thread's connection for reads in place, if it may have one.
    static INLINE: RefCell<Inline> = const { RefCell::new(Inline::Off) };
    /// Woken when a read in place begins a snapshot, for
    /// `end_stale_snapshots`.
    static SNAPSHOT_BEGUN: Arc<Notify> = Arc::new(Notify::new());
}

enum Inline {
    /// Not a connection thread: every read goes to the pool.
    Off,
    /// May read in place; the connection opens on the first read.
    Allowed,
    Open(Box<InlineConn>),
}

/// A thread's connection for reads in place, and the snapshot it holds.
struct InlineConn {
    conn: Connection,
    guard: Guard,
    /// The daemon's own `BEGIN` and `COMMIT`, with the nonce (`db::own_text`).
    begin: String,
    end: String,
    snapshot: Option<Snapshot>,
}

/// An open read transaction, kept for the reads after the one that began it.
struct Snapshot {
    /// The writer's commit count, read before the snapshot began.
    commit_seq: u64,
    since: Instant,
}

impl Inline {
    /// Lets go of the snapshot this thread holds, if any. If SQLite will
    /// not end it, the connection is closed (which does) and opens again
    /// on the next read.
    fn end_snapshot(&mut self) {
        let Inline::Open(inline) = self else { return };
        if inline.snapshot.take().is_none() || inline.conn.is_autocommit() {
            return;
        }
        let ended = inline
            .conn
            .prepare_cached(&inline.end)
            .and_then(|mut end| end.raw_execute());
        if let Err(e) = ended {
            tracing::warn!(error = %e, "could not end a snapshot of reads in place; reopening");
            *self = Inline::Allowed;
        }
    }
}

/// Lets go of this thread's snapshot once it is `SNAPSHOT_HOLD` old, so
/// that an idle thread (or one only writing) does not keep it. Each I/O
/// thread runs this as a task; it sleeps while no snapshot is held.
pub(crate) async fn end_stale_snapshots() {
    let begun = SNAPSHOT_BEGUN.with(Arc::clone);
    loop {
        begun.notified().await;
        let mut wait = SNAPSHOT_HOLD;
        loop {
            tokio::time::sleep(wait).await;
            let left = INLINE.with(|slot| {
                let mut slot = slot.borrow_mut();
                let since = match &*slot {
                    Inline::Open(inline) => inline.snapshot.as_ref().map(|s| s.since),
                    _ => None,
                }?;
                let left = SNAPSHOT_HOLD.saturating_sub(since.elapsed());
                if left.is_zero() {
                    slot.end_snapshot();
                    return None;
                }
                Some(left)
            });
            match left {
                Some(left) => wait = left,
                None => break,
            }
        }
    }
}

/// Lets this thread run reads in place (on a connection of its own, opened
/// on first use and closed when the thread ends). Called by each I/O thread.
pub(crate) fn allow_inline_reads() {
    INLINE.with(|slot| *slot.borrow_mut() = Inline::Allowed);
}

/// What the reads in place came to, for the metrics.
pub(crate) struct InPlaceCounts {
    pub(crate) done: u64,
    pub(crate) to_pool: u64,
    pub(crate) snapshots: u64,
}

/// What a read in place came to.
pub(crate) enum InPlace {
    Done(ResponseBody),
    NotReadOnly,
    /// Out of budget, or no connection here: the pool runs it.
    ToPool,
}

#[derive(Debug, Clone)]
pub(crate) struct ReaderConfig {
    pub(crate) path: PathBuf,
    /// The durability the daemon promises (the writer's), which a reader's
    /// guard needs to answer a client's `PRAGMA synchronous`.
    pub(crate) synchronous: Synchronous,
    /// Reader threads, each with its own connection.
    pub(crate) count: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) max_result_bytes: usize,
    /// Longest one read transaction stays open (`--max-read-ms`); a reload
    /// changes it through [`ReaderPool::set_max_read_ms`].
    pub(crate) max_read_ms: u64,
}

/// What the pool made of a query.
pub(crate) enum ReadOutcome {
    Done(ResponseBody),
    /// Not read-only: run it on the writer instead.
    NeedsWriter(Statement),
}

struct ReadJob {
    statement: Statement,
    owner: Arc<Owner>,
    /// Where a result over one part goes ahead, for a client that takes
    /// parts.
    parts: Option<Parts>,
    arrived: Instant,
    deadline: Instant,
    reply: oneshot::Sender<ReadOutcome>,
}

/// The handle every connection holds. The readers stop once all handles
/// are dropped and the queue is drained.
#[derive(Clone)]
pub(crate) struct ReaderPool {
    tx: flume::Sender<ReadJob>,
    shared: Arc<PoolShared>,
}

/// What the pool's handles and threads share.
struct PoolShared {
    path: PathBuf,
    synchronous: Synchronous,
    max_result_bytes: usize,
    gate: CheckpointGate,
    max_read_ms: AtomicU64,
    /// The writer's counters: its commit count dates a snapshot.
    writer: Arc<WriterStats>,
    /// Reads that finished in place, and reads that ran out of the budget
    /// there and went to the pool.
    in_place: AtomicU64,
    to_pool: AtomicU64,
    /// Snapshots the reads in place began (fewer than the reads: they
    /// share them).
    snapshots: AtomicU64,
    /// Per reader: when its current read began, in nanoseconds since
    /// `epoch()`; 0 when idle. For `ctl stats`' oldest read.
    busy_since: Vec<AtomicU64>,
}

/// Opens `config.count` read-only connections, each on a thread of its own.
/// Returns once every one is open, or with the reason one could not be.
pub(crate) fn spawn(
    config: ReaderConfig,
    gate: CheckpointGate,
    writer: Arc<WriterStats>,
) -> anyhow::Result<(ReaderPool, Vec<JoinHandle<()>>)> {
    let count = config.count.max(1);
    let (tx, rx) = flume::bounded::<ReadJob>(config.queue_capacity.max(1));
    let shared = Arc::new(PoolShared {
        path: config.path.clone(),
        synchronous: config.synchronous,
        max_result_bytes: config.max_result_bytes,
        gate: gate.clone(),
        max_read_ms: AtomicU64::new(config.max_read_ms),
        writer,
        in_place: AtomicU64::new(0),
        to_pool: AtomicU64::new(0),
        snapshots: AtomicU64::new(0),
        busy_since: (0..count).map(|_| AtomicU64::new(0)).collect(),
    });
    let mut threads = Vec::with_capacity(count);
    for index in 0..count {
        let (conn, guard) = db::open_reader(&config.path, config.synchronous)?;
        let reader = Reader {
            index,
            conn,
            guard,
            max_result_bytes: config.max_result_bytes,
            gate: gate.clone(),
            shared: shared.clone(),
            rx: rx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("nexusd-reader-{index}"))
            .spawn(move || reader.run())
            .context("could not start a reader thread")?;
        threads.push(thread);
    }
    Ok((ReaderPool { tx, shared }, threads))
}

impl ReaderPool {
    /// Runs `statement` on a reader thread, for a read that could not run
    /// in place.
    pub(crate) async fn in_pool(
        &self,
        statement: Statement,
        owner: Arc<Owner>,
        parts: Option<Parts>,
        arrived: Instant,
        deadline: Instant,
    ) -> ReadOutcome {
        let (reply, rx) = oneshot::channel();
        let job = ReadJob {
            statement,
            owner,
            parts,
            arrived,
            deadline,
            reply,
        };
        match tokio::time::timeout_at(deadline.into(), self.tx.send_async(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return ReadOutcome::Done(readers_gone()),
            Err(_) => {
                return ReadOutcome::Done(ResponseBody::Error(ErrorBody::new(
                    ErrorKind::Timeout,
                    format!(
                        "timed out after {} ms waiting for room in the reader queue; the \
                         daemon is saturated: retry later",
                        arrived.elapsed().as_millis()
                    ),
                )));
            }
        }
        rx.await
            .unwrap_or_else(|_| ReadOutcome::Done(readers_gone()))
    }

    /// Runs the read on this thread's own connection, if it has one and no
    /// checkpoint is waiting for reads to leave the WAL, for at most
    /// `INLINE_BUDGET`, in the snapshot the thread holds while it is
    /// current. A result over one part goes to the pool when the client
    /// `takes_parts`, since the pool may wait for the client and this
    /// thread may not.
    pub(crate) fn in_place(
        &self,
        statement: &Statement,
        owner: &Owner,
        takes_parts: bool,
        arrived: Instant,
        deadline: Instant,
    ) -> InPlace {
        INLINE.with(|slot| {
            let mut slot = slot.borrow_mut();
            if self.shared.gate.is_held() {
                slot.end_snapshot();
                return InPlace::ToPool;
            }
            if matches!(*slot, Inline::Allowed) {
                // No busy wait here: a read that meets a lock (a checkpoint
                // restarting the WAL) goes to the pool, whose threads may
                // wait, instead of stalling every connection on this thread.
                let opened = db::open_reader(&self.shared.path, self.shared.synchronous).and_then(
                    |(conn, guard)| {
                        conn.busy_timeout(Duration::ZERO)?;
                        Ok((conn, guard))
                    },
                );
                match opened {
                    Ok((conn, guard)) => {
                        *slot = Inline::Open(Box::new(InlineConn {
                            conn,
                            guard,
                            begin: db::own_text("BEGIN DEFERRED"),
                            end: db::own_text("COMMIT"),
                            snapshot: None,
                        }))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no reads in place on this thread");
                        *slot = Inline::Off;
                    }
                }
            }
            let now = Instant::now();
            // Read before the statement can take a new snapshot: a commit
            // in between only makes the next read begin another.
            let commit_seq = self.shared.writer.commit_seq.load(Ordering::SeqCst);
            if let Inline::Open(inline) = &*slot
                && let Some(snapshot) = &inline.snapshot
                && (snapshot.commit_seq != commit_seq
                    || now.duration_since(snapshot.since) >= SNAPSHOT_HOLD)
            {
                slot.end_snapshot();
            }
            let Inline::Open(inline) = &mut *slot else {
                return InPlace::ToPool;
            };
            if inline.snapshot.is_none() {
                let begun = inline
                    .conn
                    .prepare_cached(&inline.begin)
                    .and_then(|mut begin| begin.raw_execute());
                match begun {
                    Ok(_) => {
                        self.shared.snapshots.fetch_add(1, Ordering::Relaxed);
                        inline.snapshot = Some(Snapshot {
                            commit_seq,
                            since: now,
                        });
                        SNAPSHOT_BEGUN.with(|begun| begun.notify_one());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not begin a snapshot of reads in place");
                        *slot = Inline::Allowed;
                        return InPlace::ToPool;
                    }
                }
            }
            let budget = now + INLINE_BUDGET;
            let mut limits = StatementLimits::for_request(
                arrived,
                deadline,
                self.shared.max_result_bytes,
                owner,
            );
            if budget < deadline {
                limits.deadline = budget;
            }
            if takes_parts {
                limits.max_result_bytes = limits.max_result_bytes.min(PART_BYTES);
            }
            let ran = statement::run_if_read_only(
                &inline.conn,
                &inline.guard,
                Scope::Request,
                statement,
                Want::Rows,
                &limits,
            );
            if ran.is_err() {
                // Whatever went wrong, the next read starts afresh.
                slot.end_snapshot();
            }
            match ran {
                Ok(ReadOnly::Ran(out)) => {
                    self.shared.in_place.fetch_add(1, Ordering::Relaxed);
                    InPlace::Done(out.into())
                }
                Ok(ReadOnly::NotReadOnly) => InPlace::NotReadOnly,
                // Interrupted at the budget with time left, or locked out:
                // nothing was changed (a read), so the pool runs it again
                // in full.
                Err(e)
                    if (e.kind == ErrorKind::Timeout && budget < deadline)
                        || (e.kind == ErrorKind::TooLarge && takes_parts)
                        || e.code == rusqlite::ffi::SQLITE_BUSY =>
                {
                    self.shared.to_pool.fetch_add(1, Ordering::Relaxed);
                    InPlace::ToPool
                }
                Err(e) => {
                    self.shared.in_place.fetch_add(1, Ordering::Relaxed);
                    InPlace::Done(ResponseBody::Error(e))
                }
            }
        })
    }

    /// Changes the cap on one read transaction for reads not yet started.
    pub(crate) fn set_max_read_ms(&self, ms: u64) {
        self.shared.max_read_ms.store(ms, Ordering::Relaxed);
    }

    /// Reads that finished in place on a connection thread, reads that ran
    /// out of the budget there and went to the pool, and the snapshots the
    /// reads in place began.
    pub(crate) fn in_place_counts(&self) -> InPlaceCounts {
        InPlaceCounts {
            done: self.shared.in_place.load(Ordering::Relaxed),
            to_pool: self.shared.to_pool.load(Ordering::Relaxed),
            snapshots: self.shared.snapshots.load(Ordering::Relaxed),
        }
    }

    /// Read requests waiting for a reader.
    pub(crate) fn queue_depth(&self) -> usize {
        self.tx.len()
    }

    /// How long the oldest read in progress has been running.
    pub(crate) fn oldest_read(&self) -> Duration {
        let now = epoch().elapsed().as_nanos() as u64;
        self.shared
            .busy_since
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .filter(|&t| t != 0)
            .map(|t| Duration::from_nanos(now.saturating_sub(t)))
            .max()
            .unwrap_or_default()
    }
}

/// One reader thread: its connection, and the queue it shares.
struct Reader {
    index: usize,
    conn: Connection,
    guard: Guard,
    max_result_bytes: usize,
    gate: CheckpointGate,
    shared: Arc<PoolShared>,
    rx: flume::Receiver<ReadJob>,
}

impl Reader {
    fn run(self) {
        for job in self.rx.iter() {
            let ReadJob {
                statement,
                owner,
                parts,
                arrived,
                deadline,
                reply,
            } = job;
            let _ = reply.send(self.serve(statement, &owner, parts.as_ref(), arrived, deadline));
        }
    }

    fn serve(
        &self,
        statement: Statement,
        owner: &Owner,
        parts: Option<&Parts>,
        arrived: Instant,
        deadline: Instant,
    ) -> ReadOutcome {
        if Instant::now() >= deadline {
            return ReadOutcome::Done(ResponseBody::Error(ErrorBody::new(
                ErrorKind::Timeout,
                format!(
                    "timed out after {} ms waiting for a reader; the daemon is saturated: \
                     retry later or raise --readers",
                    arrived.elapsed().as_millis()
                ),
            )));
        }
        let cap = Duration::from_millis(self.shared.max_read_ms.load(Ordering::Relaxed));
        // A checkpoint is waiting for reads to leave the WAL: do not start
        // one now (the wait is bounded by the reads already open, so by the
        // cap).
        let held = Instant::now();
        while self.gate.is_held() && held.elapsed() < cap {
            std::thread::sleep(GATE_POLL);
        }
        let now = Instant::now();
        let mut limits =
            StatementLimits::for_request(arrived, deadline, self.max_result_bytes, owner);
        if now + cap < deadline {
            limits.deadline = now + cap;
            limits.started = now;
            limits.read_cap = Some(cap);
        }
        limits.parts = parts;
        let busy = &self.shared.busy_since[self.index];
        busy.store(
            epoch().elapsed().as_nanos().max(1) as u64,
            Ordering::Relaxed,
        );
        let result = statement::run_if_read_only(
            &self.conn,
            &self.guard,
            Scope::Request,
            &statement,
            Want::Rows,
            &limits,
        );
        busy.store(0, Ordering::Relaxed);
        match result {
            Ok(ReadOnly::Ran(out)) => ReadOutcome::Done(out.into()),
            Ok(ReadOnly::NotReadOnly) => ReadOutcome::NeedsWriter(statement),
            Err(e) => ReadOutcome::Done(ResponseBody::Error(e)),
        }
    }
}

fn readers_gone() -> ResponseBody {
    ResponseBody::Error(ErrorBody::new(
        ErrorKind::ShuttingDown,
        "the reader pool has stopped (the daemon is shutting down)",
    ))
}
