//! One multiplexed connection to the daemon: a write task that sends every
//! queued request in as few syscalls as it can, and a read task that hands
//! each reply to whoever waits for its id.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use nexusd_protocol::codec::{self, ClientCodec};
use nexusd_protocol::cores::Cores;
use nexusd_protocol::socket::{self, WriteHalf};
use nexusd_protocol::{
    Hello, HelloReply, PROTOCOL_VERSION, PartsOp, Request, RequestBody, ResponseBody,
    Rows as WireRows, TypedRows, Value, features,
};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Who waits for a request's reply.
enum Waiter {
    /// For the answer alone: a large read's parts are gathered first.
    Answer(oneshot::Sender<Result<ResponseBody>>),
    /// For each part as it comes, then the answer: a read taken at the
    /// caller's pace (`features::STREAMS`).
    Parts(mpsc::Sender<Result<ResponseBody>>),
    /// For the answer, or, should a part come first, for a channel that
    /// gives the parts as they come, then the answer: the reader turns
    /// this waiter into `Parts` at the first part (`features::STREAMS`).
    Either(oneshot::Sender<Result<Reply>>),
}

/// What a [`Waiter::Either`] hears first.
pub(crate) enum Reply {
    /// The answer, with no part before it.
    Whole(ResponseBody),
    /// The parts, the first already in it, then the answer.
    Parts(mpsc::Receiver<Result<ResponseBody>>),
}

impl Waiter {
    fn fail(self, e: Error) {
        match self {
            Waiter::Answer(tx) => {
                let _ = tx.send(Err(e));
            }
            Waiter::Either(tx) => {
                let _ = tx.send(Err(e));
            }
            Waiter::Parts(tx) => {
                let _ = tx.try_send(Err(e));
            }
        }
    }
}

/// Parts of one result the daemon sends before the client says it took
/// them (`features::STREAMS`).
pub(crate) const PARTS_AHEAD: usize = 2;

/// Requests queued for the write task per connection.
const OUTGOING_QUEUE: usize = 1024;
const WRITE_BUFFER_SOFT_LIMIT: usize = 256 * 1024;

pub(crate) struct Connection {
    /// Encoded frames for the write task.
    outgoing: mpsc::Sender<BytesMut>,
    /// The socket's write half: the write task holds it per batch; a
    /// caller that finds it free and nothing queued writes its own frame
    /// (one wakeup fewer per request: the caller need not wake the task).
    writer: Arc<tokio::sync::Mutex<WriteHalf>>,
    max_frame: u32,
    /// What the daemon announced it takes (its `Welcome`).
    features: u64,
    /// `None` once the connection is dead: nobody may wait on it any more.
    waiting: Arc<Mutex<Option<HashMap<u64, Waiter>>>>,
    dead: CancellationToken,
    /// How long a lone caller polls for its reply before it sleeps.
    reply_spin: Duration,
    /// Round trip of recent lone calls, nanoseconds, smoothed: replies
    /// slower than the spin (a durable write's fsync) are slept for.
    lone_round_trip_ns: AtomicU64,
}

impl Connection {
    /// Whether the daemon announced feature `bit` (its `Welcome`).
    pub(crate) fn daemon_has(&self, bit: u64) -> bool {
        self.features & bit != 0
    }

    /// The largest frame the daemon takes (its `Welcome`).
    pub(crate) fn max_frame(&self) -> u32 {
        self.max_frame
    }

    pub(crate) async fn open(
        path: &Path,
        client_name: &str,
        handshake: Duration,
        reply_spin: Duration,
        declared_types: bool,
    ) -> Result<Self> {
        let connect_err = |reason: String| Error::Connect {
            path: path.display().to_string(),
            reason,
        };
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| connect_err(connect_hint(path, &e)))?;
        let (rd, mut wr) = stream
            .into_std()
            .and_then(socket::split)
            .map_err(|e| connect_err(format!("could not set up the connected socket: {e}")))?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: client_name.to_owned(),
            features: if declared_types {
                features::ALL
            } else {
                features::ALL & !features::DECLTYPES
            },
        };
        let mut buf = BytesMut::new();
        codec::encode_frame(&hello, nexusd_protocol::DEFAULT_MAX_FRAME_BYTES, &mut buf)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        // A daemon at its connection limit writes its refusal and closes at
        // once, so sending may fail with the refusal already waiting to be
        // read: read it before reporting the send error.
        let sent = wr.write_all(&buf).await;

        let mut hello_frames = FramedRead::new(
            rd,
            codec::MessageCodec::<HelloReply, ()>::new(nexusd_protocol::DEFAULT_MAX_FRAME_BYTES),
        );
        let reply = tokio::time::timeout(handshake, hello_frames.next())
            .await
            .map_err(|_| {
                connect_err(format!(
                    "no handshake reply within {} ms",
                    handshake.as_millis()
                ))
            })?;
        let welcome = match reply {
            Some(Ok(HelloReply::Refused(body))) => return Err(Error::from_body(body)),
            _ if sent.is_err() => {
                let e = sent.err().map(|e| e.to_string()).unwrap_or_default();
                return Err(connect_err(format!("sending the handshake failed: {e}")));
            }
            None => {
                return Err(connect_err(
                    "the daemon closed the connection during the handshake".into(),
                ));
            }
            Some(Err(e)) => return Err(Error::Protocol(format!("bad handshake reply: {e}"))),
            Some(Ok(HelloReply::Welcome(w))) => w,
        };
        let parts = hello_frames.into_parts();
        let mut frames = FramedRead::new(parts.io, ClientCodec::new(welcome.max_frame_bytes));
        *frames.read_buffer_mut() = parts.read_buf;

        let waiting: Arc<Mutex<Option<HashMap<u64, Waiter>>>> =
            Arc::new(Mutex::new(Some(HashMap::new())));
        let dead = CancellationToken::new();
        let (outgoing, rx) = mpsc::channel(OUTGOING_QUEUE);
        let writer = Arc::new(tokio::sync::Mutex::new(wr));
        tokio::spawn(write_loop(writer.clone(), rx, dead.clone()));
        let read_waiting = waiting.clone();
        let read_dead = dead.clone();
        let read_writer = writer.clone();
        let read_outgoing = outgoing.clone();
        let paces = welcome.features & features::STREAMS != 0;
        let max_frame = welcome.max_frame_bytes;
        tokio::spawn(async move {
            // Rows sent ahead of their answers, by request id.
            let mut parts = Parts::default();
            let reason = loop {
                let frame = tokio::select! {
                    _ = read_dead.cancelled() => break "the connection failed while sending".to_owned(),
                    f = frames.next() => f,
                };
                match frame {
                    None => {
                        break "the daemon closed the connection (restarted or shut down?)"
                            .to_owned();
                    }
                    Some(Err(e)) => break format!("reading from the daemon failed: {e}"),
                    Some(Ok(resp)) => {
                        if resp.id == 0 {
                            if let ResponseBody::Error(body) = resp.body {
                                break format!(
                                    "the daemon closed the connection: {}",
                                    body.message
                                );
                            }
                            continue;
                        }
                        let id = resp.id;
                        let part = matches!(
                            resp.body,
                            ResponseBody::RowsPart(_) | ResponseBody::RowsHead(_)
                        );
                        let to = read_waiting.lock().ok().map_or(To::Nobody, |mut w| {
                            let Some(map) = w.as_mut() else {
                                return To::Nobody;
                            };
                            // One lookup: a part leaves its waiter in place,
                            // an answer takes it out.
                            let Entry::Occupied(mut waiter) = map.entry(id) else {
                                return To::Nobody;
                            };
                            if part && matches!(waiter.get(), Waiter::Either(_)) {
                                // The first part: from here on the parts
                                // go to a channel of their own.
                                let (tx, rx) = mpsc::channel(PARTS_AHEAD + 1);
                                let was =
                                    std::mem::replace(waiter.get_mut(), Waiter::Parts(tx.clone()));
                                return match was {
                                    Waiter::Either(first) => To::Switch(first, tx, rx),
                                    // Not reached: it was Either a line
                                    // above, under the same lock.
                                    _ => To::Nobody,
                                };
                            }
                            match waiter.get() {
                                Waiter::Parts(tx) if part => To::Taker(tx.clone()),
                                Waiter::Answer(_) if part => To::Gather,
                                _ => match waiter.remove() {
                                    Waiter::Parts(tx) => To::Taker(tx),
                                    Waiter::Answer(tx) => To::Answer(tx),
                                    Waiter::Either(tx) => To::Whole(tx),
                                },
                            }
                        });
                        // What to tell the daemon about this part, if it
                        // takes word (`features::STREAMS`).
                        let mut tell = None;
                        match to {
                            To::Answer(tx) => {
                                if let Some(body) = parts.take(id, resp.body) {
                                    let _ = tx.send(Ok(body));
                                }
                            }
                            To::Gather => {
                                let _ = parts.take(id, resp.body);
                                tell = Some(PartsOp::Took(1));
                            }
                            To::Whole(tx) => {
                                let _ = tx.send(Ok(Reply::Whole(resp.body)));
                            }
                            To::Switch(first, tx, rx) => {
                                // The channel is new: it has room. The
                                // caller's stream says `Took` as it takes
                                // the part; a caller gone by now drops the
                                // channel, and the next part finds it
                                // closed and stops the read.
                                let _ = tx.try_send(Ok(resp.body));
                                if first.send(Ok(Reply::Parts(rx))).is_err()
                                    && let Ok(mut w) = read_waiting.lock()
                                    && let Some(map) = w.as_mut()
                                {
                                    map.remove(&id);
                                    tell = Some(PartsOp::Stop);
                                }
                            }
                            To::Taker(tx) => {
                                // More parts than the daemon may send ahead
                                // fill the channel: the taker hears of it
                                // as the channel closing.
                                if tx.try_send(Ok(resp.body)).is_err()
                                    && part
                                    && let Ok(mut w) = read_waiting.lock()
                                    && let Some(map) = w.as_mut()
                                {
                                    map.remove(&id);
                                    tell = Some(PartsOp::Stop);
                                }
                            }
                            // A part nobody waits for (its caller gave up)
                            // is dropped, and the rest is not wanted;
                            // an answer ends its gathered parts.
                            To::Nobody if part => tell = Some(PartsOp::Stop),
                            To::Nobody => {
                                let _ = parts.take(id, resp.body);
                            }
                        }
                        // Written at once when the socket is free: a
                        // blocking client's runtime drains the write queue
                        // only inside its next call. When it is not, whoever
                        // writes drains the queue; this task never waits
                        // on a write, so replies are always read.
                        if let Some(op) = tell
                            && paces
                            && let Some(frame) = parts_frame(id, op, max_frame)
                        {
                            let sent = match read_writer.try_lock() {
                                Ok(wr) => write_with(wr, &read_dead, &frame).await,
                                Err(_) => read_outgoing.send(frame).await.is_ok(),
                            };
                            if !sent {
                                break "the connection failed while sending".to_owned();
                            }
                        }
                    }
                }
            };
            read_dead.cancel();
            let orphans = read_waiting.lock().ok().and_then(|mut w| w.take());
            for (_, w) in orphans.into_iter().flatten() {
                w.fail(Error::Disconnected {
                    message: format!(
                        "{reason}; the request was sent but its outcome is unknown: check before \
                         retrying a write"
                    ),
                    outcome_unknown: true,
                });
            }
        });
        Ok(Connection {
            outgoing,
            writer,
            max_frame: welcome.max_frame_bytes,
            features: welcome.features,
            waiting,
            dead,
            reply_spin,
            lone_round_trip_ns: AtomicU64::new(0),
        })
    }

    pub(crate) fn is_alive(&self) -> bool {
        !self.dead.is_cancelled()
    }

    /// Sends a request and waits for its reply, at most `wait`.
    pub(crate) async fn call(&self, req: Request, wait: Duration) -> Result<ResponseBody> {
        self.try_call(req, wait).await.map_err(|e| match e {
            CallError::NotSent(_) => not_sent(),
            CallError::Failed(e) => e,
        })
    }

    /// `call`, but a request that never left comes back: the connection
    /// was found dead first, and nothing of it reached the daemon.
    pub(crate) async fn try_call(
        &self,
        req: Request,
        wait: Duration,
    ) -> std::result::Result<ResponseBody, CallError> {
        let (tx, rx) = oneshot::channel();
        self.exchange(req, Waiter::Answer(tx), rx, wait).await
    }

    /// `try_call` for a read whose parts, if it comes in parts, the caller
    /// takes as they come (`features::STREAMS`): the answer, or a channel
    /// with the first part in it.
    pub(crate) async fn try_call_either(
        &self,
        req: Request,
        wait: Duration,
    ) -> std::result::Result<Reply, CallError> {
        let (tx, rx) = oneshot::channel();
        self.exchange(req, Waiter::Either(tx), rx, wait).await
    }

    /// Sends `req` with `waiter` as its replies' taker, and waits for the
    /// first thing `waiter` hears, on `rx`, at most `wait`.
    async fn exchange<T>(
        &self,
        req: Request,
        waiter: Waiter,
        rx: oneshot::Receiver<Result<T>>,
        wait: Duration,
    ) -> std::result::Result<T, CallError> {
        let id = req.id;
        let others_out = self.send(req, waiter).await?;
        let sent = Instant::now();
        let spin = if others_out {
            Duration::ZERO
        } else {
            let spin = spin_for(
                self.reply_spin,
                self.lone_round_trip_ns.load(Ordering::Relaxed),
            );
            // Polling on a machine whose cores are all taken would take one
            // from the daemon, or from this process's other threads.
            if !spin.is_zero() && !cores().free(sent) {
                Duration::ZERO
            } else {
                spin
            }
        };
        let answer = match tokio::time::timeout(wait, self.reply(rx, spin)).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(dropped_while_out()),
            Err(_) => {
                self.forget(id);
                Err(no_reply_within(wait))
            }
        };
        if !others_out {
            let took = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let smoothed = smooth(self.lone_round_trip_ns.load(Ordering::Relaxed), took);
            self.lone_round_trip_ns.store(smoothed, Ordering::Relaxed);
        }
        answer.map_err(CallError::Failed)
    }

    /// Sends `req` and returns once it is on its way, its answer to be
    /// taken later with [`Connection::answer`]: for a caller with other
    /// work to do meanwhile.
    pub(crate) async fn send_now(&self, req: Request) -> std::result::Result<InFlight, CallError> {
        let id = req.id;
        let (tx, rx) = oneshot::channel();
        self.send(req, Waiter::Answer(tx)).await?;
        Ok(InFlight { id, rx })
    }

    /// The answer to a request `send_now` sent, waited for at most `wait`
    /// from now.
    pub(crate) async fn answer(&self, flight: InFlight, wait: Duration) -> Result<ResponseBody> {
        match tokio::time::timeout(wait, flight.rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(dropped_while_out()),
            Err(_) => {
                self.forget(flight.id);
                Err(no_reply_within(wait))
            }
        }
    }

    /// Encodes `req`, notes `waiter` as the one its replies go to, and
    /// sends it. Returns whether other requests were out at the time.
    async fn send(&self, req: Request, waiter: Waiter) -> std::result::Result<bool, CallError> {
        let id = req.id;
        // Encoded here, in the caller's task, so a request too large to send
        // fails alone and the write task only copies bytes.
        let mut frame = BytesMut::new();
        codec::encode_frame(&req, self.max_frame, &mut frame).map_err(|e| {
            CallError::Failed(match e {
                codec::CodecError::FrameTooLarge { .. } => {
                    Error::TooLarge(format!("the request was not sent: {e}"))
                }
                e => Error::Protocol(format!("the request was not sent: {e}")),
            })
        })?;
        let others_out = {
            let mut guard = self.waiting.lock().map_err(|_| {
                CallError::Failed(Error::Protocol("client state poisoned by a panic".into()))
            })?;
            let Some(map) = guard.as_mut() else {
                return Err(CallError::NotSent(Box::new(req)));
            };
            map.insert(id, waiter);
            map.len() > 1
        };
        // A lone caller writes its own frame: no task to wake. With other
        // requests out on a multi-thread runtime, their callers are mostly
        // woken together (their replies come in one read), so the frame
        // goes to the write task, which sends all that they queued in one
        // syscall. On a current-thread runtime shared by blocking threads
        // that would wake another thread instead, so each writes its own.
        let coalesce = others_out && multi_thread();
        let idle = self.outgoing.capacity() == self.outgoing.max_capacity();
        match self.writer.try_lock() {
            Ok(mut wr) if idle && !coalesce => {
                // Cancelled half-way, this future would leave half a frame
                // on the wire: the guard then kills the connection.
                let guard = KillUnlessDone(&self.dead, false);
                let written = wr.write_all(&frame).await;
                guard.done();
                if written.is_err() {
                    // A write that failed part-way left half a frame, which
                    // the daemon drops with the connection: not applied.
                    self.forget(id);
                    self.dead.cancel();
                    return Err(CallError::NotSent(Box::new(req)));
                }
            }
            _ => {
                if self.outgoing.send(frame).await.is_err() {
                    self.forget(id);
                    return Err(CallError::NotSent(Box::new(req)));
                }
            }
        }
        Ok(others_out)
    }

    /// Sends a read whose parts the caller takes one by one
    /// (`features::STREAMS`): each part, then the answer, comes on the
    /// channel returned.
    pub(crate) async fn send_paced(
        &self,
        req: Request,
    ) -> std::result::Result<mpsc::Receiver<Result<ResponseBody>>, CallError> {
        // The parts the daemon may send ahead, and the answer.
        let (tx, rx) = mpsc::channel(PARTS_AHEAD + 1);
        self.send(req, Waiter::Parts(tx)).await?;
        Ok(rx)
    }

    /// Tells the daemon `op` about request `of`'s parts, at once: not
    /// through the write queue, which a blocking client's runtime drains
    /// only inside its next call.
    pub(crate) async fn tell_parts(&self, of: u64, op: PartsOp) {
        if let Some(frame) = parts_frame(of, op, self.max_frame) {
            write_with(self.writer.lock().await, &self.dead, &frame).await;
        }
    }

    /// `tell_parts` without waiting or a runtime (a taker dropped): false
    /// when the write queue had no room.
    pub(crate) fn tell_parts_now(&self, of: u64, op: PartsOp) -> bool {
        parts_frame(of, op, self.max_frame).is_some_and(|f| self.outgoing.try_send(f).is_ok())
    }

    /// Waits for a reply. A lone caller first polls for up to `spin`,
    /// yielding to the runtime (which polls the socket without sleeping)
    /// and to the OS between looks: a reply that comes within tens of
    /// microseconds is then picked up without the thread going to sleep
    /// and being woken, which on a virtual machine costs more than the
    /// read itself. It stops polling as soon as other requests are out
    /// on the connection, whose replies keep the runtime busy anyway.
    async fn reply<T>(
        &self,
        mut rx: oneshot::Receiver<T>,
        spin: Duration,
    ) -> std::result::Result<T, oneshot::error::RecvError> {
        if !spin.is_zero() {
            let until = Instant::now() + spin;
            loop {
                let ready = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(match Pin::new(&mut rx).poll(cx) {
                        std::task::Poll::Ready(r) => Some(r),
                        std::task::Poll::Pending => None,
                    })
                })
                .await;
                if let Some(r) = ready {
                    return r;
                }
                if Instant::now() >= until || self.others_out() {
                    break;
                }
                std::thread::yield_now();
                tokio::task::yield_now().await;
            }
        }
        rx.await
    }

    /// Whether more than one request is out on this connection.
    fn others_out(&self) -> bool {
        self.waiting
            .lock()
            .ok()
            .is_none_or(|w| w.as_ref().is_none_or(|m| m.len() > 1))
    }

    /// Queues a request whose answer nobody waits for, without blocking
    /// and without a runtime (a transaction dropped unfinished sends its
    /// rollback this way). Returns whether it was queued.
    pub(crate) fn send_detached(&self, req: &Request) -> bool {
        let mut frame = BytesMut::new();
        codec::encode_frame(req, self.max_frame, &mut frame).is_ok()
            && self.outgoing.try_send(frame).is_ok()
    }

    pub(crate) fn forget(&self, id: u64) {
        if let Ok(mut guard) = self.waiting.lock()
            && let Some(map) = guard.as_mut()
        {
            map.remove(&id);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.dead.cancel();
    }
}

/// A request on its way, whose answer nobody has taken yet
/// ([`Connection::send_now`]). Dropped, its answer is dropped when it
/// comes.
pub(crate) struct InFlight {
    id: u64,
    rx: oneshot::Receiver<Result<ResponseBody>>,
}

fn dropped_while_out() -> Error {
    Error::Disconnected {
        message: "the connection was dropped while the request was out; its outcome is unknown"
            .into(),
        outcome_unknown: true,
    }
}

fn no_reply_within(wait: Duration) -> Error {
    Error::Disconnected {
        message: format!(
            "no reply within {} ms, though the daemon answers every request by its deadline; it \
             may be stopped or wedged. The outcome is unknown",
            wait.as_millis()
        ),
        outcome_unknown: true,
    }
}

/// The rows a large result sends ahead of its answer
/// (`ResponseBody::RowsPart`), held until the answer comes.
#[derive(Default)]
struct Parts(HashMap<u64, Vec<Vec<Value>>>);

impl Parts {
    /// `body` for request `id`: `None` when it is a part, kept here; else
    /// the answer, with the rows of its parts put before its own. An answer
    /// that is not rows (an error) voids the parts.
    fn take(&mut self, id: u64, mut body: ResponseBody) -> Option<ResponseBody> {
        // A head's columns come again with the answer.
        if let ResponseBody::RowsPart(rows)
        | ResponseBody::RowsHead(TypedRows {
            rows: WireRows { rows, .. },
            ..
        }) = body
        {
            self.0.entry(id).or_default().extend(rows);
            return None;
        }
        // Most answers come with no parts before them: no hashing then.
        if self.0.is_empty() {
            return Some(body);
        }
        if let Some(mut ahead) = self.0.remove(&id)
            && let Some(rows) = body.rows_mut()
        {
            ahead.append(rows);
            *rows = ahead;
        }
        Some(body)
    }
}

/// Where the reader hands a reply.
enum To {
    /// The answer its caller waits for.
    Answer(oneshot::Sender<Result<ResponseBody>>),
    /// A part of an answer its caller waits for whole: gathered here.
    Gather,
    /// A part, or the answer, of a read taken at its caller's pace.
    Taker(mpsc::Sender<Result<ResponseBody>>),
    /// The answer, with no part before it, for a caller that would have
    /// taken parts.
    Whole(oneshot::Sender<Result<Reply>>),
    /// The first part of a read whose caller takes parts as they come:
    /// its waiter, and the channel that now has its parts.
    Switch(
        oneshot::Sender<Result<Reply>>,
        mpsc::Sender<Result<ResponseBody>>,
        mpsc::Receiver<Result<ResponseBody>>,
    ),
    /// Nobody waits for it any more.
    Nobody,
}

/// The frame that tells the daemon `op` about request `of`'s parts.
pub(crate) fn parts_frame(of: u64, op: PartsOp, max_frame: u32) -> Option<BytesMut> {
    let req = Request {
        id: 0,
        db: nexusd_protocol::DEFAULT_DB.to_owned(),
        timeout_ms: 0,
        body: RequestBody::Parts { of, op },
    };
    let mut frame = BytesMut::new();
    codec::encode_frame(&req, max_frame, &mut frame).ok()?;
    Some(frame)
}

/// Why `try_call` failed.
pub(crate) enum CallError {
    /// Before the request left: here it is, to go on another connection.
    NotSent(Box<Request>),
    /// After it left, or for a reason another connection would not change.
    Failed(Error),
}

pub(crate) fn not_sent() -> Error {
    Error::Disconnected {
        message: "the connection had already failed; the request was not sent".into(),
        outcome_unknown: false,
    }
}

/// Why connecting to `path` failed with `e`, and what to do: a path that is
/// a database rather than the daemon's socket (a program moving from
/// SQLite may pass its file) says so.
fn connect_hint(path: &Path, e: &std::io::Error) -> String {
    let shown = path.display();
    let is_file = nexusd_protocol::paths::not_a_socket(path);
    let looks_like_a_database = path.to_str().is_some_and(|p| {
        p == ":memory:"
            || [".db", ".sqlite", ".sqlite3", ".db3"]
                .iter()
                .any(|ext| p.ends_with(ext))
    });
    if is_file || looks_like_a_database {
        format!(
            "{e}; {shown} is not a nexusd socket{}, and no running daemon serves it. nexusd \
             serves the database file itself: start it with `nexusd serve --db FILE`, then \
             connect to FILE or to the daemon's socket (no argument connects to the default \
             one)",
            if is_file {
                " but a file (a database?)"
            } else {
                " (it reads like a database path)"
            }
        )
    } else {
        format!("{e}; is the daemon running? Start it with `nexusd serve --socket {shown}`")
    }
}

/// How long a lone caller polls for its reply: `spin`, unless recent lone
/// round trips took over twice that, when polling would only burn CPU.
fn spin_for(spin: Duration, lone_round_trip_ns: u64) -> Duration {
    let limit = u64::try_from(spin.as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_mul(2);
    if lone_round_trip_ns <= limit {
        spin
    } else {
        Duration::ZERO
    }
}

/// Whether the machine has a core free, read once per process.
fn cores() -> &'static Cores {
    static CORES: OnceLock<Cores> = OnceLock::new();
    CORES.get_or_init(Cores::new)
}

/// An exponentially weighted average, an eighth for the new sample.
fn smooth(average: u64, sample: u64) -> u64 {
    average - average / 8 + sample / 8
}

/// Whether this runs on a multi-thread runtime, where frames are combined.
fn multi_thread() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Cancels the connection when dropped before `done`.
struct KillUnlessDone<'a>(&'a CancellationToken, bool);

impl KillUnlessDone<'_> {
    fn done(mut self) {
        self.1 = true;
    }
}

impl Drop for KillUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancel();
        }
    }
}

/// Writes `frame` to the socket now, past the write queue: false, and the
/// connection dead, if that failed.
async fn write_with(
    mut wr: tokio::sync::MutexGuard<'_, WriteHalf>,
    dead: &CancellationToken,
    frame: &[u8],
) -> bool {
    // Cancelled half-way, this would leave half a frame on the wire.
    let guard = KillUnlessDone(dead, false);
    let written = wr.write_all(frame).await;
    guard.done();
    if written.is_err() {
        dead.cancel();
    }
    written.is_ok()
}

async fn write_loop(
    writer: Arc<tokio::sync::Mutex<WriteHalf>>,
    mut rx: mpsc::Receiver<BytesMut>,
    dead: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let coalesce = multi_thread();
    loop {
        let frame = tokio::select! {
            _ = dead.cancelled() => break,
            r = rx.recv() => match r { Some(r) => r, None => break },
        };
        buf.extend_from_slice(&frame);
        if coalesce {
            // The caller that queued this frame woke this task into the
            // LIFO slot, ahead of the callers woken with it: let them
            // queue theirs first, or each would go out alone.
            tokio::task::yield_now().await;
        }
        while buf.len() < WRITE_BUFFER_SOFT_LIMIT {
            match rx.try_recv() {
                Ok(frame) => buf.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if writer.lock().await.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
    }
    dead.cancel();
    let _ = writer.lock().await.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_call_polls_unless_recent_round_trips_were_slow() {
        let spin = Duration::from_micros(50);
        assert_eq!(spin_for(spin, 0), spin);
        assert_eq!(spin_for(spin, 100_000), spin);
        assert_eq!(spin_for(spin, 100_001), Duration::ZERO);
        assert_eq!(spin_for(Duration::ZERO, 0), Duration::ZERO);
    }

    /// Fsync-bound writes (1 ms) push the average over the limit within a
    /// few calls; fast reads bring it back under.
    #[test]
    fn the_round_trip_average_follows_the_calls() {
        let spin = Duration::from_micros(50);
        let mut avg = 0;
        for _ in 0..4 {
            avg = smooth(avg, 1_000_000);
        }
        assert!(spin_for(spin, avg).is_zero(), "{avg}");
        for _ in 0..30 {
            avg = smooth(avg, 15_000);
        }
        assert_eq!(spin_for(spin, avg), spin, "{avg}");
    }
}
