//! Framing and encoding: a 4-byte big-endian length, then a bincode payload.
//!
//! This is the only module that knows the payload encoding, so a
//! bincode-compatible encoder can replace bincode here without one byte on
//! the wire changing.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

use crate::message::{Hello, PROTOCOL_VERSION};

/// Default for the largest frame either side accepts: 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;
/// The largest `max_frame_bytes` the codec can be configured with.
pub const MAX_FRAME_BYTES_LIMIT: u32 = 1024 * 1024 * 1024;
/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

/// Upper bound on what the decoder may allocate for one frame's lengths
/// (strings, blobs, vectors). A frame cannot legitimately claim more bytes
/// than it has, so a lying length fails here before any allocation.
const DECODE_LIMIT: usize = MAX_FRAME_BYTES_LIMIT as usize;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "frame of {len} bytes exceeds the limit of {max} bytes; send smaller requests or raise --max-frame-bytes"
    )]
    FrameTooLarge { len: u64, max: u32 },
    #[error("could not decode a {len}-byte frame as {what}: {reason}")]
    Decode {
        what: &'static str,
        len: usize,
        reason: String,
    },
    #[error("could not encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
}

/// Encodes `msg` as a payload (no length prefix).
pub fn encode_payload<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(msg, config()).map_err(|e| CodecError::Encode {
        what: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

/// Decodes one payload; trailing bytes are an error.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let what = short_type_name::<T>();
    let (msg, used) =
        bincode::serde::decode_from_slice::<T, _>(payload, config()).map_err(|e| {
            CodecError::Decode {
                what,
                len: payload.len(),
                reason: e.to_string(),
            }
        })?;
    if used != payload.len() {
        return Err(CodecError::Decode {
            what,
            len: payload.len(),
            reason: format!("{} trailing bytes after the message", payload.len() - used),
        });
    }
    Ok(msg)
}

/// Reads just the leading `u32` of a payload: the protocol version of a
/// `Hello` that is otherwise undecodable (a peer of another version).
pub fn peek_version(payload: &[u8]) -> Option<u32> {
    bincode::serde::decode_from_slice::<u32, _>(payload, config())
        .ok()
        .map(|(v, _)| v)
}

/// Why a handshake frame was not a `Hello` this side can serve.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The peer speaks another protocol version (read from the payload's
    /// first field even when the rest does not decode).
    #[error("the peer speaks protocol version {0}, this side speaks {PROTOCOL_VERSION}")]
    Version(u32),
    #[error(transparent)]
    Undecodable(CodecError),
}

/// Decodes the first frame of a connection the way the server must: a
/// payload whose leading `u32` names another version is that version's
/// mismatch, whether or not the rest decodes; anything else that does not
/// decode as a `Hello` is undecodable.
pub fn decode_hello(payload: &[u8]) -> Result<Hello, HelloError> {
    match decode_payload::<Hello>(payload) {
        Ok(hello) if hello.protocol_version == PROTOCOL_VERSION => Ok(hello),
        Ok(hello) => Err(HelloError::Version(hello.protocol_version)),
        Err(e) => match peek_version(payload) {
            Some(v) if v != PROTOCOL_VERSION => Err(HelloError::Version(v)),
            _ => Err(HelloError::Undecodable(e)),
        },
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// A tokio-util codec that reads `In` messages and writes `Out` messages.
#[derive(Debug)]
pub struct MessageCodec<In, Out> {
    max_frame_bytes: u32,
    _marker: PhantomData<fn(Out) -> In>,
}

impl<In, Out> MessageCodec<In, Out> {
    pub fn new(max_frame_bytes: u32) -> Self {
        MessageCodec {
            max_frame_bytes: max_frame_bytes.min(MAX_FRAME_BYTES_LIMIT),
            _marker: PhantomData,
        }
    }

    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// Changes the limit, e.g. to the one the server announced.
    pub fn set_max_frame_bytes(&mut self, max: u32) {
        self.max_frame_bytes = max.min(MAX_FRAME_BYTES_LIMIT);
    }
}

impl<In, Out> Clone for MessageCodec<In, Out> {
    fn clone(&self) -> Self {
        MessageCodec::new(self.max_frame_bytes)
    }
}

impl<In: DeserializeOwned, Out> Decoder for MessageCodec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        match split_frame(self.max_frame_bytes, src)? {
            Some(payload) => decode_payload(&payload).map(Some),
            None => Ok(None),
        }
    }
}

/// Takes one whole frame's payload off the front of `src`, if it is all
/// there. The length is checked against `max_frame_bytes` before a single
/// byte of the body is buffered.
pub fn split_frame(
    max_frame_bytes: u32,
    src: &mut BytesMut,
) -> Result<Option<BytesMut>, CodecError> {
    if src.len() < LENGTH_BYTES {
        return Ok(None);
    }
    let mut prefix = [0u8; LENGTH_BYTES];
    prefix.copy_from_slice(&src[..LENGTH_BYTES]);
    let len = u32::from_be_bytes(prefix);
    if len > max_frame_bytes {
        return Err(CodecError::FrameTooLarge {
            len: u64::from(len),
            max: max_frame_bytes,
        });
    }
    let len = len as usize;
    if src.len() < LENGTH_BYTES + len {
        src.reserve(LENGTH_BYTES + len - src.len());
        return Ok(None);
    }
    src.advance(LENGTH_BYTES);
    Ok(Some(src.split_to(len)))
}

/// A decoder that yields raw payloads, for a peer that decodes them itself
/// (the server decodes the handshake and requests as separate types).
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    pub max_frame_bytes: u32,
}

impl Decoder for FrameDecoder {
    type Item = BytesMut;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        split_frame(self.max_frame_bytes, src)
    }
}

impl<In, Out: Serialize> Encoder<Out> for MessageCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, msg: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&msg, self.max_frame_bytes, dst)
    }
}

/// Appends one frame (length prefix and payload) to `dst`.
pub fn encode_frame<T: Serialize>(
    msg: &T,
    max_frame_bytes: u32,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let start = dst.len();
    dst.put_u32(0);
    let written = bincode::serde::encode_into_writer(msg, Append(dst), config());
    let len = match written {
        Ok(()) => dst.len() - start - LENGTH_BYTES,
        Err(e) => {
            dst.truncate(start);
            return Err(CodecError::Encode {
                what: short_type_name::<T>(),
                reason: e.to_string(),
            });
        }
    };
    if len > max_frame_bytes as usize {
        dst.truncate(start);
        return Err(CodecError::FrameTooLarge {
            len: len as u64,
            max: max_frame_bytes,
        });
    }
    // len <= max_frame_bytes <= u32::MAX, checked just above.
    dst[start..start + LENGTH_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// bincode's output straight onto the frame buffer: each field is one
/// `extend_from_slice`, not a trip through `std::io::Write`.
struct Append<'a>(&'a mut BytesMut);

impl bincode::enc::write::Writer for Append<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// The codec a client uses.
pub type ClientCodec = MessageCodec<crate::Response, crate::Request>;
/// The codec the server uses once the handshake is done.
pub type ServerCodec = MessageCodec<crate::Request, crate::Response>;
