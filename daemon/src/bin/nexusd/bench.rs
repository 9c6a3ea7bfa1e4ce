//! `nexusd bench`: load from real OS processes against a running daemon, or
//! one it starts on a temp dir. It reports throughput, latency percentiles,
//! errors, and the daemon's CPU time and peak RSS.
//!
//! The parent re-executes this binary as `nexusd bench-worker` once per
//! process; each worker runs its share of the clients and prints a latency
//! histogram that the parent merges. With `--baseline` the same workload
//! also runs, in the same invocation, against SQLite directly: the same
//! processes and threads each with its own connection (WAL, busy_timeout
//! 5000 ms), and one in-process connection committing 1,000 rows per
//! transaction, the ceiling a group-committing daemon can approach.

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use nexusd_client::{Client, Statement, params};

use nexusd::Synchronous;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Workload {
    /// Single-row durable inserts of a 100-byte blob.
    Insert,
    /// Reads of one row by primary key.
    PointRead,
    /// 90% point reads, 10% inserts.
    Mixed,
    /// `--batch-size` inserts in one atomic batch per request; an op is
    /// one batch.
    Batch,
    /// One client streams inserts flat out (256 in flight); the others do
    /// one insert at a time, and the report is their latency.
    BulkInteractive,
    /// pgbench's default TPC-B-like script, scale 1: an interactive
    /// transaction of UPDATE accounts, SELECT the balance, UPDATE tellers,
    /// UPDATE branches, INSERT into history. An op is one transaction. One
    /// more process does single inserts throughout, and the report gives
    /// their latency apart ("probe"): how long other writes wait while
    /// transactions run.
    Tpcb,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// A running daemon's socket; without it, bench starts its own daemon
    /// on a temp dir and stops it afterwards.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "insert")]
    workload: Workload,
    /// Client connections in all.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// OS processes the clients are spread over.
    #[arg(long, default_value_t = 8)]
    processes: usize,
    /// Length of each run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Bound each run by a number of ops in all instead of by time.
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    requests: Option<u64>,
    /// Statements per atomic batch, for `--workload batch`.
    #[arg(long, value_name = "K", default_value_t = 10)]
    batch_size: usize,
    /// Durability of the daemon bench starts, and of the baselines.
    #[arg(long, value_enum, default_value = "full")]
    synchronous: Synchronous,
    /// Also run the workload directly against SQLite, and print ratios.
    #[arg(long)]
    baseline: bool,
    /// Directory for bench's own database files (its daemon's and the
    /// baselines'). Default: a temp dir, removed afterwards.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Give every client a connection of its own. By default the clients
    /// of one process share one multiplexed connection, as the tasks of an
    /// application share one `Client`.
    #[arg(long)]
    connection_per_client: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The daemon to load.
    #[arg(long, required_unless_present = "direct")]
    socket: Option<PathBuf>,
    /// Load this database file directly instead, one connection per client.
    #[arg(long, value_name = "DB")]
    direct: Option<PathBuf>,
    #[arg(long, value_enum)]
    workload: Workload,
    #[arg(long)]
    clients: usize,
    #[arg(long)]
    duration: f64,
    /// Ops for this worker in all, instead of a duration.
    #[arg(long)]
    requests: Option<u64>,
    #[arg(long, default_value_t = 10)]
    batch_size: usize,
    #[arg(long, value_enum, default_value = "full")]
    synchronous: Synchronous,
    /// Runs the bulk stream of `bulk-interactive` instead of clients.
    #[arg(long)]
    bulk: bool,
    #[arg(long)]
    connection_per_client: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Rows preloaded for reads.
const READ_ROWS: i64 = 10_000;
const BULK_IN_FLIGHT: usize = 256;
const PAYLOAD: [u8; 100] = [0xab; 100];
/// Rows per transaction of the in-process ceiling.
const CEILING_BATCH: usize = 1000;
/// The busy timeout the apps in the seed reports ended up with.
const DIRECT_BUSY_TIMEOUT: Duration = Duration::from_millis(5000);
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, payload BLOB)";
const PRELOAD: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
                       INSERT OR IGNORE INTO bench(id, payload) SELECT i, randomblob(100) FROM n";
const INSERT: &str = "INSERT INTO bench(payload) VALUES (?1)";
/// pgbench's tables at scale 1, filled as `pgbench -i` fills them.
const TPCB_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS pgbench_branches(bid INTEGER PRIMARY KEY, bbalance INTEGER, filler TEXT)",
    "CREATE TABLE IF NOT EXISTS pgbench_tellers(tid INTEGER PRIMARY KEY, bid INTEGER, tbalance INTEGER, filler TEXT)",
    "CREATE TABLE IF NOT EXISTS pgbench_accounts(aid INTEGER PRIMARY KEY, bid INTEGER, abalance INTEGER, filler TEXT)",
    "CREATE TABLE IF NOT EXISTS pgbench_history(tid INTEGER, bid INTEGER, aid INTEGER, delta INTEGER, mtime TEXT, filler TEXT)",
    "INSERT OR IGNORE INTO pgbench_branches VALUES (1, 0, NULL)",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) \
     INSERT OR IGNORE INTO pgbench_tellers SELECT i, 1, 0, NULL FROM n",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) \
     INSERT OR IGNORE INTO pgbench_accounts SELECT i, 1, 0, printf('%84s', '') FROM n",
];
const TPCB_ACCOUNTS: u64 = 100_000;
const TPCB_TELLERS: u64 = 10;
const TPCB_UPDATE_ACCOUNT: &str =
    "UPDATE pgbench_accounts SET abalance = abalance + ?1 WHERE aid = ?2";
const TPCB_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = ?1";
const TPCB_UPDATE_TELLER: &str =
    "UPDATE pgbench_tellers SET tbalance = tbalance + ?1 WHERE tid = ?2";
const TPCB_UPDATE_BRANCH: &str =
    "UPDATE pgbench_branches SET bbalance = bbalance + ?1 WHERE bid = ?2";
const TPCB_INSERT_HISTORY: &str = "INSERT INTO pgbench_history(tid, bid, aid, delta, mtime) \
                                   VALUES (?1, ?2, ?3, ?4, CURRENT_TIMESTAMP)";

/// One transaction's random choices: (aid, bid, tid, delta), as pgbench's
/// script draws them.
fn tpcb_args(rng: &mut Rng) -> (i64, i64, i64, i64) {
    let aid = (rng.next() % TPCB_ACCOUNTS) as i64 + 1;
    let tid = (rng.next() % TPCB_TELLERS) as i64 + 1;
    let delta = (rng.next() % 10_001) as i64 - 5_000;
    (aid, 1, tid, delta)
}

/// One TPC-B-like transaction through the daemon, each statement a round
/// trip inside it.
async fn tpcb_daemon(client: &Client, rng: &mut Rng) -> nexusd_client::Result<()> {
    let (aid, bid, tid, delta) = tpcb_args(rng);
    let tx = client.transaction().await?;
    tx.execute(TPCB_UPDATE_ACCOUNT, params![delta, aid]).await?;
    tx.query(TPCB_SELECT, params![aid]).await?;
    tx.execute(TPCB_UPDATE_TELLER, params![delta, tid]).await?;
    tx.execute(TPCB_UPDATE_BRANCH, params![delta, bid]).await?;
    tx.execute(TPCB_INSERT_HISTORY, params![tid, bid, aid, delta])
        .await?;
    tx.commit().await
}

/// The same statements on a connection of the caller's, inside whatever
/// transaction it has open.
fn tpcb_statements(conn: &rusqlite::Connection, rng: &mut Rng) -> rusqlite::Result<()> {
    let (aid, bid, tid, delta) = tpcb_args(rng);
    conn.prepare_cached(TPCB_UPDATE_ACCOUNT)?
        .execute(rusqlite::params![delta, aid])?;
    let _: i64 = conn
        .prepare_cached(TPCB_SELECT)?
        .query_row([aid], |r| r.get(0))?;
    conn.prepare_cached(TPCB_UPDATE_TELLER)?
        .execute(rusqlite::params![delta, tid])?;
    conn.prepare_cached(TPCB_UPDATE_BRANCH)?
        .execute(rusqlite::params![delta, bid])?;
    conn.prepare_cached(TPCB_INSERT_HISTORY)?
        .execute(rusqlite::params![tid, bid, aid, delta])?;
    Ok(())
}

/// One TPC-B-like transaction directly, as an app without a daemon runs
/// it: BEGIN IMMEDIATE, the statements, COMMIT.
fn tpcb_direct(conn: &mut rusqlite::Connection, rng: &mut Rng) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tpcb_statements(&tx, rng)?;
    tx.commit()
}

const READ: &str = "SELECT payload FROM bench WHERE id = ?1";

/// Log-linear latency histogram: buckets 2% wide from 1 µs to ~100 s.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
}

const GROWTH: f64 = 1.02;
const BUCKETS: usize = 940;

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
        }
    }
    fn record(&mut self, d: Duration) {
        let us = (d.as_secs_f64() * 1e6).max(1.0);
        let i = ((us.ln() / GROWTH.ln()) as usize).min(BUCKETS - 1);
        self.counts[i] += 1;
    }
    fn add(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }
    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    /// Upper edge of the bucket holding quantile `q`, in milliseconds.
    fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return GROWTH.powi(i as i32 + 1) / 1000.0;
            }
        }
        0.0
    }
    fn encode(&self) -> String {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| format!("{i}:{c}"))
            .collect::<Vec<_>>()
            .join(",")
    }
    fn merge_encoded(&mut self, s: &str) {
        for pair in s.split(',').filter(|p| !p.is_empty()) {
            if let Some((i, c)) = pair.split_once(':')
                && let (Ok(i), Ok(c)) = (i.parse::<usize>(), c.parse::<u64>())
                && i < BUCKETS
            {
                self.counts[i] += c;
            }
        }
    }
}

pub(crate) fn run(args: BenchArgs) -> ExitCode {
    match bench(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nexusd bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct OwnDaemon {
    child: std::process::Child,
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// One measured run.
struct Report {
    setup: &'static str,
    seconds: f64,
    ops: u64,
    errors: u64,
    hist: Histogram,
    bulk_ops: u64,
    /// tpcb: the latency of single writes made while the transactions ran.
    probe: Option<Histogram>,
    daemon_cpu_s: Option<f64>,
    daemon_peak_rss_mib: Option<f64>,
    /// CPU the worker processes (the clients) used, user and system.
    client_cpu_s: Option<f64>,
}

impl Report {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }

    fn json(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.3}"));
        let probe = |q: f64| opt(self.probe.as_ref().map(|h| h.quantile_ms(q)));
        format!(
            "{{\"setup\":\"{}\",\"seconds\":{:.3},\"ops\":{},\"ops_per_sec\":{:.1},\"errors\":{},\
             \"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"bulk_ops\":{},\
             \"probe_p50_ms\":{},\"probe_p99_ms\":{},\
             \"daemon_cpu_s\":{},\"daemon_peak_rss_mib\":{},\"client_cpu_s\":{}}}",
            self.setup,
            self.seconds,
            self.ops,
            self.ops_per_sec(),
            self.errors,
            self.hist.quantile_ms(0.50),
            self.hist.quantile_ms(0.90),
            self.hist.quantile_ms(0.99),
            self.hist.quantile_ms(1.0),
            self.bulk_ops,
            probe(0.50),
            probe(0.99),
            opt(self.daemon_cpu_s),
            opt(self.daemon_peak_rss_mib),
            opt(self.client_cpu_s),
        )
    }

    fn print(&self) {
        outln!("{}", self.setup);
        outln!(
            "  throughput    {:.0} ops/s ({} ops in {:.1} s)",
            self.ops_per_sec(),
            self.ops,
            self.seconds
        );
        if self.bulk_ops > 0 {
            outln!(
                "  of which bulk {} ops; the latencies are the interactive clients'",
                self.bulk_ops
            );
        }
        outln!(
            "  latency ms    p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            self.hist.quantile_ms(0.50),
            self.hist.quantile_ms(0.90),
            self.hist.quantile_ms(0.99),
            self.hist.quantile_ms(1.0)
        );
        if let Some(p) = &self.probe {
            outln!(
                "  single writes meanwhile ({} of them) p50 {:.3}  p99 {:.3}  max {:.3} ms",
                p.total(),
                p.quantile_ms(0.50),
                p.quantile_ms(0.99),
                p.quantile_ms(1.0)
            );
        }
        outln!("  errors        {}", self.errors);
        let per_op = |cpu: f64| cpu * 1e6 / self.ops.max(1) as f64;
        if let (Some(cpu), Some(rss)) = (self.daemon_cpu_s, self.daemon_peak_rss_mib) {
            outln!(
                "  daemon        {cpu:.2} s CPU ({:.1} us per op), peak RSS {rss:.1} MiB",
                per_op(cpu)
            );
        }
        if let Some(cpu) = self.client_cpu_s {
            outln!(
                "  clients       {cpu:.2} s CPU ({:.1} us per op)",
                per_op(cpu)
            );
        }
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.processes == 0 || args.processes > args.clients {
        bail!(
            "--clients {} over --processes {} does not work: need 1 <= processes <= clients",
            args.clients,
            args.processes
        );
    }
    if args.workload == Workload::BulkInteractive && (args.processes < 2 || args.clients < 2) {
        bail!(
            "bulk-interactive needs at least 2 processes and 2 clients: one bulk, the rest interactive"
        );
    }
    if args.workload == Workload::BulkInteractive && args.requests.is_some() {
        bail!(
            "bulk-interactive runs for a time, not a count: use --duration instead of --requests"
        );
    }
    if args.requests == Some(0) || args.requests.is_some_and(|r| r < args.clients as u64) {
        bail!(
            "--requests {} is fewer than one per client (--clients {}): give at least {}",
            args.requests.unwrap_or(0),
            args.clients,
            args.clients
        );
    }
    if args.batch_size == 0 || args.batch_size > 10_000 {
        bail!(
            "--batch-size {} is out of range: give 1 to 10000 statements per batch",
            args.batch_size
        );
    }
    if !args.duration.is_finite() || args.duration <= 0.0 {
        bail!(
            "--duration {} must be a positive number of seconds",
            args.duration
        );
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("could not create {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("could not make a temp dir")?;
            tmp.path().to_owned()
        }
    };
    let mut reports = Vec::new();
    reports.push(run_nexusd(&exe, &args, &dir)?);
    if args.baseline {
        let db = dir.join("direct.db");
        prepare_direct(&db, args.workload)?;
        reports.push(run_processes(&exe, &args, Target::Direct(&db), None)?);
        let db = dir.join("ceiling.db");
        prepare_direct(&db, args.workload)?;
        reports.push(run_ceiling(&db, &args)?);
    }

    let ratio = |i: usize| reports[0].ops_per_sec() / reports[i].ops_per_sec().max(1e-9);
    if args.json {
        let runs: Vec<String> = reports.iter().map(Report::json).collect();
        let ratios = if reports.len() == 3 {
            format!(
                ",\"ratio_to_direct\":{:.3},\"ratio_to_in_process\":{:.3}",
                ratio(1),
                ratio(2)
            )
        } else {
            String::new()
        };
        outln!(
            "{{\"workload\":\"{}\",\"batch_size\":{},\"clients\":{},\"processes\":{},\"synchronous\":\"{:?}\",\"cores\":{},\"runs\":[{}]{}}}",
            workload_name(args.workload),
            args.batch_size,
            args.clients,
            args.processes,
            args.synchronous,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            runs.join(","),
            ratios
        );
    } else {
        if args.workload == Workload::Batch {
            outln!("an op is one atomic batch of {} inserts", args.batch_size);
        }
        outln!(
            "workload {}: {} clients over {} processes, synchronous={:?}, {} cores",
            workload_name(args.workload),
            args.clients,
            args.processes,
            args.synchronous,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        for r in &reports {
            r.print();
        }
        if reports.len() == 3 {
            outln!("nexusd / direct       {:.2}x", ratio(1));
            outln!("nexusd / in-process   {:.2}x", ratio(2));
        }
    }
    Ok(())
}

enum Target<'a> {
    Daemon(&'a Path),
    Direct(&'a Path),
}

fn run_nexusd(exe: &Path, args: &BenchArgs, dir: &Path) -> anyhow::Result<Report> {
    let (socket, own) = match &args.socket {
        Some(s) => (s.clone(), None),
        None => {
            let socket = dir.join("bench.sock");
            let db = dir.join("nexusd.db");
            let _ = std::fs::remove_file(&db);
            let child = Command::new(exe)
                .args(["serve", "--log-level", "warn", "--synchronous"])
                .arg(format!("{:?}", args.synchronous).to_lowercase())
                .arg("--db")
                .arg(&db)
                .arg("--socket")
                .arg(&socket)
                .stdin(Stdio::null())
                .spawn()
                .context("could not start a daemon")?;
            let own = OwnDaemon { child };
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                if Instant::now() > deadline {
                    bail!("the daemon did not start within 20 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (socket, Some(own))
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pid = rt.block_on(async {
        let c = Client::connect(&socket).await?;
        c.execute(SCHEMA, params![]).await?;
        if matches!(args.workload, Workload::PointRead | Workload::Mixed) {
            c.execute(PRELOAD, params![READ_ROWS]).await?;
        }
        if args.workload == Workload::Tpcb {
            for sql in TPCB_SCHEMA {
                c.execute(sql, params![]).await?;
            }
        }
        anyhow::Ok(c.status().await?.pid)
    })?;
    let report = run_processes(exe, args, Target::Daemon(&socket), Some(pid))?;
    drop(own);
    Ok(report)
}

fn prepare_direct(db: &Path, workload: Workload) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    let conn = rusqlite::Connection::open(db)?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.execute(SCHEMA, [])?;
    if matches!(workload, Workload::PointRead | Workload::Mixed) {
        conn.execute(PRELOAD, [READ_ROWS])?;
    }
    if workload == Workload::Tpcb {
        for sql in TPCB_SCHEMA {
            conn.execute(sql, [])?;
        }
    }
    Ok(())
}

/// Runs the workload from `--processes` worker processes; merges their
/// histograms.
fn run_processes(
    exe: &Path,
    args: &BenchArgs,
    target: Target<'_>,
    daemon_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let setup = match target {
        Target::Daemon(_) => "nexusd",
        Target::Direct(_) => "direct: one SQLite connection per client, WAL, busy_timeout 5000 ms",
    };
    let cpu_before = daemon_pid.map(cpu_seconds);
    let clients_before = children_cpu_seconds();
    let bulk_procs = usize::from(args.workload == Workload::BulkInteractive);
    // tpcb's probe of single writes runs beside the clients, in a process
    // of its own, for as long as they run (so not under --requests).
    let probe_procs = usize::from(args.workload == Workload::Tpcb && args.requests.is_none());
    let client_procs = args.processes - bulk_procs;
    let interactive = args.clients - bulk_procs;
    let bulk_procs = bulk_procs + probe_procs;
    let started = Instant::now();
    let mut children = Vec::new();
    let mut first_client = 0;
    for p in 0..args.processes + probe_procs {
        let bulk = p < bulk_procs;
        let idx = p - bulk_procs.min(p);
        let share = if bulk {
            1
        } else {
            interactive / client_procs + usize::from(idx < interactive % client_procs)
        };
        let mut cmd = Command::new(exe);
        cmd.arg("bench-worker");
        match target {
            Target::Daemon(socket) => cmd.arg("--socket").arg(socket),
            Target::Direct(db) => cmd.arg("--direct").arg(db),
        };
        cmd.arg("--workload")
            .arg(workload_name(args.workload))
            .arg("--clients")
            .arg(share.to_string())
            .arg("--duration")
            .arg(args.duration.to_string())
            .arg("--batch-size")
            .arg(args.batch_size.to_string())
            .arg("--synchronous")
            .arg(format!("{:?}", args.synchronous).to_lowercase())
            .arg("--seed")
            .arg(p.to_string())
            .stdout(Stdio::piped());
        if bulk {
            cmd.arg("--bulk");
        }
        if let Some(total) = args.requests {
            let quota: u64 = (first_client..first_client + share)
                .map(|i| split(total, args.clients, i))
                .sum();
            cmd.arg("--requests").arg(quota.to_string());
        }
        first_client += share;
        if args.connection_per_client {
            cmd.arg("--connection-per-client");
        }
        children.push((bulk, cmd.spawn().context("could not start a bench worker")?));
    }
    let progress = Progress::start(!args.json, setup, run_length(args));
    let mut hist = Histogram::new();
    let mut bulk_hist = Histogram::new();
    let mut errors = 0u64;
    for (bulk, mut child) in children {
        let stdout = child.stdout.take().context("worker stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(rest) = line.strip_prefix("result ") {
                let mut parts = rest.splitn(2, ' ');
                errors += parts
                    .next()
                    .and_then(|e| e.parse::<u64>().ok())
                    .unwrap_or(0);
                let h = if bulk { &mut bulk_hist } else { &mut hist };
                h.merge_encoded(parts.next().unwrap_or(""));
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("a bench worker failed ({status})");
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.stop();
    let (bulk_ops, probe) = if probe_procs > 0 {
        (0, Some(bulk_hist))
    } else {
        (bulk_hist.total(), None)
    };
    Ok(Report {
        setup,
        seconds,
        ops: hist.total() + bulk_ops,
        errors,
        bulk_ops,
        probe,
        hist,
        // VmHWM is the daemon's peak RSS over its whole life.
        daemon_cpu_s: daemon_pid.zip(cpu_before).map(|(p, b)| cpu_seconds(p) - b),
        daemon_peak_rss_mib: daemon_pid.map(|p| peak_rss_kib(p) as f64 / 1024.0),
        // Every worker has been waited for; the daemon, if bench started
        // it, has not, so it is not counted here.
        client_cpu_s: Some(children_cpu_seconds() - clients_before),
    })
}

/// One in-process connection doing the workload in transactions of 1,000.
fn run_ceiling(db: &Path, args: &BenchArgs) -> anyhow::Result<Report> {
    let conn = open_direct(db, args.synchronous)?;
    let progress = Progress::start(!args.json, "in-process", run_length(args));
    let mut hist = Histogram::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    // A `batch` op is `--batch-size` statements, a `tpcb` op 5; the
    // transaction holds as many whole ops as fit in 1,000 statements.
    let per_op = match args.workload {
        Workload::Batch => args.batch_size,
        Workload::Tpcb => 5,
        _ => 1,
    };
    let ops_per_txn = (CEILING_BATCH / per_op).max(1);
    let done = |hist: &Histogram| match args.requests {
        Some(n) => hist.total() >= n,
        None => Instant::now() >= deadline,
    };
    while !done(&hist) {
        let t0 = Instant::now();
        // Under --requests the last transaction holds only what is left.
        let ops = args.requests.map_or(ops_per_txn, |n| {
            ops_per_txn.min((n - hist.total()) as usize)
        });
        conn.execute_batch("BEGIN IMMEDIATE")?;
        if args.workload == Workload::Tpcb {
            for _ in 0..ops {
                tpcb_statements(&conn, &mut rng)?;
            }
        }
        for _ in 0..ops * per_op * usize::from(args.workload != Workload::Tpcb) {
            if is_read(args.workload, &mut rng) {
                let id = (rng.next() % READ_ROWS as u64) as i64 + 1;
                let mut st = conn.prepare_cached(READ)?;
                let _: Option<Vec<u8>> = st.query_row([id], |r| r.get(0)).ok();
            } else {
                conn.prepare_cached(INSERT)?.execute([&PAYLOAD[..]])?;
            }
        }
        conn.execute_batch("COMMIT")?;
        // Each of the transaction's ops waited for all of it.
        let took = t0.elapsed();
        for _ in 0..ops {
            hist.record(took);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.stop();
    Ok(Report {
        setup: "in-process: one connection, 1,000 per transaction",
        seconds,
        ops: hist.total(),
        errors: 0,
        bulk_ops: 0,
        probe: None,
        hist,
        daemon_cpu_s: None,
        daemon_peak_rss_mib: None,
        client_cpu_s: None,
    })
}

fn open_direct(db: &Path, sync: Synchronous) -> anyhow::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(DIRECT_BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    Ok(conn)
}

/// A progress line on stderr while a run goes.
struct Progress {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Draws only when `show` and stderr is a terminal: a `\r` line in a
    /// pipe or a log file is noise.
    fn start(show: bool, what: &'static str, total: Option<f64>) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        let show = show && std::io::stderr().is_terminal();
        let thread = show.then(|| {
            let done = done.clone();
            let started = Instant::now();
            let label: String = what.chars().take(40).collect();
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let elapsed = started.elapsed().as_secs_f64();
                    match total {
                        Some(total) => eprint!("\r{label}: {elapsed:.1} of {total:.1} s"),
                        None => eprint!("\r{label}: {elapsed:.1} s"),
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                eprint!("\r{:70}\r", "");
            })
        });
        Progress { done, thread }
    }

    fn stop(mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The run's length in seconds, if it is bounded by time.
fn run_length(args: &BenchArgs) -> Option<f64> {
    args.requests.is_none().then_some(args.duration)
}

/// Part `i` of `total` split over `parts` as evenly as can be.
fn split(total: u64, parts: usize, i: usize) -> u64 {
    let parts = parts.max(1) as u64;
    total / parts + u64::from((i as u64) < total % parts)
}

fn workload_name(w: Workload) -> &'static str {
    match w {
        Workload::Insert => "insert",
        Workload::PointRead => "point-read",
        Workload::Mixed => "mixed",
        Workload::Batch => "batch",
        Workload::BulkInteractive => "bulk-interactive",
        Workload::Tpcb => "tpcb",
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn is_read(w: Workload, rng: &mut Rng) -> bool {
    match w {
        Workload::PointRead => true,
        Workload::Mixed => !rng.next().is_multiple_of(10),
        Workload::Insert | Workload::Batch | Workload::BulkInteractive | Workload::Tpcb => false,
    }
}

/// CPU seconds, user and system, of this process's children that have
/// ended and been waited for.
fn children_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value, and getrusage only
    // writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // utime and stime are fields 14 and 15 of the line, counted from the
    // pid; the command name in parentheses may hold spaces, so count from
    // its closing parenthesis.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks / hz
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn worker(args: WorkerArgs) -> ExitCode {
    let result = match &args.direct {
        Some(db) => work_direct(db, &args),
        None => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(work_daemon(&args))),
    };
    match result {
        Ok((errors, hist)) => {
            outln!("result {errors} {}", hist.encode());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn work_daemon(args: &WorkerArgs) -> anyhow::Result<(u64, Histogram)> {
    let socket = args.socket.clone().context("--socket is required")?;
    let deadline = worker_deadline(args);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // tpcb's probe is one client doing one insert at a time.
    let probe = args.bulk && args.workload == Workload::Tpcb;
    let (clients, per_client) = match (args.bulk, probe) {
        (true, false) => (1, BULK_IN_FLIGHT),
        (true, true) => (1, 1),
        (false, _) => (args.clients, 1),
    };
    let batch: Vec<Statement> = (0..args.batch_size)
        .map(|_| Statement::new(INSERT, params![&PAYLOAD[..]]))
        .collect();
    let shared = Client::connect(&socket).await?;
    for c in 0..clients {
        let client = if args.connection_per_client {
            Client::connect(&socket).await?
        } else {
            shared.clone()
        };
        for t in 0..per_client {
            let client = client.clone();
            let errors = errors.clone();
            let workload = args.workload;
            let mut rng = Rng((args.seed * 1_000_003 + (c * 1000 + t) as u64) | 1);
            let quota = args.requests.map_or(u64::MAX, |n| {
                split(n, clients * per_client, c * per_client + t)
            });
            let batch = batch.clone();
            tasks.push(tokio::spawn(async move {
                let mut hist = Histogram::new();
                let mut attempts = 0u64;
                while attempts < quota && Instant::now() < deadline {
                    attempts += 1;
                    let read = is_read(workload, &mut rng);
                    let t0 = Instant::now();
                    let r = if read {
                        let id = (rng.next() % READ_ROWS as u64) as i64 + 1;
                        client.query(READ, params![id]).await.map(|_| ())
                    } else if workload == Workload::Tpcb && !probe {
                        tpcb_daemon(&client, &mut rng).await
                    } else if workload == Workload::Batch {
                        client.batch(batch.clone()).await.map(|_| ())
                    } else {
                        client
                            .execute(INSERT, params![&PAYLOAD[..]])
                            .await
                            .map(|_| ())
                    };
                    match r {
                        Ok(()) => hist.record(t0.elapsed()),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                hist
            }));
        }
    }
    let mut hist = Histogram::new();
    for t in tasks {
        hist.add(&t.await?);
    }
    Ok((errors.load(Ordering::Relaxed), hist))
}

/// When a worker stops: after `--duration`, or, under `--requests`, only
/// when its quota is done.
fn worker_deadline(args: &WorkerArgs) -> Instant {
    let length = match args.requests {
        Some(_) => Duration::from_secs(24 * 3600),
        None => Duration::from_secs_f64(args.duration),
    };
    Instant::now() + length
}

/// `k` inserts in one transaction, as an app without a daemon does them.
fn direct_batch(conn: &mut rusqlite::Connection, k: usize) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for _ in 0..k {
        tx.prepare_cached(INSERT)?.execute([&PAYLOAD[..]])?;
    }
    tx.commit()
}

/// The apps of the seed reports: each thread its own connection, WAL,
/// busy_timeout 5000 ms, one row per transaction.
fn work_direct(db: &Path, args: &WorkerArgs) -> anyhow::Result<(u64, Histogram)> {
    let deadline = worker_deadline(args);
    let errors = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for c in 0..args.clients {
        let mut conn = open_direct(db, args.synchronous)?;
        let errors = errors.clone();
        let workload = args.workload;
        let batch_size = args.batch_size;
        let mut rng = Rng((args.seed * 1_000_003 + c as u64) | 1);
        let quota = args
            .requests
            .map_or(u64::MAX, |n| split(n, args.clients, c));
        let tpcb = workload == Workload::Tpcb && !args.bulk;
        threads.push(std::thread::spawn(move || {
            let mut hist = Histogram::new();
            let mut attempts = 0u64;
            while attempts < quota && Instant::now() < deadline {
                attempts += 1;
                let t0 = Instant::now();
                let r = if is_read(workload, &mut rng) {
                    let id = (rng.next() % READ_ROWS as u64) as i64 + 1;
                    conn.prepare_cached(READ)
                        .and_then(|mut st| st.query_row([id], |r| r.get::<_, Vec<u8>>(0)))
                        .map(|_| ())
                } else if tpcb {
                    tpcb_direct(&mut conn, &mut rng)
                } else if workload == Workload::Batch {
                    direct_batch(&mut conn, batch_size)
                } else {
                    conn.prepare_cached(INSERT)
                        .and_then(|mut st| st.execute([&PAYLOAD[..]]))
                        .map(|_| ())
                };
                match r {
                    Ok(()) => hist.record(t0.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    let mut hist = Histogram::new();
    for t in threads {
        let h = t
            .join()
            .map_err(|_| anyhow::anyhow!("a direct worker thread panicked"))?;
        hist.add(&h);
    }
    Ok((errors.load(Ordering::Relaxed), hist))
}
