//! nexusd: one daemon owns a SQLite database; every other process talks to
//! it over a Unix socket.
//!
//! Layout (one module per noun):
//! - `config`: `nexusd serve` flags and their defaults.
//! - `lockfile`: sole ownership of the database file and the socket path.
//! - `db`: opening connections, settings, the statement guard, running one
//!   client statement.
//! - `writer`: the actor that owns the only read-write connection and
//!   group-commits requests.
//! - `readers`: the pool of read-only connections.
//! - `server`: accept loop, connection limit, routing of requests.
//! - `connection`: one client's handshake and frames.
//! - `shutdown`: signals, and the order in which the daemon stops.
//! - `ctl`: the `nexusd ctl` operator commands.
//! - `bench`: `nexusd bench`, load from several processes.

mod bench;
mod config;
mod connection;
mod ctl;
mod db;
mod lockfile;
mod readers;
mod server;
mod shutdown;
mod writer;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nexusd",
    version,
    about = "A daemon that owns a SQLite database and serves it to many processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Serve(config::ServeConfig),
    /// Operator commands against a running daemon.
    Ctl(ctl::CtlArgs),
    /// Load a daemon from several processes and report throughput and latency.
    Bench(bench::BenchArgs),
    /// One process of `nexusd bench` (started by it).
    #[command(hide = true)]
    BenchWorker(bench::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => match shutdown::serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nexusd: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ctl(args) => ctl::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchWorker(args) => bench::worker(args),
    }
}
