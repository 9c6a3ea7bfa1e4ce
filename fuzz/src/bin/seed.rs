//! Writes the seed corpus: real encodings of the messages each target
//! decodes, so the fuzzer starts from valid frames and mutates from there.
//!
//! `cargo run -p nexusd-fuzz --bin fuzz-seed` rewrites `fuzz/corpus/*/seed-*`;
//! inputs AFL++ found (named otherwise) are left alone.

use std::path::Path;

use nexusd_protocol::codec::encode_payload;
use nexusd_protocol::*;

fn statement(sql: &str, params: Params) -> Statement {
    Statement {
        sql: sql.into(),
        params,
    }
}

fn requests() -> Vec<Request> {
    let values = vec![
        Value::Null,
        Value::Integer(-42),
        Value::Integer(i64::MAX),
        Value::Real(1.5),
        Value::Real(f64::NAN),
        Value::Text("héllo".into()),
        Value::Blob(vec![0, 1, 2, 255]),
    ];
    let bodies = vec![
        RequestBody::Execute(statement(
            "INSERT INTO t(a, b) VALUES (?, ?)",
            Params::Positional(values.clone()),
        )),
        RequestBody::Query(statement(
            "SELECT * FROM t WHERE a = :a",
            Params::Named(vec![(":a".into(), Value::Integer(1))]),
        )),
        RequestBody::Batch(vec![
            statement("CREATE TABLE t(a, b)", Params::default()),
            statement("INSERT INTO t VALUES (1, 2)", Params::default()),
        ]),
        RequestBody::Admin(AdminRequest::Status),
        RequestBody::Admin(AdminRequest::Checkpoint(CheckpointMode::Truncate)),
        RequestBody::Admin(AdminRequest::Backup {
            dest: "/tmp/x.db".into(),
        }),
        RequestBody::Admin(AdminRequest::IntegrityCheck { quick: true }),
        RequestBody::Begin(TxnMode::Deferred),
        RequestBody::Transaction {
            txn: 7,
            op: TxnOp::Execute(statement(
                "UPDATE t SET a = ?1",
                Params::Positional(vec![Value::Integer(3)]),
            )),
        },
        RequestBody::Transaction {
            txn: 7,
            op: TxnOp::Commit,
        },
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Request {
            id: i as u64 + 1,
            db: DEFAULT_DB.into(),
            timeout_ms: if i % 2 == 0 { 0 } else { 5_000 },
            body,
        })
        .collect()
}

fn responses() -> Vec<Response> {
    let bodies = vec![
        ResponseBody::Executed(Executed::new(1, 99)),
        ResponseBody::Changed(Changed {
            total_changes: 3,
            answer: Box::new(ResponseBody::Executed(Executed::new(1, 99))),
        }),
        ResponseBody::Rows(Rows {
            columns: vec!["a".into(), "b".into()],
            rows: vec![vec![Value::Integer(1), Value::Text("x".into())]],
            decltypes: Vec::new(),
            last_insert_rowid: 0,
            total_changes: 0,
        }),
        ResponseBody::TypedRows(TypedRows::new(Rows {
            columns: vec!["a".into(), "b".into()],
            rows: vec![vec![Value::Integer(1), Value::Text("x".into())]],
            decltypes: vec![Some("TIMESTAMP".into()), None],
            last_insert_rowid: 0,
            total_changes: 0,
        })),
        ResponseBody::Ok,
        ResponseBody::Error(ErrorBody::new(
            ErrorKind::Sql,
            "UNIQUE constraint failed: t.a",
        )),
        ResponseBody::Text("ok".into()),
        ResponseBody::Begun(3),
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Response {
            id: i as u64 + 1,
            body,
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(dir.join(name), bytes)
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for t in ["frame", "request", "handshake"] {
        std::fs::create_dir_all(root.join(t))?;
    }
    let requests = requests();
    let encoded: Vec<Vec<u8>> = requests
        .iter()
        .map(encode_payload)
        .collect::<Result<_, _>>()?;

    let dir = root.join("request");
    for (i, bytes) in encoded.iter().enumerate() {
        let mut input = vec![0u8];
        input.extend_from_slice(bytes);
        write(&dir, &format!("seed-request-{i:02}"), &input)?;
    }
    for (i, resp) in responses().iter().enumerate() {
        let mut input = vec![1u8];
        input.extend(encode_payload(resp)?);
        write(&dir, &format!("seed-response-{i:02}"), &input)?;
    }

    // Frame: two limit bytes (little-endian), a read size, then frames back
    // to back; one stream per read size, one with a frame over the limit.
    let dir = root.join("frame");
    let stream: Vec<u8> = encoded.iter().flat_map(|p| framed(p)).collect();
    for (i, chunk) in [1u8, 3, 7, 64, 255].iter().enumerate() {
        let mut input = 4096u16.to_le_bytes().to_vec();
        input.push(*chunk);
        input.extend_from_slice(&stream);
        write(&dir, &format!("seed-stream-{i:02}"), &input)?;
    }
    let mut over = 16u16.to_le_bytes().to_vec();
    over.push(5);
    over.extend(framed(&encoded[0]));
    write(&dir, "seed-over-limit", &over)?;
    let mut partial = 4096u16.to_le_bytes().to_vec();
    partial.push(2);
    let f = framed(&encoded[1]);
    partial.extend_from_slice(&f[..f.len() / 2]);
    write(&dir, "seed-partial", &partial)?;
    write(&dir, "seed-empty-frame", &[0, 1, 1, 0, 0, 0, 0])?;

    // Handshake: hellos of our version and others, replies both ways.
    let dir = root.join("handshake");
    let hellos = [
        (PROTOCOL_VERSION, "ingester", features::ALL),
        (PROTOCOL_VERSION, "", 0),
        (PROTOCOL_VERSION + 1, "from the future", u64::MAX),
        (0, "ancient", 0),
    ];
    for (i, (v, name, f)) in hellos.iter().enumerate() {
        let mut input = vec![0u8];
        input.extend(encode_payload(&Hello {
            protocol_version: *v,
            client_name: (*name).into(),
            features: *f,
        })?);
        write(&dir, &format!("seed-hello-{i:02}"), &input)?;
    }
    let replies = [
        HelloReply::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            server_version: "0.1.0".into(),
            features: features::ALL,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_in_flight: 64,
        }),
        HelloReply::Refused(ErrorBody::new(ErrorKind::Protocol, "version mismatch")),
    ];
    for (i, r) in replies.iter().enumerate() {
        let mut input = vec![1u8];
        input.extend(encode_payload(r)?);
        write(&dir, &format!("seed-reply-{i:02}"), &input)?;
    }
    write(&dir, "seed-garbage", b"\0GET / HTTP/1.1\r\n\r\n")?;
    write(&dir, "seed-truncated", &[0, 1, 200])?;
    println!("wrote the seed corpus under {}", root.display());
    Ok(())
}
