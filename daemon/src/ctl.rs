//! `nexusd ctl`: operator commands against a running daemon, through the
//! same client crate applications use.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use nexusd_client::{Client, ClientOptions, Params, Rows, Value};

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The daemon's socket. Default: as for `nexusd serve`.
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Versions (nexusd and SQLite), paths, settings and counters.
    Status,
    /// Run a statement and print its rows as a table.
    Query(SqlArgs),
    /// Run a statement through the writer and print what changed.
    Exec(SqlArgs),
    /// Drain queued requests and stop the daemon (as SIGTERM does).
    Shutdown,
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

pub fn run(args: CtlArgs) -> ExitCode {
    let socket = args
        .socket
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
    let result = runtime.block_on(async move {
        let options = ClientOptions {
            client_name: "nexusd ctl".into(),
            reconnect_for: std::time::Duration::ZERO,
            ..ClientOptions::default()
        };
        let client = Client::connect_with(&socket, options).await?;
        match args.command {
            CtlCommand::Status => {
                let s = client.status().await?;
                println!("nexusd          {}", s.server_version);
                println!("sqlite          {}", s.sqlite_version);
                println!("pid             {}", s.pid);
                println!("uptime          {}", human_duration(s.uptime_ms));
                println!("database        {}", s.db_path);
                println!("socket          {}", s.socket_path);
                println!("journal_mode    {}", s.journal_mode);
                println!("synchronous     {}", s.synchronous);
                println!("connections     {} of {}", s.connections, s.max_connections);
                println!("readers         {}", s.readers);
                println!(
                    "writes          {} in {} commits",
                    s.writes_committed, s.batches_committed
                );
                println!("writer queue    {}", s.writer_queue_depth);
            }
            CtlCommand::Query(q) => {
                let rows = client.query(&q.sql, parse_params(&q.params)).await?;
                print_table(&rows);
            }
            CtlCommand::Exec(q) => {
                let done = client.execute(&q.sql, parse_params(&q.params)).await?;
                println!(
                    "OK: {} row{} affected, last insert rowid {}",
                    done.rows_affected,
                    if done.rows_affected == 1 { "" } else { "s" },
                    done.last_insert_rowid
                );
            }
            CtlCommand::Shutdown => {
                client.shutdown().await?;
                println!("nexusd is draining and will exit");
            }
        }
        Ok::<(), nexusd_client::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nexusd ctl: {e}");
            ExitCode::FAILURE
        }
    }
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

fn display(v: &Value) -> String {
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
fn print_table(rows: &Rows) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.values().iter().map(display).collect())
        .collect();
    let mut widths: Vec<usize> = rows.columns().iter().map(|c| c.chars().count()).collect();
    for row in &cells {
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
    if !rows.columns().is_empty() {
        println!("{}", line(rows.columns()));
        println!(
            "{}",
            widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("+")
        );
    }
    for row in &cells {
        println!("{}", line(row));
    }
    let n = rows.len();
    println!("({n} row{})", if n == 1 { "" } else { "s" });
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
