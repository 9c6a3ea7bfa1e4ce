//! The daemon's life: crash safety, drain on SIGTERM, sole ownership, and
//! reconnection after a restart.

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

/// SIGSTOP under load: a client's call gives up by its own deadline with
/// "outcome unknown", never with a false "not applied"; after SIGCONT the
/// daemon goes on, and everything acknowledged is there.
#[test]
fn a_stopped_daemon_costs_clients_their_deadline_and_loses_nothing() {
    let d = Daemon::start(&[]);
    let rt = rt();
    let options = nexusd_client::ClientOptions {
        request_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let c = rt
        .block_on(nexusd_client::Client::connect_with(d.socket(), options))
        .expect("connect");
    rt.block_on(c.execute("CREATE TABLE s(n INTEGER PRIMARY KEY)", params![]))
        .expect("create");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new((Vec::new(), Vec::new(), Vec::new())));
    let writer = {
        let (c, stop, outcomes) = (c.clone(), stop.clone(), outcomes.clone());
        rt.spawn(async move {
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let r = c.execute("INSERT INTO s VALUES (?1)", params![n]).await;
                let mut o = outcomes.lock().expect("lock");
                match r {
                    Ok(_) => o.0.push(n),
                    Err(Error::Disconnected {
                        outcome_unknown: true,
                        ..
                    }) => o.1.push(n),
                    Err(e) => {
                        assert!(e.to_string().contains("not applied"), "{e}");
                        o.2.push(n)
                    }
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    d.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(6500));
    d.signal(libc::SIGCONT);
    let acked_before_resume = outcomes.lock().expect("lock").0.len();
    assert!(
        wait_until(Duration::from_secs(20), || outcomes
            .lock()
            .expect("lock")
            .0
            .len()
            > acked_before_resume + 50),
        "the daemon did not resume serving"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    rt.block_on(writer).expect("writer");
    let (acked, unknown, not_applied) = outcomes.lock().expect("lock").clone();
    assert!(!unknown.is_empty(), "no call met the stop: it was not felt");
    let present: HashSet<i64> = rt
        .block_on(c.query("SELECT n FROM s", params![]))
        .expect("read")
        .iter()
        .map(|r| r.get::<i64>(0).expect("n"))
        .collect();
    for n in &acked {
        assert!(present.contains(n), "acknowledged write {n} is missing");
    }
    for n in &not_applied {
        assert!(
            !present.contains(n),
            "write {n} was said not applied, yet it is there"
        );
    }
    let ok = rt
        .block_on(c.query("PRAGMA integrity_check", params![]))
        .expect("integrity");
    assert_eq!(
        ok.get(0).expect("row").get::<String>(0).expect("text"),
        "ok"
    );
}

/// An LD_PRELOAD shim that makes fsync and fdatasync of a `-wal` file fail
/// with EIO while the file `$NEXUSD_TEST_FSYNC_FAILS_IF` exists.
const FSYNC_SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int failing(int fd) {
    const char *trigger = getenv("NEXUSD_TEST_FSYNC_FAILS_IF");
    if (!trigger || access(trigger, F_OK) != 0) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    return n > 4 && strcmp(path + n - 4, "-wal") == 0;
}
int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (failing(fd)) { errno = EIO; return -1; }
    return real(fd);
}
int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (failing(fd)) { errno = EIO; return -1; }
    return real(fd);
}
"#;

/// fsync of the WAL returns EIO: the write it held is answered with its
/// outcome unknown (never acknowledged), the daemon exits with status 74
/// rather than serve what may not be on disk, and restarted, it holds
/// everything acknowledged before.
#[test]
fn a_failed_fsync_ends_the_daemon_and_loses_nothing_acknowledged() {
    let shim_dir = tempfile::tempdir().expect("tempdir");
    let src = shim_dir.path().join("fsync_shim.c");
    let so = shim_dir.path().join("fsync_shim.so");
    std::fs::write(&src, FSYNC_SHIM).expect("shim source");
    let (ok, out) = crate::run(
        Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&so)
            .arg(&src)
            .arg("-ldl"),
    );
    assert!(ok, "could not build the fsync shim with cc: {out}");
    let trigger = shim_dir.path().join("fail-now");
    let mut d = Daemon::start_with_env(
        &[],
        &[
            ("LD_PRELOAD", so.to_str().expect("utf-8")),
            (
                "NEXUSD_TEST_FSYNC_FAILS_IF",
                trigger.to_str().expect("utf-8"),
            ),
        ],
    );
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute("CREATE TABLE f(n INTEGER PRIMARY KEY)", params![])
        .expect("create");
    for n in 1..=50i64 {
        c.execute("INSERT INTO f VALUES (?1)", params![n])
            .expect("a write before the fault");
    }
    std::fs::write(&trigger, b"").expect("trigger");
    let err = c
        .execute("INSERT INTO f VALUES (51)", params![])
        .expect_err("a write whose fsync failed must not be acknowledged");
    assert!(
        matches!(err, Error::Io(_))
            || matches!(
                err,
                Error::Disconnected {
                    outcome_unknown: true,
                    ..
                }
            ),
        "{err}"
    );
    if let Error::Io(m) = &err {
        assert!(m.contains("outcome is unknown"), "{m}");
    }
    let status = d.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(74), "{}", d.log_text());
    assert!(d.log_text().contains("fsync of the WAL failed"));

    std::fs::remove_file(&trigger).expect("untrigger");
    d.restart();
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect again");
    let rows = c
        .query("SELECT count(*) FROM f WHERE n <= 50", params![])
        .expect("count");
    assert_eq!(rows.get(0).expect("row").get::<i64>(0).expect("n"), 50);
    let ok = c
        .query("PRAGMA integrity_check", params![])
        .expect("integrity");
    assert_eq!(
        ok.get(0).expect("row").get::<String>(0).expect("text"),
        "ok"
    );
}

/// A tmpfs mounted for one test (needs root), unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        crate::require_root("mounts a small tmpfs");
        let dir = tempfile::tempdir().expect("tempdir");
        let (ok, out) = crate::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size}"))
                .arg("tmpfs")
                .arg(dir.path()),
        );
        assert!(ok, "could not mount a tmpfs: {out}");
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// On a full disk, writes fail with a clear error and nothing acknowledged
/// is lost; once space is freed, writes go on without a restart.
#[test]
fn a_full_disk_fails_writes_clearly_and_they_resume_when_space_returns() {
    let disk = SmallDisk::mount("6m");
    let ballast = disk.0.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 2 << 20]).expect("ballast");
    let d = Daemon::start_in(disk.0.path(), &[]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute(
        "CREATE TABLE big(n INTEGER PRIMARY KEY, blob BLOB)",
        params![],
    )
    .expect("create");
    let blob = vec![0x5au8; 64 * 1024];
    let mut acked = 0i64;
    let err = loop {
        match c.execute(
            "INSERT INTO big VALUES (?1, ?2)",
            params![acked + 1, blob.clone()],
        ) {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 1000, "the 6 MiB disk never filled");
    };
    assert!(acked > 0, "no write fit at all");
    let text = err.to_string();
    println!("after {acked} writes, the full disk's answer: {text}");
    assert!(
        text.contains("full"),
        "the error should say the disk is full: {text}"
    );

    std::fs::remove_file(&ballast).expect("free the space");
    // The same key again: had the failed write been applied, this would
    // fail on the primary key and never resume.
    let resumed = wait_until(Duration::from_secs(10), || {
        c.execute(
            "INSERT INTO big VALUES (?1, ?2)",
            params![acked + 1, vec![1u8; 16]],
        )
        .is_ok()
    });
    assert!(resumed, "writes did not resume once space was freed");
    let rows = c
        .query("SELECT count(*) FROM big WHERE n <= ?1", params![acked])
        .expect("count");
    assert_eq!(rows.get(0).expect("row").get::<i64>(0).expect("n"), acked);
    let ok = c
        .query("PRAGMA integrity_check", params![])
        .expect("integrity");
    assert_eq!(
        ok.get(0).expect("row").get::<String>(0).expect("text"),
        "ok"
    );
    drop(c);
    drop(d);
}
