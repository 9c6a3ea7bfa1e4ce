//! Property tests: any message round-trips; any bytes fed to the decoder
//! give a message or an error, never a panic.

use bytes::BytesMut;
use nexusd_protocol::codec::{
    ClientCodec, FrameDecoder, ServerCodec, decode_payload, encode_frame, encode_payload,
};
use nexusd_protocol::*;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Real),
        ".{0,40}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Blob),
    ]
}

fn params() -> impl Strategy<Value = Params> {
    prop_oneof![
        proptest::collection::vec(value(), 0..6).prop_map(Params::Positional),
        proptest::collection::vec((":[a-z]{1,8}", value()), 0..6).prop_map(Params::Named),
    ]
}

fn statement() -> impl Strategy<Value = Statement> {
    (".{0,80}", params()).prop_map(|(sql, params)| Statement { sql, params })
}

fn request() -> impl Strategy<Value = Request> {
    let body = prop_oneof![
        statement().prop_map(RequestBody::Execute),
        statement().prop_map(RequestBody::Query),
        proptest::collection::vec(statement(), 0..5).prop_map(RequestBody::Batch),
        Just(RequestBody::Admin(AdminRequest::Status)),
        Just(RequestBody::Admin(AdminRequest::Shutdown)),
        Just(RequestBody::Admin(AdminRequest::Ping)),
        Just(RequestBody::Admin(AdminRequest::Transactions)),
        any::<u64>().prop_map(|txn| RequestBody::Admin(AdminRequest::RollbackTransaction { txn })),
        any::<bool>().prop_map(|reset| RequestBody::Admin(AdminRequest::SlowLog { reset })),
        proptest::sample::select(vec![
            TxnMode::Immediate,
            TxnMode::Deferred,
            TxnMode::ReadOnly
        ])
        .prop_map(RequestBody::Begin),
        (
            any::<u64>(),
            prop_oneof![
                statement().prop_map(TxnOp::Execute),
                statement().prop_map(TxnOp::Query),
                proptest::collection::vec(statement(), 0..3).prop_map(TxnOp::Batch),
                Just(TxnOp::Commit),
                Just(TxnOp::Rollback),
            ]
        )
            .prop_map(|(txn, op)| RequestBody::Transaction { txn, op }),
        (
            proptest::sample::select(vec![
                TxnMode::Immediate,
                TxnMode::Deferred,
                TxnMode::ReadOnly
            ]),
            prop_oneof![
                statement().prop_map(TxnOp::Execute),
                statement().prop_map(TxnOp::Query),
                proptest::collection::vec(statement(), 0..3).prop_map(TxnOp::Batch),
            ]
        )
            .prop_map(|(mode, op)| RequestBody::BeginWith { mode, op }),
    ];
    (any::<u64>(), "[a-z]{0,8}", any::<u32>(), body).prop_map(|(id, db, timeout_ms, body)| {
        Request {
            id,
            db,
            timeout_ms,
            body,
        }
    })
}

fn rows() -> impl Strategy<Value = Rows> {
    (
        proptest::collection::vec("[a-z]{1,6}", 0..4),
        proptest::collection::vec(proptest::collection::vec(value(), 0..4), 0..6),
    )
        .prop_map(|(columns, rows)| Rows {
            columns,
            rows,
            decltypes: Vec::new(),
            last_insert_rowid: 0,
            total_changes: 0,
        })
}

/// Rows with a declared type (or none) per column, as `TypedRows` carries.
fn typed_rows() -> impl Strategy<Value = TypedRows> {
    (
        rows(),
        proptest::collection::vec(proptest::option::of("[A-Z]{1,9}"), 0..4),
    )
        .prop_map(|(rows, decltypes)| TypedRows { decltypes, rows })
}

fn response() -> impl Strategy<Value = Response> {
    let kind = proptest::sample::select(ErrorKind::ALL.to_vec());
    let error = (
        kind,
        any::<i32>(),
        any::<i32>(),
        ".{0,40}",
        any::<Option<u32>>(),
    )
        .prop_map(
            |(kind, code, extended_code, message, statement_index)| ErrorBody {
                kind,
                code,
                extended_code,
                message,
                statement_index,
                total_changes: 0,
            },
        );
    // As decoded: the change total is not on the wire as such.
    let executed =
        (any::<u64>(), any::<i64>()).prop_map(|(rows_affected, last_insert_rowid)| Executed {
            total_changes: 0,
            ..Executed::new(rows_affected, last_insert_rowid)
        });
    let result = prop_oneof![
        executed.clone().prop_map(StatementResult::Executed),
        rows().prop_map(StatementResult::Rows),
        typed_rows().prop_map(StatementResult::TypedRows),
        (any::<u64>(), executed.clone()).prop_map(|(total_changes, e)| {
            StatementResult::Changed {
                total_changes,
                result: Box::new(StatementResult::Executed(e)),
            }
        }),
    ];
    // A statement's answer, as `Changed` and `BegunWith` carry one.
    let answer = prop_oneof![
        executed.clone().prop_map(ResponseBody::Executed),
        typed_rows().prop_map(ResponseBody::TypedRows),
        error.clone().prop_map(ResponseBody::Error),
    ];
    let body = prop_oneof![
        executed.clone().prop_map(ResponseBody::Executed),
        (any::<u64>(), answer.clone()).prop_map(|(total_changes, answer)| {
            ResponseBody::Changed(Changed {
                total_changes,
                answer: Box::new(answer),
            })
        }),
        rows().prop_map(ResponseBody::Rows),
        typed_rows().prop_map(ResponseBody::TypedRows),
        proptest::collection::vec(result, 0..4).prop_map(ResponseBody::Batch),
        Just(ResponseBody::Ok),
        error.clone().prop_map(ResponseBody::Error),
        any::<u64>().prop_map(ResponseBody::Begun),
        (any::<u64>(), any::<u64>(), ".{0,10}", any::<u64>()).prop_map(
            |(id, client_id, client_name, statements)| {
                ResponseBody::Transactions(vec![TxnInfo {
                    id,
                    client_id,
                    client_name,
                    pid: Some(7),
                    mode: TxnMode::Deferred,
                    state: "snapshot".into(),
                    age_ms: 5,
                    idle_ms: 1,
                    statements,
                }])
            }
        ),
        (
            any::<u64>(),
            ".{0,40}",
            proptest::option::of(".{0,20}"),
            ".{0,12}",
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(duration_us, sql, error, client_name, pid)| {
                ResponseBody::SlowLog(vec![SlowStatement {
                    id: 1,
                    unix_ms: 1_795_000_000_000,
                    duration_us,
                    waited_us: 3,
                    client_id: 9,
                    client_name,
                    pid,
                    ran_on: "reader".into(),
                    sql,
                    params: 2,
                    error,
                }])
            }),
        proptest::collection::vec(proptest::collection::vec(value(), 0..4), 0..6)
            .prop_map(ResponseBody::RowsPart),
        (any::<i64>(), typed_rows()).prop_map(|(last_insert_rowid, rows)| {
            ResponseBody::InsertedRows(InsertedRows {
                last_insert_rowid,
                rows,
            })
        }),
        (any::<u64>(), answer).prop_map(|(txn, answer)| {
            ResponseBody::BegunWith(BegunWith {
                txn,
                answer: Box::new(answer),
            })
        }),
    ];
    (any::<u64>(), body).prop_map(|(id, body)| Response { id, body })
}

proptest! {
    #[test]
    fn requests_round_trip(req in request()) {
        let bytes = encode_payload(&req).expect("encode");
        let back: Request = decode_payload(&bytes).expect("decode");
        // Compare encodings: NaN != NaN, but its bytes are stable.
        prop_assert_eq!(encode_payload(&back).expect("re-encode"), bytes);
    }

    #[test]
    fn responses_round_trip_through_the_frame_codec(resp in response()) {
        let mut buf = BytesMut::new();
        encode_frame(&resp, DEFAULT_MAX_FRAME_BYTES, &mut buf).expect("encode");
        let mut codec = ClientCodec::new(DEFAULT_MAX_FRAME_BYTES);
        let back = codec.decode(&mut buf).expect("decode").expect("a whole frame");
        prop_assert!(buf.is_empty());
        prop_assert_eq!(encode_payload(&back).expect("re-encode"), encode_payload(&resp).expect("encode"));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_payload::<Request>(&bytes);
        let _ = decode_payload::<Response>(&bytes);
        let _ = decode_payload::<Hello>(&bytes);
        let _ = decode_payload::<HelloReply>(&bytes);
        let mut server = ServerCodec::new(1024);
        let mut buf = BytesMut::from(&bytes[..]);
        // Drain: each call yields a message, an error, or asks for more.
        for _ in 0..bytes.len() + 1 {
            match server.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        let mut raw = FrameDecoder { max_frame_bytes: 1024 };
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = raw.decode(&mut buf);
    }

    #[test]
    fn framed_garbage_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(&payload);
        let _ = ServerCodec::new(1024).decode(&mut buf);
    }
}

#[test]
fn a_lying_length_inside_a_frame_fails_without_allocating() {
    // A Text value claiming 2^62 bytes: the decoder must refuse it, not try
    // to allocate it.
    let mut payload = vec![0x01, 0x04, b'm', b'a', b'i', b'n', 0x00, 0x01, 0xfd];
    payload.extend_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(decode_payload::<Request>(&payload).is_err());
}

#[test]
fn oversized_frames_are_refused_before_buffering() {
    let mut codec = ServerCodec::new(1024);
    let mut buf = BytesMut::from(&[0x00, 0x00, 0x04, 0x01][..]);
    let err = codec.decode(&mut buf).expect_err("1025 > 1024");
    assert_eq!(
        err.to_string(),
        "frame of 1025 bytes exceeds the limit of 1024 bytes; send smaller requests or raise --max-frame-bytes"
    );
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = encode_payload(&Hello {
        protocol_version: 1,
        client_name: "x".into(),
        features: 0,
    })
    .expect("encode");
    bytes.push(0);
    let err = decode_payload::<Hello>(&bytes).expect_err("trailing byte");
    assert!(err.to_string().contains("1 trailing bytes"), "{err}");
}

/// Every kind has a label of its own, `index` is its place in `ALL`, and a
/// peer without the feature bit is never sent a kind it cannot decode.
#[test]
fn error_kinds_label_index_and_downgrade() {
    use nexusd_protocol::features;
    let labels: std::collections::HashSet<_> = ErrorKind::ALL.iter().map(|k| k.label()).collect();
    assert_eq!(labels.len(), ErrorKind::ALL.len());
    for (i, k) in ErrorKind::ALL.iter().enumerate() {
        assert_eq!(k.index(), i, "{k:?}");
        assert_eq!(k.for_peer(features::ALL), *k);
        let old = k.for_peer(0);
        assert!(
            old.index() <= ErrorKind::Forbidden.index(),
            "{k:?} -> {old:?}"
        );
    }
    assert_eq!(ErrorKind::Io.for_peer(0), ErrorKind::Internal);
    assert_eq!(
        ErrorKind::InvalidArgument.for_peer(0),
        ErrorKind::Unsupported
    );
    assert_eq!(
        ErrorKind::ConfigRejected.for_peer(0),
        ErrorKind::Unsupported
    );
}

/// Rows that carry an inserted rowid go as `InsertedRows` only to a peer
/// that announced the bit, with declared types only to one that asked for
/// them; any other peer gets the `Rows` or `TypedRows` it always got.
#[test]
fn inserted_rows_go_only_to_peers_that_announce_them() {
    let rows = Rows {
        columns: vec!["id".into()],
        rows: vec![vec![Value::Integer(7)]],
        decltypes: vec![Some("INTEGER".into())],
        last_insert_rowid: 7,
        total_changes: 0,
    };
    let body = || ResponseBody::Rows(rows.clone());
    match body().for_peer(features::ALL) {
        ResponseBody::InsertedRows(i) => {
            assert_eq!(i.last_insert_rowid, 7);
            assert_eq!(i.rows.decltypes, [Some("INTEGER".to_owned())]);
            assert_eq!(i.rows.rows.rows, rows.rows);
        }
        other => panic!("{other:?}"),
    }
    match body().for_peer(features::INSERTED_ROWS) {
        ResponseBody::InsertedRows(i) => assert!(i.rows.decltypes.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        body().for_peer(features::DECLTYPES),
        ResponseBody::TypedRows(_)
    ));
    assert!(matches!(body().for_peer(0), ResponseBody::Rows(_)));
    let selected = Rows {
        last_insert_rowid: 0,
        ..rows.clone()
    };
    assert!(matches!(
        ResponseBody::Rows(selected).for_peer(features::ALL),
        ResponseBody::TypedRows(_)
    ));
}

/// A statement whose change total its answer does not imply (a trigger's
/// rows, `INSERT ... RETURNING`, a failure after changes) goes in
/// `Changed` to a peer that announced the bit, in a batch statement by
/// statement; every other answer, and any answer to another peer, goes as
/// it always did.
#[test]
fn change_totals_go_where_the_answer_does_not_imply_them() {
    let without = features::ALL & !features::CHANGE_TOTALS;
    let executed = |total_changes| Executed {
        total_changes,
        ..Executed::new(1, 42)
    };
    let plain = ResponseBody::Executed(executed(1));
    assert_eq!(plain.clone().for_peer(features::ALL), plain);
    match ResponseBody::Executed(executed(3)).for_peer(features::ALL) {
        ResponseBody::Changed(c) => {
            assert_eq!(c.total_changes, 3);
            assert!(matches!(*c.answer, ResponseBody::Executed(e) if e.rows_affected == 1));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ResponseBody::Executed(executed(3)).for_peer(without),
        ResponseBody::Executed(_)
    ));

    let returning = Rows {
        columns: vec!["id".into()],
        rows: vec![vec![Value::Integer(7)], vec![Value::Integer(8)]],
        decltypes: Vec::new(),
        last_insert_rowid: 8,
        total_changes: 2,
    };
    let mut changed = ResponseBody::Rows(returning.clone()).for_peer(features::ALL);
    assert_eq!(
        changed.rows_mut().map(|r| r.len()),
        Some(2),
        "rows reached inside"
    );
    match changed {
        ResponseBody::Changed(c) => {
            assert_eq!(c.total_changes, 2);
            assert!(matches!(*c.answer, ResponseBody::InsertedRows(i) if i.last_insert_rowid == 8));
        }
        other => panic!("{other:?}"),
    }
    let read = Rows {
        total_changes: 0,
        last_insert_rowid: 0,
        ..returning.clone()
    };
    assert!(matches!(
        ResponseBody::Rows(read).for_peer(features::ALL),
        ResponseBody::TypedRows(_)
    ));

    let mut failed = ErrorBody::new(ErrorKind::Io, "disk full");
    failed.total_changes = 5;
    match ResponseBody::Error(failed.clone()).for_peer(features::CHANGE_TOTALS) {
        ResponseBody::Changed(c) => match *c.answer {
            // The kind still goes as the peer decodes it.
            ResponseBody::Error(e) => assert_eq!(e.kind, ErrorKind::Internal),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ResponseBody::Error(failed).for_peer(without),
        ResponseBody::Error(_)
    ));

    let batch = || {
        ResponseBody::Batch(vec![
            StatementResult::Executed(executed(1)),
            StatementResult::Executed(executed(4)),
            StatementResult::Rows(returning.clone()),
        ])
    };
    match batch().for_peer(features::ALL) {
        ResponseBody::Batch(results) => {
            assert!(matches!(results[0], StatementResult::Executed(_)));
            assert!(matches!(
                results[1],
                StatementResult::Changed {
                    total_changes: 4,
                    ..
                }
            ));
            assert!(matches!(
                &results[2],
                StatementResult::Changed { total_changes: 2, result }
                    if matches!(**result, StatementResult::TypedRows(_))
            ));
        }
        other => panic!("{other:?}"),
    }
    match batch().for_peer(without) {
        ResponseBody::Batch(results) => assert!(
            results
                .iter()
                .all(|r| !matches!(r, StatementResult::Changed { .. }))
        ),
        other => panic!("{other:?}"),
    }
}

/// `BegunWith` carries its first request's answer shaped for the peer as
/// that answer would go alone: wrapped in `Changed` where the total is not
/// implied, an error kind the peer does not know downgraded; and the rows
/// of a large first read are reached inside it, for its parts.
#[test]
fn begun_with_shapes_its_answer_as_it_would_go_alone() {
    let begun = |answer| {
        ResponseBody::BegunWith(BegunWith {
            txn: 9,
            answer: Box::new(answer),
        })
    };
    let triggered = ResponseBody::Executed(Executed {
        total_changes: 3,
        ..Executed::new(1, 42)
    });
    match begun(triggered).for_peer(features::ALL) {
        ResponseBody::BegunWith(b) => {
            assert_eq!(b.txn, 9);
            assert!(matches!(*b.answer, ResponseBody::Changed(c) if c.total_changes == 3));
        }
        other => panic!("{other:?}"),
    }
    let refused = ResponseBody::Error(ErrorBody::new(ErrorKind::InvalidArgument, "no"));
    match begun(refused).for_peer(features::ALL & !features::ERROR_KINDS_2) {
        ResponseBody::BegunWith(b) => {
            assert!(
                matches!(*b.answer, ResponseBody::Error(e) if e.kind == ErrorKind::Unsupported)
            );
        }
        other => panic!("{other:?}"),
    }
    let mut rows = begun(ResponseBody::Rows(Rows {
        columns: vec!["x".into()],
        rows: vec![vec![Value::Integer(1)]],
        decltypes: Vec::new(),
        last_insert_rowid: 0,
        total_changes: 0,
    }));
    assert_eq!(rows.rows_mut().map(|r| r.len()), Some(1));
}
