//! `nexusd serve` settings: every one has a default that suits a busy host,
//! so a newcomer needs no flags.
//!
//! Each setting comes from, in order of precedence: a command-line flag
//! (or its environment variable), the config file (`--config`, default
//! /etc/nexusd/nexusd.toml when it exists; keys are the flag names without
//! `--`), then the default. `systemd/nexusd.toml` documents every key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use nexusd_protocol::DEFAULT_MAX_FRAME_BYTES;
use serde::Deserialize;

use crate::access::AccessConfig;
use crate::engine::Synchronous;

mod live;

pub(crate) use live::Live;

/// Where the config file is looked for when `--config` is not given.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/nexusd/nexusd.toml";

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Config file (TOML). Default: /etc/nexusd/nexusd.toml if it exists.
    /// Flags given on the command line override it.
    #[arg(long, value_name = "FILE", env = "NEXUSD_CONFIG")]
    pub(crate) config: Option<PathBuf>,

    /// Database file; created if missing. Default: $NEXUSD_DB, else
    /// $XDG_DATA_HOME/nexusd/nexusd.db, else ./nexusd.db.
    #[arg(long, value_name = "FILE")]
    pub(crate) db: Option<PathBuf>,

    /// Unix socket to serve on. Default: $NEXUSD_SOCKET, else
    /// $XDG_RUNTIME_DIR/nexusd.sock, else /tmp/nexusd-<uid>.sock.
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,

    /// Durability of a commit: `full` survives power loss; `normal` survives
    /// a process crash but a power loss can drop the last commits.
    #[arg(long, value_enum, default_value = "full")]
    pub(crate) synchronous: Synchronous,

    /// Most client connections at once; more are refused with an error.
    #[arg(long, default_value_t = 4096)]
    pub(crate) max_connections: usize,

    /// Connections one uid may hold; 0 means every slot but the admin
    /// reserve. Root and uids with the admin role are not capped.
    #[arg(long, default_value_t = 0)]
    pub(crate) max_connections_per_uid: usize,

    /// Connection slots kept for root and admins, so `nexusd ctl` gets in
    /// when clients have taken every other one.
    #[arg(long, default_value_t = 8)]
    pub(crate) admin_reserve_connections: usize,

    /// Requests one connection may have outstanding; further frames wait
    /// unread until one is answered.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_in_flight: u32,

    /// Largest frame accepted or sent, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    pub(crate) max_frame_bytes: u32,

    /// Largest query result, in bytes (roughly: values plus 9 bytes each);
    /// a larger one fails with an error asking for LIMIT. Must leave room
    /// under --max-frame-bytes.
    #[arg(long, default_value_t = 15 * 1024 * 1024)]
    pub(crate) max_result_bytes: usize,

    /// Write requests queued for the writer; callers wait beyond that.
    #[arg(long, default_value_t = 8192)]
    pub(crate) writer_queue: usize,

    /// Most requests committed in one transaction.
    #[arg(long, default_value_t = 1024)]
    pub(crate) max_batch: usize,

    /// Longest a write transaction stays open, in milliseconds, before it is
    /// committed with the requests it holds so far.
    #[arg(long, default_value_t = 100)]
    pub(crate) max_txn_ms: u64,

    /// Read-only connections in the reader pool.
    #[arg(long, default_value_t = 4)]
    pub(crate) readers: usize,

    /// Time limit of a request that names none, in milliseconds: a request
    /// not started by then is answered "timed out, not applied", and a
    /// statement still running is interrupted and rolled back.
    #[arg(long, default_value_t = 30_000)]
    pub(crate) request_timeout_ms: u64,

    /// Cap on the time limit a client may ask for, in milliseconds.
    #[arg(long, default_value_t = 300_000)]
    pub(crate) max_request_timeout_ms: u64,

    /// A connection that has not completed its handshake by then is closed.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) handshake_timeout_ms: u64,

    /// A connection whose client reads none of its replies for this long is
    /// closed.
    #[arg(long, default_value_t = 30_000)]
    pub(crate) write_stall_timeout_ms: u64,

    /// A client that starts a frame must finish it within this long, or
    /// its connection is closed (so a stalled client cannot keep a slot).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) frame_timeout_ms: u64,

    /// A connection that sends nothing for this long is closed; 0 (the
    /// default) never closes an idle one, so client pools stay connected.
    #[arg(long, default_value_t = 0)]
    pub(crate) idle_timeout_ms: u64,

    /// How long a shutdown waits for queued requests to be answered.
    #[arg(long, default_value_t = 30_000)]
    pub(crate) drain_timeout_ms: u64,

    /// After sending replies, an I/O thread polls its sockets for this many
    /// microseconds before it sleeps, so the next request is read without
    /// a wake-up (which costs most on a virtual machine); 0 turns it off.
    /// It polls only while a core is free (by /proc/loadavg), so never
    /// under load, and never when idle.
    #[arg(long, default_value_t = 50)]
    pub(crate) idle_poll_us: u64,

    /// Log level when RUST_LOG is unset: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub(crate) log_level: String,

    /// Longest a read may keep its read transaction open, in milliseconds;
    /// a longer read is interrupted with an error saying so, because it
    /// would hold back WAL checkpoints.
    #[arg(long, default_value_t = 30_000)]
    pub(crate) max_read_ms: u64,

    /// A statement that runs at least this long, in milliseconds, goes into
    /// the slow-statement log that `nexusd ctl slowlog` shows (the last
    /// 128); 0 keeps none.
    #[arg(long, default_value_t = 100)]
    pub(crate) slow_statement_ms: u64,

    /// An interactive transaction that sends nothing for this long, in
    /// milliseconds, is rolled back, so that a stuck client cannot hold the
    /// writer (or a snapshot) for long.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) txn_idle_timeout_ms: u64,

    /// An interactive transaction open longer than this, in milliseconds,
    /// is rolled back (a read-only one also at --max-read-ms).
    #[arg(long, default_value_t = 30_000)]
    pub(crate) txn_max_ms: u64,

    /// Most interactive transactions open at once; more are refused with
    /// "overloaded".
    #[arg(long, default_value_t = 256)]
    pub(crate) max_transactions: usize,

    /// The writer checkpoints the WAL between batches once it is this many
    /// bytes; after a complete checkpoint it is cut back to 4x this.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub(crate) checkpoint_wal_bytes: u64,

    /// Litestream mode: Litestream (`litestream replicate`, run beside
    /// nexusd) owns WAL checkpoints, so that it never has to take a new
    /// full snapshot. nexusd then checkpoints only when the WAL reaches
    /// --litestream-max-wal-bytes (Litestream down or stuck). See
    /// docs/operations.md, "Replication with Litestream".
    #[arg(long)]
    pub(crate) litestream: bool,

    /// Litestream's control socket (its config's `socket: path`), which
    /// `ctl status` and the metrics read to show whether the replica is
    /// attached and when it last synced. Only in Litestream mode.
    #[arg(long, value_name = "PATH")]
    pub(crate) litestream_socket: Option<PathBuf>,

    /// In Litestream mode, the WAL's hard bound, in bytes: past it nexusd
    /// checkpoints the WAL itself (and Litestream takes a new snapshot when
    /// it catches up). Keep it above Litestream's own truncate-page-n.
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    pub(crate) litestream_max_wal_bytes: u64,

    /// Permission bits of the socket file, in octal. Connecting needs write
    /// permission; the access rules then decide the role.
    #[arg(long, default_value = "0660")]
    pub(crate) socket_mode: String,

    /// Group of the socket file (a name or a number). Default: the
    /// daemon's primary group. Its members get the write role unless the
    /// config's [access] rules say otherwise.
    #[arg(long, value_name = "GROUP")]
    pub(crate) socket_group: Option<String>,

    /// Serve Prometheus metrics over HTTP on this loopback address, e.g.
    /// 127.0.0.1:9187. Off by default; `nexusd ctl metrics` always works.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_listen: Option<String>,

    /// Access rules, from the config file's [access] table.
    #[arg(skip)]
    pub(crate) access: AccessConfig,
}

/// The most `--idle-poll-us` takes.
const MAX_IDLE_POLL_US: u64 = 10_000;

/// The config file: the same settings as the flags, kebab-case, plus the
/// [access] table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    db: Option<PathBuf>,
    socket: Option<PathBuf>,
    synchronous: Option<Synchronous>,
    max_connections: Option<usize>,
    max_connections_per_uid: Option<usize>,
    admin_reserve_connections: Option<usize>,
    max_in_flight: Option<u32>,
    max_frame_bytes: Option<u32>,
    max_result_bytes: Option<usize>,
    writer_queue: Option<usize>,
    max_batch: Option<usize>,
    max_txn_ms: Option<u64>,
    readers: Option<usize>,
    request_timeout_ms: Option<u64>,
    max_request_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    write_stall_timeout_ms: Option<u64>,
    frame_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    idle_poll_us: Option<u64>,
    log_level: Option<String>,
    max_read_ms: Option<u64>,
    slow_statement_ms: Option<u64>,
    txn_idle_timeout_ms: Option<u64>,
    txn_max_ms: Option<u64>,
    max_transactions: Option<usize>,
    checkpoint_wal_bytes: Option<u64>,
    litestream: Option<bool>,
    litestream_socket: Option<PathBuf>,
    litestream_max_wal_bytes: Option<u64>,
    socket_mode: Option<String>,
    socket_group: Option<String>,
    metrics_listen: Option<String>,
    access: Option<AccessConfig>,
}

/// Names the settings a reload (SIGHUP, `ctl reload`) can change in place,
/// once: the rest need a restart.
macro_rules! reloadable {
    ($($field:ident),* $(,)?) => {
        impl ServeConfig {
            /// This config with the reloadable settings taken from `new`
            /// and the rest kept: what a reload puts in force.
            pub(crate) fn with_reloadable_from(&self, new: &ServeConfig) -> ServeConfig {
                let mut merged = self.clone();
                $(merged.$field = new.$field.clone();)*
                merged
            }
        }
    };
}

reloadable!(
    log_level,
    max_connections,
    max_connections_per_uid,
    admin_reserve_connections,
    max_in_flight,
    request_timeout_ms,
    max_request_timeout_ms,
    handshake_timeout_ms,
    write_stall_timeout_ms,
    frame_timeout_ms,
    idle_timeout_ms,
    drain_timeout_ms,
    max_read_ms,
    slow_statement_ms,
    txn_idle_timeout_ms,
    txn_max_ms,
    max_transactions,
    access,
);

impl ServeConfig {
    /// The config file to read: `--config`, else the default path if a file
    /// is there.
    pub(crate) fn config_path(&self) -> Option<PathBuf> {
        match &self.config {
            Some(p) => Some(p.clone()),
            None => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                p.exists().then(|| p.to_owned())
            }
        }
    }

    /// This config with the file's values filled in under the flags in
    /// `explicit` (the ids of the flags given on the command line).
    pub(crate) fn with_file(mut self, explicit: &HashSet<String>) -> anyhow::Result<ServeConfig> {
        let Some(path) = self.config_path() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("could not read the config file {}", path.display()))?;
        let file: FileConfig = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "config file {} is not valid: {}",
                path.display(),
                e.to_string().trim_end()
            )
        })?;
        macro_rules! merge {
            ($($field:ident),* $(,)?) => {$(
                if let Some(v) = file.$field
                    && !explicit.contains(stringify!($field))
                {
                    self.$field = v;
                }
            )*};
        }
        merge!(
            synchronous,
            max_connections,
            max_connections_per_uid,
            admin_reserve_connections,
            max_in_flight,
            max_frame_bytes,
            max_result_bytes,
            writer_queue,
            max_batch,
            max_txn_ms,
            readers,
            request_timeout_ms,
            max_request_timeout_ms,
            handshake_timeout_ms,
            write_stall_timeout_ms,
            frame_timeout_ms,
            idle_timeout_ms,
            drain_timeout_ms,
            idle_poll_us,
            log_level,
            max_read_ms,
            slow_statement_ms,
            txn_idle_timeout_ms,
            txn_max_ms,
            max_transactions,
            checkpoint_wal_bytes,
            litestream,
            litestream_max_wal_bytes,
            socket_mode,
        );
        macro_rules! merge_opt {
            ($($field:ident),* $(,)?) => {$(
                if file.$field.is_some() && !explicit.contains(stringify!($field)) {
                    self.$field = file.$field;
                }
            )*};
        }
        merge_opt!(db, socket, socket_group, metrics_listen, litestream_socket);
        self.access = file.access.unwrap_or_default();
        Ok(self)
    }

    /// Every setting in force, as (name, value), for `ctl status`.
    pub(crate) fn settings(&self) -> Vec<(String, String)> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        [
            (
                "synchronous",
                format!("{:?}", self.synchronous).to_lowercase(),
            ),
            ("max-connections", self.max_connections.to_string()),
            (
                "max-connections-per-uid",
                self.max_connections_per_uid.to_string(),
            ),
            (
                "admin-reserve-connections",
                self.admin_reserve_connections.to_string(),
            ),
            ("max-in-flight", self.max_in_flight.to_string()),
            ("max-frame-bytes", self.max_frame_bytes.to_string()),
            ("max-result-bytes", self.max_result_bytes.to_string()),
            ("writer-queue", self.writer_queue.to_string()),
            ("max-batch", self.max_batch.to_string()),
            ("max-txn-ms", self.max_txn_ms.to_string()),
            ("readers", self.readers.to_string()),
            ("request-timeout-ms", self.request_timeout_ms.to_string()),
            (
                "max-request-timeout-ms",
                self.max_request_timeout_ms.to_string(),
            ),
            (
                "handshake-timeout-ms",
                self.handshake_timeout_ms.to_string(),
            ),
            (
                "write-stall-timeout-ms",
                self.write_stall_timeout_ms.to_string(),
            ),
            ("frame-timeout-ms", self.frame_timeout_ms.to_string()),
            ("idle-timeout-ms", self.idle_timeout_ms.to_string()),
            ("drain-timeout-ms", self.drain_timeout_ms.to_string()),
            ("idle-poll-us", self.idle_poll_us.to_string()),
            ("log-level", self.log_level.clone()),
            ("max-read-ms", self.max_read_ms.to_string()),
            ("slow-statement-ms", self.slow_statement_ms.to_string()),
            ("txn-idle-timeout-ms", self.txn_idle_timeout_ms.to_string()),
            ("txn-max-ms", self.txn_max_ms.to_string()),
            ("max-transactions", self.max_transactions.to_string()),
            (
                "checkpoint-wal-bytes",
                self.checkpoint_wal_bytes.to_string(),
            ),
            ("litestream", self.litestream.to_string()),
            (
                "litestream-socket",
                self.litestream_socket
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
            ),
            (
                "litestream-max-wal-bytes",
                self.litestream_max_wal_bytes.to_string(),
            ),
            ("socket-mode", self.socket_mode.clone()),
            ("socket-group", opt(&self.socket_group)),
            ("metrics-listen", opt(&self.metrics_listen)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The socket's permission bits.
    pub(crate) fn socket_mode_bits(&self) -> anyhow::Result<u32> {
        let digits = self.socket_mode.trim_start_matches("0o");
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o777 => Ok(m),
            _ => bail!(
                "socket-mode {:?} is not octal permission bits; use e.g. 0660 (owner and group) \
                 or 0666 (everyone may connect; the access rules still apply)",
                self.socket_mode
            ),
        }
    }

    /// The loopback address for the metrics listener, if one is set.
    pub(crate) fn metrics_addr(&self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        let Some(raw) = &self.metrics_listen else {
            return Ok(None);
        };
        let addr: std::net::SocketAddr = raw.parse().map_err(|_| {
            anyhow::anyhow!("metrics-listen {raw:?} is not an address; use e.g. 127.0.0.1:9187")
        })?;
        if !addr.ip().is_loopback() {
            bail!(
                "metrics-listen {raw:?} is not a loopback address; the metrics listener has no \
                 authentication, so it only binds 127.0.0.1 or ::1"
            );
        }
        Ok(Some(addr))
    }

    pub(crate) fn db_path(&self) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(nexusd_protocol::paths::default_db_path)
    }

    pub(crate) fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(nexusd_protocol::paths::default_socket_path)
    }

    pub(crate) fn request_timeout(&self, asked_ms: u32) -> Duration {
        let ms = if asked_ms == 0 {
            self.request_timeout_ms
        } else {
            u64::from(asked_ms)
        };
        Duration::from_millis(ms.min(self.max_request_timeout_ms).max(1))
    }

    /// Rejects combinations that cannot work, with the flag to change.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        let frame = self.max_frame_bytes as usize;
        if frame < 1024 {
            anyhow::bail!("--max-frame-bytes {frame} is too small; use at least 1024");
        }
        if frame > nexusd_protocol::codec::MAX_FRAME_BYTES_LIMIT as usize {
            anyhow::bail!(
                "--max-frame-bytes {frame} is over the protocol's limit of {}",
                nexusd_protocol::codec::MAX_FRAME_BYTES_LIMIT
            );
        }
        if self.max_result_bytes + 64 * 1024 > frame {
            anyhow::bail!(
                "--max-result-bytes {} leaves no room under --max-frame-bytes {frame}; keep it at \
                 least 64 KiB smaller",
                self.max_result_bytes
            );
        }
        for (flag, v) in [
            ("--max-connections", self.max_connections),
            ("--writer-queue", self.writer_queue),
            ("--max-batch", self.max_batch),
            ("--readers", self.readers),
            ("--max-transactions", self.max_transactions),
            ("--max-in-flight", self.max_in_flight as usize),
        ] {
            if v == 0 {
                anyhow::bail!("{flag} 0 would serve nothing; use at least 1");
            }
        }
        for (flag, v) in [
            ("--txn-idle-timeout-ms", self.txn_idle_timeout_ms),
            ("--txn-max-ms", self.txn_max_ms),
        ] {
            if v == 0 {
                bail!("{flag} 0 would roll back every transaction at once; use at least 1");
            }
        }
        if self.idle_poll_us > MAX_IDLE_POLL_US {
            bail!(
                "--idle-poll-us {} would keep a core busy for that long after every request; use \
                 at most {MAX_IDLE_POLL_US} (tens of microseconds are what it is for), or 0 for \
                 none",
                self.idle_poll_us
            );
        }
        if self.max_read_ms == 0 {
            bail!("--max-read-ms 0 would interrupt every read; use at least 1");
        }
        if self.litestream_socket.is_some() && !self.litestream {
            bail!(
                "litestream-socket is set but Litestream mode is off; add --litestream (or \
                 `litestream = true` in the config file), or remove litestream-socket"
            );
        }
        if self.litestream && self.litestream_max_wal_bytes < 1024 * 1024 {
            bail!(
                "--litestream-max-wal-bytes {} is under 1 MiB: nexusd would checkpoint before \
                 Litestream does (at 1000 pages by default) and force a new snapshot each time; \
                 keep it above Litestream's truncate-page-n pages (the default is 1 GiB)",
                self.litestream_max_wal_bytes
            );
        }
        self.socket_mode_bits()?;
        self.metrics_addr()?;
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|_| {
            anyhow::anyhow!(
                "log-level {:?} is not valid; use error, warn, info, debug or trace",
                self.log_level
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: ServeConfig,
    }

    fn defaults(args: &[&str]) -> ServeConfig {
        Cli::parse_from(std::iter::once("nexusd").chain(args.iter().copied())).config
    }

    /// The example file documents every key with its default: uncommented,
    /// it must parse (unknown keys are errors) and change nothing.
    #[test]
    fn the_example_file_lists_every_key_with_its_default() {
        let example = include_str!("../../../systemd/nexusd.toml");
        let uncommented: String = example
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.starts_with("[access]")
                    || l.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nexusd.toml");
        std::fs::write(&path, &uncommented).expect("write");
        let base = defaults(&["--config", path.to_str().expect("utf-8")]);
        let loaded = base
            .clone()
            .with_file(&HashSet::new())
            .expect("the example parses");
        let keys_in_file = uncommented.lines().filter(|l| l.contains(" = ")).count();
        // Every setting, plus db, socket and the three [access] keys.
        assert_eq!(keys_in_file, base.settings().len() + 2 + 3, "{uncommented}");
        let mut expected = base.settings();
        for (k, v) in expected.iter_mut() {
            match k.as_str() {
                "socket-group" => *v = "nexusd".into(),
                "metrics-listen" => *v = "127.0.0.1:9187".into(),
                "litestream-socket" => *v = "/run/nexusd-litestream/litestream.sock".into(),
                _ => {}
            }
        }
        assert_eq!(loaded.settings(), expected);
        assert_eq!(loaded.access.write, Some(vec!["group:nexusd".to_owned()]));
    }

    #[test]
    fn flags_beat_the_file_and_bad_files_say_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "max-connections = 10\nreaders = 2\n").expect("write");
        let p = path.to_str().expect("utf-8");
        let base = defaults(&["--config", p, "--readers", "7"]);
        let explicit: HashSet<String> = ["readers".to_owned()].into();
        let c = base.with_file(&explicit).expect("parses");
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.readers, 7);

        std::fs::write(&path, "max-conections = 10\n").expect("write");
        let err = format!(
            "{:#}",
            defaults(&["--config", p])
                .with_file(&HashSet::new())
                .expect_err("a misspelled key is an error")
        );
        assert!(err.contains("c.toml is not valid"), "{err}");
        assert!(err.contains("max-conections"), "{err}");

        let err = format!(
            "{:#}",
            defaults(&["--config", "/nonexistent/nexusd.toml"])
                .with_file(&HashSet::new())
                .expect_err("a missing --config file is an error")
        );
        assert!(
            err.contains("could not read the config file /nonexistent/nexusd.toml"),
            "{err}"
        );

        let bad = defaults(&["--socket-mode", "999"]);
        let err = format!("{:#}", bad.validate().expect_err("not octal"));
        assert!(err.contains("socket-mode \"999\" is not octal"), "{err}");
        let bad = defaults(&["--idle-poll-us", "20000"]);
        let err = format!("{:#}", bad.validate().expect_err("too long"));
        assert!(err.contains("--idle-poll-us 20000"), "{err}");
        assert!(err.contains("at most 10000"), "{err}");
        assert!(defaults(&["--idle-poll-us", "0"]).validate().is_ok());
        let bad = defaults(&["--metrics-listen", "0.0.0.0:9187"]);
        let err = format!("{:#}", bad.validate().expect_err("not loopback"));
        assert!(err.contains("not a loopback address"), "{err}");
    }
}
