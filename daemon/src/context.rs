//! What every part of a running daemon shares, passed down from the
//! lifecycle to the server, each session, the dispatcher and the admin
//! commands. Fields tied together by an invariant are private behind
//! methods: the connection limit and its semaphore, the settings and the
//! side effects of reloading them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::access::{Peer, Role};
use crate::clients::Clients;
use crate::config::{Live, ServeConfig};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::replica::ReplicaWatch;
use crate::shutdown::Shutdown;
use crate::systemd::Notifier;

pub(crate) struct Context {
    config: Live,
    limit: ConnectionLimit,
    pub(crate) engine: Engine,
    pub(crate) metrics: Metrics,
    pub(crate) clients: Clients,
    pub(crate) shutdown: Shutdown,
    pub(crate) notifier: Arc<Notifier>,
    pub(crate) socket_path: PathBuf,
    /// Litestream mode: the replica as last seen.
    pub(crate) replica: Option<Arc<ReplicaWatch>>,
    started: Instant,
}

impl Context {
    pub(crate) fn new(
        config: Live,
        engine: Engine,
        shutdown: Shutdown,
        notifier: Arc<Notifier>,
        socket_path: PathBuf,
        replica: Option<Arc<ReplicaWatch>>,
    ) -> Context {
        let max = config.current().max_connections;
        Context {
            config,
            limit: ConnectionLimit::new(max),
            engine,
            metrics: Metrics::default(),
            clients: Clients::default(),
            shutdown,
            notifier,
            socket_path,
            replica,
            started: Instant::now(),
        }
    }

    /// The settings in force now.
    pub(crate) fn config(&self) -> Arc<ServeConfig> {
        self.config.current()
    }

    /// The peer's role under the access rules in force now.
    pub(crate) fn role_of(&self, peer: &Peer) -> Option<Role> {
        self.config.role_of(peer)
    }

    /// The access rules in force, in words.
    pub(crate) fn describe_access(&self) -> String {
        self.config.describe_access()
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub(crate) fn connections(&self) -> &ConnectionLimit {
        &self.limit
    }

    /// Re-reads the config file and applies what can change in place: the
    /// settings, the access rules, the log level, the connection limit and
    /// the readers' cap. Returns what changed, or why nothing did.
    pub(crate) fn reload(&self) -> Result<String, String> {
        match self.config.reload() {
            Ok(reloaded) => {
                self.limit.resize(reloaded.config.max_connections);
                self.engine
                    .readers
                    .set_max_read_ms(reloaded.config.max_read_ms);
                crate::engine::slowlog::set_threshold_ms(reloaded.config.slow_statement_ms);
                self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!("config reloaded: {}", reloaded.summary);
                Ok(reloaded.summary)
            }
            Err(e) => {
                self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!("{e}");
                Err(e)
            }
        }
    }
}

/// The connection limit: a semaphore whose permits are the open
/// connections, and the limit it was sized for.
pub(crate) struct ConnectionLimit {
    max: AtomicUsize,
    permits: Arc<Semaphore>,
    open: Arc<AtomicU64>,
    /// Open connections per uid.
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
}

/// One open connection's place under the limit; dropping it frees it.
pub(crate) struct ConnectionPermit {
    _permit: OwnedSemaphorePermit,
    open: Arc<AtomicU64>,
    uid: u32,
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut counts) = self.per_uid.lock()
            && let Some(n) = counts.get_mut(&self.uid)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

/// Who asks for a connection, as admission sees it.
pub(crate) struct Applicant {
    pub(crate) uid: u32,
    /// Root, or a uid with the admin role: not capped, and may use the
    /// admin reserve.
    pub(crate) privileged: bool,
}

/// Why a connection was not admitted; the message says what to do.
pub(crate) struct Refused(pub(crate) String);

impl ConnectionLimit {
    fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit {
            max: AtomicUsize::new(max),
            permits: Arc::new(Semaphore::new(max)),
            open: Arc::new(AtomicU64::new(0)),
            per_uid: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A place for one more connection from `who`, or why not: the limit is
    /// reached; or, for a client that is not privileged, only the admin
    /// reserve is left (`reserve` slots), or its uid holds `per_uid` already
    /// (0: no cap of its own).
    pub(crate) fn try_admit(
        &self,
        who: &Applicant,
        reserve: usize,
        per_uid: usize,
    ) -> Result<ConnectionPermit, Refused> {
        // One admission at a time (I/O threads admit in parallel): the
        // checks and the taking of the slot happen under this lock.
        let mut counts = self
            .per_uid
            .lock()
            .map_err(|_| Refused("the connection counts are poisoned by a panic".into()))?;
        let max = self.max();
        let open = usize::try_from(self.open()).unwrap_or(usize::MAX);
        let held = counts.get(&who.uid).copied().unwrap_or(0);
        if !who.privileged {
            let reserve = reserve.min(max);
            if open >= max - reserve {
                return Err(Refused(format!(
                    "nexusd is at its limit of {} client connections ({max} in all, the last \
                     {reserve} kept for root and admins: admin-reserve-connections); retry later, \
                     share one client per process (clones share a connection), or raise \
                     --max-connections",
                    max - reserve
                )));
            }
            if per_uid > 0 && held >= per_uid {
                return Err(Refused(format!(
                    "uid {} already holds {held} connections, its cap \
                     (max-connections-per-uid = {per_uid}); close some, share one client per \
                     process, or raise the cap",
                    who.uid
                )));
            }
        }
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            Refused(format!(
                "nexusd is at its limit of {max} connections; retry later, share one client per \
                 process (clones share a connection), or raise --max-connections"
            ))
        })?;
        self.open.fetch_add(1, Ordering::Relaxed);
        *counts.entry(who.uid).or_insert(0) += 1;
        drop(counts);
        Ok(ConnectionPermit {
            _permit: permit,
            open: self.open.clone(),
            uid: who.uid,
            per_uid: self.per_uid.clone(),
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// The limit in force.
    pub(crate) fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Sets a new limit. Open connections are never dropped: a lower limit
    /// takes the difference out of the semaphore as they close.
    fn resize(&self, new: usize) {
        let old = self.max.swap(new, Ordering::Relaxed);
        if new > old {
            self.permits.add_permits(new - old);
        } else if new < old {
            let permits = self.permits.clone();
            let n = u32::try_from(old - new).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(n).await {
                    p.forget();
                }
            });
        }
    }
}
