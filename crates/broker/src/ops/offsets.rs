//! Consumer offsets, kept in the replicated state so they survive a failover: commit (only
//! forward), read, and reset (to a time, an offset, the earliest or the latest, either way).

use raftmq_common::validate;
use raftmq_store::types::{Command, OffsetUpdate};

use raftmq_common::{Error, ErrorCode};

use crate::error::storage;
use crate::state::BrokerState;

/// Where a reset moves a consumer group's offsets, in every queue of the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The first message stored at or after this time.
    Timestamp(i64),
    /// This offset, held within each queue's bounds.
    Offset(u64),
    Earliest,
    Latest,
}

/// Commits a group's offsets on the master; an offset lower than the one committed is ignored.
pub async fn commit(state: &BrokerState, group: String, offsets: Vec<OffsetUpdate>) -> Result<(), Error> {
    validate::name("consumer_group", &group)?;
    for o in &offsets {
        validate::name("offsets.topic", &o.topic)?;
    }
    if offsets.is_empty() {
        return Ok(());
    }
    state.require_master()?;
    let command = Command::CommitOffsets {
        group,
        offsets,
        increase_only: true,
    };
    state.commit(command, 0).await?;
    Ok(())
}

/// A group's committed offsets, of one topic or all: (topic, queue, offset).
pub fn committed(state: &BrokerState, group: &str, topic: Option<&str>) -> Result<Vec<(String, u32, u64)>, Error> {
    validate::name("consumer_group", group)?;
    Ok(state.reader.consume_offsets(group, topic))
}

/// Every consumer group's committed offsets in a topic: (group, queue, offset).
pub fn topic_consumers(state: &BrokerState, topic: &str) -> Result<Vec<(String, u32, u64)>, Error> {
    super::topics::for_read(state, topic, 0)?;
    Ok(state.reader.topic_consumers(topic))
}

/// Sets a group's offsets in every queue of a topic, on the master; returns them.
pub async fn reset(state: &BrokerState, group: String, topic: &str, to: ResetTo) -> Result<Vec<OffsetUpdate>, Error> {
    validate::name("consumer_group", &group)?;
    let topic = super::topics::for_read(state, topic, 0)?;
    state.require_master()?;
    let mut offsets = Vec::new();
    for queue_id in 0..topic.queues() {
        let bounds = state.reader.queue_state(&topic.name, queue_id);
        let offset = match to {
            ResetTo::Timestamp(ts) => state.reader.search_offset(&topic.name, queue_id, ts).map_err(storage)?,
            ResetTo::Offset(o) => o.clamp(bounds.min_offset, bounds.next_offset),
            ResetTo::Earliest => bounds.min_offset,
            ResetTo::Latest => bounds.next_offset,
        };
        offsets.push(OffsetUpdate {
            topic: topic.name.clone(),
            queue_id,
            offset,
        });
    }
    state
        .commit(
            Command::CommitOffsets {
                group,
                offsets: offsets.clone(),
                increase_only: false,
            },
            0,
        )
        .await?;
    Ok(offsets)
}

/// Locks queues of `topic` for one member of a consumer group (an orderly consumer) for
/// `lease_ms`; returns the queues granted. On the master.
pub async fn lock_queues(
    state: &BrokerState,
    (group, topic, client_id): (&str, &str, &str),
    queues: Vec<u32>,
    lease_ms: u64,
) -> Result<Vec<u32>, Error> {
    raftmq_common::validate::name("consumer group", group)?;
    raftmq_common::validate::name("topic", topic)?;
    if queues.len() > 1024 {
        return Err(ErrorCode::InvalidArgument.err("field `queue_ids`: at most 1024"));
    }
    state.require_master()?;
    let command = Command::LockQueues {
        group: group.to_owned(),
        topic: topic.to_owned(),
        client_id: client_id.to_owned(),
        queues,
        lease_ms,
    };
    match state.commit(command, 128).await? {
        (_, raftmq_store::types::CommandResult::Locked(granted)) => Ok(granted),
        (_, other) => Err(ErrorCode::Internal.err(format!("a lock applied as {other:?}"))),
    }
}

/// Releases a member's locks. On the master.
pub async fn unlock_queues(
    state: &BrokerState,
    (group, topic, client_id): (&str, &str, &str),
    queues: Vec<u32>,
) -> Result<(), Error> {
    raftmq_common::validate::name("consumer group", group)?;
    state.require_master()?;
    let command = Command::UnlockQueues {
        group: group.to_owned(),
        topic: topic.to_owned(),
        client_id: client_id.to_owned(),
        queues,
    };
    state.commit(command, 128).await?;
    Ok(())
}
