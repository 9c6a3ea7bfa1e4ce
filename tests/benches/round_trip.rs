//! Round trips through the real daemon, end to end: the client's runtime,
//! the socket, the daemon's I/O threads, a read in place or the writer,
//! and back. The paths issue 12 changed (a current-thread runtime driven by
//! the blocking caller, admission on the I/O threads, reads run in place
//! and sharing their thread's snapshot, requests answered without a task
//! of their own, frames combined on the client, sockets registered for
//! reading only) all sit on these, so a regression in any shows here; so
//! does one in a large read's parts, in a query run in a transaction
//! that holds the writer, or in a deferred transaction's reads.
//!
//! `cargo bench -p nexusd-tests --bench round_trip` (release daemon); under
//! `cargo test` each case runs once against the debug build.
//! `synchronous=normal`, so an insert's figure is the path's cost, not the
//! disk's fsync.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use nexusd_client::{Client, TxnMode, blocking, params};
use nexusd_tests::Daemon;

const ROWS: i64 = 10_000;

fn daemon() -> Daemon {
    let d = Daemon::start(&["--synchronous", "normal"]);
    let c = blocking::Client::connect(d.socket()).expect("connect");
    c.execute(
        "CREATE TABLE bench(id INTEGER PRIMARY KEY, payload BLOB)",
        params![],
    )
    .expect("create");
    c.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO bench(payload) SELECT randomblob(100) FROM n",
        params![ROWS],
    )
    .expect("fill");
    d
}

fn round_trips(c: &mut Criterion) {
    let d = daemon();
    let db = blocking::Client::connect(d.socket()).expect("connect");
    let mut group = c.benchmark_group("round_trip");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));

    // One caller, one call at a time: what a Python thread pays.
    let mut i = 0i64;
    group.bench_function("point_read_blocking", |b| {
        b.iter(|| {
            i = i % ROWS + 1;
            db.query("SELECT payload FROM bench WHERE id = ?1", params![i])
                .expect("read")
        })
    });
    group.bench_function("insert_blocking", |b| {
        b.iter(|| {
            db.execute(
                "INSERT INTO bench(payload) VALUES (randomblob(100))",
                params![],
            )
            .expect("insert")
        })
    });
    // The whole table, 1.2 MB: over one part (1 MiB), so it runs on a
    // reader of the pool and comes in a part and an answer.
    group.bench_function("read_10000_rows_in_parts_blocking", |b| {
        b.iter(|| {
            let rows = db
                .query(
                    "SELECT id, payload FROM bench WHERE id <= ?1",
                    params![ROWS],
                )
                .expect("read");
            assert_eq!(rows.len(), ROWS as usize);
            rows
        })
    });
    // A transaction that holds the writer: a read and an `INSERT ...
    // RETURNING` in it (whose savepoint, and the look at whether a query
    // writes, run on the writer), then its rollback. Four round trips.
    group.bench_function("read_and_returning_in_write_transaction_blocking", |b| {
        b.iter(|| {
            i = i % ROWS + 1;
            let tx = db.transaction().expect("begin");
            tx.query("SELECT payload FROM bench WHERE id = ?1", params![i])
                .expect("read in the transaction");
            let rows = tx
                .query(
                    "INSERT INTO bench(payload) VALUES (randomblob(100)) RETURNING id",
                    params![],
                )
                .expect("returning in the transaction");
            tx.rollback().expect("rollback");
            rows
        })
    });
    // A deferred transaction of two reads, then its commit: it begins on
    // an idle read connection, and its reads run on the I/O thread, on
    // its snapshot. Four round trips.
    group.bench_function("reads_in_deferred_transaction_blocking", |b| {
        b.iter(|| {
            i = i % ROWS + 1;
            let tx = db.deferred_transaction().expect("begin");
            tx.query("SELECT payload FROM bench WHERE id = ?1", params![i])
                .expect("first read");
            let rows = tx
                .query(
                    "SELECT payload FROM bench WHERE id = ?1",
                    params![ROWS + 1 - i],
                )
                .expect("second read");
            tx.commit().expect("commit");
            rows
        })
    });
    // The same with its begin sent with its first read (`begin_with`):
    // three round trips, not four.
    group.bench_function("reads_in_deferred_transaction_begun_with_blocking", |b| {
        b.iter(|| {
            i = i % ROWS + 1;
            let (tx, first) = db
                .begin_with(
                    TxnMode::Deferred,
                    "SELECT payload FROM bench WHERE id = ?1",
                    params![i],
                )
                .expect("begin");
            first.expect("first read");
            let rows = tx
                .query(
                    "SELECT payload FROM bench WHERE id = ?1",
                    params![ROWS + 1 - i],
                )
                .expect("second read");
            tx.commit().expect("commit");
            rows
        })
    });
    // A commit before each read, so the read cannot share its I/O
    // thread's snapshot and begins one of its own: this less
    // `insert_blocking` is a read's cost without the sharing.
    group.bench_function("insert_then_point_read_blocking", |b| {
        b.iter(|| {
            i = i % ROWS + 1;
            db.execute(
                "INSERT INTO bench(payload) VALUES (randomblob(100))",
                params![],
            )
            .expect("insert");
            db.query("SELECT payload FROM bench WHERE id = ?1", params![i])
                .expect("read")
        })
    });

    // 64 reads in flight on one async connection: the I/O thread's
    // batching of frames in and replies out.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client: Client = rt
        .block_on(Client::connect(d.socket()))
        .expect("connect async");
    group.throughput(Throughput::Elements(64));
    group.bench_function("point_read_async_64_in_flight", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for n in 0..iters {
                    let reads = (0..64i64).map(|k| {
                        let client = client.clone();
                        let id = (n as i64 * 64 + k) % ROWS + 1;
                        async move {
                            client
                                .query("SELECT payload FROM bench WHERE id = ?1", params![id])
                                .await
                                .expect("read")
                        }
                    });
                    join_all(reads).await;
                }
                started.elapsed()
            })
        })
    });

    // 64 inserts in flight on one async connection: group commit, the
    // writer's replies through the relay to each request's sink, and the
    // client's frames combined into one write.
    group.bench_function("insert_async_64_in_flight", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let inserts = (0..64).map(|_| {
                        let client = client.clone();
                        async move {
                            client
                                .execute(
                                    "INSERT INTO bench(payload) VALUES (randomblob(100))",
                                    params![],
                                )
                                .await
                                .expect("insert")
                        }
                    });
                    join_all(inserts).await;
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, round_trips);
criterion_main!(benches);
