//! How replies cross back from the writer's threads (the writer, the
//! syncer) to the I/O threads their requests came from: a batch per I/O
//! thread instead of a wake per reply.
//!
//! Completing a oneshot from another thread wakes its task through the
//! owning runtime's unpark, which is an eventfd write: one syscall per
//! reply, measured at one `write` per insert under load. Each I/O thread
//! instead runs a relay task; a commit's replies are grouped by the thread
//! their request came from and sent to its relay as one message (one
//! wake), and the relay hands each on there: a [`Reply::Sink`] (a plain
//! write or query) straight to its connection's write queue, a
//! [`Reply::Waiter`] to the task awaiting it, where waking a local task is
//! a queue push.

use std::cell::RefCell;
use std::future::Future;

use nexusd_protocol::{ErrorBody, ErrorKind, ResponseBody};
use tokio::sync::{mpsc, oneshot};

/// Batches queued per I/O thread; when full, replies go directly (each a
/// wake), so a busy I/O thread never holds the syncer up.
const RELAY_QUEUE: usize = 1024;

/// Where the answer to a request goes.
pub(crate) enum Reply {
    /// A task awaits it.
    Waiter(oneshot::Sender<ResponseBody>),
    /// Nobody awaits it: the sink passes it on (a session queues it for its
    /// connection), with no task to wake.
    Sink(Sink),
}

impl Reply {
    /// Sends `body`; `Err` when a waiter is no longer there to take it.
    pub(crate) fn send(self, body: ResponseBody) -> Result<(), ResponseBody> {
        match self {
            Reply::Waiter(tx) => tx.send(body),
            Reply::Sink(sink) => {
                sink.give(body);
                Ok(())
            }
        }
    }
}

/// A callback that takes a request's answer. Dropped without one (the
/// writer stopped with the request still queued), it still gets one, so
/// every request is answered.
pub(crate) struct Sink(Option<Box<dyn FnOnce(ResponseBody) + Send>>);

impl Sink {
    pub(crate) fn new(f: impl FnOnce(ResponseBody) + Send + 'static) -> Sink {
        Sink(Some(Box::new(f)))
    }

    pub(crate) fn give(mut self, body: ResponseBody) {
        if let Some(f) = self.0.take() {
            f(body);
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(stopped_before_answering());
        }
    }
}

/// The answer to a request the writer dropped unanswered.
pub(crate) fn stopped_before_answering() -> ResponseBody {
    ResponseBody::Error(ErrorBody::new(
        ErrorKind::ShuttingDown,
        "the writer has stopped (the daemon is shutting down or failed); not applied",
    ))
}

/// One reply, ready to go.
pub(crate) struct Ack {
    pub(crate) reply: Reply,
    pub(crate) body: ResponseBody,
    /// The relay of the I/O thread the request came from, if it came from
    /// one.
    pub(crate) relay: Option<Relay>,
}

type Batch = Vec<(Reply, ResponseBody)>;

/// An I/O thread's relay.
#[derive(Clone)]
pub(crate) struct Relay(mpsc::Sender<Batch>);

thread_local! {
    static HERE: RefCell<Option<Relay>> = const { RefCell::new(None) };
}

/// Makes this thread's requests come back through a relay; returns the
/// relay task, for the thread's runtime to run.
pub(crate) fn relay_for_this_thread() -> impl Future<Output = ()> + Send + 'static {
    let (tx, mut rx) = mpsc::channel::<Batch>(RELAY_QUEUE);
    HERE.with(|h| *h.borrow_mut() = Some(Relay(tx)));
    async move {
        while let Some(batch) = rx.recv().await {
            for (reply, body) in batch {
                let _ = reply.send(body);
            }
        }
    }
}

/// The relay of the thread running now, if it has one.
pub(crate) fn here() -> Option<Relay> {
    HERE.with(|h| h.borrow().clone())
}

/// Sends every reply: one message per relay, directly for the rest.
pub(crate) fn deliver(acks: Vec<Ack>) {
    let mut groups: Vec<(Relay, Batch)> = Vec::new();
    for Ack { reply, body, relay } in acks {
        match relay {
            Some(relay) => match groups.iter_mut().find(|(r, _)| r.0.same_channel(&relay.0)) {
                Some((_, batch)) => batch.push((reply, body)),
                None => groups.push((relay, vec![(reply, body)])),
            },
            None => {
                let _ = reply.send(body);
            }
        }
    }
    for (relay, batch) in groups {
        if let Err(
            mpsc::error::TrySendError::Full(batch) | mpsc::error::TrySendError::Closed(batch),
        ) = relay.0.try_send(batch)
        {
            for (reply, body) in batch {
                let _ = reply.send(body);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replies through a relay reach their receivers, as do replies with
    /// none; a relay whose task is gone falls back to direct sends.
    #[test]
    fn every_reply_arrives_relayed_or_not() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let relay_task = relay_for_this_thread();
        let relay = here().expect("a relay on this thread");
        let (a, a_rx) = oneshot::channel();
        let (b, b_rx) = oneshot::channel();
        let (c, c_rx) = oneshot::channel();
        deliver(vec![
            Ack {
                reply: Reply::Waiter(a),
                body: ResponseBody::Ok,
                relay: Some(relay.clone()),
            },
            Ack {
                reply: Reply::Waiter(b),
                body: ResponseBody::Begun(2),
                relay: Some(relay.clone()),
            },
            Ack {
                reply: Reply::Waiter(c),
                body: ResponseBody::Begun(3),
                relay: None,
            },
        ]);
        rt.block_on(async {
            tokio::spawn(relay_task);
            assert_eq!(a_rx.await.expect("a"), ResponseBody::Ok);
            assert_eq!(b_rx.await.expect("b"), ResponseBody::Begun(2));
            assert_eq!(c_rx.await.expect("c"), ResponseBody::Begun(3));
        });
        drop(rt);
        // The relay task is gone with its runtime: replies still arrive.
        let (d, mut d_rx) = oneshot::channel();
        deliver(vec![Ack {
            reply: Reply::Waiter(d),
            body: ResponseBody::Ok,
            relay: Some(relay),
        }]);
        assert_eq!(d_rx.try_recv().expect("d"), ResponseBody::Ok);
    }

    /// A sink gets its answer through the relay like a waiter, and one
    /// dropped unanswered still answers, saying nothing was applied.
    #[test]
    fn a_sink_is_answered_once_even_when_dropped() {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = |got: &std::sync::Arc<std::sync::Mutex<Vec<ResponseBody>>>| {
            let got = got.clone();
            Sink::new(move |body| got.lock().expect("lock").push(body))
        };
        deliver(vec![Ack {
            reply: Reply::Sink(sink(&got)),
            body: ResponseBody::Begun(7),
            relay: None,
        }]);
        drop(Reply::Sink(sink(&got)));
        let got = got.lock().expect("lock");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], ResponseBody::Begun(7));
        match &got[1] {
            ResponseBody::Error(e) => {
                assert_eq!(e.kind, ErrorKind::ShuttingDown);
                assert!(e.message.contains("not applied"), "{}", e.message);
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
