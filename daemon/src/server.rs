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

use crate::access::{Peer, Role};
use crate::context::{Applicant, Context, Refused};
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
        // On to an I/O thread (registered with its runtime instead of this
        // one's), which looks the peer up, admits it or refuses it, and
        // serves it: the accept loop never waits on a user database.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not hand a connection to an I/O thread");
                continue;
            }
        };
        tracker.spawn_on(admit(stream, ctx.clone()), io.pick());
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

/// Admits a connection under the limits and serves it, or refuses it.
async fn admit(stream: std::os::unix::net::UnixStream, ctx: Arc<Context>) {
    let stream = match UnixStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not take a connection on");
            return;
        }
    };
    let peer = match stream.peer_cred() {
        Ok(cred) => Peer::new(
            cred.pid().and_then(|p| u32::try_from(p).ok()),
            cred.uid(),
            cred.gid(),
        ),
        Err(e) => {
            // Without credentials there is no role to give.
            tracing::warn!(error = %e, "could not read a peer's credentials; closing");
            return;
        }
    };
    let applicant = Applicant {
        uid: peer.uid,
        // Root and admins are not capped, and may use the reserve.
        privileged: peer.uid == 0 || ctx.role_of(&peer) == Some(Role::Admin),
    };
    let config = ctx.config();
    match ctx.connections().try_admit(
        &applicant,
        config.admin_reserve_connections,
        config.max_connections_per_uid,
    ) {
        Ok(permit) => {
            session::serve(stream, ctx, peer).await;
            drop(permit);
        }
        Err(Refused(why)) => {
            ctx.metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(uid = applicant.uid, reason = %why, "connection refused");
            refuse(stream, why, config.max_frame_bytes).await;
        }
    }
}

async fn refuse(mut stream: UnixStream, why: String, max_frame: u32) {
    let refusal = ErrorBody::new(ErrorKind::Overloaded, why);
    session::send_refusal(&mut stream, refusal, max_frame).await;
}
