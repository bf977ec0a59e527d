//! Reads by offset, served by any node from applied (so committed) entries only: a pull that may
//! wait for new messages, one message by its offset, a queue's bounds, the offset of a time.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use raftmq_store::StoredMessage;

use crate::error::storage;
use crate::state::BrokerState;
use raftmq_common::{Error, ErrorCode};

/// Longest a pull may wait for new messages.
pub const MAX_PULL_WAIT: Duration = Duration::from_secs(30);
/// Most messages one pull returns.
pub const MAX_PULL_MESSAGES: u32 = 1024;
/// Most bytes one pull returns when the caller does not say.
const DEFAULT_PULL_BYTES: u64 = 4 << 20;

/// A tag expression: `*` (or empty) or `a || b`.
pub struct TagFilter(Option<BTreeSet<String>>);

impl TagFilter {
    pub fn parse(expression: &str) -> Result<TagFilter, Error> {
        let e = expression.trim();
        if e.is_empty() || e == "*" {
            return Ok(TagFilter(None));
        }
        let tags: BTreeSet<String> = e.split("||").map(|t| t.trim().to_owned()).collect();
        if tags.iter().any(|t| t.is_empty()) {
            return Err(
                ErrorCode::InvalidArgument.err(format!("field `tag_expression`: {expression:?} has an empty tag"))
            );
        }
        Ok(TagFilter(Some(tags)))
    }

    pub fn matches(&self, tags: &str) -> bool {
        self.0.as_ref().is_none_or(|set| set.contains(tags))
    }
}

/// One pull: from `offset` of a queue, messages whose tags match, waiting up to `wait` for one.
pub struct PullQuery {
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
    pub tag_expression: String,
    /// Clamped to 1..=[`MAX_PULL_MESSAGES`].
    pub max_messages: u32,
    /// 0 means 4 MiB.
    pub max_bytes: u64,
    pub wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullStatus {
    Found,
    NoNewMessage,
    /// The offset is below the queue's first (retention removed it): start again from `min_offset`.
    OffsetMoved,
    /// The offset is past the queue's end.
    OffsetIllegal,
}

pub struct Pulled {
    pub status: PullStatus,
    /// Where the next pull starts (the queue's end when the offset was past it).
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
    pub messages: Vec<StoredMessage>,
}

/// Reads what matches from `offset` on; with nothing there, waits until an entry is applied, the
/// wait is over, or the node stops.
pub async fn pull(state: &BrokerState, query: PullQuery) -> Result<Pulled, Error> {
    super::topics::for_read(state, &query.topic, query.queue_id)?;
    let filter = TagFilter::parse(&query.tag_expression)?;
    let max_messages = query.max_messages.clamp(1, MAX_PULL_MESSAGES) as usize;
    let max_bytes = if query.max_bytes == 0 {
        DEFAULT_PULL_BYTES
    } else {
        query.max_bytes
    };
    let deadline = Instant::now() + query.wait.min(MAX_PULL_WAIT);
    let mut applied = state.reader.subscribe_applied();
    let mut stop = state.stop.clone();
    loop {
        applied.borrow_and_update();
        let read = state
            .reader
            .read(
                &query.topic,
                query.queue_id,
                query.offset,
                max_messages,
                max_bytes,
                &|tags| filter.matches(tags),
            )
            .map_err(storage)?;
        let status = if query.offset < read.min_offset {
            PullStatus::OffsetMoved
        } else if query.offset > read.max_offset {
            PullStatus::OffsetIllegal
        } else if !read.messages.is_empty() {
            PullStatus::Found
        } else {
            PullStatus::NoNewMessage
        };
        // Filtered-out messages moved the offset on: report that rather than wait on.
        let moved = read.next_offset > query.offset.max(read.min_offset);
        if status != PullStatus::NoNewMessage || moved || Instant::now() >= deadline {
            return Ok(Pulled {
                status,
                next_offset: if status == PullStatus::OffsetIllegal {
                    read.max_offset
                } else {
                    read.next_offset
                },
                min_offset: read.min_offset,
                max_offset: read.max_offset,
                messages: read.messages,
            });
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return Err(ErrorCode::Unavailable.err("the store is closing")) },
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = stop.wait() => return Err(ErrorCode::Unavailable.err("the broker is shutting down")),
        }
    }
}

/// The message at an offset of a queue.
pub fn message(state: &BrokerState, topic: &str, queue_id: u32, offset: u64) -> Result<StoredMessage, Error> {
    super::topics::for_read(state, topic, queue_id)?;
    state
        .reader
        .get(topic, queue_id, offset)
        .map_err(storage)?
        .ok_or_else(|| ErrorCode::MessageNotFound.err(format!("no message at {topic}/{queue_id} offset {offset}")))
}

/// The message with an id, on any node (applied entries only). `MESSAGE_NOT_FOUND` for an id of
/// another broker group, or one that names nothing in a queue here (not applied yet, removed by
/// retention, a delayed message before its time).
pub fn message_by_id(state: &BrokerState, msg_id: &str) -> Result<StoredMessage, Error> {
    let (prefix, _, _) = raftmq_store::reader::parse_message_id(msg_id).ok_or_else(|| {
        ErrorCode::InvalidArgument.err(format!(
            "field `msg_id`: {msg_id:?} is not a message id (32 hex digits)"
        ))
    })?;
    if prefix != state.reader.id_prefix() {
        return Err(ErrorCode::MessageNotFound.err(format!(
            "message {msg_id} is not of broker group {}",
            state.config.group
        )));
    }
    state
        .reader
        .get_by_id(msg_id)
        .map_err(storage)?
        .ok_or_else(|| ErrorCode::MessageNotFound.err(format!("no message {msg_id} is stored in a queue here")))
}

/// A queue's first offset and the offset its next message will get.
pub fn bounds(state: &BrokerState, topic: &str, queue_id: u32) -> Result<(u64, u64), Error> {
    super::topics::for_read(state, topic, queue_id)?;
    let q = state.reader.queue_state(topic, queue_id);
    Ok((q.min_offset, q.next_offset))
}

/// The first offset of a queue stored at or after a time.
pub fn search(state: &BrokerState, topic: &str, queue_id: u32, timestamp_ms: i64) -> Result<u64, Error> {
    super::topics::for_read(state, topic, queue_id)?;
    state
        .reader
        .search_offset(topic, queue_id, timestamp_ms)
        .map_err(storage)
}
