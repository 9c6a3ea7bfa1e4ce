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
    ClientOptions, Error, Executed, Params, Result, Rows, Statement, StatementResult, Status,
};

/// Blocking twin of [`crate::Client`]: Clone + Send + Sync, clones share one
/// connection.
#[derive(Clone)]
pub struct Client {
    runtime: Arc<tokio::runtime::Runtime>,
    inner: crate::Client,
}

impl Client {
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Client::connect_with(path, ClientOptions::default())
    }

    pub fn connect_with(path: impl AsRef<Path>, options: ClientOptions) -> Result<Client> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("nexusd-client")
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

    /// See [`crate::Client::execute`].
    pub fn execute(&self, sql: &str, params: Params) -> Result<Executed> {
        self.runtime.block_on(self.inner.execute(sql, params))
    }

    /// See [`crate::Client::query`].
    pub fn query(&self, sql: &str, params: Params) -> Result<Rows> {
        self.runtime.block_on(self.inner.query(sql, params))
    }

    /// See [`crate::Client::batch`].
    pub fn batch(&self, statements: Vec<Statement>) -> Result<Vec<StatementResult>> {
        self.runtime.block_on(self.inner.batch(statements))
    }

    pub fn status(&self) -> Result<Status> {
        self.runtime.block_on(self.inner.status())
    }

    pub fn shutdown(&self) -> Result<()> {
        self.runtime.block_on(self.inner.shutdown())
    }

    pub fn ping(&self) -> Result<()> {
        self.runtime.block_on(self.inner.ping())
    }
}
