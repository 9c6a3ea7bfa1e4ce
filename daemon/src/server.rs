//! The accept loop and the connection limit: each accepted connection gets
//! a session of its own while there is room under the limit, and a clear
//! "overloaded" refusal when there is not. On shutdown the loop stops
//! accepting and waits, up to the drain timeout, for every session to
//! answer what it already read.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nexusd_protocol::{ErrorBody, ErrorKind};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::task::TaskTracker;

use crate::context::Context;
use crate::io_threads::IoThreads;
use crate::session;

/// How long to back off after a failed accept (EMFILE and friends).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) async fn run(listener: UnixListener, ctx: Arc<Context>, io: &IoThreads) {
    let tracker = TaskTracker::new();
    let mut shutdown = ctx.shutdown.subscribe();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                ctx.metrics
                    .connections_accepted
                    .fetch_add(1, Ordering::Relaxed);
                stream
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        match ctx.connections().try_admit() {
            Some(permit) => {
                // Moved to the connection's own I/O thread: registered with
                // that thread's runtime instead of this one's.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not hand a connection to an I/O thread");
                        continue;
                    }
                };
                let ctx = ctx.clone();
                tracker.spawn_on(
                    async move {
                        match UnixStream::from_std(stream) {
                            Ok(stream) => session::serve(stream, ctx).await,
                            Err(e) => {
                                tracing::warn!(error = %e, "could not take a connection on");
                            }
                        }
                        drop(permit);
                    },
                    io.pick(),
                );
            }
            None => {
                ctx.metrics
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                let max = ctx.connections().max();
                tracing::warn!(max, "connection refused: at the connection limit");
                tracker.spawn(refuse(stream, max, ctx.config().max_frame_bytes));
            }
        }
    }
    drop(listener);
    tracing::info!(
        connections = ctx.connections().open(),
        "no longer accepting; draining"
    );
    tracker.close();
    let drain_ms = ctx.config().drain_timeout_ms;
    if tokio::time::timeout(Duration::from_millis(drain_ms), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_ms,
            "drain timed out; closing the remaining connections"
        );
    }
}

async fn refuse(mut stream: UnixStream, max: usize, max_frame: u32) {
    let refusal = ErrorBody::new(
        ErrorKind::Overloaded,
        format!(
            "nexusd is at its limit of {max} connections; retry later, share one client per \
             process (clones share a connection), or raise --max-connections"
        ),
    );
    session::send_refusal(&mut stream, refusal, max_frame).await;
}
