//! Counters the daemon keeps outside the writer, and the Prometheus text
//! exposition of everything (`nexusd ctl metrics`, and the optional HTTP
//! listener).
//!
//! Everything is a relaxed atomic: a scrape may see one counter a request
//! ahead of another, never a torn value.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nexusd_protocol::{ErrorKind, ResponseBody};

use crate::engine::{TxnStats, WriterStats};
use crate::replica::Replica;

/// The kinds of request counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    Execute,
    Query,
    Batch,
    Admin,
    /// Begin, and every request inside an interactive transaction.
    Transaction,
}

impl RequestKind {
    const ALL: [RequestKind; 5] = [
        RequestKind::Execute,
        RequestKind::Query,
        RequestKind::Batch,
        RequestKind::Admin,
        RequestKind::Transaction,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            RequestKind::Execute => "execute",
            RequestKind::Query => "query",
            RequestKind::Batch => "batch",
            RequestKind::Admin => "admin",
            RequestKind::Transaction => "transaction",
        }
    }
}

/// Outcomes per request kind: `ok`, then one per [`ErrorKind`], labelled
/// by the kind itself.
const OUTCOMES: usize = 1 + ErrorKind::ALL.len();

fn outcome_slot(body: &ResponseBody) -> usize {
    match body {
        ResponseBody::Error(e) => 1 + e.kind.index(),
        _ => 0,
    }
}

fn outcome_label(slot: usize) -> &'static str {
    match slot.checked_sub(1) {
        None => "ok",
        Some(i) => ErrorKind::ALL[i].label(),
    }
}

/// Everything counted outside the writer.
pub(crate) struct Metrics {
    requests: Vec<AtomicU64>,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) reloads: AtomicU64,
    pub(crate) reloads_failed: AtomicU64,
    /// Parts of reads over one part (1 MiB), sent ahead of their answers.
    pub(crate) result_parts: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: (0..RequestKind::ALL.len() * OUTCOMES)
                .map(|_| AtomicU64::new(0))
                .collect(),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            result_parts: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one answered request by its kind and outcome.
    pub(crate) fn count_request(&self, kind: RequestKind, answer: &ResponseBody) {
        self.requests[kind as usize * OUTCOMES + outcome_slot(answer)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// (kind, outcome, count) for every pair seen at least once.
    pub(crate) fn requests(&self) -> Vec<(String, String, u64)> {
        let mut v = Vec::new();
        for kind in RequestKind::ALL {
            for slot in 0..OUTCOMES {
                let n = self.requests[kind as usize * OUTCOMES + slot].load(Ordering::Relaxed);
                if n > 0 {
                    v.push((kind.label().to_owned(), outcome_label(slot).to_owned(), n));
                }
            }
        }
        v
    }
}

/// The numbers one scrape shows; gathered by the server.
pub(crate) struct Snapshot<'a> {
    pub(crate) metrics: &'a Metrics,
    pub(crate) writer: &'a WriterStats,
    pub(crate) transactions: &'a TxnStats,
    pub(crate) transactions_open: u64,
    /// Statements that ran at least `slow-statement-ms`.
    pub(crate) slow_statements: u64,
    pub(crate) uptime: Duration,
    pub(crate) connections: u64,
    pub(crate) max_connections: u64,
    pub(crate) writer_queue_depth: u64,
    pub(crate) reader_queue_depth: u64,
    pub(crate) oldest_read: Duration,
    pub(crate) reads_in_place: crate::engine::InPlaceCounts,
    pub(crate) wal_bytes: u64,
    pub(crate) db_bytes: u64,
    /// Litestream mode: the WAL's bound, and the replica as last seen.
    pub(crate) litestream: Option<(u64, Replica)>,
}

/// Prometheus text exposition, version 0.0.4.
pub(crate) fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let w = s.writer;
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    let counter_f = |out: &mut String, name: &str, help: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    let _ = writeln!(
        out,
        "# HELP nexusd_requests_total Requests answered, by kind and outcome.\n# TYPE nexusd_requests_total counter"
    );
    for (kind, outcome, n) in s.metrics.requests() {
        let _ = writeln!(
            out,
            "nexusd_requests_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    counter(
        &mut out,
        "nexusd_writes_committed_total",
        "Write requests committed.",
        w.writes_committed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "nexusd_commits_total",
        "Transactions committed by the writer (group commits).",
        w.batches_committed.load(Ordering::Relaxed),
    );
    w.batch_size.render(
        &mut out,
        "nexusd_batch_size",
        "Requests per committed transaction.",
    );
    w.commit_seconds.render(
        &mut out,
        "nexusd_commit_duration_seconds",
        "Time from BEGIN to the end of COMMIT.",
    );
    gauge(
        &mut out,
        "nexusd_writer_queue_depth",
        "Write requests queued for the writer.",
        s.writer_queue_depth as f64,
    );
    gauge(
        &mut out,
        "nexusd_reader_queue_depth",
        "Read requests queued for the reader pool.",
        s.reader_queue_depth as f64,
    );
    counter(
        &mut out,
        "nexusd_reads_in_place_total",
        "Reads run in place on a connection thread, skipping the reader pool.",
        s.reads_in_place.done,
    );
    counter(
        &mut out,
        "nexusd_reads_moved_to_pool_total",
        "Reads that ran out of the in-place budget (200 us) and went to the reader pool.",
        s.reads_in_place.to_pool,
    );
    counter(
        &mut out,
        "nexusd_result_parts_total",
        "Parts of reads over 1 MiB, sent ahead of their answers (up to 1 MiB each).",
        s.metrics.result_parts.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "nexusd_read_snapshots_total",
        "Read transactions the reads in place began; they share one while nothing commits.",
        s.reads_in_place.snapshots,
    );
    gauge(
        &mut out,
        "nexusd_oldest_read_seconds",
        "Age of the oldest read in progress.",
        s.oldest_read.as_secs_f64(),
    );
    gauge(
        &mut out,
        "nexusd_wal_bytes",
        "Size of the write-ahead log file.",
        s.wal_bytes as f64,
    );
    gauge(
        &mut out,
        "nexusd_database_bytes",
        "Size of the database file.",
        s.db_bytes as f64,
    );
    let _ = writeln!(
        out,
        "# HELP nexusd_checkpoints_total WAL checkpoints run, by result: complete, partial (stopped at a frame a read needs), busy.\n# TYPE nexusd_checkpoints_total counter"
    );
    let busy = w.checkpoints_busy.load(Ordering::Relaxed);
    let partial = w.checkpoints_partial.load(Ordering::Relaxed);
    let all = w.checkpoints.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "nexusd_checkpoints_total{{result=\"complete\"}} {}\n\
         nexusd_checkpoints_total{{result=\"partial\"}} {partial}\n\
         nexusd_checkpoints_total{{result=\"busy\"}} {busy}",
        all.saturating_sub(busy).saturating_sub(partial)
    );
    counter(
        &mut out,
        "nexusd_writer_yields_total",
        "Statements stopped because they ran long after other writes in their batch, in \
         time for those to commit by their deadlines; each ran again alone.",
        w.yields.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "nexusd_checkpointed_frames_total",
        "WAL frames copied into the database by checkpoints.",
        w.checkpointed_frames.load(Ordering::Relaxed),
    );
    if let Some((bound, replica)) = &s.litestream {
        gauge(
            &mut out,
            "nexusd_litestream_max_wal_bytes",
            "Litestream mode: the WAL size at which nexusd checkpoints it itself.",
            *bound as f64,
        );
        counter(
            &mut out,
            "nexusd_litestream_forced_checkpoints_total",
            "Litestream mode: checkpoints nexusd ran because the WAL reached its bound \
             (Litestream was not checkpointing); each costs Litestream a new snapshot.",
            w.forced_checkpoints.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "nexusd_litestream_attached",
            "1 when Litestream's control socket lists this database as replicating.",
            if replica.attached() { 1.0 } else { 0.0 },
        );
        if let Some(age) = replica.last_sync_age() {
            gauge(
                &mut out,
                "nexusd_litestream_last_sync_age_seconds",
                "Seconds since Litestream last synced the WAL (as its control socket says).",
                age.as_secs_f64(),
            );
        }
    }
    let t = s.transactions;
    let _ = writeln!(
        out,
        "# HELP nexusd_transactions_total Interactive transactions ended, by how.\n# TYPE nexusd_transactions_total counter"
    );
    for (how, n) in [
        ("commit", &t.commits),
        ("rollback", &t.rollbacks),
        ("expired", &t.expired),
        ("conflict", &t.conflicts),
        ("aborted", &t.aborted),
        ("connection_closed", &t.closed),
        ("operator", &t.by_operator),
    ] {
        let _ = writeln!(
            out,
            "nexusd_transactions_total{{end=\"{how}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    gauge(
        &mut out,
        "nexusd_transactions_open",
        "Interactive transactions open.",
        s.transactions_open as f64,
    );
    counter(
        &mut out,
        "nexusd_transaction_connections_opened_total",
        "Read-only connections opened for deferred and read-only transactions (idle ones are reused, up to 8).",
        t.connections_opened.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "nexusd_slow_statements_total",
        "Statements that ran at least slow-statement-ms (`nexusd ctl slowlog` shows the last 128).",
        s.slow_statements,
    );
    counter_f(
        &mut out,
        "nexusd_writer_transaction_seconds_total",
        "Time the writer spent holding interactive transactions (other writes wait meanwhile).",
        w.txn_held_micros.load(Ordering::Relaxed) as f64 / 1e6,
    );
    gauge(
        &mut out,
        "nexusd_connections",
        "Client connections open.",
        s.connections as f64,
    );
    gauge(
        &mut out,
        "nexusd_connections_max",
        "The connection limit.",
        s.max_connections as f64,
    );
    counter(
        &mut out,
        "nexusd_connections_accepted_total",
        "Connections accepted.",
        s.metrics.connections_accepted.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "nexusd_connections_refused_total",
        "Connections refused (connection limit, handshake, access rules).",
        s.metrics.connections_refused.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "nexusd_config_reloads_total",
        "Config reloads applied.",
        s.metrics.reloads.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "nexusd_config_reloads_failed_total",
        "Config reloads rejected (the old config stayed in force).",
        s.metrics.reloads_failed.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "nexusd_uptime_seconds",
        "Seconds since the daemon started.",
        s.uptime.as_secs_f64(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexusd_protocol::ErrorBody;

    #[test]
    fn requests_are_counted_by_kind_and_labelled_outcome() {
        let m = Metrics::default();
        m.count_request(RequestKind::Query, &ResponseBody::Ok);
        m.count_request(RequestKind::Query, &ResponseBody::Ok);
        let io = ResponseBody::Error(ErrorBody::new(ErrorKind::Io, "disk"));
        m.count_request(RequestKind::Admin, &io);
        let forbidden = ResponseBody::Error(ErrorBody::new(ErrorKind::Forbidden, "no"));
        m.count_request(RequestKind::Execute, &forbidden);
        let mut got = m.requests();
        got.sort();
        let want = |k: &str, o: &str, n| (k.to_owned(), o.to_owned(), n);
        assert_eq!(
            got,
            vec![
                want("admin", "io", 1),
                want("execute", "forbidden", 1),
                want("query", "ok", 2),
            ]
        );
    }
}
