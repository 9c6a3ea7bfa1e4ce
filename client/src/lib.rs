//! The client for nexusd: what other processes link to read and write the
//! database a nexusd daemon owns.
//!
//! - [`Client`]: async, cheap to clone; clones share one multiplexed
//!   connection, and many tasks may call it at once.
//! - [`blocking::Client`]: the same methods for programs with no runtime.
//! - [`Error`]: SQL errors, timeouts and overload, disconnection, protocol
//!   errors, each its own variant.
//!
//! This crate never opens the database file and does not depend on SQLite.
//!
//! ```no_run
//! use nexusd_client::{Client, Statement, params};
//!
//! # async fn demo() -> nexusd_client::Result<()> {
//! let db = Client::connect("/tmp/nexusd.sock").await?;
//! db.execute("CREATE TABLE IF NOT EXISTS users(id INTEGER PRIMARY KEY, name TEXT UNIQUE)", params![]).await?;
//! let done = db.execute("INSERT INTO users(name) VALUES (?1)", params!["ada"]).await?;
//! println!("inserted row {}", done.last_insert_rowid);
//!
//! let rows = db.query("SELECT id, name FROM users WHERE name = ?1", params!["ada"]).await?;
//! for row in rows.iter() {
//!     let id: i64 = row.get(0)?;
//!     let name: String = row.get(1)?;
//!     println!("{id} {name}");
//! }
//!
//! // All or nothing: an error names the statement that failed.
//! db.batch(vec![
//!     Statement::new("UPDATE users SET name = ?1 WHERE id = ?2", params!["grace", 1]),
//!     Statement::new("INSERT INTO users(name) VALUES (?1)", params!["ada"]),
//! ]).await?;
//! # Ok(()) }
//! ```

pub mod blocking;
mod chunks;
mod connection;
mod error;
mod rows;
mod stream;
mod transaction;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use chunks::BatchWriter;
pub use error::{Error, Result, SqlError};
pub use nexusd_protocol::paths::default_socket_path;
pub use nexusd_protocol::{
    CheckpointMode, CheckpointResult, ClientInfo, Executed, Params, SlowStatement, Statement,
    Stats, Status, TxnInfo, TxnMode, Value,
};
pub use rows::{FromValue, Row, Rows};
pub use stream::RowStream;
pub use transaction::Transaction;

use nexusd_protocol::{
    AdminRequest, BegunWith, Changed, DEFAULT_DB, Request, RequestBody, ResponseBody, TxnOp,
    features,
};
use tokio::sync::Mutex;

use crate::connection::{CallError, Connection, Reply, not_sent};

/// Positional parameters: `params![1, "two", 3.0, None::<i64>]`.
/// Accepts anything that converts into a [`Value`]: i64, i32, f64, bool,
/// `&str`, `String`, `Vec<u8>`, `&[u8]`, `Option<_>` of those, and `Value`.
#[macro_export]
macro_rules! params {
    () => {
        $crate::Params::Positional(::std::vec::Vec::new())
    };
    ($($value:expr),+ $(,)?) => {
        $crate::Params::Positional(::std::vec![$($crate::Value::from($value)),+])
    };
}

/// Named parameters: `named_params! { ":id" => 7, ":name" => "ada" }`.
/// Names carry their prefix (`:`, `@` or `$`), as in the SQL.
#[macro_export]
macro_rules! named_params {
    () => {
        $crate::Params::Named(::std::vec::Vec::new())
    };
    ($($name:expr => $value:expr),+ $(,)?) => {
        $crate::Params::Named(::std::vec![$((::std::string::String::from($name), $crate::Value::from($value))),+])
    };
}

use nexusd_protocol::StatementResult as WireStatementResult;

/// The outcome of one statement of a [`Client::batch`]: rows for a
/// statement that returns columns (SELECT, RETURNING), else the changes.
#[derive(Debug, Clone, PartialEq)]
pub enum StatementResult {
    Executed(Executed),
    Rows(Rows),
}

impl StatementResult {
    /// The rows, if the statement returned any columns.
    pub fn rows(&self) -> Option<&Rows> {
        match self {
            StatementResult::Rows(r) => Some(r),
            StatementResult::Executed(_) => None,
        }
    }

    /// The change counts, if the statement returned no columns.
    pub fn executed(&self) -> Option<&Executed> {
        match self {
            StatementResult::Executed(e) => Some(e),
            StatementResult::Rows(_) => None,
        }
    }

    /// The rows the statement changed in all, its triggers' and foreign-key
    /// actions' included (SQLite's `total_changes()` moved by this much).
    pub fn total_changes(&self) -> u64 {
        match self {
            StatementResult::Executed(e) => e.total_changes,
            StatementResult::Rows(r) => r.total_changes(),
        }
    }
}

/// What [`Client::run_or_stream`] gives: the result whole, or, for one the
/// daemon sends in parts, its rows as they come.
#[derive(Debug)]
pub enum RunOutcome {
    /// The result came in one piece (any result under about 1 MiB).
    Whole(StatementResult),
    /// The result comes in parts: its first part is here, and the rest
    /// follow as the stream takes them.
    Parts(RowStream),
}

/// How a client connects and waits.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Shown by the daemon in its logs and `nexusd ctl`.
    pub client_name: String,
    /// Time limit sent with each request; `None` leaves the daemon's
    /// default (30 s unless configured).
    pub request_timeout: Option<Duration>,
    /// How long a call keeps trying to (re)connect before it fails.
    pub reconnect_for: Duration,
    /// How long to wait for the daemon's handshake reply.
    pub handshake_timeout: Duration,
    /// How long a call with no other request out polls for its reply
    /// before its thread sleeps; zero never polls. A reply that comes
    /// within this is picked up without a sleep and a wake, which roughly
    /// halves a point read's round trip on a virtual machine. Calls whose
    /// replies lately took over twice this (durable writes waiting for an
    /// fsync) do not poll, nor do calls made while every core of the
    /// machine is taken (`/proc/loadavg`'s runnable count, as the daemon
    /// checks for its own polling). Default 50 µs, or
    /// `NEXUSD_REPLY_SPIN_US` (at most 10,000; not a number: the default).
    pub reply_spin: Duration,
    /// Ask the daemon for each result column's declared type
    /// ([`Rows::decltype`]); they cost a few bytes per column in every
    /// answer, so they are off unless asked for. Default false.
    pub declared_types: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_name: default_client_name(),
            request_timeout: None,
            reconnect_for: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            reply_spin: default_reply_spin(),
            declared_types: false,
        }
    }
}

/// The default `reply_spin`: 50 µs unless `NEXUSD_REPLY_SPIN_US` says
/// otherwise.
fn default_reply_spin() -> Duration {
    reply_spin_from(std::env::var("NEXUSD_REPLY_SPIN_US").ok().as_deref())
}

/// `NEXUSD_REPLY_SPIN_US` read: microseconds, 0 turns polling off, and at
/// most 10,000 (the daemon's own bound). A value that is not a number is
/// ignored for the default, as a library cannot refuse to start.
fn reply_spin_from(var: Option<&str>) -> Duration {
    const DEFAULT_US: u64 = 50;
    const MAX_US: u64 = 10_000;
    let us = var
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_US);
    Duration::from_micros(us.min(MAX_US))
}

fn default_client_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "nexusd-client".to_owned())
}

/// Longest the daemon lets a request run, plus slack; a reply later than
/// this means the daemon is wedged, so the call stops waiting.
const REPLY_WAIT_CAP: Duration = Duration::from_secs(310);
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// A handle to a nexusd daemon. Clone it freely: clones share one
/// connection, and requests from many tasks travel on it at once.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: ClientOptions,
    /// The live connection; read on every call, so a plain mutex held for
    /// a clone only.
    current: std::sync::Mutex<Option<Arc<Connection>>>,
    /// Held while (re)connecting, so one task connects and the others wait.
    reconnecting: Mutex<()>,
    next_id: AtomicU64,
}

impl Client {
    /// Connects to the daemon serving the socket at `path`. `path` may also
    /// be the database file a daemon serves: the daemon notes its socket in
    /// the lock file beside the database, and the client connects there.
    ///
    /// ```no_run
    /// # async fn demo() -> nexusd_client::Result<()> {
    /// let db = nexusd_client::Client::connect(nexusd_client::default_socket_path()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Client::connect_with(path, ClientOptions::default()).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(path: impl AsRef<Path>, options: ClientOptions) -> Result<Client> {
        let client = Client {
            inner: Arc::new(Inner {
                path: nexusd_protocol::paths::resolve_socket(path.as_ref()),
                options,
                current: std::sync::Mutex::new(None),
                reconnecting: Mutex::new(()),
                next_id: AtomicU64::new(1),
            }),
        };
        client.connection().await?;
        Ok(client)
    }

    /// The socket this client talks to.
    pub fn socket_path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs one statement through the writer and waits until it is
    /// committed (durable).
    ///
    /// ```no_run
    /// # async fn demo(db: nexusd_client::Client) -> nexusd_client::Result<()> {
    /// use nexusd_client::params;
    /// let done = db.execute("UPDATE jobs SET state = ?1 WHERE id = ?2", params!["done", 42]).await?;
    /// assert!(done.rows_affected <= 1);
    /// # Ok(()) }
    /// ```
    pub async fn execute(&self, sql: &str, params: Params) -> Result<Executed> {
        into_executed(
            self.call(RequestBody::Execute(Statement::new(sql, params)))
                .await?,
        )
    }

    /// Runs one statement and returns its rows. Read-only statements are
    /// served by the reader pool; others (`INSERT .. RETURNING`) by the
    /// writer. A read sees every write acknowledged before it was sent.
    ///
    /// ```no_run
    /// # async fn demo(db: nexusd_client::Client) -> nexusd_client::Result<()> {
    /// use nexusd_client::params;
    /// let rows = db.query("SELECT count(*) FROM jobs WHERE state = ?1", params!["done"]).await?;
    /// let n: i64 = rows.get(0).expect("count(*) returns a row").get(0)?;
    /// # Ok(()) }
    /// ```
    pub async fn query(&self, sql: &str, params: Params) -> Result<Rows> {
        into_rows(
            self.call(RequestBody::Query(Statement::new(sql, params)))
                .await?,
        )
    }

    /// Runs one statement and gives its rows a part at a time, as the
    /// caller takes them: a result of any size costs this process a few
    /// parts of it (about 1 MiB each), not the whole. See [`RowStream`]
    /// for what an open stream holds in the daemon.
    ///
    /// ```no_run
    /// # async fn demo(db: nexusd_client::Client) -> nexusd_client::Result<()> {
    /// use nexusd_client::params;
    /// let mut events = db.query_stream("SELECT id, body FROM events", params![]).await?;
    /// while let Some(rows) = events.next().await? {
    ///     for row in rows.iter() {
    ///         let id: i64 = row.get(0)?;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn query_stream(&self, sql: &str, params: Params) -> Result<RowStream> {
        let conn = self.connection().await?;
        self.stream_on(conn, RequestBody::Query(Statement::new(sql, params)))
            .await
    }

    /// `body`, a read, on `conn`, its parts taken as the caller goes, when
    /// the daemon paces reads; else whole.
    pub(crate) async fn stream_on(
        &self,
        conn: Arc<Connection>,
        body: RequestBody,
    ) -> Result<RowStream> {
        if !conn.daemon_has(features::STREAMS) {
            let answer = answered(conn.call(self.request(body), self.reply_wait()).await?)?;
            return Ok(RowStream::whole(into_statement_result(answer)?));
        }
        let req = self.request(body);
        let id = req.id;
        let (conn, rx) = self
            .send_resending(conn, req, |c: Arc<Connection>, r| async move {
                c.send_paced(r).await
            })
            .await?;
        RowStream::start(conn, id, rx, self.reply_wait()).await
    }

    /// Runs one statement of any kind and returns what it produced: rows
    /// when it returns columns (a SELECT, or RETURNING), else its changes.
    /// Read-only statements go to the reader pool, the rest to the writer,
    /// as with [`Client::query`]. Drivers that cannot tell a query from a
    /// write ahead of time (a DB-API cursor) use this.
    pub async fn run(&self, sql: &str, params: Params) -> Result<StatementResult> {
        into_statement_result(
            self.call(RequestBody::Query(Statement::new(sql, params)))
                .await?,
        )
    }

    /// As [`Client::run`], but a result the daemon sends in parts (one
    /// over about 1 MiB) comes back as a [`RowStream`] as soon as its first
    /// part is here: the caller can work on each part while the daemon
    /// reads the next, and never holds the result twice (the parts and
    /// what it makes of them). A result in one piece comes back whole, at
    /// the cost of `run`. Take the stream to its end before anything else
    /// that should see the read done.
    pub async fn run_or_stream(&self, sql: &str, params: Params) -> Result<RunOutcome> {
        let conn = self.connection().await?;
        self.run_or_stream_on(conn, RequestBody::Query(Statement::new(sql, params)))
            .await
    }

    /// `body`, any statement, on `conn`: its answer, or its parts as they
    /// come when the daemon paces reads.
    pub(crate) async fn run_or_stream_on(
        &self,
        conn: Arc<Connection>,
        body: RequestBody,
    ) -> Result<RunOutcome> {
        let wait = self.reply_wait();
        if !conn.daemon_has(features::STREAMS) {
            let answer = answered(conn.call(self.request(body), wait).await?)?;
            return Ok(RunOutcome::Whole(into_statement_result(answer)?));
        }
        let req = self.request(body);
        let id = req.id;
        let (conn, reply) = self
            .send_resending(conn, req, |c: Arc<Connection>, r| async move {
                c.try_call_either(r, wait).await
            })
            .await?;
        match reply {
            Reply::Whole(body) => Ok(RunOutcome::Whole(into_statement_result(answered(body)?)?)),
            Reply::Parts(rx) => Ok(RunOutcome::Parts(
                RowStream::start(conn, id, rx, wait).await?,
            )),
        }
    }

    /// Runs the statements atomically, in order: all apply, or none do and
    /// the error's `statement_index` names the one that failed. It is one
    /// request, so one over the daemon's frame limit fails with
    /// [`Error::TooLarge`] and applies nothing; [`Client::batch_all`] sends
    /// such a batch in parts.
    ///
    /// ```no_run
    /// # async fn demo(db: nexusd_client::Client) -> nexusd_client::Result<()> {
    /// use nexusd_client::{Statement, params};
    /// db.batch(vec![
    ///     Statement::new("UPDATE accounts SET balance = balance - ?1 WHERE id = ?2", params![10, 1]),
    ///     Statement::new("UPDATE accounts SET balance = balance + ?1 WHERE id = ?2", params![10, 2]),
    /// ]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn batch(&self, statements: Vec<Statement>) -> Result<Vec<StatementResult>> {
        into_batch(self.call(RequestBody::Batch(statements)).await?)
    }

    /// As [`Client::batch`], however large: a batch that would not fit in
    /// one request (the daemon's frame limit, 16 MiB by default) goes in
    /// parts that each fit, inside an immediate transaction of its own, so
    /// it still applies all or nothing; a failing statement's
    /// `statement_index` counts over the whole batch. The transaction's
    /// lease bounds how long the parts may take (`txn-max-ms`, 30 s by
    /// default). The statements may come from an iterator: each part goes
    /// as it fills, so only one part is held at a time.
    pub async fn batch_all<I>(&self, statements: I) -> Result<Vec<StatementResult>>
    where
        I: IntoIterator<Item = Statement>,
    {
        self.batch_writer().await?.write_all(statements).await
    }

    /// A [`BatchWriter`] for a batch sent in parts as its statements come,
    /// outside any transaction: for a batch too large to hold whole.
    pub async fn batch_writer(&self) -> Result<BatchWriter> {
        let max_frame = self.connection().await?.max_frame();
        Ok(BatchWriter::new(self.clone(), max_frame))
    }

    /// A round trip that touches no data; needs only the read role.
    pub async fn ping(&self) -> Result<()> {
        match self.admin(AdminRequest::Ping).await? {
            ResponseBody::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The daemon's status: versions, paths, sizes, and every setting in
    /// force. This and the operator methods below need the admin role.
    pub async fn status(&self) -> Result<Status> {
        match self.admin(AdminRequest::Status).await? {
            ResponseBody::Status(s) => Ok(*s),
            other => Err(unexpected(&other)),
        }
    }

    /// Requests by kind and outcome, commits, queues, and per-client
    /// counters.
    pub async fn stats(&self) -> Result<Stats> {
        match self.admin(AdminRequest::Stats).await? {
            ResponseBody::Stats(s) => Ok(*s),
            other => Err(unexpected(&other)),
        }
    }

    /// The connected processes: pid, uid, name, role and counters.
    pub async fn clients(&self) -> Result<Vec<ClientInfo>> {
        match self.admin(AdminRequest::Clients).await? {
            ResponseBody::Clients(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }

    /// Checkpoints the WAL now, on the writer between batches.
    pub async fn checkpoint(&self, mode: CheckpointMode) -> Result<CheckpointResult> {
        match self.admin(AdminRequest::Checkpoint(mode)).await? {
            ResponseBody::Checkpoint(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Writes a consistent copy of the database, as of the moment it
    /// starts, to `dest`: an absolute path the daemon can write, which must
    /// not exist. Writes go on meanwhile. Returns the daemon's summary.
    pub async fn backup(&self, dest: impl AsRef<Path>) -> Result<String> {
        let dest = dest.as_ref().display().to_string();
        self.admin_text(AdminRequest::Backup { dest }).await
    }

    /// `PRAGMA integrity_check` (or `quick_check` when `quick`): SQLite's
    /// lines, "ok" when the database is sound.
    pub async fn integrity_check(&self, quick: bool) -> Result<String> {
        self.admin_text(AdminRequest::IntegrityCheck { quick })
            .await
    }

    /// `VACUUM` on the writer, between batches; returns the sizes.
    pub async fn vacuum(&self) -> Result<String> {
        self.admin_text(AdminRequest::Vacuum).await
    }

    /// `PRAGMA optimize` on the writer.
    pub async fn optimize(&self) -> Result<String> {
        self.admin_text(AdminRequest::Optimize).await
    }

    /// Re-reads the daemon's config file, as SIGHUP does; returns what
    /// changed. A broken file is [`Error::ConfigRejected`].
    pub async fn reload(&self) -> Result<String> {
        self.admin_text(AdminRequest::Reload).await
    }

    /// The daemon's metrics in the Prometheus text format.
    pub async fn metrics(&self) -> Result<String> {
        self.admin_text(AdminRequest::Metrics).await
    }

    /// Asks the daemon to drain and exit, as SIGTERM does.
    pub async fn shutdown(&self) -> Result<()> {
        match self.admin(AdminRequest::Shutdown).await? {
            ResponseBody::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn admin(&self, request: AdminRequest) -> Result<ResponseBody> {
        self.call(RequestBody::Admin(request)).await
    }

    async fn admin_text(&self, request: AdminRequest) -> Result<String> {
        match self.admin(request).await? {
            ResponseBody::Text(t) => Ok(t),
            other => Err(unexpected(&other)),
        }
    }

    async fn call(&self, body: RequestBody) -> Result<ResponseBody> {
        let conn = self.connection().await?;
        let wait = self.reply_wait();
        let (_, answer) = self
            .send_resending(
                conn,
                self.request(body),
                |c: Arc<Connection>, r| async move { c.try_call(r, wait).await },
            )
            .await?;
        answered(answer)
    }

    /// `send(conn, req)`, and what it gave, with the connection it went
    /// on. A request that comes back unsent (the connection turned out dead
    /// before it left: the daemon restarted since the last call, and a
    /// blocking caller's runtime, idle in between, had not noticed) goes
    /// once more on a fresh connection, unless it belongs to a transaction,
    /// which died with its connection. Nothing else is ever resent.
    async fn send_resending<T, F, Fut>(
        &self,
        conn: Arc<Connection>,
        req: Request,
        send: F,
    ) -> Result<(Arc<Connection>, T)>
    where
        F: Fn(Arc<Connection>, Request) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, CallError>>,
    {
        let (conn, sent) = match send(conn.clone(), req).await {
            Err(CallError::NotSent(req))
                if !matches!(req.body, RequestBody::Transaction { .. }) =>
            {
                let conn = self.connection().await?;
                let sent = send(conn.clone(), *req).await;
                (conn, sent)
            }
            sent => (conn, sent),
        };
        match sent {
            Ok(t) => Ok((conn, t)),
            Err(CallError::NotSent(_)) => Err(not_sent()),
            Err(CallError::Failed(e)) => Err(e),
        }
    }

    /// How long a reply is waited for: the request's own time limit plus
    /// slack, else a cap.
    fn reply_wait(&self) -> Duration {
        self.inner
            .options
            .request_timeout
            .map_or(REPLY_WAIT_CAP, |t| t + Duration::from_secs(5))
    }

    /// One request on `conn` (a transaction's requests all go on the
    /// connection that began it).
    pub(crate) async fn call_on(
        &self,
        conn: &Connection,
        body: RequestBody,
    ) -> Result<ResponseBody> {
        answered(conn.call(self.request(body), self.reply_wait()).await?)
    }

    pub(crate) fn request(&self, body: RequestBody) -> Request {
        let timeout_ms = self.inner.options.request_timeout.map_or(0, |t| {
            u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1)
        });
        Request {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            db: DEFAULT_DB.to_owned(),
            timeout_ms,
            body,
        }
    }

    /// Begins a transaction in `mode` and runs its first statement (of any
    /// kind, as [`Transaction::run`] does), in one round trip where the
    /// daemon takes it (`features::BEGIN_WITH`), else in two. The
    /// transaction is open whatever the statement did, as after a begin:
    /// the inner `Result` is the statement's, the outer one the begin's.
    ///
    /// ```no_run
    /// # async fn demo(db: nexusd_client::Client) -> nexusd_client::Result<()> {
    /// use nexusd_client::{TxnMode, params};
    /// let (tx, inserted) = db
    ///     .begin_with(TxnMode::Deferred, "INSERT INTO t(x) VALUES (?1)", params![1])
    ///     .await?;
    /// inserted?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin_with(
        &self,
        mode: TxnMode,
        sql: &str,
        params: Params,
    ) -> Result<(Transaction, Result<StatementResult>)> {
        let conn = self.connection().await?;
        if !conn.daemon_has(features::BEGIN_WITH) {
            let tx = self.begin(mode).await?;
            let first = tx.run(sql, params).await;
            return Ok((tx, first));
        }
        let op = TxnOp::Query(Statement::new(sql, params));
        match self
            .call_on(&conn, RequestBody::BeginWith { mode, op })
            .await?
        {
            ResponseBody::BegunWith(BegunWith { txn, answer }) => {
                let tx = Transaction::new(self.clone(), conn, txn);
                let first = tx.first_answer(*answer);
                Ok((tx, first))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn begin(&self, mode: TxnMode) -> Result<Transaction> {
        let conn = self.connection().await?;
        match self.call_on(&conn, RequestBody::Begin(mode)).await? {
            ResponseBody::Begun(id) => Ok(Transaction::new(self.clone(), conn, id)),
            other => Err(unexpected(&other)),
        }
    }

    /// Begins an interactive transaction that holds the writer from the
    /// start (SQLite's `BEGIN IMMEDIATE`): its statements run when the
    /// writer takes it up, in queue order, and from then on no other write
    /// comes between, so no conflict is possible. Other clients' writes
    /// wait meanwhile, so keep it short; the daemon rolls back a
    /// transaction idle longer than its `txn-idle-timeout-ms` (5 s by
    /// default) or open longer than `txn-max-ms` (30 s).
    ///
    /// ```no_run
    /// # async fn demo(db: nexusd_client::Client) -> nexusd_client::Result<()> {
    /// use nexusd_client::params;
    /// let tx = db.transaction().await?;
    /// let rows = tx.query("SELECT balance FROM accounts WHERE id = ?1", params![1]).await?;
    /// let balance: i64 = rows.get(0).expect("account 1 exists").get(0)?;
    /// if balance >= 30 {
    ///     tx.execute("UPDATE accounts SET balance = balance - 30 WHERE id = ?1", params![1]).await?;
    ///     tx.execute("UPDATE accounts SET balance = balance + 30 WHERE id = ?1", params![2]).await?;
    /// }
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction(&self) -> Result<Transaction> {
        self.begin(TxnMode::Immediate).await
    }

    /// Begins a deferred transaction (SQLite's `BEGIN`): it reads from a
    /// snapshot and holds nothing until its first write. That write fails
    /// with [`Error::Conflict`] if another write committed after its first
    /// read (never when it has read nothing); then retry the transaction,
    /// or use [`Client::transaction`].
    pub async fn deferred_transaction(&self) -> Result<Transaction> {
        self.begin(TxnMode::Deferred).await
    }

    /// Begins a read-only transaction: every read in it sees one snapshot,
    /// and it never holds up a writer. Capped by the daemon's
    /// `max-read-ms`.
    pub async fn read_transaction(&self) -> Result<Transaction> {
        self.begin(TxnMode::ReadOnly).await
    }

    /// The open interactive transactions (admin role).
    pub async fn transactions(&self) -> Result<Vec<TxnInfo>> {
        match self.admin(AdminRequest::Transactions).await? {
            ResponseBody::Transactions(t) => Ok(t),
            other => Err(unexpected(&other)),
        }
    }

    /// The statements that ran longer than the daemon's
    /// `slow-statement-ms`, oldest first (admin role: they hold other
    /// clients' SQL). With `reset`, the log is emptied once read.
    pub async fn slow_log(&self, reset: bool) -> Result<Vec<SlowStatement>> {
        match self.admin(AdminRequest::SlowLog { reset }).await? {
            ResponseBody::SlowLog(entries) => Ok(entries),
            other => Err(unexpected(&other)),
        }
    }

    /// Rolls back the open transaction `id`, whoever holds it (admin role).
    pub async fn rollback_transaction(&self, id: u64) -> Result<()> {
        match self
            .admin(AdminRequest::RollbackTransaction { txn: id })
            .await?
        {
            ResponseBody::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The live connection, reconnecting with bounded backoff if the last
    /// one died (a daemon restart, say).
    async fn connection(&self) -> Result<Arc<Connection>> {
        if let Some(conn) = self.live_connection() {
            return Ok(conn);
        }
        let _reconnecting = self.inner.reconnecting.lock().await;
        // Another task may have reconnected while this one waited.
        if let Some(conn) = self.live_connection() {
            return Ok(conn);
        }
        let opts = &self.inner.options;
        let give_up = Instant::now() + opts.reconnect_for;
        let mut delay = BACKOFF_START;
        loop {
            match Connection::open(
                &self.inner.path,
                &opts.client_name,
                opts.handshake_timeout,
                opts.reply_spin,
                opts.declared_types,
            )
            .await
            {
                Ok(conn) => {
                    let conn = Arc::new(conn);
                    if let Ok(mut current) = self.inner.current.lock() {
                        *current = Some(conn.clone());
                    }
                    return Ok(conn);
                }
                // Only a daemon that is not there (yet) is worth waiting for;
                // a file that is not a socket will not become one.
                Err(e @ Error::Connect { .. }) | Err(e @ Error::ShuttingDown(_)) => {
                    if Instant::now() + delay > give_up
                        || nexusd_protocol::paths::not_a_socket(&self.inner.path)
                    {
                        return Err(e);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Client {
    fn live_connection(&self) -> Option<Arc<Connection>> {
        let current = self.inner.current.lock().ok()?;
        current.as_ref().filter(|c| c.is_alive()).cloned()
    }
}

/// An answer, or the error it is (one that changed rows before it failed
/// comes in `Changed`).
pub(crate) fn answered(body: ResponseBody) -> Result<ResponseBody> {
    match body {
        ResponseBody::Error(body) => Err(Error::from_body(body)),
        ResponseBody::Changed(Changed {
            total_changes,
            answer,
        }) => match *answer {
            ResponseBody::Error(mut body) => {
                body.total_changes = total_changes;
                Err(Error::from_body(body))
            }
            answer => Ok(ResponseBody::Changed(Changed {
                total_changes,
                answer: Box::new(answer),
            })),
        },
        body => Ok(body),
    }
}

/// The answer inside a `Changed`, and the change total it carried.
fn change_total(body: ResponseBody) -> (ResponseBody, Option<u64>) {
    match body {
        ResponseBody::Changed(c) => (*c.answer, Some(c.total_changes)),
        other => (other, None),
    }
}

pub(crate) fn into_executed(body: ResponseBody) -> Result<Executed> {
    let (body, total) = change_total(body);
    match body {
        ResponseBody::Executed(e) => Ok(executed(e, total)),
        ResponseBody::Rows(_) | ResponseBody::TypedRows(_) => Ok(Executed {
            total_changes: total.unwrap_or(0),
            ..Executed::new(0, 0)
        }),
        ResponseBody::InsertedRows(r) => Ok(Executed {
            total_changes: total.unwrap_or(0),
            ..Executed::new(0, r.last_insert_rowid)
        }),
        other => Err(unexpected(&other)),
    }
}

/// `e` as it came, with its change total: the one sent, or else the one
/// its count implies.
fn executed(e: Executed, total: Option<u64>) -> Executed {
    Executed {
        total_changes: total.unwrap_or(e.rows_affected),
        ..e
    }
}

pub(crate) fn into_rows(body: ResponseBody) -> Result<Rows> {
    match body {
        ResponseBody::Executed(_) => Ok(Rows::default()),
        other => match into_statement_result(other)? {
            StatementResult::Rows(rows) => Ok(rows),
            StatementResult::Executed(_) => Ok(Rows::default()),
        },
    }
}

pub(crate) fn into_statement_result(body: ResponseBody) -> Result<StatementResult> {
    let (body, total) = change_total(body);
    let rows = |mut rows: nexusd_protocol::Rows| {
        rows.total_changes = total.unwrap_or(0);
        StatementResult::Rows(Rows::from_wire(rows))
    };
    match body {
        ResponseBody::Rows(r) => Ok(rows(r)),
        ResponseBody::TypedRows(r) => Ok(rows(r.into_rows())),
        ResponseBody::InsertedRows(r) => {
            let mut inserted = r.rows.into_rows();
            inserted.last_insert_rowid = r.last_insert_rowid;
            Ok(rows(inserted))
        }
        ResponseBody::Executed(e) => Ok(StatementResult::Executed(executed(e, total))),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn into_batch(body: ResponseBody) -> Result<Vec<StatementResult>> {
    match body {
        ResponseBody::Batch(results) => {
            Ok(results.into_iter().map(|r| batch_result(r, None)).collect())
        }
        other => Err(unexpected(&other)),
    }
}

fn batch_result(r: WireStatementResult, total: Option<u64>) -> StatementResult {
    let rows = |mut rows: nexusd_protocol::Rows| {
        rows.total_changes = total.unwrap_or(0);
        StatementResult::Rows(Rows::from_wire(rows))
    };
    match r {
        WireStatementResult::Executed(e) => StatementResult::Executed(executed(e, total)),
        WireStatementResult::Rows(r) => rows(r),
        WireStatementResult::TypedRows(r) => rows(r.into_rows()),
        WireStatementResult::Changed {
            total_changes,
            result,
        } => batch_result(*result, Some(total_changes)),
    }
}

pub(crate) fn unexpected(body: &ResponseBody) -> Error {
    let what = match body {
        ResponseBody::Executed(_) => "Executed",
        ResponseBody::Rows(_) => "Rows",
        ResponseBody::Batch(_) => "Batch",
        ResponseBody::Status(_) => "Status",
        ResponseBody::Ok => "Ok",
        ResponseBody::Error(_) => "Error",
        ResponseBody::Stats(_) => "Stats",
        ResponseBody::Clients(_) => "Clients",
        ResponseBody::Checkpoint(_) => "Checkpoint",
        ResponseBody::Text(_) => "Text",
        ResponseBody::Begun(_) => "Begun",
        ResponseBody::Transactions(_) => "Transactions",
        ResponseBody::TypedRows(_) => "TypedRows",
        ResponseBody::SlowLog(_) => "SlowLog",
        ResponseBody::RowsPart(_) => "RowsPart",
        ResponseBody::RowsHead(_) => "RowsHead",
        ResponseBody::Changed(_) => "Changed",
        ResponseBody::InsertedRows(_) => "InsertedRows",
        ResponseBody::BegunWith(_) => "BegunWith",
    };
    Error::Protocol(format!(
        "the daemon answered with an unexpected {what} reply"
    ))
}

/// The README's Rust example, compiled as a doc-test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_spin_comes_from_the_environment_within_bounds() {
        assert_eq!(reply_spin_from(None), Duration::from_micros(50));
        assert_eq!(reply_spin_from(Some("0")), Duration::ZERO);
        assert_eq!(reply_spin_from(Some(" 200 ")), Duration::from_micros(200));
        assert_eq!(reply_spin_from(Some("999999")), Duration::from_millis(10));
        assert_eq!(reply_spin_from(Some("fast")), Duration::from_micros(50));
    }
}
