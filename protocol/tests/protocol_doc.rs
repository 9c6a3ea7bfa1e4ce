//! docs/protocol.md's hex examples are the encoder's real output: each
//! `<!-- example: NAME -->` block must match the message built here.

use bytes::BytesMut;
use nexusd_protocol::codec::{decode_payload, encode_frame};
use nexusd_protocol::*;

fn examples() -> Vec<(&'static str, Vec<u8>)> {
    fn frame<T: serde::Serialize>(m: &T) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode_frame(m, DEFAULT_MAX_FRAME_BYTES, &mut buf).expect("encode");
        buf.to_vec()
    }
    vec![
        (
            "hello",
            frame(&Hello {
                protocol_version: 1,
                client_name: "demo".into(),
                features: 0,
            }),
        ),
        (
            "welcome",
            frame(&HelloReply::Welcome(Welcome {
                protocol_version: 1,
                server_version: "0.1.0".into(),
                features: 0,
                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
                max_in_flight: 256,
            })),
        ),
        (
            "execute",
            frame(&Request {
                id: 1,
                db: "main".into(),
                timeout_ms: 0,
                body: RequestBody::Execute(Statement::new(
                    "INSERT INTO t VALUES (?1)",
                    Params::Positional(vec![Value::Integer(42)]),
                )),
            }),
        ),
        (
            "executed",
            frame(&Response {
                id: 1,
                body: ResponseBody::Executed(Executed::new(1, 42)),
            }),
        ),
        (
            "changed",
            frame(&Response {
                id: 1,
                body: ResponseBody::Changed(Changed {
                    total_changes: 3,
                    answer: Box::new(ResponseBody::Executed(Executed::new(1, 42))),
                }),
            }),
        ),
        (
            "query",
            frame(&Request {
                id: 2,
                db: "main".into(),
                timeout_ms: 1500,
                body: RequestBody::Query(Statement::new(
                    "SELECT x FROM t WHERE x > :min",
                    Params::Named(vec![(":min".into(), Value::Real(0.5))]),
                )),
            }),
        ),
        (
            "rows",
            frame(&Response {
                id: 2,
                body: ResponseBody::Rows(Rows {
                    columns: vec!["x".into()],
                    rows: vec![
                        vec![Value::Integer(42)],
                        vec![Value::Null],
                        vec![Value::Text("hi".into())],
                        vec![Value::Blob(vec![0xca, 0xfe])],
                    ],
                    decltypes: Vec::new(),
                    last_insert_rowid: 0,
                    total_changes: 0,
                }),
            }),
        ),
        (
            "typed-rows",
            frame(&Response {
                id: 2,
                body: ResponseBody::TypedRows(TypedRows::new(Rows {
                    columns: vec!["at".into(), "n".into()],
                    rows: vec![vec![Value::Text("2026-11-24".into()), Value::Integer(3)]],
                    decltypes: vec![Some("DATE".into()), None],
                    last_insert_rowid: 0,
                    total_changes: 0,
                })),
            }),
        ),
        (
            "rows-part",
            frame(&Response {
                id: 2,
                body: ResponseBody::RowsPart(vec![vec![Value::Integer(41)], vec![Value::Null]]),
            }),
        ),
        (
            "rows-head",
            frame(&Response {
                id: 2,
                body: ResponseBody::RowsHead(TypedRows::new(Rows {
                    columns: vec!["n".into()],
                    rows: vec![vec![Value::Integer(41)]],
                    ..Rows::default()
                })),
            }),
        ),
        (
            "parts-took",
            frame(&Request {
                id: 0,
                db: "main".into(),
                timeout_ms: 0,
                body: RequestBody::Parts {
                    of: 2,
                    op: PartsOp::Took(1),
                },
            }),
        ),
        (
            "error",
            frame(&Response {
                id: 3,
                body: ResponseBody::Error(ErrorBody {
                    kind: ErrorKind::Sql,
                    code: 19,
                    extended_code: 2067,
                    message: "UNIQUE constraint failed: t.x".into(),
                    statement_index: Some(1),
                    total_changes: 0,
                }),
            }),
        ),
        (
            "begin",
            frame(&Request {
                id: 5,
                db: "main".into(),
                timeout_ms: 0,
                body: RequestBody::Begin(TxnMode::Deferred),
            }),
        ),
        (
            "begun",
            frame(&Response {
                id: 5,
                body: ResponseBody::Begun(7),
            }),
        ),
        (
            "in-transaction",
            frame(&Request {
                id: 6,
                db: "main".into(),
                timeout_ms: 0,
                body: RequestBody::Transaction {
                    txn: 7,
                    op: TxnOp::Query(Statement::new("SELECT 1", Params::Positional(vec![]))),
                },
            }),
        ),
        (
            "commit",
            frame(&Request {
                id: 7,
                db: "main".into(),
                timeout_ms: 0,
                body: RequestBody::Transaction {
                    txn: 7,
                    op: TxnOp::Commit,
                },
            }),
        ),
        (
            "begin-with",
            frame(&Request {
                id: 8,
                db: "main".into(),
                timeout_ms: 0,
                body: RequestBody::BeginWith {
                    mode: TxnMode::Deferred,
                    op: TxnOp::Query(Statement::new("SELECT 1", Params::Positional(vec![]))),
                },
            }),
        ),
        (
            "begun-with",
            frame(&Response {
                id: 8,
                body: ResponseBody::BegunWith(BegunWith {
                    txn: 9,
                    answer: Box::new(ResponseBody::Rows(Rows {
                        columns: vec!["1".into()],
                        rows: vec![vec![Value::Integer(1)]],
                        decltypes: Vec::new(),
                        last_insert_rowid: 0,
                        total_changes: 0,
                    })),
                }),
            }),
        ),
        (
            "error-io",
            frame(&Response {
                id: 4,
                body: ResponseBody::Error(ErrorBody::new(ErrorKind::Io, "disk full")),
            }),
        ),
    ]
}

/// NAME -> bytes, from the ```hex blocks that follow `<!-- example: NAME -->`.
fn doc_examples(doc: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- example: ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(
            lines.next().map(str::trim),
            Some("```hex"),
            "example {name} must be followed by a ```hex block"
        );
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            let data = l.split('#').next().unwrap_or_default();
            for tok in data.split_whitespace() {
                bytes.push(
                    u8::from_str_radix(tok, 16)
                        .unwrap_or_else(|_| panic!("bad hex {tok:?} in example {name}")),
                );
            }
        }
        out.push((name.to_owned(), bytes));
    }
    out
}

#[test]
fn protocol_md_examples_match_the_encoder() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("docs/protocol.md");
    let documented = doc_examples(&doc);
    let expected = examples();
    assert_eq!(
        documented
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        expected.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "the doc's examples and this test's must be the same list"
    );
    for ((name, doc_bytes), (_, real)) in documented.iter().zip(&expected) {
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            hex(doc_bytes),
            hex(real),
            "example {name} in docs/protocol.md is wrong"
        );
    }
    // And the documented bytes decode back (payload after the 4-byte length).
    let by_name: std::collections::HashMap<_, _> = documented.into_iter().collect();
    let _: Hello = decode_payload(&by_name["hello"][4..]).expect("hello decodes");
    let _: Request = decode_payload(&by_name["execute"][4..]).expect("execute decodes");
}

#[test]
#[allow(clippy::print_stdout)]
fn print_examples_for_the_doc() {
    // `cargo test -p nexusd-protocol --test protocol_doc -- --nocapture`
    // prints the current encodings, to paste into docs/protocol.md.
    for (name, bytes) in examples() {
        println!(
            "{name}: {}",
            bytes
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}
