//! (f) Bad input never crashes or stalls the daemon: the offending
//! connection gets an error where one can still be sent and is closed, a
//! warning is logged, and a well-behaved client is served throughout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use nexusd_client::params;
use nexusd_protocol::codec::{self, encode_frame};
use nexusd_protocol::{
    ErrorKind, Hello, HelloReply, PROTOCOL_VERSION, Params, Request, RequestBody, Response,
    ResponseBody, Statement,
};
use nexusd_tests::{Daemon, wait_until};

use crate::{client, rt};

fn connect(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(d.socket()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s
}

fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(msg, u32::MAX >> 2, &mut buf).expect("encode");
    buf.to_vec()
}

fn hello(version: u32) -> Vec<u8> {
    frame(&Hello {
        protocol_version: version,
        client_name: "bad-input-test".into(),
        features: 0,
    })
}

/// Reads one frame's payload, or None at EOF.
fn read_frame(s: &mut UnixStream) -> Option<Vec<u8>> {
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
    let mut s = connect(d);
    s.write_all(&hello(PROTOCOL_VERSION)).expect("hello");
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
fn bad_input_is_contained_while_a_good_client_is_served() {
    let d = Daemon::start(&[
        "--handshake-timeout-ms",
        "500",
        "--write-stall-timeout-ms",
        "1000",
    ]);
    let rt = rt();
    let good = rt.block_on(client(&d));
    rt.block_on(async {
        good.execute("CREATE TABLE ok(n INTEGER)", params![])
            .await
            .expect("create")
    });

    // A well-behaved client writes throughout; any error fails the test.
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
    let progress = |what: &str| {
        let before = served.load(Ordering::SeqCst);
        assert!(
            wait_until(Duration::from_secs(20), || served.load(Ordering::SeqCst)
                > before + 5),
            "the good client stalled after: {what}"
        );
    };

    // Garbage bytes instead of a handshake.
    let mut s = connect(&d);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (kind, msg) = refusal(&mut s);
    assert_eq!(kind, ErrorKind::Protocol);
    assert!(msg.contains("exceeds the limit"), "{msg}");
    expect_eof(&mut s);
    progress("garbage bytes");

    // A frame length over the limit, after a good handshake.
    let mut s = handshaken(&d);
    s.write_all(&(64u32 * 1024 * 1024).to_be_bytes())
        .expect("write");
    let msg = connection_error(&mut s);
    assert!(
        msg.contains("67108864 bytes exceeds the limit of 16777216"),
        "{msg}"
    );
    expect_eof(&mut s);
    progress("oversized frame");

    // A truncated frame: half a request, then the client goes away.
    let mut s = handshaken(&d);
    let q = query(1, "SELECT 1");
    s.write_all(&q[..q.len() / 2]).expect("write");
    drop(s);
    progress("truncated frame");

    // A wrong protocol version: the refusal names both versions.
    let mut s = connect(&d);
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
    progress("wrong version");

    // An undecodable message after the handshake.
    let mut s = handshaken(&d);
    let mut junk = vec![0u8, 0, 0, 6];
    junk.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa]);
    s.write_all(&junk).expect("write");
    let msg = connection_error(&mut s);
    assert!(msg.contains("could not decode"), "{msg}");
    expect_eof(&mut s);
    progress("undecodable message");

    // A client that never completes its handshake is closed.
    let mut s = connect(&d);
    let (kind, msg) = refusal(&mut s);
    assert_eq!(kind, ErrorKind::Protocol);
    assert!(msg.contains("no handshake within 500 ms"), "{msg}");
    progress("silent client");

    // Invalid SQL: an error for that request; the connection stays usable.
    let mut s = handshaken(&d);
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

    // A client that disconnects mid-request (a slow read is running).
    let mut s = handshaken(&d);
    s.write_all(&query(9, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 3000000) SELECT count(*) FROM c"))
        .expect("write");
    drop(s);
    progress("disconnect mid-request");

    // A client that never reads its replies: big answers pile up, the
    // daemon stops writing to it and closes it after the stall timeout.
    let mut s = handshaken(&d);
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
    progress("client not reading");
    let d_ref = &d;
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
    progress("stalled client closed");

    stop.store(true, Ordering::SeqCst);
    let writes = rt.block_on(background).expect("background task");
    assert!(writes > 0);
    let log = d.log_text();
    for needle in [
        "WARN",
        "protocol error",
        "undecodable request",
        "expected a nexusd handshake frame",
        "protocol version mismatch",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }
    // The daemon is still whole.
    rt.block_on(async {
        let rows = good
            .query("SELECT count(*) FROM ok", params![])
            .await
            .expect("count");
        assert_eq!(rows.get(0).expect("row").get::<i64>(0).expect("n"), writes);
    });
}
