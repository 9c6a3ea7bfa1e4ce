//! nexusd: one daemon owns a SQLite database; every other process talks to
//! it over a Unix socket. This library is the daemon; the `nexusd` binary
//! (`src/bin/nexusd/`) is its command line, with the operator tools (`ctl`,
//! `bench`) that reach it through the client crate like any application.
//!
//! A request travels down the modules in one direction, and nothing lower
//! imports anything higher:
//!
//! - `lifecycle`: open, bind, run, close, in the order that keeps data safe.
//! - `server`: the accept loop and the connection limit.
//! - `session`: one client: the handshake, frames in, replies out.
//! - `dispatch`: the role check, and routing to the engine or admin.
//! - `admin`: the operator commands, one function each.
//! - `engine`: the writer actor (the only read-write connection), the
//!   reader pool, the statement guard and runner, maintenance connections.
//!
//! Beside the path, shared by it:
//!
//! - `context`: the state every layer shares (settings, engine, metrics,
//!   clients, the connection limit, shutdown).
//! - `config`: `nexusd serve` flags, the config file, the live settings and
//!   their reload.
//! - `access`: roles from the peer's credentials.
//! - `clients`: the registry of connected clients.
//! - `metrics` and `histogram`: counters and their Prometheus text;
//!   `metrics_http` serves it on an optional loopback listener.
//! - `shutdown`: signals, and the drain's fan-out.
//! - `systemd`: sd_notify notices and the LISTEN_FDS socket.
//! - `replica`: in Litestream mode, the replica as Litestream's control
//!   socket reports it.
//! - `lockfile`, `logging`.
//!
//! Everything is crate-private except what the binary and the criterion
//! benchmark need, re-exported below.

mod access;
mod admin;
mod clients;
mod config;
mod context;
mod dispatch;
mod engine;
mod histogram;
mod io_threads;
mod lifecycle;
mod lockfile;
mod logging;
mod metrics;
mod metrics_http;
mod replica;
mod server;
mod session;
mod shutdown;
mod systemd;

/// `nexusd serve`: its flags, and the daemon's whole life.
pub use config::ServeConfig;
pub use lifecycle::serve;

/// The writer actor alone, for `benches/writer.rs`: submit writes to it as
/// the dispatcher does, without a socket in front.
pub use engine::{CheckpointGate, Synchronous, WriteOp, WriterConfig, WriterHandle, spawn_writer};
/// SQL text's leading whitespace and comments (for `nexusd ctl shell`).
pub use engine::{is_blank as is_blank_sql, skip_blank as skip_blank_sql};
