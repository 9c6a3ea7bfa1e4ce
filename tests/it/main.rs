//! Integration tests: the real `nexusd` binary, driven through the client
//! crate, from several OS processes where that is the point.

mod access;
mod bad_input;
mod client;
mod concurrency;
mod ctl;
mod lifecycle;
mod limits;
mod parts;
mod reload;
mod snapshots;
mod systemd;
mod transactions;
mod wal;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nexusd_client::Client;
use nexusd_tests::{Daemon, nexusd_bin};

pub const WORKER: &str = env!("CARGO_BIN_EXE_nexusd-test-worker");

/// One runtime per test: the tests are sync so they can also drive
/// processes and signals plainly.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub async fn client(d: &Daemon) -> Client {
    Client::connect(d.socket()).await.expect("connect")
}

/// A client that sends `ms` milliseconds as each request's time limit.
pub async fn client_with_timeout(d: &Daemon, ms: u64) -> Client {
    Client::connect_with(
        d.socket(),
        nexusd_client::ClientOptions {
            request_timeout: Some(std::time::Duration::from_millis(ms)),
            ..Default::default()
        },
    )
    .await
    .expect("connect")
}

/// The counter `name` in the daemon's Prometheus text.
pub fn metric(c: &nexusd_client::blocking::Client, name: &str) -> u64 {
    let text = c.metrics().expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// The integer that `sql`'s first row starts with (a count, say).
pub fn count(c: &nexusd_client::blocking::Client, sql: &str) -> i64 {
    c.query(sql, nexusd_client::params![])
        .expect("count")
        .get(0)
        .expect("a row")
        .get(0)
        .expect("an integer")
}

/// A daemon started with `args`, a blocking client, and the table that
/// `create` makes: how many tests begin.
pub fn daemon_with_table(args: &[&str], create: &str) -> (Daemon, nexusd_client::blocking::Client) {
    let d = Daemon::start(args);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute(create, nexusd_client::params![]).expect("create");
    (d, c)
}

/// Starts a worker process.
pub fn spawn_worker(args: &[String]) -> Child {
    Command::new(WORKER)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("could not start the worker")
}

/// Waits for a worker and parses its last `key=value` line.
pub fn finish_worker(child: Child) -> HashMap<String, u64> {
    let out = child.wait_with_output().expect("worker output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "worker failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    last.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.parse()
                    .unwrap_or_else(|_| panic!("bad value in {last:?}")),
            )
        })
        .collect()
}

pub fn s(v: impl ToString) -> String {
    v.to_string()
}

pub const LONG: Duration = Duration::from_secs(60);

/// The workspace's root, for the files it ships (units, docs).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_owned()
}

/// Runs a command to its end; whether it succeeded, and stdout then stderr.
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("could not run the command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `nexusd ctl --socket <the daemon's> ARGS`, run to its end.
pub fn ctl(d: &Daemon, args: &[&str]) -> Output {
    Command::new(nexusd_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(d.socket())
        .args(args)
        .output()
        .expect("run nexusd ctl")
}

/// `nexusd ctl shell` against the daemon, fed `input` from a pipe.
pub fn shell(d: &Daemon, input: &[u8]) -> Output {
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
        .write_all(input)
        .expect("write to the shell");
    shell.wait_with_output().expect("shell output")
}

/// Fails the test unless it runs as root, saying what it needs root for
/// (CI runs as root).
pub fn require_root(for_what: &str) {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test {for_what}, which needs root");
    }
}

/// A temp dir that other uids may enter (mode 0755), for daemons their
/// clients reach as other users.
pub fn shared_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    tmp
}
