//! The reader pool: read-only WAL connections, one per thread, sharing one
//! bounded queue. A reader runs a statement only if SQLite reports it
//! read-only (`sqlite3_stmt_readonly`); anything else is handed back for the
//! writer. Each statement runs in its own implicit read transaction, so it
//! sees every commit acknowledged before it started.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Instant;

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
}

impl ReaderPool {
    /// Opens `count` read-only connections on their own threads.
    pub fn spawn(
        path: PathBuf,
        count: usize,
        queue_capacity: usize,
        max_result_bytes: usize,
    ) -> anyhow::Result<(ReaderPool, Vec<JoinHandle<()>>)> {
        let (tx, rx) = flume::bounded::<ReadJob>(queue_capacity.max(1));
        let mut threads = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let (conn, guard) = db::open_reader(&path)?;
            let rx = rx.clone();
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
                        let limits = StatementLimits {
                            deadline: job.deadline,
                            started: job.arrived,
                            timeout: job.deadline.saturating_duration_since(job.arrived),
                            max_result_bytes,
                        };
                        let outcome = match db::run_statement(
                            &conn,
                            &guard,
                            &job.statement,
                            Want::Rows,
                            &limits,
                            true,
                        ) {
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
        Ok((ReaderPool { tx }, threads))
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
