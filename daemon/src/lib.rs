//! nexusd: one daemon owns a SQLite database; every other process talks to
//! it over a Unix socket. The binary (`main.rs`) is a thin clap front end;
//! the modules live here so benchmarks can drive them directly.
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
//! - `access`: roles (read, write, admin) from the peer's credentials.
//! - `metrics`: counters, histograms, Prometheus text; `metrics_http` serves
//!   it on an optional loopback listener.
//! - `systemd`: sd_notify (READY, WATCHDOG, STATUS) and LISTEN_FDS.
//! - `ctl`: the `nexusd ctl` operator commands and the interactive shell.
//! - `bench`: `nexusd bench`, load from several processes.

pub mod access;
pub mod bench;
pub mod config;
pub mod connection;
pub mod ctl;
pub mod db;
pub mod lockfile;
pub mod metrics;
pub mod metrics_http;
pub mod readers;
pub mod server;
pub mod shutdown;
pub mod systemd;
pub mod writer;
