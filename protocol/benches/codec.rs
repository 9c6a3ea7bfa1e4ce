//! The codec on the hot path: a single-row insert request, its answer, a
//! 100-row query answer (with and without declared types), and splitting
//! a read buffer of 64 frames.
//!
//! `cargo bench -p nexusd-protocol`; under `cargo test` each case runs once.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nexusd_protocol::codec::{self, DEFAULT_MAX_FRAME_BYTES, split_frame};
use nexusd_protocol::{
    DEFAULT_DB, Executed, Params, Request, RequestBody, Response, ResponseBody, Rows, Statement,
    Value, features,
};
use tokio_util::codec::{Decoder, Encoder};

fn insert_request(id: u64) -> Request {
    Request {
        id,
        db: DEFAULT_DB.to_owned(),
        timeout_ms: 0,
        body: RequestBody::Execute(Statement::new(
            "INSERT INTO bench(payload) VALUES (?1)",
            Params::Positional(vec![Value::Blob(vec![0xab; 100])]),
        )),
    }
}

fn rows_response(n: usize) -> Response {
    Response {
        id: 7,
        body: ResponseBody::Rows(Rows {
            columns: vec!["id".into(), "name".into(), "payload".into()],
            rows: (0..n)
                .map(|i| {
                    vec![
                        Value::Integer(i as i64),
                        Value::Text(format!("user-{i}")),
                        Value::Blob(vec![0xcd; 100]),
                    ]
                })
                .collect(),
            decltypes: vec![
                Some("INTEGER".into()),
                Some("TEXT".into()),
                Some("BLOB".into()),
            ],
            last_insert_rowid: 0,
            total_changes: 0,
        }),
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));

    let req = insert_request(1);
    g.bench_function("encode insert request", |b| {
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            codec::encode_frame(black_box(&req), DEFAULT_MAX_FRAME_BYTES, &mut buf)
                .expect("a small request encodes");
        })
    });

    let mut frame = BytesMut::new();
    codec::encode_frame(&req, DEFAULT_MAX_FRAME_BYTES, &mut frame).expect("encodes");
    g.bench_function("decode insert request", |b| {
        let mut server = codec::ServerCodec::new(DEFAULT_MAX_FRAME_BYTES);
        b.iter(|| {
            let mut buf = frame.clone();
            black_box(server.decode(&mut buf).expect("decodes"))
        })
    });

    let ok = Response {
        id: 1,
        body: ResponseBody::Executed(Executed::new(1, 123_456)),
    };
    g.bench_function("encode+decode executed response", |b| {
        let mut server = codec::ServerCodec::new(DEFAULT_MAX_FRAME_BYTES);
        let mut client = codec::ClientCodec::new(DEFAULT_MAX_FRAME_BYTES);
        let mut buf = BytesMut::with_capacity(64);
        b.iter(|| {
            server.encode(ok.clone(), &mut buf).expect("encodes");
            black_box(client.decode(&mut buf).expect("decodes"))
        })
    });

    for n in [1usize, 100] {
        let resp = rows_response(n);
        // The same rows as a peer that announced DECLTYPES gets them.
        let typed = Response {
            id: resp.id,
            body: resp.body.clone().for_peer(features::DECLTYPES),
        };
        assert!(matches!(typed.body, ResponseBody::TypedRows(_)));
        for (name, resp) in [
            ("decode rows response", resp),
            ("decode typed rows response", typed),
        ] {
            let mut frame = BytesMut::new();
            codec::encode_frame(&resp, DEFAULT_MAX_FRAME_BYTES, &mut frame).expect("encodes");
            g.bench_with_input(BenchmarkId::new(name, n), &frame, |b, f| {
                let mut client = codec::ClientCodec::new(DEFAULT_MAX_FRAME_BYTES);
                b.iter(|| {
                    let mut buf = f.clone();
                    black_box(client.decode(&mut buf).expect("decodes"))
                })
            });
        }
    }
    g.finish();

    // One read(2) from a busy client brings many frames; the server splits
    // them all before it decodes any.
    let mut g = c.benchmark_group("frames");
    let mut many = BytesMut::new();
    for id in 0..64 {
        codec::encode_frame(&insert_request(id), DEFAULT_MAX_FRAME_BYTES, &mut many)
            .expect("encodes");
    }
    g.throughput(Throughput::Elements(64));
    g.bench_function("split 64 frames from one read", |b| {
        b.iter(|| {
            let mut buf = many.clone();
            let mut n = 0;
            while let Some(p) =
                split_frame(DEFAULT_MAX_FRAME_BYTES, &mut buf).expect("well-formed frames")
            {
                black_box(p);
                n += 1;
            }
            assert_eq!(n, 64);
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
