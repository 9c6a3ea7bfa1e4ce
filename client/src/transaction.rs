//! An interactive transaction: statements that read, let the caller decide,
//! and write, applied together by `commit` or not at all.

use std::sync::{Arc, Mutex};

use nexusd_protocol::{RequestBody, ResponseBody, TxnOp};

use crate::connection::{CallError, Connection, InFlight, not_sent};
use crate::{
    BatchWriter, Client, Error, Executed, Params, Result, RowStream, Rows, RunOutcome, Statement,
    StatementResult, answered, into_batch, into_executed, into_rows, into_statement_result,
    unexpected,
};

/// An open transaction, from [`Client::transaction`],
/// [`Client::deferred_transaction`] or [`Client::read_transaction`].
///
/// Its requests travel on the connection that began it, which clones of
/// the `Client` share. It is `Send`, owns what it needs, and may outlive
/// the `Client` it came from. Dropped without [`commit`](Self::commit) or
/// [`rollback`](Self::rollback), it is rolled back: the drop queues the
/// rollback and returns at once.
pub struct Transaction {
    client: Client,
    conn: Arc<Connection>,
    id: u64,
    finished: bool,
    /// Set once the daemon said the transaction is over (expired, or a
    /// conflict), with its words: later calls answer from it without a
    /// round trip. Shared with its handles.
    over: Arc<Mutex<Option<Over>>>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").field("id", &self.id).finish()
    }
}

impl Transaction {
    pub(crate) fn new(client: Client, conn: Arc<Connection>, id: u64) -> Transaction {
        Transaction {
            client,
            conn,
            id,
            finished: false,
            over: Arc::new(Mutex::new(None)),
        }
    }

    /// Another way to send this transaction's requests, which does not own
    /// it: dropping the handle rolls nothing back (it counts as finished),
    /// and what the daemon says of the transaction's end, either learns.
    fn handle(&self) -> Transaction {
        Transaction {
            client: self.client.clone(),
            conn: self.conn.clone(),
            id: self.id,
            finished: true,
            over: self.over.clone(),
        }
    }

    /// The daemon's id for it, as `nexusd ctl transactions` shows it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The error that ended it, again, if it is over.
    fn over(&self) -> Option<Error> {
        match self.over.lock().ok()?.as_ref()? {
            Over::Conflict(m) => Some(Error::Conflict(m.clone())),
            Over::Expired(m) => Some(Error::TransactionExpired(m.clone())),
        }
    }

    async fn call(&self, op: TxnOp) -> Result<ResponseBody> {
        if let Some(e) = self.over() {
            return Err(e);
        }
        let result = self.send(op).await;
        self.note_end(&result);
        result
    }

    /// The answer to the request that came with the begin
    /// (`Client::begin_with`), as `run` would give it, noting the
    /// transaction over if the daemon said so.
    pub(crate) fn first_answer(&self, body: ResponseBody) -> Result<StatementResult> {
        let result = answered(body).and_then(into_statement_result);
        self.note_end(&result);
        result
    }

    /// Remembers the daemon's word that the transaction is over, so later
    /// calls answer from it.
    fn note_end<T>(&self, result: &Result<T>) {
        let ended = match result {
            Err(Error::Conflict(m)) => Some(Over::Conflict(m.clone())),
            Err(Error::TransactionExpired(m)) => Some(Over::Expired(m.clone())),
            _ => None,
        };
        if let Some(ended) = ended
            && let Ok(mut over) = self.over.lock()
        {
            *over = Some(ended);
        }
    }

    async fn send(&self, op: TxnOp) -> Result<ResponseBody> {
        self.alive()?;
        self.client
            .call_on(&self.conn, RequestBody::Transaction { txn: self.id, op })
            .await
    }

    /// An error unless the connection that holds the transaction is open.
    fn alive(&self) -> Result<()> {
        if self.conn.is_alive() {
            return Ok(());
        }
        Err(Error::TransactionExpired(format!(
            "the connection that held transaction {} closed, so the daemon rolled it back; \
             nothing in it was applied",
            self.id
        )))
    }

    /// Sends `statements` as [`Transaction::batch`] does, but returns once
    /// they are on their way; [`Transaction::batch_answer`] takes the
    /// answer. The daemon serves the transaction's requests in order, so
    /// what is sent next runs after them.
    pub(crate) async fn batch_now(&self, statements: Vec<Statement>) -> Result<InFlight> {
        if let Some(e) = self.over() {
            return Err(e);
        }
        self.alive()?;
        let req = self.client.request(RequestBody::Transaction {
            txn: self.id,
            op: TxnOp::Batch(statements),
        });
        self.conn.send_now(req).await.map_err(|e| match e {
            CallError::NotSent(_) => not_sent(),
            CallError::Failed(e) => e,
        })
    }

    /// The answer to statements `batch_now` sent.
    pub(crate) async fn batch_answer(&self, flight: InFlight) -> Result<Vec<StatementResult>> {
        let result = self
            .conn
            .answer(flight, self.client.reply_wait())
            .await
            .and_then(answered)
            .and_then(into_batch);
        self.note_end(&result);
        result
    }

    /// Runs one statement in the transaction; it sees the transaction's own
    /// writes. Returns what [`Client::execute`] returns.
    pub async fn execute(&self, sql: &str, params: Params) -> Result<Executed> {
        into_executed(
            self.call(TxnOp::Execute(Statement::new(sql, params)))
                .await?,
        )
    }

    /// Runs one statement in the transaction and returns its rows, as
    /// [`Client::query`].
    pub async fn query(&self, sql: &str, params: Params) -> Result<Rows> {
        into_rows(self.call(TxnOp::Query(Statement::new(sql, params))).await?)
    }

    /// Runs one statement in the transaction and gives its rows a part at
    /// a time, as [`Client::query_stream`]. While the stream is open the
    /// transaction's other requests wait behind it: take it to its end,
    /// or drop it, first.
    pub async fn query_stream(&self, sql: &str, params: Params) -> Result<RowStream> {
        if let Some(e) = self.over() {
            return Err(e);
        }
        let op = TxnOp::Query(Statement::new(sql, params));
        let result = self
            .client
            .stream_on(
                self.conn.clone(),
                RequestBody::Transaction { txn: self.id, op },
            )
            .await;
        self.note_end(&result);
        result
    }

    /// Runs one statement of any kind in the transaction, as
    /// [`Client::run`].
    pub async fn run(&self, sql: &str, params: Params) -> Result<StatementResult> {
        into_statement_result(self.call(TxnOp::Query(Statement::new(sql, params))).await?)
    }

    /// Runs one statement of any kind in the transaction, as
    /// [`Client::run_or_stream`]. While a stream is open the transaction's
    /// other requests wait behind it: take it to its end, or drop it,
    /// first.
    pub async fn run_or_stream(&self, sql: &str, params: Params) -> Result<RunOutcome> {
        if let Some(e) = self.over() {
            return Err(e);
        }
        let op = TxnOp::Query(Statement::new(sql, params));
        let result = self
            .client
            .run_or_stream_on(
                self.conn.clone(),
                RequestBody::Transaction { txn: self.id, op },
            )
            .await;
        self.note_end(&result);
        result
    }

    /// Runs the statements in order, all or nothing within the transaction
    /// (which stays open either way), as [`Client::batch`].
    pub async fn batch(&self, statements: Vec<Statement>) -> Result<Vec<StatementResult>> {
        into_batch(self.call(TxnOp::Batch(statements)).await?)
    }

    /// As [`Transaction::batch`], however large: a batch that would not fit
    /// in one request goes in parts that each fit, inside a savepoint of
    /// its own, so it still applies all or nothing within the transaction
    /// (as [`Client::batch_all`](crate::Client::batch_all), whose
    /// statements may come from an iterator too).
    pub async fn batch_all<I>(&self, statements: I) -> Result<Vec<StatementResult>>
    where
        I: IntoIterator<Item = Statement>,
    {
        self.batch_writer().write_all(statements).await
    }

    /// A [`BatchWriter`] for a batch sent in parts as its statements come,
    /// within this transaction: for a batch too large to hold whole.
    pub fn batch_writer(&self) -> BatchWriter {
        BatchWriter::within(self.handle(), self.conn.max_frame())
    }

    /// Applies the transaction; returns once it is durable. On an error
    /// nothing in it was applied, except [`Error::Disconnected`] with
    /// `outcome_unknown`, when the connection died with the commit out.
    pub async fn commit(mut self) -> Result<()> {
        self.finished = true;
        match self.call(TxnOp::Commit).await? {
            ResponseBody::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Discards the transaction.
    pub async fn rollback(mut self) -> Result<()> {
        self.finished = true;
        match self.call(TxnOp::Rollback).await {
            Ok(ResponseBody::Ok) => Ok(()),
            Ok(other) => Err(unexpected(&other)),
            // Already over, so already rolled back: that is what was asked.
            Err(Error::TransactionExpired(_) | Error::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// How the daemon ended a transaction, as it said it.
enum Over {
    Expired(String),
    Conflict(String),
}

impl Transaction {
    /// Queues the rollback of an unfinished transaction, without waiting
    /// (what dropping it does); afterwards it counts as finished.
    pub(crate) fn abandon(&mut self) {
        let over = self.over.lock().map(|o| o.is_some()).unwrap_or(false);
        if self.finished || over || !self.conn.is_alive() {
            return;
        }
        self.finished = true;
        let req = self.client.request(RequestBody::Transaction {
            txn: self.id,
            op: TxnOp::Rollback,
        });
        // If even that cannot be queued, the lease rolls it back.
        let _ = self.conn.send_detached(&req);
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        self.abandon();
    }
}
