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
/// None are defined in version 1; unknown bits are ignored.
pub mod features {}

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
    /// Answers `Ok`; a liveness check.
    Ping,
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
    Status(Status),
    Ok,
    Error(ErrorBody),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Executed {
    pub rows_affected: u64,
    pub last_insert_rowid: i64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// The outcome of one statement of a batch: `Rows` when the statement
/// returns columns (a SELECT, or anything with RETURNING), else `Executed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StatementResult {
    Executed(Executed),
    Rows(Rows),
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
}

impl ErrorBody {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorBody {
            kind,
            code: 0,
            extended_code: 0,
            message: message.into(),
            statement_index: None,
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
