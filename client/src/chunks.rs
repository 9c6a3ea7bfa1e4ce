//! A batch too large for one request, cut into parts that each fit.
//!
//! One request is one frame, and a frame is bounded (16 MiB by default,
//! the daemon's `--max-frame-bytes`). `Client::batch_all` and
//! `Transaction::batch_all` send a larger batch as several, inside a
//! transaction or a savepoint of their own, so that it still applies all
//! or nothing.

use nexusd_protocol::{Params, Statement, Value};

use crate::Error;

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

/// `statements` in order, cut into parts of at most `budget` bytes each
/// by [`size_bound`]. A statement larger than the budget is a part of its
/// own (the daemon then refuses it, saying why).
pub(crate) fn split(statements: Vec<Statement>, budget: usize) -> Vec<Vec<Statement>> {
    let mut parts = vec![Vec::new()];
    let mut size = 0;
    for statement in statements {
        let bound = size_bound(&statement);
        if size + bound > budget && size > 0 {
            parts.push(Vec::new());
            size = 0;
        }
        size += bound;
        if let Some(part) = parts.last_mut() {
            part.push(statement);
        }
    }
    parts
}

/// What part of a frame a batch's part may fill: half, so that the
/// request's other fields and any error in the bound leave room.
pub(crate) fn budget(max_frame: u32) -> usize {
    usize::try_from(max_frame / 2).unwrap_or(usize::MAX)
}

/// An error from part `part` (from 0) of `parts`, whose first statement
/// is the batch's `offset`th: its statement index counted over the whole
/// batch, the message saying so, and the rows the parts before it changed
/// (`earlier_changes`) in its change total, as for one batch.
pub(crate) fn in_whole(
    e: Error,
    part: usize,
    parts: usize,
    offset: usize,
    earlier_changes: u64,
) -> Error {
    match e {
        Error::Sql(mut s) => {
            s.statement_index = s.statement_index.map(|i| i + offset);
            s.total_changes += earlier_changes;
            s.message = format!(
                "{} (the batch went in {parts} parts to fit the frame limit; this was part {}, \
                 from statement {}; none of the batch was applied)",
                s.message,
                part + 1,
                offset + 1
            );
            Error::Sql(s)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
