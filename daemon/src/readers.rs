//! The reader pool: read-only WAL connections, one per thread, sharing one
//! bounded queue. A reader runs a statement only if SQLite reports it
//! read-only (`sqlite3_stmt_readonly`); anything else is handed back for the
//! writer. Each statement runs in its own implicit read transaction, so it
//! sees every commit acknowledged before it started.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use nexusd_protocol::{ErrorBody, ErrorKind, ResponseBody, Statement};
use tokio::sync::oneshot;

use crate::db::{self, Output, StatementLimits, Want};

pub enum ReadOutcome {
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

#[derive(Clone)]
pub struct ReaderPool {
    tx: flume::Sender<ReadJob>,
    /// Per reader: when its current read began, in nanoseconds since
    /// `db::epoch()`; 0 when idle. For `ctl stats`' oldest read.
    busy_since: Arc<Vec<AtomicU64>>,
}

impl ReaderPool {
    /// Opens `count` read-only connections on their own threads.
    /// `max_read_ms` caps how long one read transaction stays open; it is
    /// shared so that a config reload changes it in place.
    pub fn spawn(
        path: PathBuf,
        count: usize,
        queue_capacity: usize,
        max_result_bytes: usize,
        max_read_ms: Arc<AtomicU64>,
        checkpoint_gate: Arc<AtomicBool>,
    ) -> anyhow::Result<(ReaderPool, Vec<JoinHandle<()>>)> {
        let (tx, rx) = flume::bounded::<ReadJob>(queue_capacity.max(1));
        let mut threads = Vec::with_capacity(count);
        let busy_since: Arc<Vec<AtomicU64>> =
            Arc::new((0..count.max(1)).map(|_| AtomicU64::new(0)).collect());
        for i in 0..count.max(1) {
            let (conn, guard) = db::open_reader(&path)?;
            let rx = rx.clone();
            let max_read_ms = max_read_ms.clone();
            let checkpoint_gate = checkpoint_gate.clone();
            let busy_since = busy_since.clone();
            let thread = std::thread::Builder::new()
                .name(format!("nexusd-reader-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        if Instant::now() >= job.deadline {
                            let _ = job.reply.send(ReadOutcome::Done(ResponseBody::Error(
                                ErrorBody::new(
                                    ErrorKind::Timeout,
                                    format!(
                                        "timed out after {} ms waiting for a reader; the daemon \
                                         is saturated: retry later or raise --readers",
                                        job.arrived.elapsed().as_millis()
                                    ),
                                ),
                            )));
                            continue;
                        }
                        let cap = Duration::from_millis(max_read_ms.load(Ordering::Relaxed));
                        // A checkpoint is waiting for reads to leave the
                        // WAL: do not start one now (the wait is bounded by
                        // the reads already open, so by the cap).
                        let held = Instant::now();
                        while checkpoint_gate.load(Ordering::SeqCst) && held.elapsed() < cap {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        let now = Instant::now();
                        let mut limits = StatementLimits {
                            deadline: job.deadline,
                            started: job.arrived,
                            timeout: job.deadline.saturating_duration_since(job.arrived),
                            max_result_bytes,
                            read_cap: None,
                        };
                        if now + cap < job.deadline {
                            limits.deadline = now + cap;
                            limits.started = now;
                            limits.read_cap = Some(cap);
                        }
                        busy_since[i].store(
                            db::epoch().elapsed().as_nanos().max(1) as u64,
                            Ordering::Relaxed,
                        );
                        let result = db::run_statement(
                            &conn,
                            &guard,
                            &job.statement,
                            Want::Rows,
                            &limits,
                            true,
                        );
                        busy_since[i].store(0, Ordering::Relaxed);
                        let outcome = match result {
                            Ok(Some(Output::Rows(rows))) => {
                                ReadOutcome::Done(ResponseBody::Rows(rows))
                            }
                            Ok(Some(Output::Executed(e))) => {
                                ReadOutcome::Done(ResponseBody::Executed(e))
                            }
                            Ok(None) => ReadOutcome::NeedsWriter(job.statement),
                            Err(e) => ReadOutcome::Done(ResponseBody::Error(e)),
                        };
                        let _ = job.reply.send(outcome);
                    }
                })
                .context("could not start a reader thread")?;
            threads.push(thread);
        }
        Ok((ReaderPool { tx, busy_since }, threads))
    }

    /// Read requests waiting for a reader.
    pub fn queue_depth(&self) -> usize {
        self.tx.len()
    }

    /// How long the oldest read in progress has been running.
    pub fn oldest_read(&self) -> Duration {
        let now = db::epoch().elapsed().as_nanos() as u64;
        self.busy_since
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .filter(|&t| t != 0)
            .map(|t| Duration::from_nanos(now.saturating_sub(t)))
            .max()
            .unwrap_or_default()
    }

    pub async fn query(
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
}

fn readers_gone() -> ResponseBody {
    ResponseBody::Error(ErrorBody::new(
        ErrorKind::ShuttingDown,
        "the reader pool has stopped (the daemon is shutting down)",
    ))
}
