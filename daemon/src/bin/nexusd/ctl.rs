//! `nexusd ctl`: operator commands against a running daemon, through the
//! same client crate applications use. Human output by default, `--json`
//! on request; the exit code is non-zero whenever the command failed.

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use nexusd_client::{
    CheckpointMode, Client, ClientOptions, Error, Executed, Params, Rows, Stats, Status, Value,
};
use serde_json::json;

#[derive(Debug, Args)]
pub(crate) struct CtlArgs {
    /// The daemon's socket. Default: as for `nexusd serve`.
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,

    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Versions, uptime, paths and sizes, and every setting in force.
    Status,
    /// Requests by kind and outcome, batch sizes, commit latency, queues,
    /// the oldest read, and counters per client.
    Stats,
    /// The connected processes: pid, uid, client name, role, requests.
    Clients,
    /// Checkpoint the WAL now (on the writer, between batches).
    Checkpoint {
        #[arg(value_enum, default_value = "passive")]
        mode: Mode,
    },
    /// Write a consistent copy of the database to DEST while writes go on.
    Backup {
        /// The file to create; it must not exist. A relative path is taken
        /// from the current directory. The daemon writes it, so it must be
        /// able to (under systemd: below /var/lib/nexusd).
        dest: PathBuf,
    },
    /// PRAGMA integrity_check; exits non-zero unless the answer is "ok".
    IntegrityCheck {
        /// PRAGMA quick_check instead: faster, skips index contents.
        #[arg(long)]
        quick: bool,
    },
    /// VACUUM: rebuild the file, returning free pages to the filesystem.
    Vacuum,
    /// PRAGMA optimize: refresh the query planner's statistics.
    Optimize,
    /// Re-read the config file, as SIGHUP does, and print what changed.
    Reload,
    /// Prometheus text exposition of the daemon's metrics.
    Metrics,
    /// Drain queued requests and stop the daemon (as SIGTERM does).
    Shutdown,
    /// The open interactive transactions: client, mode, state, age.
    Transactions,
    /// Roll back an open transaction by its id (from `transactions`).
    Rollback {
        /// The transaction's id.
        id: u64,
    },
    /// The last statements that ran at least slow-statement-ms, oldest first.
    Slowlog {
        /// Empty the log after printing it.
        #[arg(long)]
        reset: bool,
    },
    /// Run a statement and print its rows as a table.
    Query(SqlArgs),
    /// Run a statement through the writer and print what changed.
    Exec(SqlArgs),
    /// An interactive SQL shell with line editing and history.
    Shell,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Passive,
    Full,
    Restart,
    Truncate,
}

#[derive(Debug, Args)]
struct SqlArgs {
    /// One SQL statement; parameters as ?1, ?2...
    sql: String,
    /// Parameter values, in order. A value that parses as an integer or a
    /// real is bound as one; NULL binds NULL; x'0A0B' binds a blob; anything
    /// else binds as text. Prefix with `s:` to force text (s:42).
    params: Vec<String>,
}

/// A command's failure, already worded for the operator.
pub(crate) struct Failed(pub(crate) String);

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed(e.to_string())
    }
}

pub(crate) fn run(args: CtlArgs) -> ExitCode {
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(nexusd_client::default_socket_path);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nexusd ctl: could not start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json;
    match runtime.block_on(command(args, &socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(message)) => {
            if json {
                outln!("{}", json!({ "ok": false, "error": message }));
            } else {
                eprintln!("nexusd ctl: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn command(args: CtlArgs, socket: &Path) -> Result<(), Failed> {
    let long = matches!(
        args.command,
        CtlCommand::Backup { .. } | CtlCommand::Vacuum | CtlCommand::IntegrityCheck { .. }
    );
    let options = ClientOptions {
        client_name: "nexusd ctl".into(),
        reconnect_for: Duration::ZERO,
        // Maintenance on a big file can take long; wait for it.
        request_timeout: long.then(|| Duration::from_secs(24 * 3600)),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(socket, options).await?;
    let json = args.json;
    match args.command {
        CtlCommand::Status => {
            let s = client.status().await?;
            let t = client.transactions().await?;
            if json {
                print_json(&json!({ "status": s, "transactions": t }));
            } else {
                print_status(&s);
                print_transactions(&t);
            }
        }
        CtlCommand::Stats => {
            let s = client.stats().await?;
            if json {
                print_json(&s);
            } else {
                print_stats(&s);
            }
        }
        CtlCommand::Clients => {
            let c = client.clients().await?;
            let t = client.transactions().await?;
            if json {
                print_json(&json!({ "clients": c, "transactions": t }));
            } else {
                print_clients(&c);
                print_transactions(&t);
            }
        }
        CtlCommand::Transactions => {
            let t = client.transactions().await?;
            if json {
                print_json(&t);
            } else {
                print_transactions(&t);
            }
        }
        CtlCommand::Slowlog { reset } => {
            let entries = client.slow_log(reset).await?;
            if json {
                print_json(&entries);
            } else {
                let threshold = client.status().await.ok().and_then(|s| {
                    s.settings
                        .into_iter()
                        .find(|(name, _)| name == "slow-statement-ms")
                        .map(|(_, v)| v)
                });
                print_slow_log(&entries, threshold.as_deref(), reset);
            }
        }
        CtlCommand::Rollback { id } => {
            client.rollback_transaction(id).await?;
            print_text(
                json,
                format!("transaction {id} rolled back; its client is told on its next request"),
            );
        }
        CtlCommand::Checkpoint { mode } => {
            let mode = match mode {
                Mode::Passive => CheckpointMode::Passive,
                Mode::Full => CheckpointMode::Full,
                Mode::Restart => CheckpointMode::Restart,
                Mode::Truncate => CheckpointMode::Truncate,
            };
            let r = client.checkpoint(mode).await?;
            if json {
                print_json(&r);
            } else {
                outln!(
                    "checkpoint {}: {} of {} WAL frames copied into the database{}",
                    mode.as_sql().to_lowercase(),
                    r.checkpointed_frames,
                    r.wal_frames,
                    if r.busy {
                        " (busy: a reader or writer kept it from finishing; run again)"
                    } else {
                        ""
                    }
                );
            }
        }
        CtlCommand::Backup { dest } => {
            let dest = std::path::absolute(&dest)
                .map_err(|e| Failed(format!("backup destination {}: {e}", dest.display())))?;
            let total = client.status().await?.db_bytes;
            let show = !json && std::io::stderr().is_terminal();
            let progress = show.then(|| spawn_progress(&dest, total));
            let result = client.backup(&dest).await;
            if let Some((stop, handle)) = progress {
                let _ = stop.send(());
                let _ = handle.await;
            }
            let message = result?;
            if json {
                outln!(
                    "{}",
                    json!({ "ok": true, "dest": dest, "message": message })
                );
            } else {
                outln!("{message}");
            }
        }
        CtlCommand::IntegrityCheck { quick } => {
            let lines = client.integrity_check(quick).await?;
            let ok = lines == "ok";
            if json {
                outln!(
                    "{}",
                    json!({ "ok": ok, "result": lines.lines().collect::<Vec<_>>() })
                );
            } else {
                outln!("{lines}");
            }
            if !ok {
                return Err(Failed(
                    "the database is damaged (see above); restore from a backup, or `.recover` \
                     it with the sqlite3 shell while nexusd is stopped"
                        .to_owned(),
                ));
            }
        }
        CtlCommand::Vacuum => print_text(json, client.vacuum().await?),
        CtlCommand::Optimize => print_text(json, client.optimize().await?),
        CtlCommand::Reload => print_text(json, client.reload().await?),
        CtlCommand::Metrics => {
            let body = client.metrics().await?;
            if json {
                outln!("{}", json!({ "ok": true, "prometheus_text": body }));
            } else {
                out!("{body}");
            }
        }
        CtlCommand::Shutdown => {
            client.shutdown().await?;
            print_text(json, "nexusd is draining and will exit".to_owned());
        }
        CtlCommand::Query(q) => {
            let rows = client.query(&q.sql, parse_params(&q.params)).await?;
            if json {
                outln!("{}", rows_json(&rows));
            } else {
                print_table(&rows);
            }
        }
        CtlCommand::Exec(q) => {
            let done = client.execute(&q.sql, parse_params(&q.params)).await?;
            if json {
                print_json(&done);
            } else {
                print_executed(&done);
            }
        }
        CtlCommand::Shell => crate::shell::run(&client, socket).await?,
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => outln!("{s}"),
        Err(e) => eprintln!("nexusd ctl: could not format JSON: {e}"),
    }
}

fn print_text(json: bool, message: String) {
    if json {
        outln!("{}", json!({ "ok": true, "message": message }));
    } else {
        outln!("{message}");
    }
}

pub(crate) fn print_executed(done: &Executed) {
    // Rows a trigger or a foreign key's action changed besides.
    let in_all = if done.total_changes == done.rows_affected {
        String::new()
    } else {
        format!(
            " ({} changed in all, by triggers or cascades)",
            done.total_changes
        )
    };
    outln!(
        "OK: {} row{} affected{in_all}, last insert rowid {}",
        done.rows_affected,
        if done.rows_affected == 1 { "" } else { "s" },
        done.last_insert_rowid
    );
}

fn rows_json(rows: &Rows) -> serde_json::Value {
    let to_json = |v: &Value| match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => json!(i),
        Value::Real(f) => json!(f),
        Value::Text(s) => json!(s),
        Value::Blob(b) => json!(display(&Value::Blob(b.clone()))),
    };
    let list: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let obj: serde_json::Map<String, serde_json::Value> = rows
                .columns()
                .iter()
                .cloned()
                .zip(r.values().iter().map(to_json))
                .collect();
            serde_json::Value::Object(obj)
        })
        .collect();
    serde_json::Value::Array(list)
}

pub(crate) fn print_status(s: &Status) {
    outln!("nexusd          {}", s.server_version);
    outln!("sqlite          {}", s.sqlite_version);
    outln!("pid             {}", s.pid);
    outln!("uptime          {}", human_duration(s.uptime_ms));
    outln!(
        "database        {} ({})",
        s.db_path,
        human_bytes(s.db_bytes)
    );
    outln!("wal             {}", human_bytes(s.wal_bytes));
    outln!("socket          {}", s.socket_path);
    outln!(
        "config          {}",
        s.config_path
            .as_deref()
            .unwrap_or("(none: defaults and flags)")
    );
    outln!("journal_mode    {}", s.journal_mode);
    outln!("connections     {} of {}", s.connections, s.max_connections);
    outln!("readers         {}", s.readers);
    outln!(
        "writes          {} in {} commits",
        s.writes_committed,
        s.batches_committed
    );
    outln!("writer queue    {}", s.writer_queue_depth);
    // The daemon sends what its writer is doing and the replica's state
    // with the settings (so that the protocol's Status needs no new
    // field); they are shown apart from them.
    let (apart, settings): (Vec<_>, Vec<_>) = s
        .settings
        .iter()
        .partition(|(k, _)| k == "writer" || k == "replica");
    for (k, v) in apart {
        outln!("{k:<16}{v}");
    }
    outln!("settings in force:");
    let width = settings.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in settings {
        outln!("  {k:<width$}  {v}");
    }
}

fn print_stats(s: &Stats) {
    outln!("uptime            {}", human_duration(s.uptime_ms));
    outln!(
        "writes            {} in {} commits ({:.1} per commit)",
        s.writes_committed,
        s.batches_committed,
        s.writes_committed as f64 / (s.batches_committed.max(1)) as f64
    );
    outln!(
        "commit latency    p50 <= {:.1} ms, p99 <= {:.1} ms",
        s.commit_p50_ms,
        s.commit_p99_ms
    );
    outln!(
        "queues            writer {}, readers {}",
        s.writer_queue_depth,
        s.reader_queue_depth
    );
    outln!("oldest read       {} ms", s.oldest_read_ms);
    outln!(
        "wal               {} ({} checkpoints, {} busy)",
        human_bytes(s.wal_bytes),
        s.checkpoints,
        s.checkpoints_busy
    );
    outln!("requests:");
    if s.requests.is_empty() {
        outln!("  (none yet)");
    }
    let kind_width = s
        .requests
        .iter()
        .map(|(k, _, _)| k.len())
        .max()
        .unwrap_or(0);
    for (kind, outcome, n) in &s.requests {
        outln!("  {kind:<kind_width$}  {outcome:<14} {n}");
    }
    outln!("commits by requests per commit:");
    let mut lower = 1;
    for (upper, n) in &s.batch_size_histogram {
        if *n > 0 {
            let range = if *upper == u64::MAX {
                format!("{lower}+")
            } else if *upper == lower {
                format!("{upper}")
            } else {
                format!("{lower}-{upper}")
            };
            outln!("  {range:>10} per commit  {n}");
        }
        lower = upper.saturating_add(1);
    }
    outln!("clients:");
    print_clients(&s.clients);
}

fn print_clients(clients: &[nexusd_client::ClientInfo]) {
    let header = [
        "id",
        "pid",
        "uid",
        "gid",
        "name",
        "role",
        "in flight",
        "requests",
        "errors",
        "connected",
    ];
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.pid.map_or("?".to_owned(), |p| p.to_string()),
                c.uid.to_string(),
                c.gid.to_string(),
                c.client_name.clone(),
                c.role.clone(),
                c.in_flight.to_string(),
                c.requests.to_string(),
                c.errors.to_string(),
                human_duration(c.connected_ms),
            ]
        })
        .collect();
    let header: Vec<String> = header.iter().map(|s| (*s).to_owned()).collect();
    print_aligned(&header, &rows);
    let n = rows.len();
    outln!("({n} client{})", if n == 1 { "" } else { "s" });
}

fn print_transactions(list: &[nexusd_client::TxnInfo]) {
    outln!("transactions:");
    if list.is_empty() {
        outln!("  (none open)");
        return;
    }
    let header: Vec<String> = [
        "id",
        "client",
        "name",
        "pid",
        "mode",
        "state",
        "age",
        "idle",
        "statements",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.client_id.to_string(),
                t.client_name.clone(),
                t.pid.map_or("?".to_owned(), |p| p.to_string()),
                t.mode.label().to_owned(),
                t.state.clone(),
                human_duration(t.age_ms),
                human_duration(t.idle_ms),
                t.statements.to_string(),
            ]
        })
        .collect();
    print_aligned(&header, &rows);
}

fn print_slow_log(entries: &[nexusd_client::SlowStatement], threshold: Option<&str>, reset: bool) {
    let over = match threshold {
        Some("0") => " (the log is off: slow-statement-ms is 0)".to_owned(),
        Some(ms) => format!(" (statements of at least {ms} ms; the last 128 are kept)"),
        None => String::new(),
    };
    outln!("slow statements{over}:");
    if entries.is_empty() {
        outln!("  (none)");
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for e in entries {
        let mut client = Vec::new();
        if !e.client_name.is_empty() {
            client.push(e.client_name.clone());
        }
        if let Some(pid) = e.pid {
            client.push(format!("pid {pid}"));
        }
        let client = if client.is_empty() {
            String::new()
        } else {
            format!(" ({})", client.join(", "))
        };
        outln!(
            "#{}  {} ago  client {}{client}  ran {} on the {}, after waiting {}; {} value{} bound",
            e.id,
            human_duration(now_ms.saturating_sub(e.unix_ms)),
            e.client_id,
            micros(e.duration_us),
            e.ran_on,
            micros(e.waited_us),
            e.params,
            if e.params == 1 { "" } else { "s" }
        );
        for line in e.sql.lines() {
            outln!("    {line}");
        }
        if let Some(error) = &e.error {
            outln!("    failed: {error}");
        }
    }
    if reset {
        outln!("(the log is now empty)");
    }
}

/// Microseconds, as milliseconds or seconds.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} us"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// A progress bar on stderr while the daemon writes the backup: the copy's
/// size so far against the database's.
fn spawn_progress(
    dest: &Path,
    total: u64,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let partial = nexusd_protocol::paths::backup_partial_path(dest);
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(async move {
        let started = std::time::Instant::now();
        loop {
            let done = std::fs::metadata(&partial).map_or(0, |m| m.len());
            let frac = if total == 0 {
                0.0
            } else {
                (done as f64 / total as f64).min(0.99)
            };
            let filled = (frac * 30.0) as usize;
            eprint!(
                "\rbackup [{}{}] {:>3}% {} of ~{}  {:.0}s ",
                "#".repeat(filled),
                " ".repeat(30 - filled),
                (frac * 100.0) as u32,
                human_bytes(done),
                human_bytes(total),
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        eprint!("\r{:78}\r", "");
    });
    (stop, handle)
}

fn parse_params(raw: &[String]) -> Params {
    Params::Positional(raw.iter().map(|s| parse_value(s)).collect())
}

fn parse_value(s: &str) -> Value {
    if let Some(text) = s.strip_prefix("s:") {
        return Value::Text(text.to_owned());
    }
    if s.eq_ignore_ascii_case("null") {
        return Value::Null;
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Integer(i);
    }
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        return Value::Real(f);
    }
    if let Some(hex) = s
        .strip_prefix("x'")
        .or_else(|| s.strip_prefix("X'"))
        .and_then(|h| h.strip_suffix('\''))
        && hex.len() % 2 == 0
        && let Some(bytes) = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()
    {
        return Value::Blob(bytes);
    }
    Value::Text(s.to_owned())
}

pub(crate) fn display(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
            format!("x'{hex}'")
        }
    }
}

/// An aligned table, psql style, with the row count after it.
pub(crate) fn print_table(rows: &Rows) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.values().iter().map(display).collect())
        .collect();
    if !rows.columns().is_empty() {
        print_aligned(rows.columns(), &cells);
    }
    let n = rows.len();
    outln!("({n} row{})", if n == 1 { "" } else { "s" });
}

fn print_aligned(header: &[String], cells: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|c| c.chars().count()).collect();
    for row in cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |vals: &[String]| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!(" {v:<w$} "))
            .collect::<Vec<_>>()
            .join("|")
            .trim_end()
            .to_owned()
    };
    outln!("{}", line(header));
    outln!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    for row in cells {
        outln!("{}", line(row));
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{}.{:03}s", s, ms % 1000),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parameter_values() {
        assert_eq!(parse_value("42"), Value::Integer(42));
        assert_eq!(parse_value("-1.5"), Value::Real(-1.5));
        assert_eq!(parse_value("NULL"), Value::Null);
        assert_eq!(parse_value("s:42"), Value::Text("42".into()));
        assert_eq!(parse_value("x'0aFF'"), Value::Blob(vec![0x0a, 0xff]));
        assert_eq!(parse_value("x'0'"), Value::Text("x'0'".into()));
        assert_eq!(parse_value("ada"), Value::Text("ada".into()));
        assert_eq!(parse_value("inf"), Value::Text("inf".into()));
    }
}
