//! The daemon's life: crash safety, drain on SIGTERM, sole ownership, and
//! reconnection after a restart.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// A blocking client idle across a daemon restart: its runtime did not run
/// in between, so it learns of the old connection's death only when the
/// next request cannot be written. Nothing of that request left, so it goes
/// on a fresh connection and succeeds: the restart costs the caller no
/// error. (Before, that first call failed "the request was not sent".)
#[test]
fn a_blocking_client_s_first_call_after_a_restart_succeeds() {
    let mut d = Daemon::start(&[]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute("CREATE TABLE t(x)", params![]).expect("create");
    for round in 0..3i64 {
        d.kill9();
        d.restart();
        c.execute("INSERT INTO t VALUES (?1)", params![round])
            .expect("the first call after a restart goes on a fresh connection");
    }
    let rows = c.query("SELECT count(*) FROM t", params![]).expect("count");
    assert_eq!(rows.get(0).expect("row").get::<i64>(0).expect("n"), 3);
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

/// An LD_PRELOAD shim that fails file operations with EIO (or the errno
/// number in `NEXUSD_TEST_FAULT_ERRNO`) while a trigger file exists, each
/// kind by its own environment variable naming that file:
///
/// - `NEXUSD_TEST_FSYNC_FAILS_IF`: fsync and fdatasync of a `-wal` file;
/// - `NEXUSD_TEST_WRITE_FAILS_IF`: write, pwrite and pwrite64 to a `-wal`
///   file (nothing is written);
/// - `NEXUSD_TEST_DB_FSYNC_FAILS_IF`: fsync and fdatasync of a `.db` file
///   (what a checkpoint syncs).
const FAULT_SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
static int ends_with(int fd, const char *suffix) {
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    size_t k = strlen(suffix);
    return (size_t)n > k && strcmp(path + n - k, suffix) == 0;
}
static int armed(const char *var) {
    const char *trigger = getenv(var);
    return trigger && access(trigger, F_OK) == 0;
}
static int fault_errno(void) {
    const char *e = getenv("NEXUSD_TEST_FAULT_ERRNO");
    return e ? atoi(e) : EIO;
}
static int sync_fails(int fd) {
    return (armed("NEXUSD_TEST_FSYNC_FAILS_IF") && ends_with(fd, "-wal"))
        || (armed("NEXUSD_TEST_DB_FSYNC_FAILS_IF") && ends_with(fd, ".db"));
}
static int write_fails(int fd) {
    return armed("NEXUSD_TEST_WRITE_FAILS_IF") && ends_with(fd, "-wal");
}
#define REAL(name) static __typeof__(&name) real; \
    if (!real) real = (__typeof__(&name))dlsym(RTLD_NEXT, #name)
int fdatasync(int fd) {
    REAL(fdatasync);
    if (sync_fails(fd)) { errno = fault_errno(); return -1; }
    return real(fd);
}
int fsync(int fd) {
    REAL(fsync);
    if (sync_fails(fd)) { errno = fault_errno(); return -1; }
    return real(fd);
}
ssize_t write(int fd, const void *buf, size_t count) {
    REAL(write);
    if (write_fails(fd)) { errno = fault_errno(); return -1; }
    return real(fd, buf, count);
}
ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite);
    if (write_fails(fd)) { errno = fault_errno(); return -1; }
    return real(fd, buf, count, offset);
}
ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    REAL(pwrite64);
    if (write_fails(fd)) { errno = fault_errno(); return -1; }
    return real(fd, buf, count, offset);
}
"#;

/// Builds `FAULT_SHIM` into `dir`; returns the .so's path.
fn fault_shim(dir: &Path) -> PathBuf {
    let src = dir.join("fault_shim.c");
    let so = dir.join("fault_shim.so");
    std::fs::write(&src, FAULT_SHIM).expect("shim source");
    let (ok, out) = crate::run(
        Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&so)
            .arg(&src)
            .arg("-ldl"),
    );
    assert!(ok, "could not build the fault shim with cc: {out}");
    so
}

/// A daemon under `FAULT_SHIM`, whose fault `var` strikes while `trigger`
/// exists; `_dir` holds the shim and the trigger.
struct Faulty {
    d: Daemon,
    trigger: PathBuf,
    _dir: tempfile::TempDir,
}

fn faulty_daemon(var: &str, extra: &[&str], env: &[(&str, &str)]) -> Faulty {
    let dir = tempfile::tempdir().expect("tempdir");
    let so = fault_shim(dir.path());
    let trigger = dir.path().join("fail-now");
    let mut vars = vec![
        ("LD_PRELOAD", so.to_str().expect("utf-8")),
        (var, trigger.to_str().expect("utf-8")),
    ];
    vars.extend_from_slice(env);
    let d = Daemon::start_with_env(extra, &vars);
    Faulty {
        d,
        trigger,
        _dir: dir,
    }
}

/// Table `f` with rows 1 to 50, acknowledged; then the fault is armed.
fn fifty_rows_then_the_fault(d: &Daemon, trigger: &Path) -> nexusd_client::blocking::Client {
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute("CREATE TABLE f(n INTEGER PRIMARY KEY)", params![])
        .expect("create");
    for n in 1..=50i64 {
        c.execute("INSERT INTO f VALUES (?1)", params![n])
            .expect("a write before the fault");
    }
    std::fs::write(trigger, b"").expect("trigger");
    c
}

/// Kills the daemon with SIGKILL, starts it again on the same files, and
/// connects: what a client then sees is what was on disk.
fn after_a_kill_9(d: &mut Daemon) -> nexusd_client::blocking::Client {
    d.kill9();
    d.restart();
    nexusd_client::blocking::Client::connect(d.socket()).expect("connect again")
}

/// `PRAGMA integrity_check` says ok.
fn assert_integrity_ok(c: &nexusd_client::blocking::Client) {
    let ok = c
        .query("PRAGMA integrity_check", params![])
        .expect("integrity");
    assert_eq!(
        ok.get(0).expect("row").get::<String>(0).expect("text"),
        "ok"
    );
}

/// fsync of the WAL returns EIO: the write it held is answered with its
/// outcome unknown (never acknowledged), the daemon exits with status 74
/// rather than serve what may not be on disk, and restarted, it holds
/// everything acknowledged before.
#[test]
fn a_failed_fsync_ends_the_daemon_and_loses_nothing_acknowledged() {
    failed_wal_fsync(libc::EIO);
}

/// The same with ENOSPC from fsync (a thin-provisioned or network disk that
/// ran out of space at writeback): any failed sync of the WAL means the
/// same, whatever its errno.
#[test]
fn an_enospc_fsync_ends_the_daemon_too() {
    failed_wal_fsync(libc::ENOSPC);
}

fn failed_wal_fsync(errno: i32) {
    let errno = errno.to_string();
    let Faulty {
        mut d,
        trigger,
        _dir,
    } = faulty_daemon(
        "NEXUSD_TEST_FSYNC_FAILS_IF",
        &[],
        &[("NEXUSD_TEST_FAULT_ERRNO", &errno)],
    );
    let c = fifty_rows_then_the_fault(&d, &trigger);
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
    assert_integrity_ok(&c);
}

/// Writes to the WAL fail with EIO (nothing reaches the file): the write
/// that met it is answered with SQLite's I/O error, not applied; the daemon
/// goes on serving, and once writes work again they are acknowledged as
/// before. After a kill -9 and a restart, the database holds exactly what
/// was acknowledged: the failed write is not there.
#[test]
fn a_failed_wal_write_fails_its_commit_clearly_and_the_daemon_goes_on() {
    let Faulty {
        mut d,
        trigger,
        _dir,
    } = faulty_daemon("NEXUSD_TEST_WRITE_FAILS_IF", &[], &[]);
    let c = fifty_rows_then_the_fault(&d, &trigger);
    let err = c
        .execute("INSERT INTO f VALUES (51)", params![])
        .expect_err("a write whose WAL write failed must not be acknowledged");
    let text = err.to_string();
    assert!(
        text.contains("disk I/O error") && text.contains("nothing in this transaction was applied"),
        "{text}"
    );
    std::fs::remove_file(&trigger).expect("untrigger");
    // Reads went on meanwhile, and writes work again without a restart.
    let rows = c.query("SELECT count(*) FROM f", params![]).expect("count");
    assert_eq!(rows.get(0).expect("row").get::<i64>(0).expect("n"), 50);
    for n in 52..=60i64 {
        c.execute("INSERT INTO f VALUES (?1)", params![n])
            .expect("a write after the fault");
    }
    let c = after_a_kill_9(&mut d);
    let rows = c
        .query(
            "SELECT group_concat(n) FROM (SELECT n FROM f WHERE n > 48 ORDER BY n)",
            params![],
        )
        .expect("rows");
    assert_eq!(
        rows.get(0).expect("row").get::<String>(0).expect("text"),
        "49,50,52,53,54,55,56,57,58,59,60"
    );
    assert_integrity_ok(&c);
}

/// The database file's fsync fails inside checkpoints: nothing a client
/// sees changes. Every frame stays in the WAL (which was synced) until a
/// checkpoint's sync succeeds, so writes go on being acknowledged, the WAL
/// just grows; once syncs work, checkpoints catch up, and after a kill -9
/// everything acknowledged is there.
#[test]
fn a_failed_checkpoint_fsync_keeps_everything_in_the_wal() {
    let Faulty {
        mut d,
        trigger,
        _dir,
    } = faulty_daemon(
        "NEXUSD_TEST_DB_FSYNC_FAILS_IF",
        &["--checkpoint-wal-bytes", "65536"],
        &[],
    );
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute("CREATE TABLE f(n INTEGER PRIMARY KEY, pad BLOB)", params![])
        .expect("create");
    std::fs::write(&trigger, b"").expect("trigger");
    // About 2 MiB through a 64 KiB checkpoint threshold: many checkpoints,
    // each failing at its sync of the database file.
    for n in 1..=500i64 {
        c.execute("INSERT INTO f VALUES (?1, zeroblob(4000))", params![n])
            .expect("writes are acknowledged while checkpoints fail");
    }
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log_text()
            .contains("checkpoint failed")),
        "no failed checkpoint was logged: {}",
        d.log_text()
    );
    let mut wal = d.db.as_os_str().to_owned();
    wal.push("-wal");
    let wal_bytes = std::fs::metadata(&wal).expect("the WAL").len();
    assert!(
        wal_bytes > 1 << 20,
        "the WAL is {wal_bytes} bytes: a checkpoint finished despite its failing sync"
    );
    std::fs::remove_file(&trigger).expect("untrigger");
    for n in 501..=600i64 {
        c.execute("INSERT INTO f VALUES (?1, zeroblob(4000))", params![n])
            .expect("a write after the fault");
    }
    let c = after_a_kill_9(&mut d);
    let rows = c
        .query("SELECT count(*), sum(n) FROM f", params![])
        .expect("count");
    let row = rows.get(0).expect("row");
    assert_eq!(row.get::<i64>(0).expect("n"), 600);
    assert_eq!(row.get::<i64>(1).expect("sum"), 600 * 601 / 2);
    assert_integrity_ok(&c);
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
    assert_integrity_ok(&c);
    drop(c);
    drop(d);
}

/// What the writer is doing, from `status` (`idle`, `running VACUUM for N
/// ms`, ...).
fn writer_doing(c: &nexusd_client::blocking::Client) -> String {
    c.status()
        .expect("status")
        .settings
        .into_iter()
        .find(|(k, _)| k == "writer")
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// Starts `work` on a thread of its own, waits until the writer has run
/// `what` for `after`, then kills the daemon with SIGKILL in the middle of
/// it and starts it again. A run that ends before it is `after` old (this
/// machine was quicker than the measure `after` came from) is run again
/// with half the wait, so the kill still lands inside one.
fn kill_9_during(
    d: &mut Daemon,
    what: &str,
    after: Duration,
    work: impl Fn(nexusd_client::blocking::Client) + Send + Sync + 'static,
) -> nexusd_client::blocking::Client {
    let work = std::sync::Arc::new(work);
    let watcher = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    let mut after = after;
    for _ in 0..6 {
        let own = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
        let run = std::sync::Arc::clone(&work);
        let running = std::thread::spawn(move || run(own));
        let mut caught = false;
        let settled = wait_until(LONG, || {
            let doing = writer_doing(&watcher);
            caught = doing.starts_with(&format!("running {what} for "))
                && doing
                    .split_whitespace()
                    .nth_back(1)
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .is_some_and(|ms| u128::from(ms) >= after.as_millis());
            caught || running.is_finished()
        });
        assert!(settled, "{what} neither ran for {after:?} nor ended");
        if caught {
            drop(watcher);
            let c = after_a_kill_9(d);
            running.join().expect("the thread that ran it");
            return c;
        }
        running.join().expect("the thread that ran it");
        println!("{what} ended before it was {after:?} old; again, killed sooner");
        after /= 2;
    }
    panic!("{what} always ended before the kill, down to {after:?}");
}

/// SIGKILL in the middle of a VACUUM, then in the middle of a checkpoint
/// that copies a large WAL back: after each restart the database is whole
/// (integrity_check) and holds exactly what was committed before, and the
/// interrupted maintenance runs to its end when asked again.
#[test]
fn sigkill_during_vacuum_or_checkpoint_loses_nothing() {
    let mut d = Daemon::start(&[]);
    let c = nexusd_client::blocking::Client::connect_with(
        d.socket(),
        nexusd_client::ClientOptions {
            request_timeout: Some(Duration::from_secs(120)),
            ..Default::default()
        },
    )
    .expect("connect");
    c.execute("CREATE TABLE big(n INTEGER, x BLOB)", params![])
        .expect("create");
    let fill = |from: i64| {
        c.execute(
            "INSERT INTO big WITH RECURSIVE c(n) AS (SELECT ?1 UNION ALL SELECT n + 1 FROM c \
             WHERE n < ?1 + 39999) SELECT n, randomblob(4000) FROM c",
            params![from],
        )
        .expect("fill big");
    };
    fill(0);
    fill(40_000);
    c.execute("DELETE FROM big WHERE n % 3 = 0", params![])
        .expect("delete a third");
    c.checkpoint(nexusd_client::CheckpointMode::Truncate)
        .expect("checkpoint");
    let expect = |c: &nexusd_client::blocking::Client, rows: i64, sum: i64| {
        assert_integrity_ok(c);
        let got = c
            .query(
                "SELECT count(*), sum(n), sum(length(x)) FROM big",
                params![],
            )
            .expect("count");
        let row = got.get(0).expect("row");
        assert_eq!(row.get::<i64>(0).expect("count"), rows, "rows");
        assert_eq!(row.get::<i64>(1).expect("sum"), sum, "which rows");
        assert_eq!(
            row.get::<i64>(2).expect("bytes"),
            rows * 4000,
            "their bytes"
        );
    };
    let rows = (0..80_000i64).filter(|n| n % 3 != 0).count() as i64;
    let sum: i64 = (0..80_000i64).filter(|n| n % 3 != 0).sum();
    expect(&c, rows, sum);

    // How long each takes here, whole: the kills below come half way.
    let took = |work: &dyn Fn()| {
        let started = Instant::now();
        work();
        started.elapsed()
    };
    let vacuum = took(&|| {
        c.vacuum().expect("VACUUM");
    });
    let checkpoint = took(&|| {
        c.checkpoint(nexusd_client::CheckpointMode::Truncate)
            .expect("checkpoint");
    });

    let c = kill_9_during(&mut d, "VACUUM", vacuum / 2, |own| {
        let _ = own.vacuum();
    });
    expect(&c, rows, sum);
    let done = c.vacuum().expect("VACUUM after the restart");
    assert!(done.contains("vacuumed"), "{done}");
    expect(&c, rows, sum);

    // The vacuumed file is in the WAL now: a TRUNCATE checkpoint copies all
    // of it back into the database file. Were it run again, a VACUUM first
    // fills the WAL again.
    let c = kill_9_during(&mut d, "a checkpoint", checkpoint / 2, {
        let first = std::sync::atomic::AtomicBool::new(true);
        move |own| {
            if !first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                let _ = own.vacuum();
            }
            let _ = own.checkpoint(nexusd_client::CheckpointMode::Truncate);
        }
    });
    expect(&c, rows, sum);
    c.checkpoint(nexusd_client::CheckpointMode::Truncate)
        .expect("checkpoint after the restart");
    expect(&c, rows, sum);
}
