//! Timers: messages stored now and appended to their queue later (delayed and timed messages).
//!
//! A scheduled message is committed like any send, in the entry that scheduled it; instead of a
//! queue offset it gets a pending timer in the `timers` column family, keyed by due time, log
//! index and position, that holds the message and its target queue. Timers live on disk, so a
//! million of them cost no memory, and they travel with snapshots. The timer keeps its own copy
//! of the message so that a message due in a month does not pin the commit log: retention
//! deletes the scheduling entry by age as it deletes any other.
//!
//! Delivery goes through the Raft log like everything else: the master proposes a
//! [`Command::Deliver`](crate::types::Command::Deliver) carrying a copy of the message; apply
//! appends it only while the timer is pending and removes the timer in the same write. So a
//! master that changes between the proposal and the commit, or two masters proposing the same
//! delivery, store it once; a recalled timer is never delivered; a delivered one cannot be
//! recalled. Apply never reads the clock: due times are compared with entry timestamps only.

use std::collections::HashMap;

use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CorruptRecord};
use crate::db::{Db, CF_TIMERS};
use crate::queues::{append, check_writable, At};
use crate::state::SmState;
use crate::types::{CommandResult, MessageIn, Rejection};

/// The key of the pending-timer count (the timers' keys start with `D`, after it).
const COUNT_KEY: &[u8] = b"C";

/// Longest a message may be scheduled ahead of its send.
pub const MAX_DELAY_MS: i64 = 30 * 24 * 3600 * 1000;

/// One pending timer: when it is due, and the message it delivers (the entry that scheduled it
/// and the message's position among the entry's messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timer {
    pub due_ms: i64,
    pub log_index: u64,
    pub position: u32,
}

impl Timer {
    fn due_key(&self) -> [u8; 21] {
        let mut k = [0u8; 21];
        k[0] = b'D';
        k[1..9].copy_from_slice(&(self.due_ms.max(0) as u64).to_be_bytes());
        k[9..17].copy_from_slice(&self.log_index.to_be_bytes());
        k[17..21].copy_from_slice(&self.position.to_be_bytes());
        k
    }

    fn parse_due_key(key: &[u8]) -> Option<Timer> {
        if key.len() != 21 || key[0] != b'D' {
            return None;
        }
        Some(Timer {
            due_ms: u64::from_be_bytes(key[1..9].try_into().ok()?) as i64,
            log_index: u64::from_be_bytes(key[9..17].try_into().ok()?),
            position: u32::from_be_bytes(key[17..21].try_into().ok()?),
        })
    }

    /// The recall handle a producer gets: the timer in hex, `due-index-position`.
    pub fn handle(&self) -> String {
        format!("{:x}-{:x}-{:x}", self.due_ms, self.log_index, self.position)
    }

    /// Parses a [`Timer::handle`].
    pub fn parse_handle(handle: &str) -> Option<Timer> {
        let mut parts = handle.split('-');
        let mut next = || parts.next().filter(|p| !p.is_empty() && p.len() <= 16);
        let due_ms = i64::from_str_radix(next()?, 16).ok()?;
        let log_index = u64::from_str_radix(next()?, 16).ok()?;
        let position = u32::from_str_radix(next()?, 16).ok()?;
        (parts.next().is_none() && due_ms >= 0).then_some(Timer {
            due_ms,
            log_index,
            position,
        })
    }
}

/// What a pending timer delivers, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub topic: String,
    pub queue_id: u32,
    pub message: MessageIn,
}

/// A timer that is due, as the master's timer loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTimer {
    pub timer: Timer,
    pub target: Target,
}

/// Timers set or removed by entries applied but not yet written (one apply call writes many
/// entries in one batch): `Some` set, `None` removed. Cleared after every write.
pub type Unwritten = HashMap<Timer, Option<Target>>;

/// The target of a pending timer; `None` when it is not pending.
fn pending(db: &Db, state: &SmState, timer: &Timer) -> Result<Option<Target>, String> {
    if let Some(set) = state.unwritten_timers.get(timer) {
        return Ok(set.clone());
    }
    match db.db.get_pinned_cf(db.cf(CF_TIMERS), timer.due_key()) {
        Ok(Some(v)) => codec::decode(&v, || format!("timer {}", timer.handle()))
            .map(Some)
            .map_err(|e| e.to_string()),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Stores a timer for the message at `at` (which the entry itself holds).
pub(crate) fn schedule(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    at: &At,
    (topic, queue_id): (&str, u32),
    due_ms: i64,
    message: &MessageIn,
) -> CommandResult {
    if let Some(refused) = check_writable(state, topic, queue_id) {
        return refused;
    }
    if due_ms > at.store_timestamp_ms + MAX_DELAY_MS {
        return CommandResult::Rejected(
            Rejection::InvalidArgument,
            format!(
                "the delivery time is {} ms ahead; the limit is {MAX_DELAY_MS} ms",
                due_ms - at.store_timestamp_ms
            ),
        );
    }
    let timer = Timer {
        due_ms,
        log_index: at.log_index,
        position: at.first_position,
    };
    let target = Target {
        topic: topic.to_owned(),
        queue_id,
        message: message.clone(),
    };
    batch.put_cf(db.cf(CF_TIMERS), timer.due_key(), codec::encode(&target));
    state.unwritten_timers.insert(timer, Some(target));
    count(state, 1);
    CommandResult::Scheduled {
        position: at.first_position,
    }
}

fn remove(db: &Db, state: &mut SmState, batch: &mut WriteBatch, timer: &Timer) {
    batch.delete_cf(db.cf(CF_TIMERS), timer.due_key());
    state.unwritten_timers.insert(*timer, None);
    count(state, -1);
}

/// Keeps the pending count in memory; it is written beside the timers (so it travels with
/// snapshots) once per batch, by [`write_count`].
fn count(state: &mut SmState, change: i64) {
    state.timers_pending = state.timers_pending.saturating_add_signed(change);
    state.unwritten_timer_count = true;
}

/// Writes the pending count if the batch changed it.
pub(crate) fn write_count(db: &Db, state: &mut SmState, batch: &mut WriteBatch) {
    if std::mem::take(&mut state.unwritten_timer_count) {
        batch.put_cf(db.cf(CF_TIMERS), COUNT_KEY, codec::encode(&state.timers_pending));
    }
}

/// The stored pending count (0 in a store that never had a timer).
pub fn load_count(db: &Db) -> Result<u64, crate::state::LoadError> {
    match db.db.get_pinned_cf(db.cf(CF_TIMERS), COUNT_KEY)? {
        Some(v) => Ok(codec::decode(&v, || "pending timer count".into())?),
        None => Ok(0),
    }
}

/// Appends a due message to its queue if its timer is still pending; `Done` (nothing stored)
/// when it was delivered or recalled already.
pub(crate) fn deliver(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    at: &At,
    timer: &Timer,
    (topic, queue_id): (&str, u32),
    message: &MessageIn,
) -> CommandResult {
    let target = match pending(db, state, timer) {
        Ok(Some(target)) => target,
        Ok(None) => return CommandResult::Done,
        Err(e) => return unreadable(state, timer, e),
    };
    // Never early, whatever a master's clock said when it proposed: the entry's own time rules.
    if at.store_timestamp_ms < timer.due_ms {
        return CommandResult::Rejected(
            Rejection::InvalidArgument,
            format!("timer {} is not due until {}", timer.handle(), timer.due_ms),
        );
    }
    if target.topic != topic || target.queue_id != queue_id {
        return CommandResult::Rejected(
            Rejection::InvalidArgument,
            format!(
                "timer {} delivers to {}/{}, not {topic}/{queue_id}",
                timer.handle(),
                target.topic,
                target.queue_id
            ),
        );
    }
    remove(db, state, batch, timer);
    // A topic deleted or made read-only meanwhile drops the message, as a send to it would fail.
    if let Some(refused) = check_writable(state, &target.topic, target.queue_id) {
        return refused;
    }
    append(
        db,
        state,
        batch,
        at,
        (&target.topic, target.queue_id),
        std::slice::from_ref(message),
    )
}

/// Cancels a pending timer. Refused with `AlreadyDelivered` when its due time has passed (as of
/// this entry) and it is gone, `MessageNotFound` when it never existed or was recalled already.
pub(crate) fn recall(db: &Db, state: &mut SmState, batch: &mut WriteBatch, at: &At, timer: &Timer) -> CommandResult {
    match pending(db, state, timer) {
        Ok(Some(_)) => {
            remove(db, state, batch, timer);
            CommandResult::Done
        }
        Ok(None) if timer.due_ms <= at.store_timestamp_ms => CommandResult::Rejected(
            Rejection::AlreadyDelivered,
            format!("the message of handle {} is delivered already", timer.handle()),
        ),
        Ok(None) => CommandResult::Rejected(
            Rejection::MessageNotFound,
            format!(
                "no pending message has handle {} (recalled already, or never scheduled)",
                timer.handle()
            ),
        ),
        Err(e) => unreadable(state, timer, e),
    }
}

/// A timer that cannot be read: damaged committed data. The state machine stops the node when
/// it sees `state.corrupt` (nothing of the batch is written); the result is never answered.
fn unreadable(state: &mut SmState, timer: &Timer, e: String) -> CommandResult {
    tracing::error!("cannot read timer {}: {e}", timer.handle());
    state.corrupt.get_or_insert_with(|| CorruptRecord {
        what: format!("timer {}", timer.handle()),
        reason: e.clone(),
    });
    CommandResult::Rejected(
        Rejection::InvalidArgument,
        format!("timer {} is unreadable: {e}", timer.handle()),
    )
}

/// Up to `limit` timers due at or before `now_ms`, earliest first, from the written state;
/// only those after `after` when given (a scan that goes on where the last one stopped passes
/// over neither the timers it already has in hand nor the deleted keys of delivered ones).
pub fn due(db: &Db, after: Option<&Timer>, now_ms: i64, limit: usize) -> Result<Vec<DueTimer>, CorruptRecord> {
    let mut out = Vec::new();
    let start = after.map_or_else(|| vec![b'D'], |t| t.due_key().to_vec());
    let from = IteratorMode::From(&start, rocksdb::Direction::Forward);
    for item in db.db.iterator_cf(db.cf(CF_TIMERS), from) {
        let (key, value) = item.map_err(|e| CorruptRecord {
            what: "timers".into(),
            reason: e.to_string(),
        })?;
        let timer = Timer::parse_due_key(&key).ok_or_else(|| CorruptRecord {
            what: "timers".into(),
            reason: format!("a key of {} bytes", key.len()),
        })?;
        if Some(&timer) == after {
            continue;
        }
        if timer.due_ms > now_ms || out.len() >= limit {
            break;
        }
        let target: Target = codec::decode(&value, || format!("timer {}", timer.handle()))?;
        out.push(DueTimer { timer, target });
    }
    Ok(out)
}

/// When the earliest pending timer is due, if any.
pub fn next_due(db: &Db) -> Result<Option<i64>, CorruptRecord> {
    Ok(due(db, None, i64::MAX, 1)?.first().map(|d| d.timer.due_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_round_trips_and_garbage_is_refused() {
        let t = Timer {
            due_ms: 1_765_000_000_123,
            log_index: 42,
            position: 7,
        };
        assert_eq!(Timer::parse_handle(&t.handle()), Some(t));
        for bad in ["", "1-2", "1-2-3-4", "x-2-3", "-1-2-3", "1--3", "11111111111111111-2-3"] {
            assert_eq!(Timer::parse_handle(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn due_keys_sort_by_due_time_then_position() {
        let a = Timer {
            due_ms: 5,
            log_index: 9,
            position: 0,
        };
        let b = Timer {
            due_ms: 6,
            log_index: 1,
            position: 0,
        };
        assert!(a.due_key() < b.due_key());
        assert_eq!(Timer::parse_due_key(&a.due_key()), Some(a));
    }
}
