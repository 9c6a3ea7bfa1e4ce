//! The operator's `nexusd ctl`, run as a real process: status, tables,
//! exit codes, JSON, the maintenance commands, online backup, metrics, and
//! the shell.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexusd_client::{Client, params};
use nexusd_tests::{Daemon, nexusd_bin, wait_until};

use crate::{ctl, rt, run, shell, spawn_worker};

#[test]
fn ctl_prints_status_and_tables_and_fails_non_zero() {
    let d = Daemon::start(&[]);
    let ctl = |args: &[&str]| ctl(&d, args);
    let out = ctl(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("sqlite          {}", rusqlite::version())),
        "{text}"
    );
    assert!(text.contains("\nwriter          idle\n"), "{text}");
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

/// `ctl backup` while four processes write: the copy passes
/// integrity_check and holds every row acknowledged before it started.
#[test]
fn online_backup_is_consistent_while_writes_continue() {
    let d = Daemon::start(&[]);
    let rt = rt();
    rt.block_on(async {
        let c = Client::connect(d.socket()).await.expect("connect");
        c.execute(
            "CREATE TABLE acked(id INTEGER PRIMARY KEY, pad BLOB)",
            params![],
        )
        .await
        .expect("create");
    });
    let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
    let mut workers = Vec::new();
    let mut readers = Vec::new();
    for w in 0..4 {
        let mut child = spawn_worker(&[
            "stream".into(),
            d.socket().display().to_string(),
            w.to_string(),
            "4".into(),
        ]);
        let stdout = child.stdout.take().expect("stdout");
        let acked = acked.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(id) = line.strip_prefix("ack ").and_then(|i| i.parse().ok()) {
                    acked.lock().expect("lock").push(id);
                }
            }
        }));
        workers.push(child);
    }
    assert!(wait_until(Duration::from_secs(20), || acked
        .lock()
        .expect("lock")
        .len()
        >= 2000));
    let before: HashSet<i64> = acked.lock().expect("lock").iter().copied().collect();
    let dest = d.dir.join("backup.db");
    let (ok, out) = run(Command::new(nexusd_bin())
        .args(["ctl", "--socket"])
        .arg(d.socket())
        .arg("backup")
        .arg(&dest));
    let during = acked.lock().expect("lock").len();
    assert!(ok, "backup failed: {out}");
    assert!(out.contains("integrity_check ok"), "{out}");
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    for r in readers {
        let _ = r.join();
    }
    assert!(
        during > before.len(),
        "writes did not continue during the backup"
    );
    let copy = rusqlite::Connection::open(&dest).expect("open the copy");
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    let mut st = copy.prepare("SELECT id FROM acked").expect("prepare");
    let in_copy: HashSet<i64> = st
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("id"))
        .collect();
    let missing = before.difference(&in_copy).count();
    assert_eq!(
        missing, 0,
        "{missing} rows acked before the backup are not in it"
    );
    let final_count = acked.lock().expect("lock").len();
    assert!(in_copy.len() <= final_count + 64);

    // It refuses to overwrite, and says so.
    let (ok, out) = run(Command::new(nexusd_bin())
        .args(["ctl", "--socket"])
        .arg(d.socket())
        .arg("backup")
        .arg(&dest));
    assert!(
        !ok && out.contains("already exists; nexusd never overwrites"),
        "{out}"
    );
}

/// The rest of the admin suite through the real `nexusd ctl`: JSON output,
/// maintenance commands and their exit codes, metrics over ctl and over
/// the optional HTTP listener, and the shell fed from a pipe.
#[test]
fn admin_suite_metrics_and_shell() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("addr").port()
    };
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start(&["--metrics-listen", &addr]);
    let ctl = |args: &[&str]| {
        run(Command::new(nexusd_bin())
            .arg("ctl")
            .arg("--socket")
            .arg(d.socket())
            .args(args))
    };
    let (ok, out) = ctl(&["exec", "CREATE TABLE t(x)"]);
    assert!(ok, "{out}");
    for i in 0..20 {
        let (ok, out) = ctl(&["exec", "INSERT INTO t VALUES (?1)", &i.to_string()]);
        assert!(ok, "{out}");
    }
    let (ok, out) = ctl(&["exec", "INSERT INTO nope VALUES (1)"]);
    assert!(!ok && out.contains("no such table: nope"), "{out}");

    let (ok, out) = ctl(&["--json", "stats"]);
    assert!(ok, "{out}");
    assert!(out.contains("\"batch_size_histogram\""), "{out}");
    assert!(
        out.contains("\"execute\",\n      \"ok\",\n      21"),
        "21 ok executes expected: {out}"
    );
    assert!(
        out.contains("\"execute\",\n      \"sql\",\n      1"),
        "{out}"
    );
    let (ok, out) = ctl(&["clients"]);
    assert!(
        ok && out.contains("nexusd ctl") && out.contains("admin"),
        "{out}"
    );
    let (ok, out) = ctl(&["checkpoint", "truncate"]);
    assert!(ok && out.starts_with("checkpoint truncate:"), "{out}");
    let (ok, out) = ctl(&["integrity-check"]);
    assert!(ok && out.trim() == "ok", "{out}");
    let (ok, out) = ctl(&["integrity-check", "--quick", "--json"]);
    assert!(ok && out.contains("\"ok\":true"), "{out}");
    let (ok, out) = ctl(&["vacuum"]);
    assert!(ok && out.starts_with("vacuumed"), "{out}");
    let (ok, out) = ctl(&["optimize"]);
    assert!(ok, "{out}");
    let (ok, out) = ctl(&["--json", "query", "SELECT count(*) AS n FROM t"]);
    assert!(ok && out.trim() == "[{\"n\":20}]", "{out}");

    let (ok, metrics) = ctl(&["metrics"]);
    assert!(ok, "{metrics}");
    for series in [
        "nexusd_requests_total{kind=\"execute\",outcome=\"ok\"} 21",
        "nexusd_requests_total{kind=\"execute\",outcome=\"sql\"} 1",
        "# TYPE nexusd_batch_size histogram",
        "nexusd_commit_duration_seconds_count",
        "nexusd_wal_bytes",
        "nexusd_checkpoints_total{result=\"complete\"}",
        "nexusd_connections ",
    ] {
        assert!(metrics.contains(series), "no {series:?} in:\n{metrics}");
    }
    // The same over HTTP.
    use std::io::{Read, Write};
    let mut http = std::net::TcpStream::connect(&addr).expect("metrics listener");
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut body = String::new();
    http.read_to_string(&mut body).expect("read");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("text/plain; version=0.0.4"), "{body}");
    assert!(body.contains("nexusd_commits_total"), "{body}");

    // The shell, fed from a pipe.
    let out = shell(
        &d,
        b".tables\n.schema t\nSELECT count(*)\n  FROM t;\nINSERT INTO t VALUES (99);\n\
          CREATE TABLE log(x);\nCREATE TRIGGER tr AFTER INSERT ON t BEGIN \
          INSERT INTO log VALUES (new.x); END;\nINSERT INTO t VALUES (100), (101);\n\
          SELEC 1;\n.quit\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}{err}");
    assert!(text.contains(" t\n"), "{text}");
    assert!(text.contains("CREATE TABLE t(x);"), "{text}");
    assert!(text.contains(" 20\n"), "{text}");
    assert!(text.contains("OK: 1 row affected, last"), "{text}");
    assert!(
        text.contains("OK: 2 rows affected (4 changed in all, by triggers or cascades)"),
        "{text}"
    );
    assert!(err.contains("syntax error"), "{err}");
    assert!(err.contains("1 of the input's statements"), "{err}");
}

/// BEGIN, COMMIT and ROLLBACK typed at the shell open and end a
/// transaction: its statements see each other, a rolled-back one leaves
/// nothing, and a committed one is there for everyone.
#[test]
fn the_shell_runs_transactions() {
    let d = Daemon::start(&[]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute("CREATE TABLE t(x INTEGER)", params![])
        .expect("create");
    let out = shell(
        &d,
        b"BEGIN;\nINSERT INTO t VALUES (1);\nSELECT count(*) FROM t;\nROLLBACK;\n\
          BEGIN IMMEDIATE;\nINSERT INTO t VALUES (2);\nBEGIN;\nCOMMIT;\nCOMMIT;\n.quit\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}{err}");
    assert!(err.contains("2 of the input's statements"), "{err}");
    assert!(text.contains("deferred)"), "{text}");
    assert!(text.contains("immediate)"), "{text}");
    assert!(
        text.contains(" 1\n(1 row)"),
        "its own write, seen inside: {text}"
    );
    assert!(text.contains("ROLLBACK"), "{text}");
    assert!(err.contains("is already open"), "{err}");
    assert!(err.contains("no transaction is open"), "{err}");
    let rows = c.query("SELECT x FROM t", params![]).expect("rows");
    let xs: Vec<i64> = rows.iter().map(|r| r.get(0).expect("x")).collect();
    assert_eq!(xs, vec![2]);
}

/// Several statements on one line run in order, as in the sqlite3 shell; a
/// `;` in a string or a trigger body does not end a statement; the first
/// error stops the rest of that input and says so.
#[test]
fn the_shell_runs_several_statements_on_a_line() {
    let d = Daemon::start(&[]);
    let out = shell(
        &d,
        b"CREATE TABLE m(x); INSERT INTO m VALUES ('a;b'); INSERT INTO m VALUES (2);
          CREATE TABLE log(x); CREATE TRIGGER tr AFTER INSERT ON m BEGIN
          INSERT INTO log VALUES (new.x);
END;
          INSERT INTO m VALUES (3); INSERT INTO nope VALUES (1); INSERT INTO m VALUES (4);
.quit
",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}{err}");
    assert!(err.contains("no such table: nope"), "{err}");
    assert!(err.contains("1 later statement(s)"), "{err}");
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    let rows = c
        .query("SELECT group_concat(x, '|') FROM m", params![])
        .expect("rows");
    assert_eq!(
        rows.get(0).expect("row").get::<String>(0).expect("text"),
        "a;b|2|3"
    );
    let rows = c.query("SELECT x FROM log", params![]).expect("rows");
    assert_eq!(rows.len(), 1, "the trigger ran once, for the 3");
}

/// Fed from a pipe, the shell works as the sqlite3 shell does: comments
/// and blank lines before a statement are skipped (a dot-command after
/// them still runs), a clean run exits 0, and input that ends inside a
/// statement says so, does not run it, and exits non-zero.
#[test]
fn the_shell_skips_comments_and_reports_unfinished_input() {
    let d = Daemon::start(&[]);
    let out = shell(
        &d,
        b"-- set up\n\n/* a table */\n.tables\nCREATE TABLE c(x);\n-- then\n\
          INSERT INTO c VALUES (1); -- one\n-- a transaction\nBEGIN;\n\
          /* count */ SELECT count(*) AS n FROM c;\nCOMMIT;\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{err}");
    assert!(err.is_empty(), "{err}");
    assert!(text.contains("(0 rows)"), ".tables ran: {text}");
    assert_eq!(
        text.matches("(0 rows)").count(),
        1,
        "comments ran as nothing: {text}"
    );
    assert!(text.contains("BEGIN (transaction"), "{text}");
    assert!(text.contains(" n\n---\n 1\n(1 row)"), "{text}");

    let out = shell(&d, b"INSERT INTO c VALUES (2);\nINSERT INTO c VALUES (3)\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("ended inside a statement") && err.contains("INSERT INTO c VALUES (3)"),
        "{err}"
    );
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    let rows = c
        .query("SELECT group_concat(x) FROM c", params![])
        .expect("rows");
    assert_eq!(
        rows.get(0).expect("row").get::<String>(0).expect("text"),
        "1,2",
        "the unfinished statement did not run"
    );
}

/// `nexusd ctl query … | head` closes ctl's stdout early: ctl ends quietly
/// with status 0, as ripgrep does, instead of panicking on the next line.
#[test]
fn ctl_into_a_pipe_closed_early_ends_quietly() {
    use std::io::Read;
    let d = Daemon::start(&[]);
    let mut child = Command::new(nexusd_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(d.socket())
        .args([
            "query",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) \
             SELECT i, 'a line long enough to fill a pipe' FROM n",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ctl");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 64];
    stdout.read_exact(&mut first).expect("the first bytes");
    // Several MiB are still to come: far more than a pipe holds.
    drop(stdout);
    let out = child.wait_with_output().expect("ctl ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{:?}: {err}", out.status);
}

/// A statement that runs at least `slow-statement-ms` lands in the slow
/// log, from the writer, a reader or a transaction, failed or not; a fast
/// one does not. `ctl slowlog` prints it, `--reset` empties it, and a
/// reload that sets 0 turns it off.
#[test]
fn the_slow_log_keeps_what_ran_long_and_ctl_shows_it() {
    const SLOW: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                        WHERE i < 1000000) SELECT count(*) FROM n WHERE i > ?1";
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("nexusd.toml");
    std::fs::write(&config, "slow-statement-ms = 50\n").expect("config");
    let d = Daemon::start(&["--config", config.to_str().expect("utf-8")]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute("CREATE TABLE t(x)", params![]).expect("create");
    c.query("SELECT 1", params![]).expect("a fast read");
    c.query(SLOW, params![0]).expect("a slow read");
    c.execute(
        &format!("INSERT INTO t {}", SLOW.replace("?1", "0")),
        params![],
    )
    .expect("a slow write");
    let txn = c.transaction().expect("begin");
    txn.query(SLOW, params![1])
        .expect("a slow read in a transaction");
    txn.commit().expect("commit");
    let e = c
        .query(
            &SLOW.replace(
                "count(*) FROM n WHERE i > ?1",
                "CASE WHEN count(*) > 0 THEN abs(-9223372036854775807 - 1) END FROM n",
            ),
            params![],
        )
        .expect_err("integer overflow after a long scan");
    assert!(e.to_string().contains("integer overflow"), "{e}");
    // Another client's slow write, and then it leaves: its entry still
    // names it.
    let other = nexusd_client::blocking::Client::connect_with(
        d.socket(),
        nexusd_client::ClientOptions {
            client_name: "nightly-report".to_owned(),
            ..Default::default()
        },
    )
    .expect("connect");
    let other_id = c
        .clients()
        .expect("clients")
        .iter()
        .find(|i| i.client_name == "nightly-report")
        .map(|i| i.id)
        .expect("the second client is listed");
    other
        .execute(
            &format!("INSERT INTO t {}", SLOW.replace("?1", "2")),
            params![],
        )
        .expect("another client's slow write");
    drop(other);

    let log = c.slow_log(false).expect("slow log");
    let seen: Vec<(&str, u32, bool)> = log
        .iter()
        .map(|s| (s.ran_on.as_str(), s.params, s.error.is_some()))
        .collect();
    assert_eq!(
        seen,
        [
            ("reader", 1, false),
            ("writer", 0, false),
            ("transaction", 1, false),
            ("reader", 0, true),
            ("writer", 0, false)
        ],
        "{log:#?}"
    );
    let me = c
        .clients()
        .expect("clients")
        .into_iter()
        .find(|i| i.pid == Some(std::process::id()) && i.client_name != "nightly-report")
        .expect("this client is listed");
    assert!(
        log[..4]
            .iter()
            .all(|s| s.client_id == me.id && s.client_name == me.client_name && s.pid == me.pid),
        "{log:#?}"
    );
    assert_eq!(
        (log[4].client_id, log[4].client_name.as_str(), log[4].pid),
        (other_id, "nightly-report", Some(std::process::id())),
        "{log:#?}"
    );
    assert!(log.iter().all(|s| s.duration_us >= 50_000), "{log:#?}");
    assert_eq!(log[0].sql, SLOW);
    assert!(
        log[3]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("integer overflow")),
        "{log:#?}"
    );
    assert!(log.windows(2).all(|w| w[0].id < w[1].id));
    let metrics = c.metrics().expect("metrics");
    assert!(
        metrics.contains("\nnexusd_slow_statements_total 5\n"),
        "{metrics}"
    );

    let out = ctl(&d, &["slowlog", "--reset"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("statements of at least 50 ms") && text.contains("on the writer"),
        "{text}"
    );
    assert!(text.contains("    WITH RECURSIVE n(i)"), "{text}");
    assert!(text.contains("failed: integer overflow"), "{text}");
    assert!(
        text.contains(&format!(
            "client {other_id} (nightly-report, pid {})",
            std::process::id()
        )),
        "{text}"
    );
    assert!(c.slow_log(false).expect("slow log").is_empty(), "reset");

    std::fs::write(&config, "slow-statement-ms = 0\n").expect("config");
    assert!(
        c.reload()
            .expect("reload")
            .contains("slow-statement-ms 50 -> 0")
    );
    c.query(SLOW, params![0]).expect("a slow read");
    assert!(
        c.slow_log(false).expect("slow log").is_empty(),
        "turned off"
    );
    let out = ctl(&d, &["slowlog"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("the log is off"));
}
