//! Reads in place share a snapshot while the writer commits nothing (see
//! `engine::readers`): a read never misses a write acknowledged before it
//! was sent, and a snapshot left behind does not hold the WAL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nexusd_client::{CheckpointMode, Rows, params};
use nexusd_tests::Daemon;

use crate::{client, metric, rt};

/// While other connections keep both I/O threads' snapshots busy with
/// reads of the same row, one client writes and two others (on different
/// I/O threads, as connections are dealt round-robin) read the write back
/// the moment it is acknowledged: every read must see it.
#[test]
fn a_read_sees_every_write_acknowledged_before_it_while_snapshots_are_shared() {
    let d = Daemon::start(&["--synchronous", "normal"]);
    let rt = rt();
    let (rounds, hammered) = rt.block_on(async {
        let setup = client(&d).await;
        setup
            .execute(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER NOT NULL)",
                params![],
            )
            .await
            .expect("create");
        setup
            .execute("INSERT INTO t(id, v) VALUES (0, 0)", params![])
            .await
            .expect("seed");
        let stop = Arc::new(AtomicBool::new(false));
        let hammered = Arc::new(AtomicU64::new(0));
        let mut hammers = Vec::new();
        for _ in 0..4 {
            let c = client(&d).await;
            let (stop, hammered) = (stop.clone(), hammered.clone());
            hammers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    c.query("SELECT v FROM t WHERE id = 0", params![])
                        .await
                        .expect("hammer read");
                    hammered.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let writer = client(&d).await;
        let readers = [client(&d).await, client(&d).await];
        let rounds = 1_000i64;
        for k in 1..=rounds {
            writer
                .execute("UPDATE t SET v = ?1 WHERE id = 0", params![k])
                .await
                .expect("update");
            writer
                .execute("INSERT INTO t(id, v) VALUES (?1, ?1)", params![k])
                .await
                .expect("insert");
            for (i, r) in readers.iter().chain([&writer]).enumerate() {
                let rows = r
                    .query("SELECT v FROM t WHERE id = 0", params![])
                    .await
                    .expect("read back");
                assert_eq!(
                    first(&rows),
                    k,
                    "round {k}, reader {i}: a read after the update's acknowledgement saw an \
                     older value"
                );
                let rows = r
                    .query("SELECT count(*) FROM t WHERE id = ?1", params![k])
                    .await
                    .expect("read back");
                assert_eq!(
                    first(&rows),
                    1,
                    "round {k}, reader {i}: a read after the insert's acknowledgement missed it"
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        for h in hammers {
            h.await.expect("hammer");
        }
        (rounds, hammered.load(Ordering::Relaxed))
    });
    assert!(hammered > 0, "the other readers never ran");
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    let (reads, snapshots) = (
        metric(&c, "nexusd_reads_in_place_total"),
        metric(&c, "nexusd_read_snapshots_total"),
    );
    // Half the checking reads follow a commit and need a snapshot of their
    // own; the rest, and the other readers' reads, may share one.
    assert!(
        snapshots > 0 && snapshots < reads,
        "reads in place must have shared snapshots: {reads} reads, {snapshots} snapshots"
    );
    eprintln!(
        "{rounds} rounds, {hammered} other reads, {reads} reads in place, {snapshots} snapshots"
    );
}

/// The first column of the first row, as an integer.
fn first(rows: &Rows) -> i64 {
    rows.get(0)
        .expect("a row")
        .get::<i64>(0)
        .expect("an integer")
}

/// A thread that read once and then went idle lets its snapshot go, so a
/// TRUNCATE checkpoint (which waits for every read to leave the WAL)
/// finishes instead of reporting the WAL busy.
#[test]
fn an_idle_threads_snapshot_does_not_hold_the_wal() {
    let d = Daemon::start(&[]);
    let rt = rt();
    rt.block_on(async {
        let c = client(&d).await;
        let other = client(&d).await;
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)", params![])
            .await
            .expect("create");
        for _ in 0..20 {
            c.execute("INSERT INTO t(v) VALUES (randomblob(3000))", params![])
                .await
                .expect("insert");
        }
        // One read on each I/O thread, with the WAL full of frames: each
        // begins a snapshot that marks them.
        for r in [&c, &other] {
            let rows = r
                .query("SELECT count(*) FROM t", params![])
                .await
                .expect("read");
            assert_eq!(first(&rows), 20);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let result = c
            .checkpoint(CheckpointMode::Truncate)
            .await
            .expect("checkpoint");
        assert!(
            !result.busy && result.wal_frames == 0,
            "a snapshot left behind by reads in place held the WAL: {result:?}"
        );
    });
}
