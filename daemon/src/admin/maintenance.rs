//! Maintenance commands: checkpoint, vacuum and optimize run on the writer
//! between batches; integrity check and backup on connections of their
//! own. None has a deadline: a big file takes what it takes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nexusd_protocol::{CheckpointMode, ResponseBody};

use crate::clients::ClientEntry;
use crate::context::Context;
use crate::engine::WriterAdmin;

/// Maintenance waits in the writer's queue like any request, but for as
/// long as it takes.
const NO_DEADLINE: Duration = Duration::from_secs(24 * 3600);

async fn on_writer(ctx: &Context, admin: WriterAdmin) -> ResponseBody {
    ctx.engine
        .writer
        .maintain(admin, Instant::now() + NO_DEADLINE)
        .await
}

pub(super) async fn checkpoint(ctx: &Context, mode: CheckpointMode) -> ResponseBody {
    on_writer(ctx, WriterAdmin::Checkpoint(mode)).await
}

pub(super) async fn vacuum(ctx: &Context) -> ResponseBody {
    on_writer(ctx, WriterAdmin::Vacuum).await
}

pub(super) async fn optimize(ctx: &Context) -> ResponseBody {
    on_writer(ctx, WriterAdmin::Optimize).await
}

pub(super) async fn integrity_check(ctx: &Context, quick: bool) -> ResponseBody {
    ctx.engine.integrity_check(quick).await
}

pub(super) async fn backup(ctx: &Context, dest: String, who: &ClientEntry) -> ResponseBody {
    tracing::info!(dest, uid = who.peer.uid, "backup started");
    let body = ctx.engine.backup(PathBuf::from(dest)).await;
    if let ResponseBody::Error(e) = &body {
        tracing::warn!(error = %e.message, "backup failed");
    }
    body
}
