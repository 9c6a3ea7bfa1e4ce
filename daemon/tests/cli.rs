//! The command line itself: flags, `bench`, completions and the man page.

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

/// `nexusd bench` end to end, small: its own daemon, two worker processes,
/// the `batch` workload bounded by `--requests`, and the baselines. Every
/// batch counted must have committed, and the counts must be exact.
#[test]
fn bench_batch_workload_by_request_count() {
    let bin = env!("CARGO_BIN_EXE_nexusd");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin)
        .args([
            "bench",
            "--workload",
            "batch",
            "--batch-size",
            "5",
            "--clients",
            "4",
            "--processes",
            "2",
            "--requests",
            "203",
            "--baseline",
            "--json",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run nexusd bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"workload\":\"batch\",\"batch_size\":5"),
        "{stdout}"
    );
    // nexusd, direct and in-process: each did exactly 203 batches, no errors.
    assert_eq!(stdout.matches("\"ops\":203,").count(), 3, "{stdout}");
    assert_eq!(stdout.matches("\"errors\":0,").count(), 3, "{stdout}");
    // Both sides' CPU for the runs through processes (nexusd, direct); the
    // in-process one has no client processes.
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON report");
    let client_cpu: Vec<Option<f64>> = report["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["client_cpu_s"].as_f64())
        .collect();
    assert!(
        matches!(client_cpu.as_slice(), [Some(a), Some(b), None] if *a > 0.0 && *b > 0.0),
        "{client_cpu:?}"
    );

    // The daemon's database holds exactly 203 batches of 5 rows.
    let conn = rusqlite_count(&dir.path().join("nexusd.db"));
    assert_eq!(conn, 203 * 5);

    let out = Command::new(bin)
        .args(["bench", "--requests", "3", "--clients", "8"])
        .output()
        .expect("run nexusd bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--requests 3 is fewer than one per client"),
        "{err}"
    );
}

/// The tpcb workload end to end, small: interactive transactions from two
/// processes, and the baselines, each exactly 40 transactions with no
/// error; the daemon's history table holds one row per transaction.
#[test]
fn bench_tpcb_runs_interactive_transactions() {
    let bin = env!("CARGO_BIN_EXE_nexusd");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin)
        .args([
            "bench",
            "--workload",
            "tpcb",
            "--clients",
            "4",
            "--processes",
            "2",
            "--requests",
            "40",
            "--baseline",
            "--json",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run nexusd bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("\"ops\":40,").count(), 3, "{stdout}");
    assert_eq!(stdout.matches("\"errors\":0,").count(), 3, "{stdout}");
    let conn = rusqlite::Connection::open(dir.path().join("nexusd.db")).expect("open");
    let history: i64 = conn
        .query_row("SELECT count(*) FROM pgbench_history", [], |r| r.get(0))
        .expect("count");
    assert_eq!(history, 40);
    let branch: i64 = conn
        .query_row("SELECT bbalance FROM pgbench_branches", [], |r| r.get(0))
        .expect("branch");
    let deltas: i64 = conn
        .query_row("SELECT sum(delta) FROM pgbench_history", [], |r| r.get(0))
        .expect("deltas");
    assert_eq!(branch, deltas, "every transaction applied whole");
}

/// Text mode into a pipe (as `nexusd bench ... | cat`): the report, and no
/// progress line drawn with carriage returns on either stream.
#[test]
fn bench_into_a_pipe_draws_no_progress_line() {
    let bin = env!("CARGO_BIN_EXE_nexusd");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin)
        .args([
            "bench",
            "--workload",
            "insert",
            "--clients",
            "2",
            "--processes",
            "1",
            "--requests",
            "40",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run nexusd bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}\n{stdout}");
    assert!(stdout.contains("ops/s"), "{stdout}");
    assert!(!stdout.contains('\r'), "{stdout:?}");
    assert!(!stderr.contains('\r'), "{stderr:?}");
}

/// Completion scripts and the man page come from the same clap
/// definitions as the command line, so they name its subcommands.
#[test]
fn completions_and_man_page() {
    let bin = env!("CARGO_BIN_EXE_nexusd");
    for (shell, marker) in [
        ("bash", "complete -F _nexusd"),
        ("zsh", "#compdef nexusd"),
        ("fish", "complete -c nexusd"),
    ] {
        let out = Command::new(bin)
            .args(["completions", shell])
            .output()
            .expect("run nexusd completions");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("integrity-check"), "{shell}");
    }
    let out = Command::new(bin)
        .arg("man")
        .output()
        .expect("run nexusd man");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        page.starts_with(".ie") || page.contains(".TH nexusd 1"),
        "{page}"
    );
    for sub in ["nexusd\\-serve", "nexusd\\-ctl", "nexusd\\-bench"] {
        assert!(page.contains(sub), "the man page lacks {sub}");
    }
    let out = Command::new(bin)
        .args(["completions", "tcsh"])
        .output()
        .expect("run nexusd completions");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("possible values"),
        "an unknown shell names the ones there are"
    );
}

fn rusqlite_count(db: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(db).expect("open the bench database");
    conn.query_row("SELECT count(*) FROM bench", [], |r| r.get(0))
        .expect("count rows")
}
