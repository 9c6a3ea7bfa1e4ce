//! The reader pool: read-only WAL connections, one per thread, sharing one
//! bounded queue. It mirrors the writer: a `ReaderPool` handle (Clone,
//! holds the queue's sender), a `ReaderConfig`, and one `Reader` per thread
//! with a run loop over the queue.
//!
//! A reader runs a statement only if SQLite reports it read-only
//! (`sqlite3_stmt_readonly`); anything else is handed back for the writer.
//! Each statement runs in its own implicit read transaction, so it sees
//! every commit acknowledged before it started.
//!
//! Reads in place: a thread that serves connections (see `io_threads`)
//! first runs a read on a read-only connection of its own, with a budget
//! of `INLINE_BUDGET`. Most reads (a point read takes a few microseconds)
//! finish there, and skip two thread wakeups: the hop to a reader thread
//! and back. A read that runs out of budget, or meets a lock (that
//! connection never waits for one), is stopped, having changed nothing,
//! and goes to the pool as before, with its full time limit; so a slow
//! query holds a connection thread up for at most the budget.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use nexusd_protocol::{ErrorBody, ErrorKind, ResponseBody, Statement};
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::CheckpointGate;
use super::db::{self, epoch};
use super::guard::{Guard, Scope};
use super::statement::{self, ReadOnly, StatementLimits, Want};

/// How often a reader held at the checkpoint gate looks again.
const GATE_POLL: Duration = Duration::from_millis(1);

/// The longest a read runs in place on a connection thread before it is
/// interrupted and handed to the pool.
const INLINE_BUDGET: Duration = Duration::from_micros(200);

thread_local! {
    /// This thread's connection for reads in place, if it may have one.
    static INLINE: RefCell<Inline> = const { RefCell::new(Inline::Off) };
}

enum Inline {
    /// Not a connection thread: every read goes to the pool.
    Off,
    /// May read in place; the connection opens on the first read.
    Allowed,
    Open(Connection, Guard),
}

/// Lets this thread run reads in place (on a connection of its own, opened
/// on first use and closed when the thread ends). Called by each I/O thread.
pub(crate) fn allow_inline_reads() {
    INLINE.with(|slot| *slot.borrow_mut() = Inline::Allowed);
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
    max_result_bytes: usize,
    gate: CheckpointGate,
    max_read_ms: AtomicU64,
    /// Reads that finished in place, and reads that ran out of the budget
    /// there and went to the pool.
    in_place: AtomicU64,
    to_pool: AtomicU64,
    /// Per reader: when its current read began, in nanoseconds since
    /// `epoch()`; 0 when idle. For `ctl stats`' oldest read.
    busy_since: Vec<AtomicU64>,
}

/// Opens `config.count` read-only connections, each on a thread of its own.
/// Returns once every one is open, or with the reason one could not be.
pub(crate) fn spawn(
    config: ReaderConfig,
    gate: CheckpointGate,
) -> anyhow::Result<(ReaderPool, Vec<JoinHandle<()>>)> {
    let count = config.count.max(1);
    let (tx, rx) = flume::bounded::<ReadJob>(config.queue_capacity.max(1));
    let shared = Arc::new(PoolShared {
        path: config.path.clone(),
        max_result_bytes: config.max_result_bytes,
        gate: gate.clone(),
        max_read_ms: AtomicU64::new(config.max_read_ms),
        in_place: AtomicU64::new(0),
        to_pool: AtomicU64::new(0),
        busy_since: (0..count).map(|_| AtomicU64::new(0)).collect(),
    });
    let mut threads = Vec::with_capacity(count);
    for index in 0..count {
        let (conn, guard) = db::open_reader(&config.path)?;
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
        arrived: Instant,
        deadline: Instant,
    ) -> ReadOutcome {
        let (reply, rx) = oneshot::channel();
        let job = ReadJob {
            statement,
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
    /// `INLINE_BUDGET`.
    pub(crate) fn in_place(
        &self,
        statement: &Statement,
        arrived: Instant,
        deadline: Instant,
    ) -> InPlace {
        if self.shared.gate.is_held() {
            return InPlace::ToPool;
        }
        INLINE.with(|slot| {
            let mut slot = slot.borrow_mut();
            if matches!(*slot, Inline::Allowed) {
                // No busy wait here: a read that meets a lock (a checkpoint
                // restarting the WAL) goes to the pool, whose threads may
                // wait, instead of stalling every connection on this thread.
                let opened = db::open_reader(&self.shared.path).and_then(|(conn, guard)| {
                    conn.busy_timeout(Duration::ZERO)?;
                    Ok((conn, guard))
                });
                match opened {
                    Ok((conn, guard)) => *slot = Inline::Open(conn, guard),
                    Err(e) => {
                        tracing::warn!(error = %e, "no reads in place on this thread");
                        *slot = Inline::Off;
                    }
                }
            }
            let Inline::Open(conn, guard) = &*slot else {
                return InPlace::ToPool;
            };
            let now = Instant::now();
            let budget = now + INLINE_BUDGET;
            let mut limits =
                StatementLimits::for_request(arrived, deadline, self.shared.max_result_bytes);
            if budget < deadline {
                limits.deadline = budget;
            }
            match statement::run_if_read_only(
                conn,
                guard,
                Scope::Request,
                statement,
                Want::Rows,
                &limits,
            ) {
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

    /// Reads that finished in place on a connection thread, and reads that
    /// ran out of the budget there and went to the pool.
    pub(crate) fn in_place_counts(&self) -> (u64, u64) {
        (
            self.shared.in_place.load(Ordering::Relaxed),
            self.shared.to_pool.load(Ordering::Relaxed),
        )
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
                arrived,
                deadline,
                reply,
            } = job;
            let _ = reply.send(self.serve(statement, arrived, deadline));
        }
    }

    fn serve(&self, statement: Statement, arrived: Instant, deadline: Instant) -> ReadOutcome {
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
        let mut limits = StatementLimits::for_request(arrived, deadline, self.max_result_bytes);
        if now + cap < deadline {
            limits.deadline = now + cap;
            limits.started = now;
            limits.read_cap = Some(cap);
        }
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
