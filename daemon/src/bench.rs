//! `nexusd bench`: load from real OS processes against a running daemon, or
//! one it starts on a temp dir. It reports throughput, latency percentiles,
//! errors, and the daemon's CPU time and peak RSS.
//!
//! The parent re-executes this binary as `nexusd bench-worker` once per
//! process; each worker runs its share of the clients and prints a latency
//! histogram that the parent merges.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use nexusd_client::{Client, params};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Single-row durable inserts of a 100-byte blob.
    Insert,
    /// Reads of one row by primary key.
    PointRead,
    /// 90% point reads, 10% inserts.
    Mixed,
    /// One client streams inserts flat out (256 in flight); the others do
    /// one insert at a time, and the report is their latency.
    BulkInteractive,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A running daemon's socket; without it, bench starts its own daemon
    /// on a temp dir (synchronous=full) and stops it afterwards.
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
    /// Length of the run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long, value_enum)]
    workload: Workload,
    #[arg(long)]
    clients: usize,
    #[arg(long)]
    duration: f64,
    /// Runs the bulk stream of `bulk-interactive` instead of clients.
    #[arg(long)]
    bulk: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Rows preloaded for reads.
const READ_ROWS: i64 = 10_000;
const BULK_IN_FLIGHT: usize = 256;
const PAYLOAD: [u8; 100] = [0xab; 100];

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
    fn bucket(us: f64) -> usize {
        ((us.max(1.0).ln() / GROWTH.ln()) as usize).min(BUCKETS - 1)
    }
    fn record(&mut self, d: Duration) {
        self.counts[Self::bucket(d.as_secs_f64() * 1e6)] += 1;
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

pub fn run(args: BenchArgs) -> ExitCode {
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
    _dir: tempfile::TempDir,
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
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
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let (socket, own) = match &args.socket {
        Some(s) => (s.clone(), None),
        None => {
            let dir = tempfile::tempdir().context("could not make a temp dir")?;
            let socket = dir.path().join("bench.sock");
            let child = Command::new(&exe)
                .args(["serve", "--log-level", "warn", "--db"])
                .arg(dir.path().join("bench.db"))
                .arg("--socket")
                .arg(&socket)
                .stdin(Stdio::null())
                .spawn()
                .context("could not start a daemon")?;
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                if Instant::now() > deadline {
                    bail!("the daemon did not start within 20 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (socket, Some(OwnDaemon { child, _dir: dir }))
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let daemon_pid = rt.block_on(async {
        let c = Client::connect(&socket).await?;
        c.execute(
            "CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, payload BLOB)",
            params![],
        )
        .await?;
        if matches!(args.workload, Workload::PointRead | Workload::Mixed) {
            let have: i64 = c
                .query("SELECT count(*) FROM bench", params![])
                .await?
                .get(0)
                .map(|r| r.get(0))
                .transpose()?
                .unwrap_or(0);
            if have < READ_ROWS {
                c.execute(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
                     INSERT OR IGNORE INTO bench(id, payload) SELECT i, randomblob(100) FROM n",
                    params![READ_ROWS],
                )
                .await?;
            }
        }
        anyhow::Ok(c.status().await?.pid)
    })?;
    let cpu_before = cpu_seconds(daemon_pid);

    let mut children = Vec::new();
    let (bulk_procs, client_procs) = if args.workload == Workload::BulkInteractive {
        (1, args.processes.saturating_sub(1).max(1))
    } else {
        (0, args.processes)
    };
    let interactive_clients = if bulk_procs == 1 {
        args.clients.saturating_sub(1).max(1)
    } else {
        args.clients
    };
    let started = Instant::now();
    for p in 0..bulk_procs + client_procs {
        let bulk = p < bulk_procs;
        let idx = p - bulk_procs;
        let share = if bulk {
            1
        } else {
            interactive_clients / client_procs
                + usize::from(idx < interactive_clients % client_procs)
        };
        let mut cmd = Command::new(&exe);
        cmd.arg("bench-worker")
            .arg("--socket")
            .arg(&socket)
            .arg("--workload")
            .arg(workload_name(args.workload))
            .arg("--clients")
            .arg(share.to_string())
            .arg("--duration")
            .arg(args.duration.to_string())
            .arg("--seed")
            .arg(p.to_string())
            .stdout(Stdio::piped());
        if bulk {
            cmd.arg("--bulk");
        }
        children.push((bulk, cmd.spawn().context("could not start a bench worker")?));
    }
    let mut hist = Histogram::new();
    let mut bulk_hist = Histogram::new();
    let mut errors = 0u64;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = (!args.json).then(|| {
        let (done, total, name) = (done.clone(), args.duration, workload_name(args.workload));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                eprint!(
                    "\rrunning {name}: {:.1} of {total:.1} s",
                    started.elapsed().as_secs_f64()
                );
                std::thread::sleep(Duration::from_millis(250));
            }
            eprint!("\r{:60}\r", "");
        })
    });
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
    let elapsed = started.elapsed().as_secs_f64();
    // VmHWM is the daemon's peak RSS over its whole life.
    let peak_rss_kib = peak_rss(daemon_pid);
    let cpu = cpu_seconds(daemon_pid) - cpu_before;
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    drop(own);

    let ops = hist.total() + bulk_hist.total();
    let report = Report {
        workload: workload_name(args.workload),
        clients: args.clients,
        processes: args.processes,
        seconds: elapsed,
        ops,
        ops_per_sec: ops as f64 / elapsed,
        errors,
        p50_ms: hist.quantile_ms(0.50),
        p90_ms: hist.quantile_ms(0.90),
        p99_ms: hist.quantile_ms(0.99),
        max_ms: hist.quantile_ms(1.0),
        bulk_ops: bulk_hist.total(),
        daemon_cpu_s: cpu,
        daemon_peak_rss_mib: peak_rss_kib as f64 / 1024.0,
    };
    report.print(args.json);
    Ok(())
}

struct Report {
    workload: &'static str,
    clients: usize,
    processes: usize,
    seconds: f64,
    ops: u64,
    ops_per_sec: f64,
    errors: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    bulk_ops: u64,
    daemon_cpu_s: f64,
    daemon_peak_rss_mib: f64,
}

impl Report {
    fn print(&self, json: bool) {
        if json {
            println!(
                "{{\"workload\":\"{}\",\"clients\":{},\"processes\":{},\"seconds\":{:.3},\"ops\":{},\
                 \"ops_per_sec\":{:.1},\"errors\":{},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\
                 \"max_ms\":{:.3},\"bulk_ops\":{},\"daemon_cpu_s\":{:.3},\"daemon_peak_rss_mib\":{:.1}}}",
                self.workload,
                self.clients,
                self.processes,
                self.seconds,
                self.ops,
                self.ops_per_sec,
                self.errors,
                self.p50_ms,
                self.p90_ms,
                self.p99_ms,
                self.max_ms,
                self.bulk_ops,
                self.daemon_cpu_s,
                self.daemon_peak_rss_mib
            );
            return;
        }
        println!(
            "workload {} : {} clients over {} processes, {:.1} s",
            self.workload, self.clients, self.processes, self.seconds
        );
        println!(
            "throughput      {:.0} ops/s ({} ops)",
            self.ops_per_sec, self.ops
        );
        if self.bulk_ops > 0 {
            println!(
                "  of which bulk {} ops; latencies below are the interactive clients'",
                self.bulk_ops
            );
        }
        println!(
            "latency ms      p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        );
        println!("errors          {}", self.errors);
        println!(
            "daemon          {:.2} s CPU, peak RSS {:.1} MiB",
            self.daemon_cpu_s, self.daemon_peak_rss_mib
        );
    }
}

fn workload_name(w: Workload) -> &'static str {
    match w {
        Workload::Insert => "insert",
        Workload::PointRead => "point-read",
        Workload::Mixed => "mixed",
        Workload::BulkInteractive => "bulk-interactive",
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks / hz
}

fn peak_rss(pid: u32) -> u64 {
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

pub fn worker(args: WorkerArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(work(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn work(args: WorkerArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let (clients, per_client) = if args.bulk {
        (1, BULK_IN_FLIGHT)
    } else {
        (args.clients, 1)
    };
    for c in 0..clients {
        let client = Client::connect(&args.socket).await?;
        for t in 0..per_client {
            let client = client.clone();
            let errors = errors.clone();
            let workload = args.workload;
            let mut rng = (args.seed * 1_000_003 + (c * 1000 + t) as u64) | 1;
            tasks.push(tokio::spawn(async move {
                let mut hist = Histogram::new();
                while Instant::now() < deadline {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let read = match workload {
                        Workload::PointRead => true,
                        Workload::Mixed => !rng.is_multiple_of(10),
                        Workload::Insert | Workload::BulkInteractive => false,
                    };
                    let t0 = Instant::now();
                    let r = if read {
                        let id = (rng % READ_ROWS as u64) as i64 + 1;
                        client
                            .query("SELECT payload FROM bench WHERE id = ?1", params![id])
                            .await
                            .map(|_| ())
                    } else {
                        client
                            .execute(
                                "INSERT INTO bench(payload) VALUES (?1)",
                                params![&PAYLOAD[..]],
                            )
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
        let h = t.await?;
        for (a, b) in hist.counts.iter_mut().zip(h.counts) {
            *a += b;
        }
    }
    println!(
        "result {} {}",
        errors.load(Ordering::Relaxed),
        hist.encode()
    );
    Ok(())
}
