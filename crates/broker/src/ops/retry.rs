//! Retry and dead letters for consumer groups, RocketMQ's way: a message a group consumer failed
//! is sent back to the broker, which stores it on the group's retry topic `%RETRY%<group>`, due
//! after the group's backoff for its reconsume count; past the group's `max-reconsume-times` it
//! goes to `%DLQ%<group>` instead. The queue it came from moves on.
//!
//! The retry waits as a timer (the machinery of delayed messages), so it is replicated state: a
//! failover between a failed consume and its retry neither loses nor repeats it. A retried
//! message keeps its first id (`ORIGIN_MESSAGE_ID`) and its first topic (`RETRY_TOPIC`), so a
//! consumer sees the message it failed, its reconsume count one higher.

use raftmq_common::time::now_ms;
use raftmq_common::{Error, ErrorCode};
use raftmq_store::groups::{self, GroupConfig};
use raftmq_store::types::Command;

use super::delay;
use super::pop::{PROP_DLQ_ORIGIN_MESSAGE_ID, PROP_DLQ_ORIGIN_TOPIC};
use crate::error::storage;
use crate::state::BrokerState;

/// The topic a retried message was first sent to (RocketMQ's property).
pub const PROP_RETRY_TOPIC: &str = "RETRY_TOPIC";
/// How many times the message was consumed again (RocketMQ's property).
pub const PROP_RECONSUME_TIME: &str = "RECONSUME_TIME";
/// The id the message had when first stored (RocketMQ's property).
pub const PROP_ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";

/// What became of a message sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentBack {
    /// Stored on the group's retry topic, delivered again at `deliver_at_ms` as reconsume
    /// `reconsume_times`.
    Retry { reconsume_times: u32, deliver_at_ms: i64 },
    /// It used up its retries: stored on the group's dead-letter topic.
    DeadLettered { dlq_topic: String },
}

/// Retries of a failed message the group allows before dead-lettering it.
pub fn max_reconsume_times(state: &BrokerState, group: &str) -> u32 {
    effective_max(state, &state.reader.group(group))
}

/// The retries a group's settings allow: its own, or the broker's default.
pub fn effective_max(state: &BrokerState, config: &GroupConfig) -> u32 {
    config
        .max_reconsume_times
        .unwrap_or(state.config.max_delivery_attempts.saturating_sub(1))
}

/// A message of `group` at (`topic`, `queue_id`, `offset`) failed its consumer: stores it for a
/// retry, or as a dead letter. `topic` is where the consumer read it (the original topic or
/// the group's retry topic).
pub async fn send_back(
    state: &BrokerState,
    group: &str,
    (topic, queue_id, offset): (&str, u32, u64),
) -> Result<SentBack, Error> {
    raftmq_common::validate::name("consumer group", group)?;
    state.require_master()?;
    let m = state
        .reader
        .get(topic, queue_id, offset)
        .map_err(storage)?
        .ok_or_else(|| {
            ErrorCode::MessageNotFound.err(format!("{topic}/{queue_id} has no message at offset {offset}"))
        })?;
    let prop = |name: &str| m.properties.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let retry_topic = groups::retry_topic(group);
    let origin_topic = match prop(PROP_RETRY_TOPIC) {
        Some(origin) if topic == retry_topic => origin,
        _ if topic.starts_with('%') && topic != retry_topic => {
            return Err(
                ErrorCode::InvalidArgument.err(format!("a message of {topic} cannot be sent back for group {group}"))
            )
        }
        _ => topic.to_owned(),
    };
    let origin_id = prop(PROP_ORIGIN_MESSAGE_ID).unwrap_or_else(|| m.msg_id.clone());
    let reconsume = prop(PROP_RECONSUME_TIME)
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0)
        .saturating_add(1);
    let mut message = m.into_message_in();
    let properties = &mut message.properties;
    properties.retain(|(k, _)| {
        ![
            PROP_RETRY_TOPIC,
            PROP_RECONSUME_TIME,
            PROP_ORIGIN_MESSAGE_ID,
            PROP_DLQ_ORIGIN_TOPIC,
            PROP_DLQ_ORIGIN_MESSAGE_ID,
        ]
        .contains(&k.as_str())
    });
    let config = state.reader.group(group);
    let dead = reconsume > effective_max(state, &config);
    if dead {
        properties.push((PROP_DLQ_ORIGIN_TOPIC.to_owned(), origin_topic));
        properties.push((PROP_DLQ_ORIGIN_MESSAGE_ID.to_owned(), origin_id.clone()));
        properties.push((PROP_RECONSUME_TIME.to_owned(), (reconsume - 1).to_string()));
    } else {
        properties.push((PROP_RETRY_TOPIC.to_owned(), origin_topic));
        properties.push((PROP_RECONSUME_TIME.to_owned(), reconsume.to_string()));
    }
    properties.push((PROP_ORIGIN_MESSAGE_ID.to_owned(), origin_id));
    let bytes = message.size();
    let (topic, due_ms) = if dead {
        // A dead letter is not delayed any more.
        message.properties.retain(|(k, _)| k != delay::PROP_DELIVER_MS);
        (groups::dead_letter_topic(group), None)
    } else {
        let due = now_ms().saturating_add(config.backoff().delay_ms(reconsume).min(i64::MAX as u64) as i64);
        message = delay::scheduled(message, due);
        (retry_topic, Some(due))
    };
    let command = Command::SendBack {
        group: group.to_owned(),
        topic: topic.clone(),
        due_ms,
        message,
    };
    state.commit(command, bytes).await?;
    Ok(match due_ms {
        Some(deliver_at_ms) => SentBack::Retry {
            reconsume_times: reconsume,
            deliver_at_ms,
        },
        None => {
            tracing::info!(group, dlq_topic = %topic, reconsume, "message dead-lettered after its retries");
            SentBack::DeadLettered { dlq_topic: topic }
        }
    })
}

/// A group's settings (the defaults for a group that has none).
pub fn group(state: &BrokerState, name: &str) -> Result<GroupConfig, Error> {
    raftmq_common::validate::name("consumer group", name)?;
    Ok(state.reader.group(name))
}

/// Stores a group's settings, on the master.
pub async fn update_group(state: &BrokerState, config: GroupConfig) -> Result<(), Error> {
    groups::check(&config).map_err(|e| ErrorCode::InvalidArgument.err(e))?;
    state.require_master()?;
    state.commit(Command::UpdateGroup(config), 256).await?;
    Ok(())
}

/// Marks a consumer group FIFO (or not), on the master.
pub async fn set_fifo(state: &BrokerState, group: &str, fifo: bool) -> Result<(), Error> {
    raftmq_common::validate::name("consumer group", group)?;
    if group.starts_with('%') {
        return Err(ErrorCode::InvalidArgument.err(format!("{group:?} is a system name (starts with %)")));
    }
    state.require_master()?;
    state
        .commit(
            Command::SetGroupFifo {
                group: group.to_owned(),
                fifo,
            },
            64,
        )
        .await?;
    Ok(())
}
