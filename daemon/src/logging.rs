//! Logs to stderr through `tracing`, with a filter a reload can change.

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// Changes the log filter in place (a reload of `log-level`).
pub(crate) type LogReload = Box<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

/// Sets up logging to stderr at `level`, unless `RUST_LOG` says otherwise;
/// returns how to change the level later.
pub(crate) fn init(level: &str) -> anyhow::Result<LogReload> {
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = match &from_env {
        Some(v) => EnvFilter::try_new(v)
            .with_context(|| format!("RUST_LOG={v:?} is not a valid log filter"))?,
        None => EnvFilter::try_new(level).with_context(|| {
            format!("--log-level {level:?} is not valid; use error, warn, info, debug or trace")
        })?,
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours only for a person at a terminal: the journal and
                // log files get plain text. NO_COLOR turns them off anyway.
                .with_ansi(
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                ),
        )
        .try_init()
        .map_err(|e| anyhow::anyhow!("could not set up logging: {e}"))?;
    Ok(Box::new(move |level: &str| {
        if from_env.is_some() {
            tracing::warn!("RUST_LOG is set, so log-level in the config file is ignored");
            return Ok(());
        }
        let filter = EnvFilter::try_new(level)
            .with_context(|| format!("log-level {level:?} is not valid"))?;
        handle
            .reload(filter)
            .map_err(|e| anyhow::anyhow!("could not change the log level: {e}"))
    }))
}
