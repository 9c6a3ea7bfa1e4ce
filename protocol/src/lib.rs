//! The nexusd wire protocol: values, messages, and the frame codec.
//!
//! - `value`: [`Value`], SQLite's five storage classes.
//! - `message`: handshake, requests, responses, typed errors.
//! - `codec`: length-prefixed frames with a bincode payload; the only place
//!   that knows the encoding.
//! - `paths`: where the daemon and its clients look for the socket by default.
//! - `socket`: the Unix socket both ends speak over, registered with the
//!   runtime for readability only.
//! - `cores`: whether the machine has a core free, which decides whether
//!   either end polls for a moment instead of sleeping.
//!
//! docs/protocol.md specifies all of it byte by byte.

pub mod codec;
pub mod cores;
pub mod message;
pub mod paths;
pub mod socket;
pub mod value;

pub use codec::{CodecError, DEFAULT_MAX_FRAME_BYTES, MessageCodec};
pub use message::*;
pub use value::Value;
