//! The daemon's life, start to stop, in the order that keeps data safe.
//!
//! Start: take the database lock, open the writer (which opens and
//! configures the file), open the readers, take the socket lock, bind.
//! Stop (SIGTERM, SIGINT or `ctl shutdown`): stop accepting; answer every
//! request already read; stop the writer, which commits what it holds and
//! checkpoints the WAL; remove the socket; exit 0.

use std::io::ErrorKind as IoErrorKind;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use anyhow::{Context, bail};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::config::ServeConfig;
use crate::lockfile::{LockFile, lock_path_for};
use crate::readers::ReaderPool;
use crate::server::{self, Shared};
use crate::{db, writer};

pub fn serve(config: ServeConfig) -> anyhow::Result<()> {
    init_logging(&config.log_level)?;
    config.validate()?;
    db::check_sqlite_version()?;
    raise_fd_limit();

    let db_path = config.db_path();
    if let Some(dir) = db_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("could not create the database directory {}", dir.display())
        })?;
    }
    let db_lock = LockFile::acquire(
        &lock_path_for(&db_path),
        &format!("database {}", db_path.display()),
    )?;

    let (writer, writer_thread) = writer::spawn(writer::WriterConfig {
        path: db_path.clone(),
        synchronous: config.synchronous,
        queue_capacity: config.writer_queue,
        max_batch: config.max_batch,
        max_txn_time: std::time::Duration::from_millis(config.max_txn_ms),
        max_result_bytes: config.max_result_bytes,
    })?;
    let (readers, reader_threads) = ReaderPool::spawn(
        db_path.clone(),
        config.readers,
        config.writer_queue,
        config.max_result_bytes,
    )?;

    let socket_path = config.socket_path();
    if let Some(dir) = socket_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create the socket directory {}", dir.display()))?;
    }
    let socket_lock = LockFile::acquire(
        &lock_path_for(&socket_path),
        &format!("socket {}", socket_path.display()),
    )?;
    let std_listener = bind(&socket_path)?;

    let (shutdown_tx, _) = watch::channel(false);
    let (signals, signals_thread) = spawn_signal_thread(shutdown_tx.clone())?;

    let shared = Arc::new(Shared {
        config: config.clone(),
        db_path: db_path.clone(),
        socket_path: socket_path.clone(),
        writer,
        readers,
        started: Instant::now(),
        connections: AtomicU64::new(0),
        shutdown: shutdown_tx,
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nexusd-io")
        .build()
        .context("could not start the async runtime")?;
    tracing::info!(
        db = %db_path.display(),
        socket = %socket_path.display(),
        sqlite = rusqlite::version(),
        synchronous = ?config.synchronous,
        pid = std::process::id(),
        "nexusd is ready"
    );
    runtime.block_on(async {
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        server::run(listener, shared.clone()).await;
        anyhow::Ok(())
    })?;
    // Every connection has finished (or the drain timed out): drop the
    // runtime so no task still holds a writer handle.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    drop(shared);

    // The writer answers what it holds, checkpoints, and closes.
    if writer_thread.join().is_err() {
        tracing::error!("the writer thread panicked");
    }
    for t in reader_threads {
        let _ = t.join();
    }
    match std::fs::remove_file(&socket_path) {
        Ok(()) => {}
        Err(e) if e.kind() == IoErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(error = %e, socket = %socket_path.display(), "could not remove the socket")
        }
    }
    drop(socket_lock);
    drop(db_lock);
    signals.close();
    let _ = signals_thread.join();
    tracing::info!("nexusd stopped cleanly");
    Ok(())
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v)
            .with_context(|| format!("RUST_LOG={v:?} is not a valid log filter"))?,
        _ => EnvFilter::try_new(level).with_context(|| {
            format!("--log-level {level:?} is not valid; use error, warn, info, debug or trace")
        })?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("could not set up logging: {e}"))
}

/// Binds the socket: a stale socket file (nobody accepting on it) is
/// replaced; a live daemon's socket is never taken.
fn bind(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    match std::os::unix::net::UnixListener::bind(path) {
        Ok(l) => return Ok(l),
        Err(e) if e.kind() == IoErrorKind::AddrInUse => {}
        Err(e) => {
            return Err(e).with_context(|| format!("could not bind socket {}", path.display()));
        }
    }
    match StdUnixStream::connect(path) {
        Ok(_) => bail!(
            "socket {} is held by a running daemon; stop it first, or give this one another \
             --socket",
            path.display()
        ),
        Err(e) if e.kind() == IoErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "replacing a stale socket left by a daemon that died");
            std::fs::remove_file(path)
                .with_context(|| format!("could not remove the stale socket {}", path.display()))?;
            std::os::unix::net::UnixListener::bind(path)
                .with_context(|| format!("could not bind socket {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "{} exists and is not a socket nexusd can replace; remove it or choose another \
                 --socket",
                path.display()
            )
        }),
    }
}

/// SIGTERM and SIGINT start the drain; a second one ends the process at
/// once (the WAL keeps every acknowledged commit either way).
fn spawn_signal_thread(
    shutdown: watch::Sender<bool>,
) -> anyhow::Result<(Handle, std::thread::JoinHandle<()>)> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).context("could not install signal handlers")?;
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("nexusd-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal = sig, "shutting down: draining queued requests");
                    shutdown.send_replace(true);
                } else {
                    tracing::warn!(signal = sig, "second signal: exiting without draining");
                    std::process::exit(1);
                }
            }
        })
        .context("could not start the signal thread")?;
    Ok((handle, thread))
}

/// A daemon with thousands of clients needs thousands of descriptors; the
/// soft limit is often 1024.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open-file limit");
            }
        }
    }
}
