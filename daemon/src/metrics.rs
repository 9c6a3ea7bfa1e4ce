//! Counters and histograms the daemon keeps, and their Prometheus text
//! exposition (`nexusd ctl metrics`, and the optional HTTP listener).
//!
//! Everything is a relaxed atomic: a scrape may see one counter a request
//! ahead of another, never a torn value.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nexusd_protocol::{ErrorKind, ResponseBody};

/// The kinds of request counted, in label order.
pub const KINDS: [&str; 4] = ["execute", "query", "batch", "admin"];
/// Outcomes: ok, then one per `ErrorKind`.
pub const OUTCOMES: [&str; 11] = [
    "ok",
    "sql",
    "refused",
    "timeout",
    "overloaded",
    "too_large",
    "protocol",
    "shutting_down",
    "unsupported",
    "internal",
    "forbidden",
];

pub fn outcome_index(body: &ResponseBody) -> usize {
    match body {
        ResponseBody::Error(e) => match e.kind {
            ErrorKind::Sql => 1,
            ErrorKind::Refused => 2,
            ErrorKind::Timeout => 3,
            ErrorKind::Overloaded => 4,
            ErrorKind::TooLarge => 5,
            ErrorKind::Protocol => 6,
            ErrorKind::ShuttingDown => 7,
            ErrorKind::Unsupported => 8,
            ErrorKind::Internal => 9,
            ErrorKind::Forbidden => 10,
        },
        _ => 0,
    }
}

/// A fixed-bucket histogram: counts per upper bound, a sum and a count.
pub struct Histogram {
    bounds: &'static [f64],
    /// One more than `bounds`: the last is +Inf.
    counts: Vec<AtomicU64>,
    /// Sum of observations, in millionths of the unit.
    sum_micros: AtomicU64,
}

/// Requests per commit.
pub const BATCH_SIZE_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Seconds from BEGIN to the end of COMMIT.
pub const COMMIT_SECONDS_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// (upper bound, count in that bucket); the last bound is +Inf.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    self.bounds.get(i).copied().unwrap_or(f64::INFINITY),
                    c.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The upper bound of the bucket holding quantile `q`; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        let buckets = self.buckets();
        let total: u64 = buckets.iter().map(|b| b.1).sum();
        if total == 0 {
            return 0.0;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bound, n) in &buckets {
            seen += n;
            if seen >= rank {
                return if bound.is_finite() {
                    *bound
                } else {
                    self.bounds.last().copied().unwrap_or(0.0)
                };
            }
        }
        0.0
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.buckets() {
            cumulative += n;
            let le = if bound.is_finite() {
                format!("{bound}")
            } else {
                "+Inf".to_owned()
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Everything counted outside the writer.
pub struct Metrics {
    requests: Vec<AtomicU64>,
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub reloads: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: (0..KINDS.len() * OUTCOMES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, kind: usize, outcome: usize) {
        self.requests[kind * OUTCOMES.len() + outcome].fetch_add(1, Ordering::Relaxed);
    }

    /// (kind, outcome, count) for every pair seen at least once.
    pub fn requests(&self) -> Vec<(String, String, u64)> {
        let mut v = Vec::new();
        for (k, kind) in KINDS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                let n = self.requests[k * OUTCOMES.len() + o].load(Ordering::Relaxed);
                if n > 0 {
                    v.push(((*kind).to_owned(), (*outcome).to_owned(), n));
                }
            }
        }
        v
    }
}

/// The numbers one scrape shows; gathered by the server.
pub struct Snapshot<'a> {
    pub metrics: &'a Metrics,
    pub writer: &'a crate::writer::WriterStats,
    pub uptime: Duration,
    pub connections: u64,
    pub max_connections: u64,
    pub writer_queue_depth: u64,
    pub reader_queue_depth: u64,
    pub oldest_read: Duration,
    pub wal_bytes: u64,
    pub db_bytes: u64,
}

/// Prometheus text exposition, version 0.0.4.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let w = s.writer;
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
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
        "# HELP nexusd_checkpoints_total WAL checkpoints run, by result.\n# TYPE nexusd_checkpoints_total counter"
    );
    let busy = w.checkpoints_busy.load(Ordering::Relaxed);
    let all = w.checkpoints.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "nexusd_checkpoints_total{{result=\"complete\"}} {}\nnexusd_checkpoints_total{{result=\"busy\"}} {busy}",
        all.saturating_sub(busy)
    );
    counter(
        &mut out,
        "nexusd_checkpointed_frames_total",
        "WAL frames copied into the database by checkpoints.",
        w.checkpointed_frames.load(Ordering::Relaxed),
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

    #[test]
    fn histogram_buckets_quantiles_and_text() {
        let h = Histogram::new(BATCH_SIZE_BOUNDS);
        for v in [1.0, 3.0, 3.0, 20.0, 5000.0] {
            h.observe(v);
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.quantile(0.5), 4.0);
        assert_eq!(h.quantile(0.99), 1024.0);
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"4\"} 3\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 5\n"), "{s}");
        assert!(s.contains("x_count 5\n"), "{s}");
        assert!(s.contains("x_sum 5027\n"), "{s}");
    }
}
