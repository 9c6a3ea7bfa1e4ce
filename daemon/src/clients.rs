//! The registry of connected clients, as `ctl clients` and `ctl stats`
//! show them: who they are (peer credentials and the name they gave) and
//! what they have asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nexusd_protocol::ClientInfo;

use crate::access::{Peer, Role};

/// One connected client.
pub(crate) struct ClientEntry {
    pub(crate) id: u64,
    pub(crate) peer: Peer,
    pub(crate) client_name: String,
    connected: Instant,
    in_flight: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
}

impl ClientEntry {
    /// A request of this client's has started.
    pub(crate) fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request of this client's has been answered, with an error or not.
    pub(crate) fn answered(&self, failed: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
pub(crate) struct Clients {
    by_id: Mutex<HashMap<u64, Arc<ClientEntry>>>,
    next_id: AtomicU64,
}

impl Clients {
    /// Adds a client that has completed its handshake.
    pub(crate) fn register(&self, peer: Peer, client_name: String) -> Arc<ClientEntry> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(ClientEntry {
            id,
            peer,
            client_name,
            connected: Instant::now(),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        if let Ok(mut clients) = self.by_id.lock() {
            clients.insert(id, entry.clone());
        }
        entry
    }

    pub(crate) fn unregister(&self, id: u64) {
        if let Ok(mut clients) = self.by_id.lock() {
            clients.remove(&id);
        }
    }

    /// Every connected client, by id, with the role `role_of` gives it now.
    pub(crate) fn list(&self, role_of: impl Fn(&Peer) -> Option<Role>) -> Vec<ClientInfo> {
        let clients: Vec<Arc<ClientEntry>> = match self.by_id.lock() {
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
                role: role_of(&c.peer).map_or("none".to_owned(), |r| r.name().to_owned()),
                in_flight: c.in_flight.load(Ordering::Relaxed),
                requests: c.requests.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                connected_ms: u64::try_from(c.connected.elapsed().as_millis()).unwrap_or(0),
            })
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }
}
