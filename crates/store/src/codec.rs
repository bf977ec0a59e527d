//! Checksummed encoding of every stored record.
//!
//! A record is `[crc32 of payload: u32 LE][payload]`, the payload being bincode (serde). A record
//! that fails its checksum or does not decode is a [`CorruptRecord`], never "absent": the caller
//! turns it into a storage error that stops the node.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A stored record that failed its checksum or could not be decoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("corrupt record in {what}: {reason}")]
pub struct CorruptRecord {
    pub what: String,
    pub reason: String,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a value with its checksum.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_sized(value, 0)
}

/// [`encode`] into a buffer sized for about `size_hint` bytes of payload, so a large record is
/// not copied again each time the buffer grows.
pub fn encode_sized<T: Serialize>(value: &T, size_hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + size_hint);
    out.extend_from_slice(&[0u8; 4]);
    // Encoding into a Vec cannot fail for our types (no maps with non-string keys, no unsized
    // sequences); a failure would be a programming error caught by every test.
    bincode::serde::encode_into_std_write(value, &mut out, config()).expect("bincode encoding into a Vec");
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a record's checksum and returns its payload.
pub fn verify<'a>(bytes: &'a [u8], what: &dyn Fn() -> String) -> Result<&'a [u8], CorruptRecord> {
    if bytes.len() < 4 {
        return Err(CorruptRecord {
            what: what(),
            reason: format!("{} bytes is too short for a record", bytes.len()),
        });
    }
    let (crc, payload) = bytes.split_at(4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let actual = crc32fast::hash(payload);
    if stored != actual {
        return Err(CorruptRecord {
            what: what(),
            reason: format!("checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"),
        });
    }
    Ok(payload)
}

/// Checks and decodes a record.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl Fn() -> String) -> Result<T, CorruptRecord> {
    let payload = verify(bytes, &what)?;
    let (value, used) = bincode::serde::decode_from_slice(payload, config()).map_err(|e| CorruptRecord {
        what: what(),
        reason: format!("cannot decode: {e}"),
    })?;
    if used != payload.len() {
        return Err(CorruptRecord {
            what: what(),
            reason: format!("{} trailing bytes after the record", payload.len() - used),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = (1u64, "topic".to_string(), vec![1u8, 2, 3]);
        let bytes = encode(&v);
        let back: (u64, String, Vec<u8>) = decode(&bytes, || "test".into()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn a_flipped_bit_is_caught() {
        let mut bytes = encode(&(7u64, "hello".to_string()));
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let err = decode::<(u64, String)>(&bytes, || "log entry 7".into()).unwrap_err();
        assert_eq!(err.what, "log entry 7");
        assert!(err.reason.contains("checksum mismatch"), "{err}");
        assert!(decode::<u64>(&[1, 2], || "x".into()).is_err());
    }

    #[test]
    fn a_valid_checksum_over_garbage_is_still_an_error() {
        let payload = [0xffu8; 3];
        let mut bytes = crc32fast::hash(&payload).to_le_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        assert!(decode::<String>(&bytes, || "x".into()).is_err());
    }
}
