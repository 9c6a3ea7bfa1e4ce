//! The value model: exactly SQLite's five storage classes.

use serde::{Deserialize, Serialize};

/// One SQL value, as SQLite stores it.
///
/// The variant order is part of the wire format (docs/protocol.md): the tag
/// byte of `Null` is 0, `Integer` 1, `Real` 2, `Text` 3, `Blob` 4.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum Value {
    #[default]
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(#[serde(with = "blob")] Vec<u8>),
}

/// A blob goes through serde as bytes, not as a sequence of `u8`: bincode
/// writes the same bytes either way (a varint length, then the bytes), but
/// as bytes it copies them in one piece instead of one call per byte, and
/// decoding borrows them from the frame, so a length the frame does not
/// hold fails before anything is allocated.
mod blob {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_bytes(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a blob")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        /// Formats without a bytes type (JSON) give a sequence of numbers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

impl Value {
    /// The name SQLite uses for this value's storage class, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Integer(_) => "INTEGER",
            Value::Real(_) => "REAL",
            Value::Text(_) => "TEXT",
            Value::Blob(_) => "BLOB",
        }
    }

    /// Bytes this value occupies in memory beyond its enum slot; used to
    /// enforce the result-size limit without encoding.
    pub fn heap_size(&self) -> usize {
        match self {
            Value::Text(s) => s.len(),
            Value::Blob(b) => b.len(),
            _ => 0,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Integer(i64::from(v))
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Integer(i64::from(v))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Integer(i64::from(v))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}
impl<const N: usize> From<&[u8; N]> for Value {
    fn from(v: &[u8; N]) -> Self {
        Value::Blob(v.to_vec())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        match v {
            Some(v) => v.into(),
            None => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_pick_the_storage_class() {
        assert_eq!(Value::from(3i32), Value::Integer(3));
        assert_eq!(Value::from(true), Value::Integer(1));
        assert_eq!(Value::from(None::<&str>), Value::Null);
        assert_eq!(Value::from(Some("a")), Value::Text("a".into()));
        assert_eq!(Value::from(&b"\x00\x01"[..]), Value::Blob(vec![0, 1]));
        assert_eq!(Value::Text("abc".into()).heap_size(), 3);
        assert_eq!(Value::Real(1.0).type_name(), "REAL");
    }

    /// A blob's bytes on the wire are what a `Vec<u8>` as a sequence gave
    /// (the encoding before blobs went through serde as bytes): the tag,
    /// the varint length, the bytes; across the varint's size boundaries.
    #[test]
    fn a_blob_encodes_as_a_sequence_of_bytes_did() {
        for len in [0usize, 1, 250, 251, 300, 65_535, 65_536, 70_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let new = crate::codec::encode_payload(&Value::Blob(bytes.clone())).expect("encode");
            let mut old = vec![4u8];
            old.extend(crate::codec::encode_payload(&bytes).expect("encode"));
            assert_eq!(new, old, "length {len}");
            let back: Value = crate::codec::decode_payload(&new).expect("decode");
            assert_eq!(back, Value::Blob(bytes));
        }
    }

    /// A blob that claims more bytes than the frame holds fails cleanly.
    #[test]
    fn a_blob_longer_than_its_frame_is_refused() {
        // Tag 4, then a varint length of 2^32 (0xfc then u32 LE would be
        // u32; 0xfd is u64), then three bytes.
        let mut frame = vec![4u8, 0xfd];
        frame.extend((1u64 << 32).to_le_bytes());
        frame.extend([1, 2, 3]);
        assert!(crate::codec::decode_payload::<Value>(&frame).is_err());
    }

    /// JSON has no bytes type: a blob round-trips as an array of numbers.
    #[test]
    fn a_blob_round_trips_through_json() {
        let v = Value::Blob(vec![0, 1, 255]);
        let text = serde_json::to_string(&v).expect("json");
        assert_eq!(text, r#"{"Blob":[0,1,255]}"#);
        assert_eq!(serde_json::from_str::<Value>(&text).expect("back"), v);
    }
}
