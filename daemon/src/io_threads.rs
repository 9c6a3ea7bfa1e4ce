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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

pub(crate) struct IoThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

impl IoThreads {
    /// Starts `n` threads (at least one), each running a runtime until
    /// `stop`.
    pub(crate) fn start(n: usize) -> anyhow::Result<IoThreads> {
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
