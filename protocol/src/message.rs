//! Every message that crosses the socket. Only this crate defines wire types.
//!
//! Compatibility rule (docs/protocol.md): bincode encodes enum variants by
//! index and struct fields by position, so a message may only grow by
//! appending enum variants. A peer sends a new variant only after the other
//! side announced the matching feature bit in the handshake. Anything else is
//! a new `PROTOCOL_VERSION`.

use serde::{Deserialize, Serialize};

use crate::Value;

/// Bumped on any change a version-1 peer could not decode.
pub const PROTOCOL_VERSION: u32 = 1;

/// The database a request addresses when it names none. Several databases
/// per daemon will add names; today the daemon serves exactly this one.
pub const DEFAULT_DB: &str = "main";

/// Feature bits announced in [`Hello::features`] and [`Welcome::features`].
/// A peer sends an appended variant only to a peer that announced its bit;
/// unknown bits are ignored.
pub mod features {
    /// The peer decodes the error kinds appended after `Forbidden`:
    /// [`ErrorKind::Io`](crate::ErrorKind::Io),
    /// [`ErrorKind::ConfigRejected`](crate::ErrorKind::ConfigRejected) and
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument).
    pub const ERROR_KINDS_2: u64 = 1 << 0;

    /// Interactive transactions: the peer sends or decodes
    /// [`RequestBody::Begin`](crate::RequestBody::Begin) and
    /// [`RequestBody::Transaction`](crate::RequestBody::Transaction),
    /// [`ResponseBody::Begun`](crate::ResponseBody::Begun), the admin
    /// requests and answers about transactions, and the error kinds
    /// [`TransactionExpired`](crate::ErrorKind::TransactionExpired) and
    /// [`Conflict`](crate::ErrorKind::Conflict).
    pub const TRANSACTIONS: u64 = 1 << 1;

    /// Declared column types: the peer decodes
    /// [`ResponseBody::TypedRows`](crate::ResponseBody::TypedRows) and
    /// [`StatementResult::TypedRows`](crate::StatementResult::TypedRows),
    /// which the daemon then sends in place of `Rows`.
    pub const DECLTYPES: u64 = 1 << 2;

    /// The slow-statement log: the peer sends or decodes
    /// [`AdminRequest::SlowLog`](crate::AdminRequest::SlowLog) and
    /// [`ResponseBody::SlowLog`](crate::ResponseBody::SlowLog).
    pub const SLOW_LOG: u64 = 1 << 3;

    /// Results in parts: the peer decodes
    /// [`ResponseBody::RowsPart`](crate::ResponseBody::RowsPart), so the
    /// daemon answers a read over 1 MiB in parts, and one larger than its
    /// result limit instead of refusing it.
    pub const ROW_PARTS: u64 = 1 << 4;

    /// The rowid with the rows: the peer decodes
    /// [`ResponseBody::InsertedRows`](crate::ResponseBody::InsertedRows),
    /// which the daemon sends in place of `Rows` for a statement that
    /// inserted rows and returned some (`INSERT ... RETURNING`).
    pub const INSERTED_ROWS: u64 = 1 << 5;

    /// Change totals: the peer decodes
    /// [`ResponseBody::Changed`](crate::ResponseBody::Changed) and
    /// [`StatementResult::Changed`](crate::StatementResult::Changed), which
    /// the daemon wraps around a statement's answer when the rows it
    /// changed in all (triggers' and foreign-key actions' included) are
    /// not the count the answer implies.
    pub const CHANGE_TOTALS: u64 = 1 << 6;

    /// A transaction begun with its first request: the peer sends or
    /// decodes [`RequestBody::BeginWith`](crate::RequestBody::BeginWith)
    /// and [`ResponseBody::BegunWith`](crate::ResponseBody::BegunWith), one
    /// round trip where `Begin` and the request take two.
    pub const BEGIN_WITH: u64 = 1 << 7;

    /// Results taken at the client's pace (with [`ROW_PARTS`]): the
    /// daemon sends a large read's first part as
    /// [`ResponseBody::RowsHead`](crate::ResponseBody::RowsHead), which
    /// carries the columns, and holds a part as out until the client
    /// sends [`RequestBody::Parts`](crate::RequestBody::Parts) to say it
    /// took it, never more than two out at once; the client's
    /// [`PartsOp::Stop`](crate::PartsOp::Stop) ends the read early. So a
    /// client may read a result of any size a part at a time.
    pub const STREAMS: u64 = 1 << 8;

    /// Every bit this version of the crate understands.
    pub const ALL: u64 = ERROR_KINDS_2
        | TRANSACTIONS
        | DECLTYPES
        | SLOW_LOG
        | ROW_PARTS
        | INSERTED_ROWS
        | CHANGE_TOTALS
        | BEGIN_WITH
        | STREAMS;
}

/// First frame from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Must stay the first field: a server that cannot decode the rest still
    /// reads this one to name both versions in its refusal.
    pub protocol_version: u32,
    /// Free text shown by `nexusd ctl` and in logs, e.g. "ingester".
    pub client_name: String,
    pub features: u64,
}

/// First frame from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HelloReply {
    Welcome(Welcome),
    /// The connection is refused and will be closed after this frame.
    Refused(ErrorBody),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    /// The daemon's package version, e.g. "0.1.0".
    pub server_version: String,
    pub features: u64,
    /// Largest frame, in bytes, either side may send on this connection.
    pub max_frame_bytes: u32,
    /// Requests this connection may have outstanding; more wait unread.
    pub max_in_flight: u32,
}

/// One request. Many may be in flight on one connection; the response
/// carries the same `id` and responses may come back in any order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    /// Database name; must be [`DEFAULT_DB`] in version 1.
    pub db: String,
    /// Time limit for this request in milliseconds, from its arrival to its
    /// answer; 0 means the daemon's default. The daemon caps it at its own
    /// maximum.
    pub timeout_ms: u32,
    pub body: RequestBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RequestBody {
    /// Run one statement through the writer; answers `Executed`.
    Execute(Statement),
    /// Run one statement and return its rows; read-only statements go to the
    /// reader pool, the rest (e.g. `INSERT .. RETURNING`) to the writer.
    Query(Statement),
    /// Run the statements atomically, in order; answers `Batch`.
    Batch(Vec<Statement>),
    /// Operator commands (`nexusd ctl`).
    Admin(AdminRequest),
    /// Opens an interactive transaction; answers `Begun` with its id.
    /// `Immediate` answers once the transaction holds the writer.
    Begin(TxnMode),
    /// A statement, or the end, of the open transaction `txn` (opened on
    /// this connection).
    Transaction { txn: u64, op: TxnOp },
    /// `Begin(mode)` and then `Transaction { txn, op }` on the transaction
    /// it opened, in one request; answers `BegunWith` (or, if the begin
    /// fails, its error alone). Sent only to a daemon that announced
    /// [`features::BEGIN_WITH`].
    BeginWith { mode: TxnMode, op: TxnOp },
    /// The client's word about the parts of request `of`'s answer (a read
    /// sent in parts): not a request of its own, so never answered and
    /// its `id` unused. Sent only to a daemon that announced
    /// [`features::STREAMS`]; about a request already answered, or not
    /// answered in parts, it is ignored.
    Parts { of: u64, op: PartsOp },
}

/// What a client says about a read's parts ([`RequestBody::Parts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartsOp {
    /// It took this many more parts: the daemon may send as many more.
    Took(u32),
    /// It wants no more: the read stops, and its answer is an error the
    /// client will not read.
    Stop,
}

/// How an interactive transaction starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnMode {
    /// Holds the writer from the start: no conflict is possible.
    Immediate,
    /// Reads from a snapshot; moves to the writer at its first write, if
    /// nothing committed since the snapshot began (else `Conflict`).
    Deferred,
    /// One snapshot for every read; never writes, never blocks a writer.
    ReadOnly,
}

impl TxnMode {
    /// The mode's name as `ctl` shows it.
    pub fn label(self) -> &'static str {
        match self {
            TxnMode::Immediate => "immediate",
            TxnMode::Deferred => "deferred",
            TxnMode::ReadOnly => "read-only",
        }
    }
}

/// What a request inside a transaction does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TxnOp {
    /// As `RequestBody::Execute`; answers `Executed`.
    Execute(Statement),
    /// As `RequestBody::Query`; answers `Rows`.
    Query(Statement),
    /// As `RequestBody::Batch`, all or nothing within the transaction;
    /// answers `Batch`.
    Batch(Vec<Statement>),
    /// Answers `Ok` once the transaction is durable.
    Commit,
    /// Answers `Ok`; nothing in the transaction is applied.
    Rollback,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    pub sql: String,
    pub params: Params,
}

/// Bound parameters: positional (`?`, `?1`) or named (`:name`, `@name`,
/// `$name`; the name includes its prefix character).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Params {
    Positional(Vec<Value>),
    Named(Vec<(String, Value)>),
}

impl Params {
    /// How many values are bound, in either style.
    pub fn len(&self) -> usize {
        match self {
            Params::Positional(values) => values.len(),
            Params::Named(pairs) => pairs.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Params {
    fn default() -> Self {
        Params::Positional(Vec::new())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Answers `Status`.
    Status,
    /// Starts a graceful shutdown (the same drain as SIGTERM); answers `Ok`.
    Shutdown,
    /// Answers `Ok`; a liveness check. Needs only the read role.
    Ping,
    /// Answers `Stats`.
    Stats,
    /// Answers `Clients`: the connected processes.
    Clients,
    /// Runs `PRAGMA wal_checkpoint(mode)` on the writer, between batches;
    /// answers `Checkpoint`.
    Checkpoint(CheckpointMode),
    /// Writes a consistent copy of the database, as of the moment the copy
    /// starts, to `dest` (an absolute path the daemon can write, which must
    /// not exist); writes continue meanwhile. Answers `Text`.
    Backup { dest: String },
    /// `PRAGMA integrity_check`, or `quick_check` when `quick`; answers
    /// `Text` with SQLite's lines ("ok" when sound).
    IntegrityCheck { quick: bool },
    /// `VACUUM` on the writer, between batches; answers `Text`.
    Vacuum,
    /// `PRAGMA optimize` on the writer; answers `Text`.
    Optimize,
    /// Re-reads the config file (as SIGHUP does); answers `Text` with what
    /// changed.
    Reload,
    /// Answers `Text`: Prometheus text exposition format 0.0.4.
    Metrics,
    /// Answers `Transactions`: every open interactive transaction.
    Transactions,
    /// Rolls the open transaction `txn` back; answers `Ok`. Its client's
    /// next request on it gets `TransactionExpired`.
    RollbackTransaction { txn: u64 },
    /// Answers `SlowLog`: the statements that ran longer than the daemon's
    /// `slow-statement-ms`, oldest first; with `reset`, the log is emptied
    /// after it is read.
    SlowLog { reset: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointMode {
    Passive,
    Full,
    Restart,
    Truncate,
}

impl CheckpointMode {
    pub fn as_sql(self) -> &'static str {
        match self {
            CheckpointMode::Passive => "PASSIVE",
            CheckpointMode::Full => "FULL",
            CheckpointMode::Restart => "RESTART",
            CheckpointMode::Truncate => "TRUNCATE",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The id of the request answered, or 0 for an error about the
    /// connection as a whole (sent just before the daemon closes it).
    pub id: u64,
    pub body: ResponseBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResponseBody {
    Executed(Executed),
    Rows(Rows),
    Batch(Vec<StatementResult>),
    Status(Box<Status>),
    Ok,
    Error(ErrorBody),
    Stats(Box<Stats>),
    Clients(Vec<ClientInfo>),
    Checkpoint(CheckpointResult),
    Text(String),
    /// A transaction was opened; its id.
    Begun(u64),
    Transactions(Vec<TxnInfo>),
    /// `Rows` with each column's declared type, sent in its place to a
    /// peer that announced [`features::DECLTYPES`].
    TypedRows(TypedRows),
    SlowLog(Vec<SlowStatement>),
    /// Leading rows of a query's answer, sent ahead of it to a peer that
    /// announced [`features::ROW_PARTS`] when the whole would exceed one
    /// part (1 MiB). Not an answer: more parts may follow, and
    /// then the answer itself (`Rows` or `TypedRows`, with the columns and
    /// the last rows), whose rows come after every part's; an `Error` in
    /// its place means the parts are void.
    RowsPart(Vec<Vec<Value>>),
    /// `Rows` of a statement that inserted rows (`INSERT ... RETURNING`),
    /// with the rowid of the last one, sent in their place to a peer that
    /// announced [`features::INSERTED_ROWS`]. The declared types are
    /// empty unless the peer announced [`features::DECLTYPES`].
    InsertedRows(InsertedRows),
    /// A statement's answer, and the rows the statement changed in all,
    /// sent in its place to a peer that announced
    /// [`features::CHANGE_TOTALS`] when that count is not the one the
    /// answer implies: `rows_affected` for `Executed`, 0 for rows and for
    /// an `Error` (a statement that failed after changing rows, which
    /// SQLite counts though they were rolled back).
    Changed(Changed),
    /// The answer to `BeginWith`: the transaction it opened, which stays
    /// open whatever `answer` (its first request's) says, as after `Begin`.
    BegunWith(BegunWith),
    /// The first part of a read sent in parts, to a peer that announced
    /// [`features::STREAMS`], in place of `RowsPart`: the columns (their
    /// declared types empty unless the peer announced
    /// [`features::DECLTYPES`]) and the leading rows. More `RowsPart`s
    /// follow, then the answer, as after a `RowsPart`.
    RowsHead(TypedRows),
}

/// A transaction's id and its first request's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BegunWith {
    pub txn: u64,
    pub answer: Box<ResponseBody>,
}

/// A statement's answer and how many rows it changed in all: SQLite's
/// `total_changes()` moved by that many while it ran, its triggers' and
/// foreign-key actions' changes included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changed {
    pub total_changes: u64,
    pub answer: Box<ResponseBody>,
}

/// Rows, and the rowid of the last row their statement inserted.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InsertedRows {
    pub last_insert_rowid: i64,
    pub rows: TypedRows,
}

impl ResponseBody {
    /// The rows of a query's answer, whichever variant carries them.
    pub fn rows_mut(&mut self) -> Option<&mut Vec<Vec<Value>>> {
        match self {
            ResponseBody::Rows(r) => Some(&mut r.rows),
            ResponseBody::TypedRows(t) => Some(&mut t.rows.rows),
            ResponseBody::InsertedRows(i) => Some(&mut i.rows.rows.rows),
            ResponseBody::Changed(c) => c.answer.rows_mut(),
            ResponseBody::BegunWith(b) => b.answer.rows_mut(),
            _ => None,
        }
    }

    /// This answer as a peer with `peer_features` decodes it: an error
    /// kind the peer did not announce becomes the older kind nearest in
    /// meaning ([`ErrorKind::for_peer`]), and rows go with their declared
    /// types to a peer that announced [`features::DECLTYPES`], without them
    /// to any other. To a peer that announced [`features::CHANGE_TOTALS`],
    /// a statement whose change total is not the one its answer implies
    /// goes in [`ResponseBody::Changed`], alone or in a batch.
    pub fn for_peer(self, peer_features: u64) -> ResponseBody {
        if let ResponseBody::BegunWith(BegunWith { txn, answer }) = self {
            return ResponseBody::BegunWith(BegunWith {
                txn,
                answer: Box::new(answer.for_peer(peer_features)),
            });
        }
        if peer_features & features::CHANGE_TOTALS == 0 {
            return self.shaped_for(peer_features);
        }
        let unimplied = match &self {
            ResponseBody::Executed(e) => e.unimplied_changes(),
            ResponseBody::Rows(r) => r.unimplied_changes(),
            ResponseBody::Error(e) => (e.total_changes != 0).then_some(e.total_changes),
            _ => None,
        };
        let body = self.shaped_for(peer_features);
        match (unimplied, body) {
            (Some(total_changes), answer) => ResponseBody::Changed(Changed {
                total_changes,
                answer: Box::new(answer),
            }),
            (None, ResponseBody::Batch(results)) => ResponseBody::Batch(
                results
                    .into_iter()
                    .map(StatementResult::with_change_total)
                    .collect(),
            ),
            (None, body) => body,
        }
    }

    fn shaped_for(self, peer_features: u64) -> ResponseBody {
        let typed = peer_features & features::DECLTYPES != 0;
        let with_rowid = peer_features & features::INSERTED_ROWS != 0;
        match self {
            ResponseBody::Error(mut e) => {
                e.kind = e.kind.for_peer(peer_features);
                ResponseBody::Error(e)
            }
            ResponseBody::Rows(rows) if with_rowid && rows.last_insert_rowid != 0 => {
                let last_insert_rowid = rows.last_insert_rowid;
                let mut rows = TypedRows::new(rows);
                if !typed {
                    rows.decltypes.clear();
                }
                ResponseBody::InsertedRows(InsertedRows {
                    last_insert_rowid,
                    rows,
                })
            }
            ResponseBody::Rows(rows) if typed => ResponseBody::TypedRows(TypedRows::new(rows)),
            ResponseBody::Batch(results) if typed => ResponseBody::Batch(
                results
                    .into_iter()
                    .map(|r| match r {
                        StatementResult::Rows(rows) => {
                            StatementResult::TypedRows(TypedRows::new(rows))
                        }
                        other => other,
                    })
                    .collect(),
            ),
            other => other,
        }
    }
}

/// One statement that ran longer than the daemon's `slow-statement-ms`,
/// for `ctl slowlog`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlowStatement {
    /// Counts up from 1 over the daemon's life; a gap between two entries
    /// means the log dropped its oldest in between.
    pub id: u64,
    /// When the statement finished, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// How long the statement ran, in microseconds.
    pub duration_us: u64,
    /// How long its request waited before the statement began (in the
    /// writer's queue, in a batch ahead of it, for a reader), in
    /// microseconds.
    pub waited_us: u64,
    /// The client that sent it, as `ClientInfo` and `TxnInfo` name it:
    /// its id, the name it gave, and its process id when the kernel told
    /// the daemon.
    pub client_id: u64,
    pub client_name: String,
    pub pid: Option<u32>,
    /// Where it ran: "writer", "reader" or "transaction".
    pub ran_on: String,
    /// The SQL text, cut at 1,024 bytes.
    pub sql: String,
    /// How many values were bound to it (the values are not kept).
    pub params: u32,
    /// Its error, or `None` if it succeeded.
    pub error: Option<String>,
}

/// One open interactive transaction, for `ctl status` and `ctl clients`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnInfo {
    pub id: u64,
    /// The id of the client (as in `ClientInfo`) that opened it.
    pub client_id: u64,
    pub client_name: String,
    pub pid: Option<u32>,
    pub mode: TxnMode,
    /// "snapshot", "waiting for the writer" or "holding the writer".
    pub state: String,
    pub age_ms: u64,
    pub idle_ms: u64,
    pub statements: u64,
}

/// `PRAGMA wal_checkpoint`'s three numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointResult {
    /// A reader or writer kept it from finishing (SQLITE_BUSY).
    pub busy: bool,
    /// Frames in the WAL.
    pub wal_frames: i64,
    /// Frames copied into the database file.
    pub checkpointed_frames: i64,
}

/// Counters for `ctl stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub uptime_ms: u64,
    /// (kind, outcome, count): kind is execute, query, batch or admin;
    /// outcome is ok or an error kind in snake case.
    pub requests: Vec<(String, String, u64)>,
    pub batches_committed: u64,
    pub writes_committed: u64,
    /// (upper bound, count) of requests per commit; the last bound is
    /// u64::MAX.
    pub batch_size_histogram: Vec<(u64, u64)>,
    pub commit_p50_ms: f64,
    pub commit_p99_ms: f64,
    pub writer_queue_depth: u64,
    pub reader_queue_depth: u64,
    /// Age of the oldest read in progress, 0 when none.
    pub oldest_read_ms: u64,
    pub wal_bytes: u64,
    pub checkpoints: u64,
    pub checkpoints_busy: u64,
    pub clients: Vec<ClientInfo>,
}

/// One connected client, from SO_PEERCRED and its handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub id: u64,
    pub pid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub client_name: String,
    /// read, write or admin, as the access rules now stand.
    pub role: String,
    pub in_flight: u64,
    pub requests: u64,
    pub errors: u64,
    pub connected_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Executed {
    /// Rows the statement itself inserted, updated or deleted; 0 for any
    /// other statement.
    pub rows_affected: u64,
    /// The rowid of the last row the statement inserted, or 0 if it
    /// inserted none (never another client's).
    pub last_insert_rowid: i64,
    /// Rows the statement changed in all, its triggers' and foreign-key
    /// actions' included (SQLite's `total_changes()` moved by this much).
    /// Not part of `Executed` on the wire: [`Changed`] carries it to a
    /// peer that announced [`features::CHANGE_TOTALS`] when it is not
    /// `rows_affected`, and the Rust client fills it in either way.
    #[serde(skip)]
    pub total_changes: u64,
}

impl Executed {
    /// What a statement without rows answers: `rows_affected` rows
    /// changed, its own and in all (no trigger or cascade changed more).
    pub fn new(rows_affected: u64, last_insert_rowid: i64) -> Executed {
        Executed {
            rows_affected,
            last_insert_rowid,
            total_changes: rows_affected,
        }
    }

    fn unimplied_changes(&self) -> Option<u64> {
        (self.total_changes != self.rows_affected).then_some(self.total_changes)
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// Each column's declared type (`sqlite3_column_decltype`: the type
    /// in the table's definition, `None` for an expression), or empty
    /// when unknown. Not part of `Rows` on the wire: [`TypedRows`] carries
    /// it to a peer that announced [`features::DECLTYPES`].
    #[serde(skip)]
    pub decltypes: Vec<Option<String>>,
    /// The rowid of the last row the statement inserted, 0 if none. Not
    /// part of `Rows` on the wire: [`InsertedRows`] carries it to a peer
    /// that announced [`features::INSERTED_ROWS`].
    #[serde(skip)]
    pub last_insert_rowid: i64,
    /// Rows the statement changed in all (`INSERT ... RETURNING`, its
    /// triggers' included); 0 for a read. Not part of `Rows` on the wire:
    /// [`Changed`] carries it to a peer that announced
    /// [`features::CHANGE_TOTALS`] when it is not 0.
    #[serde(skip)]
    pub total_changes: u64,
}

impl Rows {
    fn unimplied_changes(&self) -> Option<u64> {
        (self.total_changes != 0).then_some(self.total_changes)
    }
}

/// `Rows` and the declared type of each column, on the wire.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TypedRows {
    pub decltypes: Vec<Option<String>>,
    pub rows: Rows,
}

impl TypedRows {
    /// `rows` with their declared types, to go on the wire.
    pub fn new(mut rows: Rows) -> TypedRows {
        TypedRows {
            decltypes: std::mem::take(&mut rows.decltypes),
            rows,
        }
    }

    /// The rows, their declared types put back in.
    pub fn into_rows(self) -> Rows {
        Rows {
            decltypes: self.decltypes,
            ..self.rows
        }
    }
}

/// The outcome of one statement of a batch: `Rows` when the statement
/// returns columns (a SELECT, or anything with RETURNING), else `Executed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StatementResult {
    Executed(Executed),
    Rows(Rows),
    /// `Rows` with declared types, for a peer that announced
    /// [`features::DECLTYPES`].
    TypedRows(TypedRows),
    /// A statement's result and the rows it changed in all, for a peer that
    /// announced [`features::CHANGE_TOTALS`], when that count is not the
    /// one the result implies (as [`ResponseBody::Changed`]).
    Changed {
        total_changes: u64,
        result: Box<StatementResult>,
    },
}

impl StatementResult {
    /// This result, in `Changed` if its change total is not the one it
    /// implies.
    fn with_change_total(self) -> StatementResult {
        let unimplied = match &self {
            StatementResult::Executed(e) => e.unimplied_changes(),
            StatementResult::Rows(r) => r.unimplied_changes(),
            StatementResult::TypedRows(t) => t.rows.unimplied_changes(),
            StatementResult::Changed { .. } => None,
        };
        match unimplied {
            Some(total_changes) => StatementResult::Changed {
                total_changes,
                result: Box::new(self),
            },
            None => self,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub server_version: String,
    pub sqlite_version: String,
    pub pid: u32,
    pub uptime_ms: u64,
    pub db_path: String,
    pub socket_path: String,
    pub journal_mode: String,
    pub synchronous: String,
    pub connections: u64,
    pub max_connections: u64,
    pub readers: u32,
    pub writes_committed: u64,
    pub batches_committed: u64,
    pub writer_queue_depth: u64,
    pub db_bytes: u64,
    pub wal_bytes: u64,
    /// The config file read at start or last reload, if any.
    pub config_path: Option<String>,
    /// Every setting in force, as (name, value).
    pub settings: Vec<(String, String)>,
}

/// What went wrong, typed so a client can decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// SQLite rejected the statement; `code`/`extended_code` are SQLite's.
    Sql,
    /// The statement is valid SQL but nexusd does not allow it (transaction
    /// control, ATTACH, connection pragmas). Never applied.
    Refused,
    /// The request did not finish within its time limit. Never applied:
    /// either it never started, or it was interrupted and rolled back.
    Timeout,
    /// The daemon is at a limit (connections, queue); retry later.
    Overloaded,
    /// The answer would exceed the result-size limit; nothing was applied.
    TooLarge,
    /// The peer broke the protocol; the connection will be closed.
    Protocol,
    /// The daemon is shutting down and did not start this request.
    ShuttingDown,
    /// A request the daemon does not serve (e.g. an unknown database name).
    Unsupported,
    /// A fault inside the daemon.
    Internal,
    /// The peer's uid lacks the role the request needs (access rules in the
    /// daemon's config). Never applied.
    Forbidden,
    /// The daemon could not do an operation on its own files or the
    /// filesystem: an I/O error, a maintenance connection that would not
    /// open, a backup that could not be written. The message names the path
    /// and the OS error. Sent only to peers announcing
    /// [`features::ERROR_KINDS_2`]; older peers get `Internal`.
    Io,
    /// A config reload was rejected; the settings in force did not change.
    /// Older peers get `Unsupported`.
    ConfigRejected,
    /// An argument of the request is unusable (a backup destination that
    /// exists or is relative, say); nothing was done. Older peers get
    /// `Unsupported`.
    InvalidArgument,
    /// The transaction is over: its lease ran out (idle, or open too
    /// long), an operator rolled it back, or SQLite aborted it. Nothing in
    /// it was applied; the message says which and for how long. Sent only
    /// to peers announcing [`features::TRANSACTIONS`].
    TransactionExpired,
    /// A deferred transaction tried its first write after another write
    /// committed since its first read. Nothing in it was applied; retry it,
    /// or begin it immediate.
    Conflict,
}

impl ErrorKind {
    /// Every kind, in wire order.
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::Sql,
        ErrorKind::Refused,
        ErrorKind::Timeout,
        ErrorKind::Overloaded,
        ErrorKind::TooLarge,
        ErrorKind::Protocol,
        ErrorKind::ShuttingDown,
        ErrorKind::Unsupported,
        ErrorKind::Internal,
        ErrorKind::Forbidden,
        ErrorKind::Io,
        ErrorKind::ConfigRejected,
        ErrorKind::InvalidArgument,
        ErrorKind::TransactionExpired,
        ErrorKind::Conflict,
    ];

    /// The kind's name in snake case, as metrics, `ctl stats` and logs
    /// show it.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Sql => "sql",
            ErrorKind::Refused => "refused",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Protocol => "protocol",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Internal => "internal",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Io => "io",
            ErrorKind::ConfigRejected => "config_rejected",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::TransactionExpired => "transaction_expired",
            ErrorKind::Conflict => "conflict",
        }
    }

    /// Position in [`ErrorKind::ALL`], for tables indexed by kind.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The kind to send to a peer that announced `features`: a kind it
    /// could not decode becomes the older kind nearest in meaning.
    pub fn for_peer(self, features: u64) -> ErrorKind {
        let has = |bit| features & bit != 0;
        match self {
            ErrorKind::Io if !has(features::ERROR_KINDS_2) => ErrorKind::Internal,
            ErrorKind::ConfigRejected | ErrorKind::InvalidArgument
                if !has(features::ERROR_KINDS_2) =>
            {
                ErrorKind::Unsupported
            }
            ErrorKind::TransactionExpired if !has(features::TRANSACTIONS) => ErrorKind::Timeout,
            ErrorKind::Conflict if !has(features::TRANSACTIONS) => ErrorKind::Sql,
            kind => kind,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    /// SQLite's primary result code for `Sql` errors, else 0.
    pub code: i32,
    /// SQLite's extended result code for `Sql` errors, else 0.
    pub extended_code: i32,
    pub message: String,
    /// For a batch, the 0-based index of the statement that failed.
    pub statement_index: Option<u32>,
    /// Rows the failed statement (for a batch, its statements) changed
    /// before it failed, though none of it was applied: SQLite counts them
    /// in `total_changes()` all the same. Not part of `ErrorBody` on the
    /// wire: [`Changed`] carries it to a peer that announced
    /// [`features::CHANGE_TOTALS`] when it is not 0.
    #[serde(skip)]
    pub total_changes: u64,
}

impl ErrorBody {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorBody {
            kind,
            code: 0,
            extended_code: 0,
            message: message.into(),
            statement_index: None,
            total_changes: 0,
        }
    }
}

impl Statement {
    /// A statement with its parameters, e.g. for a batch.
    pub fn new(sql: impl Into<String>, params: Params) -> Self {
        Statement {
            sql: sql.into(),
            params,
        }
    }
}
