//! The writer's batch loop without the socket: many single-row inserts in
//! flight at once (one group commit of savepoints), and atomic batches.
//!
//! `synchronous=NORMAL` on a temp dir, so the figure is the loop's CPU cost
//! rather than the disk's fsync rate. `cargo bench -p nexusd --bench
//! writer`; under `cargo test` each case runs once.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use nexusd::{CheckpointGate, Synchronous, WriteOp, WriterConfig, spawn_writer};
use nexusd_protocol::{Params, ResponseBody, Statement, Value};

const INSERT: &str = "INSERT INTO bench(payload) VALUES (?1)";

fn insert() -> Statement {
    Statement::new(
        INSERT,
        Params::Positional(vec![Value::Blob(vec![0xab; 100])]),
    )
}

fn writer_loop(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (handle, thread) = spawn_writer(
        WriterConfig {
            path: dir.path().join("bench.db"),
            synchronous: Synchronous::Normal,
            queue_capacity: 8192,
            max_batch: 1024,
            max_txn_time: Duration::from_millis(100),
            max_result_bytes: 15 << 20,
            checkpoint_wal_bytes: 4 << 20,
            litestream_max_wal_bytes: None,
        },
        CheckpointGate::default(),
    )
    .expect("the writer opens a fresh database");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let far = || Instant::now() + Duration::from_secs(60);
    let schema = Statement::new(
        "CREATE TABLE bench(id INTEGER PRIMARY KEY, payload BLOB)",
        Params::Positional(vec![]),
    );
    let created = rt.block_on(handle.submit(WriteOp::Execute(schema), Instant::now(), far()));
    assert!(matches!(created, ResponseBody::Executed(_)), "{created:?}");

    let mut g = c.benchmark_group("writer");
    for in_flight in [1usize, 64, 256] {
        g.throughput(Throughput::Elements(in_flight as u64));
        g.bench_with_input(
            BenchmarkId::new("single inserts in flight", in_flight),
            &in_flight,
            |b, &n| {
                b.iter(|| {
                    let answers = rt.block_on(join_all((0..n).map(|_| {
                        handle.submit(WriteOp::Execute(insert()), Instant::now(), far())
                    })));
                    for a in &answers {
                        assert!(matches!(a, ResponseBody::Executed(_)), "{a:?}");
                    }
                    black_box(answers)
                })
            },
        );
    }
    for k in [10usize, 100] {
        g.throughput(Throughput::Elements(k as u64));
        g.bench_with_input(
            BenchmarkId::new("atomic batch of inserts", k),
            &k,
            |b, &k| {
                b.iter(|| {
                    let ops = WriteOp::Batch((0..k).map(|_| insert()).collect());
                    let answer = rt.block_on(handle.submit(ops, Instant::now(), far()));
                    assert!(matches!(answer, ResponseBody::Batch(_)), "{answer:?}");
                    black_box(answer)
                })
            },
        );
    }
    g.finish();
    drop(handle);
    let _ = thread.join();
}

criterion_group!(benches, writer_loop);
criterion_main!(benches);
