//! `nexusd serve` settings: every one has a default that suits a busy host,
//! so a newcomer needs no flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use nexusd_protocol::DEFAULT_MAX_FRAME_BYTES;

use crate::db::Synchronous;

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Database file; created if missing. Default: $NEXUSD_DB, else
    /// $XDG_DATA_HOME/nexusd/nexusd.db, else ./nexusd.db.
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,

    /// Unix socket to serve on. Default: $NEXUSD_SOCKET, else
    /// $XDG_RUNTIME_DIR/nexusd.sock, else /tmp/nexusd-<uid>.sock.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Durability of a commit: `full` survives power loss; `normal` survives
    /// a process crash but a power loss can drop the last commits.
    #[arg(long, value_enum, default_value = "full")]
    pub synchronous: Synchronous,

    /// Most client connections at once; more are refused with an error.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,

    /// Requests one connection may have outstanding; further frames wait
    /// unread until one is answered.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: u32,

    /// Largest frame accepted or sent, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: u32,

    /// Largest query result, in bytes (roughly: values plus 9 bytes each);
    /// a larger one fails with an error asking for LIMIT. Must leave room
    /// under --max-frame-bytes.
    #[arg(long, default_value_t = 15 * 1024 * 1024)]
    pub max_result_bytes: usize,

    /// Write requests queued for the writer; callers wait beyond that.
    #[arg(long, default_value_t = 8192)]
    pub writer_queue: usize,

    /// Most requests committed in one transaction.
    #[arg(long, default_value_t = 1024)]
    pub max_batch: usize,

    /// Longest a write transaction stays open, in milliseconds, before it is
    /// committed with the requests it holds so far.
    #[arg(long, default_value_t = 100)]
    pub max_txn_ms: u64,

    /// Read-only connections in the reader pool.
    #[arg(long, default_value_t = 4)]
    pub readers: usize,

    /// Time limit of a request that names none, in milliseconds: a request
    /// not started by then is answered "timed out, not applied", and a
    /// statement still running is interrupted and rolled back.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// Cap on the time limit a client may ask for, in milliseconds.
    #[arg(long, default_value_t = 300_000)]
    pub max_request_timeout_ms: u64,

    /// A connection that has not completed its handshake by then is closed.
    #[arg(long, default_value_t = 5_000)]
    pub handshake_timeout_ms: u64,

    /// A connection whose client reads none of its replies for this long is
    /// closed.
    #[arg(long, default_value_t = 30_000)]
    pub write_stall_timeout_ms: u64,

    /// How long a shutdown waits for queued requests to be answered.
    #[arg(long, default_value_t = 30_000)]
    pub drain_timeout_ms: u64,

    /// Log level when RUST_LOG is unset: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl ServeConfig {
    pub fn db_path(&self) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(nexusd_protocol::paths::default_db_path)
    }

    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(nexusd_protocol::paths::default_socket_path)
    }

    pub fn request_timeout(&self, asked_ms: u32) -> Duration {
        let ms = if asked_ms == 0 {
            self.request_timeout_ms
        } else {
            u64::from(asked_ms)
        };
        Duration::from_millis(ms.min(self.max_request_timeout_ms).max(1))
    }

    /// Rejects combinations that cannot work, with the flag to change.
    pub fn validate(&self) -> anyhow::Result<()> {
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
            ("--max-in-flight", self.max_in_flight as usize),
        ] {
            if v == 0 {
                anyhow::bail!("{flag} 0 would serve nothing; use at least 1");
            }
        }
        Ok(())
    }
}
