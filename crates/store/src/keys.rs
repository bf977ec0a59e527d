//! Key layouts of the column families. Big-endian integers so that RocksDB's byte order is
//! numeric order; names cannot contain NUL (validated at the edge), so NUL separates them.

/// Raft log (the commit log): index.
pub fn log(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn log_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Prefix of every key of one topic in a per-topic column family.
pub fn topic_prefix(topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 1);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k
}

/// One queue of a topic.
pub fn queue(topic: &str, queue_id: u32) -> Vec<u8> {
    let mut k = topic_prefix(topic);
    k.extend_from_slice(&queue_id.to_be_bytes());
    k
}

/// Parses a [`queue`] key.
pub fn parse_queue(key: &[u8]) -> Option<(String, u32)> {
    let nul = key.iter().position(|b| *b == 0)?;
    let topic = std::str::from_utf8(&key[..nul]).ok()?.to_owned();
    let id = u32::from_be_bytes(key.get(nul + 1..nul + 5)?.try_into().ok()?);
    (key.len() == nul + 5).then_some((topic, id))
}

/// Consume-queue entry: topic, queue, offset.
pub fn cq(topic: &str, queue_id: u32, offset: u64) -> Vec<u8> {
    let mut k = queue(topic, queue_id);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// Turns a [`cq`] key into the key of another offset of the same queue, in place.
pub fn set_cq_offset(key: &mut [u8], offset: u64) {
    let at = key.len() - 8;
    key[at..].copy_from_slice(&offset.to_be_bytes());
}

/// Consume offset: group, topic, queue.
pub fn consume_offset(group: &str, topic: &str, queue_id: u32) -> Vec<u8> {
    let mut k = topic_prefix(group);
    k.extend_from_slice(&queue(topic, queue_id));
    k
}

/// Parses a [`consume_offset`] key into (group, topic, queue).
pub fn parse_consume_offset(key: &[u8]) -> Option<(String, String, u32)> {
    let nul = key.iter().position(|b| *b == 0)?;
    let group = std::str::from_utf8(&key[..nul]).ok()?.to_owned();
    let (topic, queue) = parse_queue(&key[nul + 1..])?;
    Some((group, topic, queue))
}

/// POP cursor of a consumer group in a queue (the same layout as a consume offset).
pub fn pop_cursor(group: &str, topic: &str, queue_id: u32) -> Vec<u8> {
    consume_offset(group, topic, queue_id)
}

/// One in-flight POP delivery: its cursor key, then the offset.
pub fn pop_inflight(group: &str, topic: &str, queue_id: u32, offset: u64) -> Vec<u8> {
    let mut k = consume_offset(group, topic, queue_id);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// Parses a [`pop_cursor`] (offset `None`) or [`pop_inflight`] key.
pub fn parse_pop(key: &[u8]) -> Option<(String, String, u32, Option<u64>)> {
    let first = key.iter().position(|b| *b == 0)?;
    let second = first + 1 + key[first + 1..].iter().position(|b| *b == 0)?;
    let cursor_len = second + 5;
    let (cursor, rest) = (key.get(..cursor_len)?, &key[cursor_len.min(key.len())..]);
    let (group, topic, queue) = parse_consume_offset(cursor)?;
    match rest.len() {
        0 => Some((group, topic, queue, None)),
        8 => Some((group, topic, queue, Some(u64::from_be_bytes(rest.try_into().ok()?)))),
        _ => None,
    }
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// Prefix of every key-index entry of one message key in a topic: topic, key.
pub fn message_key_prefix(topic: &str, key: &str) -> Vec<u8> {
    let mut k = topic_prefix(topic);
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k
}

/// Key-index entry: topic, message key, then the message's log index and position, so that one
/// key's entries go in log (and so store time) order.
pub fn message_key(topic: &str, key: &str, log_index: u64, position: u32) -> Vec<u8> {
    let mut k = message_key_prefix(topic, key);
    k.extend_from_slice(&log_index.to_be_bytes());
    k.extend_from_slice(&position.to_be_bytes());
    k
}

/// The (log index, position) of a [`message_key`] entry under `prefix`; `None` for an entry of
/// another key that merely starts like it (a key with a NUL in it).
pub fn parse_message_key(prefix: &[u8], key: &[u8]) -> Option<(u64, u32)> {
    let rest = key.strip_prefix(prefix)?;
    if rest.len() != 12 {
        return None;
    }
    Some((
        u64::from_be_bytes(rest[..8].try_into().ok()?),
        u32::from_be_bytes(rest[8..].try_into().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically_and_parse_back() {
        assert!(cq("T", 1, 255) < cq("T", 1, 256));
        assert!(cq("T", 1, u64::MAX) < cq("T", 2, 0));
        assert!(
            cq("T", 9, 0) < cq("TA", 0, 0),
            "a topic's keys never interleave with another's"
        );
        assert_eq!(parse_queue(&queue("TopicTest", 7)), Some(("TopicTest".into(), 7)));
        assert_eq!(
            parse_consume_offset(&consume_offset("g1", "T", 3)),
            Some(("g1".into(), "T".into(), 3))
        );
        assert_eq!(log_index(&log(42)), Some(42));
        let mut key = cq("T", 1, 5);
        set_cq_offset(&mut key, 300);
        assert_eq!(key, cq("T", 1, 300));
        assert_eq!(
            parse_pop(&pop_cursor("g", "T", 2)),
            Some(("g".into(), "T".into(), 2, None))
        );
        assert_eq!(
            parse_pop(&pop_inflight("g", "T", 2, 9)),
            Some(("g".into(), "T".into(), 2, Some(9)))
        );
        assert!(pop_inflight("g", "T", 2, 0) > pop_cursor("g", "T", 2));
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert!(prefix_end(&topic_prefix("T")) > cq("T", u32::MAX, u64::MAX));
        assert!(message_key("T", "k", 9, 1) < message_key("T", "k", 10, 0));
        let prefix = message_key_prefix("T", "k");
        assert_eq!(parse_message_key(&prefix, &message_key("T", "k", 7, 3)), Some((7, 3)));
        assert_eq!(parse_message_key(&prefix, &message_key("T", "k\0x", 7, 3)), None);
        assert!(prefix_end(&topic_prefix("T")) > message_key("T", "\u{10FFFF}", u64::MAX, u32::MAX));
    }
}
