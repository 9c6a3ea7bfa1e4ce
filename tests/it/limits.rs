//! Limits answer clearly and apply nothing: an over-limit batch answer, a
//! runaway read, a write that cannot start by its deadline, and the
//! connection limit. Each on a daemon of its own with small limits.

use std::time::{Duration, Instant};

use nexusd_client::{Client, ClientOptions, Error, Statement, params};
use nexusd_tests::Daemon;

use crate::{client, client_with_timeout, rt};

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
    client_with_timeout(d, 300).await
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
        // A wave that reaches the writer with the long write, ahead of it
        // in one batch, shares its commit and waits for it, so give the long
        // write time to start alone (this sleep orders, it measures
        // nothing). Then waves of short writes until one times out behind
        // it.
        tokio::time::sleep(Duration::from_millis(300)).await;
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

/// A write queued behind a statement that holds the writer for long (here
/// one that runs to its own 3 s limit) is answered "timed out, not
/// applied" by its own deadline, not once the writer gets to it; and indeed
/// it is not applied.
#[test]
fn a_write_behind_a_long_statement_is_answered_by_its_own_deadline() {
    let d = Daemon::start(&[]);
    rt().block_on(async {
        let c = client(&d).await;
        c.execute("CREATE TABLE t(x INTEGER)", params![])
            .await
            .expect("create");
        let slow = client_with_timeout(&d, 3000).await;
        let fast = fast(&d).await;
        let long = tokio::spawn(async move {
            slow.execute(
                "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                 SELECT -count(*) FROM c",
                params![],
            )
            .await
        });
        // A write that reaches the writer with the long statement, ahead of
        // it in one batch, shares its commit and so waits for it: give the
        // long statement time to start (the only sleep here orders, it
        // measures nothing). Then short writes one after another until one
        // waits behind it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut applied = 0i64;
        let (message, waited) = loop {
            assert!(!long.is_finished(), "the long statement ended first");
            let started = Instant::now();
            match fast.execute("INSERT INTO t VALUES (1)", params![]).await {
                Ok(_) => applied += 1,
                Err(Error::Timeout(message)) => break (message, started.elapsed()),
                Err(e) => panic!("unexpected error {e}"),
            }
        };
        assert!(message.contains("not applied"), "{message}");
        assert!(message.contains("one batch of writes"), "{message}");
        assert!(
            waited < Duration::from_millis(1500),
            "answered after {waited:?}, not by its 300 ms deadline (plus a sweep)"
        );
        let e = long
            .await
            .expect("task")
            .expect_err("the endless statement is interrupted");
        assert!(matches!(e, Error::Timeout(_)), "{e}");
        let rows = c
            .query("SELECT count(*), min(x) FROM t", params![])
            .await
            .expect("count");
        let row = rows.get(0).expect("row");
        assert_eq!(
            row.get::<i64>(0).expect("n"),
            applied,
            "only what was acknowledged"
        );
        if applied > 0 {
            assert_eq!(
                row.get::<i64>(1).expect("min"),
                1,
                "nothing of the long one"
            );
        }
    });
}

/// A write queued behind a VACUUM is answered by its own deadline, naming
/// the VACUUM, while the VACUUM goes on; it is not applied, and the VACUUM
/// still ends well. The database is a few hundred MB so that its VACUUM
/// outlasts a write's 150 ms several times over on this class of machine
/// (it took over a second on the 2-core VMs this was written on).
#[test]
fn a_write_behind_a_vacuum_is_answered_by_its_own_deadline() {
    let d = Daemon::start(&[]);
    rt().block_on(async {
        let c = client_with_timeout(&d, 120_000).await;
        c.execute("CREATE TABLE big(x BLOB)", params![])
            .await
            .expect("create big");
        c.execute("CREATE TABLE t(x INTEGER)", params![])
            .await
            .expect("create t");
        // 480 MB, then a third of the rows deleted: VACUUM has all of it to
        // read and 320 MB to write back.
        for _ in 0..6 {
            c.execute(
                "INSERT INTO big WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c \
                 WHERE n < 20000) SELECT randomblob(4000) FROM c",
                params![],
            )
            .await
            .expect("fill big");
        }
        c.execute("DELETE FROM big WHERE rowid % 3 = 0", params![])
            .await
            .expect("delete a third");
        c.checkpoint(nexusd_client::CheckpointMode::Truncate)
            .await
            .expect("checkpoint");
        let maintenance = c.clone();
        let began = Instant::now();
        let vacuum = tokio::spawn(async move { maintenance.vacuum().await });
        // Give the VACUUM time to take the writer (this sleep orders, it
        // measures nothing); then short writes until one waits behind it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let fast = client_with_timeout(&d, 150).await;
        let mut applied = 0i64;
        let (message, waited) = loop {
            assert!(
                !vacuum.is_finished(),
                "the VACUUM ended after {:?}, before a write waited behind it",
                began.elapsed()
            );
            let started = Instant::now();
            match fast.execute("INSERT INTO t VALUES (1)", params![]).await {
                Ok(_) => applied += 1,
                Err(Error::Timeout(message)) => break (message, started.elapsed()),
                Err(e) => panic!("unexpected error {e}"),
            }
        };
        assert!(
            !vacuum.is_finished(),
            "the write was answered only once the VACUUM ended ({waited:?}): {message}"
        );
        assert!(message.contains("VACUUM"), "{message}");
        assert!(message.contains("not applied"), "{message}");
        assert!(
            waited < Duration::from_millis(1500),
            "answered after {waited:?}, not by its 150 ms deadline (plus a sweep)"
        );
        let done = vacuum.await.expect("task").expect("the VACUUM ends well");
        assert!(done.contains("vacuumed"), "{done}");
        let rows = c
            .query("SELECT count(*) FROM t", params![])
            .await
            .expect("count");
        assert_eq!(
            rows.get(0).expect("row").get::<i64>(0).expect("n"),
            applied,
            "only what was acknowledged"
        );
    });
}

/// A write that ran ahead of a long statement in one batch waits for that
/// batch's commit. The long statement is stopped in time for the write to
/// commit by its deadline, and runs again, alone, to its own end.
#[test]
fn a_long_statement_yields_to_the_commit_of_writes_batched_before_it() {
    let d = Daemon::start(&["--txn-idle-timeout-ms", "60000"]);
    rt().block_on(async {
        let c = client(&d).await;
        c.execute("CREATE TABLE t(x INTEGER)", params![])
            .await
            .expect("create");
        let short = client_with_timeout(&d, 1500).await;
        let slow = client_with_timeout(&d, 3000).await;
        // A transaction holds the writer while the two queue, the short
        // write first; its commit lets them into one batch, in that order.
        // (The sleeps order the sends; they measure nothing.)
        let tx = c.transaction().await.expect("begin");
        tx.execute("INSERT INTO t VALUES (0)", params![])
            .await
            .expect("insert");
        let first = tokio::spawn(async move {
            let started = Instant::now();
            let r = short.execute("INSERT INTO t VALUES (1)", params![]).await;
            (r, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        let long = tokio::spawn(async move {
            let started = Instant::now();
            let r = slow
                .execute(
                    "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 \
                     FROM c) SELECT -count(*) FROM c",
                    params![],
                )
                .await;
            (r, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        tx.commit().await.expect("commit");

        let (r, waited) = first.await.expect("task");
        r.expect("the short write commits by its deadline");
        assert!(waited < Duration::from_millis(1500), "after {waited:?}");
        let (r, ran) = long.await.expect("task");
        let e = r.expect_err("the endless statement is interrupted");
        assert!(e.to_string().contains("time limit of 3000 ms"), "{e}");
        assert!(
            ran >= Duration::from_millis(2900),
            "it ran to its own end: {ran:?}"
        );
        let rows = c
            .query("SELECT x FROM t ORDER BY x", params![])
            .await
            .expect("rows");
        let got: Vec<i64> = rows.iter().map(|r| r.get(0).expect("x")).collect();
        assert_eq!(got, [0, 1]);
        assert!(
            d.log_text().contains("runs again alone"),
            "the daemon logs the yield"
        );
        // The slow log has both runs of the long statement: the first says
        // why it stopped short of its limit, the second hit that limit.
        let slow: Vec<String> = c
            .slow_log(false)
            .await
            .expect("slowlog")
            .into_iter()
            .filter(|s| s.sql.contains("RECURSIVE"))
            .map(|s| s.error.unwrap_or_default())
            .collect();
        assert_eq!(slow.len(), 2, "{slow:?}");
        assert!(
            slow[0].contains("so that the writes batched before it commit by their deadlines"),
            "{slow:?}"
        );
        assert!(slow[1].contains("time limit of 3000 ms"), "{slow:?}");
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

/// A `hold` worker, run as `uid` (setpriv; needs root), trying `n`
/// connections: its process (stdin open: it holds them until that closes),
/// and how many were admitted and refused, and the first refusal.
fn hold_as(
    uid: u32,
    socket: &std::path::Path,
    n: usize,
) -> (std::process::Child, u64, u64, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(crate::WORKER)
        .arg("hold")
        .arg(socket)
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("setpriv worker");
    let stdout = child.stdout.take().expect("stdout");
    let mut why = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line");
        if let Some(r) = line.strip_prefix("refusal: ") {
            why = r.to_owned();
        }
        if let Some(counts) = line.strip_prefix("held=") {
            let (held, refused) = counts.split_once(" refused=").expect("counts");
            return (
                child,
                held.parse().expect("held"),
                refused.parse().expect("refused"),
                why,
            );
        }
    }
    let _ = child.kill();
    let status = child.wait();
    panic!("the hold worker as uid {uid} ended without its counts: {status:?}");
}

/// One uid cannot take every slot: a per-uid cap, and a reserve that only
/// root and admins may use, so `nexusd ctl` always gets in.
#[test]
fn a_per_uid_cap_and_an_admin_reserve() {
    crate::require_root("runs clients as other uids with setpriv");
    let tmp = crate::shared_tempdir();
    let config = tmp.path().join("nexusd.toml");
    std::fs::write(
        &config,
        "socket-mode = \"0666\"\nmax-connections = 40\nmax-connections-per-uid = 10\n\
         admin-reserve-connections = 5\n[access]\nwrite = [\"uid:2002\", \"uid:2003\"]\n",
    )
    .expect("config");
    let d = Daemon::start(&["--config", config.to_str().expect("utf-8")]);

    let (mut a, held, refused, why) = hold_as(2002, d.socket(), 15);
    assert_eq!((held, refused), (10, 5), "uid 2002 is capped at 10: {why}");
    assert!(
        why.contains("uid 2002 already holds 10") && why.contains("max-connections-per-uid"),
        "{why}"
    );
    let (mut b, held, _, why) = hold_as(2003, d.socket(), 10);
    assert_eq!(held, 10, "the cap is per uid: {why}");
    // 20 of 40 open. Lift the cap (a reload): clients may then fill every
    // slot but the reserve's 5.
    std::fs::write(
        &config,
        "socket-mode = \"0666\"\nmax-connections = 40\nmax-connections-per-uid = 0\n\
         admin-reserve-connections = 5\n[access]\nwrite = [\"uid:2002\", \"uid:2003\"]\n",
    )
    .expect("config");
    let out = crate::ctl(&d, &["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut c, held, refused, why) = hold_as(2003, d.socket(), 20);
    assert_eq!((held, refused), (15, 5), "only the reserve is left: {why}");
    assert!(why.contains("admin-reserve-connections"), "{why}");
    // Root still gets in, into the reserve.
    let out = crate::ctl(&d, &["status"]);
    assert!(
        out.status.success(),
        "root must get into the reserve: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for child in [&mut a, &mut b, &mut c] {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}

/// 2,000 connections held open from 4 processes while a well-behaved client
/// keeps writing: it meets no error, and the daemon's memory stays modest
/// (printed; docs/operations.md has the figure).
#[test]
fn two_thousand_held_connections_do_not_stop_a_writer() {
    let d = Daemon::start(&[]);
    let rt = rt();
    let good = rt.block_on(client(&d));
    rt.block_on(async {
        good.execute("CREATE TABLE w(n INTEGER)", params![])
            .await
            .expect("create")
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (good, stop) = (good.clone(), stop.clone());
        rt.spawn(async move {
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                good.execute("INSERT INTO w VALUES (?1)", params![n])
                    .await
                    .expect("the good client's write");
                n += 1;
            }
            n
        })
    };
    let holders: Vec<_> = (0..4).map(|_| hold_as(0, d.socket(), 500)).collect();
    let held: u64 = holders.iter().map(|h| h.1).sum();
    assert_eq!(
        held,
        2000,
        "every connection admitted: {:?}",
        holders.iter().map(|h| &h.3).collect::<Vec<_>>()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).expect("status");
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ?")
        .to_owned();
    println!("daemon with 2,000 connections held: {rss}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes = rt.block_on(writer).expect("writer task");
    assert!(writes > 0, "the good client made progress");
    let rows: i64 = rt.block_on(async {
        good.query("SELECT count(*) FROM w", params![])
            .await
            .expect("count")
            .get(0)
            .expect("row")
            .get(0)
            .expect("n")
    });
    assert_eq!(rows, writes);
    for (mut child, ..) in holders {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}
