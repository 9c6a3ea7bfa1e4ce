//! Whether the machine has a core free, for the two ends' brief polling.
//!
//! Both ends poll for a short while after a request or a reply instead of
//! sleeping at once (`--idle-poll-us` in the daemon, `reply_spin` in the
//! client): on a virtual machine, waking a halted vCPU costs more than a
//! point read. That only pays while every runnable thread has a core; on a
//! busy machine polling takes CPU from the threads waiting for it. The
//! count of runnable threads comes from `/proc/loadavg`, read through one
//! descriptor at most every `CHECK_EVERY`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the runnable count is read again; between reads the last
/// answer stands.
pub const CHECK_EVERY: Duration = Duration::from_micros(500);

/// Never checked yet.
const NEVER: u64 = u64::MAX;

/// Whether every runnable thread on the machine has a core. Shared by the
/// threads of a process: `&self` only.
pub struct Cores {
    loadavg: Option<File>,
    cores: usize,
    since: Instant,
    /// When the count was last read, in nanoseconds after `since`.
    checked: AtomicU64,
    free: AtomicBool,
}

impl Cores {
    /// Opens `/proc/loadavg`. Without it (see `available`) no core is ever
    /// reported free, so nothing polls.
    pub fn new() -> Cores {
        Cores {
            loadavg: File::open("/proc/loadavg").ok(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            since: Instant::now(),
            checked: AtomicU64::new(NEVER),
            free: AtomicBool::new(false),
        }
    }

    /// Whether `/proc/loadavg` could be opened.
    pub fn available(&self) -> bool {
        self.loadavg.is_some()
    }

    /// Whether every runnable thread (the caller included) has a core, as
    /// of at most `CHECK_EVERY` before `now`.
    pub fn free(&self, now: Instant) -> bool {
        let at = u64::try_from(now.saturating_duration_since(self.since).as_nanos())
            .unwrap_or(NEVER - 1);
        let checked = self.checked.load(Ordering::Relaxed);
        if checked != NEVER && at.saturating_sub(checked) < CHECK_EVERY.as_nanos() as u64 {
            return self.free.load(Ordering::Relaxed);
        }
        self.checked.store(at, Ordering::Relaxed);
        let mut buf = [0u8; 128];
        let free = self.loadavg.as_ref().is_some_and(|f| {
            f.read_at(&mut buf, 0)
                .ok()
                .and_then(|n| runnable_threads(&buf[..n]))
                .is_some_and(|running| running <= self.cores)
        });
        self.free.store(free, Ordering::Relaxed);
        free
    }
}

impl Default for Cores {
    fn default() -> Self {
        Cores::new()
    }
}

/// The runnable-thread count in the text of `/proc/loadavg`
/// ("0.30 1.15 1.21 2/140 16446": the fourth field, running/total).
fn runnable_threads(loadavg: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(loadavg).ok()?;
    let (running, _) = text.split_whitespace().nth(3)?.split_once('/')?;
    running.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_runnable_count_from_loadavg() {
        assert_eq!(runnable_threads(b"0.30 1.15 1.21 2/140 16446\n"), Some(2));
        assert_eq!(runnable_threads(b"12.00 9.1 8.0 17/2048 1"), Some(17));
        assert_eq!(runnable_threads(b"0.30 1.15"), None);
        assert_eq!(runnable_threads(b"a b c x/y z"), None);
        // This machine's own file parses, and counts this thread, read
        // again and again through one descriptor.
        let f = File::open("/proc/loadavg").expect("/proc/loadavg");
        for _ in 0..3 {
            let mut buf = [0u8; 128];
            let n = f.read_at(&mut buf, 0).expect("pread");
            assert!(
                runnable_threads(&buf[..n]).is_some_and(|n| n >= 1),
                "{:?}",
                &buf[..n]
            );
        }
    }

    /// The answer is read at most once per `CHECK_EVERY`: in between, the
    /// cached one stands whatever the file would say.
    #[test]
    fn the_answer_is_cached_between_checks() {
        let cores = Cores::new();
        assert!(cores.available());
        let now = Instant::now();
        let first = cores.free(now);
        cores.free.store(!first, Ordering::Relaxed);
        assert_eq!(
            cores.free(now + CHECK_EVERY / 2),
            !first,
            "re-read too soon"
        );
        // Past the interval it reads the file again (whose answer this
        // test cannot know), and caches that.
        let later = cores.free(now + CHECK_EVERY * 2);
        assert_eq!(cores.free(now + CHECK_EVERY * 2), later);
    }
}
