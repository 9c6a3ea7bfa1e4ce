//! One client's session: the handshake, then frames in and replies out.
//!
//! Reading and writing are separate tasks. Each request holds one of the
//! connection's in-flight permits until it is answered (see `dispatch`: most
//! need no task of their own); when all are taken the connection stops
//! reading, which is its backpressure. Replies go through a bounded channel
//! to the write task, which writes every reply that is ready in one
//! syscall. A client that stops reading its replies stalls only its own
//! write task, which closes the connection after `--write-stall-timeout-ms`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use nexusd_protocol::codec::{self, CodecError, FrameDecoder};
use nexusd_protocol::socket::{self, ReadHalf, WriteHalf};
use nexusd_protocol::{
    ErrorBody, ErrorKind, Hello, HelloReply, PROTOCOL_VERSION, Request, RequestBody, Response,
    ResponseBody, Welcome, features,
};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use std::sync::atomic::Ordering;

use crate::access::Peer;
use crate::context::Context;
use crate::dispatch::{self, Outgoing};
use crate::engine::Owner;

/// Replies encoded into one buffer before it is written.
const WRITE_BUFFER_SOFT_LIMIT: usize = 256 * 1024;
/// How long a refusal may take to write before the connection is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a draining connection checks whether its requests are done.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// A draining connection closes once its requests are answered and the
/// client has sent nothing for this long, so requests already on their way
/// get a clean "shutting down, not applied" instead of a reset.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// ...and at the latest this long after the drain began.
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// Serves one accepted connection until the client leaves, the connection
/// fails, or the drain ends it.
/// Serves one connection, from the peer `server` read off its socket at
/// admission (credentials and groups, looked up once).
pub(crate) async fn serve(stream: UnixStream, ctx: Arc<Context>, peer_cred: Peer) {
    let config = ctx.config();
    let max_frame = config.max_frame_bytes;
    let peer = format!(
        "pid {} uid {}",
        peer_cred.pid.map_or_else(|| "?".into(), |p| p.to_string()),
        peer_cred.uid
    );
    // Off tokio's registration (readable and writable) onto one for
    // reading only: see `nexusd_protocol::socket`.
    let (rd, mut wr) = match stream.into_std().and_then(socket::split) {
        Ok(halves) => halves,
        Err(e) => {
            tracing::warn!(peer, error = %e, "could not set up a connection's socket; closing it");
            return;
        }
    };
    let mut frames = FramedRead::new(
        rd,
        FrameDecoder {
            max_frame_bytes: max_frame,
        },
    );

    let hello = match handshake(&mut frames, &ctx, &peer).await {
        Ok(hello) => hello,
        Err(refusal) => {
            ctx.metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            send_refusal(&mut wr, refusal, max_frame).await;
            return;
        }
    };
    if ctx.role_of(&peer_cred).is_none() {
        ctx.metrics
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        let config = config
            .config_path()
            .map_or("the config file".to_owned(), |p| p.display().to_string());
        tracing::warn!(
            peer,
            client = hello.client_name,
            "connection refused: no role for this uid"
        );
        let refusal = ErrorBody::new(
            ErrorKind::Forbidden,
            format!(
                "uid {} has no role on this nexusd, so it may not connect (it needs at least the \
                 read role). An admin can grant one in the [access] table of {config} (user:NAME, \
                 group:NAME, uid:N or gid:N) and run `nexusd ctl reload`; by default the socket \
                 file's group may read and write",
                peer_cred.uid
            ),
        );
        send_refusal(&mut wr, refusal, max_frame).await;
        return;
    }
    let client = format!("{:?} ({peer})", hello.client_name);
    let welcome = HelloReply::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        features: features::ALL,
        max_frame_bytes: max_frame,
        max_in_flight: config.max_in_flight,
    });
    let mut buf = BytesMut::new();
    if let Err(e) = codec::encode_frame(&welcome, max_frame, &mut buf) {
        tracing::error!(error = %e, "could not encode the welcome");
        return;
    }
    // Listed before it is welcomed: a client that has its welcome is in
    // `ctl clients`, so another client can find it at once.
    let entry = ctx.clients.register(peer_cred, hello.client_name.clone());
    if wr.write_all(&buf).await.is_err() {
        ctx.clients.unregister(entry.id);
        return;
    }
    tracing::debug!(client, "connected");
    if hello.features & features::DECLTYPES != 0 {
        crate::engine::want_decltypes();
    }

    let max_in_flight = config.max_in_flight as usize;
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(max_in_flight);
    let dead = CancellationToken::new();
    let stall = Duration::from_millis(config.write_stall_timeout_ms);
    let write_task = tokio::spawn(write_loop(
        wr,
        out_rx,
        Replies {
            max_frame,
            stall,
            peer_features: hello.features,
        },
        dead.clone(),
        client.clone(),
    ));

    let answers = Arc::new(dispatch::Connection {
        ctx: ctx.clone(),
        who: entry.clone(),
        owner: Arc::new(Owner::new(
            entry.id,
            entry.client_name.clone(),
            entry.peer.pid,
        )),
        out: out_tx.clone(),
        features: hello.features,
        runtime: tokio::runtime::Handle::current(),
        streams: Arc::default(),
    });
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let mut shutdown = ctx.shutdown.subscribe();
    let mut draining = *shutdown.borrow_and_update();
    let mut drain_started = Instant::now();
    let mut last_frame = Instant::now();
    // The frame and idle timeouts are looked at on a tick, not per frame.
    let mut watch = tokio::time::interval(watch_tick(&config));
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut partial_since: Option<Instant> = None;
    loop {
        if draining
            && in_flight.available_permits() == max_in_flight
            && (last_frame.elapsed() >= DRAIN_QUIET || drain_started.elapsed() >= DRAIN_MAX)
        {
            break;
        }
        let next = async {
            let permit = in_flight.clone().acquire_owned().await;
            (permit, frames.next().await)
        };
        let (permit, frame) = tokio::select! {
            biased;
            _ = dead.cancelled() => break,
            _ = shutdown.changed(), if !draining => {
                draining = true;
                drain_started = Instant::now();
                continue;
            }
            _ = tokio::time::sleep(DRAIN_POLL), if draining => continue,
            r = next => r,
            _ = watch.tick() => {
                let config = ctx.config();
                // Bytes of a frame not yet whole, while the daemon is ready
                // to read (not held back by the in-flight limit).
                let partial = !frames.read_buffer().is_empty() && in_flight.available_permits() > 0;
                let stalled_for = if partial {
                    partial_since.get_or_insert_with(Instant::now).elapsed()
                } else {
                    partial_since = None;
                    Duration::ZERO
                };
                let why = if partial
                    && config.frame_timeout_ms > 0
                    && stalled_for >= Duration::from_millis(config.frame_timeout_ms)
                {
                    Some(format!(
                        "closed: a frame was started but not finished within {} ms \
                         (frame-timeout-ms); {} bytes of it arrived",
                        config.frame_timeout_ms,
                        frames.read_buffer().len()
                    ))
                } else if !partial
                    && config.idle_timeout_ms > 0
                    && frames.read_buffer().is_empty()
                    && in_flight.available_permits() == max_in_flight
                    && last_frame.elapsed() >= Duration::from_millis(config.idle_timeout_ms)
                {
                    Some(format!(
                        "closed after {} ms with no request (idle-timeout-ms); connect again \
                         to go on",
                        last_frame.elapsed().as_millis()
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    if partial {
                        tracing::warn!(client, reason = %why, "closing a stalled connection");
                    } else {
                        tracing::info!(client, reason = %why, "closing an idle connection");
                    }
                    let _ = out_tx.send(connection_error(why).into()).await;
                    break;
                }
                continue;
            }
        };
        let Ok(permit) = permit else { break };
        last_frame = Instant::now();
        let payload = match frame {
            None => {
                tracing::debug!(client, "disconnected");
                break;
            }
            Some(Ok(payload)) => payload,
            Some(Err(CodecError::Io(e))) => {
                tracing::warn!(client, error = %e, "connection failed mid-frame; closing it");
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(client, error = %e, "protocol error; closing the connection");
                let _ = out_tx.send(connection_error(e.to_string()).into()).await;
                break;
            }
        };
        let req: Request = match codec::decode_payload(&payload) {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!(client, error = %e, "undecodable request; closing the connection");
                let _ = out_tx.send(connection_error(e.to_string()).into()).await;
                break;
            }
        };
        let id = req.id;
        // A client's word about a result's parts is let in while draining:
        // the reads it paces are among what the drain waits for.
        if draining && !matches!(req.body, RequestBody::Parts { .. }) {
            let body = ResponseBody::Error(ErrorBody::new(
                ErrorKind::ShuttingDown,
                "nexusd is shutting down and did not start this request; not applied",
            ));
            let _ = out_tx.send(Response { id, body }.into()).await;
            continue;
        }
        dispatch::start(&answers, req, permit);
    }
    // The client is gone (or the drain ends it): its transactions roll back
    // now, not at their lease's end, and requests still out on them are
    // answered so.
    ctx.engine.transactions.connection_closed(entry.id);
    // The write task ends once every request has been answered.
    drop(answers);
    drop(out_tx);
    drop(frames);
    let _ = write_task.await;
    ctx.clients.unregister(entry.id);
}

/// How often a session looks at its frame and idle timeouts: often enough
/// for the shorter of them, at most once a second.
fn watch_tick(config: &crate::config::ServeConfig) -> Duration {
    let shortest = [config.frame_timeout_ms, config.idle_timeout_ms]
        .into_iter()
        .filter(|&ms| ms > 0)
        .min()
        .unwrap_or(1_000);
    Duration::from_millis((shortest / 4).clamp(10, 1_000))
}

/// Answers a handshake with a refusal, best effort: the connection is
/// closed right after, whether the client reads it or not.
pub(crate) async fn send_refusal(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    refusal: ErrorBody,
    max_frame: u32,
) {
    let mut buf = BytesMut::new();
    if codec::encode_frame(&HelloReply::Refused(refusal), max_frame, &mut buf).is_ok() {
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, wr.write_all(&buf)).await;
    }
}

fn connection_error(message: String) -> Response {
    Response {
        id: 0,
        body: ResponseBody::Error(ErrorBody::new(
            ErrorKind::Protocol,
            format!("{message}; the connection is closed"),
        )),
    }
}

async fn handshake(
    frames: &mut FramedRead<ReadHalf, FrameDecoder>,
    ctx: &Context,
    peer: &str,
) -> Result<Hello, ErrorBody> {
    let timeout = Duration::from_millis(ctx.config().handshake_timeout_ms);
    let refuse = |message: String| {
        tracing::warn!(peer, "{message}");
        ErrorBody::new(ErrorKind::Protocol, message)
    };
    let payload = match tokio::time::timeout(timeout, frames.next()).await {
        Err(_) => {
            return Err(refuse(format!(
                "no handshake within {} ms; closing the connection",
                timeout.as_millis()
            )));
        }
        Ok(None) => {
            return Err(ErrorBody::new(
                ErrorKind::Protocol,
                "closed before handshake",
            ));
        }
        Ok(Some(Err(e))) => {
            return Err(refuse(format!(
                "expected a nexusd handshake frame, got something else: {e}"
            )));
        }
        Ok(Some(Ok(payload))) => payload,
    };
    let mismatch = |theirs: u32| {
        refuse(format!(
            "protocol version mismatch: the client speaks version {theirs}, this nexusd speaks \
             version {PROTOCOL_VERSION}; use a client built for protocol {PROTOCOL_VERSION}"
        ))
    };
    match codec::decode_hello(&payload) {
        Ok(hello) => Ok(hello),
        Err(codec::HelloError::Version(theirs)) => Err(mismatch(theirs)),
        Err(codec::HelloError::Undecodable(e)) => {
            Err(refuse(format!("could not decode the handshake: {e}")))
        }
    }
}

/// The largest write buffer a connection keeps between replies.
const KEPT_WRITE_BUFFER: usize = 1 << 20;

/// How replies go out on one connection.
struct Replies {
    max_frame: u32,
    /// How long a write may wait on a client that does not read.
    stall: Duration,
    /// What the client announced it decodes.
    peer_features: u64,
}

async fn write_loop(
    mut wr: WriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    replies: Replies,
    dead: CancellationToken,
    client: String,
) {
    let Replies {
        max_frame,
        stall,
        peer_features,
    } = replies;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // The credits of the result parts in `buf`, given back once it is
    // written.
    let mut credits = Vec::new();
    while let Some(out) = rx.recv().await {
        credits.extend(out.credit);
        encode_response(out.response, max_frame, peer_features, &mut buf);
        while buf.len() < WRITE_BUFFER_SOFT_LIMIT {
            match rx.try_recv() {
                Ok(out) => {
                    credits.extend(out.credit);
                    encode_response(out.response, max_frame, peer_features, &mut buf);
                }
                Err(_) => break,
            }
        }
        match tokio::time::timeout(stall, wr.write_all(&buf)).await {
            // The client answered here sends its next request soon.
            Ok(Ok(())) => crate::io_threads::worked(),
            Ok(Err(e)) => {
                tracing::debug!(client, error = %e, "client gone while replying");
                dead.cancel();
                return;
            }
            Err(_) => {
                tracing::warn!(
                    client,
                    stall_ms = stall.as_millis() as u64,
                    "client has not read its replies; closing the connection"
                );
                dead.cancel();
                return;
            }
        }
        credits.clear();
        if buf.capacity() > KEPT_WRITE_BUFFER {
            // A large result went out: do not keep its buffer for an idle
            // connection.
            buf = BytesMut::with_capacity(64 * 1024);
        } else {
            buf.clear();
        }
    }
    let _ = wr.shutdown().await;
}

/// Encodes a reply; one that cannot be encoded becomes an error reply for
/// the same request, so the client is never left waiting. It goes as the
/// peer decodes it (`ResponseBody::for_peer`: the compatibility rule of
/// docs/protocol.md).
fn encode_response(mut resp: Response, max_frame: u32, peer_features: u64, buf: &mut BytesMut) {
    resp.body = resp.body.for_peer(peer_features);
    let id = resp.id;
    if let Err(e) = codec::encode_frame(&resp, max_frame, buf) {
        tracing::warn!(id, error = %e, "reply could not be encoded");
        let kind = match e {
            CodecError::FrameTooLarge { .. } => ErrorKind::TooLarge,
            _ => ErrorKind::Internal,
        };
        let fallback = Response {
            id,
            body: ResponseBody::Error(ErrorBody::new(
                kind,
                format!("the reply could not be sent: {e}"),
            )),
        };
        if let Err(e) = codec::encode_frame(&fallback, max_frame, buf) {
            tracing::error!(id, error = %e, "even the error reply could not be encoded");
        }
    }
}
