//! The command line itself. (This file also makes `cargo test` build the
//! `nexusd` binary that the workspace's integration tests start.)

use std::process::Command;

#[test]
fn version_and_bad_flags() {
    let bin = env!("CARGO_BIN_EXE_nexusd");
    let out = Command::new(bin).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("nexusd "));

    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin)
        .args(["serve", "--max-result-bytes", "999999999", "--db"])
        .arg(dir.path().join("x.db"))
        .arg("--socket")
        .arg(dir.path().join("x.sock"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--max-result-bytes 999999999 leaves no room"),
        "{err}"
    );
}
