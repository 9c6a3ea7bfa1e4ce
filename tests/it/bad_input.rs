//! (f) Bad input never crashes or stalls the daemon: the offending
//! connection gets an error where one can still be sent and is closed, a
//! warning is logged, and a well-behaved client is served throughout. Each
//! scenario is a test of its own on the shared `Contained` fixture.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use nexusd_client::Client;
use nexusd_client::params;
use nexusd_protocol::codec::{self, encode_frame};
use nexusd_protocol::{
    AdminRequest, ErrorKind, Hello, HelloReply, PROTOCOL_VERSION, Params, Request, RequestBody,
    Response, ResponseBody, Statement, features,
};
use nexusd_tests::{Daemon, wait_until};

use crate::{client, rt};

/// A daemon with short handshake and stall timeouts, and a well-behaved
/// client that writes and reads throughout: any error it meets fails the
/// test, and it must keep making progress after each bad input.
struct Contained {
    d: Daemon,
    rt: tokio::runtime::Runtime,
    good: Client,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    background: tokio::task::JoinHandle<i64>,
}

impl Contained {
    fn start() -> Contained {
        let d = Daemon::start(&[
            "--handshake-timeout-ms",
            "500",
            "--write-stall-timeout-ms",
            "1000",
            "--frame-timeout-ms",
            "500",
        ]);
        let rt = rt();
        let good = rt.block_on(client(&d));
        rt.block_on(async {
            good.execute("CREATE TABLE ok(n INTEGER)", params![])
                .await
                .expect("create")
        });
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let background = {
            let (good, stop, served) = (good.clone(), stop.clone(), served.clone());
            rt.spawn(async move {
                let mut n = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    good.execute("INSERT INTO ok(n) VALUES (?1)", params![n])
                        .await
                        .expect("good client write");
                    good.query("SELECT count(*) FROM ok", params![])
                        .await
                        .expect("good client read");
                    served.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                }
                n
            })
        };
        Contained {
            d,
            rt,
            good,
            stop,
            served,
            background,
        }
    }

    /// The good client makes progress after `what`.
    fn progress(&self, what: &str) {
        let before = self.served.load(Ordering::SeqCst);
        assert!(
            wait_until(Duration::from_secs(20), || self
                .served
                .load(Ordering::SeqCst)
                > before + 5),
            "the good client stalled after: {what}"
        );
    }

    /// The log holds a warning with `needle`.
    fn logged(&self, needle: &str) {
        let log = self.d.log_text();
        assert!(log.contains("WARN"), "log lacks a warning:\n{log}");
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }

    /// Stops the good client; the daemon is still whole and holds exactly
    /// the rows it acknowledged.
    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let writes = self.rt.block_on(self.background).expect("background task");
        assert!(writes > 0);
        self.rt.block_on(async {
            let rows = self
                .good
                .query("SELECT count(*) FROM ok", params![])
                .await
                .expect("count");
            assert_eq!(rows.get(0).expect("row").get::<i64>(0).expect("n"), writes);
        });
    }
}

fn connect(d: &Daemon) -> UnixStream {
    connect_at(d.socket())
}

fn connect_at(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s
}

pub(crate) fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(msg, u32::MAX >> 2, &mut buf).expect("encode");
    buf.to_vec()
}

fn hello(version: u32) -> Vec<u8> {
    hello_with(version, 0)
}

fn hello_with(version: u32, features: u64) -> Vec<u8> {
    frame(&Hello {
        protocol_version: version,
        client_name: "bad-input-test".into(),
        features,
    })
}

/// Reads one frame's payload, or None at EOF.
pub(crate) fn read_frame(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload).ok()?;
    Some(payload)
}

fn expect_eof(s: &mut UnixStream) {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .expect("the daemon closes the connection");
}

fn refusal(s: &mut UnixStream) -> (ErrorKind, String) {
    let payload = read_frame(s).expect("an error frame before the close");
    match codec::decode_payload::<HelloReply>(&payload).expect("a HelloReply") {
        HelloReply::Refused(e) => (e.kind, e.message),
        HelloReply::Welcome(_) => panic!("expected a refusal"),
    }
}

fn handshaken(d: &Daemon) -> UnixStream {
    handshaken_with(d, 0)
}

/// A raw connection, past the handshake, that announced `features`.
pub(crate) fn handshaken_with(d: &Daemon, features: u64) -> UnixStream {
    handshaken_at(d.socket(), features)
}

/// A raw connection to the daemon serving `socket`, past the handshake,
/// that announced `features`.
pub(crate) fn handshaken_at(socket: &Path, features: u64) -> UnixStream {
    let mut s = connect_at(socket);
    s.write_all(&hello_with(PROTOCOL_VERSION, features))
        .expect("hello");
    let payload = read_frame(&mut s).expect("welcome");
    assert!(matches!(
        codec::decode_payload::<HelloReply>(&payload),
        Ok(HelloReply::Welcome(_))
    ));
    s
}

fn connection_error(s: &mut UnixStream) -> String {
    let payload = read_frame(s).expect("an error frame");
    let resp: Response = codec::decode_payload(&payload).expect("a Response");
    assert_eq!(resp.id, 0);
    match resp.body {
        ResponseBody::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Protocol);
            e.message
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

fn query(id: u64, sql: &str) -> Vec<u8> {
    frame(&Request {
        id,
        db: "main".into(),
        timeout_ms: 0,
        body: RequestBody::Query(Statement {
            sql: sql.into(),
            params: Params::default(),
        }),
    })
}

#[test]
fn garbage_bytes_instead_of_a_handshake_are_refused() {
    let t = Contained::start();
    let mut s = connect(&t.d);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (kind, msg) = refusal(&mut s);
    assert_eq!(kind, ErrorKind::Protocol);
    assert!(msg.contains("exceeds the limit"), "{msg}");
    expect_eof(&mut s);
    t.progress("garbage bytes");
    t.logged("expected a nexusd handshake frame");
    t.finish();
}

#[test]
fn a_frame_length_over_the_limit_closes_the_connection() {
    let t = Contained::start();
    let mut s = handshaken(&t.d);
    s.write_all(&(64u32 * 1024 * 1024).to_be_bytes())
        .expect("write");
    let msg = connection_error(&mut s);
    assert!(
        msg.contains("67108864 bytes exceeds the limit of 16777216"),
        "{msg}"
    );
    expect_eof(&mut s);
    t.progress("oversized frame");
    t.logged("protocol error");
    t.finish();
}

/// Half a request, then the client goes away.
#[test]
fn a_truncated_frame_is_dropped() {
    let t = Contained::start();
    let mut s = handshaken(&t.d);
    let q = query(1, "SELECT 1");
    s.write_all(&q[..q.len() / 2]).expect("write");
    drop(s);
    t.progress("truncated frame");
    t.finish();
}

/// A wrong protocol version: the refusal names both versions.
#[test]
fn a_wrong_protocol_version_is_refused_naming_both() {
    let t = Contained::start();
    let mut s = connect(&t.d);
    s.write_all(&hello(PROTOCOL_VERSION + 6)).expect("write");
    let (kind, msg) = refusal(&mut s);
    assert_eq!(kind, ErrorKind::Protocol);
    assert!(
        msg.contains(&format!("client speaks version {}", PROTOCOL_VERSION + 6)),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("this nexusd speaks version {PROTOCOL_VERSION}")),
        "{msg}"
    );
    expect_eof(&mut s);
    t.progress("wrong version");
    t.logged("protocol version mismatch");
    t.finish();
}

#[test]
fn an_undecodable_message_closes_the_connection() {
    let t = Contained::start();
    let mut s = handshaken(&t.d);
    let mut junk = vec![0u8, 0, 0, 6];
    junk.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa]);
    s.write_all(&junk).expect("write");
    let msg = connection_error(&mut s);
    assert!(msg.contains("could not decode"), "{msg}");
    expect_eof(&mut s);
    t.progress("undecodable message");
    t.logged("undecodable request");
    t.finish();
}

/// A client that never completes its handshake is closed.
#[test]
fn a_silent_client_is_closed_after_the_handshake_timeout() {
    let t = Contained::start();
    let mut s = connect(&t.d);
    let (kind, msg) = refusal(&mut s);
    assert_eq!(kind, ErrorKind::Protocol);
    assert!(msg.contains("no handshake within 500 ms"), "{msg}");
    t.progress("silent client");
    t.logged("no handshake within 500 ms");
    t.finish();
}

/// Invalid SQL: an error for that request; the connection stays usable.
#[test]
fn invalid_sql_fails_alone_and_the_connection_stays_usable() {
    let t = Contained::start();
    let mut s = handshaken(&t.d);
    s.write_all(&query(7, "SELEKT 1")).expect("write");
    s.write_all(&query(8, "SELECT 42")).expect("write");
    let mut seen = 0;
    for _ in 0..2 {
        let resp: Response =
            codec::decode_payload(&read_frame(&mut s).expect("reply")).expect("decode");
        match (resp.id, resp.body) {
            (7, ResponseBody::Error(e)) => {
                assert_eq!(e.kind, ErrorKind::Sql);
                assert!(e.message.contains("syntax error"), "{}", e.message);
                seen += 1;
            }
            (8, ResponseBody::Rows(r)) => {
                assert_eq!(r.rows, vec![vec![nexusd_protocol::Value::Integer(42)]]);
                seen += 1;
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert_eq!(seen, 2);
    drop(s);
    t.progress("invalid SQL");
    t.finish();
}

/// A client that disconnects while its slow read is running.
#[test]
fn a_disconnect_mid_request_is_harmless() {
    let t = Contained::start();
    let mut s = handshaken(&t.d);
    s.write_all(&query(9, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 3000000) SELECT count(*) FROM c"))
        .expect("write");
    drop(s);
    t.progress("disconnect mid-request");
    t.finish();
}

/// A client that never reads its replies: big answers pile up, the daemon
/// stops writing to it and closes it after the stall timeout.
#[test]
fn a_client_that_never_reads_is_closed_after_the_stall_timeout() {
    let t = Contained::start();
    let mut s = handshaken(&t.d);
    let big = "SELECT zeroblob(1000000)";
    let mut sent = 0u64;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for id in 100..400 {
        if s.write_all(&query(id, big)).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent > 0);
    t.progress("client not reading");
    let d_ref = &t.d;
    assert!(
        wait_until(Duration::from_secs(20), || d_ref
            .log_text()
            .contains("has not read its replies")),
        "the daemon should give up on a client that does not read"
    );
    // Drain what the daemon managed to send; then it must be closed.
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut sink = Vec::new();
    s.read_to_end(&mut sink).expect("closed by the daemon");
    t.progress("stalled client closed");
    t.finish();
}

/// The compatibility rule: an error kind appended after `Forbidden` goes
/// only to a client that announced `ERROR_KINDS_2`; an older client gets
/// the older kind nearest in meaning, and decodes it.
#[test]
fn error_kinds_a_client_did_not_announce_are_sent_as_older_ones() {
    let t = Contained::start();
    let backup = |id| {
        frame(&Request {
            id,
            db: "main".into(),
            timeout_ms: 0,
            body: RequestBody::Admin(AdminRequest::Backup {
                dest: "relative/path.db".into(),
            }),
        })
    };
    for (features, want) in [
        (0, ErrorKind::Unsupported),
        (features::ERROR_KINDS_2, ErrorKind::InvalidArgument),
    ] {
        let mut s = handshaken_with(&t.d, features);
        s.write_all(&backup(5)).expect("write");
        let resp: Response =
            codec::decode_payload(&read_frame(&mut s).expect("reply")).expect("decode");
        match resp.body {
            ResponseBody::Error(e) => {
                assert_eq!(e.kind, want, "features {features}: {}", e.message);
                assert!(e.message.contains("not an absolute path"), "{}", e.message);
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
    t.progress("error kinds by feature bit");
    t.finish();
}

/// A client that did not announce `DECLTYPES` gets `Rows`, as before the
/// bit existed; one that did gets `TypedRows` with the same rows.
#[test]
fn declared_types_go_only_to_a_client_that_announced_them() {
    let t = Contained::start();
    let mut setup = handshaken(&t.d);
    setup
        .write_all(&frame(&Request {
            id: 1,
            db: "main".into(),
            timeout_ms: 0,
            body: RequestBody::Execute(Statement {
                sql: "CREATE TABLE ev(at DATE)".into(),
                params: Params::default(),
            }),
        }))
        .expect("write");
    read_frame(&mut setup).expect("created");
    for features in [0, features::ALL & !features::DECLTYPES, features::DECLTYPES] {
        let mut s = handshaken_with(&t.d, features);
        s.write_all(&query(2, "SELECT at, 1 FROM ev"))
            .expect("write");
        let resp: Response =
            codec::decode_payload(&read_frame(&mut s).expect("reply")).expect("decode");
        match resp.body {
            ResponseBody::Rows(r) if features & features::DECLTYPES == 0 => {
                assert_eq!(r.columns, ["at", "1"]);
            }
            ResponseBody::TypedRows(r) if features & features::DECLTYPES != 0 => {
                assert_eq!(r.decltypes, [Some("DATE".to_owned()), None]);
                assert_eq!(r.rows.columns, ["at", "1"]);
            }
            other => panic!("features {features}: unexpected {other:?}"),
        }
    }
    t.progress("declared types by feature bit");
    t.finish();
}

/// A client that starts a frame after the handshake and never finishes it
/// is closed after the frame timeout, with a reason, and its slot is free.
#[test]
fn a_client_that_stops_mid_frame_is_closed_after_the_frame_timeout() {
    let t = Contained::start();
    let mut s = handshaken(&t.d);
    // A length prefix for 100 bytes, then 10 of them, then nothing.
    s.write_all(&100u32.to_be_bytes()).expect("prefix");
    s.write_all(&[0u8; 10]).expect("part of a frame");
    let started = std::time::Instant::now();
    let msg = connection_error(&mut s);
    assert!(
        msg.contains("not finished within 500 ms") && msg.contains("frame-timeout-ms"),
        "{msg}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "closed too early"
    );
    expect_eof(&mut s);
    t.progress("a client stalled mid-frame");
    t.logged("frame-timeout-ms");
    t.finish();
}

/// With an idle timeout set, a connection that sends nothing is closed
/// with a reason; one that keeps sending is not. With none (the default),
/// an idle connection stays.
#[test]
fn idle_connections_are_closed_only_when_an_idle_timeout_is_set() {
    let d = Daemon::start(&["--idle-timeout-ms", "400"]);
    let mut busy = handshaken(&d);
    let mut idle = handshaken(&d);
    for id in 1..=10u64 {
        busy.write_all(&query(id, "SELECT 1")).expect("query");
        read_frame(&mut busy).expect("an answer: a busy connection stays open");
        std::thread::sleep(Duration::from_millis(100));
    }
    let msg = connection_error(&mut idle);
    assert!(msg.contains("idle-timeout-ms"), "{msg}");
    expect_eof(&mut idle);

    let d = Daemon::start(&[]);
    let mut idle = handshaken(&d);
    idle.set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    match idle.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("an idle connection was closed by default: {other:?}"),
    }
    idle.write_all(&query(1, "SELECT 1")).expect("query");
    assert!(read_frame(&mut idle).is_some(), "it still answers");
}
