//! `ctl metrics` (and the HTTP listener's `/metrics`): the Prometheus text.

use crate::context::Context;
use crate::metrics::{Snapshot, render};

pub(crate) fn metrics_text(ctx: &Context) -> String {
    let engine = &ctx.engine;
    render(&Snapshot {
        metrics: &ctx.metrics,
        writer: &engine.writer.stats,
        transactions: &engine.transactions.stats,
        transactions_open: engine.transactions.open_count() as u64,
        slow_statements: crate::engine::slowlog::recorded(),
        uptime: ctx.uptime(),
        connections: ctx.connections().open(),
        max_connections: ctx.connections().max() as u64,
        writer_queue_depth: engine.writer.queue_depth() as u64,
        reader_queue_depth: engine.readers.queue_depth() as u64,
        oldest_read: engine.readers.oldest_read(),
        reads_in_place: engine.readers.in_place_counts(),
        wal_bytes: engine.wal_bytes(),
        db_bytes: engine.db_bytes(),
        litestream: ctx
            .replica
            .as_ref()
            .map(|r| (ctx.config().litestream_max_wal_bytes, r.get())),
    })
}
