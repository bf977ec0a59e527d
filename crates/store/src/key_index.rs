//! The message key index (RocketMQ's index file): for each message stored in a queue, an entry
//! per key under (topic, key, log index, position), so that the messages of a key are found
//! newest first without a scan of the queues.
//!
//! It is derived state, written by apply in the same batch as the consume-queue entry (so every
//! replica has it for what it applied, and a snapshot carries it), deleted with its topic, and
//! deleted by retention in the same write that removes the messages' log entries: it never
//! outlives the message it points at, and its size follows the retained log.
//!
//! Bounds: a message's `keys` are split on spaces (RocketMQ's separator); at most
//! [`MAX_KEYS_PER_MESSAGE`] distinct keys of at most [`MAX_KEY_LEN`] bytes each are indexed,
//! longer keys are stored with the message but not indexed. An entry is the key, the topic and
//! 14 bytes, with a 20-byte value.

use rocksdb::WriteBatch;

use crate::db::{Db, CF_KEYS};
use crate::keys;

/// Most keys of one message that are indexed.
pub const MAX_KEYS_PER_MESSAGE: usize = 16;
/// Longest key that is indexed, in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// The keys of a message that the index holds, in order, without repeats.
pub fn indexed_keys(keys: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for key in keys.split(' ').filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN) {
        if out.len() >= MAX_KEYS_PER_MESSAGE {
            break;
        }
        if !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

/// Where an indexed message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub log_index: u64,
    pub position: u32,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub store_timestamp_ms: i64,
}

impl Hit {
    fn value(&self) -> [u8; 20] {
        let mut v = [0u8; 20];
        v[..4].copy_from_slice(&self.queue_id.to_be_bytes());
        v[4..12].copy_from_slice(&self.queue_offset.to_be_bytes());
        v[12..].copy_from_slice(&self.store_timestamp_ms.to_be_bytes());
        v
    }

    /// The hit an entry names; `None` for a value that is not 20 bytes.
    pub(crate) fn decode(log_index: u64, position: u32, value: &[u8]) -> Option<Hit> {
        if value.len() != 20 {
            return None;
        }
        Some(Hit {
            log_index,
            position,
            queue_id: u32::from_be_bytes(value[..4].try_into().ok()?),
            queue_offset: u64::from_be_bytes(value[4..12].try_into().ok()?),
            store_timestamp_ms: i64::from_be_bytes(value[12..].try_into().ok()?),
        })
    }
}

/// Indexes a message appended to a queue.
pub(crate) fn put(db: &Db, batch: &mut WriteBatch, topic: &str, message_keys: &str, hit: &Hit) {
    let cf = db.cf(CF_KEYS);
    for key in indexed_keys(message_keys) {
        batch.put_cf(
            cf,
            keys::message_key(topic, key, hit.log_index, hit.position),
            hit.value(),
        );
    }
}

/// Removes the entries of a message (retention): as many deletes as it has indexed keys.
pub(crate) fn delete(
    db: &Db,
    batch: &mut WriteBatch,
    topic: &str,
    message_keys: &str,
    log_index: u64,
    position: u32,
) -> usize {
    let cf = db.cf(CF_KEYS);
    let keys = indexed_keys(message_keys);
    for key in &keys {
        batch.delete_cf(cf, keys::message_key(topic, key, log_index, position));
    }
    keys.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_on_spaces_distinct_and_bounded() {
        assert_eq!(indexed_keys("a b  a c"), ["a", "b", "c"]);
        assert!(indexed_keys("").is_empty());
        let long = "x".repeat(MAX_KEY_LEN + 1);
        assert_eq!(indexed_keys(&format!("{long} ok")), ["ok"]);
        let many: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        assert_eq!(indexed_keys(&many.join(" ")).len(), MAX_KEYS_PER_MESSAGE);
    }
}
