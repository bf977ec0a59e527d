//! How Raft messages are encoded between the nodes of a group: bincode, with a size limit, for
//! the gRPC envelopes and the AppendEntries link alike. A leaf: it knows no connection.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest Raft message accepted, encoded.
pub const MAX_RAFT_MESSAGE: usize = 256 << 20;

fn bincode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_RAFT_MESSAGE>,
> {
    bincode::config::standard().with_limit::<MAX_RAFT_MESSAGE>()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode_config())
}

/// [`encode`] into a buffer sized for about `size` bytes, behind four bytes left for a frame's
/// length (see `append_link`).
pub fn encode_framed<T: Serialize>(value: &T, size: usize) -> Result<Vec<u8>, bincode::error::EncodeError> {
    let mut out = Vec::with_capacity(size + 4);
    out.extend_from_slice(&[0u8; 4]);
    bincode::serde::encode_into_std_write(value, &mut out, bincode_config())?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode_config()).map(|(v, _)| v)
}
