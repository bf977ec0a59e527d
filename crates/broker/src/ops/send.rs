//! Send: a batch of messages to one queue of a topic, answered once its Raft entry is committed,
//! that is synced on a majority of the group.

use std::sync::atomic::Ordering;

use raftmq_common::validate;
use raftmq_store::reader::message_id;
use raftmq_store::types::{perm, Command, CommandResult, MessageIn};

use crate::error::BrokerError;
use crate::state::BrokerState;

/// Largest total of one message's tags, keys and properties, bytes.
pub const MAX_PROPERTIES_SIZE: usize = 64 << 10;

/// Which queue of the topic the batch goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// The producer chose it (raftmq's client spreads, or keeps a key's order itself).
    Given(u32),
    /// The broker chooses, in turn over the topic's write queues (RocketMQ 5 clients send to a
    /// broker, not to a queue).
    Next,
}

/// A batch as a face hands it over: messages already converted to what the store keeps.
pub struct Batch {
    pub topic: String,
    pub queue: Queue,
    pub messages: Vec<MessageIn>,
}

/// A committed batch: where its messages are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub queue_id: u32,
    pub first_offset: u64,
    /// The broker's message id of each message, in batch order.
    pub msg_ids: Vec<String>,
}

/// Stores a batch on a majority of the group. Refused before anything is proposed when: the topic
/// name is not valid, the batch is empty, this node is not the master, its disk is too full, a
/// message or the batch is over its size limit, the topic does not exist (and auto-create is
/// off), is not writable, or has no such queue.
pub async fn send(state: &BrokerState, batch: Batch) -> Result<Sent, BrokerError> {
    validate::name("topic", &batch.topic)?;
    if batch.messages.is_empty() {
        return Err(BrokerError::InvalidArgument(
            "field `messages`: the batch is empty".into(),
        ));
    }
    state.require_master()?;
    state.disk.check()?;
    // `bytes` (everything) sizes the Raft entry; the limits count as RocketMQ does: bodies
    // against max-message-size and max-batch-bytes, tags, keys and properties on their own.
    let (mut bytes, mut bodies) = (0usize, 0usize);
    for (i, message) in batch.messages.iter().enumerate() {
        let body = message.body.len();
        if body > state.config.max_message_size {
            return Err(BrokerError::MessageTooLarge(format!(
                "message {i}'s body is {body} bytes; the limit is {}",
                state.config.max_message_size
            )));
        }
        let size = message.size();
        if size - body > MAX_PROPERTIES_SIZE {
            return Err(BrokerError::MessageTooLarge(format!(
                "message {i}'s tags, keys and properties are {} bytes; the limit is {MAX_PROPERTIES_SIZE}",
                size - body
            )));
        }
        bytes += size;
        bodies += body;
    }
    if bodies > state.config.max_batch_bytes {
        return Err(BrokerError::MessageTooLarge(format!(
            "the batch's bodies are {bodies} bytes; the limit is {}",
            state.config.max_batch_bytes
        )));
    }
    let topic = super::topics::for_send(state, &batch.topic).await?;
    if topic.permission & perm::WRITE == 0 {
        return Err(BrokerError::NoPermission(format!(
            "topic {:?} is not writable in group {}",
            batch.topic, state.config.group
        )));
    }
    let queue_id = match batch.queue {
        Queue::Given(q) if q >= topic.write_queues => {
            return Err(BrokerError::QueueNotFound(format!(
                "topic {:?} has {} write queues; queue {q} does not exist",
                batch.topic, topic.write_queues
            )))
        }
        Queue::Given(q) => q,
        // A topic has 1 to MAX_QUEUES write queues (`raftmq_store::apply::check_topic`).
        Queue::Next => state.next_queue.fetch_add(1, Ordering::Relaxed) % topic.write_queues.max(1),
    };
    let command = Command::Send {
        topic: batch.topic,
        queue_id,
        messages: batch.messages,
    };
    let (log_index, result) = state.commit(command, bytes).await?;
    let CommandResult::Sent {
        first_offset,
        count,
        first_position,
    } = result
    else {
        return Err(BrokerError::Internal(format!("a send applied as {result:?}")));
    };
    Ok(Sent {
        queue_id,
        first_offset,
        msg_ids: (0..count)
            .map(|i| message_id(state.reader.id_prefix(), log_index, first_position + i))
            .collect(),
    })
}
