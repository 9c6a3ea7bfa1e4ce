//! The accept loop, the connection limit, and routing of requests to the
//! writer or the readers.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nexusd_protocol::{
    AdminRequest, ClientInfo, DEFAULT_DB, ErrorBody, ErrorKind, Request, RequestBody, ResponseBody,
    Stats, Status,
};
use rusqlite::{Connection, OpenFlags};
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use crate::access::{AccessRules, Peer, Role};
use crate::config::{RELOADABLE, ServeConfig};
use crate::connection;
use crate::db;
use crate::metrics::{self, Metrics};
use crate::readers::{ReadOutcome, ReaderPool};
use crate::systemd::Notifier;
use crate::writer::{WriteOp, WriterAdmin, WriterHandle};

/// Changes the log filter in place (a reload of `log-level`).
pub type LogReload = Box<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

/// What every connection task shares.
pub struct Shared {
    /// The settings in force; a reload swaps in a new one.
    config: ArcSwap<ServeConfig>,
    /// The command line as given, before the config file: a reload starts
    /// again from it.
    pub base: ServeConfig,
    /// Flags given on the command line; the file never overrides them.
    pub explicit: HashSet<String>,
    pub access: ArcSwap<AccessRules>,
    /// The socket file's group, which gets the write role by default.
    pub socket_gid: u32,
    pub db_path: PathBuf,
    pub socket_path: PathBuf,
    pub writer: WriterHandle,
    pub readers: ReaderPool,
    pub started: Instant,
    pub connections: AtomicU64,
    pub metrics: Metrics,
    pub clients: Mutex<HashMap<u64, Arc<ClientEntry>>>,
    pub next_client_id: AtomicU64,
    /// The connection limit in force, for resizing `conn_limit` on reload.
    pub max_connections: AtomicUsize,
    pub conn_limit: Arc<Semaphore>,
    /// Shared with the readers, so a reload changes the cap in place.
    pub max_read_ms: Arc<AtomicU64>,
    pub log_reload: LogReload,
    pub notifier: Arc<Notifier>,
    /// Set to true to start a graceful shutdown (signal or `ctl shutdown`).
    pub shutdown: watch::Sender<bool>,
}

/// One connected client, as `ctl clients` shows it.
pub struct ClientEntry {
    pub id: u64,
    pub peer: Peer,
    pub client_name: String,
    pub connected: Instant,
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

pub struct SharedParts {
    pub config: ServeConfig,
    pub base: ServeConfig,
    pub explicit: HashSet<String>,
    pub access: AccessRules,
    pub socket_gid: u32,
    pub db_path: PathBuf,
    pub socket_path: PathBuf,
    pub writer: WriterHandle,
    pub readers: ReaderPool,
    pub max_read_ms: Arc<AtomicU64>,
    pub log_reload: LogReload,
    pub notifier: Arc<Notifier>,
    pub shutdown: watch::Sender<bool>,
}

impl Shared {
    pub fn new(p: SharedParts) -> Shared {
        let max = p.config.max_connections;
        Shared {
            config: ArcSwap::from_pointee(p.config),
            base: p.base,
            explicit: p.explicit,
            access: ArcSwap::from_pointee(p.access),
            socket_gid: p.socket_gid,
            db_path: p.db_path,
            socket_path: p.socket_path,
            writer: p.writer,
            readers: p.readers,
            started: Instant::now(),
            connections: AtomicU64::new(0),
            metrics: Metrics::default(),
            clients: Mutex::new(HashMap::new()),
            next_client_id: AtomicU64::new(1),
            max_connections: AtomicUsize::new(max),
            conn_limit: Arc::new(Semaphore::new(max)),
            max_read_ms: p.max_read_ms,
            log_reload: p.log_reload,
            notifier: p.notifier,
            shutdown: p.shutdown,
        }
    }

    /// The settings in force now.
    pub fn config(&self) -> Arc<ServeConfig> {
        self.config.load_full()
    }

    pub fn role_of(&self, peer: &Peer) -> Option<Role> {
        self.access.load().role_of(peer)
    }

    pub fn register(&self, peer: Peer, client_name: String) -> Arc<ClientEntry> {
        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ClientEntry {
            id,
            peer,
            client_name,
            connected: Instant::now(),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(id, entry.clone());
        }
        entry
    }

    pub fn unregister(&self, id: u64) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.remove(&id);
        }
    }

    /// Serves one request; always produces an answer.
    pub async fn handle(&self, req: Request, who: &ClientEntry) -> ResponseBody {
        let kind = match &req.body {
            RequestBody::Execute(_) => 0,
            RequestBody::Query(_) => 1,
            RequestBody::Batch(_) => 2,
            RequestBody::Admin(_) => 3,
        };
        who.in_flight.fetch_add(1, Ordering::Relaxed);
        let body = self.route(req, who).await;
        who.in_flight.fetch_sub(1, Ordering::Relaxed);
        who.requests.fetch_add(1, Ordering::Relaxed);
        let outcome = metrics::outcome_index(&body);
        if outcome != 0 {
            who.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.count_request(kind, outcome);
        body
    }

    async fn route(&self, req: Request, who: &ClientEntry) -> ResponseBody {
        let arrived = Instant::now();
        if req.db != DEFAULT_DB {
            return ResponseBody::Error(ErrorBody::new(
                ErrorKind::Unsupported,
                format!(
                    "unknown database {:?}: this daemon serves only {DEFAULT_DB:?}",
                    req.db
                ),
            ));
        }
        let role = self.role_of(&who.peer);
        let needs = match &req.body {
            RequestBody::Execute(_) | RequestBody::Batch(_) => Role::Write,
            RequestBody::Query(_) | RequestBody::Admin(AdminRequest::Ping) => Role::Read,
            RequestBody::Admin(_) => Role::Admin,
        };
        if role < Some(needs) {
            return self.forbidden(who, role, needs, request_name(&req.body));
        }
        let deadline = arrived + self.config().request_timeout(req.timeout_ms);
        match req.body {
            RequestBody::Execute(st) => {
                self.writer
                    .submit(WriteOp::Execute(st), arrived, deadline)
                    .await
            }
            RequestBody::Query(st) => match self.readers.query(st, arrived, deadline).await {
                ReadOutcome::Done(body) => body,
                ReadOutcome::NeedsWriter(st) => {
                    if role < Some(Role::Write) {
                        return self.forbidden(who, role, Role::Write, "a query that writes");
                    }
                    self.writer
                        .submit(WriteOp::Query(st), arrived, deadline)
                        .await
                }
            },
            RequestBody::Batch(stmts) => {
                if stmts.is_empty() {
                    return ResponseBody::Batch(Vec::new());
                }
                self.writer
                    .submit(WriteOp::Batch(stmts), arrived, deadline)
                    .await
            }
            RequestBody::Admin(admin) => self.admin(admin, who).await,
        }
    }

    fn forbidden(
        &self,
        who: &ClientEntry,
        role: Option<Role>,
        needs: Role,
        what: &str,
    ) -> ResponseBody {
        let has = role.map_or("no".to_owned(), |r| format!("the {}", r.name()));
        let config = self
            .config()
            .config_path()
            .map_or("the config file".to_owned(), |p| p.display().to_string());
        tracing::warn!(uid = who.peer.uid, pid = ?who.peer.pid, needs = needs.name(), what, "request refused by the access rules");
        ResponseBody::Error(ErrorBody::new(
            ErrorKind::Forbidden,
            format!(
                "uid {} has {has} role on this nexusd; {what} needs the {} role. Not applied. An \
                 admin can grant it in the [access] table of {config} and run `nexusd ctl reload`",
                who.peer.uid,
                needs.name()
            ),
        ))
    }

    async fn admin(&self, admin: AdminRequest, who: &ClientEntry) -> ResponseBody {
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        match admin {
            AdminRequest::Ping => ResponseBody::Ok,
            AdminRequest::Status => ResponseBody::Status(Box::new(self.status())),
            AdminRequest::Shutdown => {
                tracing::info!(uid = who.peer.uid, pid = ?who.peer.pid, "shutdown requested by a client");
                self.notifier.notify(crate::shutdown::STOPPING);
                self.shutdown.send_replace(true);
                ResponseBody::Ok
            }
            AdminRequest::Stats => ResponseBody::Stats(Box::new(self.stats())),
            AdminRequest::Clients => ResponseBody::Clients(self.client_list()),
            AdminRequest::Metrics => ResponseBody::Text(self.metrics_text()),
            AdminRequest::Reload => match self.reload() {
                Ok(summary) => ResponseBody::Text(summary),
                Err(e) => ResponseBody::Error(ErrorBody::new(ErrorKind::Unsupported, e)),
            },
            AdminRequest::Checkpoint(mode) => {
                self.writer
                    .submit(
                        WriteOp::Admin(WriterAdmin::Checkpoint(mode)),
                        Instant::now(),
                        far,
                    )
                    .await
            }
            AdminRequest::Vacuum => {
                self.writer
                    .submit(WriteOp::Admin(WriterAdmin::Vacuum), Instant::now(), far)
                    .await
            }
            AdminRequest::Optimize => {
                self.writer
                    .submit(WriteOp::Admin(WriterAdmin::Optimize), Instant::now(), far)
                    .await
            }
            AdminRequest::IntegrityCheck { quick } => {
                let path = self.db_path.clone();
                blocking(move || integrity_check(&path, quick)).await
            }
            AdminRequest::Backup { dest } => {
                tracing::info!(dest, uid = who.peer.uid, "backup started");
                let path = self.db_path.clone();
                let body = blocking(move || backup(&path, Path::new(&dest))).await;
                if let ResponseBody::Error(e) = &body {
                    tracing::warn!(error = %e.message, "backup failed");
                }
                body
            }
        }
    }

    pub fn status(&self) -> Status {
        let stats = &self.writer.stats;
        let config = self.config();
        let mut settings = config.settings();
        settings.push(("access".to_owned(), self.access.load().describe()));
        Status {
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            sqlite_version: rusqlite::version().to_owned(),
            pid: std::process::id(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            db_path: self.db_path.display().to_string(),
            socket_path: self.socket_path.display().to_string(),
            journal_mode: "wal".to_owned(),
            synchronous: format!("{:?}", config.synchronous).to_lowercase(),
            connections: self.connections.load(Ordering::Relaxed),
            max_connections: config.max_connections as u64,
            readers: u32::try_from(config.readers).unwrap_or(u32::MAX),
            writes_committed: stats.writes_committed.load(Ordering::Relaxed),
            batches_committed: stats.batches_committed.load(Ordering::Relaxed),
            writer_queue_depth: self.writer.queue_depth() as u64,
            db_bytes: db::file_size(&self.db_path),
            wal_bytes: self.wal_bytes(),
            config_path: config.config_path().map(|p| p.display().to_string()),
            settings,
        }
    }

    pub fn wal_bytes(&self) -> u64 {
        let mut wal = self.db_path.clone().into_os_string();
        wal.push("-wal");
        db::file_size(Path::new(&wal))
    }

    fn client_list(&self) -> Vec<ClientInfo> {
        let clients: Vec<Arc<ClientEntry>> = match self.clients.lock() {
            Ok(c) => c.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let mut list: Vec<ClientInfo> = clients
            .iter()
            .map(|c| ClientInfo {
                id: c.id,
                pid: c.peer.pid,
                uid: c.peer.uid,
                gid: c.peer.gid,
                client_name: c.client_name.clone(),
                role: self
                    .role_of(&c.peer)
                    .map_or("none".to_owned(), |r| r.name().to_owned()),
                in_flight: c.in_flight.load(Ordering::Relaxed),
                requests: c.requests.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                connected_ms: u64::try_from(c.connected.elapsed().as_millis()).unwrap_or(0),
            })
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }

    fn stats(&self) -> Stats {
        let w = &self.writer.stats;
        Stats {
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            requests: self.metrics.requests(),
            batches_committed: w.batches_committed.load(Ordering::Relaxed),
            writes_committed: w.writes_committed.load(Ordering::Relaxed),
            batch_size_histogram: w
                .batch_size
                .buckets()
                .into_iter()
                .map(|(b, n)| (if b.is_finite() { b as u64 } else { u64::MAX }, n))
                .collect(),
            commit_p50_ms: w.commit_seconds.quantile(0.5) * 1000.0,
            commit_p99_ms: w.commit_seconds.quantile(0.99) * 1000.0,
            writer_queue_depth: self.writer.queue_depth() as u64,
            reader_queue_depth: self.readers.queue_depth() as u64,
            oldest_read_ms: u64::try_from(self.readers.oldest_read().as_millis()).unwrap_or(0),
            wal_bytes: self.wal_bytes(),
            checkpoints: w.checkpoints.load(Ordering::Relaxed),
            checkpoints_busy: w.checkpoints_busy.load(Ordering::Relaxed),
            clients: self.client_list(),
        }
    }

    pub fn metrics_text(&self) -> String {
        let config = self.config();
        metrics::render(&metrics::Snapshot {
            metrics: &self.metrics,
            writer: &self.writer.stats,
            uptime: self.started.elapsed(),
            connections: self.connections.load(Ordering::Relaxed),
            max_connections: config.max_connections as u64,
            writer_queue_depth: self.writer.queue_depth() as u64,
            reader_queue_depth: self.readers.queue_depth() as u64,
            oldest_read: self.readers.oldest_read(),
            wal_bytes: self.wal_bytes(),
            db_bytes: db::file_size(&self.db_path),
        })
    }

    /// Re-reads the config file and applies what can change in place. A
    /// file that does not parse or validate changes nothing. Returns what
    /// changed, or why nothing did.
    pub fn reload(&self) -> Result<String, String> {
        let result = self.try_reload();
        match &result {
            Ok(summary) => {
                self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!("config reloaded: {summary}");
            }
            Err(e) => {
                self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!("{e}");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<String, String> {
        let reject =
            |e: anyhow::Error| format!("config not reloaded; the old one stays in force: {e:#}");
        let new = self
            .base
            .clone()
            .with_file(&self.explicit)
            .map_err(reject)?;
        new.validate().map_err(reject)?;
        let access = AccessRules::resolve(&new.access, self.socket_gid).map_err(reject)?;
        let old = self.config();
        let mut changed = Vec::new();
        let mut needs_restart = Vec::new();
        for ((name, was), (_, now)) in old.settings().into_iter().zip(new.settings()) {
            if was == now {
                continue;
            }
            if RELOADABLE.contains(&name.replace('-', "_").as_str()) {
                changed.push(format!("{name} {was} -> {now}"));
            } else {
                needs_restart.push(format!("{name} (still {was}; the file says {now})"));
            }
        }
        if old.db_path() != new.db_path() || old.socket_path() != new.socket_path() {
            needs_restart.push("db or socket path".to_owned());
        }
        let old_rules = self.access.load_full();
        if *old_rules != access {
            changed.push(format!(
                "access {} -> {}",
                old_rules.describe(),
                access.describe()
            ));
        }
        if new.log_level != old.log_level {
            (self.log_reload)(&new.log_level).map_err(reject)?;
        }
        // Apply: reloadable settings from the new file, the rest as before.
        let mut merged = (*old).clone();
        merged.log_level = new.log_level.clone();
        merged.max_connections = new.max_connections;
        merged.max_in_flight = new.max_in_flight;
        merged.request_timeout_ms = new.request_timeout_ms;
        merged.max_request_timeout_ms = new.max_request_timeout_ms;
        merged.handshake_timeout_ms = new.handshake_timeout_ms;
        merged.write_stall_timeout_ms = new.write_stall_timeout_ms;
        merged.drain_timeout_ms = new.drain_timeout_ms;
        merged.max_read_ms = new.max_read_ms;
        merged.access = new.access.clone();
        self.resize_connection_limit(new.max_connections);
        self.max_read_ms.store(new.max_read_ms, Ordering::Relaxed);
        self.access.store(Arc::new(access));
        self.config.store(Arc::new(merged));
        let mut summary = if changed.is_empty() {
            "nothing reloadable changed".to_owned()
        } else {
            format!("changed: {}", changed.join("; "))
        };
        if !needs_restart.is_empty() {
            tracing::warn!(
                "config changes that need a restart: {}",
                needs_restart.join("; ")
            );
            summary.push_str(&format!(
                ". Needs a restart to take effect: {}",
                needs_restart.join("; ")
            ));
        }
        Ok(summary)
    }

    fn resize_connection_limit(&self, new: usize) {
        let old = self.max_connections.swap(new, Ordering::Relaxed);
        if new > old {
            self.conn_limit.add_permits(new - old);
        } else if new < old {
            // Permits in use come back to the semaphore later; take the
            // difference out as they do. Open connections are not dropped.
            let limit = self.conn_limit.clone();
            let n = u32::try_from(old - new).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(p) = limit.acquire_many_owned(n).await {
                    p.forget();
                }
            });
        }
    }
}

fn request_name(body: &RequestBody) -> &'static str {
    match body {
        RequestBody::Execute(_) => "execute",
        RequestBody::Query(_) => "a query",
        RequestBody::Batch(_) => "a batch",
        RequestBody::Admin(AdminRequest::Ping) => "ping",
        RequestBody::Admin(_) => "an admin command",
    }
}

async fn blocking(f: impl FnOnce() -> ResponseBody + Send + 'static) -> ResponseBody {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        ResponseBody::Error(ErrorBody::new(
            ErrorKind::Internal,
            format!("the maintenance task failed: {e}"),
        ))
    })
}

fn open_maintenance(db_path: &Path) -> Result<Connection, ErrorBody> {
    let conn = Connection::open_with_flags(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| db::internal_error("opening a read-only connection", &e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| db::internal_error("busy_timeout", &e))?;
    Ok(conn)
}

fn integrity_check(db_path: &Path, quick: bool) -> ResponseBody {
    let run = || -> Result<Vec<String>, ErrorBody> {
        let conn = open_maintenance(db_path)?;
        let sql = if quick {
            "PRAGMA quick_check"
        } else {
            "PRAGMA integrity_check"
        };
        let mut st = conn.prepare(sql).map_err(|e| db::internal_error(sql, &e))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| db::internal_error(sql, &e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| db::internal_error(sql, &e))
    };
    match run() {
        Ok(lines) => ResponseBody::Text(lines.join("\n")),
        Err(e) => ResponseBody::Error(e),
    }
}

/// The file a backup is written to before it is renamed into place; `ctl
/// backup` watches its size for the progress bar.
pub fn backup_partial_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map_or_else(|| "backup".into(), |n| n.to_string_lossy().into_owned());
    dest.with_file_name(format!(".{name}.partial"))
}

/// A consistent copy as of the moment it starts: `VACUUM INTO` runs in one
/// read transaction on its own read-only connection, so the writer keeps
/// committing meanwhile. Written beside the destination, synced, checked
/// with integrity_check, then renamed into place.
fn backup(db_path: &Path, dest: &Path) -> ResponseBody {
    let fail =
        |message: String| ResponseBody::Error(ErrorBody::new(ErrorKind::Unsupported, message));
    if !dest.is_absolute() {
        return fail(format!(
            "backup destination {} is not an absolute path; give the full path (the daemon \
             writes it, from its own working directory)",
            dest.display()
        ));
    }
    if dest.exists() {
        return fail(format!(
            "backup destination {} already exists; nexusd never overwrites a file: remove it or \
             choose another name",
            dest.display()
        ));
    }
    match dest.parent() {
        Some(dir) if dir.is_dir() => {}
        _ => {
            return fail(format!(
                "the directory of backup destination {} does not exist (or the daemon cannot \
                 see it: under systemd only its StateDirectory is writable); create it or choose \
                 another",
                dest.display()
            ));
        }
    }
    let partial = backup_partial_path(dest);
    let _ = std::fs::remove_file(&partial);
    let started = Instant::now();
    let run = || -> Result<u64, String> {
        let conn = open_maintenance(db_path).map_err(|e| e.message)?;
        let target = partial
            .to_str()
            .ok_or_else(|| format!("{} is not valid UTF-8", partial.display()))?;
        conn.execute("VACUUM INTO ?1", [target])
            .map_err(|e| format!("writing {} failed: {e}", partial.display()))?;
        drop(conn);
        let file = std::fs::File::open(&partial)
            .and_then(|f| f.sync_all().map(|()| f))
            .map_err(|e| format!("syncing {} failed: {e}", partial.display()))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let copy = Connection::open_with_flags(&partial, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("opening the copy failed: {e}"))?;
        let check: String = copy
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| format!("checking the copy failed: {e}"))?;
        drop(copy);
        if check != "ok" {
            return Err(format!("the copy failed integrity_check: {check}"));
        }
        std::fs::rename(&partial, dest)
            .map_err(|e| format!("renaming the copy to {} failed: {e}", dest.display()))?;
        if let Some(dir) = dest.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(bytes)
    };
    match run() {
        Ok(bytes) => ResponseBody::Text(format!(
            "backup written to {} ({bytes} bytes in {} ms); integrity_check ok; it holds every \
             commit up to the moment it started",
            dest.display(),
            started.elapsed().as_millis()
        )),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            fail(format!(
                "backup to {} failed, nothing was left there: {e}",
                dest.display()
            ))
        }
    }
}

/// Accepts connections until shutdown, then waits (up to the drain timeout)
/// for every connection to answer what it already read.
pub async fn run(listener: UnixListener, shared: Arc<Shared>) {
    let limit = shared.conn_limit.clone();
    let tracker = TaskTracker::new();
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                shared
                    .metrics
                    .connections_accepted
                    .fetch_add(1, Ordering::Relaxed);
                stream
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                tracker.spawn(async move {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    connection::serve(stream, shared.clone()).await;
                    shared.connections.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(_) => {
                shared
                    .metrics
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                let config = shared.config();
                let max = config.max_connections;
                tracing::warn!(max, "connection refused: at the connection limit");
                tracker.spawn(refuse(stream, max, config.max_frame_bytes));
            }
        }
    }
    drop(listener);
    tracing::info!(
        connections = shared.connections.load(Ordering::Relaxed),
        "no longer accepting; draining"
    );
    tracker.close();
    let drain_ms = shared.config().drain_timeout_ms;
    if tokio::time::timeout(Duration::from_millis(drain_ms), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_ms,
            "drain timed out; closing the remaining connections"
        );
    }
}

async fn refuse(mut stream: tokio::net::UnixStream, max: usize, max_frame: u32) {
    let refusal = ErrorBody::new(
        ErrorKind::Overloaded,
        format!(
            "nexusd is at its limit of {max} connections; retry later, share one client per \
             process (clones share a connection), or raise --max-connections"
        ),
    );
    connection::send_refusal(&mut stream, refusal, max_frame).await;
}
