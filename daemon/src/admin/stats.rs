//! `ctl stats` and `ctl clients`: requests by kind and outcome, the
//! writer's commits, queues, and the connected clients.

use std::sync::atomic::Ordering;

use nexusd_protocol::{ClientInfo, Stats};

use crate::context::Context;

pub(crate) fn stats(ctx: &Context) -> Stats {
    let engine = &ctx.engine;
    let w = &engine.writer.stats;
    Stats {
        uptime_ms: u64::try_from(ctx.uptime().as_millis()).unwrap_or(u64::MAX),
        requests: ctx.metrics.requests(),
        batches_committed: w.batches_committed.load(Ordering::Relaxed),
        writes_committed: w.writes_committed.load(Ordering::Relaxed),
        batch_size_histogram: w
            .batch_size
            .buckets()
            .into_iter()
            .map(|(b, n)| (if b.is_finite() { b as u64 } else { u64::MAX }, n))
            .collect(),
        commit_p50_ms: w.commit_seconds.quantile(0.5) * 1000.0,
        commit_p99_ms: w.commit_seconds.quantile(0.99) * 1000.0,
        writer_queue_depth: engine.writer.queue_depth() as u64,
        reader_queue_depth: engine.readers.queue_depth() as u64,
        oldest_read_ms: u64::try_from(engine.readers.oldest_read().as_millis()).unwrap_or(0),
        wal_bytes: engine.wal_bytes(),
        checkpoints: w.checkpoints.load(Ordering::Relaxed),
        checkpoints_busy: w.checkpoints_busy.load(Ordering::Relaxed),
        clients: clients(ctx),
    }
}

pub(crate) fn clients(ctx: &Context) -> Vec<ClientInfo> {
    ctx.clients.list(|peer| ctx.role_of(peer))
}
