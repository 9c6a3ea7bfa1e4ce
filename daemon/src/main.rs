//! The `nexusd` binary: parses the command line and hands off to the
//! library's `serve`, `ctl` and `bench`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nexusd::{bench, config, ctl, shutdown};

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
