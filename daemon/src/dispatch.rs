//! One request's way down: check the peer's role against the access rules
//! in force, then route it to the engine (writes to the writer, queries to
//! the readers, or to the writer when SQLite says they write) or to the
//! admin commands. Every request gets exactly one answer, counted in the
//! metrics and the client's own counters.
//!
//! The common requests need no task of their own: a write is queued for
//! the writer with an [`Answer`] as its reply, which the I/O thread's relay
//! hands to the connection's write queue after the commit's sync; a read
//! that runs in place is answered on the spot. Only what must wait (a full
//! queue, a read that needs the pool, transactions, admin commands) runs
//! as a spawned task.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nexusd_protocol::{
    AdminRequest, BegunWith, DEFAULT_DB, ErrorBody, ErrorKind, PartsOp, Request, RequestBody,
    Response, ResponseBody, Rows, Statement, TxnMode, TxnOp, TypedRows, Value, features,
};
use tokio::runtime::Handle;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::access::Role;
use crate::admin;
use crate::clients::ClientEntry;
use crate::context::Context;
use crate::engine::{
    BEAT_EVERY, Beat, InPlace, Owner, PARTS_AHEAD, Parts, ReadOutcome, Route, Sink, WriteOp,
};
use crate::metrics::RequestKind;

/// What a connection's answers share.
pub(crate) struct Connection {
    pub(crate) ctx: Arc<Context>,
    pub(crate) who: Arc<ClientEntry>,
    /// The client as the engine knows it, shared by its requests.
    pub(crate) owner: Arc<Owner>,
    /// The connection's write queue.
    pub(crate) out: mpsc::Sender<Outgoing>,
    /// The feature bits the client announced.
    pub(crate) features: u64,
    /// The connection's runtime, for an answer that must wait for room in
    /// the queue.
    pub(crate) runtime: Handle,
    /// Its reads going out in parts at the client's pace.
    pub(crate) streams: Arc<Streams>,
}

/// One reply in a connection's write queue.
pub(crate) struct Outgoing {
    pub(crate) response: Response,
    /// A result's part holds one of its result's credits until it is
    /// written to the socket (to a client that does not take parts at its
    /// own pace).
    pub(crate) credit: Option<Credit>,
}

impl From<Response> for Outgoing {
    fn from(response: Response) -> Outgoing {
        Outgoing {
            response,
            credit: None,
        }
    }
}

/// The parts of one result out and not yet taken: at most `PARTS_AHEAD`,
/// so a client that reads slowly holds that much of the daemon's memory,
/// not the whole result. A part is out until the socket has it, or, for a
/// client that announced `features::STREAMS`, until the client says it
/// took it (`RequestBody::Parts`), so the client's memory is bounded too.
pub(crate) struct Credits {
    state: Mutex<Out>,
    taken: Condvar,
}

#[derive(Default)]
struct Out {
    parts: usize,
    /// The client said `PartsOp::Stop`: it reads no more of this result.
    stopped: bool,
}

/// One queued part's place among its result's `Credits`, given back when
/// the write queue drops it (written, or the connection gone).
pub(crate) struct Credit(Arc<Credits>);

impl Credits {
    fn new() -> Arc<Credits> {
        Arc::new(Credits {
            state: Mutex::new(Out::default()),
            taken: Condvar::new(),
        })
    }

    /// Waits until fewer than `PARTS_AHEAD` parts are out, calling `beat`
    /// every `BEAT_EVERY` meanwhile, and counts one more: `Err(None)` once
    /// `deadline` passes, `Err(Some(e))` when `beat` gives up with `e` or
    /// the client stopped the read.
    fn take(&self, deadline: Instant, beat: &Beat) -> Result<(), Option<ErrorBody>> {
        let mut out = self.state.lock().map_err(|_| None)?;
        loop {
            if out.stopped {
                return Err(Some(ErrorBody::new(
                    ErrorKind::Io,
                    "the client stopped reading this result (its cursor was closed); the rest was not sent",
                )));
            }
            if out.parts < PARTS_AHEAD {
                out.parts += 1;
                return Ok(());
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or(None)?;
            out = self
                .taken
                .wait_timeout(out, left.min(BEAT_EVERY))
                .map_err(|_| None)?
                .0;
            beat().map_err(Some)?;
        }
    }

    /// `n` parts are no longer out.
    fn give_back(&self, n: usize) {
        if let Ok(mut out) = self.state.lock() {
            out.parts = out.parts.saturating_sub(n);
        }
        self.taken.notify_one();
    }

    fn stop(&self) {
        if let Ok(mut out) = self.state.lock() {
            out.stopped = true;
        }
        self.taken.notify_one();
    }
}

impl Drop for Credit {
    fn drop(&mut self) {
        self.0.give_back(1);
    }
}

/// The results of one connection's reads now going out in parts to a
/// client that takes them at its own pace, by request id: where its
/// `RequestBody::Parts` go.
#[derive(Default)]
pub(crate) struct Streams(Mutex<HashMap<u64, Arc<Credits>>>);

impl Streams {
    fn open(self: &Arc<Self>, id: u64, credits: Arc<Credits>) -> Open {
        if let Ok(mut map) = self.0.lock() {
            map.insert(id, credits);
        }
        Open {
            streams: self.clone(),
            id,
        }
    }

    /// The client's word about request `of`'s parts; about a result not
    /// (or no longer) going out in parts it is ignored.
    fn told(&self, of: u64, op: PartsOp) {
        let credits = self.0.lock().ok().and_then(|map| map.get(&of).cloned());
        if let Some(credits) = credits {
            match op {
                PartsOp::Took(n) => {
                    credits.give_back(usize::try_from(n).unwrap_or(usize::MAX));
                }
                PartsOp::Stop => credits.stop(),
            }
        }
    }
}

/// A result's place in `Streams` while its parts go out.
struct Open {
    streams: Arc<Streams>,
    id: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Ok(mut map) = self.streams.0.lock() {
            map.remove(&self.id);
        }
    }
}

/// How long a part waits between looks at a full write queue.
const FULL_QUEUE_POLL: Duration = Duration::from_millis(1);

/// One request's answer, owed: given exactly once, it is counted and
/// queued for the connection, and the request's in-flight permit goes
/// with it.
pub(crate) struct Answer {
    id: u64,
    kind: RequestKind,
    conn: Arc<Connection>,
    permit: OwnedSemaphorePermit,
}

impl Answer {
    fn count(&self, body: &ResponseBody) {
        self.conn
            .who
            .answered(matches!(body, ResponseBody::Error(_)));
        self.conn.ctx.metrics.count_request(self.kind, body);
    }

    /// Gives the answer without waiting: queued at once, or, when the
    /// connection's queue is full, by a task that waits for room.
    pub(crate) fn give(self, body: ResponseBody) {
        self.count(&body);
        let response = Outgoing::from(Response { id: self.id, body });
        match self.conn.out.try_send(response) {
            Ok(()) => {}
            // A closed connection just drops the reply.
            Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(response)) => {
                let Answer { conn, permit, .. } = self;
                let out = conn.out.clone();
                conn.runtime.spawn(async move {
                    let _ = out.send(response).await;
                    drop(permit);
                });
            }
        }
    }

    /// The answer as the engine's reply sink.
    fn into_sink(self) -> Sink {
        Sink::new(move |body| self.give(body))
    }

    /// Where the engine sends a large result ahead of this answer, in
    /// parts, if the client takes them (`features::ROW_PARTS`). Called on a
    /// thread that may block: it waits for the client to take the parts
    /// before, up to the statement's deadline.
    fn parts(&self) -> Option<Parts> {
        if self.conn.features & features::ROW_PARTS == 0 {
            return None;
        }
        let id = self.id;
        let out = self.conn.out.clone();
        let ctx = self.conn.ctx.clone();
        let credits = Credits::new();
        let paced = self.conn.features & features::STREAMS != 0;
        let typed = self.conn.features & features::DECLTYPES != 0;
        // A paced client's `Parts` find the credits here until the read ends.
        let open = paced.then(|| self.conn.streams.open(id, credits.clone()));
        let first = std::sync::atomic::AtomicBool::new(true);
        Some(Parts::new(
            move |head, rows: Vec<Vec<Value>>, deadline, beat| {
                let _open = &open;
                let sent = rows.len();
                let slow = || {
                    ErrorBody::new(
                        ErrorKind::Timeout,
                        format!(
                            "timed out sending the result in parts ({sent} rows waiting): the client \
                         did not read them by the deadline; nothing was applied. Read the rows \
                         as they come, select fewer, or raise the request's timeout"
                        ),
                    )
                };
                credits
                    .take(deadline, beat)
                    .map_err(|stop| stop.unwrap_or_else(slow))?;
                let body = if paced && first.swap(false, Ordering::Relaxed) {
                    ResponseBody::RowsHead(TypedRows {
                        decltypes: if typed {
                            head.decltypes.to_vec()
                        } else {
                            Vec::new()
                        },
                        rows: Rows {
                            columns: head.columns.to_vec(),
                            rows,
                            ..Rows::default()
                        },
                    })
                } else {
                    ResponseBody::RowsPart(rows)
                };
                let mut part = Outgoing {
                    response: Response { id, body },
                    // A paced client gives the credit back itself.
                    credit: (!paced).then(|| Credit(credits.clone())),
                };
                loop {
                    match out.try_send(part) {
                        Ok(()) => {
                            ctx.metrics.result_parts.fetch_add(1, Ordering::Relaxed);
                            return Ok(());
                        }
                        Err(TrySendError::Closed(_)) => {
                            // Nobody will read this answer; it is counted as
                            // the socket failing, not as a fault in here.
                            return Err(ErrorBody::new(
                                ErrorKind::Io,
                                "the client disconnected while its result was sent in parts",
                            ));
                        }
                        Err(TrySendError::Full(back)) => {
                            if Instant::now() >= deadline {
                                return Err(slow());
                            }
                            part = back;
                            std::thread::sleep(FULL_QUEUE_POLL);
                            beat()?;
                        }
                    }
                }
            },
        ))
    }
}

/// Serves one request, holding `permit` until it is answered.
pub(crate) fn start(conn: &Arc<Connection>, req: Request, permit: OwnedSemaphorePermit) {
    let kind = match &req.body {
        // Not a request: nothing to answer, nothing to count.
        RequestBody::Parts { of, op } => return conn.streams.told(*of, *op),
        RequestBody::Execute(_) => RequestKind::Execute,
        RequestBody::Query(_) => RequestKind::Query,
        RequestBody::Batch(_) => RequestKind::Batch,
        RequestBody::Admin(_) => RequestKind::Admin,
        RequestBody::Begin(_) | RequestBody::Transaction { .. } | RequestBody::BeginWith { .. } => {
            RequestKind::Transaction
        }
    };
    conn.who.started();
    let answer = Answer {
        id: req.id,
        kind,
        conn: conn.clone(),
        permit,
    };
    let ctx = &conn.ctx;
    let arrived = Instant::now();
    let role = match admit(ctx, &req, &conn.who) {
        Ok(role) => role,
        Err(refusal) => return answer.give(refusal),
    };
    let deadline = arrived + ctx.config().request_timeout(req.timeout_ms);
    match req.body {
        RequestBody::Execute(st) => write(ctx, WriteOp::Execute(st), arrived, deadline, answer),
        RequestBody::Batch(stmts) if stmts.is_empty() => {
            answer.give(ResponseBody::Batch(Vec::new()))
        }
        RequestBody::Batch(stmts) => write(ctx, WriteOp::Batch(stmts), arrived, deadline, answer),
        RequestBody::Query(st) => {
            let takes_parts = conn.features & features::ROW_PARTS != 0;
            match ctx
                .engine
                .readers
                .in_place(&st, &conn.owner, takes_parts, arrived, deadline)
            {
                InPlace::Done(body) => answer.give(body),
                InPlace::NotReadOnly => write_query(ctx, role, st, arrived, deadline, answer),
                InPlace::ToPool => {
                    let ctx = ctx.clone();
                    let owner = conn.owner.clone();
                    let parts = answer.parts();
                    tokio::spawn(async move {
                        match ctx
                            .engine
                            .readers
                            .in_pool(st, owner, parts, arrived, deadline)
                            .await
                        {
                            ReadOutcome::Done(body) => answer.give(body),
                            ReadOutcome::NeedsWriter(st) => {
                                write_query(&ctx, role, st, arrived, deadline, answer)
                            }
                        }
                    });
                }
            }
        }
        RequestBody::Admin(admin) => spawn_waiting(Waits::Admin(admin), arrived, deadline, answer),
        RequestBody::Begin(mode) => spawn_waiting(Waits::Begin(mode), arrived, deadline, answer),
        RequestBody::BeginWith { mode, op } => {
            spawn_waiting(Waits::BeginWith(mode, op), arrived, deadline, answer)
        }
        RequestBody::Transaction { txn, op } => {
            match in_transaction_here(conn, txn, op, arrived, deadline) {
                Ok(body) => answer.give(body),
                Err(waits) => spawn_waiting(*waits, arrived, deadline, answer),
            }
        }
        // Taken above, before it was counted.
        RequestBody::Parts { .. } => {}
    }
}

/// The requests that wait on something other than the writer's queue, in
/// a task of their own.
enum Waits {
    Admin(AdminRequest),
    Begin(TxnMode),
    /// `Begin`, then the first request on the transaction it opened.
    BeginWith(TxnMode, TxnOp),
    Transaction(u64, TxnOp),
    /// A transaction's query or statement that `Transactions::in_place`
    /// routed to the writer.
    Routed(u64, Route),
}

/// Checks the request against the database served and the peer's role;
/// returns the role, or the refusal to answer with.
fn admit(ctx: &Context, req: &Request, who: &ClientEntry) -> Result<Option<Role>, ResponseBody> {
    if req.db != DEFAULT_DB {
        return Err(ResponseBody::Error(ErrorBody::new(
            ErrorKind::Unsupported,
            format!(
                "unknown database {:?}: this daemon serves only {DEFAULT_DB:?}",
                req.db
            ),
        )));
    }
    // Recomputed on every request, so a reload that revokes a role takes
    // effect on open connections too.
    let role = ctx.role_of(&who.peer);
    let needs = match &req.body {
        RequestBody::Execute(_) | RequestBody::Batch(_) => Role::Write,
        RequestBody::Query(_)
        | RequestBody::Admin(AdminRequest::Ping)
        | RequestBody::Parts { .. } => Role::Read,
        RequestBody::Admin(_) => Role::Admin,
        RequestBody::Begin(TxnMode::ReadOnly)
        | RequestBody::BeginWith {
            mode: TxnMode::ReadOnly,
            ..
        } => Role::Read,
        RequestBody::Begin(_) | RequestBody::BeginWith { .. } => Role::Write,
        // Ending one needs no more than reading; anything else in a
        // transaction that may write needs the write role, as it would
        // outside one.
        RequestBody::Transaction {
            op: TxnOp::Rollback,
            ..
        } => Role::Read,
        RequestBody::Transaction { txn, .. } => {
            if ctx.engine.transactions.mode_of(*txn) == Some(TxnMode::ReadOnly) {
                Role::Read
            } else {
                Role::Write
            }
        }
    };
    if role < Some(needs) {
        return Err(forbidden(ctx, who, role, needs, request_name(&req.body)));
    }
    Ok(role)
}

/// Queues a write for the writer; its answer comes through the relay.
fn write(ctx: &Context, op: WriteOp, arrived: Instant, deadline: Instant, answer: Answer) {
    let owner = answer.conn.owner.clone();
    let sink = answer.into_sink();
    if let Err(wait_for_room) = ctx
        .engine
        .writer
        .submit_to(op, owner, arrived, deadline, sink)
    {
        tokio::spawn(wait_for_room);
    }
}

/// A query SQLite says writes: the writer's, if the peer may write.
fn write_query(
    ctx: &Context,
    role: Option<Role>,
    st: Statement,
    arrived: Instant,
    deadline: Instant,
    answer: Answer,
) {
    if role < Some(Role::Write) {
        let refusal = forbidden(
            ctx,
            &answer.conn.who,
            role,
            Role::Write,
            "a query that writes",
        );
        return answer.give(refusal);
    }
    write(ctx, WriteOp::Query(st), arrived, deadline, answer);
}

/// A request on transaction `txn`: answered here when it is a read of a
/// transaction still on its snapshot that runs in place (as a read in
/// place does), else what it waits for.
fn in_transaction_here(
    conn: &Connection,
    txn: u64,
    op: TxnOp,
    arrived: Instant,
    deadline: Instant,
) -> Result<ResponseBody, Box<Waits>> {
    let takes_parts = conn.features & features::ROW_PARTS != 0;
    match conn.ctx.engine.transactions.in_place(
        txn,
        conn.who.id,
        op,
        takes_parts,
        arrived,
        deadline,
    ) {
        Ok(body) => Ok(body),
        // Boxed: only the path that spawns a task anyway pays for it.
        Err(Route::Snapshot(op)) => Err(Box::new(Waits::Transaction(txn, op))),
        Err(route) => Err(Box::new(Waits::Routed(txn, route))),
    }
}

fn spawn_waiting(what: Waits, arrived: Instant, deadline: Instant, answer: Answer) {
    tokio::spawn(async move {
        let parts = match &what {
            Waits::Transaction(_, TxnOp::Query(_))
            | Waits::BeginWith(_, TxnOp::Query(_))
            | Waits::Routed(_, Route::Writer(_, TxnOp::Query(_)))
            | Waits::Routed(
                _,
                Route::MoveToWriter {
                    op: TxnOp::Query(_),
                    ..
                },
            ) => answer.parts(),
            _ => None,
        };
        let reply = waiting(&answer.conn, what, parts, arrived, deadline).await;
        answer.give(reply);
    });
}

async fn waiting(
    conn: &Connection,
    what: Waits,
    parts: Option<Parts>,
    arrived: Instant,
    deadline: Instant,
) -> ResponseBody {
    let ctx = &conn.ctx;
    let who = &conn.who;
    match what {
        Waits::Admin(admin) => admin::run(ctx, admin, who).await,
        Waits::Begin(mode) => {
            let owner = conn.owner.clone();
            let max_open = ctx.config().max_transactions;
            ctx.engine
                .begin(mode, owner, max_open, arrived, deadline)
                .await
        }
        Waits::BeginWith(mode, op) => {
            let owner = conn.owner.clone();
            let max_open = ctx.config().max_transactions;
            match ctx
                .engine
                .begin(mode, owner, max_open, arrived, deadline)
                .await
            {
                ResponseBody::Begun(txn) => {
                    // Routed as a `Transaction` request is.
                    let answer = match in_transaction_here(conn, txn, op, arrived, deadline) {
                        Ok(body) => body,
                        Err(waits) => {
                            Box::pin(waiting(conn, *waits, parts, arrived, deadline)).await
                        }
                    };
                    ResponseBody::BegunWith(BegunWith {
                        txn,
                        answer: Box::new(answer),
                    })
                }
                // Nothing was begun: the begin's error is the answer.
                other => other,
            }
        }
        Waits::Transaction(txn, op) => {
            ctx.engine
                .in_transaction(txn, who.id, op, parts, arrived, deadline)
                .await
        }
        Waits::Routed(txn, route) => {
            ctx.engine
                .to_the_writer(txn, route, parts, arrived, deadline)
                .await
        }
    }
}

fn forbidden(
    ctx: &Context,
    who: &ClientEntry,
    role: Option<Role>,
    needs: Role,
    what: &str,
) -> ResponseBody {
    let has = role.map_or("no".to_owned(), |r| format!("the {}", r.name()));
    let config = ctx
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

fn request_name(body: &RequestBody) -> &'static str {
    match body {
        RequestBody::Execute(_) => "execute",
        RequestBody::Query(_) => "a query",
        RequestBody::Batch(_) => "a batch",
        RequestBody::Admin(AdminRequest::Ping) => "ping",
        RequestBody::Admin(_) => "an admin command",
        RequestBody::Begin(_) | RequestBody::BeginWith { .. } => "a transaction that may write",
        RequestBody::Transaction { .. } => "a statement in a transaction that may write",
        RequestBody::Parts { .. } => "taking a result's parts",
    }
}
