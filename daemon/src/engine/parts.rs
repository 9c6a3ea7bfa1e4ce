//! A read's result over one part (1 MiB), sent ahead in parts to a client
//! that takes them (`features::ROW_PARTS`), so that a read larger than the
//! result limit works instead of failing `TooLarge`, and the daemon never
//! holds more than a few parts of any read.
//!
//! The engine only cuts the rows into parts and hands each to a [`Parts`]:
//! how a part reaches the socket, and how the reader waits for the client
//! to take the parts before it, is the dispatcher's (it owns the
//! connection's write queue). Only threads that may block hold one: the
//! reader pool's, a snapshot transaction's, and the writer while it holds
//! that client's own interactive transaction (which holds the writer
//! anyway). The writer's group commits never do, so a slow client never
//! holds up other clients' writes; a statement there keeps the limit.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nexusd_protocol::{ErrorBody, Value};

/// The most one part holds, as the result limit counts bytes (a part holds
/// at least one row, so a single row up to the limit goes alone).
pub(crate) const PART_BYTES: usize = 1 << 20;

/// Parts of one result that may wait in the connection's write queue, not
/// yet written to the socket; the reader waits for the client beyond that.
pub(crate) const PARTS_AHEAD: usize = 2;

type Send = dyn Fn(Head<'_>, Vec<Vec<Value>>, Instant, &Beat) -> Result<(), ErrorBody>
    + std::marker::Send
    + Sync;

/// What every part of one result shares: its columns, and their declared
/// types (empty when not asked for). The first part carries them to a
/// client that reads at its own pace (`features::STREAMS`).
#[derive(Clone, Copy)]
pub(crate) struct Head<'a> {
    pub(crate) columns: &'a [String],
    pub(crate) decltypes: &'a [Option<String>],
}

/// What a wait for the client calls now and then: `Err` stops the wait,
/// and fails the statement with that error.
pub(crate) type Beat = dyn Fn() -> Result<(), ErrorBody> + std::marker::Send + Sync;

/// Where the leading rows of one result go, a part at a time. `send`
/// returns once the part is queued for the client, waiting while
/// [`PARTS_AHEAD`] parts are queued and not yet written; it fails, and the
/// statement with it, when the deadline passes first or the client is gone.
/// While it waits it calls its beat (see [`Parts::beating`]) every
/// [`BEAT_EVERY`] at most.
pub(crate) struct Parts {
    send: Box<Send>,
    beat: Option<Box<Beat>>,
    /// Nanoseconds spent in `send`: waiting for the client, not working.
    sending: AtomicU64,
}

/// How often a wait for the client calls the holder's beat: the writer's
/// heartbeat, which the systemd watchdog reads, must stay fresh while it
/// waits in a transaction (`HEARTBEAT` in writer.rs is the same).
pub(crate) const BEAT_EVERY: Duration = Duration::from_millis(100);

impl Parts {
    /// `send(head, rows, deadline, beat)` queues one part, and calls
    /// `beat` at least every [`BEAT_EVERY`] while it waits, giving up with
    /// its error.
    pub(crate) fn new(
        send: impl Fn(Head<'_>, Vec<Vec<Value>>, Instant, &Beat) -> Result<(), ErrorBody>
        + std::marker::Send
        + Sync
        + 'static,
    ) -> Parts {
        Parts {
            send: Box::new(send),
            beat: None,
            sending: AtomicU64::new(0),
        }
    }

    /// The same parts, calling `beat` while they wait for the client: the
    /// writer's, so that waiting inside a transaction reads as alive, and
    /// stops once the transaction has ended.
    pub(crate) fn beating(
        self,
        beat: impl Fn() -> Result<(), ErrorBody> + std::marker::Send + Sync + 'static,
    ) -> Parts {
        Parts {
            beat: Some(Box::new(beat)),
            ..self
        }
    }

    pub(crate) fn send(
        &self,
        head: Head<'_>,
        rows: Vec<Vec<Value>>,
        deadline: Instant,
    ) -> Result<(), ErrorBody> {
        let began = Instant::now();
        let sent = match &self.beat {
            Some(beat) => (self.send)(head, rows, deadline, beat),
            None => (self.send)(head, rows, deadline, &|| Ok(())),
        };
        let took = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.sending.fetch_add(took, Ordering::Relaxed);
        sent
    }

    /// How long `send` has taken in all: time the statement spent waiting
    /// for its client to take the parts, which the slow log leaves out.
    pub(crate) fn sending(&self) -> Duration {
        Duration::from_nanos(self.sending.load(Ordering::Relaxed))
    }
}

impl fmt::Debug for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Parts")
    }
}
