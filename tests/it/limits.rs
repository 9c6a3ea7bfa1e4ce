//! Limits answer clearly and apply nothing: an over-limit batch answer, a
//! runaway read, a write that cannot start by its deadline, and the
//! connection limit. Each on a daemon of its own with small limits.

use std::time::Duration;

use nexusd_client::{Client, ClientOptions, Error, Statement, params};
use nexusd_tests::Daemon;

use crate::{client, rt};

/// A daemon with 3 connections, a writer queue of 4, and a 100 kB result
/// limit; and a table `t`.
fn limited() -> Daemon {
    let d = Daemon::start(&[
        "--max-connections",
        "3",
        "--writer-queue",
        "4",
        "--max-result-bytes",
        "100000",
        "--max-frame-bytes",
        "200000",
    ]);
    rt().block_on(async {
        let c = client(&d).await;
        c.execute("CREATE TABLE t(x INTEGER)", params![])
            .await
            .expect("create");
        c.execute("CREATE TABLE s(x INTEGER)", params![])
            .await
            .expect("create");
    });
    d
}

/// A client that sends a 300 ms time limit with each request (the plain
/// `client` leaves the daemon's default, so checks do not race the
/// machine's load).
async fn fast(d: &Daemon) -> Client {
    Client::connect_with(
        d.socket(),
        ClientOptions {
            request_timeout: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    )
    .await
    .expect("connect")
}

/// A batch whose answer would be too large fails whole: its write is not
/// applied, even though each statement alone fits.
#[test]
fn an_over_limit_batch_answer_applies_nothing() {
    let d = limited();
    rt().block_on(async {
        let c = client(&d).await;
        let e = c
            .batch(vec![
                Statement::new("INSERT INTO t VALUES (-1)", params![]),
                Statement::new("SELECT zeroblob(60000)", params![]),
                Statement::new("SELECT zeroblob(60000)", params![]),
            ])
            .await
            .expect_err("too large");
        assert!(matches!(e, Error::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("limit of 100000 bytes"), "{e}");
        let rows = c
            .query("SELECT count(*) FROM t", params![])
            .await
            .expect("count");
        assert_eq!(rows.get(0).expect("row").get::<i64>(0).expect("n"), 0);
    });
}

/// A runaway read is interrupted at its deadline.
#[test]
fn a_runaway_read_is_interrupted_at_its_deadline() {
    let d = limited();
    rt().block_on(async {
        let fast = fast(&d).await;
        let e = fast
            .query(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) \
                 FROM c",
                params![],
            )
            .await
            .expect_err("an endless query must be interrupted");
        assert!(matches!(e, Error::Timeout(_)), "{e}");
        assert!(e.to_string().contains("time limit of 300 ms"), "{e}");
    });
}

/// A long write holds the writer; short writes queued behind it time out,
/// "not applied", and indeed none of them is.
#[test]
fn writes_that_cannot_start_by_their_deadline_are_not_applied() {
    let d = limited();
    rt().block_on(async {
        let c = client(&d).await;
        let fast = fast(&d).await;
        let slow = Client::connect(d.socket()).await.expect("connect");
        let long = tokio::spawn(async move {
            slow.execute(
                "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                 LIMIT 3000000) SELECT -x FROM c",
                params![],
            )
            .await
        });
        // Waves of short writes until the long write holds the writer (no
        // sleeps: a wave that times out is the sign).
        let (mut sent, mut timed_out) = (0i64, 0i64);
        while timed_out == 0 && !long.is_finished() {
            let mut wave = Vec::new();
            for _ in 0..20 {
                let fast = fast.clone();
                let i = sent;
                sent += 1;
                wave.push(tokio::spawn(async move {
                    fast.execute("INSERT INTO s VALUES (?1)", params![i]).await
                }));
            }
            for w in wave {
                match w.await.expect("task") {
                    Ok(_) => {}
                    Err(Error::Timeout(msg)) => {
                        assert!(msg.contains("not applied"), "{msg}");
                        timed_out += 1;
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        }
        long.await.expect("task").expect("the long write commits");
        let rows = c
            .query("SELECT count(*) FROM s", params![])
            .await
            .expect("count");
        let landed: i64 = rows.get(0).expect("row").get(0).expect("n");
        assert!(
            timed_out > 0,
            "the short writes should have timed out behind the long one"
        );
        assert_eq!(
            landed,
            sent - timed_out,
            "timed-out writes must not be applied"
        );
    });
}

/// The connection limit: open connections until one is refused; at most 3
/// can be open at once, `c` and `fast` among them, and those keep working.
#[test]
fn the_connection_limit_refuses_with_overloaded() {
    let d = limited();
    rt().block_on(async {
        let c = client(&d).await;
        let _fast = fast(&d).await;
        let mut held = Vec::new();
        let refused = loop {
            let options = ClientOptions {
                reconnect_for: Duration::ZERO,
                ..Default::default()
            };
            match Client::connect_with(d.socket(), options).await {
                Ok(extra) => {
                    held.push(extra);
                    assert!(
                        held.len() <= 3,
                        "the limit of 3 connections was not enforced"
                    );
                }
                Err(e) => break e,
            }
        };
        assert!(matches!(refused, Error::Overloaded(_)), "{refused}");
        assert!(
            refused.to_string().contains("limit of 3 connections"),
            "{refused}"
        );
        c.ping().await.expect("existing connections keep working");
    });
}
