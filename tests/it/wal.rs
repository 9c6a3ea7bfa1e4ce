//! The WAL stays bounded: the read cap interrupts a slow reader so the
//! writer can checkpoint past it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexusd_client::{Client, params};
use nexusd_tests::Daemon;

use crate::rt;

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

/// Once a checkpoint has copied everything back, the WAL starts over from
/// its beginning in the file it already has: commits overwrite its blocks
/// instead of growing a file cut to zero, so the sync after each writes
/// no inode. The file neither shrinks to nothing nor grows past its bound.
#[test]
fn the_wal_is_reused_after_a_checkpoint_not_truncated() {
    let (d, c) = small_wal_daemon();
    let mut wal = d.db.as_os_str().to_owned();
    wal.push("-wal");
    let size = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    // Each row fills a page: 64 KiB of WAL is about 16 commits, so 400
    // rows go through the threshold about 25 times.
    let mut sizes = Vec::new();
    for n in 1..=400i64 {
        c.execute("INSERT INTO r VALUES (?1, zeroblob(4000))", params![n])
            .expect("insert");
        sizes.push(size());
    }
    let checkpoints = crate::metric(&c, "nexusd_checkpoints_total{result=\"complete\"}");
    assert!(
        checkpoints >= 10,
        "too few checkpoints to tell: {checkpoints}"
    );
    // After the first pass through the threshold, the file keeps its size.
    let steady = &sizes[100..];
    let (min, max) = (
        steady.iter().min().copied().unwrap_or(0),
        steady.iter().max().copied().unwrap_or(0),
    );
    assert!(
        min >= 65536,
        "the WAL was cut back to {min} bytes after a checkpoint: sizes {steady:?}"
    );
    assert!(
        max < 4 * 65536,
        "the WAL grew to {max} bytes with checkpoints at 64 KiB: sizes {steady:?}"
    );
    let rows = c.query("SELECT count(*) FROM r", params![]).expect("count");
    assert_eq!(rows.get(0).and_then(|r| r.get::<i64>(0).ok()), Some(400));
}

/// A checkpoint that copied everything back restarts the WAL only if no
/// read is in the way, and does not wait out a long one: a read whose
/// snapshot began after the last commit would otherwise hold the writer,
/// and every write behind it, until it ends.
#[test]
fn a_long_read_does_not_hold_the_writer_at_a_checkpoint() {
    let (d, c) = small_wal_daemon();
    // A read that counts `rows` rows, and how long 200,000 take here.
    let slow = |rows: u64| {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT (SELECT count(*) FROM r) UNION ALL \
             SELECT i + 1 FROM n LIMIT {rows}) SELECT count(*) FROM n"
        )
    };
    let t = Instant::now();
    c.query(&slow(200_000), params![]).expect("calibrate");
    let per_row = t.elapsed().as_secs_f64() / 200_000.0;
    let rows_for = |secs: f64| (secs / per_row) as u64;
    let long_read = |secs: f64| {
        let socket = d.socket().to_owned();
        let sql = slow(rows_for(secs));
        std::thread::spawn(move || {
            let r = nexusd_client::blocking::Client::connect(&socket).expect("connect");
            r.query(&sql, params![]).map(|_| Instant::now())
        })
    };
    // The first read holds a snapshot from before the writes below, so
    // their checkpoints cannot finish, and the WAL stays over the threshold
    // (and under four times it, where a forced checkpoint does wait).
    let first = long_read(2.0);
    std::thread::sleep(Duration::from_millis(300));
    for n in 1..=20i64 {
        c.execute("INSERT INTO r VALUES (?1, zeroblob(4000))", params![n])
            .expect("insert");
    }
    // Their checkpoints copied what they could and stopped at the read.
    let partial = crate::metric(&c, "nexusd_checkpoints_total{result=\"partial\"}");
    assert!(
        partial >= 1,
        "no checkpoint stopped at the first read: {}",
        c.metrics().expect("metrics")
    );
    // The second read's snapshot begins after the last commit.
    let second = long_read(8.0);
    std::thread::sleep(Duration::from_millis(300));
    first
        .join()
        .expect("first read")
        .expect("the first read succeeds");
    // A transaction that writes nothing commits no frame, and the
    // checkpoint after it finds only the second read, at the WAL's end.
    c.transaction().expect("begin").commit().expect("commit");
    let asked = Instant::now();
    c.execute("INSERT INTO r VALUES (21, zeroblob(4000))", params![])
        .expect("a write after the checkpoint");
    let waited = asked.elapsed();
    let ended = second
        .join()
        .expect("second read")
        .expect("the second read succeeds");
    assert!(
        waited < Duration::from_secs(1),
        "a write waited {waited:?} behind a checkpoint that waited for a read (the read ended \
         {:?} after the write was sent)",
        ended.duration_since(asked)
    );
    assert!(
        ended.duration_since(asked) > Duration::from_secs(1),
        "the second read ended {:?} after the write was sent: too soon to tell",
        ended.duration_since(asked)
    );
}

/// A daemon that checkpoints at 64 KiB of WAL, a client, and a table `r`
/// whose rows of 4,000 bytes fill a page each.
fn small_wal_daemon() -> (Daemon, nexusd_client::blocking::Client) {
    crate::daemon_with_table(
        &["--checkpoint-wal-bytes", "65536"],
        "CREATE TABLE r(n INTEGER PRIMARY KEY, pad BLOB)",
    )
}
