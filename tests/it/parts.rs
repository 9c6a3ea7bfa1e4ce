//! A read larger than the result limit comes whole, in parts, to a client
//! that takes them (`features::ROW_PARTS`), while the daemon holds only a
//! few parts of it however slowly the client reads; a client without the
//! bit, and the writer, still answer `TooLarge`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nexusd_client::{Error, Statement, Value, params};
use nexusd_protocol::codec;
use nexusd_protocol::{ErrorKind, Params, Request, RequestBody, Response, ResponseBody, features};
use nexusd_tests::Daemon;

use crate::bad_input::{frame, handshaken_with, read_frame};
use crate::{client, rt};

/// The result limit of these daemons, in bytes.
const LIMIT: usize = 100_000;

/// Rows in `t`: 20,000 of about 130 bytes, 2.6 MB in all.
const ROWS: i64 = 20_000;

/// A daemon with a 100 kB result limit and `readers` reader threads, and
/// `t` filled.
fn with_table(readers: &str) -> Daemon {
    let d = Daemon::start(&[
        "--max-result-bytes",
        &LIMIT.to_string(),
        "--max-frame-bytes",
        "200000",
        "--readers",
        readers,
    ]);
    rt().block_on(async {
        let c = client(&d).await;
        c.execute("CREATE TABLE t(x INTEGER PRIMARY KEY, s TEXT)", params![])
            .await
            .expect("create");
        c.execute(
            &format!(
                "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                 LIMIT {ROWS}) SELECT x, printf('%0120d', x) FROM c"
            ),
            params![],
        )
        .await
        .expect("fill");
    });
    d
}

fn check_all_rows(rows: &nexusd_client::Rows) {
    assert_eq!(rows.columns(), ["x", "s"]);
    assert_eq!(rows.len(), ROWS as usize);
    for (i, row) in rows.iter().enumerate() {
        let x: i64 = row.get(0).expect("x");
        let s: String = row.get(1).expect("s");
        assert_eq!(x, i as i64 + 1, "row {i} out of order");
        assert_eq!(s, format!("{x:0120}"), "row {i} garbled");
    }
}

/// Through the client crate: a plain query, one in a read-only transaction
/// and one in a deferred transaction before its first write come whole; a
/// query that writes (on the writer) and a batch still fail `TooLarge`,
/// with nothing applied.
#[test]
fn a_read_over_the_limit_comes_whole_and_the_writer_keeps_the_limit() {
    let d = with_table("4");
    rt().block_on(async {
        let c = client(&d).await;
        let sql = "SELECT x, s FROM t ORDER BY x";
        check_all_rows(&c.query(sql, params![]).await.expect("a query in parts"));

        let ro = c.read_transaction().await.expect("begin read-only");
        check_all_rows(&ro.query(sql, params![]).await.expect("in a read-only txn"));
        ro.commit().await.expect("end");

        let tx = c.deferred_transaction().await.expect("begin deferred");
        check_all_rows(&tx.query(sql, params![]).await.expect("in a deferred txn"));
        tx.execute("INSERT INTO t(x, s) VALUES (-1, 'in txn')", params![])
            .await
            .expect("its write");
        // Now the transaction holds the writer, which answers whole.
        let e = tx
            .query(sql, params![])
            .await
            .expect_err("a large read on the writer");
        assert!(matches!(e, Error::TooLarge(_)), "{e}");
        let mine = tx
            .query("SELECT count(*) FROM t WHERE x = -1", params![])
            .await
            .expect("the transaction goes on");
        assert_eq!(mine.get(0).expect("row").get::<i64>(0).expect("n"), 1);
        tx.rollback().await.expect("rollback");

        // The writer never waits on a client: over the limit there fails.
        let e = c
            .query(
                "UPDATE t SET s = s || '' WHERE x > 0 RETURNING x, s",
                params![],
            )
            .await
            .expect_err("a write's result over the limit");
        assert!(matches!(e, Error::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("limit of 100000 bytes"), "{e}");
        let e = c
            .batch(vec![
                Statement::new("INSERT INTO t(x, s) VALUES (-2, 'batch')", params![]),
                Statement::new("SELECT x, s FROM t", params![]),
            ])
            .await
            .expect_err("a batch's result over the limit");
        assert!(matches!(e, Error::TooLarge(_)), "{e}");
        let left = c
            .query("SELECT count(*) FROM t WHERE x < 0", params![])
            .await
            .expect("count");
        assert_eq!(left.get(0).expect("row").get::<i64>(0).expect("n"), 0);

        // A single row over the limit cannot go in any part.
        let e = c
            .query("SELECT zeroblob(150000)", params![])
            .await
            .expect_err("a row over the limit");
        assert!(matches!(e, Error::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("row 1 of the result alone"), "{e}");
        assert!(matches!(
            c.query("SELECT length(zeroblob(150000))", params![])
                .await
                .expect("small")
                .get(0)
                .expect("row")
                .values()[0],
            Value::Integer(150_000)
        ));
    });
}

fn query(s: &mut UnixStream, id: u64, sql: &str, timeout_ms: u32) {
    s.write_all(&frame(&Request {
        id,
        db: "main".into(),
        timeout_ms,
        body: RequestBody::Query(nexusd_protocol::Statement {
            sql: sql.into(),
            params: Params::Positional(vec![]),
        }),
    }))
    .expect("send the query");
}

/// Reads request `id`'s parts and answer: the rows of the parts, each
/// part's frame size, and the answer.
fn answer(s: &mut UnixStream, id: u64) -> (Vec<Vec<Value>>, Vec<usize>, ResponseBody) {
    let (mut rows, mut sizes) = (Vec::new(), Vec::new());
    loop {
        let payload = read_frame(s).expect("a frame");
        let resp: Response = codec::decode_payload(&payload).expect("a Response");
        assert_eq!(resp.id, id);
        match resp.body {
            ResponseBody::RowsPart(part) => {
                assert!(!part.is_empty(), "an empty part");
                sizes.push(payload.len());
                rows.extend(part);
            }
            other => return (rows, sizes, other),
        }
    }
}

/// On the wire: a client without the bit gets `TooLarge`, as before the
/// bit existed; one with it gets parts, each within the limit, then the
/// answer with the columns and the last rows.
#[test]
fn parts_go_only_to_clients_that_announce_them_and_each_fits_the_limit() {
    let d = with_table("4");
    let sql = "SELECT x, s FROM t ORDER BY x";

    let mut old = handshaken_with(&d, features::ALL & !features::ROW_PARTS);
    query(&mut old, 1, sql, 0);
    match answer(&mut old, 1) {
        (parts, _, ResponseBody::Error(e)) if parts.is_empty() => {
            assert_eq!(e.kind, ErrorKind::TooLarge, "{}", e.message)
        }
        (parts, _, other) => panic!("{} rows in parts, then {other:?}", parts.len()),
    }

    let mut new = handshaken_with(&d, features::ALL & !features::DECLTYPES);
    query(&mut new, 2, sql, 0);
    let (mut rows, sizes, last) = answer(&mut new, 2);
    let ResponseBody::Rows(last) = last else {
        panic!("the answer after the parts: {last:?}");
    };
    assert_eq!(last.columns, ["x", "s"]);
    assert!(sizes.len() >= 20, "{} parts for 2.6 MB", sizes.len());
    assert!(
        sizes.iter().all(|&n| n <= LIMIT),
        "a part over the limit: {sizes:?}"
    );
    rows.extend(last.rows);
    assert_eq!(rows.len(), ROWS as usize);
    assert!(
        rows.iter()
            .enumerate()
            .all(|(i, r)| r[0] == Value::Integer(i as i64 + 1)),
        "rows out of order"
    );
}

/// The daemon's resident memory, in kB.
fn rss_kb(d: &Daemon) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", d.pid())).expect("daemon's status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A client that stops reading holds back its reader, not the daemon's
/// memory: with 30 MB of result unread, the daemon grows by a few parts,
/// not the result; others are served meanwhile; the client then reads it
/// all. A client that never reads in time gets `Timeout` after its parts,
/// and the one reader is free again.
#[test]
fn a_client_that_reads_slowly_costs_the_daemon_a_few_parts_not_the_result() {
    let d = with_table("1");
    let other = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    // 12 copies of t: 31 MB of rows, in about 300 parts of 100 kB.
    let big = "SELECT t.x, t.s FROM t, (SELECT 1 FROM t LIMIT 12) ORDER BY t.x";
    let before = rss_kb(&d);
    let mut slow = handshaken_with(&d, features::ALL & !features::DECLTYPES);
    query(&mut slow, 7, big, 0);
    // Give the reader time to fill what the socket and the queue hold.
    std::thread::sleep(Duration::from_millis(1500));
    let during = rss_kb(&d);
    // Others are served while the reader waits on this client.
    for i in 0..20 {
        let rows = other
            .query("SELECT s FROM t WHERE x = ?1", params![i + 1])
            .expect("another client's read");
        assert_eq!(rows.len(), 1);
    }
    let parts_before = crate::metric(&other, "nexusd_result_parts_total");
    let (rows, sizes, last) = answer(&mut slow, 7);
    let ResponseBody::Rows(last) = last else {
        panic!("the answer after {} parts: {last:?}", sizes.len());
    };
    assert_eq!(rows.len() + last.rows.len(), 12 * ROWS as usize);
    // Operators see the parts in the metrics. Before this client began to
    // read, the reader had sent only what the sockets' buffers and two
    // queued parts hold (4 here), of about 300.
    let parts_after = crate::metric(&other, "nexusd_result_parts_total");
    assert_eq!(parts_after, sizes.len() as u64, "every part is counted");
    assert!(
        parts_before <= 20,
        "{parts_before} parts of {parts_after} sent to a client that read none"
    );
    assert!(
        during < before + 10_000,
        "the daemon grew from {before} kB to {during} kB while a client left a 31 MB result \
         unread"
    );

    // Never read within its 1 s time limit: the read gives up.
    let mut stuck = handshaken_with(&d, features::ALL & !features::DECLTYPES);
    query(&mut stuck, 8, big, 1000);
    let began = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    let (_, _, last) = answer(&mut stuck, 8);
    match last {
        ResponseBody::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Timeout, "{}", e.message);
            assert!(e.message.contains("in parts"), "{}", e.message);
        }
        other => panic!("a read left unread past its deadline answered {other:?}"),
    }
    assert!(began.elapsed() < Duration::from_secs(30));
    // A read over one part goes to the pool: its one reader is free.
    let all = other
        .query("SELECT x, s FROM t ORDER BY x", params![])
        .expect("a large read after the stuck one");
    check_all_rows(&all);
}
