//! The `nexusd` binary: the command line. `serve` hands off to the daemon
//! library; the rest are programs of the binary's own, clients of the
//! daemon through `nexusd-client` like any application:
//!
//! - `ctl`: the operator commands; `shell`: its interactive SQL shell.
//! - `bench`: load from several processes (and its hidden worker).
//! - `completions` and `man`: generated from the same clap definitions.

/// `println!` for what the commands print. A reader that stops early
/// (`nexusd ctl query … | head`) ends the command quietly with status 0,
/// as it ends `cat`; `println!` would panic there.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(e)
        }
    }};
}

/// `print!`, the same way.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(e)
        }
    }};
}

mod bench;
mod ctl;
mod shell;

use std::collections::HashSet;
use std::io::Write as _;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use clap_complete::Shell;

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
    Serve(Box<nexusd::ServeConfig>),
    /// Operator commands against a running daemon.
    Ctl(ctl::CtlArgs),
    /// Load a daemon from several processes and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Print a shell completion script: `nexusd completions bash >
    /// /etc/bash_completion.d/nexusd`.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff): `nexusd man > nexusd.1; man ./nexusd.1`.
    Man,
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
        Command::Serve(config) => match nexusd::serve(*config, explicit_flags(&matches)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nexusd: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ctl(args) => ctl::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchWorker(args) => bench::worker(args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "nexusd", &mut script);
            print_generated("completions", &script)
        }
        Command::Man => man_page(),
    }
}

/// Stdout could not be written: a reader that went away is the end of the
/// output, not an error; anything else is reported.
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("nexusd: could not write to stdout: {e}");
    std::process::exit(1);
}

/// `nexusd.1`, from the clap definitions: the top-level page, with every
/// subcommand's page after it so that one file holds them all.
fn man_page() -> ExitCode {
    let mut page = Vec::new();
    let command = Cli::command();
    let rendered = clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .and_then(|()| {
            for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
                let name = format!("nexusd-{}", sub.get_name());
                let sub = sub.clone().bin_name(name.clone());
                clap_mangen::Man::new(sub).title(name).render(&mut page)?;
            }
            Ok(())
        });
    match rendered {
        Ok(()) => print_generated("man", &page),
        Err(e) => {
            eprintln!("nexusd man: could not render the man page: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes generated text to stdout; a reader that stops early (`| head`)
/// is no failure.
fn print_generated(what: &str, text: &[u8]) -> ExitCode {
    match std::io::stdout().write_all(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nexusd {what}: could not write to stdout: {e}");
            ExitCode::FAILURE
        }
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
