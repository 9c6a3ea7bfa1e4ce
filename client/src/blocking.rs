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
    Rows, Statement, StatementResult, Stats, Status,
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

    /// The socket this client talks to.
    pub fn socket_path(&self) -> &Path {
        self.inner.socket_path()
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
    fn batch(&self, statements: Vec<Statement>) -> Vec<StatementResult>;
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
}
