//! A read's result over one part (1 MiB), sent ahead in parts to a client
//! that takes them (`features::ROW_PARTS`), so that a read larger than the
//! result limit works instead of failing `TooLarge`, and the daemon never
//! holds more than a few parts of any read.
//!
//! The engine only cuts the rows into parts and hands each to a [`Parts`]:
//! how a part reaches the socket, and how the reader waits for the client
//! to take the parts before it, is the dispatcher's (it owns the
//! connection's write queue). Only threads that may block hold one: the
//! reader pool's and a snapshot transaction's. The writer never does, so a
//! slow client can never hold it up; a statement there keeps the limit.

use std::fmt;
use std::time::Instant;

use nexusd_protocol::{ErrorBody, Value};

/// The most one part holds, as the result limit counts bytes (a part holds
/// at least one row, so a single row up to the limit goes alone).
pub(crate) const PART_BYTES: usize = 1 << 20;

/// Parts of one result that may wait in the connection's write queue, not
/// yet written to the socket; the reader waits for the client beyond that.
pub(crate) const PARTS_AHEAD: usize = 2;

type Send = dyn Fn(Vec<Vec<Value>>, Instant) -> Result<(), ErrorBody> + std::marker::Send + Sync;

/// Where the leading rows of one result go, a part at a time. `send`
/// returns once the part is queued for the client, waiting while
/// [`PARTS_AHEAD`] parts are queued and not yet written; it fails, and the
/// statement with it, when the deadline passes first or the client is gone.
pub(crate) struct Parts(Box<Send>);

impl Parts {
    pub(crate) fn new(
        send: impl Fn(Vec<Vec<Value>>, Instant) -> Result<(), ErrorBody>
        + std::marker::Send
        + Sync
        + 'static,
    ) -> Parts {
        Parts(Box::new(send))
    }

    pub(crate) fn send(&self, rows: Vec<Vec<Value>>, deadline: Instant) -> Result<(), ErrorBody> {
        (self.0)(rows, deadline)
    }
}

impl fmt::Debug for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Parts")
    }
}
