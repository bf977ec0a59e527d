//! POP consumption, RocketMQ 5's model: a receive hands out messages that stay invisible to the
//! group for a while; an ack ends a delivery, a change of invisibility extends it, and a message
//! delivered once and then `max-reconsume-times` times more (the group's setting, see
//! [`super::retry`]), or given up on by its consumer, moves to the group's dead-letter topic.
//!
//! Everything that changes state is a Raft command, committed before it is answered: a
//! delivery (its invisibility, its attempt count, its acknowledgement) survives a failover. A
//! receive proposes what the master read and hands out only what apply granted, so two
//! receives never get the same message.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftmq_common::time::now_ms;
use raftmq_store::pop::MAX_INFLIGHT_PER_QUEUE;
use raftmq_store::types::{perm, Command, CommandResult, Pop, PopLease};
use raftmq_store::StoredMessage;

use crate::error::storage;
use crate::state::BrokerState;
use raftmq_common::{Error, ErrorCode};
use raftmq_filter::Filter;

/// Properties a dead-lettered copy carries about its origin.
pub const PROP_DLQ_ORIGIN_TOPIC: &str = "DLQ_ORIGIN_TOPIC";
pub const PROP_DLQ_ORIGIN_MESSAGE_ID: &str = "DLQ_ORIGIN_MESSAGE_ID";
/// Most bytes one receive reads from one queue.
const RECEIVE_BYTES: u64 = 4 << 20;

use raftmq_store::groups::dead_letter_topic;

/// The (group, topic, queue) a receive on this node is proposing for: another receive skips
/// that queue rather than propose the same messages.
#[derive(Default)]
pub struct Busy(Mutex<HashSet<(String, String, u32)>>);

/// Marks a queue busy for one receive; unmarked on drop.
struct BusyGuard<'a> {
    set: &'a Busy,
    key: (String, String, u32),
}

impl Busy {
    fn try_mark(&self, key: (String, String, u32)) -> Option<BusyGuard<'_>> {
        let inserted = self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone());
        // Built only when inserted: a guard dropped here would unmark the other receive's queue
        // (and lock the set again while it is still held).
        inserted.then(|| BusyGuard { set: self, key })
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.set.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// One delivery of a message: the lease names it for an ack or a change of invisibility.
pub struct Delivery {
    pub message: StoredMessage,
    /// 1 on the first delivery.
    pub attempt: u32,
    pub lease: PopLease,
}

/// A receive: up to `max` messages of `topic` for `group`, from every readable queue of the
/// topic in this group starting at `queue` (or at one the broker picks), waiting up to `wait`.
pub struct Receive<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub queue: Option<u32>,
    pub filter: &'a Filter,
    pub max: usize,
    pub invisible: Duration,
    pub wait: Duration,
}

/// Receives: returns as soon as a round of the queues found something, or empty at the end of
/// the wait.
pub async fn receive(state: &BrokerState, r: Receive<'_>) -> Result<Vec<Delivery>, Error> {
    let config = state.reader.topic(r.topic).ok_or_else(|| {
        ErrorCode::TopicNotFound.err(format!(
            "topic {:?} does not exist in broker group {}",
            r.topic, state.config.group
        ))
    })?;
    if config.permission & perm::READ == 0 {
        return Err(ErrorCode::NoPermission.err(format!("topic {:?} is not readable", r.topic)));
    }
    if r.max == 0 {
        return Err(ErrorCode::InvalidArgument.err("field `batch_size`: must be positive"));
    }
    if let Some(q) = r.queue.filter(|q| *q >= config.read_queues) {
        return Err(ErrorCode::QueueNotFound.err(format!(
            "topic {:?} has {} read queues; queue {q} does not exist",
            r.topic, config.read_queues
        )));
    }
    // Every readable queue, from the one named (official clients pick a queue at random per
    // receive; a message must not wait for its queue to be picked).
    let start = r
        .queue
        .unwrap_or_else(|| state.next_queue.fetch_add(1, Ordering::Relaxed));
    let queues: Vec<u32> = (0..config.read_queues)
        .map(|i| (start + i) % config.read_queues)
        .collect();
    let deadline = Instant::now() + r.wait;
    let mut applied = state.reader.subscribe_applied();
    let mut stop = state.stop.clone();
    loop {
        applied.borrow_and_update();
        let mut out = Vec::new();
        let mut next_visible: Option<i64> = None;
        for &q in &queues {
            if out.len() >= r.max {
                break;
            }
            let popped = pop_queue(state, &r, q, r.max - out.len()).await?;
            out.extend(popped.deliveries);
            if let Some(t) = popped.next_visible_at_ms {
                next_visible = Some(next_visible.map_or(t, |n| n.min(t)));
            }
        }
        if !out.is_empty() || Instant::now() >= deadline {
            let bytes = out.iter().map(|d| d.message.body.len()).sum();
            state.metrics.pulled(r.topic, out.len(), bytes);
            return Ok(out);
        }
        // Wait for new messages, for an invisible one to come back, or for the deadline.
        let mut until = deadline;
        if let Some(t) = next_visible {
            let ms = (t - now_ms()).max(1) as u64;
            until = until.min(Instant::now() + Duration::from_millis(ms));
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() {
                return Err(ErrorCode::Unavailable.err("the store is closing"));
            },
            _ = tokio::time::sleep_until(until.into()) => {}
            _ = stop.wait() => return Err(ErrorCode::Unavailable.err("the broker is shutting down")),
        }
        if !state.is_master() {
            return Err(Error::not_master(None));
        }
    }
}

/// What one POP round in one queue produced.
#[derive(Default)]
struct Popped {
    deliveries: Vec<Delivery>,
    /// When the earliest delivery still invisible becomes visible again.
    next_visible_at_ms: Option<i64>,
}

/// One POP round in one queue: dead-letters what used up its attempts, redelivers what
/// expired, and hands out new messages; returns what apply granted, with messages, and when
/// the next delivery still invisible comes back.
async fn pop_queue(state: &BrokerState, r: &Receive<'_>, queue_id: u32, max: usize) -> Result<Popped, Error> {
    let (group, topic) = (r.group, r.topic);
    let Some(_busy) = state.pop_busy.try_mark((group.to_owned(), topic.to_owned(), queue_id)) else {
        tracing::debug!(group, topic, queue_id, "queue busy with another receive");
        return Ok(Popped::default());
    };
    // A FIFO group gets a queue's messages one batch at a time: nothing while a delivery of the
    // queue is out, then the expired ones again (in order) before anything new.
    let fifo = state.reader.is_fifo(group);
    let listed = if fifo { usize::MAX } else { max * 2 };
    let view = state.reader.pop_view(group, topic, queue_id, now_ms(), listed);
    // What was invisible stays so; what this round grants comes back after the receive
    // returns, so the view before it is the one a waiting receive needs.
    let next_visible_at_ms = view.next_visible_at_ms;
    if fifo && next_visible_at_ms.is_some() {
        return Ok(Popped {
            deliveries: vec![],
            next_visible_at_ms,
        });
    }
    let mut redeliver = Vec::new();
    let mut forget = Vec::new();
    let mut messages: BTreeMap<u64, StoredMessage> = BTreeMap::new();
    for (lease, attempt) in view.expired {
        let Some(m) = state.reader.get(topic, queue_id, lease.offset).map_err(storage)? else {
            // Retention removed the message: nothing left to deliver.
            forget.push(lease);
            continue;
        };
        if !r.filter.matches(&m.tags, &m.properties) {
            // The group's subscription changed since: this message is not for it any more.
            forget.push(lease);
            continue;
        }
        if attempt > super::retry::max_reconsume_times(state, group) {
            move_to_dead_letter(state, group, topic, queue_id, lease, m, "delivered too many times").await?;
            continue;
        }
        if redeliver.len() < max {
            redeliver.push(lease);
            messages.insert(lease.offset, m);
        }
    }
    let room = if fifo && view.inflight > 0 {
        0
    } else {
        max.saturating_sub(redeliver.len())
    };
    let (mut new, mut new_to) = (Vec::new(), view.cursor);
    if room > 0 && view.inflight < MAX_INFLIGHT_PER_QUEUE {
        let read = super::pull::read_matching(
            state,
            (topic, queue_id, view.cursor),
            room.min(MAX_INFLIGHT_PER_QUEUE - view.inflight),
            RECEIVE_BYTES,
            r.filter,
        )?;
        new_to = read.next_offset.max(view.cursor);
        for m in read.messages {
            new.push(m.queue_offset);
            messages.insert(m.queue_offset, m);
        }
    }
    tracing::debug!(
        group,
        topic,
        queue_id,
        cursor = view.cursor,
        new_to,
        ?new,
        ?redeliver,
        "pop"
    );
    if redeliver.is_empty() && forget.is_empty() && new.is_empty() && new_to == view.cursor {
        return Ok(Popped {
            deliveries: vec![],
            next_visible_at_ms,
        });
    }
    let command = Command::Pop(Pop {
        group: group.to_owned(),
        topic: topic.to_owned(),
        queue_id,
        redeliver,
        forget,
        new_from: view.cursor,
        new_to,
        new,
        invisible_ms: r.invisible.as_millis() as u64,
    });
    let (lease, result) = state.commit(command, 0).await?;
    let CommandResult::Popped(granted) = result else {
        return Err(ErrorCode::Internal.err(format!("a POP applied as {result:?}")));
    };
    let deliveries = granted
        .into_iter()
        .filter_map(|(offset, attempt)| {
            messages.remove(&offset).map(|message| Delivery {
                message,
                attempt,
                lease: PopLease { offset, lease },
            })
        })
        .collect();
    Ok(Popped {
        deliveries,
        next_visible_at_ms,
    })
}

fn stale() -> Error {
    ErrorCode::StaleHandle
        .err("the receipt handle is stale: the message was acknowledged, redelivered or changed since")
}

/// Acknowledges deliveries of one queue; per lease, whether it was current (a stale one is a
/// delivery acknowledged, redelivered or changed since).
pub async fn ack(
    state: &BrokerState,
    group: &str,
    topic: &str,
    queue_id: u32,
    leases: Vec<PopLease>,
) -> Result<Vec<Result<(), Error>>, Error> {
    let command = Command::PopAck {
        group: group.to_owned(),
        topic: topic.to_owned(),
        queue_id,
        entries: leases,
    };
    match state.commit(command, 0).await? {
        (_, CommandResult::Acked(acked)) => Ok(acked
            .into_iter()
            .map(|current| if current { Ok(()) } else { Err(stale()) })
            .collect()),
        (_, other) => Err(ErrorCode::Internal.err(format!("an ack applied as {other:?}"))),
    }
}

/// Makes a delivery invisible for `invisible` from now; returns its new lease.
pub async fn change_invisible(
    state: &BrokerState,
    group: &str,
    topic: &str,
    queue_id: u32,
    lease: PopLease,
    invisible: Duration,
) -> Result<PopLease, Error> {
    let command = Command::PopChangeInvisible {
        group: group.to_owned(),
        topic: topic.to_owned(),
        queue_id,
        lease,
        invisible_ms: invisible.as_millis() as u64,
    };
    let (index, _) = state.commit(command, 0).await?;
    Ok(PopLease {
        offset: lease.offset,
        lease: index,
    })
}

/// The consumer gives up on a delivery: the message moves to the group's dead-letter topic.
pub async fn give_up(
    state: &BrokerState,
    group: &str,
    topic: &str,
    queue_id: u32,
    lease: PopLease,
) -> Result<(), Error> {
    if state.reader.pop_delivery(group, topic, queue_id, &lease).is_none() {
        return Err(stale());
    }
    let m = state
        .reader
        .get(topic, queue_id, lease.offset)
        .map_err(storage)?
        .ok_or_else(|| ErrorCode::MessageNotFound.err("the message is no longer stored"))?;
    move_to_dead_letter(state, group, topic, queue_id, lease, m, "the consumer gave up on it").await
}

/// Moves one delivered message to the group's dead-letter topic.
async fn move_to_dead_letter(
    state: &BrokerState,
    group: &str,
    topic: &str,
    queue_id: u32,
    lease: PopLease,
    m: StoredMessage,
    why: &str,
) -> Result<(), Error> {
    let dlq_topic = dead_letter_topic(group);
    let bytes = m.body.len();
    let origin_id = m.msg_id.clone();
    let mut message = m.into_message_in();
    let properties = &mut message.properties;
    properties.retain(|(k, _)| k != PROP_DLQ_ORIGIN_TOPIC && k != PROP_DLQ_ORIGIN_MESSAGE_ID);
    properties.push((PROP_DLQ_ORIGIN_TOPIC.to_owned(), topic.to_owned()));
    properties.push((PROP_DLQ_ORIGIN_MESSAGE_ID.to_owned(), origin_id));
    properties.sort();
    let command = Command::PopDeadLetter {
        group: group.to_owned(),
        topic: topic.to_owned(),
        queue_id,
        lease,
        dlq_topic: dlq_topic.clone(),
        message,
    };
    state.commit(command, bytes).await?;
    tracing::info!(
        group,
        topic,
        queue_id,
        offset = lease.offset,
        dlq_topic,
        why,
        "message dead-lettered"
    );
    Ok(())
}
