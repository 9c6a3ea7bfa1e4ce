//! A read larger than the result limit comes whole, in parts, to a client
//! that takes them (`features::ROW_PARTS`), while the daemon holds only a
//! few parts of it however slowly the client reads, in a transaction too;
//! a client without the bit, and the writer's group commits, still answer
//! `TooLarge`, with nothing applied.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nexusd_client::{Error, RunOutcome, Statement, StatementResult, Value, params};
use nexusd_protocol::codec;
use nexusd_protocol::{
    ErrorKind, Params, PartsOp, Request, RequestBody, Response, ResponseBody, TxnMode, TxnOp,
    features,
};
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

/// Parts of results the daemon has sent, by its metrics.
async fn parts_sent(c: &nexusd_client::Client) -> u64 {
    let text = c.metrics().await.expect("metrics");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("nexusd_result_parts_total")?
                .trim()
                .parse()
                .ok()
        })
        .expect("nexusd_result_parts_total")
}

/// A read-only transaction, or one that holds the writer.
async fn begin(c: &nexusd_client::Client, read_only: bool) -> nexusd_client::Transaction {
    if read_only {
        c.read_transaction().await
    } else {
        c.transaction().await
    }
    .expect("begin")
}

/// Through the client crate: a plain query, one in a read-only transaction
/// and one in a deferred transaction before and after its first write come
/// whole; a query that writes outside a transaction (in a group commit)
/// and a batch still fail `TooLarge`, with nothing applied.
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
        // Now the transaction holds the writer, which waits for this
        // client to take the parts: it holds every writer anyway.
        let after = tx
            .query(sql, params![])
            .await
            .expect("a large read in a transaction that wrote");
        assert_eq!(after.len(), ROWS as usize + 1);
        assert_eq!(after.get(0).expect("row").get::<i64>(0).expect("x"), -1);
        tx.rollback().await.expect("rollback");

        // A group commit never waits on one client: outside a transaction,
        // a write's result over the limit fails.
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

/// In a transaction that holds the writer, `RETURNING` answers any number
/// of rows in parts; one that fails part way through its rows (a row over
/// the limit) applies nothing, though SQLite made its changes before its
/// first row, and the transaction goes on; the client's own savepoints
/// around it still work.
#[test]
fn returning_in_a_transaction_comes_whole_or_applies_nothing() {
    let d = with_table("2");
    rt().block_on(async {
        let c = client(&d).await;
        let tx = c.transaction().await.expect("begin immediate");
        let changed = tx
            .query(
                "UPDATE t SET s = 'u' || s WHERE x > 0 RETURNING x, s",
                params![],
            )
            .await
            .expect("RETURNING over the limit, in parts");
        assert_eq!(changed.len(), ROWS as usize);
        // The change total comes with the answer after the parts.
        assert_eq!(changed.total_changes(), ROWS as u64);
        let e = tx
            .query(
                "INSERT INTO t(x, s) VALUES (-1, 'small'), (-2, printf('%0150000d', 0)) \
                 RETURNING x, s",
                params![],
            )
            .await
            .expect_err("a returned row over the limit");
        assert!(matches!(e, Error::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("row 2"), "{e}");
        tx.execute("SAVEPOINT mine", params![])
            .await
            .expect("a client's savepoint");
        let returned = tx
            .query("DELETE FROM t WHERE x <= 10 RETURNING x", params![])
            .await
            .expect("RETURNING inside the client's savepoint");
        assert_eq!(returned.len(), 10);
        tx.execute("ROLLBACK TO mine", params![])
            .await
            .expect("back to the client's savepoint");
        tx.execute("RELEASE mine", params![])
            .await
            .expect("release");
        tx.commit().await.expect("commit");
        let left = c
            .query(
                "SELECT count(*), sum(x < 0), sum(s LIKE 'u%') FROM t",
                params![],
            )
            .await
            .expect("count");
        let row = left.get(0).expect("row");
        assert_eq!(row.get::<i64>(0).expect("rows"), ROWS, "rows after commit");
        assert_eq!(
            row.get::<i64>(1).expect("failed insert"),
            0,
            "the failed insert applied"
        );
        assert_eq!(row.get::<i64>(2).expect("update"), ROWS, "the update lost");
    });
}

/// The writer waits for a transaction's client to take its parts only as
/// long as the transaction lasts: once its lease ends it, the writer gives
/// up at once (not at the request's deadline) and other writes go on; the
/// slow client then finds its parts void and the transaction expired.
#[test]
fn the_writer_stops_waiting_for_parts_when_the_transaction_ends() {
    let d = Daemon::start(&["--txn-max-ms", "1000", "--request-timeout-ms", "60000"]);
    let other = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    other.execute(EIGHT_MB, params![]).expect("8 MB");
    let mut slow = handshaken_with(&d, features::ALL & !features::STREAMS);
    let txn = begin_immediate(&mut slow, 1);
    query_in(&mut slow, 2, txn, "SELECT x, b FROM t");
    std::thread::sleep(Duration::from_millis(200));
    // The writer is held, waiting on `slow`, which reads nothing; this
    // write waits for it no longer than the transaction's 1 s lease.
    let began = Instant::now();
    other
        .execute("INSERT INTO t(x) VALUES (-1)", params![])
        .expect("a write after the lease ended the transaction");
    let waited = began.elapsed();
    assert!(
        waited < Duration::from_secs(20),
        "a write waited {waited:?} behind a transaction of 1 s"
    );
    let (_, _, last) = answer(&mut slow, 2);
    match last {
        ResponseBody::Error(e) => {
            assert_eq!(e.kind, ErrorKind::TransactionExpired, "{}", e.message)
        }
        other => panic!("the slow read answered {other:?}"),
    }
}

/// The slow-statement log times the statement, not its client: a read
/// that was quick but waited for its client to take the parts is not
/// slow, on a reader or in a transaction that holds the writer; a slow
/// statement still is.
#[test]
fn waiting_for_a_client_to_take_parts_is_not_a_slow_statement() {
    let d = Daemon::start(&["--slow-statement-ms", "400"]);
    let other = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    other.execute(EIGHT_MB, params![]).expect("8 MB");
    let mut slow = handshaken_with(&d, features::ALL & !features::STREAMS);
    let read_late = |slow: &mut UnixStream, id: u64| {
        std::thread::sleep(Duration::from_millis(1500));
        match answer(slow, id) {
            (parts, _, ResponseBody::TypedRows(last)) => {
                assert_eq!(parts.len() + last.rows.rows.len(), 8000)
            }
            (_, _, other) => panic!("the read answered {other:?}"),
        }
    };
    query(&mut slow, 1, "SELECT x, b FROM t", 0);
    read_late(&mut slow, 1);
    let txn = begin_immediate(&mut slow, 2);
    query_in(&mut slow, 3, txn, "SELECT x, b FROM t ORDER BY x");
    read_late(&mut slow, 3);
    send(
        &mut slow,
        4,
        RequestBody::Transaction {
            txn,
            op: TxnOp::Rollback,
        },
    );
    assert!(matches!(answer(&mut slow, 4).2, ResponseBody::Ok));
    // A statement that is slow itself is still kept.
    other
        .query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000000) \
             SELECT count(*) FROM n",
            params![],
        )
        .expect("a slow read");
    let kept: Vec<String> = other
        .slow_log(false)
        .expect("slow log")
        .into_iter()
        .map(|e| e.sql)
        .collect();
    assert!(
        kept.len() == 1 && kept[0].contains("5000000"),
        "the slow log kept {kept:?}"
    );
}

/// 8,000 rows of about 1 kB in `t(x, b)`: 8 MB, far more than two parts
/// and the sockets' buffers hold, so a daemon sending it waits for its
/// client.
pub(crate) const EIGHT_MB: &str = "CREATE TABLE t AS WITH RECURSIVE c(x) AS (SELECT 1 UNION \
                                   ALL SELECT x + 1 FROM c LIMIT 8000) SELECT x, \
                                   randomblob(1000) AS b FROM c";

/// Begins an immediate transaction on a raw connection, as request `id`.
pub(crate) fn begin_immediate(s: &mut UnixStream, id: u64) -> u64 {
    send(s, id, RequestBody::Begin(TxnMode::Immediate));
    match answer(s, id).2 {
        ResponseBody::Begun(txn) => txn,
        other => panic!("begin: {other:?}"),
    }
}

/// Sends `sql` as a query of transaction `txn`, as request `id`.
pub(crate) fn query_in(s: &mut UnixStream, id: u64, txn: u64, sql: &str) {
    let op = TxnOp::Query(nexusd_protocol::Statement {
        sql: sql.into(),
        params: Params::Positional(vec![]),
    });
    send(s, id, RequestBody::Transaction { txn, op });
}

fn query(s: &mut UnixStream, id: u64, sql: &str, timeout_ms: u32) {
    let body = RequestBody::Query(nexusd_protocol::Statement {
        sql: sql.into(),
        params: Params::Positional(vec![]),
    });
    send_with(s, id, body, timeout_ms);
}

pub(crate) fn send(s: &mut UnixStream, id: u64, body: RequestBody) {
    send_with(s, id, body, 0);
}

fn send_with(s: &mut UnixStream, id: u64, body: RequestBody, timeout_ms: u32) {
    s.write_all(&frame(&Request {
        id,
        db: "main".into(),
        timeout_ms,
        body,
    }))
    .expect("send the request");
}

/// Reads request `id`'s parts and answer: the rows of the parts, each
/// part's frame size, and the answer.
pub(crate) fn answer(s: &mut UnixStream, id: u64) -> (Vec<Vec<Value>>, Vec<usize>, ResponseBody) {
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

    // A client from before parts, so from before change totals too.
    let mut old = handshaken_with(
        &d,
        features::ALL & !features::ROW_PARTS & !features::CHANGE_TOTALS,
    );
    query(&mut old, 1, sql, 0);
    match answer(&mut old, 1) {
        (parts, _, ResponseBody::Error(e)) if parts.is_empty() => {
            assert_eq!(e.kind, ErrorKind::TooLarge, "{}", e.message)
        }
        (parts, _, other) => panic!("{} rows in parts, then {other:?}", parts.len()),
    }

    // In a transaction that holds the writer, RETURNING over the limit is
    // `TooLarge` to this client, and what it changed is rolled back, though
    // SQLite made the changes before its first row.
    let txn = begin_immediate(&mut old, 3);
    query_in(
        &mut old,
        4,
        txn,
        "UPDATE t SET s = 'changed' RETURNING x, s",
    );
    match answer(&mut old, 4) {
        (parts, _, ResponseBody::Error(e)) if parts.is_empty() => {
            assert_eq!(e.kind, ErrorKind::TooLarge, "{}", e.message)
        }
        (parts, _, other) => panic!("{} rows in parts, then {other:?}", parts.len()),
    }
    send(
        &mut old,
        5,
        RequestBody::Transaction {
            txn,
            op: TxnOp::Commit,
        },
    );
    assert!(matches!(answer(&mut old, 5).2, ResponseBody::Ok));
    query(&mut old, 6, "SELECT count(*) FROM t WHERE s = 'changed'", 0);
    match answer(&mut old, 6).2 {
        ResponseBody::TypedRows(t) => assert_eq!(t.rows.rows, [[Value::Integer(0)]], "applied"),
        other => panic!("count: {other:?}"),
    }

    let mut new = handshaken_with(
        &d,
        features::ALL & !features::DECLTYPES & !features::STREAMS,
    );
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
    let mut slow = handshaken_with(
        &d,
        features::ALL & !features::DECLTYPES & !features::STREAMS,
    );
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
    let mut stuck = handshaken_with(
        &d,
        features::ALL & !features::DECLTYPES & !features::STREAMS,
    );
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

/// The next response on a raw connection, which must answer request `id`.
fn response(s: &mut UnixStream, id: u64) -> Option<ResponseBody> {
    let payload = read_frame(s)?;
    let resp: Response = codec::decode_payload(&payload).expect("a Response");
    assert_eq!(resp.id, id);
    Some(resp.body)
}

/// Tells the daemon `op` about request `of`'s parts.
fn tell(s: &mut UnixStream, of: u64, op: PartsOp) {
    send(s, 0, RequestBody::Parts { of, op });
}

/// On the wire, to a client that announced `STREAMS`: the first part
/// carries the columns; no more than two parts are out before the client
/// says it took one; every row comes, in order; a word about a request not
/// in parts changes nothing and is not answered; `Stop` ends a read at
/// once and frees its reader.
#[test]
fn a_paced_client_is_sent_two_parts_ahead_of_what_it_took() {
    let d = with_table("1");
    let other = nexusd_client::blocking::Client::connect_with(
        d.socket(),
        nexusd_client::ClientOptions {
            request_timeout: Some(Duration::from_secs(10)),
            ..Default::default()
        },
    )
    .expect("connect");
    let mut s = handshaken_with(&d, features::ALL & !features::DECLTYPES);
    query(&mut s, 7, "SELECT x, s FROM t ORDER BY x", 0);
    let mut rows = match response(&mut s, 7) {
        Some(ResponseBody::RowsHead(head)) => {
            assert_eq!(head.rows.columns, ["x", "s"]);
            assert!(head.decltypes.is_empty(), "{:?}", head.decltypes);
            head.rows.rows
        }
        other => panic!("the first part: {other:?}"),
    };
    match response(&mut s, 7) {
        Some(ResponseBody::RowsPart(part)) => rows.extend(part),
        other => panic!("the second part: {other:?}"),
    }
    // Two out: the third waits for the client.
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .expect("read timeout");
    assert!(
        read_frame(&mut s).is_none(),
        "a third part came before the client took one"
    );
    s.set_read_timeout(None).expect("no read timeout");
    // Words about requests not in parts are ignored and not answered.
    tell(&mut s, 999, PartsOp::Took(5));
    tell(&mut s, 999, PartsOp::Stop);
    let mut parts = 2;
    let last = loop {
        tell(&mut s, 7, PartsOp::Took(1));
        match response(&mut s, 7) {
            Some(ResponseBody::RowsPart(part)) => {
                parts += 1;
                rows.extend(part);
            }
            Some(answer) => break answer,
            None => panic!("the connection closed after {parts} parts"),
        }
    };
    let ResponseBody::Rows(last) = last else {
        panic!("the answer after {parts} parts: {last:?}");
    };
    assert_eq!(last.columns, ["x", "s"]);
    rows.extend(last.rows);
    assert!(parts > 20, "{parts} parts of 2.6 MB at 100 kB each");
    assert_eq!(rows.len(), ROWS as usize);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], Value::Integer(i as i64 + 1), "row {i} out of order");
    }

    // Stopped after its first part: the read ends at once with an error
    // (which a client that stopped does not read), and the daemon's one
    // reader serves the next read, well before the stopped one's 30 s.
    query(&mut s, 8, "SELECT x, s FROM t ORDER BY x", 0);
    assert!(matches!(
        response(&mut s, 8),
        Some(ResponseBody::RowsHead(_))
    ));
    tell(&mut s, 8, PartsOp::Stop);
    let stopped = loop {
        match response(&mut s, 8) {
            Some(ResponseBody::RowsPart(_)) => continue,
            other => break other,
        }
    };
    match stopped {
        Some(ResponseBody::Error(e)) => {
            assert!(e.message.contains("stopped reading"), "{}", e.message)
        }
        other => panic!("a stopped read answered {other:?}"),
    }
    let all = other
        .query("SELECT x, s FROM t ORDER BY x", params![])
        .expect("a large read after the stopped one");
    check_all_rows(&all);
}

/// Through the client crate: `query_stream` gives every row in order, a
/// part at a time, with the daemon never more than two parts ahead of
/// what the caller took; dropped half way, it frees the daemon's one
/// reader for the next read on the same connection; in a transaction and
/// through the blocking client it gives the same rows, and after a daemon
/// restart it goes on a fresh connection.
#[test]
fn query_stream_takes_a_result_a_part_at_a_time() {
    let mut d = with_table("1");
    let rt = rt();
    rt.block_on(async {
        let counter = client(&d).await;
        let sent = async || parts_sent(&counter).await;
        let c = crate::client_with_timeout(&d, 10_000).await;
        let sql = "SELECT x, s FROM t ORDER BY x";
        let mut stream = c.query_stream(sql, params![]).await.expect("stream");
        assert_eq!(stream.columns(), ["x", "s"]);
        let mut all = stream.next().await.expect("a part").expect("rows");
        assert!(
            all.len() < ROWS as usize / 10,
            "{} rows in one part",
            all.len()
        );
        // The first part taken, the daemon sends one more and waits.
        let began = Instant::now();
        while sent().await < 3 && began.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sent().await, 3, "parts sent to a caller that took one");
        let mut parts = 1;
        while let Some(rows) = stream.next().await.expect("a part") {
            assert_eq!(rows.columns(), ["x", "s"]);
            parts += 1;
            all.append(rows);
        }
        assert!(parts > 20, "{parts} parts");
        check_all_rows(&all);
        assert!(stream.next().await.expect("after the end").is_none());

        // Dropped after one part: the reader is free for the next read.
        let mut half = c.query_stream(sql, params![]).await.expect("stream");
        half.next().await.expect("a part").expect("rows");
        drop(half);
        let whole = c
            .query(sql, params![])
            .await
            .expect("a read after a dropped stream");
        check_all_rows(&whole);

        // In a read-only transaction, and one that holds the writer.
        for read_only in [true, false] {
            let txn = begin(&c, read_only).await;
            let rows = txn
                .query_stream(sql, params![])
                .await
                .expect("stream")
                .collect()
                .await
                .expect("rows");
            check_all_rows(&rows);
            txn.rollback().await.expect("rollback");
        }

        // A small result comes in one part, whole.
        let mut small = c
            .query_stream("SELECT x FROM t WHERE x <= 3", params![])
            .await
            .expect("stream");
        assert_eq!(small.next().await.expect("rows").expect("rows").len(), 3);
        assert!(small.next().await.expect("end").is_none());
    });

    let blocking = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    let stream = blocking
        .query_stream("SELECT x, s FROM t ORDER BY x", params![])
        .expect("stream");
    assert_eq!(stream.columns(), ["x", "s"]);
    let mut n = 0i64;
    for rows in stream {
        for row in rows.expect("a part").iter() {
            n += 1;
            assert_eq!(row.get::<i64>(0).expect("x"), n);
        }
    }
    assert_eq!(n, ROWS);

    // After a restart, the next stream goes on a fresh connection.
    d.kill9();
    d.restart();
    let n: usize = blocking
        .query_stream("SELECT x, s FROM t ORDER BY x", params![])
        .expect("a stream after a restart")
        .map(|rows| rows.expect("a part").len())
        .sum();
    assert_eq!(n, ROWS as usize);
}

/// `run_or_stream` answers a small result whole, at `run`'s cost, and hands
/// a large one over as a stream at its first part, paced as `query_stream`
/// is; dropped half way it frees the daemon's one reader; in a transaction
/// the transaction's next request runs once the stream is taken; an error
/// is an error, whole or not.
#[test]
fn run_or_stream_hands_over_a_large_result_at_its_first_part() {
    let d = with_table("1");
    rt().block_on(async {
        let counter = client(&d).await;
        let sent = async || parts_sent(&counter).await;
        let c = crate::client_with_timeout(&d, 10_000).await;
        let sql = "SELECT x, s FROM t ORDER BY x";

        match c
            .run_or_stream("SELECT x FROM t WHERE x <= 3", params![])
            .await
            .expect("a small read")
        {
            RunOutcome::Whole(StatementResult::Rows(rows)) => assert_eq!(rows.len(), 3),
            other => panic!("a small read came as {other:?}"),
        }
        match c
            .run_or_stream("UPDATE t SET s = s WHERE x = 1", params![])
            .await
            .expect("a write")
        {
            RunOutcome::Whole(StatementResult::Executed(e)) => assert_eq!(e.rows_affected, 1),
            other => panic!("a write came as {other:?}"),
        }
        let err = c
            .run_or_stream("SELECT nope FROM t", params![])
            .await
            .expect_err("a bad column");
        assert!(matches!(err, Error::Sql(_)), "{err:?}");

        let before = sent().await;
        let RunOutcome::Parts(mut stream) = c.run_or_stream(sql, params![]).await.expect("run")
        else {
            panic!("a 2.6 MB read over a 100 kB limit came whole");
        };
        assert_eq!(stream.columns(), ["x", "s"]);
        let mut all = stream.next().await.expect("a part").expect("rows");
        assert!(
            all.len() < ROWS as usize / 10,
            "{} rows in one part",
            all.len()
        );
        // The first part taken, the daemon sends one more and waits.
        let began = Instant::now();
        while sent().await < before + 3 && began.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            sent().await,
            before + 3,
            "parts sent to a caller that took one"
        );
        while let Some(rows) = stream.next().await.expect("a part") {
            all.append(rows);
        }
        check_all_rows(&all);

        // Dropped after one part: the one reader is free for the next read.
        let RunOutcome::Parts(mut half) = c.run_or_stream(sql, params![]).await.expect("run")
        else {
            panic!("came whole");
        };
        half.next().await.expect("a part").expect("rows");
        drop(half);
        let whole = c
            .query(sql, params![])
            .await
            .expect("a read after a dropped stream");
        check_all_rows(&whole);

        // In a read-only transaction, and one that holds the writer.
        for read_only in [true, false] {
            let txn = begin(&c, read_only).await;
            let RunOutcome::Parts(stream) = txn.run_or_stream(sql, params![]).await.expect("run")
            else {
                panic!("came whole in a transaction");
            };
            check_all_rows(&stream.collect().await.expect("rows"));
            let rows = txn
                .query("SELECT count(*) FROM t", params![])
                .await
                .expect("the transaction's next request");
            assert_eq!(
                rows.iter().next().map(|r| r.get::<i64>(0).expect("n")),
                Some(ROWS)
            );
            txn.rollback().await.expect("rollback");
        }
    });

    // The blocking client's twin, outside a transaction and in one.
    let blocking = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    let small = blocking
        .run_or_stream("SELECT x FROM t WHERE x <= 3", params![])
        .expect("a small read");
    assert!(
        matches!(&small, nexusd_client::blocking::RunOutcome::Whole(StatementResult::Rows(r)) if r.len() == 3),
        "{small:?}"
    );
    let count = |outcome: nexusd_client::Result<nexusd_client::blocking::RunOutcome>| {
        let nexusd_client::blocking::RunOutcome::Parts(stream) = outcome.expect("run") else {
            panic!("a 2.6 MB read came whole");
        };
        let mut n = 0i64;
        for rows in stream {
            for row in rows.expect("a part").iter() {
                n += 1;
                assert_eq!(row.get::<i64>(0).expect("x"), n);
            }
        }
        n
    };
    let sql = "SELECT x, s FROM t ORDER BY x";
    assert_eq!(count(blocking.run_or_stream(sql, params![])), ROWS);
    let txn = blocking.read_transaction().expect("begin");
    assert_eq!(count(txn.run_or_stream(sql, params![])), ROWS);
    txn.rollback().expect("rollback");
}
