//! Interactive transactions: the registry of open ones, their leases, and
//! the snapshot phase that runs on a read-only connection of its own.
//!
//! A transaction is in one of three states:
//!
//! - **Snapshot**: a read-only transaction for its whole life, or a
//!   deferred one until its first write. Its own read-only connection holds
//!   one WAL snapshot, so every read sees the same database and no writer
//!   waits for it.
//! - **Writer**: an immediate transaction, or a deferred one after its first
//!   write. Its requests go to the writer thread on a channel of its own;
//!   the writer holds the transaction open between them (writer.rs).
//! - **Ended**: committed, rolled back, expired, ended by an operator,
//!   aborted by SQLite, or a deferred conflict. The end stays recorded until
//!   the client's next request on it, which gets the reason as its error.
//!
//! Ending a transaction drops its connection (snapshot) or its channel
//! (writer); the writer sees the channel close and rolls back at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexusd_protocol::{
    ErrorBody, ErrorKind, ResponseBody, Statement, StatementResult, TxnInfo, TxnMode, TxnOp,
};
use rusqlite::Connection;

use super::db::{self, Synchronous, epoch};
use super::guard::{Guard, Scope};
use super::parts::{PART_BYTES, Parts};
use super::readers::INLINE_BUDGET;
use super::statement::{self, ReadOnly, StatementLimits, Want};
use super::writer::WriterStats;

/// Requests one transaction may have queued for the writer.
const TXN_CHANNEL: usize = 64;

/// Who sent a request or opened a transaction: a connected client, as
/// `ctl clients` lists it. Only the connection that opened a transaction
/// may use it, and the slow-statement log names the client of each entry.
#[derive(Debug)]
pub(crate) struct Owner {
    pub(crate) client_id: u64,
    pub(crate) client_name: String,
    pub(crate) pid: Option<u32>,
    /// The rowid of the last row this client's statements inserted, 0
    /// before any: what `last_insert_rowid()` answers in its SQL.
    pub(crate) last_rowid: AtomicI64,
    /// The rows this client's last INSERT, UPDATE or DELETE changed:
    /// what `changes()` answers in its SQL.
    pub(crate) changes: AtomicU64,
    /// The rows this client's statements changed since it connected,
    /// triggers' and foreign keys' changes included: what
    /// `total_changes()` answers in its SQL.
    pub(crate) total_changes: AtomicU64,
}

impl Owner {
    pub(crate) const fn new(client_id: u64, client_name: String, pid: Option<u32>) -> Self {
        Owner {
            client_id,
            client_name,
            pid,
            last_rowid: AtomicI64::new(0),
            changes: AtomicU64::new(0),
            total_changes: AtomicU64::new(0),
        }
    }
}

/// One request inside a transaction on the writer.
pub(crate) struct TxnMsg {
    pub(crate) op: TxnOp,
    /// Where a query's result goes ahead in parts, if its client takes them.
    pub(crate) parts: Option<Parts>,
    pub(crate) arrived: Instant,
    pub(crate) deadline: Instant,
    pub(crate) reply: super::relay::Reply,
}

/// Counters for the metrics.
#[derive(Default)]
pub(crate) struct TxnStats {
    pub(crate) commits: AtomicU64,
    pub(crate) rollbacks: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) aborted: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) by_operator: AtomicU64,
    /// Read-only connections opened for snapshot transactions (an idle
    /// one is reused when there is one).
    pub(crate) connections_opened: AtomicU64,
}

/// Why a transaction is over.
#[derive(Debug, Clone)]
pub(crate) enum End {
    Committed,
    RolledBack,
    Expired {
        idle: bool,
        ms: u64,
    },
    ByOperator,
    /// SQLite rolled it back (an interrupt, a constraint with ON CONFLICT
    /// ROLLBACK, an I/O error), or its COMMIT failed.
    Aborted(String),
    Conflict,
    /// Its first write waited for the writer past its deadline.
    NotStarted,
    /// Its connection closed; nobody is left to ask why.
    ConnectionClosed,
}

impl End {
    /// The counter of `nexusd_transactions_total{end}` this end adds to.
    fn counter<'s>(&self, stats: &'s TxnStats) -> &'s AtomicU64 {
        match self {
            End::Committed => &stats.commits,
            End::RolledBack => &stats.rollbacks,
            End::Expired { .. } | End::NotStarted => &stats.expired,
            End::ByOperator => &stats.by_operator,
            End::Aborted(_) => &stats.aborted,
            End::Conflict => &stats.conflicts,
            End::ConnectionClosed => &stats.closed,
        }
    }
}

impl End {
    /// The error for a request on a transaction that ended this way.
    pub(crate) fn error(&self, id: u64) -> ErrorBody {
        match self {
            End::Committed | End::RolledBack | End::ConnectionClosed => ErrorBody::new(
                ErrorKind::InvalidArgument,
                format!(
                    "transaction {id} has already {}; begin a new one",
                    if matches!(self, End::Committed) {
                        "committed"
                    } else {
                        "rolled back"
                    }
                ),
            ),
            End::Expired { idle: true, ms } => ErrorBody::new(
                ErrorKind::TransactionExpired,
                format!(
                    "transaction {id} was rolled back after it sent nothing for {ms} ms \
                     (txn-idle-timeout-ms), so that it could not hold other clients up; \
                     nothing in it was applied. Run it again, with less time between its \
                     statements"
                ),
            ),
            End::Expired { idle: false, ms } => ErrorBody::new(
                ErrorKind::TransactionExpired,
                format!(
                    "transaction {id} was rolled back after it had been open {ms} ms \
                     (txn-max-ms, or max-read-ms for a read-only one); nothing in it was \
                     applied. Run it again shorter, or split it"
                ),
            ),
            End::ByOperator => ErrorBody::new(
                ErrorKind::TransactionExpired,
                format!(
                    "transaction {id} was rolled back by an operator (`nexusd ctl rollback`); \
                     nothing in it was applied"
                ),
            ),
            End::Aborted(why) => ErrorBody::new(
                ErrorKind::TransactionExpired,
                format!(
                    "transaction {id} was rolled back by SQLite ({why}); nothing in it was \
                     applied. Run it again"
                ),
            ),
            End::Conflict => conflict(id),
            End::NotStarted => ErrorBody::new(
                ErrorKind::TransactionExpired,
                format!(
                    "transaction {id} was rolled back: its first write waited for the writer \
                     past its deadline; nothing in it was applied. Retry it later"
                ),
            ),
        }
    }
}

/// The error for a deferred transaction whose first write came after
/// another commit.
pub(crate) fn conflict(id: u64) -> ErrorBody {
    ErrorBody::new(
        ErrorKind::Conflict,
        format!(
            "transaction {id} conflicts: another write committed after its first read, so its \
             reads may be stale and its first write was refused; nothing in it was applied. \
             To go on, retry the whole transaction, or begin it immediate (Client::transaction(), BEGIN \
             IMMEDIATE) so that it holds the writer from the start"
        ),
    )
}

enum State {
    Snapshot(Arc<Mutex<Snapshot>>),
    Writer(flume::Sender<TxnMsg>),
    Ended(End),
}

/// A transaction's own read-only connection, holding one snapshot.
/// Dropped, it ends the read and goes back to the idle ones.
pub(crate) struct Snapshot {
    /// `None` only once dropped.
    conn: Option<Connection>,
    guard: Guard,
    /// The writer's commit count before the snapshot began, set by the
    /// first statement that ran (SQLite takes the snapshot at the first
    /// read, not at BEGIN): a deferred transaction may move to the writer
    /// only while the count is unchanged. `None` while nothing was read,
    /// so a transaction whose first statement writes never conflicts.
    seq: Option<u64>,
    idle: Arc<Idle>,
}

/// Read-only connections of ended snapshots, each out of any transaction,
/// kept for the next: opening one, loading the schema into it and
/// preparing its statements costs many times a transaction's reads.
#[derive(Default)]
struct Idle(Mutex<Vec<(Connection, Guard)>>);

/// The most idle snapshot connections kept; more are closed.
const IDLE_SNAPSHOTS: usize = 8;

impl Idle {
    fn take(&self) -> Option<(Connection, Guard)> {
        self.0.lock().ok()?.pop()
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // Ended, it holds no snapshot back from a checkpoint. One SQLite
        // could not end is closed instead.
        if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            return;
        }
        if let Ok(mut idle) = self.idle.0.lock()
            && idle.len() < IDLE_SNAPSHOTS
        {
            idle.push((conn, self.guard.clone()));
        }
    }
}

/// One interactive transaction.
pub(crate) struct Txn {
    pub(crate) id: u64,
    pub(crate) owner: Arc<Owner>,
    pub(crate) mode: TxnMode,
    started: Instant,
    /// Nanoseconds since `epoch()` of its last request (or of when the
    /// writer took it up).
    last_active: AtomicU64,
    /// Requests running now; a transaction is not idle while one runs.
    in_flight: AtomicU64,
    statements: AtomicU64,
    /// True once the writer holds it (immediate, or moved over).
    holding_writer: AtomicBool,
    state: Mutex<State>,
    /// Where its end is counted, whoever ends it.
    stats: Arc<TxnStats>,
}

impl Txn {
    fn touch(&self) {
        self.last_active
            .store(epoch().elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// The writer has begun it: its lease counts from now.
    pub(crate) fn writer_took_it(&self) {
        self.holding_writer.store(true, Ordering::Relaxed);
        self.touch();
    }

    /// Ends it, unless it already ended, and counts how. Dropping its
    /// connection or its channel rolls back whatever it holds.
    pub(crate) fn end(&self, end: End) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        if matches!(*state, State::Ended(_)) {
            return false;
        }
        end.counter(&self.stats).fetch_add(1, Ordering::Relaxed);
        *state = State::Ended(end);
        true
    }

    /// Why it ended, if it has.
    pub(crate) fn end_error(&self) -> Option<ErrorBody> {
        self.ended().map(|end| end.error(self.id))
    }

    fn ended(&self) -> Option<End> {
        match &*self.state.lock().ok()? {
            State::Ended(end) => Some(end.clone()),
            _ => None,
        }
    }

    fn info(&self) -> TxnInfo {
        let state = match self.state.lock().as_deref() {
            Ok(State::Snapshot(_)) => "snapshot",
            Ok(State::Writer(_)) if self.holding_writer.load(Ordering::Relaxed) => {
                "holding the writer"
            }
            Ok(State::Writer(_)) => "waiting for the writer",
            Ok(State::Ended(_)) | Err(_) => "ended",
        };
        let now = epoch().elapsed().as_nanos() as u64;
        TxnInfo {
            id: self.id,
            client_id: self.owner.client_id,
            client_name: self.owner.client_name.clone(),
            pid: self.owner.pid,
            mode: self.mode,
            state: state.to_owned(),
            age_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            idle_ms: now.saturating_sub(self.last_active.load(Ordering::Relaxed)) / 1_000_000,
            statements: self.statements.load(Ordering::Relaxed),
        }
    }
}

/// How a request on a transaction is to be served.
pub(crate) enum Route {
    /// Answered already.
    Done(ResponseBody),
    /// Send it to the writer on this channel.
    Writer(flume::Sender<TxnMsg>, TxnOp),
    /// Serve it on the transaction's snapshot (blocking: off the async
    /// threads, with `serve_snapshot`).
    Snapshot(TxnOp),
    /// A deferred transaction's first write: move it to the writer, which
    /// checks that nothing committed since `seq`.
    MoveToWriter {
        txn: Arc<Txn>,
        rx: flume::Receiver<TxnMsg>,
        seq: Option<u64>,
        op: TxnOp,
    },
}

/// Every open transaction, by id.
pub(crate) struct Transactions {
    /// The writer's counters: its commit count dates a snapshot.
    writer: Arc<WriterStats>,
    open: Mutex<HashMap<u64, Arc<Txn>>>,
    next_id: AtomicU64,
    pub(crate) stats: Arc<TxnStats>,
    db_path: PathBuf,
    /// The daemon's durability, for the guard of a snapshot's connection.
    synchronous: Synchronous,
    max_result_bytes: usize,
    idle: Arc<Idle>,
}

/// The leases in force (reloadable).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Leases {
    pub(crate) idle: Duration,
    pub(crate) max: Duration,
    /// The cap on a read-only transaction (max-read-ms), which keeps the
    /// WAL checkpointable.
    pub(crate) max_read: Duration,
}

impl Transactions {
    pub(crate) fn new(
        db_path: PathBuf,
        synchronous: Synchronous,
        max_result_bytes: usize,
        writer: Arc<WriterStats>,
    ) -> Transactions {
        Transactions {
            writer,
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stats: Arc::default(),
            db_path,
            synchronous,
            max_result_bytes,
            idle: Arc::default(),
        }
    }

    /// Transactions registered and not yet ended.
    pub(crate) fn open_count(&self) -> usize {
        self.all().iter().filter(|t| t.ended().is_none()).count()
    }

    fn all(&self) -> Vec<Arc<Txn>> {
        self.open
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every transaction not yet ended, by id.
    pub(crate) fn list(&self) -> Vec<TxnInfo> {
        let mut list: Vec<TxnInfo> = self
            .all()
            .iter()
            .filter(|t| t.ended().is_none())
            .map(|t| t.info())
            .collect();
        list.sort_by_key(|t| t.id);
        list
    }

    fn register(&self, owner: Arc<Owner>, mode: TxnMode, state: State) -> Arc<Txn> {
        let txn = Arc::new(Txn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            owner,
            mode,
            started: Instant::now(),
            last_active: AtomicU64::new(epoch().elapsed().as_nanos() as u64),
            in_flight: AtomicU64::new(0),
            statements: AtomicU64::new(0),
            holding_writer: AtomicBool::new(false),
            state: Mutex::new(state),
            stats: self.stats.clone(),
        });
        if let Ok(mut open) = self.open.lock() {
            open.insert(txn.id, txn.clone());
        }
        txn
    }

    /// Registers an immediate transaction; the writer takes it up from the
    /// returned channel.
    pub(crate) fn register_immediate(
        &self,
        owner: Arc<Owner>,
    ) -> (Arc<Txn>, flume::Receiver<TxnMsg>) {
        let (tx, rx) = flume::bounded(TXN_CHANNEL);
        (
            self.register(owner, TxnMode::Immediate, State::Writer(tx)),
            rx,
        )
    }

    /// Opens a read-only or deferred transaction on a read-only connection
    /// of its own, an idle one if there is one; its snapshot begins at its
    /// first read. Blocking when it must open a connection.
    pub(crate) fn begin_snapshot(
        &self,
        owner: Arc<Owner>,
        mode: TxnMode,
    ) -> Result<Arc<Txn>, ErrorBody> {
        let (conn, guard) = match self.idle.take() {
            Some(idle) => idle,
            None => {
                let opened = db::open_reader(&self.db_path, self.synchronous).map_err(|e| {
                    ErrorBody::new(
                        ErrorKind::Io,
                        format!(
                            "could not open a read-only connection for the transaction: {e:#}; \
                             nothing was begun"
                        ),
                    )
                })?;
                self.stats
                    .connections_opened
                    .fetch_add(1, Ordering::Relaxed);
                opened
            }
        };
        self.begin_on(owner, mode, conn, guard)
    }

    /// Opens a read-only or deferred transaction on an idle connection,
    /// which takes no I/O; `None` when none is idle (`begin_snapshot`
    /// then opens one, off the async threads).
    pub(crate) fn begin_snapshot_idle(
        &self,
        owner: &Arc<Owner>,
        mode: TxnMode,
    ) -> Option<Result<Arc<Txn>, ErrorBody>> {
        let (conn, guard) = self.idle.take()?;
        Some(self.begin_on(owner.clone(), mode, conn, guard))
    }

    fn begin_on(
        &self,
        owner: Arc<Owner>,
        mode: TxnMode,
        conn: Connection,
        guard: Guard,
    ) -> Result<Arc<Txn>, ErrorBody> {
        // The WAL snapshot is taken at the first read, and from then on
        // every read in the transaction sees it. BEGIN DEFERRED itself
        // takes no lock and reads nothing.
        conn.execute_batch("BEGIN DEFERRED")
            .map_err(|e| statement::own_statement_error("BEGIN (snapshot)", &e))?;
        let snapshot = Snapshot {
            conn: Some(conn),
            guard,
            seq: None,
            idle: self.idle.clone(),
        };
        Ok(self.register(owner, mode, State::Snapshot(Arc::new(Mutex::new(snapshot)))))
    }

    /// The transaction `id`, if `client_id` opened it. A transaction that
    /// ended is reported once, then forgotten.
    fn lookup(&self, id: u64, client_id: u64) -> Result<Arc<Txn>, ErrorBody> {
        let txn = self.open.lock().ok().and_then(|m| m.get(&id).cloned());
        let Some(txn) = txn.filter(|t| t.owner.client_id == client_id) else {
            return Err(ErrorBody::new(
                ErrorKind::InvalidArgument,
                format!(
                    "no transaction {id} is open on this connection: it was never begun here, or \
                     it ended and its end was already reported; begin a new one"
                ),
            ));
        };
        if let Some(end) = txn.ended() {
            self.forget(id);
            return Err(end.error(id));
        }
        Ok(txn)
    }

    /// The mode of open transaction `id`.
    pub(crate) fn mode_of(&self, id: u64) -> Option<TxnMode> {
        self.open.lock().ok()?.get(&id).map(|t| t.mode)
    }

    /// Drops the transaction from the registry.
    pub(crate) fn forget(&self, id: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&id);
        }
    }

    /// Where a request on transaction `id` goes. Cheap: no SQLite.
    pub(crate) fn route(&self, id: u64, client_id: u64, op: TxnOp) -> Route {
        let txn = match self.lookup(id, client_id) {
            Ok(t) => t,
            Err(e) => return Route::Done(ResponseBody::Error(e)),
        };
        txn.touch();
        txn.statements.fetch_add(1, Ordering::Relaxed);
        match txn.state.lock().as_deref() {
            Ok(State::Writer(tx)) => Route::Writer(tx.clone(), op),
            Ok(State::Snapshot(_)) => Route::Snapshot(op),
            Ok(State::Ended(end)) => Route::Done(ResponseBody::Error(end.error(id))),
            Err(_) => Route::Done(poisoned()),
        }
    }

    /// Serves a query or statement of a transaction in its snapshot phase
    /// here, on the calling (async) thread, as a read in place is served:
    /// only if its snapshot is free now, and for at most `INLINE_BUDGET`,
    /// never waiting on a lock. Saves a transaction's read the hop to a
    /// blocking thread and back. `Err(Route::Snapshot(op))` hands the
    /// request back, unchanged in effect, for `in_transaction` (the
    /// snapshot was busy, the result goes in parts, or the read ran out of
    /// the budget: it changed nothing, so it runs again whole there, on
    /// the same snapshot). `Err(Route::Writer)`: the transaction holds the
    /// writer, so the request goes there; `Err(Route::MoveToWriter)`: the
    /// statement writes, and the transaction is moving to the writer; both
    /// for `Engine::to_the_writer`.
    pub(crate) fn in_place(
        &self,
        id: u64,
        client_id: u64,
        op: TxnOp,
        takes_parts: bool,
        arrived: Instant,
        deadline: Instant,
    ) -> Result<ResponseBody, Route> {
        let (want, st) = match &op {
            TxnOp::Query(st) => (Want::Rows, st),
            TxnOp::Execute(st) => (Want::Changes, st),
            _ => return Err(Route::Snapshot(op)),
        };
        // Whatever is wrong with the transaction (unknown, another
        // client's, ended), the usual way says so, once: this look forgets
        // nothing.
        let txn = self.open.lock().ok().and_then(|m| m.get(&id).cloned());
        let Some(txn) = txn.filter(|t| t.owner.client_id == client_id) else {
            return Err(Route::Snapshot(op));
        };
        let state = match txn.state.lock().as_deref() {
            Ok(State::Snapshot(snap)) => snap.clone(),
            // Already on the writer: straight there, looked up once.
            Ok(State::Writer(tx)) => {
                txn.touch();
                txn.statements.fetch_add(1, Ordering::Relaxed);
                return Err(Route::Writer(tx.clone(), op));
            }
            _ => return Err(Route::Snapshot(op)),
        };
        let Ok(mut snapshot) = state.try_lock() else {
            return Err(Route::Snapshot(op));
        };
        let budget = Instant::now() + INLINE_BUDGET;
        let mut limits =
            StatementLimits::for_request(arrived, deadline, self.max_result_bytes, &txn.owner);
        if budget < deadline {
            limits.deadline = budget;
        }
        if takes_parts {
            limits.max_result_bytes = limits.max_result_bytes.min(PART_BYTES);
        }
        // A lock (a WAL being restarted) fails at once here instead of
        // stalling every connection on this thread; the usual way waits.
        if let Some(conn) = &snapshot.conn {
            let _ = conn.busy_timeout(Duration::ZERO);
        }
        let ran = self.run_read(&txn, &mut snapshot, st, want, &limits);
        if let Some(conn) = &snapshot.conn {
            let _ = conn.busy_timeout(db::BUSY_TIMEOUT);
        }
        match ran {
            Ok(Some(answer)) => {
                txn.touch();
                txn.statements.fetch_add(1, Ordering::Relaxed);
                Ok(answer)
            }
            // It writes: the transaction moves to the writer with it.
            Ok(None) => {
                txn.touch();
                txn.statements.fetch_add(1, Ordering::Relaxed);
                let seq = snapshot.seq;
                drop(snapshot);
                Err(self.move_to_writer(txn, seq, op))
            }
            Err(e)
                if (e.kind == ErrorKind::Timeout && budget < deadline)
                    || (e.kind == ErrorKind::TooLarge && takes_parts)
                    || e.code == rusqlite::ffi::SQLITE_BUSY =>
            {
                Err(Route::Snapshot(op))
            }
            Err(e) => {
                txn.touch();
                txn.statements.fetch_add(1, Ordering::Relaxed);
                Ok(ResponseBody::Error(e))
            }
        }
    }

    /// Serves a request on a transaction in its snapshot phase. Blocking:
    /// run it off the async threads. It may find that the request writes,
    /// and move the transaction to the writer.
    pub(crate) fn serve_snapshot(
        &self,
        id: u64,
        client_id: u64,
        op: TxnOp,
        parts: Option<&Parts>,
        arrived: Instant,
        deadline: Instant,
    ) -> Route {
        let txn = match self.lookup(id, client_id) {
            Ok(t) => t,
            Err(e) => return Route::Done(ResponseBody::Error(e)),
        };
        let state = match txn.state.lock().as_deref() {
            Ok(State::Snapshot(snap)) => snap.clone(),
            // Moved over or ended meanwhile (a pipelined request).
            Ok(State::Writer(tx)) => return Route::Writer(tx.clone(), op),
            Ok(State::Ended(end)) => return Route::Done(ResponseBody::Error(end.error(id))),
            Err(_) => return Route::Done(poisoned()),
        };
        let mut snapshot = match state.lock() {
            Ok(s) => s,
            Err(_) => return Route::Done(poisoned()),
        };
        let mut limits =
            StatementLimits::for_request(arrived, deadline, self.max_result_bytes, &txn.owner);
        // A query's result may go ahead in parts (this thread may wait for
        // the client); a batch's results come whole.
        if matches!(op, TxnOp::Query(_)) {
            limits.parts = parts;
        }
        // `None`: the request writes, so the transaction moves over.
        let answer: Option<ResponseBody> = match &op {
            TxnOp::Commit | TxnOp::Rollback => {
                let end = if matches!(op, TxnOp::Commit) {
                    End::Committed
                } else {
                    End::RolledBack
                };
                drop(snapshot);
                txn.end(end);
                self.forget(id);
                return Route::Done(ResponseBody::Ok);
            }
            TxnOp::Execute(st) | TxnOp::Query(st) => {
                let want = if matches!(op, TxnOp::Execute(_)) {
                    Want::Changes
                } else {
                    Want::Rows
                };
                match self.run_read(&txn, &mut snapshot, st, want, &limits) {
                    Ok(answer) => answer,
                    Err(e) => Some(ResponseBody::Error(e)),
                }
            }
            TxnOp::Batch(stmts) => self.batch_read(&txn, &mut snapshot, stmts, &limits),
        };
        match answer {
            Some(body) => Route::Done(body),
            None => {
                let seq = snapshot.seq;
                drop(snapshot);
                self.move_to_writer(txn, seq, op)
            }
        }
    }

    /// A batch on the snapshot: its results, or `None` when one of its
    /// statements writes. The reads before that one ran on the snapshot;
    /// the whole batch then runs again on the writer, which sees the same
    /// data when no commit came between (else the move is a conflict).
    fn batch_read(
        &self,
        txn: &Txn,
        snapshot: &mut Snapshot,
        stmts: &[Statement],
        limits: &StatementLimits,
    ) -> Option<ResponseBody> {
        let mut results = Vec::with_capacity(stmts.len());
        for (i, st) in stmts.iter().enumerate() {
            match self.run_read(txn, snapshot, st, Want::Either, limits) {
                Ok(Some(ResponseBody::Rows(r))) => results.push(StatementResult::Rows(r)),
                Ok(Some(ResponseBody::Executed(e))) => results.push(StatementResult::Executed(e)),
                Ok(Some(other)) => return Some(other),
                Ok(None) => return None,
                Err(mut e) => {
                    e.statement_index = Some(u32::try_from(i).unwrap_or(u32::MAX));
                    return Some(ResponseBody::Error(e));
                }
            }
        }
        Some(ResponseBody::Batch(results))
    }

    /// Runs a statement on the snapshot. `Ok(None)` means it writes: a
    /// deferred transaction moves to the writer for it; a read-only one
    /// refuses it.
    fn run_read(
        &self,
        txn: &Txn,
        snapshot: &mut Snapshot,
        st: &Statement,
        want: Want,
        limits: &StatementLimits,
    ) -> Result<Option<ResponseBody>, ErrorBody> {
        let scope = match txn.mode {
            TxnMode::ReadOnly => Scope::Transaction,
            _ => Scope::Snapshot,
        };
        // Read before the statement can take the snapshot: a commit in
        // between makes a later move a conflict, never a lost one.
        let seq = self.writer.commit_seq.load(Ordering::SeqCst);
        let conn = snapshot.conn.as_ref().ok_or_else(|| {
            ErrorBody::new(
                ErrorKind::Internal,
                format!("transaction {}'s connection is gone", txn.id),
            )
        })?;
        let ran = statement::run_if_read_only(conn, &snapshot.guard, scope, st, want, limits);
        if matches!(ran, Ok(ReadOnly::Ran(_)) | Err(_)) && snapshot.seq.is_none() {
            snapshot.seq = Some(seq);
        }
        match ran? {
            ReadOnly::Ran(out) => Ok(Some(out.into())),
            ReadOnly::NotReadOnly if txn.mode == TxnMode::ReadOnly => Err(ErrorBody {
                kind: ErrorKind::Refused,
                code: rusqlite::ffi::SQLITE_READONLY,
                extended_code: rusqlite::ffi::SQLITE_READONLY,
                message: format!(
                    "transaction {} is read-only, so it cannot write; the transaction stays \
                     open. Begin a deferred or immediate transaction to write",
                    txn.id
                ),
                statement_index: None,
                total_changes: 0,
            }),
            ReadOnly::NotReadOnly => Ok(None),
        }
    }

    /// Swaps a deferred transaction's snapshot (and with it its read
    /// connection) for a channel to the writer.
    fn move_to_writer(&self, txn: Arc<Txn>, seq: Option<u64>, op: TxnOp) -> Route {
        let (tx, rx) = flume::bounded(TXN_CHANNEL);
        match txn.state.lock() {
            Ok(mut state) => *state = State::Writer(tx),
            Err(_) => return Route::Done(poisoned()),
        }
        Route::MoveToWriter { txn, rx, seq, op }
    }

    /// Marks a request on the transaction as running or done, so the idle
    /// lease does not count time spent in it.
    pub(crate) fn busy(&self, id: u64, running: bool) {
        let txn = self.open.lock().ok().and_then(|m| m.get(&id).cloned());
        if let Some(txn) = txn {
            if running {
                txn.in_flight.fetch_add(1, Ordering::Relaxed);
            } else {
                txn.in_flight.fetch_sub(1, Ordering::Relaxed);
                txn.touch();
            }
        }
    }

    /// The end of transaction `id`, once a request found it gone (its
    /// channel closed under it).
    pub(crate) fn end_reason(&self, id: u64) -> ErrorBody {
        let txn = self.open.lock().ok().and_then(|m| m.get(&id).cloned());
        match txn.and_then(|t| t.ended()) {
            Some(end) => {
                self.forget(id);
                end.error(id)
            }
            None => ErrorBody::new(
                ErrorKind::TransactionExpired,
                format!(
                    "transaction {id} ended while the request was out; nothing in it was applied"
                ),
            ),
        }
    }

    /// Ends every transaction the client `client_id` opened: its connection
    /// closed, so they roll back now.
    pub(crate) fn connection_closed(&self, client_id: u64) {
        let mine: Vec<Arc<Txn>> = match self.open.lock() {
            Ok(mut open) => {
                let ids: Vec<u64> = open
                    .values()
                    .filter(|t| t.owner.client_id == client_id)
                    .map(|t| t.id)
                    .collect();
                ids.iter().filter_map(|id| open.remove(id)).collect()
            }
            Err(_) => Vec::new(),
        };
        for txn in mine {
            if txn.end(End::ConnectionClosed) {
                tracing::info!(
                    txn = txn.id,
                    client = txn.owner.client_name,
                    "connection closed with a transaction open; rolled back"
                );
            }
        }
    }

    /// `ctl rollback ID`.
    pub(crate) fn rollback_by_operator(&self, id: u64) -> Result<(), ErrorBody> {
        let txn = self.open.lock().ok().and_then(|m| m.get(&id).cloned());
        match txn {
            Some(txn) if txn.end(End::ByOperator) => {
                tracing::warn!(
                    txn = id,
                    client = txn.owner.client_name,
                    "transaction rolled back by an operator"
                );
                Ok(())
            }
            _ => Err(ErrorBody::new(
                ErrorKind::InvalidArgument,
                format!(
                    "no transaction {id} is open; `nexusd ctl transactions` lists the open ones"
                ),
            )),
        }
    }

    /// Ends every transaction past its lease. Called a few times a second.
    pub(crate) fn expire(&self, leases: Leases) {
        let now = epoch().elapsed().as_nanos() as u64;
        for txn in self.all() {
            if txn.ended().is_some() {
                continue;
            }
            let waiting_for_writer =
                txn.mode == TxnMode::Immediate && !txn.holding_writer.load(Ordering::Relaxed);
            if waiting_for_writer {
                // Its begin is bounded by its own deadline instead.
                continue;
            }
            let max = if txn.mode == TxnMode::ReadOnly {
                leases.max.min(leases.max_read)
            } else {
                leases.max
            };
            let age = txn.started.elapsed();
            let idle =
                Duration::from_nanos(now.saturating_sub(txn.last_active.load(Ordering::Relaxed)));
            let busy = txn.in_flight.load(Ordering::Relaxed) > 0;
            let end = if age > max {
                End::Expired {
                    idle: false,
                    ms: age.as_millis() as u64,
                }
            } else if !busy && idle > leases.idle {
                End::Expired {
                    idle: true,
                    ms: idle.as_millis() as u64,
                }
            } else {
                continue;
            };
            if txn.end(end.clone()) {
                tracing::warn!(
                    txn = txn.id,
                    client = txn.owner.client_name,
                    pid = ?txn.owner.pid,
                    ?end,
                    "transaction expired and was rolled back"
                );
            }
        }
    }
}

fn poisoned() -> ResponseBody {
    ResponseBody::Error(ErrorBody::new(
        ErrorKind::Internal,
        "the transaction's state was poisoned by a panic; it is rolled back",
    ))
}
