//! The daemon's life: crash safety, drain on SIGTERM, sole ownership,
//! reconnection, and the operator's `nexusd ctl`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexusd_client::{Error, params};
use nexusd_tests::{Daemon, nexusd_bin, wait_until};

use crate::{LONG, client, rt, s, spawn_worker};

/// (e) SIGKILL while writers run: after a restart every acknowledged write
/// is present and integrity_check says ok.
#[test]
fn acknowledged_writes_survive_sigkill() {
    let mut d = Daemon::start(&[]);
    let rt = rt();
    rt.block_on(async {
        client(&d)
            .await
            .execute(
                "CREATE TABLE acked(id INTEGER PRIMARY KEY, pad BLOB)",
                params![],
            )
            .await
            .expect("create");
    });
    let acked = Arc::new(Mutex::new(HashSet::<i64>::new()));
    let mut readers = Vec::new();
    let mut workers = Vec::new();
    for w in 0..4 {
        let mut child = spawn_worker(&[s("stream"), d.socket().display().to_string(), s(w), s(8)]);
        let stdout = child.stdout.take().expect("stdout");
        let acked = acked.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("ack ") {
                    acked.lock().expect("lock").insert(id.parse().expect("id"));
                }
            }
        }));
        workers.push(child);
    }
    assert!(
        wait_until(LONG, || acked.lock().expect("lock").len() >= 3000),
        "writers made too little progress"
    );
    d.kill9();
    for mut w in workers {
        assert!(w.wait().expect("worker").success());
    }
    for r in readers {
        r.join().expect("reader thread");
    }
    let acked = acked.lock().expect("lock").clone();
    d.restart();
    rt.block_on(async {
        let c = client(&d).await;
        let rows = c
            .query("SELECT id FROM acked", params![])
            .await
            .expect("ids");
        let present: HashSet<i64> = rows.iter().map(|r| r.get::<i64>(0).expect("id")).collect();
        let missing: Vec<_> = acked.difference(&present).take(5).collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged writes lost, e.g. {missing:?}",
            acked.difference(&present).count()
        );
        let check = c
            .query("PRAGMA integrity_check", params![])
            .await
            .expect("integrity_check");
        assert_eq!(
            check.get(0).expect("row").get::<String>(0).expect("text"),
            "ok"
        );
    });
    assert!(
        d.log_text().contains("replacing a stale socket"),
        "the restart should replace the dead daemon's socket"
    );
}

/// (g) SIGTERM drains: everything already queued is answered, the WAL is
/// checkpointed, the socket removed, and the exit status is 0.
#[test]
fn sigterm_answers_everything_queued_then_exits_cleanly() {
    let mut d = Daemon::start(&[]);
    let rt = rt();
    let (ok, refused) = rt.block_on(async {
        let setup = client(&d).await;
        setup
            .execute("CREATE TABLE drained(id INTEGER PRIMARY KEY)", params![])
            .await
            .expect("create");
        let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for conn in 0..8i64 {
            let c = client(&d).await;
            for i in 0..200i64 {
                let c = c.clone();
                let answered = answered.clone();
                tasks.push(tokio::spawn(async move {
                    let id = conn * 1000 + i;
                    let r = c
                        .execute("INSERT INTO drained(id) VALUES (?1)", params![id])
                        .await;
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    (id, r)
                }));
            }
        }
        // Once the first answers arrive the daemon has read the requests;
        // stop it while most are still queued.
        let deadline = tokio::time::Instant::now() + LONG;
        while answered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no request was answered"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        d.signal(libc::SIGTERM);
        let (mut ok, mut refused) = (Vec::new(), Vec::new());
        for t in tasks {
            match t.await.expect("task") {
                (id, Ok(_)) => ok.push(id),
                (id, Err(Error::ShuttingDown(_))) => refused.push(id),
                (id, Err(e)) => {
                    panic!("request {id} got neither an answer nor a clean refusal: {e}")
                }
            }
        }
        (ok, refused)
    });
    assert_eq!(ok.len() + refused.len(), 1600);
    assert!(!ok.is_empty());
    let status = d.wait(LONG);
    assert!(status.success(), "exit status {status}");
    assert!(!d.socket.exists(), "the socket must be removed");
    let wal = d.db.with_extension("db-wal");
    assert!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0,
        "the WAL must be checkpointed and truncated"
    );
    let log = d.log_text();
    assert!(
        log.contains("final checkpoint") && log.contains("stopped cleanly"),
        "{log}"
    );
    d.restart();
    rt.block_on(async {
        let c = client(&d).await;
        let rows = c
            .query("SELECT id FROM drained", params![])
            .await
            .expect("ids");
        let present: HashSet<i64> = rows.iter().map(|r| r.get::<i64>(0).expect("id")).collect();
        assert_eq!(
            present,
            ok.iter().copied().collect::<HashSet<_>>(),
            "answered Ok = applied, refused = not applied"
        );
    });
}

/// (h) A second daemon on the same database exits at once, naming the
/// owner's pid; a second daemon on the same socket never steals it.
#[test]
fn a_second_daemon_is_refused() {
    let d = Daemon::start(&[]);
    let out = Command::new(nexusd_bin())
        .args(["serve", "--db"])
        .arg(&d.db)
        .arg("--socket")
        .arg(d.dir.join("other.sock"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pid {}", d.pid())), "{err}");

    let out = Command::new(nexusd_bin())
        .args(["serve", "--db"])
        .arg(d.dir.join("other.db"))
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("socket") && err.contains(&format!("pid {}", d.pid())),
        "{err}"
    );
    rt().block_on(async {
        client(&d)
            .await
            .ping()
            .await
            .expect("the first daemon still serves")
    });
}

/// After the daemon restarts, the next call reconnects; a write cut off by
/// the crash is reported as of unknown outcome, never retried.
#[test]
fn client_reconnects_after_a_restart() {
    let mut d = Daemon::start(&[]);
    let rt = rt();
    let c = rt.block_on(client(&d));
    rt.block_on(async {
        c.execute("CREATE TABLE t(x)", params![])
            .await
            .expect("create")
    });
    d.kill9();
    let err = rt
        .block_on(c.execute("INSERT INTO t VALUES (1)", params![]))
        .expect_err("daemon is down");
    assert!(err.is_disconnected(), "{err}");
    d.restart();
    rt.block_on(async {
        c.execute("INSERT INTO t VALUES (2)", params![])
            .await
            .expect("reconnected");
        let rows = c.query("SELECT x FROM t", params![]).await.expect("query");
        assert_eq!(rows.len(), 1);
    });
}

#[test]
fn blocking_client_and_typed_values() {
    let d = Daemon::start(&[]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute(
        "CREATE TABLE v(i INTEGER, r REAL, t TEXT, b BLOB, n)",
        params![],
    )
    .expect("create");
    let blob: &[u8] = &[0, 1, 2];
    c.execute(
        "INSERT INTO v VALUES (?1, ?2, ?3, ?4, ?5)",
        params![7i32, 2.5, "txt", blob, None::<i64>],
    )
    .expect("insert");
    c.execute(
        "INSERT INTO v VALUES (:i, :r, :t, :b, :n)",
        nexusd_client::named_params! {
            ":i" => 8i64, ":r" => 1.0, ":t" => String::from("two"), ":b" => vec![9u8], ":n" => true,
        },
    )
    .expect("named insert");
    let rows = c
        .query("SELECT i, r, t, b, n FROM v ORDER BY i", params![])
        .expect("query");
    assert_eq!(rows.columns(), ["i", "r", "t", "b", "n"]);
    let r0 = rows.get(0).expect("row 0");
    assert_eq!(r0.get::<i64>(0).expect("i"), 7);
    assert_eq!(r0.get::<f64>(1).expect("r"), 2.5);
    assert_eq!(r0.get::<String>(2).expect("t"), "txt");
    assert_eq!(r0.get::<Vec<u8>>(3).expect("b"), vec![0, 1, 2]);
    assert_eq!(r0.get::<Option<i64>>(4).expect("n"), None);
    assert!(rows.get(1).expect("row 1").get::<bool>(4).expect("bool"));
    // INSERT .. RETURNING through query goes to the writer.
    let ret = c
        .query("INSERT INTO v(i) VALUES (99) RETURNING i * 2", params![])
        .expect("returning");
    assert_eq!(ret.get(0).expect("row").get::<i64>(0).expect("i"), 198);
    let e = c
        .execute("INSERT INTO nope VALUES (1)", params![])
        .expect_err("no such table");
    assert!(
        e.as_sql().expect("sql").message.contains("no such table"),
        "{e}"
    );
    let e = c.execute("BEGIN", params![]).expect_err("refused");
    assert!(e.as_sql().expect("sql").refused, "{e}");
    let e = c
        .query("SELECT ?1", params![])
        .expect_err("missing parameter");
    assert!(e.to_string().contains("1 parameter(s) but 0"), "{e}");
}

#[test]
fn ctl_prints_status_and_tables_and_fails_non_zero() {
    let d = Daemon::start(&[]);
    let ctl = |args: &[&str]| {
        Command::new(nexusd_bin())
            .arg("ctl")
            .arg("--socket")
            .arg(d.socket())
            .args(args)
            .output()
            .expect("ctl")
    };
    let out = ctl(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("sqlite          {}", rusqlite::version())),
        "{text}"
    );
    assert!(ctl(&["exec", "CREATE TABLE t(a, b)"]).status.success());
    assert!(
        ctl(&["exec", "INSERT INTO t VALUES (?1, ?2)", "1", "hello"])
            .status
            .success()
    );
    let out = ctl(&["query", "SELECT a, b FROM t"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        " a | b\n---+-------\n 1 | hello\n(1 row)\n"
    );
    let out = ctl(&["query", "SELEC nonsense"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("syntax error"));
    let out = Command::new(nexusd_bin())
        .args(["ctl", "--socket"])
        .arg(d.dir.join("absent.sock"))
        .arg("status")
        .output()
        .expect("ctl");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the daemon running?"));
}

/// Limits answer clearly: the connection limit refuses with "overloaded",
/// a runaway read is interrupted, and a write that cannot start by its
/// deadline is answered "timed out, not applied" and is indeed not applied.
#[test]
fn limits_fail_clearly_and_apply_nothing() {
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
        // `fast` sends a 300 ms time limit with each request; `c` leaves the
        // daemon's default, so checks do not race the machine's load.
        let c = client(&d).await;
        let fast = nexusd_client::Client::connect_with(
            d.socket(),
            nexusd_client::ClientOptions { request_timeout: Some(Duration::from_millis(300)), ..Default::default() },
        )
        .await
        .expect("connect");
        c.execute("CREATE TABLE t(x INTEGER)", params![]).await.expect("create");
        c.execute("CREATE TABLE s(x INTEGER)", params![]).await.expect("create");

        // A batch whose answer would be too large fails whole: its write is
        // not applied, even though each statement alone fits.
        let e = c
            .batch(vec![
                nexusd_client::Statement::new("INSERT INTO t VALUES (-1)", params![]),
                nexusd_client::Statement::new("SELECT zeroblob(60000)", params![]),
                nexusd_client::Statement::new("SELECT zeroblob(60000)", params![]),
            ])
            .await
            .expect_err("too large");
        assert!(matches!(e, Error::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("limit of 100000 bytes"), "{e}");
        let rows = c.query("SELECT count(*) FROM t", params![]).await.expect("count");
        assert_eq!(rows.get(0).expect("row").get::<i64>(0).expect("n"), 0);

        // A runaway read is interrupted at its deadline.
        let e = fast
            .query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", params![])
            .await
            .expect_err("an endless query must be interrupted");
        assert!(matches!(e, Error::Timeout(_)), "{e}");
        assert!(e.to_string().contains("time limit of 300 ms"), "{e}");

        // A long write holds the writer; short writes queued behind it time out.
        let slow = nexusd_client::Client::connect(d.socket()).await.expect("connect");
        let long = tokio::spawn(async move {
            slow.execute(
                "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 3000000) SELECT -x FROM c",
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
                wave.push(tokio::spawn(async move { fast.execute("INSERT INTO s VALUES (?1)", params![i]).await }));
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
        let rows = c.query("SELECT count(*) FROM s", params![]).await.expect("count");
        let landed: i64 = rows.get(0).expect("row").get(0).expect("n");
        assert!(timed_out > 0, "the short writes should have timed out behind the long one");
        assert_eq!(landed, sent - timed_out, "timed-out writes must not be applied");

        // The connection limit: open connections until one is refused; at
        // most 3 can be open at once, `c` and `fast` among them.
        let mut held = Vec::new();
        let refused = loop {
            match nexusd_client::Client::connect_with(d.socket(), nexusd_client::ClientOptions { reconnect_for: Duration::ZERO, ..Default::default() }).await {
                Ok(extra) => {
                    held.push(extra);
                    assert!(held.len() <= 3, "the limit of 3 connections was not enforced");
                }
                Err(e) => break e,
            }
        };
        assert!(matches!(refused, Error::Overloaded(_)), "{refused}");
        assert!(refused.to_string().contains("limit of 3 connections"), "{refused}");
        c.ping().await.expect("existing connections keep working");
    });
}
