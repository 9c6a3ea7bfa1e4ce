//! Many writers at once: exactly-once acknowledgement, per-request
//! savepoints, atomic batches, and check-then-insert.

use nexusd_client::params;
use nexusd_tests::Daemon;

use crate::{client, finish_worker, rt, s, spawn_worker};

/// (a) 64 concurrent writers from 8 processes: every write is acknowledged
/// exactly once, with zero errors and an exact final row count.
#[test]
fn writers_from_many_processes_are_each_acknowledged_once() {
    let d = Daemon::start(&[]);
    let rt = rt();
    rt.block_on(async {
        client(&d)
            .await
            .execute(
                "CREATE TABLE writes(worker INTEGER, client INTEGER, seq INTEGER, \
                 UNIQUE(worker, client, seq))",
                params![],
            )
            .await
            .expect("create");
    });
    const PROCESSES: u64 = 8;
    const CLIENTS: u64 = 8;
    const WRITES: u64 = 150;
    let workers: Vec<_> = (0..PROCESSES)
        .map(|w| {
            spawn_worker(&[
                s("insert"),
                d.socket().display().to_string(),
                s(w),
                s(CLIENTS),
                s(WRITES),
            ])
        })
        .collect();
    let mut acked = 0;
    for w in workers {
        let r = finish_worker(w);
        assert_eq!(r["errors"], 0, "a writer saw errors: {r:?}");
        assert_eq!(r["acked"], CLIENTS * WRITES);
        acked += r["acked"];
    }
    assert_eq!(acked, PROCESSES * CLIENTS * WRITES);
    rt.block_on(async {
        let c = client(&d).await;
        let rows = c.query("SELECT count(*), count(DISTINCT worker || '-' || client || '-' || seq) FROM writes", params![]).await.expect("count");
        let row = rows.get(0).expect("a row");
        assert_eq!(row.get::<i64>(0).expect("count") as u64, acked);
        assert_eq!(row.get::<i64>(1).expect("distinct") as u64, acked);
        let st = c.status().await.expect("status");
        assert!(st.writes_committed >= acked, "{st:?}");
        assert!(
            st.batches_committed < st.writes_committed,
            "64 concurrent writers should share commits: {st:?}"
        );
    });
}

/// (b) Within the same group commits, statements that violate a constraint
/// fail alone, each with its own error, while the rest commit.
#[test]
fn a_failing_request_fails_alone_inside_a_group_commit() {
    let d = Daemon::start(&[]);
    rt().block_on(async {
        let c = client(&d).await;
        c.execute(
            "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT NOT NULL CHECK(length(v) < 10))",
            params![],
        )
        .await
        .expect("create");
        for k in (0..400).step_by(4) {
            c.execute("INSERT INTO kv(k, v) VALUES (?1, 'seed')", params![k])
                .await
                .expect("seed");
        }
        let before = c.status().await.expect("status");
        // 400 requests at once on shared connections: every 4th key collides
        // with a seeded row, every 4th+1 breaks the CHECK, the rest are fine.
        let mut tasks = Vec::new();
        for k in 0..400i64 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let v = if k % 4 == 1 {
                    "far-too-long-value"
                } else {
                    "ok"
                };
                (
                    k,
                    c.execute("INSERT INTO kv(k, v) VALUES (?1, ?2)", params![k, v])
                        .await,
                )
            }));
        }
        let mut ok = 0;
        for t in tasks {
            let (k, r) = t.await.expect("task");
            match k % 4 {
                0 => {
                    let e = r.expect_err("duplicate key must fail");
                    assert!(e.is_constraint(), "{e}");
                    let sql = e.as_sql().expect("sql error");
                    assert_eq!(sql.extended_code, 1555, "PRIMARY KEY violation: {sql:?}");
                    assert!(sql.message.contains("kv.k"), "{sql:?}");
                }
                1 => {
                    let e = r.expect_err("CHECK violation must fail");
                    let sql = e.as_sql().expect("sql error");
                    assert_eq!(sql.extended_code, 275, "CHECK violation: {sql:?}");
                }
                _ => {
                    r.expect("a valid insert must commit");
                    ok += 1;
                }
            }
        }
        assert_eq!(ok, 200);
        let rows = c
            .query(
                "SELECT count(*), sum(v = 'ok'), sum(v = 'seed') FROM kv",
                params![],
            )
            .await
            .expect("count");
        let row = rows.get(0).expect("row");
        assert_eq!(row.get::<i64>(0).expect("n"), 300);
        assert_eq!(row.get::<i64>(1).expect("ok"), 200);
        assert_eq!(row.get::<i64>(2).expect("seed"), 100);
        let after = c.status().await.expect("status");
        let writes = after.writes_committed - before.writes_committed;
        let commits = after.batches_committed - before.batches_committed;
        assert!(
            commits < writes,
            "requests should have shared commits: {writes} writes in {commits} commits"
        );
    });
}

/// (c) 64 clients move units between accounts under CHECK(balance >= 0);
/// some moves are rejected, and the total never changes.
#[test]
fn atomic_batches_keep_the_total_invariant() {
    const ACCOUNTS: i64 = 10;
    const START: i64 = 100;
    let d = Daemon::start(&[]);
    let rt = rt();
    rt.block_on(async {
        let c = client(&d).await;
        c.execute("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL CHECK(balance >= 0))", params![])
            .await
            .expect("create");
        for id in 0..ACCOUNTS {
            c.execute("INSERT INTO accounts VALUES (?1, ?2)", params![id, START]).await.expect("seed");
        }
    });
    let workers: Vec<_> = (0..8)
        .map(|w| {
            spawn_worker(&[
                s("transfer"),
                d.socket().display().to_string(),
                s(8),
                s(60),
                s(ACCOUNTS),
                s(w + 1),
            ])
        })
        .collect();
    let (mut applied, mut rejected) = (0, 0);
    for w in workers {
        let r = finish_worker(w);
        assert_eq!(r["errors"], 0, "{r:?}");
        applied += r["applied"];
        rejected += r["rejected"];
    }
    assert_eq!(applied + rejected, 8 * 8 * 60);
    assert!(rejected > 0, "the test must exercise rejected moves");
    assert!(applied > 0);
    rt.block_on(async {
        let c = client(&d).await;
        let rows = c
            .query("SELECT sum(balance), min(balance) FROM accounts", params![])
            .await
            .expect("sum");
        let row = rows.get(0).expect("row");
        assert_eq!(row.get::<i64>(0).expect("sum"), ACCOUNTS * START);
        assert!(row.get::<i64>(1).expect("min") >= 0);
    });
}

/// (d) Check-then-insert from 50 clients, one batch each, leaves exactly one row.
#[test]
fn check_then_insert_in_a_batch_leaves_one_row() {
    let d = Daemon::start(&[]);
    let rt = rt();
    rt.block_on(async {
        // No UNIQUE constraint: only the batch's atomicity can keep it to one.
        client(&d)
            .await
            .execute("CREATE TABLE singleton(name TEXT, owner TEXT)", params![])
            .await
            .expect("create");
    });
    let workers: Vec<_> = (0..5)
        .map(|w| spawn_worker(&[s("claim"), d.socket().display().to_string(), s(w), s(10)]))
        .collect();
    let (mut won, mut lost) = (0, 0);
    for w in workers {
        let r = finish_worker(w);
        assert_eq!(r["errors"], 0, "{r:?}");
        won += r["won"];
        lost += r["lost"];
    }
    assert_eq!((won, lost), (1, 49));
    rt.block_on(async {
        let rows = client(&d)
            .await
            .query("SELECT count(*) FROM singleton", params![])
            .await
            .expect("count");
        assert_eq!(rows.get(0).expect("row").get::<i64>(0).expect("n"), 1);
    });
}

/// (e) A request that rolls back the whole transaction of its batch
/// (`RAISE(ROLLBACK)` in a trigger, `INSERT OR ROLLBACK`) fails alone: the
/// requests run before it in that batch run again in the next and are
/// applied and counted once, and those after it are not disturbed.
#[test]
fn a_request_that_rolls_back_its_batch_fails_alone() {
    let d = Daemon::start(&["--txn-idle-timeout-ms", "60000"]);
    rt().block_on(async {
        let c = client(&d).await;
        c.batch(vec![
            nexusd_client::Statement::new("CREATE TABLE t(x INTEGER PRIMARY KEY)", params![]),
            nexusd_client::Statement::new("CREATE TABLE r(x INTEGER)", params![]),
            nexusd_client::Statement::new(
                "CREATE TRIGGER r_never BEFORE INSERT ON r BEGIN \
                 SELECT RAISE(ROLLBACK, 'r takes no rows'); END",
                params![],
            ),
            nexusd_client::Statement::new("CREATE TABLE u(x INTEGER PRIMARY KEY)", params![]),
            nexusd_client::Statement::new("INSERT INTO u VALUES (7)", params![]),
        ])
        .await
        .expect("schema");
        // A transaction holds the writer while the five requests queue, in
        // this order; its commit lets them into one batch. (The sleeps
        // order the sends; they measure nothing.)
        let tx = c.transaction().await.expect("begin");
        tx.execute("INSERT INTO t VALUES (0)", params![])
            .await
            .expect("insert");
        let sends = [
            "INSERT INTO t VALUES (1)",
            "INSERT INTO r VALUES (1)",
            "INSERT INTO t VALUES (2)",
            "INSERT OR ROLLBACK INTO u VALUES (7)",
            "INSERT INTO t VALUES (3)",
        ];
        let mut tasks = Vec::new();
        for sql in sends {
            let own = client(&d).await;
            tasks.push(tokio::spawn(async move {
                let r = own.execute(sql, params![]).await;
                let total = own
                    .query("SELECT total_changes()", params![])
                    .await
                    .expect("total_changes()");
                let total = total.get(0).expect("row").get::<i64>(0).expect("n");
                (sql, r, total)
            }));
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        tx.commit().await.expect("commit");
        for task in tasks {
            let (sql, r, total) = task.await.expect("task");
            if sql.contains("INTO r") {
                let e = r.expect_err("the trigger refuses every row");
                assert!(e.to_string().contains("r takes no rows"), "{e}");
                assert_eq!(total, 0, "{sql}: nothing it changed stays counted");
            } else if sql.contains("OR ROLLBACK") {
                let e = r.expect_err("the key is taken");
                assert!(e.is_constraint(), "{e}");
                assert_eq!(total, 0, "{sql}: nothing it changed stays counted");
            } else {
                let done = r.unwrap_or_else(|e| panic!("{sql} fails: {e}"));
                assert_eq!(done.rows_affected, 1, "{sql}");
                assert_eq!(total, 1, "{sql}: applied once, counted once");
            }
        }
        let rows = c
            .query("SELECT x FROM t ORDER BY x", params![])
            .await
            .expect("rows");
        let got: Vec<i64> = rows.iter().map(|r| r.get(0).expect("x")).collect();
        assert_eq!(got, [0, 1, 2, 3]);
        let rows = c
            .query("SELECT count(*) FROM r", params![])
            .await
            .expect("count");
        assert_eq!(rows.get(0).expect("row").get::<i64>(0).expect("n"), 0);
        assert!(
            d.log_text().contains("re-running the others"),
            "the first batch was rolled back and run again"
        );
    });
}
