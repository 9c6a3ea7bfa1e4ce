//! The accept loop, the connection limit, and routing of requests to the
//! writer or the readers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nexusd_protocol::{
    AdminRequest, DEFAULT_DB, ErrorBody, ErrorKind, Request, RequestBody, ResponseBody, Status,
};
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use crate::config::ServeConfig;
use crate::connection;
use crate::readers::{ReadOutcome, ReaderPool};
use crate::writer::{WriteOp, WriterHandle};

/// What every connection task shares.
pub struct Shared {
    pub config: ServeConfig,
    pub db_path: PathBuf,
    pub socket_path: PathBuf,
    pub writer: WriterHandle,
    pub readers: ReaderPool,
    pub started: Instant,
    pub connections: AtomicU64,
    /// Set to true to start a graceful shutdown (signal or `ctl shutdown`).
    pub shutdown: watch::Sender<bool>,
}

impl Shared {
    /// Serves one request; always produces an answer.
    pub async fn handle(&self, req: Request) -> ResponseBody {
        let arrived = Instant::now();
        if req.db != DEFAULT_DB {
            return ResponseBody::Error(ErrorBody::new(
                ErrorKind::Unsupported,
                format!(
                    "unknown database {:?}: this daemon serves only {DEFAULT_DB:?}",
                    req.db
                ),
            ));
        }
        let deadline = arrived + self.config.request_timeout(req.timeout_ms);
        match req.body {
            RequestBody::Execute(st) => {
                self.writer
                    .submit(WriteOp::Execute(st), arrived, deadline)
                    .await
            }
            RequestBody::Query(st) => match self.readers.query(st, arrived, deadline).await {
                ReadOutcome::Done(body) => body,
                ReadOutcome::NeedsWriter(st) => {
                    self.writer
                        .submit(WriteOp::Query(st), arrived, deadline)
                        .await
                }
            },
            RequestBody::Batch(stmts) => {
                if stmts.is_empty() {
                    return ResponseBody::Batch(Vec::new());
                }
                self.writer
                    .submit(WriteOp::Batch(stmts), arrived, deadline)
                    .await
            }
            RequestBody::Admin(AdminRequest::Ping) => ResponseBody::Ok,
            RequestBody::Admin(AdminRequest::Status) => ResponseBody::Status(self.status()),
            RequestBody::Admin(AdminRequest::Shutdown) => {
                tracing::info!("shutdown requested by a client");
                self.shutdown.send_replace(true);
                ResponseBody::Ok
            }
        }
    }

    fn status(&self) -> Status {
        let stats = &self.writer.stats;
        Status {
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            sqlite_version: rusqlite::version().to_owned(),
            pid: std::process::id(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            db_path: self.db_path.display().to_string(),
            socket_path: self.socket_path.display().to_string(),
            journal_mode: "wal".to_owned(),
            synchronous: format!("{:?}", self.config.synchronous).to_lowercase(),
            connections: self.connections.load(Ordering::Relaxed),
            max_connections: self.config.max_connections as u64,
            readers: u32::try_from(self.config.readers).unwrap_or(u32::MAX),
            writes_committed: stats.writes_committed.load(Ordering::Relaxed),
            batches_committed: stats.batches_committed.load(Ordering::Relaxed),
            writer_queue_depth: self.writer.queue_depth() as u64,
        }
    }
}

/// Accepts connections until shutdown, then waits (up to the drain timeout)
/// for every connection to answer what it already read.
pub async fn run(listener: UnixListener, shared: Arc<Shared>) {
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let tracker = TaskTracker::new();
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                tracker.spawn(async move {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    connection::serve(stream, shared.clone()).await;
                    shared.connections.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(_) => {
                let max = shared.config.max_connections;
                tracing::warn!(max, "connection refused: at the connection limit");
                tracker.spawn(refuse(stream, max, shared.config.max_frame_bytes));
            }
        }
    }
    drop(listener);
    tracing::info!(
        connections = shared.connections.load(Ordering::Relaxed),
        "no longer accepting; draining"
    );
    tracker.close();
    let drain = Duration::from_millis(shared.config.drain_timeout_ms);
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            drain_ms = shared.config.drain_timeout_ms,
            "drain timed out; closing the remaining connections"
        );
    }
}

async fn refuse(mut stream: tokio::net::UnixStream, max: usize, max_frame: u32) {
    let refusal = ErrorBody::new(
        ErrorKind::Overloaded,
        format!(
            "nexusd is at its limit of {max} connections; retry later, share one client per \
             process (clones share a connection), or raise --max-connections"
        ),
    );
    connection::send_refusal(&mut stream, refusal, max_frame).await;
}
