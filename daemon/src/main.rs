//! The `nexusd` binary: parses the command line and hands off to the
//! library's `serve`, `ctl` and `bench`.

use std::collections::HashSet;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
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
    Serve(Box<config::ServeConfig>),
    /// Operator commands against a running daemon.
    Ctl(ctl::CtlArgs),
    /// Load a daemon from several processes and report throughput and latency.
    Bench(bench::BenchArgs),
    /// One process of `nexusd bench` (started by it).
    #[command(hide = true)]
    BenchWorker(bench::WorkerArgs),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Serve(config) => match shutdown::serve(*config, explicit_flags(&matches)) {
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

/// The ids of the `serve` flags given on the command line (or through
/// their environment variables): the config file does not override them.
fn explicit_flags(matches: &ArgMatches) -> HashSet<String> {
    let Some(serve) = matches.subcommand_matches("serve") else {
        return HashSet::new();
    };
    serve
        .ids()
        .filter(|id| {
            matches!(
                serve.value_source(id.as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|id| id.as_str().to_owned())
        .collect()
}
