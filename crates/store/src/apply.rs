//! Applying committed entries: the one place where queue offsets are assigned.
//!
//! Determinism is the whole contract: the result depends only on the entry and the state before
//! it, so every replica stores the same message at the same (topic, queue, offset), and refuses
//! the same commands with the same reason.

use rocksdb::WriteBatch;

use crate::codec;
use crate::db::{Db, CF_CQ, CF_KEYS, CF_OFFSETS, CF_QUEUES, CF_TOPICS};
use crate::keys;
use crate::pop;
use crate::state::{QueueState, SmState};
use crate::timers;
use crate::types::{perm, Command, CommandResult, OffsetUpdate, Rejection, Request, TopicConfig};

pub use crate::queues::MAX_QUEUES;
use crate::queues::{append, check_writable, At};

/// Applies one request to `state`, adding its writes to `batch`.
pub fn apply_request(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    log_index: u64,
    req: &Request,
) -> Vec<CommandResult> {
    let mut position: u32 = 0;
    // Where the command being applied is: this entry, its store time, the position of its
    // first message in the entry.
    let at = |first_position| At {
        log_index,
        store_timestamp_ms: req.store_timestamp_ms,
        first_position,
    };
    req.commands
        .iter()
        .map(|command| match command {
            Command::Send {
                topic,
                queue_id,
                messages,
            } => {
                let result = check_writable(state, topic, *queue_id)
                    .unwrap_or_else(|| append(db, state, batch, &at(position), (topic, *queue_id), messages));
                // Positions count every message of the entry, stored or refused, so they are
                // fixed by the entry alone.
                position += messages.len() as u32;
                result
            }
            Command::UpsertTopic(topic) => upsert_topic(db, state, batch, topic),
            Command::DeleteTopic { name } => delete_topic(db, state, batch, name),
            Command::CommitOffsets {
                group,
                offsets,
                increase_only,
            } => commit_offsets(db, state, batch, group, offsets, *increase_only),
            Command::Pop(p) => pop::pop(db, state, batch, log_index, req.store_timestamp_ms, p),
            Command::PopAck {
                group,
                topic,
                queue_id,
                entries,
            } => pop::ack(db, state, batch, group, topic, *queue_id, entries),
            Command::PopChangeInvisible {
                group,
                topic,
                queue_id,
                lease,
                invisible_ms,
            } => pop::change_invisible(
                db,
                state,
                batch,
                &at(position),
                (group, topic, *queue_id),
                lease,
                *invisible_ms,
            ),
            Command::PopDeadLetter {
                group,
                topic,
                queue_id,
                lease,
                dlq_topic,
                message,
            } => {
                let result = pop::dead_letter(
                    db,
                    state,
                    batch,
                    &at(position),
                    (group, topic, *queue_id),
                    lease,
                    (dlq_topic, message),
                );
                position += 1;
                result
            }
            Command::Schedule {
                topic,
                queue_id,
                due_ms,
                message,
            } => {
                let result = timers::schedule(db, state, batch, &at(position), (topic, *queue_id), *due_ms, message);
                position += 1;
                result
            }
            Command::Deliver {
                timer,
                topic,
                queue_id,
                message,
            } => {
                let result = timers::deliver(db, state, batch, &at(position), timer, (topic, *queue_id), message);
                position += 1;
                result
            }
            Command::Recall { timer } => timers::recall(db, state, batch, &at(position), timer),
            Command::UpdateGroup(config) => crate::groups::update(db, state, batch, config),
            Command::Prepare {
                topic,
                queue_id,
                producer_group,
                check_after_ms,
                message,
            } => {
                let result = crate::txns::prepare(
                    db,
                    state,
                    batch,
                    &at(position),
                    (topic, *queue_id, producer_group),
                    *check_after_ms,
                    message,
                );
                position += 1;
                result
            }
            Command::EndTxn {
                txn,
                outcome,
                topic,
                queue_id,
                message,
            } => {
                let result = crate::txns::end(
                    db,
                    state,
                    batch,
                    &at(position),
                    txn,
                    *outcome,
                    message.as_ref().map(|m| (topic.as_str(), *queue_id, m)),
                );
                position += u32::from(message.is_some());
                result
            }
            Command::SetGroupFifo { group, fifo } => crate::groups::set_fifo(db, state, batch, group, *fifo),
            Command::LockQueues {
                group,
                topic,
                client_id,
                queues,
                lease_ms,
            } => crate::groups::lock_queues(
                db,
                state,
                batch,
                req.store_timestamp_ms,
                (group, topic, client_id),
                queues,
                *lease_ms,
            ),
            Command::UnlockQueues {
                group,
                topic,
                client_id,
                queues,
            } => crate::groups::unlock_queues(db, state, batch, (group, topic, client_id), queues),
            Command::PutUser(user) => crate::users::put(db, state, batch, user),
            Command::DeleteUser { access_key } => crate::users::delete(db, state, batch, access_key),
            Command::TxnChecked { txn, next_after_ms } => {
                crate::txns::checked(db, state, batch, &at(position), txn, *next_after_ms)
            }
            Command::SendBack {
                group,
                topic,
                due_ms,
                message,
            } => {
                let result =
                    crate::groups::send_back(db, state, batch, &at(position), (group, topic), *due_ms, message);
                position += 1;
                result
            }
        })
        .collect()
}

/// Writes what the applied commands changed and left for once per batch: queue bounds and the
/// pending timer count. Called before the batch is written.
pub fn write_changes(db: &Db, state: &mut SmState, batch: &mut WriteBatch) {
    for (topic, queue_id) in std::mem::take(&mut state.unwritten_queues) {
        // A queue of a topic deleted later in the batch is gone, not written back.
        if let Some(bounds) = state.queues.get(&(topic.clone(), queue_id)) {
            batch.put_cf(db.cf(CF_QUEUES), keys::queue(&topic, queue_id), codec::encode(bounds));
        }
    }
    timers::write_count(db, state, batch);
    crate::txns::write_count(db, state, batch);
}

fn reject(why: Rejection, message: String) -> CommandResult {
    CommandResult::Rejected(why, message)
}

/// Checks a topic config; the master runs the same check before proposing.
pub fn check_topic(topic: &TopicConfig) -> Result<(), String> {
    raftmq_common::validate::name("topic", &topic.name).map_err(|e| e.to_string())?;
    for (field, n) in [("write_queues", topic.write_queues), ("read_queues", topic.read_queues)] {
        if n == 0 || n > MAX_QUEUES {
            return Err(format!("field `{field}`: {n} is outside 1..={MAX_QUEUES}"));
        }
    }
    if !matches!(topic.permission, perm::READ | perm::WRITE | perm::READ_WRITE) {
        return Err(format!(
            "field `permission`: {} is not read (4), write (2) or read+write (6)",
            topic.permission
        ));
    }
    Ok(())
}

fn upsert_topic(db: &Db, state: &mut SmState, batch: &mut WriteBatch, topic: &TopicConfig) -> CommandResult {
    if let Err(e) = check_topic(topic) {
        return reject(Rejection::InvalidArgument, e);
    }
    batch.put_cf(db.cf(CF_TOPICS), topic.name.as_bytes(), codec::encode(topic));
    state.topics.insert(topic.name.clone(), topic.clone());
    CommandResult::Done
}

fn delete_topic(db: &Db, state: &mut SmState, batch: &mut WriteBatch, name: &str) -> CommandResult {
    if state.topics.remove(name).is_none() {
        return reject(Rejection::TopicNotFound, format!("topic {name:?} does not exist"));
    }
    batch.delete_cf(db.cf(CF_TOPICS), name.as_bytes());
    let prefix = keys::topic_prefix(name);
    let end = keys::prefix_end(&prefix);
    batch.delete_range_cf(db.cf(CF_CQ), &prefix, &end);
    batch.delete_range_cf(db.cf(CF_QUEUES), &prefix, &end);
    batch.delete_range_cf(db.cf(CF_KEYS), &prefix, &end);
    state.queues.retain(|(t, _), _| t != name);
    let offsets = db.cf(CF_OFFSETS);
    crate::pop::delete_topic(db, state, batch, name);
    state.offsets.retain(|(group, topic, queue), _| {
        if topic == name {
            batch.delete_cf(offsets, keys::consume_offset(group, topic, *queue));
            false
        } else {
            true
        }
    });
    // The bodies stay in the commit log until retention removes them; nothing points at them.
    CommandResult::Done
}

fn commit_offsets(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    group: &str,
    offsets: &[OffsetUpdate],
    increase_only: bool,
) -> CommandResult {
    let cf = db.cf(CF_OFFSETS);
    for update in offsets {
        if !state.topics.contains_key(&update.topic) {
            // Offsets of a deleted topic are dropped, not an error: a consumer may commit once
            // more after the delete.
            continue;
        }
        let key = (group.to_owned(), update.topic.clone(), update.queue_id);
        if increase_only && state.offsets.get(&key).is_some_and(|stored| *stored >= update.offset) {
            continue;
        }
        batch.put_cf(
            cf,
            keys::consume_offset(group, &update.topic, update.queue_id),
            codec::encode(&update.offset),
        );
        state.offsets.insert(key, update.offset);
    }
    CommandResult::Done
}

/// The queue state, for callers that only read.
pub fn queue_state(state: &SmState, topic: &str, queue_id: u32) -> QueueState {
    state
        .queues
        .get(&(topic.to_owned(), queue_id))
        .copied()
        .unwrap_or_default()
}
