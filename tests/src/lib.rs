//! Fixtures for the integration tests: the real `nexusd` binary on a temp
//! dir of its own, stopped when the fixture is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `nexusd` binary: `$NEXUSD_BIN`, else the one cargo builds beside
/// the running test executable (target/<profile>/nexusd). That one is
/// (re)built once per test process, so `cargo test -p nexusd-tests` works
/// on a clean tree and never runs a stale daemon; under `cargo test
/// --workspace` the build finds it fresh and returns at once.
pub fn nexusd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NEXUSD_BIN") {
        return PathBuf::from(p);
    }
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_nexusd).clone()
}

fn build_nexusd() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let mut dir = exe.parent().expect("the test binary lives in a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    let bin = dir.join("nexusd");
    // `--workspace --bins` unifies features as `cargo test --workspace`
    // does, so the two never rebuild each other's artifacts.
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["build", "--quiet", "--workspace", "--bins"]);
    if dir.ends_with("release") {
        cargo.arg("--release");
    }
    let built = cargo.status();
    assert!(
        matches!(built, Ok(s) if s.success()) || bin.exists(),
        "could not build the nexusd binary ({built:?}) and {} is missing: run `cargo build -p \
         nexusd`, or set NEXUSD_BIN",
        bin.display()
    );
    bin
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// A running daemon on its own temp dir.
pub struct Daemon {
    pub dir: PathBuf,
    pub db: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts a daemon on a fresh temp dir, with extra `serve` flags.
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_with_env(extra, &[])
    }

    /// `start`, with the database, socket and log in `dir` (which the
    /// caller keeps), e.g. on a filesystem of the test's choosing.
    pub fn start_in(dir: &Path, extra: &[&str]) -> Daemon {
        let mut d = Daemon {
            db: dir.join("test.db"),
            socket: dir.join("nexusd.sock"),
            log: dir.join("nexusd.log"),
            dir: dir.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            child: None,
            _tmp: None,
        };
        d.restart();
        d
    }

    /// `start`, with extra environment variables (kept for restarts).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let mut d = Daemon {
            db: dir.join("test.db"),
            socket: dir.join("nexusd.sock"),
            log: dir.join("nexusd.log"),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            _tmp: Some(tmp),
        };
        d.restart();
        d
    }

    /// Starts (again) on the same files; waits until the socket answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the daemon is still running");
        let child = self
            .command()
            .spawn()
            .expect("could not start the nexusd binary");
        self.child = Some(child);
        let socket = self.socket.clone();
        let ready = wait_until(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        if !ready {
            let status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "nexusd did not start serving within 20 s (exit: {status:?}); log:\n{}",
                self.log_text()
            );
        }
    }

    /// The `nexusd serve` command this fixture runs, logging to `self.log`.
    pub fn command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(nexusd_bin());
        cmd.arg("serve")
            .arg("--db")
            .arg(&self.db)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the daemon to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "nexusd did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(10));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
