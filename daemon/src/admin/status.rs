//! `ctl status`: versions, paths, sizes and every setting in force.

use nexusd_protocol::Status;

use crate::context::Context;

pub(crate) fn status(ctx: &Context) -> Status {
    let engine = &ctx.engine;
    let stats = &engine.writer.stats;
    let config = ctx.config();
    let mut settings = config.settings();
    settings.push(("access".to_owned(), ctx.describe_access()));
    // Not a setting either: what the writer is doing this moment.
    settings.push(("writer".to_owned(), engine.writer.doing()));
    if let Some(replica) = &ctx.replica {
        // Not a setting: the replica as last seen; `ctl status` shows it
        // on a line of its own.
        settings.push((
            "replica".to_owned(),
            replica.get().describe(replica.socket()),
        ));
    }
    Status {
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        sqlite_version: rusqlite::version().to_owned(),
        pid: std::process::id(),
        uptime_ms: u64::try_from(ctx.uptime().as_millis()).unwrap_or(u64::MAX),
        db_path: engine.db_path().display().to_string(),
        socket_path: ctx.socket_path.display().to_string(),
        journal_mode: "wal".to_owned(),
        synchronous: format!("{:?}", config.synchronous).to_lowercase(),
        connections: ctx.connections().open(),
        max_connections: ctx.connections().max() as u64,
        readers: u32::try_from(config.readers).unwrap_or(u32::MAX),
        writes_committed: stats
            .writes_committed
            .load(std::sync::atomic::Ordering::Relaxed),
        batches_committed: stats
            .batches_committed
            .load(std::sync::atomic::Ordering::Relaxed),
        writer_queue_depth: engine.writer.queue_depth() as u64,
        db_bytes: engine.db_bytes(),
        wal_bytes: engine.wal_bytes(),
        config_path: config.config_path().map(|p| p.display().to_string()),
        settings,
    }
}

/// The `STATUS=` line systemd shows for the service.
pub(crate) fn status_line(ctx: &Context) -> String {
    let s = status(ctx);
    format!(
        "STATUS=serving {} connections; {} writes in {} commits",
        s.connections, s.writes_committed, s.batches_committed
    )
}
