//! The writer's backlog: the requests queued for it, and those it has taken
//! from the queue but not run yet; and the sweep that answers, by its
//! deadline, each one that waits behind something long.
//!
//! The writer is one thread, and at times it is held for long: an
//! interactive transaction, a statement sent with a long timeout, VACUUM, a
//! checkpoint of a big WAL. What queued behind it would otherwise be
//! answered only once the writer got to it, long after its client's
//! deadline: the client would have given up with "outcome unknown" when
//! the truth was "not applied". So while the writer is held, something
//! that still runs (the transaction's loop, SQLite's progress handler on
//! the writer's connection, the vigil thread during a checkpoint) calls
//! [`Backlog::sweep`], which answers each job past its deadline "timed out,
//! not applied", naming what holds the writer.
//!
//! The jobs sit behind one mutex. The writer takes it briefly to take or
//! put back a job, never across a call into SQLite; a sweep only ever
//! tries it, and skips its turn when it is taken, so the two cannot wait on
//! each other.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// Least time between two sweeps.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// A job in the backlog, as the sweep sees it.
pub(crate) trait Job: Send {
    /// Whether a sweep should answer it now: it is past its deadline, and
    /// it is a client's request (not the daemon's own maintenance).
    fn overdue(&self, now: Instant) -> bool;
    /// Answers it "timed out, not applied", naming `holder`.
    fn expire(self, holder: Holder);
}

/// What holds the writer, for the message of a request that timed out
/// behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// Nothing: the writer is between jobs, and will get to the queue.
    Nothing,
    /// One batch of writes (a statement in it runs long).
    Batch { since: Instant },
    /// An interactive transaction.
    Transaction { id: u64, since: Instant },
    /// The daemon's own maintenance: "VACUUM", "a checkpoint"...
    Maintenance { what: &'static str, since: Instant },
}

impl Holder {
    /// What the writer is doing, for `ctl status`.
    pub(crate) fn describe(self) -> String {
        let ms = |since: Instant| since.elapsed().as_millis();
        match self {
            Holder::Nothing => "idle".to_owned(),
            Holder::Batch { since } => format!("running a batch of writes for {} ms", ms(since)),
            Holder::Transaction { id, since } => {
                format!("held by transaction {id} for {} ms", ms(since))
            }
            Holder::Maintenance { what, since } => format!("running {what} for {} ms", ms(since)),
        }
    }

    /// "which ... for N ms; not applied. Retry ..." (after "waiting for
    /// the writer, ").
    pub(crate) fn explain(self) -> String {
        let ms = |since: Instant| since.elapsed().as_millis();
        match self {
            Holder::Nothing => {
                "which is busy; not applied. Retry, or send a larger timeout".to_owned()
            }
            Holder::Batch { since } => format!(
                "which has run one batch of writes for {} ms (a statement in it runs long); \
                 not applied. Retry, send a larger timeout, or keep long statements out of busy \
                 hours (`nexusd ctl slowlog` lists them once they end)",
                ms(since)
            ),
            Holder::Transaction { id, since } => format!(
                "which transaction {id} has held for {} ms; not applied. Retry, send a larger \
                 timeout, or keep transactions short (`nexusd ctl transactions` shows them)",
                ms(since)
            ),
            Holder::Maintenance { what, since } => format!(
                "which has run {what} for {} ms; not applied. Retry, send a larger timeout, or \
                 run maintenance when few writes come",
                ms(since)
            ),
        }
    }
}

/// The writer's queue and the jobs taken from it but not yet run.
pub(crate) struct Backlog<J> {
    jobs: Mutex<Jobs<J>>,
    holder: Mutex<Holder>,
    /// Nanoseconds since `epoch()` of the last sweep.
    swept: AtomicU64,
    /// How many jobs a sweep takes from the queue into `pending` at most:
    /// the queue's capacity, so that clients still meet its backpressure.
    capacity: usize,
}

struct Jobs<J> {
    rx: mpsc::Receiver<J>,
    /// Taken from the queue, not yet run, in order.
    pending: VecDeque<J>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each change under these locks is a single push or pop: whole after
    // any panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<J: Job> Backlog<J> {
    pub(crate) fn new(rx: mpsc::Receiver<J>, capacity: usize) -> Backlog<J> {
        Backlog {
            jobs: Mutex::new(Jobs {
                rx,
                pending: VecDeque::new(),
            }),
            holder: Mutex::new(Holder::Nothing),
            swept: AtomicU64::new(0),
            capacity: capacity.max(1),
        }
    }

    /// Waits until a job is pending; `false` once the queue is closed and
    /// empty. The writer calls it only with nothing running, so no sweep
    /// is due meanwhile.
    pub(crate) fn wait(&self) -> bool {
        let mut jobs = lock(&self.jobs);
        if !jobs.pending.is_empty() {
            return true;
        }
        if jobs.rx.is_empty() {
            self.held_by(Holder::Nothing);
        }
        match jobs.rx.blocking_recv() {
            Some(job) => {
                jobs.pending.push_back(job);
                true
            }
            None => false,
        }
    }

    /// Takes what is queued into `pending`, up to `up_to` jobs there.
    pub(crate) fn fill(&self, up_to: usize) {
        let mut jobs = lock(&self.jobs);
        while jobs.pending.len() < up_to {
            match jobs.rx.try_recv() {
                Ok(job) => jobs.pending.push_back(job),
                Err(_) => break,
            }
        }
    }

    /// The next pending job.
    pub(crate) fn pop(&self) -> Option<J> {
        lock(&self.jobs).pending.pop_front()
    }

    /// Puts a job back at the front, to run next.
    pub(crate) fn push_front(&self, job: J) {
        lock(&self.jobs).pending.push_front(job);
    }

    /// The next pending job, if `take` says so of it.
    pub(crate) fn pop_if(&self, take: impl FnOnce(&J) -> bool) -> Option<J> {
        let mut jobs = lock(&self.jobs);
        match jobs.pending.front() {
            Some(job) if take(job) => jobs.pending.pop_front(),
            _ => None,
        }
    }

    /// Takes every pending job.
    pub(crate) fn take_all(&self) -> VecDeque<J> {
        std::mem::take(&mut lock(&self.jobs).pending)
    }

    /// Says what holds the writer from now on.
    pub(crate) fn held_by(&self, holder: Holder) {
        *lock(&self.holder) = holder;
    }

    /// What holds the writer now.
    pub(crate) fn holder(&self) -> Holder {
        *lock(&self.holder)
    }

    /// Answers each overdue job, if `SWEEP_EVERY` has passed since the
    /// last sweep (`now`: nanoseconds since `epoch()`) and the jobs are
    /// free this moment. Never blocks.
    pub(crate) fn sweep(&self, now: u64) {
        let last = self.swept.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY.as_nanos() as u64 {
            return;
        }
        let holder = self.holder();
        if holder == Holder::Nothing
            || self
                .swept
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let expired: VecDeque<J> = {
            let mut jobs = match self.jobs.try_lock() {
                Ok(jobs) => jobs,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            let jobs = &mut *jobs;
            while jobs.pending.len() < self.capacity {
                match jobs.rx.try_recv() {
                    Ok(job) => jobs.pending.push_back(job),
                    Err(_) => break,
                }
            }
            let at = Instant::now();
            if !jobs.pending.iter().any(|j| j.overdue(at)) {
                return;
            }
            let (expired, kept): (VecDeque<J>, VecDeque<J>) = std::mem::take(&mut jobs.pending)
                .into_iter()
                .partition(|j| j.overdue(at));
            jobs.pending = kept;
            expired
        };
        // Answered outside the lock: a reply may take locks of its own.
        for job in expired {
            job.expire(holder);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct TestJob {
        id: u32,
        deadline: Instant,
        answers: Arc<Mutex<Vec<(u32, String)>>>,
    }

    impl Job for TestJob {
        fn overdue(&self, now: Instant) -> bool {
            self.deadline <= now
        }
        fn expire(self, holder: Holder) {
            lock(&self.answers).push((self.id, holder.explain()));
        }
    }

    fn nanos_after(d: Duration) -> u64 {
        (super::super::db::epoch().elapsed() + d).as_nanos() as u64
    }

    #[test]
    fn a_sweep_answers_only_overdue_jobs_keeps_the_order_and_respects_the_queue_bound() {
        let (tx, rx) = mpsc::channel(8);
        let backlog = Backlog::new(rx, 3);
        let answers = Arc::new(Mutex::new(Vec::new()));
        let now = Instant::now();
        let job = |id, deadline| TestJob {
            id,
            deadline,
            answers: answers.clone(),
        };
        let later = now + Duration::from_secs(60);
        for (id, deadline) in [(1, later), (2, now), (3, later), (4, now), (5, now)] {
            tx.try_send(job(id, deadline))
                .map_err(|_| ())
                .expect("room");
        }
        // Nothing holds the writer: no sweep.
        let first = nanos_after(SWEEP_EVERY * 2);
        backlog.sweep(first);
        assert!(lock(&answers).is_empty());

        backlog.held_by(Holder::Transaction { id: 7, since: now });
        backlog.sweep(first);
        // It took three from the queue (its capacity), answered job 2.
        let got: Vec<u32> = lock(&answers).iter().map(|a| a.0).collect();
        assert_eq!(got, [2]);
        assert!(lock(&answers)[0].1.contains("transaction 7"));

        // Too soon for another sweep.
        backlog.sweep(first + 1);
        assert_eq!(lock(&answers).len(), 1);

        backlog.sweep(first + SWEEP_EVERY.as_nanos() as u64);
        let got: Vec<u32> = lock(&answers).iter().map(|a| a.0).collect();
        assert_eq!(got, [2, 4]);

        // The rest stay, in order.
        let left: Vec<u32> = std::iter::from_fn(|| {
            backlog.fill(8);
            backlog.pop()
        })
        .map(|j| j.id)
        .collect();
        assert_eq!(left, [1, 3, 5]);
    }

    #[test]
    fn a_sweep_skips_its_turn_while_the_writer_holds_the_jobs() {
        let (tx, rx) = mpsc::channel(8);
        let backlog = Backlog::new(rx, 8);
        let answers = Arc::new(Mutex::new(Vec::new()));
        tx.try_send(TestJob {
            id: 1,
            deadline: Instant::now(),
            answers: answers.clone(),
        })
        .map_err(|_| ())
        .expect("room");
        backlog.held_by(Holder::Batch {
            since: Instant::now(),
        });
        let first = nanos_after(SWEEP_EVERY * 2);
        let held = lock(&backlog.jobs);
        backlog.sweep(first);
        drop(held);
        assert!(lock(&answers).is_empty(), "it did not wait for the lock");
        backlog.sweep(first + SWEEP_EVERY.as_nanos() as u64);
        assert_eq!(lock(&answers).len(), 1);
    }
}
