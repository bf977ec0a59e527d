//! Queues: appending messages to one, the one place a queue offset is assigned. A leaf of
//! applying (`apply` for sends, `pop` for dead-lettered copies).

use rocksdb::WriteBatch;

use crate::codec;
use crate::db::{Db, CF_CQ};
use crate::key_index;
use crate::keys;
use crate::state::{CqEntry, SmState};
use crate::types::{perm, CommandResult, MessageIn, Rejection};

/// Most queues a topic may have in one group.
pub const MAX_QUEUES: u32 = 1024;

/// Where appended messages are in the log: their entry, its store time, the first message's
/// position in the entry.
pub struct At {
    pub log_index: u64,
    pub store_timestamp_ms: i64,
    pub first_position: u32,
}

/// Appends messages to a queue that exists and takes writes: the consume-queue entries and the
/// queue's new bound, and the key index.
pub(crate) fn append(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    at: &At,
    (topic, queue_id): (&str, u32),
    messages: &[MessageIn],
) -> CommandResult {
    let queue = state.queues.entry((topic.to_owned(), queue_id)).or_default();
    let first_offset = queue.next_offset;
    let cq = db.cf(CF_CQ);
    for (i, message) in messages.iter().enumerate() {
        let entry = CqEntry {
            log_index: at.log_index,
            position: at.first_position + i as u32,
            store_timestamp_ms: at.store_timestamp_ms,
            body_len: message.body.len() as u32,
            tags: message.tags.clone(),
        };
        batch.put_cf(cq, keys::cq(topic, queue_id, queue.next_offset), codec::encode(&entry));
        if !message.keys.is_empty() {
            let hit = key_index::Hit {
                log_index: at.log_index,
                position: entry.position,
                queue_id,
                queue_offset: queue.next_offset,
                store_timestamp_ms: at.store_timestamp_ms,
            };
            key_index::put(db, batch, topic, &message.keys, &hit);
        }
        queue.next_offset += 1;
    }
    state.unwritten_queues.insert((topic.to_owned(), queue_id));
    CommandResult::Sent {
        first_offset,
        count: messages.len() as u32,
        first_position: at.first_position,
    }
}

/// Why a queue cannot take a message now: the topic is missing or read-only, or has no such
/// write queue. Every write to a queue (a send, a scheduled or delivered message) checks it.
pub(crate) fn check_writable(state: &SmState, topic: &str, queue_id: u32) -> Option<CommandResult> {
    let Some(config) = state.topics.get(topic) else {
        return Some(CommandResult::Rejected(
            Rejection::TopicNotFound,
            format!("topic {topic:?} does not exist"),
        ));
    };
    if config.permission & perm::WRITE == 0 {
        return Some(CommandResult::Rejected(
            Rejection::NoPermission,
            format!("topic {topic:?} is not writable"),
        ));
    }
    if queue_id >= config.write_queues {
        return Some(CommandResult::Rejected(
            Rejection::QueueNotFound,
            format!(
                "topic {topic:?} has {} write queues; queue {queue_id} does not exist",
                config.write_queues
            ),
        ));
    }
    None
}
