//! The writer's heartbeat while SQLite works where it calls nothing back.
//!
//! The watchdog reads the writer's heartbeat, which SQLite's progress
//! handler keeps while a statement runs. A checkpoint runs no statement: it
//! copies the WAL into the database file and syncs it, and for a big WAL
//! (after a bulk load) that takes seconds, more than the watchdog allows.
//! Killed there, the daemon would find the same WAL at its next start and
//! be killed again in the same checkpoint. So a thread of its own beats
//! the heartbeat while the writer is in such a call, for as long as the
//! work could take at a slow disk's pace and no longer: a disk that hangs
//! still stops the beats, and the watchdog still sees it.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::guard::Heartbeat;
use super::parts::BEAT_EVERY;

/// Beats a heartbeat from its own thread while its owner is in a call that
/// SQLite gives no callback in.
pub(crate) struct Vigil {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    watch: Mutex<Watch>,
    changed: Condvar,
}

enum Watch {
    /// Nothing to beat for: the thread sleeps until told.
    Idle,
    /// The owner is in `what` since `since`; beat until `until`.
    Beating {
        what: &'static str,
        since: Instant,
        until: Instant,
    },
    Stopping,
}

impl Vigil {
    /// Starts the thread that beats `heartbeat` (`name`: the thread's
    /// name).
    pub(crate) fn spawn(name: &str, heartbeat: Heartbeat) -> std::io::Result<Vigil> {
        let shared = Arc::new(Shared {
            watch: Mutex::new(Watch::Idle),
            changed: Condvar::new(),
        });
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || keep(&theirs, &heartbeat))?;
        Ok(Vigil {
            shared,
            thread: Some(thread),
        })
    }

    /// Runs `work` (`what`: what it is, for the log), beating the pulse
    /// every `BEAT_EVERY` meanwhile, for `bound` at most.
    pub(crate) fn over<T>(
        &self,
        what: &'static str,
        bound: Duration,
        work: impl FnOnce() -> T,
    ) -> T {
        let now = Instant::now();
        self.set(Watch::Beating {
            what,
            since: now,
            until: now + bound,
        });
        let out = work();
        self.set(Watch::Idle);
        out
    }

    fn set(&self, watch: Watch) {
        *lock(&self.shared.watch) = watch;
        self.shared.changed.notify_one();
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        self.set(Watch::Stopping);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the writer's vigil thread panicked");
        }
    }
}

fn lock(watch: &Mutex<Watch>) -> MutexGuard<'_, Watch> {
    // The state is a plain value, whole after any panic.
    watch.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The thread: beats while told to, up to the bound, and says once when a
/// call outlasts it.
fn keep(shared: &Shared, heartbeat: &Heartbeat) {
    let mut watch = lock(&shared.watch);
    let mut warned_for = None;
    loop {
        let wait = match *watch {
            Watch::Stopping => return,
            Watch::Idle => None,
            Watch::Beating { what, since, until } => {
                if Instant::now() < until {
                    heartbeat.beat();
                    Some(BEAT_EVERY)
                } else {
                    if warned_for != Some(since) {
                        warned_for = Some(since);
                        tracing::error!(
                            work = what,
                            running_ms = since.elapsed().as_millis() as u64,
                            "the writer's {what} has run past the longest it should take even \
                             on a slow disk; the writer no longer shows a heartbeat, so a \
                             systemd watchdog will restart the daemon. Check the disk (dmesg, \
                             iostat)"
                        );
                    }
                    None
                }
            }
        };
        watch = match wait {
            Some(wait) => {
                shared
                    .changed
                    .wait_timeout(watch, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => shared
                .changed
                .wait(watch)
                .unwrap_or_else(PoisonError::into_inner),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::db::epoch;
    use crate::engine::guard::Pulse;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn age(pulse: &AtomicU64) -> Duration {
        Duration::from_nanos(
            (epoch().elapsed().as_nanos() as u64).saturating_sub(pulse.load(Ordering::Relaxed)),
        )
    }

    #[test]
    fn beats_while_the_work_runs_and_stops_after_it_or_its_bound() {
        let pulse: Pulse = Arc::new(AtomicU64::new(0));
        let ticks = Arc::new(AtomicU64::new(0));
        let counted = ticks.clone();
        let tick = move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        };
        let heartbeat = Heartbeat::new(pulse.clone(), Some(Arc::new(tick)));
        let vigil = Vigil::spawn("test-vigil", heartbeat).expect("spawn");
        // Work of four beats: the heartbeat stays fresh through it, and each
        // beat ticks (the writer's backlog is swept).
        vigil.over("checkpoint", Duration::from_secs(60), || {
            for _ in 0..8 {
                std::thread::sleep(BEAT_EVERY / 2);
                assert!(age(&pulse) < BEAT_EVERY * 3, "stale: {:?}", age(&pulse));
            }
        });
        let ticked = ticks.load(Ordering::Relaxed);
        assert!(ticked >= 2, "{ticked} ticks");
        // Done: no more beats.
        std::thread::sleep(BEAT_EVERY * 3);
        assert!(age(&pulse) >= BEAT_EVERY * 3);
        assert_eq!(
            ticks.load(Ordering::Relaxed),
            ticked,
            "no tick after the work"
        );
        // Past its bound, the work no longer shows as alive.
        vigil.over("checkpoint", BEAT_EVERY, || {
            std::thread::sleep(BEAT_EVERY * 5);
            assert!(age(&pulse) >= BEAT_EVERY * 2, "beat past the bound");
        });
        drop(vigil);
    }
}
