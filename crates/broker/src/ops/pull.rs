//! Reads by offset, served by any node from applied (so committed) entries only: a pull that may
//! wait for new messages, one message by its offset, a queue's bounds, the offset of a time.

use std::time::{Duration, Instant};

use raftmq_filter::Filter;
use raftmq_store::{StoredMessage, Wanted};

use crate::error::storage;
use crate::state::BrokerState;
use raftmq_common::{Error, ErrorCode};

/// Longest a pull may wait for new messages.
pub const MAX_PULL_WAIT: Duration = Duration::from_secs(30);
/// Most messages one pull returns.
pub const MAX_PULL_MESSAGES: u32 = 1024;
/// Most bytes one pull returns when the caller does not say.
const DEFAULT_PULL_BYTES: u64 = 4 << 20;

/// The filter of a subscription: a tag expression, or a SQL92 condition when `sql` is set.
/// `ILLEGAL_FILTER_EXPRESSION` with line, column and reason when it does not parse.
pub fn filter(tag_expression: &str, sql: &str) -> Result<Filter, Error> {
    let bad = |kind: &str, e: raftmq_filter::FilterError| {
        ErrorCode::IllegalFilterExpression.err(format!("{kind} expression: {e}"))
    };
    if sql.is_empty() {
        return Filter::tags(tag_expression).map_err(|e| bad("tag", e));
    }
    if !Filter::tags(tag_expression).is_ok_and(|f| f.is_all()) {
        return Err(ErrorCode::InvalidArgument
            .err("a subscription has a tag expression or a SQL expression, not both (SQL can test TAGS)"));
    }
    Filter::sql(sql).map_err(|e| bad("SQL", e))
}

/// Reads from `offset` what `filter` wants: by tag from the index, then by properties for a SQL
/// filter.
pub fn read_matching(
    state: &BrokerState,
    (topic, queue_id, offset): (&str, u32, u64),
    max_messages: usize,
    max_bytes: u64,
    filter: &Filter,
) -> Result<raftmq_store::ReadResult, Error> {
    let tags = |tags: &str| filter.matches_tags(tags);
    let message = |tags: &str, properties: &[(String, String)]| filter.matches(tags, properties);
    let wanted = Wanted {
        tags: &tags,
        message: if filter.is_sql() { Some(&message) } else { None },
    };
    state
        .reader
        .read_wanted(topic, queue_id, offset, max_messages, max_bytes, &wanted)
        .map_err(storage)
}

/// One pull: from `offset` of a queue, messages the filter wants, waiting up to `wait` for one.
pub struct PullQuery {
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
    pub filter: Filter,
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
    let started = Instant::now();
    let topic = query.topic.clone();
    let pulled = wait_and_read(state, query).await?;
    let bytes = pulled.messages.iter().map(|m| m.body.len()).sum();
    state.metrics.pulled(&topic, pulled.messages.len(), bytes);
    state.metrics.pull_seconds.observe(started.elapsed().as_secs_f64());
    Ok(pulled)
}

/// [`pull`] without its metrics.
async fn wait_and_read(state: &BrokerState, query: PullQuery) -> Result<Pulled, Error> {
    super::topics::for_read(state, &query.topic, query.queue_id)?;
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
        let at = (query.topic.as_str(), query.queue_id, query.offset);
        let read = read_matching(state, at, max_messages, max_bytes, &query.filter)?;
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

/// Most messages one key query returns.
pub const MAX_KEY_QUERY: usize = 1000;

/// The messages of `topic` with `key`, newest first, stored in `[begin_ms, end_ms]` (0: open),
/// on any node (applied entries only); with `truncated` when more may match.
pub fn by_key(
    state: &BrokerState,
    topic: &str,
    key: &str,
    (begin_ms, end_ms): (i64, i64),
    max: u32,
) -> Result<raftmq_store::KeyQuery, Error> {
    if state.reader.topic(topic).is_none() {
        return Err(ErrorCode::TopicNotFound.err(format!(
            "topic {topic:?} does not exist in broker group {}",
            state.config.group
        )));
    }
    if key.is_empty() || key.contains(' ') {
        return Err(ErrorCode::InvalidArgument.err(format!("field `key`: {key:?} is not one key")));
    }
    if key.len() > raftmq_store::key_index::MAX_KEY_LEN {
        return Err(ErrorCode::InvalidArgument.err(format!(
            "field `key`: {} bytes; keys longer than {} bytes are not indexed",
            key.len(),
            raftmq_store::key_index::MAX_KEY_LEN
        )));
    }
    let end_ms = if end_ms == 0 { i64::MAX } else { end_ms };
    if begin_ms > end_ms {
        return Err(ErrorCode::InvalidArgument.err(format!(
            "the time range is empty: begin {begin_ms} is after end {end_ms}"
        )));
    }
    let max = if max == 0 {
        32
    } else {
        (max as usize).min(MAX_KEY_QUERY)
    };
    state
        .reader
        .query_key(topic, key, begin_ms, end_ms, max)
        .map_err(storage)
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
