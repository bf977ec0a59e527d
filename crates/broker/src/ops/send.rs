//! Send: a batch of messages to one queue of a topic, answered once its Raft entry is committed,
//! that is synced on a majority of the group.

use std::sync::atomic::Ordering;

use raftmq_common::time::now_ms;
use raftmq_common::validate;
use raftmq_common::{Error, ErrorCode};
use raftmq_store::reader::message_id;
use raftmq_store::timers::Timer;
use raftmq_store::types::{perm, Command, CommandResult, MessageIn};

use super::delay;
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
    /// The first message's queue offset; 0 for delayed messages, which have none yet.
    pub first_offset: u64,
    /// The broker's message id of each message, in batch order.
    pub msg_ids: Vec<String>,
    /// For a batch of delayed messages: each one's recall handle and due time, in batch order.
    pub scheduled: Vec<(String, i64)>,
}

/// Stores a batch on a majority of the group. Refused before anything is proposed when: the topic
/// name is not valid, the batch is empty, this node is not the master, its disk is too full, a
/// message or the batch is over its size limit, the topic does not exist (and auto-create is
/// off), is not writable, or has no such queue, or a delivery time is malformed or too far
/// ahead. A batch is all immediate or all delayed; delayed messages are scheduled one by one
/// ([`super::delay`]).
pub async fn send(state: &BrokerState, batch: Batch) -> Result<Sent, Error> {
    let started = std::time::Instant::now();
    let topic = batch.topic.clone();
    let (count, bytes) = (
        batch.messages.len(),
        batch.messages.iter().map(|m| m.body.len()).sum::<usize>(),
    );
    let sent = store(state, batch).await?;
    state.metrics.sent(&topic, count, bytes, started);
    Ok(sent)
}

/// [`send`] without its metrics.
async fn store(state: &BrokerState, batch: Batch) -> Result<Sent, Error> {
    let (queue_id, bytes) = admit(state, &batch).await?;
    let now = now_ms();
    let dues = batch
        .messages
        .iter()
        .map(|m| delay::due_ms(m, now))
        .collect::<Result<Vec<_>, _>>()?;
    match dues.iter().filter(|d| d.is_some()).count() {
        0 => {}
        n if n == dues.len() => return schedule(state, batch.topic, queue_id, batch.messages, dues).await,
        _ => {
            return Err(ErrorCode::InvalidArgument
                .err("a batch is all immediate or all delayed messages; send the delayed ones on their own"))
        }
    }
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
        return Err(ErrorCode::Internal.err(format!("a send applied as {result:?}")));
    };
    Ok(Sent {
        queue_id,
        first_offset,
        msg_ids: (0..count)
            .map(|i| message_id(state.reader.id_prefix(), log_index, first_position + i))
            .collect(),
        scheduled: Vec::new(),
    })
}

/// The rules every stored message passes before it is proposed (see [`send`]): returns the
/// queue the batch goes to and the bytes its entry takes.
pub(crate) async fn admit(state: &BrokerState, batch: &Batch) -> Result<(u32, usize), Error> {
    validate::name("topic", &batch.topic)?;
    if batch.messages.is_empty() {
        return Err(ErrorCode::InvalidArgument.err("field `messages`: the batch is empty"));
    }
    state.require_master()?;
    state.disk.check()?;
    // `bytes` (everything) sizes the Raft entry; the limits count as RocketMQ does: bodies
    // against max-message-size and max-batch-bytes, tags, keys and properties on their own.
    let (mut bytes, mut bodies) = (0usize, 0usize);
    for (i, message) in batch.messages.iter().enumerate() {
        let body = message.body.len();
        if body > state.config.max_message_size {
            return Err(ErrorCode::MessageTooLarge.err(format!(
                "message {i}'s body is {body} bytes; the limit is {}",
                state.config.max_message_size
            )));
        }
        let size = message.size();
        if size - body > MAX_PROPERTIES_SIZE {
            return Err(ErrorCode::MessageTooLarge.err(format!(
                "message {i}'s tags, keys and properties are {} bytes; the limit is {MAX_PROPERTIES_SIZE}",
                size - body
            )));
        }
        bytes += size;
        bodies += body;
    }
    if bodies > state.config.max_batch_bytes {
        return Err(ErrorCode::MessageTooLarge.err(format!(
            "the batch's bodies are {bodies} bytes; the limit is {}",
            state.config.max_batch_bytes
        )));
    }
    let topic = super::topics::for_send(state, &batch.topic).await?;
    if topic.permission & perm::WRITE == 0 {
        return Err(ErrorCode::NoPermission.err(format!(
            "topic {:?} is not writable in group {}",
            batch.topic, state.config.group
        )));
    }
    let queue_id = match batch.queue {
        Queue::Given(q) if q >= topic.write_queues => {
            return Err(ErrorCode::QueueNotFound.err(format!(
                "topic {:?} has {} write queues; queue {q} does not exist",
                batch.topic, topic.write_queues
            )))
        }
        Queue::Given(q) => q,
        // A topic has 1 to MAX_QUEUES write queues (`raftmq_store::apply::check_topic`).
        Queue::Next => state.next_queue.fetch_add(1, Ordering::Relaxed) % topic.write_queues.max(1),
    };
    Ok((queue_id, bytes))
}

/// Stores each delayed message with its timer, all proposed at once.
async fn schedule(
    state: &BrokerState,
    topic: String,
    queue_id: u32,
    messages: Vec<MessageIn>,
    dues: Vec<Option<i64>>,
) -> Result<Sent, Error> {
    let commits = messages.into_iter().zip(dues).map(|(message, due)| {
        let due_ms = due.expect("every message of the batch is delayed");
        let message = delay::scheduled(message, due_ms);
        let bytes = message.size();
        let command = Command::Schedule {
            topic: topic.clone(),
            queue_id,
            due_ms,
            message,
        };
        async move { (due_ms, state.commit(command, bytes).await) }
    });
    let mut sent = Sent {
        queue_id,
        first_offset: 0,
        msg_ids: Vec::new(),
        scheduled: Vec::new(),
    };
    for (due_ms, committed) in futures::future::join_all(commits).await {
        let (log_index, result) = committed?;
        let CommandResult::Scheduled { position } = result else {
            return Err(ErrorCode::Internal.err(format!("a delayed send applied as {result:?}")));
        };
        let timer = Timer {
            due_ms,
            log_index,
            position,
        };
        sent.msg_ids
            .push(message_id(state.reader.id_prefix(), log_index, position));
        sent.scheduled
            .push((delay::recall_handle(&state.config.group, &timer), due_ms));
    }
    Ok(sent)
}
