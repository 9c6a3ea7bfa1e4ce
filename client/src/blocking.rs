//! A blocking client for programs with no async runtime. It runs the async
//! client on a small runtime of its own; do not call it from inside an
//! async task (use [`crate::Client`] there).
//!
//! ```no_run
//! use nexusd_client::{blocking::Client, params};
//!
//! let db = Client::connect("/tmp/nexusd.sock")?;
//! db.execute("INSERT INTO events(kind) VALUES (?1)", params!["started"])?;
//! let rows = db.query("SELECT count(*) FROM events", params![])?;
//! # Ok::<(), nexusd_client::Error>(())
//! ```

use std::path::Path;
use std::sync::Arc;

use crate::{
    CheckpointMode, CheckpointResult, ClientInfo, ClientOptions, Error, Executed, Params, Result,
    Rows, SlowStatement, Statement, StatementResult, Stats, Status, TxnInfo, TxnMode,
};

/// Blocking twin of [`crate::Client`]: Clone + Send + Sync, clones share one
/// connection.
#[derive(Clone)]
pub struct Client {
    runtime: Arc<tokio::runtime::Runtime>,
    inner: crate::Client,
}

impl Client {
    /// Connects to the daemon serving the socket at `path`; see
    /// [`crate::Client::connect`].
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Client::connect_with(path, ClientOptions::default())
    }

    /// Connects with explicit options; see [`crate::Client::connect_with`].
    pub fn connect_with(path: impl AsRef<Path>, options: ClientOptions) -> Result<Client> {
        // Current-thread: the thread that waits in a call drives the socket
        // itself and reads its own reply, with no runtime thread to wake in
        // between; threads waiting at once hand the driver to each other.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Connect {
                path: path.as_ref().display().to_string(),
                reason: format!("could not start the client's runtime: {e}"),
            })?;
        let inner = runtime.block_on(crate::Client::connect_with(path, options))?;
        Ok(Client {
            runtime: Arc::new(runtime),
            inner,
        })
    }

    /// The socket this client talks to.
    pub fn socket_path(&self) -> &Path {
        self.inner.socket_path()
    }

    fn wrap(&self, inner: Result<crate::Transaction>) -> Result<Transaction> {
        inner.map(|inner| Transaction {
            runtime: self.runtime.clone(),
            inner: Some(inner),
        })
    }

    /// Blocking [`crate::Client::transaction`].
    pub fn transaction(&self) -> Result<Transaction> {
        self.wrap(self.runtime.block_on(self.inner.transaction()))
    }

    /// Blocking [`crate::Client::deferred_transaction`].
    pub fn deferred_transaction(&self) -> Result<Transaction> {
        self.wrap(self.runtime.block_on(self.inner.deferred_transaction()))
    }

    /// Blocking [`crate::Client::read_transaction`].
    pub fn read_transaction(&self) -> Result<Transaction> {
        self.wrap(self.runtime.block_on(self.inner.read_transaction()))
    }

    /// Blocking [`crate::Client::begin_with`].
    pub fn begin_with(
        &self,
        mode: TxnMode,
        sql: &str,
        params: Params,
    ) -> Result<(Transaction, Result<StatementResult>)> {
        let (tx, first) = self
            .runtime
            .block_on(self.inner.begin_with(mode, sql, params))?;
        Ok((self.wrap(Ok(tx))?, first))
    }
}

/// Blocking twin of [`crate::RowStream`]: an iterator over the read's
/// parts, each a [`Rows`], taken from the daemon as it goes.
///
/// ```no_run
/// # fn demo(db: nexusd_client::blocking::Client) -> nexusd_client::Result<()> {
/// use nexusd_client::params;
/// for rows in db.query_stream("SELECT id FROM events", params![])? {
///     for row in rows?.iter() {
///         let id: i64 = row.get(0)?;
///     }
/// }
/// # Ok(()) }
/// ```
pub struct RowStream {
    runtime: Arc<tokio::runtime::Runtime>,
    inner: Option<crate::RowStream>,
}

impl std::fmt::Debug for RowStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RowStream").field(&self.inner).finish()
    }
}

/// Blocking twin of [`crate::RunOutcome`].
#[derive(Debug)]
pub enum RunOutcome {
    /// The result came in one piece.
    Whole(StatementResult),
    /// The result comes in parts, taken as the stream is read.
    Parts(RowStream),
}

impl RunOutcome {
    fn from_async(outcome: crate::RunOutcome, runtime: &Arc<tokio::runtime::Runtime>) -> Self {
        match outcome {
            crate::RunOutcome::Whole(r) => RunOutcome::Whole(r),
            crate::RunOutcome::Parts(inner) => RunOutcome::Parts(RowStream {
                runtime: runtime.clone(),
                inner: Some(inner),
            }),
        }
    }
}

impl RowStream {
    /// See [`crate::RowStream::columns`].
    pub fn columns(&self) -> &[String] {
        self.inner.as_ref().map_or(&[], |s| s.columns())
    }

    /// See [`crate::RowStream::decltypes`].
    pub fn decltypes(&self) -> &[Option<String>] {
        self.inner.as_ref().map_or(&[], |s| s.decltypes())
    }
}

impl Iterator for RowStream {
    type Item = Result<Rows>;

    fn next(&mut self) -> Option<Result<Rows>> {
        let inner = self.inner.as_mut()?;
        let next = self.runtime.block_on(inner.next()).transpose();
        if !matches!(next, Some(Ok(_))) {
            self.inner = None;
        }
        next
    }
}

impl Drop for RowStream {
    fn drop(&mut self) {
        // The stream's own drop queues its stop; this client's runtime
        // runs only inside calls, so let it write that now.
        if self.inner.take().is_some() && tokio::runtime::Handle::try_current().is_err() {
            self.runtime.block_on(async {
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
            });
        }
    }
}

impl Client {
    /// Blocking [`crate::Client::run_or_stream`].
    pub fn run_or_stream(&self, sql: &str, params: Params) -> Result<RunOutcome> {
        let outcome = self
            .runtime
            .block_on(self.inner.run_or_stream(sql, params))?;
        Ok(RunOutcome::from_async(outcome, &self.runtime))
    }

    /// Blocking [`crate::Client::query_stream`].
    pub fn query_stream(&self, sql: &str, params: Params) -> Result<RowStream> {
        let inner = self
            .runtime
            .block_on(self.inner.query_stream(sql, params))?;
        Ok(RowStream {
            runtime: self.runtime.clone(),
            inner: Some(inner),
        })
    }
}

/// Blocking twin of [`crate::Transaction`]: `Send`, independent of the
/// `Client` that made it, and rolled back when dropped unfinished (the
/// drop sends the rollback and does not wait for its answer).
#[derive(Debug)]
pub struct Transaction {
    runtime: Arc<tokio::runtime::Runtime>,
    /// `None` only once `commit` or `rollback` took it.
    inner: Option<crate::Transaction>,
}

impl Drop for Transaction {
    fn drop(&mut self) {
        // `inner`'s own drop, which runs after this, queues the rollback of
        // an unfinished transaction; this client's runtime runs only inside
        // calls, so a runtime task must still write it. Queue it first,
        // then let the runtime run.
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        inner.abandon();
        if tokio::runtime::Handle::try_current().is_err() {
            self.runtime.block_on(async {
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
            });
        }
    }
}

impl Transaction {
    /// See [`crate::Transaction::id`].
    pub fn id(&self) -> u64 {
        self.inner.as_ref().map_or(0, |t| t.id())
    }

    fn open(&self) -> Result<&crate::Transaction> {
        self.inner.as_ref().ok_or_else(|| {
            Error::InvalidArgument("the transaction is already committed or rolled back".into())
        })
    }

    /// Blocking [`crate::Transaction::execute`].
    pub fn execute(&self, sql: &str, params: Params) -> Result<Executed> {
        self.runtime.block_on(self.open()?.execute(sql, params))
    }

    /// Blocking [`crate::Transaction::query`].
    pub fn query(&self, sql: &str, params: Params) -> Result<Rows> {
        self.runtime.block_on(self.open()?.query(sql, params))
    }

    /// Blocking [`crate::Transaction::query_stream`].
    pub fn query_stream(&self, sql: &str, params: Params) -> Result<RowStream> {
        let inner = self
            .runtime
            .block_on(self.open()?.query_stream(sql, params))?;
        Ok(RowStream {
            runtime: self.runtime.clone(),
            inner: Some(inner),
        })
    }

    /// Blocking [`crate::Transaction::run_or_stream`].
    pub fn run_or_stream(&self, sql: &str, params: Params) -> Result<RunOutcome> {
        let outcome = self
            .runtime
            .block_on(self.open()?.run_or_stream(sql, params))?;
        Ok(RunOutcome::from_async(outcome, &self.runtime))
    }

    /// Blocking [`crate::Transaction::run`].
    pub fn run(&self, sql: &str, params: Params) -> Result<StatementResult> {
        self.runtime.block_on(self.open()?.run(sql, params))
    }

    /// Blocking [`crate::Transaction::batch`].
    pub fn batch(&self, statements: Vec<Statement>) -> Result<Vec<StatementResult>> {
        self.runtime.block_on(self.open()?.batch(statements))
    }

    /// Blocking [`crate::Transaction::batch_all`].
    pub fn batch_all(
        &self,
        statements: impl IntoIterator<Item = Statement>,
    ) -> Result<Vec<StatementResult>> {
        self.runtime.block_on(self.open()?.batch_all(statements))
    }

    /// Blocking [`crate::Transaction::commit`].
    pub fn commit(mut self) -> Result<()> {
        match self.inner.take() {
            Some(t) => self.runtime.block_on(t.commit()),
            None => Ok(()),
        }
    }

    /// Blocking [`crate::Transaction::rollback`].
    pub fn rollback(mut self) -> Result<()> {
        match self.inner.take() {
            Some(t) => self.runtime.block_on(t.rollback()),
            None => Ok(()),
        }
    }
}

/// Each method blocks on the async method of the same name; the async one
/// is documented, so each links to it.
macro_rules! blocking_methods {
    ($( fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        impl Client {
            $(
                #[doc = concat!("Blocking [`crate::Client::", stringify!($name), "`].")]
                pub fn $name(&self $(, $arg: $ty)*) -> Result<$ret> {
                    self.runtime.block_on(self.inner.$name($($arg),*))
                }
            )*
        }
    };
}

blocking_methods! {
    fn execute(&self, sql: &str, params: Params) -> Executed;
    fn query(&self, sql: &str, params: Params) -> Rows;
    fn run(&self, sql: &str, params: Params) -> StatementResult;
    fn batch(&self, statements: Vec<Statement>) -> Vec<StatementResult>;
    fn batch_all(&self, statements: impl IntoIterator<Item = Statement>) -> Vec<StatementResult>;
    fn ping(&self) -> ();
    fn status(&self) -> Status;
    fn stats(&self) -> Stats;
    fn clients(&self) -> Vec<ClientInfo>;
    fn checkpoint(&self, mode: CheckpointMode) -> CheckpointResult;
    fn backup(&self, dest: impl AsRef<Path>) -> String;
    fn integrity_check(&self, quick: bool) -> String;
    fn vacuum(&self) -> String;
    fn optimize(&self) -> String;
    fn reload(&self) -> String;
    fn metrics(&self) -> String;
    fn shutdown(&self) -> ();
    fn transactions(&self) -> Vec<TxnInfo>;
    fn rollback_transaction(&self, id: u64) -> ();
    fn slow_log(&self, reset: bool) -> Vec<SlowStatement>;
}
