//! How the daemon learns to stop, and tells every task: one signal thread
//! (signal-hook) turns SIGTERM and SIGINT into a graceful shutdown and
//! SIGHUP into a reload request; `Shutdown` fans the stop out on a `watch`
//! channel that the accept loop, every session and the side tasks
//! subscribe to.

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use tokio::sync::{mpsc, watch};

use crate::systemd::Notifier;

/// The graceful shutdown's trigger and its subscribers. Clones share one
/// channel.
#[derive(Clone)]
pub(crate) struct Shutdown {
    tx: watch::Sender<bool>,
    notifier: Arc<Notifier>,
}

impl Shutdown {
    pub(crate) fn new(notifier: Arc<Notifier>) -> Shutdown {
        Shutdown {
            tx: watch::Sender::new(false),
            notifier,
        }
    }

    /// Starts the drain: tells systemd (STOPPING=1) and every subscriber.
    /// A second call changes nothing.
    pub(crate) fn begin(&self) {
        if !self.tx.send_replace(true) {
            self.notifier.stopping();
        }
    }

    /// A receiver whose value turns true when the drain begins.
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

/// The signal thread and its handle; `stop` ends it.
pub(crate) struct SignalThread {
    handle: Handle,
    thread: JoinHandle<()>,
}

impl SignalThread {
    /// SIGTERM and SIGINT begin the drain; a second one ends the process at
    /// once (the WAL keeps every acknowledged commit either way). SIGHUP
    /// sends a reload request on `reload`.
    pub(crate) fn spawn(
        shutdown: Shutdown,
        reload: mpsc::Sender<()>,
    ) -> anyhow::Result<SignalThread> {
        let mut signals =
            Signals::new([SIGTERM, SIGINT, SIGHUP]).context("could not install signal handlers")?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("nexusd-signals".into())
            .spawn(move || {
                let mut seen = 0;
                for sig in signals.forever() {
                    if sig == SIGHUP {
                        tracing::info!("SIGHUP: reloading the config");
                        let _ = reload.try_send(());
                        continue;
                    }
                    seen += 1;
                    if seen == 1 {
                        tracing::info!(signal = sig, "shutting down: draining queued requests");
                        shutdown.begin();
                    } else {
                        tracing::warn!(signal = sig, "second signal: exiting without draining");
                        std::process::exit(1);
                    }
                }
            })
            .context("could not start the signal thread")?;
        Ok(SignalThread { handle, thread })
    }

    pub(crate) fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}
