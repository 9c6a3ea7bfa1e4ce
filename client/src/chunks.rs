//! A batch too large for one request, cut into parts that each fit.
//!
//! One request is one frame, and a frame is bounded (16 MiB by default,
//! the daemon's `--max-frame-bytes`). `Client::batch_all` and
//! `Transaction::batch_all` send a larger batch as several, inside a
//! transaction or a savepoint of their own, so that it still applies all
//! or nothing.

use nexusd_protocol::{Params, Statement, Value};

use crate::connection::InFlight;
use crate::{Client, Error, Result, StatementResult, Transaction};

/// An upper bound on what `statement` takes in a request: its text, its
/// values and their tags and lengths as bincode writes them (a varint is at
/// most 9 bytes; 10 leaves a byte to spare).
fn size_bound(statement: &Statement) -> usize {
    let value = |v: &Value| match v {
        Value::Null => 1,
        Value::Integer(_) | Value::Real(_) => 10,
        Value::Text(s) => 11 + s.len(),
        Value::Blob(b) => 11 + b.len(),
    };
    let params = match &statement.params {
        Params::Positional(values) => values.iter().map(value).sum::<usize>(),
        Params::Named(pairs) => pairs
            .iter()
            .map(|(name, v)| 10 + name.len() + value(v))
            .sum(),
    };
    20 + statement.sql.len() + params
}

/// A batch's statements gathered into parts of at most `budget` bytes each
/// by [`size_bound`], as they come. A statement larger than the budget is a
/// part of its own (the daemon then refuses it, saying why).
struct Parts {
    budget: usize,
    part: Vec<Statement>,
    size: usize,
}

impl Parts {
    fn new(budget: usize) -> Parts {
        Parts {
            budget,
            part: Vec::new(),
            size: 0,
        }
    }

    /// Adds `statement`; when it does not fit in the part being filled,
    /// that part is full and comes back, and `statement` begins the next.
    fn push(&mut self, statement: Statement) -> Option<Vec<Statement>> {
        let bound = size_bound(&statement);
        let full = if self.size + bound > self.budget && self.size > 0 {
            self.size = 0;
            Some(std::mem::take(&mut self.part))
        } else {
            None
        };
        self.size += bound;
        self.part.push(statement);
        full
    }
}

/// `statements` in order, cut into parts as [`Parts`] cuts them.
#[cfg(test)]
fn split(statements: Vec<Statement>, budget: usize) -> Vec<Vec<Statement>> {
    let mut parts = Parts::new(budget);
    let mut out: Vec<Vec<Statement>> = statements
        .into_iter()
        .filter_map(|s| parts.push(s))
        .collect();
    out.push(parts.part);
    out
}

/// What part of a frame a batch's part may fill: half, so that the
/// request's other fields and any error in the bound leave room.
fn budget(max_frame: u32) -> usize {
    usize::try_from(max_frame / 2).unwrap_or(usize::MAX)
}

/// A batch of any size, sent in parts as its statements come, so that the
/// caller never holds it whole, and still applied all or nothing: push the
/// statements in order, [`send`](Self::send) each part
/// [`push`](Self::push) hands back, then [`finish`](Self::finish). Made by
/// [`Client::batch_writer`](crate::Client::batch_writer) or
/// [`Transaction::batch_writer`](crate::Transaction::batch_writer).
///
/// A batch that fits one part goes as one plain batch request. A larger
/// one goes in an immediate transaction of its own, begun before its
/// first part and committed after its last, or, within a caller's
/// transaction, in a savepoint of its own, so the transaction goes on
/// after a failure. A failing statement's `statement_index` counts over
/// the whole batch. Dropped unfinished, a writer's own transaction is
/// rolled back; within a caller's transaction, call
/// [`abandon`](Self::abandon) so that the savepoint is rolled back.
pub struct BatchWriter {
    parts: Parts,
    scope: Scope,
    /// Parts sent, statements in them, and the rows they changed in all.
    sent: usize,
    offset: usize,
    changes: u64,
    /// A part failed or the batch was given up: nothing more goes.
    failed: bool,
    /// The part [`send_ahead`](BatchWriter::send_ahead) sent last, whose
    /// answer is not taken yet, and its statements' count.
    ahead: Option<(InFlight, usize)>,
}

/// What holds a batch's parts together.
enum Scope {
    /// A transaction of its own, begun at the first part.
    Own {
        client: Client,
        tx: Option<Transaction>,
    },
    /// A savepoint in the caller's transaction, opened at the first part.
    Within(Transaction),
}

impl std::fmt::Debug for BatchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (scope, tx) = match &self.scope {
            Scope::Own { tx, .. } => ("own transaction", tx.as_ref().map(Transaction::id)),
            Scope::Within(tx) => ("savepoint", Some(tx.id())),
        };
        f.debug_struct("BatchWriter")
            .field("scope", &scope)
            .field("transaction", &tx)
            .field("budget", &self.parts.budget)
            .field("pending", &self.parts.part.len())
            .field("parts_sent", &self.sent)
            .field("statements_sent", &self.offset)
            .finish()
    }
}

impl BatchWriter {
    /// Outside any transaction, on `client`, whose daemon takes frames of
    /// up to `max_frame` bytes.
    pub(crate) fn new(client: Client, max_frame: u32) -> Self {
        Self::with_scope(Scope::Own { client, tx: None }, max_frame)
    }

    /// Within the transaction `tx` is a handle of, whose daemon takes
    /// frames of up to `max_frame` bytes.
    pub(crate) fn within(tx: Transaction, max_frame: u32) -> Self {
        Self::with_scope(Scope::Within(tx), max_frame)
    }

    fn with_scope(scope: Scope, max_frame: u32) -> Self {
        BatchWriter {
            parts: Parts::new(budget(max_frame)),
            scope,
            sent: 0,
            offset: 0,
            changes: 0,
            failed: false,
            ahead: None,
        }
    }

    /// Adds the next statement. When the part being filled cannot take it,
    /// that part is full and comes back: [`send`](Self::send) it before
    /// pushing more.
    pub fn push(&mut self, statement: Statement) -> Option<Vec<Statement>> {
        self.parts.push(statement)
    }

    /// Sends `part`, the batch's next, beginning the batch's transaction or
    /// savepoint first if it is the first, and returns its results (after
    /// those of a part [`send_ahead`](Self::send_ahead) sent before it).
    /// On an error the batch is over and none of it applied (its
    /// transaction rolled back, or its savepoint); the error's statement
    /// index and change total count over the whole batch.
    pub async fn send(&mut self, part: Vec<Statement>) -> Result<Vec<StatementResult>> {
        let mut results = self.send_ahead(part).await?;
        results.extend(self.land().await?);
        Ok(results)
    }

    /// As [`send`](Self::send), but returns as soon as `part` is on its
    /// way, with the results of the part sent ahead before it (none for
    /// the first): the daemon applies `part` while the caller fills the
    /// next. At most one part is ever out unanswered, and a part goes only
    /// once the one before it has succeeded. [`finish`](Self::finish)
    /// takes the last answer.
    pub async fn send_ahead(&mut self, part: Vec<Statement>) -> Result<Vec<StatementResult>> {
        let before = self.land().await?;
        self.not_failed()?;
        let first = self.sent == 0;
        // A part that cannot even begin fails the batch too: its
        // statements are gone with it, so no later part may go.
        let opened = match &mut self.scope {
            Scope::Own { client, tx } if tx.is_none() => {
                client.transaction().await.map(|t| *tx = Some(t))
            }
            Scope::Within(tx) if first => tx.execute(SAVEPOINT, Params::default()).await.map(drop),
            _ => Ok(()),
        };
        if let Err(e) = opened {
            self.failed = true;
            return Err(e);
        }
        self.sent += 1;
        let Some(tx) = self.tx() else {
            self.failed = true;
            return Err(Error::Protocol(
                "the batch's transaction did not begin".into(),
            ));
        };
        let len = part.len();
        match tx.batch_now(part).await {
            Ok(flight) => {
                self.ahead = Some((flight, len));
                Ok(before)
            }
            Err(e) => Err(self.failed_part(e).await),
        }
    }

    /// An error once a part failed or the batch was given up.
    fn not_failed(&self) -> Result<()> {
        if !self.failed {
            return Ok(());
        }
        Err(Error::InvalidArgument(
            "this batch already failed and none of it was applied; start a new batch to send \
             its statements again"
                .into(),
        ))
    }

    /// The transaction the batch's parts go in, once begun.
    fn tx(&self) -> Option<&Transaction> {
        match &self.scope {
            Scope::Own { tx: Some(tx), .. } | Scope::Within(tx) => Some(tx),
            Scope::Own { tx: None, .. } => None,
        }
    }

    /// Takes the answer to the part sent ahead, if one is out: its results.
    async fn land(&mut self) -> Result<Vec<StatementResult>> {
        let Some((flight, len)) = self.ahead.take() else {
            return Ok(Vec::new());
        };
        let Some(tx) = self.tx() else {
            return Ok(Vec::new());
        };
        match tx.batch_answer(flight).await {
            Ok(results) => {
                self.offset += len;
                self.changes += results
                    .iter()
                    .map(StatementResult::total_changes)
                    .sum::<u64>();
                Ok(results)
            }
            Err(e) => Err(self.failed_part(e).await),
        }
    }

    /// The part sent last failed with `e`: undoes the batch, and gives the
    /// error as counted over the whole batch.
    async fn failed_part(&mut self, e: Error) -> Error {
        let e = in_whole(e, self.sent - 1, self.offset, self.changes);
        self.undo().await;
        e
    }

    /// Sends what is left, and applies the batch (a batch that never
    /// filled a part goes as one plain batch request). Returns the results
    /// not yet returned: a part's sent ahead, then the last part's.
    pub async fn finish(mut self) -> Result<Vec<StatementResult>> {
        let rest = std::mem::take(&mut self.parts.part);
        if self.sent == 0 && !self.failed {
            return match &self.scope {
                Scope::Own { client, .. } => client.batch(rest).await,
                Scope::Within(tx) => tx.batch(rest).await,
            };
        }
        let results = if rest.is_empty() {
            let results = self.land().await?;
            self.not_failed()?;
            results
        } else {
            self.send(rest).await?
        };
        match self.scope {
            Scope::Own { tx: Some(tx), .. } => tx.commit().await?,
            Scope::Own { tx: None, .. } => {}
            Scope::Within(tx) => {
                tx.execute(RELEASE, Params::default()).await?;
            }
        }
        Ok(results)
    }

    /// Pushes every statement of `statements`, sending each part as it
    /// fills, then finishes: the whole of `batch_all`.
    pub(crate) async fn write_all<I>(mut self, statements: I) -> Result<Vec<StatementResult>>
    where
        I: IntoIterator<Item = Statement>,
    {
        let mut results = Vec::new();
        for statement in statements {
            if let Some(part) = self.push(statement) {
                results.extend(self.send_ahead(part).await?);
            }
        }
        results.extend(self.finish().await?);
        Ok(results)
    }

    /// Gives the batch up (its statements' source failed, say): none of it
    /// is applied.
    pub async fn abandon(mut self) {
        self.undo().await;
    }

    /// Rolls back what the parts sent so far did, and ends the scope. What
    /// the rollback might say adds nothing to the caller's error: a failed
    /// rollback of its own transaction ends it all the same, and one of the
    /// savepoint ends the caller's transaction, which says so at its next
    /// call.
    async fn undo(&mut self) {
        // Its answer no longer matters: what follows it on the daemon
        // undoes it.
        self.ahead = None;
        if self.failed {
            return;
        }
        match &mut self.scope {
            Scope::Own { tx, .. } => {
                if let Some(tx) = tx.take() {
                    let _ = tx.rollback().await;
                }
            }
            Scope::Within(tx) => {
                if self.sent > 0 && tx.execute(ROLLBACK_TO, Params::default()).await.is_ok() {
                    let _ = tx.execute(RELEASE, Params::default()).await;
                }
            }
        }
        self.failed = true;
    }
}

/// The savepoint a batch in parts runs in, within a caller's transaction.
const SAVEPOINT: &str = "SAVEPOINT nexusd_batch_all";
const RELEASE: &str = "RELEASE nexusd_batch_all";
const ROLLBACK_TO: &str = "ROLLBACK TO nexusd_batch_all";

/// An error from part `part` (from 0) of a batch, whose first statement is
/// the batch's `offset`th: its statement index counted over the whole
/// batch, the message saying so, and the rows the parts before it changed
/// (`earlier_changes`) in its change total, as for one batch. A lost
/// connection says that nothing of the batch was applied.
fn in_whole(e: Error, part: usize, offset: usize, earlier_changes: u64) -> Error {
    match e {
        Error::Sql(mut s) => {
            s.statement_index = s.statement_index.map(|i| i + offset);
            s.total_changes += earlier_changes;
            s.message = format!(
                "{} (the batch went in parts to fit the frame limit; this was part {}, \
                 from statement {}; none of the batch was applied)",
                s.message,
                part + 1,
                offset + 1
            );
            Error::Sql(s)
        }
        // A batch in parts commits only after its last part, so however
        // the connection failed under one, nothing of the batch is in: its
        // transaction (or the caller's) dies with the connection, or is
        // rolled back after.
        Error::Disconnected { message, .. } => {
            let reason = message.split(';').next().unwrap_or_default();
            Error::Disconnected {
                message: format!(
                    "{reason}, while part {} of a batch sent in parts was out; the batch had not \
                     committed, so nothing in it was applied: send it again once the daemon \
                     answers",
                    part + 1
                ),
                outcome_unknown: false,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However the connection failed under a part, the batch had not
    /// committed: the error says nothing of it was applied, not that its
    /// outcome is unknown.
    #[test]
    fn a_lost_connection_under_a_part_applied_nothing() {
        for message in [
            "the daemon closed the connection (restarted or shut down?); the request was sent \
             but its outcome is unknown: check before retrying a write",
            "the connection had already failed; the request was not sent",
        ] {
            let lost = Error::Disconnected {
                message: message.into(),
                outcome_unknown: true,
            };
            match in_whole(lost, 2, 10, 5) {
                Error::Disconnected {
                    message,
                    outcome_unknown,
                } => {
                    assert!(!outcome_unknown, "{message}");
                    assert!(message.contains("part 3"), "{message}");
                    assert!(message.contains("nothing in it was applied"), "{message}");
                    assert!(!message.contains("unknown"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
    use nexusd_protocol::codec::encode_payload;
    use nexusd_protocol::{Request, RequestBody};

    fn insert(i: usize, blob: usize) -> Statement {
        Statement::new(
            "INSERT INTO t(a, b) VALUES (?, ?)",
            Params::Positional(vec![
                Value::Text(format!("row {i}")),
                Value::Blob(vec![7; blob]),
            ]),
        )
    }

    #[test]
    fn parts_keep_the_order_and_each_encodes_within_its_budget() {
        let statements: Vec<Statement> = (0..5000).map(|i| insert(i, i % 300)).collect();
        let budget = 64 * 1024;
        let parts = split(statements.clone(), budget);
        assert!(parts.len() > 5, "{} parts", parts.len());
        assert_eq!(parts.concat(), statements, "order and content kept");
        for part in parts {
            let request = Request {
                id: u64::MAX,
                db: "main".into(),
                timeout_ms: u32::MAX,
                body: RequestBody::Batch(part),
            };
            let bytes = encode_payload(&request).expect("encode").len();
            assert!(
                bytes <= budget + 64,
                "{bytes} bytes for a {budget}-byte budget"
            );
        }
        assert_eq!(split(vec![insert(0, 10)], budget).len(), 1);
        assert_eq!(
            split(vec![insert(0, 2 * budget), insert(1, 1)], budget).len(),
            2
        );
        assert_eq!(split(Vec::new(), budget), vec![Vec::<Statement>::new()]);
    }
}
