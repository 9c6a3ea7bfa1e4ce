//! The daemon's life, start to stop, in the order that keeps data safe.
//!
//! Start: take the database lock, open the writer (which opens and
//! configures the file), open the readers, take the socket lock, bind.
//! Stop (SIGTERM, SIGINT or `ctl shutdown`): stop accepting; answer every
//! request already read; stop the writer, which commits what it holds and
//! checkpoints the WAL; remove the socket; exit 0.

use std::collections::HashSet;
use std::io::ErrorKind as IoErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nexusd_protocol::ResponseBody;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use tokio::sync::{mpsc, watch};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use crate::access::AccessRules;
use crate::config::ServeConfig;
use crate::lockfile::{LockFile, lock_path_for};
use crate::readers::ReaderPool;
use crate::server::{self, LogReload, Shared, SharedParts};
use crate::systemd::{self, Notifier};
use crate::writer::{WriteOp, WriterAdmin};
use crate::{db, metrics_http, writer};

/// `explicit` holds the ids of the flags given on the command line; the
/// config file fills in the rest.
pub fn serve(cli: ServeConfig, explicit: HashSet<String>) -> anyhow::Result<()> {
    // First, before any thread exists: claim a socket passed by systemd.
    let inherited = systemd::listener_from_env()?;
    let config = cli.clone().with_file(&explicit)?;
    let log_reload = init_logging(&config.log_level)?;
    config.validate()?;
    db::check_sqlite_version()?;
    raise_fd_limit();
    let notifier = Arc::new(Notifier::from_env()?);
    if let Some(path) = config.config_path() {
        tracing::info!(config = %path.display(), "config file read");
    }

    let db_path = config.db_path();
    create_parent_dir(&db_path, "database")?;
    let db_lock = LockFile::acquire(
        &lock_path_for(&db_path),
        &format!("database {}", db_path.display()),
    )?;

    let checkpoint_gate = Arc::new(AtomicBool::new(false));
    let (writer, writer_thread) = writer::spawn(writer::WriterConfig {
        path: db_path.clone(),
        synchronous: config.synchronous,
        queue_capacity: config.writer_queue,
        max_batch: config.max_batch,
        max_txn_time: Duration::from_millis(config.max_txn_ms),
        max_result_bytes: config.max_result_bytes,
        checkpoint_wal_bytes: config.checkpoint_wal_bytes,
        checkpoint_gate: checkpoint_gate.clone(),
    })?;
    let max_read_ms = Arc::new(AtomicU64::new(config.max_read_ms));
    let (readers, reader_threads) = ReaderPool::spawn(
        db_path.clone(),
        config.readers,
        config.writer_queue,
        config.max_result_bytes,
        max_read_ms.clone(),
        checkpoint_gate,
    )?;

    // The socket: passed by systemd (whose it stays: never unlinked), or
    // bound here, with its mode and group.
    let (std_listener, socket_path, socket_lock) = match inherited {
        Some(listener) => {
            let path = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_owned))
                .unwrap_or_else(|| config.socket_path());
            tracing::info!(socket = %path.display(), "serving on the socket passed by systemd (LISTEN_FDS)");
            (listener, path, None)
        }
        None => {
            let socket_path = config.socket_path();
            create_parent_dir(&socket_path, "socket")?;
            let lock = LockFile::acquire(
                &lock_path_for(&socket_path),
                &format!("socket {}", socket_path.display()),
            )?;
            let listener = bind(&socket_path)?;
            set_socket_owner(&socket_path, &config)?;
            (listener, socket_path, Some(lock))
        }
    };
    let socket_gid = std::fs::metadata(&socket_path).map_or_else(
        // SAFETY: getgid cannot fail.
        |_| unsafe { libc::getgid() },
        |m| m.gid(),
    );
    let access = AccessRules::resolve(&config.access, socket_gid)?;
    tracing::info!(rules = access.describe(), "access rules");
    let metrics_addr = config.metrics_addr()?;

    let (shutdown_tx, _) = watch::channel(false);
    let (reload_tx, mut reload_rx) = mpsc::channel::<()>(4);
    let (signals, signals_thread) =
        spawn_signal_thread(shutdown_tx.clone(), reload_tx, notifier.clone())?;

    let shared = Arc::new(Shared::new(SharedParts {
        config: config.clone(),
        base: cli,
        explicit,
        access,
        socket_gid,
        db_path: db_path.clone(),
        socket_path: socket_path.clone(),
        writer,
        readers,
        max_read_ms,
        log_reload,
        notifier: notifier.clone(),
        shutdown: shutdown_tx,
    }));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nexusd-io")
        .build()
        .context("could not start the async runtime")?;
    let owns_socket = socket_lock.is_some();
    runtime.block_on(async {
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        if let Some(addr) = metrics_addr {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("could not listen for metrics on {addr}"))?;
            tracing::info!(%addr, "serving Prometheus metrics over HTTP at /metrics");
            tokio::spawn(metrics_http::serve(tcp, shared.clone()));
        }
        {
            let shared = shared.clone();
            let notifier = notifier.clone();
            tokio::spawn(async move {
                while reload_rx.recv().await.is_some() {
                    notifier.notify("RELOADING=1");
                    let _ = shared.reload();
                    notifier.notify(&format!("READY=1\n{}", status_line(&shared)));
                }
            });
        }
        tokio::spawn(service_manager(shared.clone(), notifier.clone()));
        tracing::info!(
            db = %db_path.display(),
            socket = %socket_path.display(),
            sqlite = rusqlite::version(),
            synchronous = ?config.synchronous,
            pid = std::process::id(),
            "nexusd is ready"
        );
        // The database is open and the socket is listening: ready.
        notifier.notify(&format!("READY=1\n{}", status_line(&shared)));
        server::run(listener, shared.clone()).await;
        anyhow::Ok(())
    })?;
    // Every connection has finished (or the drain timed out): drop the
    // runtime so no task still holds a writer handle.
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(shared);
    notifier.notify("STATUS=closing the database");

    // The writer answers what it holds, checkpoints, and closes.
    if writer_thread.join().is_err() {
        tracing::error!("the writer thread panicked");
    }
    for t in reader_threads {
        let _ = t.join();
    }
    if owns_socket {
        match std::fs::remove_file(&socket_path) {
            Ok(()) => {}
            Err(e) if e.kind() == IoErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, socket = %socket_path.display(), "could not remove the socket")
            }
        }
    }
    drop(socket_lock);
    drop(db_lock);
    signals.close();
    let _ = signals_thread.join();
    tracing::info!("nexusd stopped cleanly");
    Ok(())
}

/// Sent as the drain begins (a signal or `ctl shutdown`).
pub const STOPPING: &str = "STOPPING=1\nSTATUS=draining: answering queued requests";

/// Creates the directory `path` lives in, if it has one.
fn create_parent_dir(path: &Path, what: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create the {what} directory {}", dir.display()))?;
    }
    Ok(())
}

fn status_line(shared: &Shared) -> String {
    let s = shared.status();
    format!(
        "STATUS=serving {} connections; {} writes in {} commits",
        s.connections, s.writes_committed, s.batches_committed
    )
}

/// Talks to systemd while the daemon runs: `WATCHDOG=1` only after the
/// writer has answered a no-op job (so a wedged writer stops the pings and
/// systemd restarts the daemon), and `STATUS=` lines.
async fn service_manager(shared: Arc<Shared>, notifier: Arc<Notifier>) {
    if !notifier.is_active() {
        return;
    }
    let watchdog = systemd::watchdog_interval();
    // Ping at a third of the period, so one slow answer does not miss it.
    let tick = watchdog.map_or(Duration::from_secs(5), |w| {
        (w / 3).max(Duration::from_millis(10))
    });
    let mut shutdown = shared.shutdown.subscribe();
    let mut ticker = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Some(period) = watchdog {
            let now = Instant::now();
            let answer = shared
                .writer
                .submit(WriteOp::Admin(WriterAdmin::Ping), now, now + period / 2)
                .await;
            if matches!(answer, ResponseBody::Ok) {
                notifier.notify(&format!("WATCHDOG=1\n{}", status_line(&shared)));
            } else {
                tracing::error!(
                    "the writer did not answer the watchdog's ping within {} ms; withholding \
                     WATCHDOG=1",
                    (period / 2).as_millis()
                );
            }
        } else {
            notifier.notify(&status_line(&shared));
        }
    }
}

/// Sets the socket file's mode and group from the config.
fn set_socket_owner(path: &Path, config: &ServeConfig) -> anyhow::Result<()> {
    let mode = config.socket_mode_bits()?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("could not set mode {mode:o} on {}", path.display()))?;
    if let Some(group) = &config.socket_group {
        let gid = match group.parse::<u32>() {
            Ok(g) => g,
            Err(_) => crate::access::group_gid(group)
                .with_context(|| format!("socket-group {group:?} is not a group on this host"))?,
        };
        std::os::unix::fs::chown(path, None, Some(gid)).with_context(|| {
            format!(
                "could not give {} to group {group}; the daemon must be root or a member of it",
                path.display()
            )
        })?;
    }
    Ok(())
}

/// Sets up logging to stderr; returns how to change the level later.
fn init_logging(level: &str) -> anyhow::Result<LogReload> {
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
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
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
/// once (the WAL keeps every acknowledged commit either way). SIGHUP asks
/// for a config reload.
fn spawn_signal_thread(
    shutdown: watch::Sender<bool>,
    reload: mpsc::Sender<()>,
    notifier: Arc<Notifier>,
) -> anyhow::Result<(Handle, std::thread::JoinHandle<()>)> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("could not install signal handlers")?;
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("nexusd-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = reload.try_send(());
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal = sig, "shutting down: draining queued requests");
                    notifier.notify(STOPPING);
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
