//! The slow-statement log: the last statements that ran longer than
//! `slow-statement-ms`, kept in memory for `nexusd ctl slowlog`, as Redis
//! keeps its SLOWLOG. Every client statement passes through
//! `statement::run`, which times it and hands the slow ones here; a fast
//! statement costs a clock read and an atomic load.
//!
//! The log is the process's: one daemon runs per process, and the writer,
//! the readers and the transactions' connections all feed it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nexusd_protocol::{SlowStatement, Statement};

use super::transactions::Owner;

/// Entries kept; the oldest goes when a new one comes.
pub(crate) const SLOW_LOG_LEN: usize = 128;
/// SQL text kept per entry, in bytes.
const SQL_KEPT: usize = 1024;

/// `slow-statement-ms` in microseconds; 0 keeps nothing.
static THRESHOLD_US: AtomicU64 = AtomicU64::new(0);
static LOG: Mutex<VecDeque<SlowStatement>> = Mutex::new(VecDeque::new());
static RECORDED: AtomicU64 = AtomicU64::new(0);

/// Sets the threshold (at start and at each reload); 0 turns the log off.
pub(crate) fn set_threshold_ms(ms: u64) {
    THRESHOLD_US.store(ms.saturating_mul(1000), Ordering::Relaxed);
}

/// Whether a statement that ran for `ran` is slow.
pub(super) fn is_slow(ran: Duration) -> bool {
    let threshold = THRESHOLD_US.load(Ordering::Relaxed);
    threshold > 0 && ran.as_micros() >= u128::from(threshold)
}

/// Keeps one slow statement of `owner`'s. `waited` is its request's time
/// before it began; `ran_on` where it ran.
pub(super) fn record(
    st: &Statement,
    owner: &Owner,
    ran: Duration,
    waited: Duration,
    ran_on: &str,
    error: Option<String>,
) {
    let id = RECORDED.fetch_add(1, Ordering::Relaxed) + 1;
    let entry = SlowStatement {
        id,
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        duration_us: micros(ran),
        waited_us: micros(waited),
        client_id: owner.client_id,
        client_name: owner.client_name.clone(),
        pid: owner.pid,
        ran_on: ran_on.to_owned(),
        sql: cut(&st.sql, SQL_KEPT),
        params: u32::try_from(st.params.len()).unwrap_or(u32::MAX),
        error,
    };
    tracing::debug!(
        duration_us = entry.duration_us,
        ran_on,
        client = owner.client_id,
        sql = %entry.sql,
        "slow statement"
    );
    let mut log = LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if log.len() == SLOW_LOG_LEN {
        log.pop_front();
    }
    log.push_back(entry);
}

/// The entries, oldest first; emptied afterwards when `reset`.
pub(crate) fn entries(reset: bool) -> Vec<SlowStatement> {
    let mut log = LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if reset {
        log.drain(..).collect()
    } else {
        log.iter().cloned().collect()
    }
}

/// Slow statements seen since the daemon started, kept or not.
pub(crate) fn recorded() -> u64 {
    RECORDED.load(Ordering::Relaxed)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `text` cut at a character boundary at most `max` bytes in, with an
/// ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "abc…");
        // "é" is two bytes: a cut inside it moves back before it.
        assert_eq!(cut("aé", 2), "a…");
    }
}
