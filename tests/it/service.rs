//! Running as a service (issue 4): the systemd units, readiness and
//! watchdog notifications, socket activation, roles from peer credentials,
//! config reload, online backup, and WAL bounds under a slow reader.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexusd_client::{Client, params};
use nexusd_tests::{Daemon, nexusd_bin, wait_until};

use crate::{rt, spawn_worker};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_owned()
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("could not run the command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The units as shipped, with ExecStart pointed at the binary under test
/// (`systemd-analyze verify` checks that the executable exists).
fn units_in(dir: &Path) -> PathBuf {
    let service = std::fs::read_to_string(repo().join("systemd/nexusd.service")).expect("unit");
    let service = service.replace("/usr/bin/nexusd", &nexusd_bin().display().to_string());
    std::fs::write(dir.join("nexusd.service"), service).expect("write unit");
    std::fs::copy(
        repo().join("systemd/nexusd.socket"),
        dir.join("nexusd.socket"),
    )
    .expect("copy unit");
    dir.join("nexusd.service")
}

#[test]
fn units_verify_and_score_ok_on_systemd_analyze_security() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let service = units_in(tmp.path());
    let (ok, out) = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&service)
        .arg(tmp.path().join("nexusd.socket")));
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");

    let (_, out) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&service));
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level for nexusd.service"))
        .unwrap_or_else(|| panic!("no score in: {out}"));
    let score: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unreadable score line: {line}"));
    assert!(score <= 2.0, "exposure {score} is above 2.0 (OK): {out}");
    // docs/operations.md records the score; keep it true.
    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).expect("operations.md");
    assert!(
        doc.contains(&format!("exposure level {score:.1}")),
        "docs/operations.md does not record the current exposure level {score:.1}"
    );
}

/// READY=1 comes only once the socket accepts; WATCHDOG=1 keeps coming
/// while the writer answers; STOPPING=1 when the drain starts.
#[test]
fn notifies_ready_watchdog_and_stopping_on_notify_socket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let socket = tmp.path().join("n.sock");
    let mut child = Command::new(nexusd_bin())
        .arg("serve")
        .arg("--db")
        .arg(tmp.path().join("n.db"))
        .arg("--socket")
        .arg(&socket)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "300000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nexusd");
    let mut buf = [0u8; 4096];
    let mut recv = || {
        let n = notify.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv();
    assert!(
        first.starts_with("READY=1\n"),
        "first notification: {first:?}"
    );
    assert!(first.contains("STATUS=serving"), "{first:?}");
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "READY=1 was sent before the socket accepted connections"
    );
    let started = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        if recv().starts_with("WATCHDOG=1") {
            pings += 1;
        }
    }
    // 300 ms period, pinged every 100 ms: three pings well inside 2 s.
    assert!(started.elapsed() < Duration::from_secs(5));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stopping = false;
    for _ in 0..50 {
        if recv().starts_with("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    assert!(child.wait().expect("wait").success());
}

/// Through systemd-socket-activate: the daemon serves on the inherited
/// socket and leaves the file alone when it stops.
#[test]
fn serves_a_socket_passed_by_socket_activation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("act.sock");
    let db = tmp.path().join("act.db");
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(nexusd_bin())
        .arg("serve")
        .arg("--db")
        .arg(&db)
        // A different path: the inherited socket must win over it.
        .arg("--socket")
        .arg(tmp.path().join("unused.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start systemd-socket-activate");
    assert!(
        wait_until(Duration::from_secs(10), || socket.exists()),
        "systemd-socket-activate did not create the socket"
    );
    let rt = rt();
    rt.block_on(async {
        let c = Client::connect(&socket)
            .await
            .expect("connect through activation");
        c.execute("CREATE TABLE t(x)", params![])
            .await
            .expect("create");
        c.execute("INSERT INTO t VALUES (42)", params![])
            .await
            .expect("insert");
        let rows = c.query("SELECT x FROM t", params![]).await.expect("query");
        assert_eq!(rows.get(0).and_then(|r| r.get::<i64>(0).ok()), Some(42));
        let status = c.status().await.expect("status");
        assert_eq!(Path::new(&status.socket_path), socket);
    });
    assert!(!tmp.path().join("unused.sock").exists());
    // SAFETY: kill(2) on our own child (which exec'd into nexusd).
    unsafe { libc::kill(activator.id() as i32, libc::SIGTERM) };
    let status = activator.wait().expect("wait");
    assert!(status.success(), "exit {status:?}");
    assert!(
        socket.exists(),
        "nexusd unlinked a socket it inherited from the service manager"
    );
}

/// `setpriv` runs `nexusd ctl` as other uids; each role is checked both
/// ways. Needs root (CI runs as root).
#[test]
fn roles_from_peer_credentials_allow_and_refuse() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test runs clients as other uids with setpriv, which needs root");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = tmp.path().join("nexusd.toml");
    std::fs::write(
        &config,
        "socket-mode = \"0666\"\n[access]\nread = [\"uid:2001\"]\nwrite = [\"uid:2002\", \"gid:2100\"]\n",
    )
    .expect("config");
    let mut d = Daemon::start(&["--config", config.to_str().expect("utf-8")]);
    let socket = d.socket().to_owned();
    let ctl_as = |uid: u32, gid: u32, args: &[&str]| {
        run(Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(nexusd_bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&socket)
            .args(args))
    };
    let (ok, out) = ctl_as(0, 0, &["exec", "CREATE TABLE t(x)"]);
    assert!(ok, "root is admin: {out}");

    // read: queries yes, writes no.
    let (ok, out) = ctl_as(2001, 2001, &["query", "SELECT count(*) FROM t"]);
    assert!(ok, "uid 2001 may read: {out}");
    let (ok, out) = ctl_as(2001, 2001, &["exec", "INSERT INTO t VALUES (1)"]);
    assert!(!ok);
    assert!(
        out.contains("uid 2001 has the read role") && out.contains("needs the write role"),
        "{out}"
    );
    let (ok, out) = ctl_as(
        2001,
        2001,
        &["query", "INSERT INTO t VALUES (1) RETURNING x"],
    );
    assert!(!ok && out.contains("needs the write role"), "{out}");

    // write: writes yes, admin no; by uid and by group.
    let (ok, out) = ctl_as(2002, 2002, &["exec", "INSERT INTO t VALUES (2)"]);
    assert!(ok, "uid 2002 may write: {out}");
    let (ok, out) = ctl_as(2099, 2100, &["exec", "INSERT INTO t VALUES (3)"]);
    assert!(ok, "gid 2100 may write: {out}");
    let (ok, out) = ctl_as(2002, 2002, &["status"]);
    assert!(!ok);
    assert!(
        out.contains("uid 2002 has the write role") && out.contains("needs the admin role"),
        "{out}"
    );

    // Nobody else may connect at all.
    let (ok, out) = ctl_as(2003, 2003, &["query", "SELECT 1"]);
    assert!(!ok);
    assert!(out.contains("uid 2003 has no role on this nexusd"), "{out}");

    // Only what was allowed landed.
    let rt = rt();
    rt.block_on(async {
        let c = Client::connect(&socket).await.expect("connect");
        let rows = c
            .query("SELECT x FROM t ORDER BY x", params![])
            .await
            .expect("q");
        let xs: Vec<i64> = rows.iter().map(|r| r.get(0).expect("x")).collect();
        assert_eq!(xs, vec![2, 3]);
    });
    let log = d.log_text();
    assert!(log.contains("request refused by the access rules"), "{log}");
    d.signal(libc::SIGTERM);
    assert!(d.wait(Duration::from_secs(20)).success());
}

/// SIGHUP re-reads the file without dropping connections and logs what
/// changed; a broken file is rejected and the old settings stay.
#[test]
fn sighup_reloads_the_config_and_rejects_a_broken_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("nexusd.toml");
    std::fs::write(&config, "max-read-ms = 30000\nmax-connections = 100\n").expect("config");
    let d = Daemon::start(&["--config", config.to_str().expect("utf-8")]);
    let rt = rt();
    rt.block_on(async {
        let c = Client::connect(d.socket()).await.expect("connect");
        c.execute("CREATE TABLE t(x)", params![])
            .await
            .expect("create");
        let setting = |s: &nexusd_client::Status, k: &str| {
            s.settings
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };

        std::fs::write(
            &config,
            "max-read-ms = 1234\nmax-connections = 50\nlog-level = \"debug\"\nreaders = 9\n",
        )
        .expect("config");
        d.signal(libc::SIGHUP);
        assert!(wait_until(Duration::from_secs(10), || d
            .log_text()
            .contains("config reloaded")));
        // The same connection still works, and sees the new settings.
        let s = c.status().await.expect("status over the old connection");
        assert_eq!(setting(&s, "max-read-ms"), "1234");
        assert_eq!(setting(&s, "max-connections"), "50");
        assert_eq!(setting(&s, "log-level"), "debug");
        assert_eq!(setting(&s, "readers"), "4", "readers needs a restart");
        let log = d.log_text();
        assert!(log.contains("max-read-ms 30000 -> 1234"), "{log}");
        assert!(log.contains("readers (still 4; the file says 9)"), "{log}");

        std::fs::write(&config, "max-read-ms = \"soon\"\n").expect("config");
        d.signal(libc::SIGHUP);
        assert!(wait_until(Duration::from_secs(10), || d
            .log_text()
            .contains("config not reloaded; the old one stays in force")));
        let s = c.status().await.expect("status");
        assert_eq!(setting(&s, "max-read-ms"), "1234");
        c.execute("INSERT INTO t VALUES (1)", params![])
            .await
            .expect("still serving");
    });
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

/// A slow reader during a write storm: the read cap interrupts it with an
/// error that names the cap, and the WAL stays bounded because the writer
/// can checkpoint past it.
#[test]
fn slow_reader_is_capped_and_the_wal_stays_bounded() {
    let d = Daemon::start(&["--max-read-ms", "400", "--checkpoint-wal-bytes", "1048576"]);
    let rt = rt();
    let socket = d.socket().to_owned();
    rt.block_on(async {
        let c = Client::connect(&socket).await.expect("connect");
        c.execute(
            "CREATE TABLE acked(id INTEGER PRIMARY KEY, pad BLOB)",
            params![],
        )
        .await
        .expect("create");
    });
    let (capped, max_wal, writes) = rt.block_on(async {
        let c = Client::connect(&socket).await.expect("connect");
        let slow = Client::connect(&socket).await.expect("connect");
        let reader = tokio::spawn(async move {
            let mut capped = Vec::new();
            for _ in 0..6 {
                // Reads `acked` (so it holds a snapshot), then counts for
                // far longer than the cap.
                let r = slow
                    .query(
                        "WITH RECURSIVE n(i) AS (SELECT (SELECT count(*) FROM acked) UNION ALL \
                         SELECT i + 1 FROM n LIMIT 1000000000) SELECT count(*) FROM n",
                        params![],
                    )
                    .await;
                capped.push(r.err().map(|e| e.to_string()).unwrap_or_default());
            }
            capped
        });
        // The storm: rows of 4,000 bytes, so each write adds at least a
        // page to the WAL unless a checkpoint lets it start over.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let storm: Vec<_> = (0..16)
            .map(|_| {
                let c = c.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        c.execute(
                            "INSERT INTO acked(pad) VALUES (randomblob(4000))",
                            params![],
                        )
                        .await
                        .expect("storm write");
                    }
                })
            })
            .collect();
        let start = c.status().await.expect("status").writes_committed;
        let mut max_wal = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut writes = 0;
        while writes * 4096 < 48 << 20 && Instant::now() < deadline {
            let s = c.status().await.expect("status");
            max_wal = max_wal.max(s.wal_bytes);
            writes = s.writes_committed - start;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let capped = reader.await.expect("reader");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in storm {
            t.await.expect("storm task");
        }
        (capped, max_wal, writes)
    });
    assert!(
        capped
            .iter()
            .all(|e| e.contains("hit the cap of 400 ms on an open read transaction")),
        "{capped:?}"
    );
    // Unbounded, the WAL would have passed 48 MiB.
    assert!(
        writes * 4096 >= 48 << 20,
        "the storm was too small to tell ({writes} writes)"
    );
    assert!(
        max_wal < 16 << 20,
        "the WAL reached {max_wal} bytes over {writes} writes of 4 KB; log:\n{}",
        d.log_text()
    );
    assert_eq!(capped.len(), 6);
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
    let mut shell = Command::new(nexusd_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(d.socket())
        .arg("shell")
        .env("HOME", &d.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the shell");
    shell
        .stdin
        .take()
        .expect("stdin")
        .write_all(b".tables\n.schema t\nSELECT count(*)\n  FROM t;\nINSERT INTO t VALUES (99);\nSELEC 1;\n.quit\n")
        .expect("write");
    let out = shell.wait_with_output().expect("shell output");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{err}");
    assert!(text.contains(" t\n"), "{text}");
    assert!(text.contains("CREATE TABLE t(x);"), "{text}");
    assert!(text.contains(" 20\n"), "{text}");
    assert!(text.contains("OK: 1 row affected"), "{text}");
    assert!(err.contains("syntax error"), "{err}");
}
