//! Fuzz targets for the three decoders a client's bytes reach before any
//! other code: the frame splitter, the handshake, and the request decoder.
//!
//! Each target is a plain function of the input bytes. It must never panic,
//! whatever the bytes; it also panics on purpose (so AFL++ records a crash)
//! when a decoder breaks one of the invariants the daemon relies on:
//!
//! - a frame is never longer than the limit, and splitting loses no byte;
//! - a handshake is accepted only in this protocol version, and a version
//!   mismatch always names a version other than ours;
//! - whatever decodes re-encodes to bytes that decode to the same message.
//!
//! `src/bin/` wraps each in `afl::fuzz!`; `tests` below replays the
//! checked-in corpus (`fuzz/corpus/<target>/`) through them on every
//! `cargo test`.

use bytes::BytesMut;
use nexusd_protocol::codec::{
    self, CodecError, HelloError, LENGTH_BYTES, decode_payload, encode_payload,
};
use nexusd_protocol::{HelloReply, PROTOCOL_VERSION, Request, Response};

/// The frame splitter, fed the way a socket feeds the daemon: in pieces.
///
/// The first two bytes choose the frame limit (so the fuzzer reaches both
/// "too large" and "fits"), the third the size of the reads; the rest is the
/// stream. Every payload split off is also decoded as a request.
pub fn frame(data: &[u8]) {
    let [a, b, chunk, stream @ ..] = data else {
        return;
    };
    let max = u32::from(u16::from_le_bytes([*a, *b]));
    let chunk = usize::from(*chunk).max(1);
    let mut buf = BytesMut::new();
    let mut consumed = 0usize;
    let mut fed = 0usize;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            let before = buf.len();
            match codec::split_frame(max, &mut buf) {
                Ok(Some(payload)) => {
                    assert!(
                        payload.len() <= max as usize,
                        "a {}-byte frame passed a {max}-byte limit",
                        payload.len()
                    );
                    assert_eq!(before - buf.len(), LENGTH_BYTES + payload.len());
                    consumed += LENGTH_BYTES + payload.len();
                    let _ = decode_payload::<Request>(&payload);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "an incomplete frame lost bytes");
                    break;
                }
                Err(CodecError::FrameTooLarge { len, max: limit }) => {
                    assert!(len > u64::from(limit), "refused a frame within the limit");
                    assert_eq!(limit, max);
                    return;
                }
                Err(e) => panic!("split_frame failed other than by size: {e}"),
            }
        }
        assert_eq!(consumed + buf.len(), fed, "bytes lost between frames");
    }
}

/// The handshake as the daemon reads it (`decode_hello`), and the reply as
/// a client reads it. The first byte picks the side.
pub fn handshake(data: &[u8]) {
    let [side, payload @ ..] = data else {
        return;
    };
    if side & 1 == 0 {
        match codec::decode_hello(payload) {
            Ok(hello) => {
                assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
                round_trip(&hello);
            }
            Err(HelloError::Version(v)) => {
                assert_ne!(v, PROTOCOL_VERSION, "a mismatch that names our own version");
            }
            Err(HelloError::Undecodable(_)) => {}
        }
    } else if let Ok(reply) = decode_payload::<HelloReply>(payload) {
        round_trip(&reply);
    }
}

/// A request payload as the daemon decodes it; and, with the first byte's
/// low bit set, a response payload as the client decodes it.
pub fn request(data: &[u8]) {
    let [side, payload @ ..] = data else {
        return;
    };
    if side & 1 == 0 {
        if let Ok(req) = decode_payload::<Request>(payload) {
            round_trip(&req);
        }
    } else if let Ok(resp) = decode_payload::<Response>(payload) {
        round_trip(&resp);
    }
}

/// What decoded must encode, and decode again to the same bytes. Compared as
/// bytes, not with `==`, since a REAL may be NaN.
fn round_trip<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let bytes = match encode_payload(msg) {
        Ok(b) => b,
        Err(e) => panic!("decoded {msg:?} but could not encode it again: {e}"),
    };
    let again: T = match decode_payload(&bytes) {
        Ok(m) => m,
        Err(e) => panic!("could not decode the re-encoding of {msg:?}: {e}"),
    };
    let twice = match encode_payload(&again) {
        Ok(b) => b,
        Err(e) => panic!("could not encode {again:?}: {e}"),
    };
    assert_eq!(bytes, twice, "{msg:?} changed in a round trip");
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn corpus(target: &str) -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
            .map(|e| e.expect("readable corpus entry").path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 8,
            "corpus {} has only {} inputs; run `cargo run -p nexusd-fuzz --bin fuzz-seed`",
            dir.display(),
            files.len()
        );
        files
    }

    fn replay(target: &str, f: fn(&[u8])) {
        for path in corpus(target) {
            let data = std::fs::read(&path).expect("readable corpus file");
            f(&data);
        }
    }

    #[test]
    fn frame_corpus_replays() {
        replay("frame", super::frame);
    }

    #[test]
    fn request_corpus_replays() {
        replay("request", super::request);
    }

    #[test]
    fn handshake_corpus_replays() {
        replay("handshake", super::handshake);
    }

    /// The targets can fail: a frame over the limit that split_frame let
    /// through would trip the first assertion. Here, the one invariant a
    /// hand-made input can reach: a mismatch naming our own version.
    #[test]
    fn handshake_target_accepts_our_version_only() {
        let hello = nexusd_protocol::Hello {
            protocol_version: nexusd_protocol::PROTOCOL_VERSION,
            client_name: "fuzz".into(),
            features: 0,
        };
        let mut data = vec![0u8];
        data.extend(super::encode_payload(&hello).expect("encodes"));
        super::handshake(&data);
        assert!(super::codec::decode_hello(&data[1..]).is_ok());
        let mut other = hello;
        other.protocol_version += 1;
        let bytes = super::encode_payload(&other).expect("encodes");
        assert!(matches!(
            super::codec::decode_hello(&bytes),
            Err(super::HelloError::Version(v)) if v == nexusd_protocol::PROTOCOL_VERSION + 1
        ));
    }
}
