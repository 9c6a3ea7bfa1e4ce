//! The daemon's life, start to stop, as phase functions in the order that
//! keeps data safe:
//!
//! 1. [`configure`]: claim a socket passed by systemd (before any thread
//!    exists), read the config, start logging, check SQLite.
//! 2. [`open`]: take the database lock, open the writer (which creates and
//!    configures the file), then the readers.
//! 3. [`bind`]: take the socket lock and bind (or adopt systemd's socket),
//!    resolve the access rules against the socket's group.
//! 4. [`run`]: serve until SIGTERM, SIGINT or `ctl shutdown`, then stop
//!    accepting and drain every session.
//! 5. [`close`]: join the writer (which commits what it holds and
//!    checkpoints the WAL), remove the socket, release the locks.

use std::collections::HashSet;
use std::io::ErrorKind as IoErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nexusd_protocol::ResponseBody;
use tokio::sync::mpsc;

use crate::access::AccessRules;
use crate::admin;
use crate::config::{Live, ServeConfig};
use crate::context::Context;
use crate::engine::{self, Engine, EngineThreads, Leases, WriterAdmin, WriterConfig};
use crate::io_threads::IoThreads;
use crate::lockfile::{LockFile, lock_path_for};
use crate::logging::{self, LogReload};
use crate::metrics_http;
use crate::replica::{self, ReplicaWatch};
use crate::server;
use crate::shutdown::{Shutdown, SignalThread};
use crate::systemd::{self, Notifier};

/// Runs the daemon in the foreground until it is told to stop.
/// `explicit` holds the ids of the flags given on the command line; the
/// config file fills in the rest.
pub fn serve(cli: ServeConfig, explicit: HashSet<String>) -> anyhow::Result<()> {
    let configured = configure(cli, explicit)?;
    let mut opened = open(&configured.config)?;
    let bound = bind(&configured.config, configured.inherited)?;
    if let Err(e) = opened.db_lock.record_socket(&bound.socket_path) {
        // Only `nexusd.connect("app.db")`-style lookups need it; clients
        // given the socket are unaffected.
        tracing::warn!(error = %e, "could not note the socket in the database's lock file");
    }
    let notifier = Arc::new(Notifier::from_env()?);
    let shutdown = Shutdown::new(notifier.clone());
    let replica = configured.config.litestream.then(|| {
        Arc::new(ReplicaWatch::new(
            configured.config.litestream_socket.clone(),
        ))
    });
    let live = Live::new(
        configured.base,
        configured.explicit,
        configured.config,
        bound.access,
        bound.socket_gid,
        configured.log_reload,
    );
    let ctx = Arc::new(Context::new(
        live,
        opened.engine,
        shutdown,
        notifier,
        bound.socket_path.clone(),
        replica,
    ));
    // Signals are handled until the very end, so a SIGTERM during the
    // final checkpoint is one more request to stop, not the default kill.
    let (reload_tx, reload_rx) = mpsc::channel::<()>(4);
    let signals = SignalThread::spawn(ctx.shutdown.clone(), reload_tx)?;
    let served = run(ctx, bound.listener, reload_rx);
    close(
        opened.threads,
        opened.db_lock,
        bound.socket_path,
        bound.socket_lock,
    );
    signals.stop();
    served
}

/// What `configure` settled.
struct Configured {
    /// The command line as given; a reload starts again from it.
    base: ServeConfig,
    explicit: HashSet<String>,
    /// The command line over the config file: the settings in force.
    config: ServeConfig,
    inherited: Option<StdUnixListener>,
    log_reload: LogReload,
}

fn configure(cli: ServeConfig, explicit: HashSet<String>) -> anyhow::Result<Configured> {
    // First, before any thread exists: claim a socket passed by systemd.
    let inherited = systemd::listener_from_env()?;
    let config = cli.clone().with_file(&explicit)?;
    let log_reload = logging::init(&config.log_level)?;
    config.validate()?;
    engine::check_sqlite_version()?;
    raise_fd_limit();
    if let Some(path) = config.config_path() {
        tracing::info!(config = %path.display(), "config file read");
    }
    Ok(Configured {
        base: cli,
        explicit,
        config,
        inherited,
        log_reload,
    })
}

struct Opened {
    engine: Engine,
    threads: EngineThreads,
    db_lock: LockFile,
}

fn open(config: &ServeConfig) -> anyhow::Result<Opened> {
    engine::slowlog::set_threshold_ms(config.slow_statement_ms);
    let db_path = config.db_path();
    create_parent_dir(&db_path, "database")?;
    let db_lock = LockFile::acquire(
        &lock_path_for(&db_path),
        &format!("database {}", db_path.display()),
    )?;
    let (engine, threads) = engine::open(
        WriterConfig {
            path: db_path,
            synchronous: config.synchronous,
            queue_capacity: config.writer_queue,
            max_batch: config.max_batch,
            max_txn_time: Duration::from_millis(config.max_txn_ms),
            max_result_bytes: config.max_result_bytes,
            checkpoint_wal_bytes: config.checkpoint_wal_bytes,
            litestream_max_wal_bytes: config.litestream.then_some(config.litestream_max_wal_bytes),
        },
        config.readers,
        config.max_read_ms,
    )?;
    Ok(Opened {
        engine,
        threads,
        db_lock,
    })
}

struct Bound {
    listener: StdUnixListener,
    socket_path: PathBuf,
    /// `None` when systemd passed the socket: it is systemd's, never
    /// unlinked.
    socket_lock: Option<LockFile>,
    socket_gid: u32,
    access: AccessRules,
}

fn bind(config: &ServeConfig, inherited: Option<StdUnixListener>) -> anyhow::Result<Bound> {
    let (listener, socket_path, socket_lock) = match inherited {
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
            let listener = bind_socket(&socket_path)?;
            set_socket_owner(&socket_path, config)?;
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
    Ok(Bound {
        listener,
        socket_path,
        socket_lock,
        socket_gid,
        access,
    })
}

/// Serves until the drain ends: the accept loop, the reload and systemd
/// side tasks, and the optional metrics listener, on one runtime that is
/// gone when this returns (so no task still holds a writer handle).
fn run(
    ctx: Arc<Context>,
    listener: StdUnixListener,
    reload_rx: mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    // Connections are served on I/O threads of their own; this runtime
    // accepts them and runs the daemon's side tasks.
    let io = IoThreads::start(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        Duration::from_micros(ctx.config().idle_poll_us),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let served = runtime.block_on(async {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let config = ctx.config();
        if let Some(addr) = config.metrics_addr()? {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("could not listen for metrics on {addr}"))?;
            tracing::info!(%addr, "serving Prometheus metrics over HTTP at /metrics");
            tokio::spawn(metrics_http::serve(tcp, ctx.clone()));
        }
        tokio::spawn(reloads(ctx.clone(), reload_rx));
        tokio::spawn(transaction_leases(ctx.clone()));
        tokio::spawn(service_manager(ctx.clone()));
        if let Some(watch) = ctx.replica.clone() {
            tokio::spawn(replica::watch(
                watch,
                ctx.engine.db_path().to_owned(),
                ctx.shutdown.subscribe(),
            ));
        }
        tracing::info!(
            db = %ctx.engine.db_path().display(),
            socket = %ctx.socket_path.display(),
            sqlite = rusqlite::version(),
            synchronous = ?config.synchronous,
            pid = std::process::id(),
            "nexusd is ready"
        );
        // The database is open and the socket is listening: ready.
        ctx.notifier.ready(&admin::status_line(&ctx));
        server::run(listener, ctx.clone(), &io).await;
        anyhow::Ok(())
    });
    io.stop();
    runtime.shutdown_timeout(Duration::from_secs(1));
    ctx.notifier.status("STATUS=closing the database");
    served
}

/// Stops the engine and lets go of the files, in that order: the socket
/// disappears only once nothing can be acknowledged on it any more.
fn close(
    threads: EngineThreads,
    db_lock: LockFile,
    socket_path: PathBuf,
    socket_lock: Option<LockFile>,
) {
    // The writer answers what it holds, checkpoints, and closes; every
    // handle went with the runtime and the context.
    threads.join();
    if socket_lock.is_some() {
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
    tracing::info!("nexusd stopped cleanly");
}

/// SIGHUP's reloads, one at a time, bracketed by RELOADING and READY.
async fn reloads(ctx: Arc<Context>, mut requests: mpsc::Receiver<()>) {
    while requests.recv().await.is_some() {
        ctx.notifier.reloading();
        let _ = ctx.reload();
        ctx.notifier.ready(&admin::status_line(&ctx));
    }
}

/// How often transaction leases are checked.
const LEASE_TICK: Duration = Duration::from_millis(50);

/// Rolls back interactive transactions past their lease, with the leases
/// in force now (a reload changes them).
async fn transaction_leases(ctx: Arc<Context>) {
    let mut shutdown = ctx.shutdown.subscribe();
    let mut ticker = tokio::time::interval(LEASE_TICK);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let config = ctx.config();
        ctx.engine.transactions.expire(Leases {
            idle: Duration::from_millis(config.txn_idle_timeout_ms),
            max: Duration::from_millis(config.txn_max_ms),
            max_read: Duration::from_millis(config.max_read_ms),
        });
    }
}

/// Talks to systemd while the daemon runs: `WATCHDOG=1` only after the
/// writer has answered a no-op job (so a wedged writer stops the pings and
/// systemd restarts the daemon), and `STATUS=` lines.
async fn service_manager(ctx: Arc<Context>) {
    if !ctx.notifier.is_active() {
        return;
    }
    let watchdog = systemd::watchdog_interval();
    // Ping at a third of the period, so one slow answer does not miss it.
    let tick = watchdog.map_or(Duration::from_secs(5), |w| {
        (w / 3).max(Duration::from_millis(10))
    });
    let mut shutdown = ctx.shutdown.subscribe();
    let mut ticker = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Some(period) = watchdog else {
            ctx.notifier.status(&admin::status_line(&ctx));
            continue;
        };
        // While it holds an interactive transaction the writer takes no
        // queued job (a ping would only pile up behind it), but it shows a
        // heartbeat. Otherwise it must answer a ping; the ping's deadline
        // bounds only its wait for queue room, so the wait for its answer
        // is bounded here.
        let holding = ctx
            .engine
            .writer
            .heartbeat_age()
            .is_some_and(|age| age < period / 2);
        let answered = holding
            || matches!(
                tokio::time::timeout(
                    period / 2,
                    ctx.engine
                        .writer
                        .maintain(WriterAdmin::Ping, Instant::now() + period / 2),
                )
                .await,
                Ok(ResponseBody::Ok)
            )
            || ctx
                .engine
                .writer
                .heartbeat_age()
                .is_some_and(|age| age < period / 2);
        if answered {
            ctx.notifier.watchdog(&admin::status_line(&ctx));
        } else {
            tracing::error!(
                "the writer did not answer the watchdog's ping within {} ms; withholding \
                 WATCHDOG=1",
                (period / 2).as_millis()
            );
        }
    }
}

/// Creates the directory `path` lives in, if it has one.
fn create_parent_dir(path: &Path, what: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create the {what} directory {}", dir.display()))?;
    }
    Ok(())
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

/// Binds the socket: a stale socket file (nobody accepting on it) is
/// replaced; a live daemon's socket is never taken.
fn bind_socket(path: &Path) -> anyhow::Result<StdUnixListener> {
    match StdUnixListener::bind(path) {
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
            StdUnixListener::bind(path)
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
