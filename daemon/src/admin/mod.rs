//! Operator commands (`nexusd ctl`), one function per command, as pueue's
//! message handlers are. The dispatcher has checked the role already;
//! everything here answers from the shared context or hands work to the
//! engine.

mod maintenance;
mod metrics;
mod stats;
mod status;

use nexusd_protocol::{AdminRequest, ErrorBody, ErrorKind, ResponseBody};

use crate::clients::ClientEntry;
use crate::context::Context;
use crate::engine::slowlog;

pub(crate) use metrics::metrics_text;
pub(crate) use status::{status, status_line};

/// Serves one operator command; always produces an answer.
pub(crate) async fn run(ctx: &Context, request: AdminRequest, who: &ClientEntry) -> ResponseBody {
    match request {
        AdminRequest::Ping => ResponseBody::Ok,
        AdminRequest::Status => ResponseBody::Status(Box::new(status(ctx))),
        AdminRequest::Stats => ResponseBody::Stats(Box::new(stats::stats(ctx))),
        AdminRequest::Clients => ResponseBody::Clients(stats::clients(ctx)),
        AdminRequest::Metrics => ResponseBody::Text(metrics_text(ctx)),
        AdminRequest::Reload => reload(ctx),
        AdminRequest::Shutdown => shutdown(ctx, who),
        AdminRequest::Checkpoint(mode) => maintenance::checkpoint(ctx, mode).await,
        AdminRequest::Vacuum => maintenance::vacuum(ctx).await,
        AdminRequest::Optimize => maintenance::optimize(ctx).await,
        AdminRequest::IntegrityCheck { quick } => maintenance::integrity_check(ctx, quick).await,
        AdminRequest::Backup { dest } => maintenance::backup(ctx, dest, who).await,
        AdminRequest::Transactions => ResponseBody::Transactions(ctx.engine.transactions.list()),
        AdminRequest::RollbackTransaction { txn } => rollback_transaction(ctx, txn, who),
        AdminRequest::SlowLog { reset } => ResponseBody::SlowLog(slowlog::entries(reset)),
    }
}

/// `ctl rollback ID`: ends someone's open transaction; its client learns
/// it on its next request.
fn rollback_transaction(ctx: &Context, txn: u64, who: &ClientEntry) -> ResponseBody {
    tracing::info!(txn, uid = who.peer.uid, pid = ?who.peer.pid, "rollback of a transaction requested by an operator");
    match ctx.engine.transactions.rollback_by_operator(txn) {
        Ok(()) => ResponseBody::Ok,
        Err(e) => ResponseBody::Error(e),
    }
}

/// `ctl reload`: the same as SIGHUP; answers what changed.
fn reload(ctx: &Context) -> ResponseBody {
    match ctx.reload() {
        Ok(summary) => ResponseBody::Text(summary),
        Err(e) => ResponseBody::Error(ErrorBody::new(ErrorKind::ConfigRejected, e)),
    }
}

/// `ctl shutdown`: the same drain as SIGTERM.
fn shutdown(ctx: &Context, who: &ClientEntry) -> ResponseBody {
    tracing::info!(uid = who.peer.uid, pid = ?who.peer.pid, "shutdown requested by a client");
    ctx.shutdown.begin();
    ResponseBody::Ok
}
