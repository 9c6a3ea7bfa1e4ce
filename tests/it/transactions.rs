//! Interactive transactions against the real daemon: read-check-write from
//! many processes with no lock errors, the Genesis pattern, leases, clients
//! and daemons killed with transactions open, snapshots, deferred
//! conflicts, savepoints, and the operator's view.

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexusd_client::{Client, StatementResult, params};
use nexusd_tests::{Daemon, wait_until};

use crate::{LONG, client, count, ctl, finish_worker, rt, s, spawn_worker};

/// 8 processes move money as read-check-write transactions (half of them
/// deferred, retrying conflicts): the total is conserved, no balance goes
/// negative, and no request fails, with a lock error or any other.
#[test]
fn bank_transfers_from_8_processes_conserve_the_total() {
    let d = Daemon::start(&[]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute(
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)",
        params![],
    )
    .expect("create");
    let accounts = 10;
    for id in 0..accounts {
        c.execute("INSERT INTO accounts VALUES (?1, 100)", params![id])
            .expect("seed");
    }
    let workers: Vec<_> = (0..8)
        .map(|w| {
            spawn_worker(&[
                s("txn-transfer"),
                d.socket().display().to_string(),
                s(4),
                s(25),
                s(accounts),
                s(w + 1),
                s(if w % 2 == 0 { "immediate" } else { "deferred" }),
            ])
        })
        .collect();
    let (mut applied, mut refused, mut errors) = (0, 0, 0);
    for w in workers {
        let r = finish_worker(w);
        applied += r["applied"];
        refused += r["refused"];
        errors += r["errors"];
    }
    assert_eq!(errors, 0, "no transfer may fail");
    assert_eq!(applied + refused, 8 * 4 * 25);
    assert!(applied > 0, "some transfers must apply");
    assert_eq!(
        count(&c, "SELECT sum(balance) FROM accounts"),
        100 * accounts
    );
    assert!(count(&c, "SELECT min(balance) FROM accounts") >= 0);
    let log = d.log_text();
    assert!(!log.contains("database is locked"), "{log}");
}

/// The Genesis pattern from the seed reports: 50 concurrent transactions
/// each look for the default conversation and create it if missing.
#[test]
fn genesis_pattern_creates_exactly_one_default_conversation() {
    let d = Daemon::start(&[]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute(
        "CREATE TABLE conversations(id INTEGER PRIMARY KEY, title TEXT, is_default INTEGER)",
        params![],
    )
    .expect("create");
    let workers: Vec<_> = (0..5)
        .map(|w| spawn_worker(&[s("genesis"), d.socket().display().to_string(), s(w), s(10)]))
        .collect();
    let (mut created, mut found) = (0, 0);
    for w in workers {
        let r = finish_worker(w);
        assert_eq!(r["errors"], 0);
        created += r["created"];
        found += r["found"];
    }
    assert_eq!(created, 1);
    assert_eq!(found, 49);
    assert_eq!(count(&c, "SELECT count(*) FROM conversations"), 1);
}

/// An idle transaction is rolled back after its lease; other clients'
/// writes went through meanwhile, and its next call gets the expiry error.
#[test]
fn an_idle_transaction_expires_and_others_proceed() {
    let d = Daemon::start(&["--txn-idle-timeout-ms", "300"]);
    rt().block_on(async {
        let a = client(&d).await;
        let b = client(&d).await;
        a.execute("CREATE TABLE t(x TEXT)", params![])
            .await
            .expect("create");
        let tx = a.transaction().await.expect("begin");
        tx.execute("INSERT INTO t VALUES ('from the idle one')", params![])
            .await
            .expect("insert");
        // b's write waits for the writer, which the idle transaction holds
        // until its lease ends.
        let started = Instant::now();
        b.execute("INSERT INTO t VALUES ('from b')", params![])
            .await
            .expect("b's write goes through");
        assert!(started.elapsed() < Duration::from_secs(10));
        let e = tx
            .execute("INSERT INTO t VALUES ('too late')", params![])
            .await
            .expect_err("expired");
        assert!(e.is_transaction_expired(), "{e}");
        assert!(e.to_string().contains("sent nothing for"), "{e}");
        assert!(e.to_string().contains("nothing in it was applied"), "{e}");
        // Committing it fails the same way, and it never ran outside a
        // transaction.
        let e = tx.commit().await.expect_err("expired");
        assert!(e.is_transaction_expired(), "{e}");
        let rows = b
            .query("SELECT x FROM t ORDER BY x", params![])
            .await
            .expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows.get(0).expect("row").get::<String>(0).expect("x"),
            "from b"
        );
        let metrics = b.metrics().await.expect("metrics");
        assert!(
            metrics.contains("nexusd_transactions_total{end=\"expired\"} 1"),
            "{metrics}"
        );
    });
}

/// A write or a transaction queued behind a transaction that holds the
/// writer is answered by its own deadline, "timed out, not applied",
/// naming the transaction in the way, not when that transaction ends (its
/// lease here is a minute); the transaction goes on, and none of what
/// timed out is ever applied.
#[test]
fn writes_queued_behind_a_transaction_time_out_by_their_own_deadline() {
    let d = Daemon::start(&["--txn-idle-timeout-ms", "60000"]);
    rt().block_on(async {
        let a = client(&d).await;
        a.execute("CREATE TABLE t(x TEXT)", params![])
            .await
            .expect("create");
        let hurried = crate::client_with_timeout(&d, 300).await;
        let tx = a.transaction().await.expect("begin");
        tx.execute("INSERT INTO t VALUES ('held')", params![])
            .await
            .expect("insert");

        let started = Instant::now();
        let e = hurried
            .execute("INSERT INTO t VALUES ('queued')", params![])
            .await
            .expect_err("the writer is held for a minute");
        let waited = started.elapsed();
        assert!(matches!(e, nexusd_client::Error::Timeout(_)), "{e}");
        let message = e.to_string();
        assert!(message.contains("not applied"), "{e}");
        assert!(message.contains(&format!("transaction {}", tx.id())), "{e}");
        assert!(waited < Duration::from_secs(3), "answered after {waited:?}");

        // The same while the holder keeps the writer busy.
        let busy = async {
            let until = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < until {
                tx.execute("UPDATE t SET x = x WHERE x = 'held'", params![])
                    .await
                    .expect("the holder's statements");
            }
        };
        let behind = async {
            let started = Instant::now();
            let r = hurried
                .execute("INSERT INTO t VALUES ('queued')", params![])
                .await;
            (r, started.elapsed())
        };
        let ((r, waited), ()) = tokio::join!(behind, busy);
        let e = r.expect_err("the writer is busy for 1.5 s");
        assert!(matches!(e, nexusd_client::Error::Timeout(_)), "{e}");
        assert!(
            waited < Duration::from_millis(1200),
            "answered after {waited:?}"
        );

        // A transaction queued behind it ends the same way at its first
        // write.
        let started = Instant::now();
        let queued = hurried.transaction().await.expect("begin is queued");
        let e = queued
            .execute("INSERT INTO t VALUES ('queued txn')", params![])
            .await
            .expect_err("the writer is still held");
        assert!(
            matches!(e, nexusd_client::Error::Timeout(_)) || e.is_transaction_expired(),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(6));

        tx.execute("INSERT INTO t VALUES ('still open')", params![])
            .await
            .expect("the holder goes on");
        tx.commit().await.expect("commit");
        let rows = a
            .query("SELECT x FROM t ORDER BY x", params![])
            .await
            .expect("rows");
        let got: Vec<String> = rows.iter().map(|r| r.get(0).expect("x")).collect();
        assert_eq!(got, ["held", "still open"], "nothing that timed out");
    });
}

/// kill -9 of a client process holding a transaction: the daemon rolls it
/// back at once (the lease here is a minute), and the others carry on.
#[test]
fn a_killed_client_s_transaction_is_rolled_back_at_once() {
    let (d, c) = crate::daemon_with_table(
        &["--txn-idle-timeout-ms", "60000"],
        "CREATE TABLE held(note TEXT)",
    );
    let mut holder = spawn_worker(&[s("txn-hold"), d.socket().display().to_string()]);
    let stdout = holder.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the worker's line");
    assert!(line.starts_with("holding "), "{line}");
    assert_eq!(c.transactions().expect("list").len(), 1);
    holder.kill().expect("kill -9 the client");
    let _ = holder.wait();
    let started = Instant::now();
    c.execute("INSERT INTO held(note) VALUES ('after')", params![])
        .expect("the writer is free again");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(count(&c, "SELECT count(*) FROM held"), 1);
    assert!(c.transactions().expect("list").is_empty());
    assert!(
        c.metrics()
            .expect("metrics")
            .contains("nexusd_transactions_total{end=\"connection_closed\"} 1")
    );
}

/// A read-only transaction sees one snapshot while writers commit, and does
/// not hold them up.
#[test]
fn a_read_transaction_sees_one_snapshot() {
    let d = Daemon::start(&[]);
    rt().block_on(async {
        let c = client(&d).await;
        c.execute("CREATE TABLE t(x INTEGER)", params![])
            .await
            .expect("create");
        c.execute("INSERT INTO t VALUES (1)", params![])
            .await
            .expect("insert");
        let tx = c.read_transaction().await.expect("begin read");
        let before: i64 = tx
            .query("SELECT count(*) FROM t", params![])
            .await
            .expect("count")
            .get(0)
            .expect("row")
            .get(0)
            .expect("n");
        for i in 0..20 {
            c.execute("INSERT INTO t VALUES (?1)", params![i])
                .await
                .expect("writers are not held up");
        }
        let inside: i64 = tx
            .query("SELECT count(*) FROM t", params![])
            .await
            .expect("count")
            .get(0)
            .expect("row")
            .get(0)
            .expect("n");
        assert_eq!(inside, before, "the snapshot moved");
        let e = tx
            .execute("INSERT INTO t VALUES (99)", params![])
            .await
            .expect_err("read-only");
        assert!(e.to_string().contains("is read-only"), "{e}");
        tx.commit().await.expect("end the read");
        let after: i64 = c
            .query("SELECT count(*) FROM t", params![])
            .await
            .expect("count")
            .get(0)
            .expect("row")
            .get(0)
            .expect("n");
        assert_eq!(after, before + 20);
    });
}

/// A deferred transaction conflicts when a commit lands between its first
/// read and its first write, and commits when none does.
#[test]
fn a_deferred_transaction_conflicts_only_when_a_commit_came_between() {
    let d = Daemon::start(&[]);
    rt().block_on(async {
        let a = client(&d).await;
        let b = client(&d).await;
        a.execute("CREATE TABLE t(x INTEGER)", params![])
            .await
            .expect("create");

        let tx = a.deferred_transaction().await.expect("begin");
        tx.query("SELECT count(*) FROM t", params![])
            .await
            .expect("read");
        b.execute("INSERT INTO t VALUES (1)", params![])
            .await
            .expect("b commits in between");
        let e = tx
            .execute("INSERT INTO t VALUES (2)", params![])
            .await
            .expect_err("conflict");
        assert!(e.is_conflict(), "{e}");
        assert!(e.to_string().contains("retry"), "{e}");
        let rows = a.query("SELECT x FROM t", params![]).await.expect("rows");
        assert_eq!(rows.len(), 1, "nothing of the conflicting one applied");

        let tx = a.deferred_transaction().await.expect("begin");
        let n: i64 = tx
            .query("SELECT count(*) FROM t", params![])
            .await
            .expect("read")
            .get(0)
            .expect("row")
            .get(0)
            .expect("n");
        tx.execute("INSERT INTO t VALUES (?1)", params![n + 10])
            .await
            .expect("no commit came between");
        let seen: i64 = tx
            .query("SELECT count(*) FROM t", params![])
            .await
            .expect("read own write")
            .get(0)
            .expect("row")
            .get(0)
            .expect("n");
        assert_eq!(seen, n + 1);
        tx.commit().await.expect("commit");
        let rows = a.query("SELECT x FROM t", params![]).await.expect("rows");
        assert_eq!(rows.len(), 2);

        // As in SQLite, the snapshot begins at the first read, not at
        // BEGIN: one whose first statement writes never conflicts.
        let tx = a.deferred_transaction().await.expect("begin");
        b.execute("INSERT INTO t VALUES (3)", params![])
            .await
            .expect("b commits after the BEGIN");
        tx.execute("INSERT INTO t VALUES (4)", params![])
            .await
            .expect("a first write is no conflict");
        tx.commit().await.expect("commit");
        let rows = a.query("SELECT x FROM t", params![]).await.expect("rows");
        assert_eq!(rows.len(), 4);
        // Each end is counted once, where it happened.
        let metrics = a.metrics().await.expect("metrics");
        for line in [
            "nexusd_transactions_total{end=\"conflict\"} 1",
            "nexusd_transactions_total{end=\"commit\"} 2",
        ] {
            assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
        }
    });
}

/// SAVEPOINT, RELEASE and ROLLBACK TO work inside a transaction; BEGIN
/// inside one is an error that leaves it open; transaction control outside
/// one points to the transaction API.
#[test]
fn savepoints_inside_a_transaction() {
    let d = Daemon::start(&[]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute("CREATE TABLE t(x INTEGER)", params![])
        .expect("create");
    let tx = c.transaction().expect("begin");
    tx.execute("INSERT INTO t VALUES (1)", params![])
        .expect("insert");
    tx.execute("SAVEPOINT s", params![]).expect("savepoint");
    tx.execute("INSERT INTO t VALUES (2)", params![])
        .expect("insert");
    tx.execute("ROLLBACK TO s", params![]).expect("rollback to");
    tx.execute("INSERT INTO t VALUES (3)", params![])
        .expect("insert");
    tx.execute("RELEASE s", params![]).expect("release");
    let e = tx.execute("BEGIN", params![]).expect_err("nested BEGIN");
    assert!(e.as_sql().expect("sql").refused, "{e}");
    assert!(e.to_string().contains("SAVEPOINT"), "{e}");
    let e = tx.execute("COMMIT", params![]).expect_err("COMMIT as SQL");
    assert!(e.as_sql().is_some_and(|s| s.refused), "{e:?}");
    tx.commit().expect("commit");
    let rows = c
        .query("SELECT x FROM t ORDER BY x", params![])
        .expect("rows");
    let xs: Vec<i64> = rows.iter().map(|r| r.get(0).expect("x")).collect();
    assert_eq!(xs, vec![1, 3]);
    let e = c.execute("SAVEPOINT s", params![]).expect_err("outside");
    assert!(e.to_string().contains("Client::transaction()"), "{e}");
}

/// kill -9 of the daemon while transactions run from 4 processes: after a
/// restart every acknowledged commit is there whole, no transaction is
/// there in part, and integrity_check says ok.
#[test]
fn transactions_survive_a_daemon_kill_whole_or_not_at_all() {
    let mut d = Daemon::start(&[]);
    rt().block_on(async {
        client(&d)
            .await
            .execute(
                "CREATE TABLE pairs(id INTEGER, half INTEGER, PRIMARY KEY(id, half))",
                params![],
            )
            .await
            .expect("create")
    });
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let mut readers = Vec::new();
    let mut workers = Vec::new();
    for w in 0..4 {
        let mut child = spawn_worker(&[
            s("txn-stream"),
            d.socket().display().to_string(),
            s(w),
            s(4),
        ]);
        let stdout = child.stdout.take().expect("stdout");
        let acked = acked.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(id) = line.strip_prefix("committed ") {
                    acked.lock().expect("lock").push(id.parse().expect("an id"));
                }
            }
        }));
        workers.push(child);
    }
    assert!(
        wait_until(LONG, || acked.lock().expect("lock").len() >= 300),
        "the workers made no progress"
    );
    d.kill9();
    for mut w in workers {
        let _ = w.wait();
    }
    for r in readers {
        let _ = r.join();
    }
    d.restart();
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 300);
    for id in &acked {
        let n = c
            .query("SELECT count(*) FROM pairs WHERE id = ?1", params![*id])
            .expect("count")
            .get(0)
            .expect("row")
            .get::<i64>(0)
            .expect("n");
        assert_eq!(n, 2, "committed transaction {id} is not whole");
    }
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM (SELECT id FROM pairs GROUP BY id HAVING count(*) != 2)"
        ),
        0,
        "a transaction is there in part"
    );
    assert_eq!(c.integrity_check(false).expect("integrity"), "ok");
}

/// Operators see open transactions (ctl transactions, status, clients) and
/// can roll one back by id; its client learns it on its next request.
#[test]
fn operators_list_and_roll_back_transactions() {
    let d = Daemon::start(&[]);
    rt().block_on(async {
        let app = Client::connect_with(
            d.socket(),
            nexusd_client::ClientOptions {
                client_name: "the-app".into(),
                ..Default::default()
            },
        )
        .await
        .expect("connect");
        app.execute("CREATE TABLE t(x INTEGER)", params![])
            .await
            .expect("create");
        let tx = app.deferred_transaction().await.expect("begin");
        tx.query("SELECT count(*) FROM t", params![])
            .await
            .expect("read");
        let ctl = |args: &[&str]| ctl(&d, args);
        let out = ctl(&["transactions"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}");
        assert!(text.contains("the-app"), "{text}");
        assert!(text.contains("deferred"), "{text}");
        assert!(text.contains("snapshot"), "{text}");
        for cmd in ["status", "clients"] {
            let out = ctl(&[cmd]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(text.contains("transactions"), "{cmd}: {text}");
            assert!(text.contains("the-app"), "{cmd}: {text}");
        }
        let out = ctl(&["rollback", &tx.id().to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let e = tx
            .query("SELECT 1", params![])
            .await
            .expect_err("rolled back");
        assert!(e.is_transaction_expired(), "{e}");
        assert!(e.to_string().contains("by an operator"), "{e}");
        let out = ctl(&["rollback", "987654"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no transaction 987654"));

        // `status` says what holds the writer.
        let held = app.transaction().await.expect("begin");
        held.execute("INSERT INTO t VALUES (1)", params![])
            .await
            .expect("insert");
        let text = String::from_utf8_lossy(&ctl(&["status"]).stdout).into_owned();
        let line = format!("writer          held by transaction {} for ", held.id());
        assert!(text.contains(&line), "{text}");
        held.rollback().await.expect("rollback");
    });
}

/// The authorizer runs at prepare time, so a client statement with the
/// exact text of one the daemon runs itself (and keeps prepared) must not
/// reuse the daemon's: every one is refused, after the daemon has used
/// them all, and the writes around them stay whole.
#[test]
fn the_daemon_s_own_statements_cannot_be_borrowed_from_its_cache() {
    let d = Daemon::start(&[]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute("CREATE TABLE t(x INTEGER)", params![])
        .expect("create");
    // Group commits, a failed request (ROLLBACK TO), a transaction and a
    // batch inside one: the daemon has prepared each of its statements.
    c.execute("INSERT INTO t VALUES (1)", params![])
        .expect("insert");
    let _ = c.execute("INSERT INTO nope VALUES (1)", params![]);
    let tx = c.transaction().expect("begin");
    tx.batch(vec![nexusd_client::Statement::new(
        "INSERT INTO t VALUES (2)",
        params![],
    )])
    .expect("batch");
    tx.rollback().expect("rollback");
    for sql in [
        "COMMIT",
        "BEGIN IMMEDIATE",
        "ROLLBACK",
        "SAVEPOINT req",
        "RELEASE req",
        "ROLLBACK TO req",
        "SAVEPOINT nexusd_batch",
    ] {
        let e = c.execute(sql, params![]).expect_err(sql);
        assert!(e.as_sql().is_some_and(|s| s.refused), "{sql}: {e:?}");
    }
    c.execute("INSERT INTO t VALUES (3)", params![])
        .expect("insert");
    let rows = c
        .query("SELECT x FROM t ORDER BY x", params![])
        .expect("rows");
    let xs: Vec<i64> = rows.iter().map(|r| r.get(0).expect("x")).collect();
    assert_eq!(xs, vec![1, 3]);
}

/// A blocking client's runtime runs only inside its calls, yet a
/// transaction dropped unfinished is rolled back at once, not when its
/// lease ends: another client's write gets the writer straight away.
#[test]
fn a_dropped_blocking_transaction_is_rolled_back_at_once() {
    let d = Daemon::start(&["--txn-idle-timeout-ms", "20000"]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute("CREATE TABLE t(x)", params![]).expect("create");
    let tx = c.transaction().expect("begin");
    tx.execute("INSERT INTO t VALUES (1)", params![])
        .expect("insert");
    drop(tx);
    let other = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    let started = Instant::now();
    other
        .execute("INSERT INTO t VALUES (2)", params![])
        .expect("the writer is free again");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the other write waited {:?}: the rollback was not sent",
        started.elapsed()
    );
    assert_eq!(count(&other, "SELECT count(*) FROM t"), 1);
    assert_eq!(count(&other, "SELECT count(*) FROM t WHERE x = 1"), 0);
}

/// Deferred and read-only transactions reuse the read-only connections of
/// ended ones, instead of opening (and loading the schema into) one each;
/// a reused connection starts a fresh snapshot, keeps nothing of the
/// transaction before (not its savepoints), and, idle, holds no snapshot
/// back from a checkpoint.
#[test]
fn snapshot_transactions_reuse_idle_connections_which_start_fresh() {
    let (_d, c) = crate::daemon_with_table(&[], "CREATE TABLE t(x INTEGER)");
    c.execute("INSERT INTO t VALUES (1)", params![])
        .expect("insert");
    let opened = || crate::metric(&c, "nexusd_transaction_connections_opened_total");
    let int = |rows: nexusd_client::Rows| -> i64 {
        rows.get(0).expect("a row").get(0).expect("an integer")
    };
    let before = opened();
    for _ in 0..20 {
        let tx = c.deferred_transaction().expect("begin deferred");
        assert_eq!(
            int(tx.query("SELECT x FROM t", params![]).expect("read")),
            1
        );
        tx.commit().expect("commit");
        let ro = c.read_transaction().expect("begin read-only");
        ro.query("SELECT x FROM t", params![]).expect("read");
        ro.rollback().expect("rollback");
    }
    assert!(
        opened() - before <= 1,
        "{} connections opened for 40 transactions one after another",
        opened() - before
    );

    // Each begins where the database is now, not where the last one read.
    c.execute("UPDATE t SET x = 2", params![]).expect("update");
    let tx = c.deferred_transaction().expect("begin");
    assert_eq!(
        int(tx.query("SELECT x FROM t", params![]).expect("read")),
        2
    );
    // Moved to the writer by its write: its read connection goes back.
    tx.execute("UPDATE t SET x = 3", params![]).expect("write");
    tx.commit().expect("commit");
    let ro = c.read_transaction().expect("begin read-only");
    assert_eq!(
        ro.query("SELECT x FROM t", params![]).expect("read").len(),
        1
    );
    ro.execute("SAVEPOINT left_open", params![])
        .expect("a savepoint in a read-only transaction");
    ro.rollback().expect("rollback with the savepoint open");
    let ro = c.read_transaction().expect("begin read-only");
    let e = ro
        .execute("RELEASE left_open", params![])
        .expect_err("the last transaction's savepoint is gone");
    assert!(e.to_string().contains("no such savepoint"), "{e}");
    ro.rollback().expect("rollback");
    assert_eq!(count(&c, "SELECT x FROM t"), 3);
    let result = c
        .checkpoint(nexusd_client::CheckpointMode::Truncate)
        .expect("checkpoint");
    assert!(
        !result.busy && result.wal_frames == 0,
        "an idle transaction connection held the WAL: {result:?}"
    );
}

/// A transaction's reads run on the I/O thread when they can (within a
/// short budget, as reads in place do), and on a blocking thread when
/// they cannot; either way in the transaction's one snapshot: a read that
/// outruns the budget is run again whole there and sees what the first
/// read saw, as do reads sent many at once, and a read that writes still
/// moves a deferred transaction to the writer.
#[test]
fn a_transactions_reads_see_its_snapshot_in_place_or_not() {
    let (_d, c) = crate::daemon_with_table(&[], "CREATE TABLE t(x INTEGER)");
    c.execute("INSERT INTO t VALUES (1)", params![])
        .expect("insert");
    let int = |rows: nexusd_client::Rows| -> i64 {
        rows.get(0).expect("a row").get(0).expect("an integer")
    };
    // Over the 200 us budget: a recursive count of 300,000.
    let slow = "SELECT (SELECT count(*) FROM t) + (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL \
                SELECT i + 1 FROM n WHERE i < 300000) SELECT count(*) - 300000 FROM n)";
    for deferred in [false, true] {
        let tx = if deferred {
            c.deferred_transaction().expect("begin deferred")
        } else {
            c.read_transaction().expect("begin read-only")
        };
        let before = int(tx
            .query("SELECT count(*) FROM t", params![])
            .expect("first read"));
        c.execute("INSERT INTO t VALUES (2)", params![])
            .expect("a commit after the snapshot");
        assert_eq!(int(tx.query(slow, params![]).expect("slow read")), before);
        assert_eq!(
            int(tx
                .query("SELECT count(*) FROM t", params![])
                .expect("quick read")),
            before
        );
        if deferred {
            // A commit came between: its first write conflicts, as before.
            let e = tx
                .execute("INSERT INTO t VALUES (3)", params![])
                .expect_err("a write after another's commit");
            assert!(e.to_string().contains("conflict"), "{e}");
        } else {
            tx.commit().expect("end");
        }
    }
    // Many reads of one transaction at once, from threads sharing it.
    let tx = c.read_transaction().expect("begin read-only");
    let seen = int(tx.query("SELECT count(*) FROM t", params![]).expect("read"));
    c.execute("INSERT INTO t VALUES (4)", params![])
        .expect("a commit after the snapshot");
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    let n = int(tx.query("SELECT count(*) FROM t", params![]).expect("read"));
                    assert_eq!(n, seen, "a read left the snapshot");
                }
            });
        }
    });
    tx.commit().expect("end");
    let tx = c.deferred_transaction().expect("begin deferred");
    let n = int(tx.query("SELECT count(*) FROM t", params![]).expect("read"));
    tx.execute("INSERT INTO t VALUES (5)", params![])
        .expect("moves to the writer");
    tx.commit().expect("commit");
    assert_eq!(count(&c, "SELECT count(*) FROM t"), n + 1);
}

/// `begin_with` opens a transaction and runs its first statement in one
/// request: the statement's answer comes with the transaction, which stays
/// open whatever the statement did (a constraint failure, a write refused
/// in a read-only one), and a large first read comes in parts as any
/// other. A begin the daemon refuses is the outer error, with nothing
/// open.
#[test]
fn begin_with_runs_the_first_statement_in_the_same_round_trip() {
    let d = Daemon::start(&["--max-transactions", "2"]);
    rt().block_on(async {
        let a = client(&d).await;
        // The async client's: the blocking one cannot run inside `block_on`.
        let transaction_requests = async || -> u64 {
            let text = a.metrics().await.expect("metrics");
            let name = "nexusd_requests_total{kind=\"transaction\",outcome=\"ok\"}";
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0)
        };
        let rows_in_t = async || -> i64 {
            let rows = a
                .query("SELECT count(*) FROM t", params![])
                .await
                .expect("count");
            rows.get(0).expect("a row").get(0).expect("an integer")
        };
        a.execute(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, x TEXT UNIQUE)",
            params![],
        )
        .await
        .expect("create");
        a.execute("INSERT INTO t(x) VALUES ('first')", params![])
            .await
            .expect("seed");

        let before = transaction_requests().await;
        let (tx, first) = a
            .begin_with(
                nexusd_client::TxnMode::Deferred,
                "INSERT INTO t(x) VALUES (?1)",
                params!["second"],
            )
            .await
            .expect("begun");
        match first.expect("inserted") {
            StatementResult::Executed(e) => {
                assert_eq!(e.rows_affected, 1);
                assert_eq!(e.last_insert_rowid, 2);
            }
            other => panic!("an insert's answer: {other:?}"),
        }
        assert_eq!(
            transaction_requests().await - before,
            1,
            "one request for the begin and the insert"
        );
        assert_eq!(rows_in_t().await, 1, "not yet");
        tx.commit().await.expect("commit");
        assert_eq!(rows_in_t().await, 2);

        // The first statement fails: the transaction is open all the same.
        let (tx, first) = a
            .begin_with(
                nexusd_client::TxnMode::Immediate,
                "INSERT INTO t(x) VALUES ('first')",
                params![],
            )
            .await
            .expect("begun");
        let e = first.expect_err("UNIQUE");
        assert!(e.is_constraint(), "{e}");
        tx.execute("INSERT INTO t(x) VALUES ('third')", params![])
            .await
            .expect("the transaction goes on");
        tx.commit().await.expect("commit");
        assert_eq!(rows_in_t().await, 3);

        // A read-only one refuses a write and stays open for reads.
        let (tx, first) = a
            .begin_with(nexusd_client::TxnMode::ReadOnly, "DELETE FROM t", params![])
            .await
            .expect("begun");
        assert!(first.is_err(), "a read-only transaction refuses a write");
        let rows = tx
            .query("SELECT count(*) FROM t", params![])
            .await
            .expect("reads go on");
        assert_eq!(rows.get(0).and_then(|r| r.get::<i64>(0).ok()), Some(3));
        tx.rollback().await.expect("end");

        // A first read over one part (1 MiB) comes in parts, whole.
        a.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500) \
             INSERT INTO t(x) SELECT printf('%.2000c', 'r') || i FROM n",
            params![],
        )
        .await
        .expect("big rows");
        let (tx, first) = a
            .begin_with(
                nexusd_client::TxnMode::Deferred,
                "SELECT x FROM t WHERE x LIKE 'r%' ORDER BY id",
                params![],
            )
            .await
            .expect("begun");
        match first.expect("rows") {
            StatementResult::Rows(rows) => {
                assert_eq!(rows.len(), 1500);
                let last: String = rows.get(1499).expect("row").get(0).expect("x");
                assert!(last.ends_with("1500"), "in order: {}", &last[1990..]);
            }
            other => panic!("rows: {other:?}"),
        }
        tx.commit().await.expect("commit");

        // Over the daemon's limit of open transactions, nothing is begun.
        let one = a.transaction().await.expect("one");
        let two = a.transaction().await.expect("two");
        match a
            .begin_with(nexusd_client::TxnMode::Deferred, "SELECT 1", params![])
            .await
        {
            Err(e) => assert!(e.is_timeout_or_overload(), "{e}"),
            Ok(_) => panic!("a third transaction over max-transactions 2"),
        }
        one.rollback().await.expect("end");
        two.rollback().await.expect("end");
    });
}
