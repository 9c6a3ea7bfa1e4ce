//! The threads that serve connections: one current-thread tokio runtime
//! each. A connection lives on one of them, with all its tasks (its frame
//! loop, its request tasks, its reply writer), so a request wakes no other
//! I/O thread: a multi-thread runtime's work stealing woke the second
//! worker on most requests. Connections are dealt round-robin. Each thread
//! also runs short reads in place (see `engine::readers`).
//!
//! The accept loop and the daemon's own side tasks stay on the main
//! runtime. Stopping cancels each thread's runtime (dropping whatever
//! still runs on it) and joins the thread.
//!
//! Idle polling (`--idle-poll-us`): after replies go out, the thread
//! keeps polling its sockets for a while instead of sleeping in
//! `epoll_wait`, so the client's next request is read without a wake-up;
//! on a virtual machine, waking a halted vCPU costs more than a point
//! read. It polls only while every runnable thread on
//! the machine has a core (under load, polling would take CPU from the
//! clients), and stops when the time is up, so an idle daemon sleeps.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nexusd_protocol::cores::{CHECK_EVERY, Cores};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub(crate) struct IoThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

impl IoThreads {
    /// Starts `n` threads (at least one), each running a runtime until
    /// `stop`, polling for up to `idle_poll` after work (zero: never).
    pub(crate) fn start(n: usize, idle_poll: Duration) -> anyhow::Result<IoThreads> {
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("could not start a connection runtime")?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("nexusd-io-{i}"))
                .spawn(move || {
                    crate::engine::allow_inline_reads();
                    // The writer's threads answer this thread's requests
                    // through its relay, a batch per commit.
                    let relay = crate::engine::relay_for_this_thread();
                    runtime.block_on(async {
                        tokio::spawn(relay);
                        // Reads in place keep a snapshot for the reads
                        // after them; this lets it go when it grows old.
                        tokio::spawn(crate::engine::end_stale_snapshots());
                        if !idle_poll.is_zero() {
                            tokio::spawn(poll_while_busy(idle_poll));
                        }
                        stop.cancelled().await;
                    });
                    runtime.shutdown_timeout(Duration::from_secs(1));
                })
                .context("could not start a connection thread")?;
            threads.push(thread);
        }
        Ok(IoThreads {
            handles,
            next: AtomicUsize::new(0),
            stop,
            threads,
        })
    }

    /// The runtime the next connection goes to.
    pub(crate) fn pick(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    /// Ends every thread's runtime, and with it whatever still runs there.
    pub(crate) fn stop(mut self) {
        self.stop.cancel();
        for thread in std::mem::take(&mut self.threads) {
            if thread.join().is_err() {
                tracing::error!("a connection thread panicked");
            }
        }
    }
}

impl Drop for IoThreads {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// This I/O thread's idle-poll state.
struct Idle {
    /// When replies last went out.
    last_work: Cell<Option<Instant>>,
    /// Whether the poller is asleep, waiting for `wake`.
    asleep: Cell<bool>,
    wake: RefCell<Option<Arc<Notify>>>,
    /// Until when replies leave the poller asleep: it found every core
    /// taken, and looks again only then.
    busy_until: Cell<Option<Instant>>,
}

thread_local! {
    static IDLE: Idle = const {
        Idle {
            last_work: Cell::new(None),
            asleep: Cell::new(false),
            wake: RefCell::new(None),
            busy_until: Cell::new(None),
        }
    };
}

/// Replies went out from this thread: poll for a while after them, for
/// the requests that follow. Without a poller (`--idle-poll-us 0`, or not
/// an I/O thread) it does nothing, not even read the clock.
pub(crate) fn worked() {
    IDLE.with(|idle| {
        let wake = idle.wake.borrow();
        let Some(wake) = &*wake else { return };
        let now = Instant::now();
        idle.last_work.set(Some(now));
        if idle.asleep.get() && idle.busy_until.get().is_none_or(|t| now >= t) {
            idle.asleep.set(false);
            wake.notify_one();
        }
    });
}

/// Whether replies went out within `budget` before `now`.
fn recently(last_work: Option<Instant>, now: Instant, budget: Duration) -> bool {
    last_work.is_some_and(|t| now.saturating_duration_since(t) < budget)
}

/// Keeps the thread's runtime from sleeping while replies went out
/// `recently` and a core is free: a task that yields is run again only
/// after the runtime has polled its sockets without blocking, and the OS
/// gets a chance to run another thread on this core first. Otherwise it
/// sleeps until `worked`.
async fn poll_while_busy(budget: Duration) {
    let wake = Arc::new(Notify::new());
    IDLE.with(|idle| *idle.wake.borrow_mut() = Some(wake.clone()));
    let cores = Cores::new();
    if !cores.available() {
        tracing::info!("cannot read /proc/loadavg: no idle polling");
    }
    loop {
        let last_work = IDLE.with(|idle| idle.last_work.get());
        let now = Instant::now();
        let recent = recently(last_work, now, budget);
        if recent && cores.free(now) {
            std::thread::yield_now();
            tokio::task::yield_now().await;
        } else {
            let busy_until = recent.then(|| now + CHECK_EVERY);
            IDLE.with(|idle| {
                idle.busy_until.set(busy_until);
                idle.asleep.set(true);
            });
            wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_only_within_the_budget_after_replies() {
        let now = Instant::now();
        let budget = Duration::from_micros(50);
        assert!(recently(
            now.checked_sub(Duration::from_micros(10)),
            now,
            budget
        ));
        assert!(!recently(
            now.checked_sub(Duration::from_micros(60)),
            now,
            budget
        ));
        assert!(!recently(None, now, budget));
    }

    /// Replies going out wake a sleeping poller, and it sleeps again once
    /// the budget is spent.
    #[test]
    fn the_poller_wakes_on_replies_and_sleeps_after_them() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let poller = tokio::spawn(poll_while_busy(Duration::from_millis(20)));
            tokio::task::yield_now().await;
            assert!(
                IDLE.with(|idle| idle.asleep.get()),
                "asleep before any reply"
            );
            worked();
            assert!(!IDLE.with(|idle| idle.asleep.get()));
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert!(
                IDLE.with(|idle| idle.asleep.get()),
                "asleep after the budget"
            );
            poller.abort();
        });
    }
}
