//! A read taken a part at a time ([`RowStream`]): the client holds at most
//! a few parts of the result (about 1 MiB each) whatever its size, because
//! the daemon sends the next part only once this one is taken
//! (`features::STREAMS`).

use std::sync::Arc;
use std::time::Duration;

use nexusd_protocol::{PartsOp, ResponseBody};
use tokio::sync::mpsc;

use crate::connection::Connection;
use crate::{Error, Result, Rows, StatementResult, answered, into_statement_result};

/// The rows of one read, as they come: [`RowStream::next`] gives the next
/// part of them, the first at once (a result under 1 MiB comes in one).
///
/// Dropped before its end, it tells the daemon to stop the read. While it
/// is open, the read holds one of the daemon's reader threads and its
/// snapshot (which keeps checkpoints from passing it), so take the rows
/// steadily: a read not taken to its end within the request's time limit
/// fails with [`Error::Timeout`].
pub struct RowStream {
    conn: Option<Arc<Connection>>,
    id: u64,
    rx: Option<mpsc::Receiver<Result<ResponseBody>>>,
    wait: Duration,
    /// The columns and their declared types, with no rows.
    head: Rows,
    /// Rows come and not yet handed out.
    ready: Option<Rows>,
    /// A part has come: the result is a read's, or a transaction's.
    parted: bool,
}

impl std::fmt::Debug for RowStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowStream")
            .field("id", &self.id)
            .field("columns", &self.head.columns())
            .field("ended", &self.rx.is_none())
            .finish()
    }
}

impl RowStream {
    /// A result that came whole (from a daemon that does not pace reads,
    /// or a statement that returns no rows).
    pub(crate) fn whole(result: StatementResult) -> RowStream {
        let rows = match result {
            StatementResult::Rows(rows) => rows,
            StatementResult::Executed(e) => Rows::executed(&e),
        };
        RowStream {
            conn: None,
            id: 0,
            rx: None,
            wait: Duration::ZERO,
            head: rows.head(),
            ready: Some(rows),
            parted: false,
        }
    }

    /// The read `id`, sent on `conn`, its replies coming on `rx`: waits
    /// for the first part or the answer.
    pub(crate) async fn start(
        conn: Arc<Connection>,
        id: u64,
        rx: mpsc::Receiver<Result<ResponseBody>>,
        wait: Duration,
    ) -> Result<RowStream> {
        let mut stream = RowStream {
            conn: Some(conn),
            id,
            rx: Some(rx),
            wait,
            head: Rows::default(),
            ready: None,
            parted: false,
        };
        let first = stream.receive().await?;
        if let Some(rows) = &first {
            stream.head = rows.head();
        }
        stream.ready = first;
        Ok(stream)
    }

    /// The columns, in order.
    pub fn columns(&self) -> &[String] {
        self.head.columns()
    }

    /// Every column's declared type, as [`Rows::decltypes`].
    pub fn decltypes(&self) -> &[Option<String>] {
        self.head.decltypes()
    }

    /// The next rows, in the result's order, with the columns; `None`
    /// once every row has been given. The last part also carries what
    /// [`Rows::last_insert_rowid`] and [`Rows::total_changes`] say of the
    /// whole statement.
    pub async fn next(&mut self) -> Result<Option<Rows>> {
        if let Some(rows) = self.ready.take() {
            return Ok(Some(rows));
        }
        self.receive().await
    }

    /// Whether every part has been given out: [`RowStream::next`] will
    /// give `None`, and the read holds nothing in the daemon any more.
    pub fn is_finished(&self) -> bool {
        self.rx.is_none() && self.ready.is_none()
    }

    /// Every row left, in one `Rows` (what [`crate::Client::query`] would
    /// have given, less what `next` took).
    pub async fn collect(mut self) -> Result<Rows> {
        let mut all = self.head.clone();
        while let Some(rows) = self.next().await? {
            all.append(rows);
        }
        Ok(all)
    }

    /// The next message of the read: a part, taken (the daemon may send
    /// one more), or the answer, which ends it.
    async fn receive(&mut self) -> Result<Option<Rows>> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(None);
        };
        let parted = self.parted;
        let got = match tokio::time::timeout(self.wait, rx.recv()).await {
            // An error from the channel is the connection's death.
            Ok(Some(got)) => got.map_err(|e| lost_in_parts(e, parted)),
            Ok(None) => Err(Error::Protocol(
                "the read's parts stopped coming before its answer (more came than the daemon \
                 may send ahead, or the connection failed); read again"
                    .into(),
            )),
            Err(_) => Err(Error::Disconnected {
                message: format!(
                    "no part of the read within {} ms, though the daemon answers every request \
                     by its deadline; it may be stopped or wedged",
                    self.wait.as_millis()
                ),
                outcome_unknown: true,
            }),
        };
        let body = match got.and_then(answered) {
            Ok(body) => body,
            Err(e) => {
                self.end();
                return Err(e);
            }
        };
        match body {
            ResponseBody::RowsHead(head) => {
                self.parted = true;
                self.took().await;
                Ok(Some(Rows::from_wire(head.into_rows())))
            }
            ResponseBody::RowsPart(rows) => {
                self.took().await;
                Ok(Some(self.head.with_rows(rows)))
            }
            answer => {
                self.end();
                match into_statement_result(answer)? {
                    StatementResult::Rows(rows) => Ok(Some(rows)),
                    StatementResult::Executed(e) => Ok(Some(Rows::executed(&e))),
                }
            }
        }
    }

    /// Tells the daemon one more part was taken.
    async fn took(&self) {
        if let Some(conn) = &self.conn {
            conn.tell_parts(self.id, PartsOp::Took(1)).await;
        }
    }

    /// The answer came (or the read failed): nothing more to wait for.
    fn end(&mut self) {
        self.rx = None;
        self.conn = None;
    }
}

/// `e`, or, for the connection lost once the result has come in parts
/// (`parted`), an error that leaves nothing in doubt: the daemon sends
/// parts only of a read, or of a statement in a transaction, which ends
/// with the connection, so nothing of it can have been applied.
fn lost_in_parts(e: Error, parted: bool) -> Error {
    match e {
        Error::Disconnected { message, .. } if parted => Error::Disconnected {
            message: format!(
                "{}, while the result came in parts; nothing of it was applied (only a read, or a \
                 statement in a transaction, which ends with the connection, comes in parts): run \
                 it again once the daemon answers",
                message.split(';').next().unwrap_or_default()
            ),
            outcome_unknown: false,
        },
        e => e,
    }
}

impl Drop for RowStream {
    fn drop(&mut self) {
        if self.rx.is_some()
            && let Some(conn) = self.conn.take()
        {
            conn.forget(self.id);
            // With the write queue full the daemon is not told, and the
            // read ends at its time limit instead.
            conn.tell_parts_now(self.id, PartsOp::Stop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection lost after a part came leaves nothing in doubt;
    /// before one came, the statement might have been a write, and it stays
    /// in doubt.
    #[test]
    fn a_lost_connection_is_in_doubt_only_before_the_first_part() {
        let lost = || Error::Disconnected {
            message: "the daemon closed the connection (restarted or shut down?); the request \
                      was sent but its outcome is unknown: check before retrying a write"
                .into(),
            outcome_unknown: true,
        };
        match lost_in_parts(lost(), true) {
            Error::Disconnected {
                message,
                outcome_unknown,
            } => {
                assert!(!outcome_unknown, "{message}");
                assert!(message.contains("nothing of it was applied"), "{message}");
                assert!(!message.contains("unknown"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            lost_in_parts(lost(), false),
            Error::Disconnected {
                outcome_unknown: true,
                ..
            }
        ));
    }
}
