//! Transactions: half messages stored now and appended to their queue only when their producer
//! commits (RocketMQ's transactional messages).
//!
//! A half message is committed like any send, in the entry that prepared it; instead of a queue
//! offset it gets a pending record in the `txns` column family, keyed by that entry's index and
//! the message's position, which holds a copy of the message, its target queue, its producer
//! group and its check schedule. A second key, ordered by the next check time, lets the master
//! find the transactions it must ask about without reading the others. Both travel with
//! snapshots, so a new master continues the checks where the old one stopped.
//!
//! Ending a transaction goes through the Raft log: [`Command::EndTxn`](crate::types::Command)
//! applies only while the record is pending, removes it, and leaves an outcome record behind. A
//! commit appends the message (a copy the command carries, so it sits in the commit log at the
//! position it gets), a rollback appends nothing, an abandoned transaction (too many checks
//! unanswered) is appended to [`CHECK_MAX_TOPIC`] for an operator to inspect. The outcome record
//! makes a repeated end idempotent: committing a committed transaction again (a client retrying
//! after a failover) is answered as done and stores nothing; committing a rolled-back one is
//! refused. Outcome records are deleted by retention with the entry that prepared them.

use std::collections::HashMap;

use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CorruptRecord};
use crate::db::{Db, CF_TXNS};
use crate::queues::{append, check_writable, At};
use crate::state::SmState;
use crate::types::{CommandResult, MessageIn, Rejection};

/// The system topic abandoned half messages go to (RocketMQ's name), one queue.
pub const CHECK_MAX_TOPIC: &str = "TRANS_CHECK_MAX_TIME_TOPIC";

/// Longest a producer may ask the first check to wait (RocketMQ's immunity time).
pub const MAX_CHECK_AFTER_MS: i64 = 24 * 3600 * 1000;

const COUNT_KEY: &[u8] = b"C";
const PENDING: u8 = b'P';
const SCHEDULE: u8 = b'S';
const ENDED: u8 = b'E';

/// A half message: the entry that prepared it and the message's position among its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Txn {
    pub log_index: u64,
    pub position: u32,
}

impl Txn {
    fn key(&self, tag: u8) -> [u8; 13] {
        let mut k = [0u8; 13];
        k[0] = tag;
        k[1..9].copy_from_slice(&self.log_index.to_be_bytes());
        k[9..13].copy_from_slice(&self.position.to_be_bytes());
        k
    }

    fn schedule_key(&self, next_check_ms: i64) -> [u8; 21] {
        let mut k = [0u8; 21];
        k[0] = SCHEDULE;
        k[1..9].copy_from_slice(&(next_check_ms.max(0) as u64).to_be_bytes());
        k[9..17].copy_from_slice(&self.log_index.to_be_bytes());
        k[17..21].copy_from_slice(&self.position.to_be_bytes());
        k
    }

    fn parse_schedule_key(key: &[u8]) -> Option<(i64, Txn)> {
        if key.len() != 21 || key[0] != SCHEDULE {
            return None;
        }
        Some((
            u64::from_be_bytes(key[1..9].try_into().ok()?) as i64,
            Txn {
                log_index: u64::from_be_bytes(key[9..17].try_into().ok()?),
                position: u32::from_be_bytes(key[17..21].try_into().ok()?),
            },
        ))
    }

    /// The transaction id within its group, in hex: `index-position`.
    pub fn handle(&self) -> String {
        format!("{:x}-{:x}", self.log_index, self.position)
    }

    /// Parses a [`Txn::handle`].
    pub fn parse_handle(handle: &str) -> Option<Txn> {
        let (index, position) = handle.split_once('-')?;
        let ok = |p: &str, max| !p.is_empty() && p.len() <= max;
        if !ok(index, 16) || !ok(position, 8) {
            return None;
        }
        Some(Txn {
            log_index: u64::from_str_radix(index, 16).ok()?,
            position: u32::from_str_radix(position, 16).ok()?,
        })
    }

    /// The lowest key of a prepared-before-`log_index` range of outcome records.
    fn ended_below(log_index: u64) -> [u8; 13] {
        Txn { log_index, position: 0 }.key(ENDED)
    }
}

/// A pending half message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Half {
    pub topic: String,
    pub queue_id: u32,
    /// Whose producers are asked when the outcome is unknown; empty for producers known only by
    /// the topics they publish (RocketMQ 5 clients).
    pub producer_group: String,
    pub message: MessageIn,
    /// When it was prepared (the entry's time).
    pub prepared_ms: i64,
    /// Checks asked so far.
    pub checks: u32,
    /// When the master asks next (entry time of the last check, or of the prepare, plus the
    /// wait).
    pub next_check_ms: i64,
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Commit,
    Rollback,
    /// Checked too many times without an answer: moved to [`CHECK_MAX_TOPIC`].
    Abandon,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Commit => "committed",
            Outcome::Rollback => "rolled back",
            Outcome::Abandon => "abandoned after its checks",
        }
    }
}

/// Changes by entries applied but not yet written (one apply call writes many entries in one
/// batch). Cleared after every write.
#[derive(Debug, Clone, Default)]
pub struct Unwritten {
    /// `Some` pending, `None` no longer.
    pub pending: HashMap<Txn, Option<Half>>,
    pub ended: HashMap<Txn, Outcome>,
}

impl Unwritten {
    pub fn clear(&mut self) {
        self.pending.clear();
        self.ended.clear();
    }
}

fn read<T: serde::de::DeserializeOwned>(db: &Db, key: &[u8], what: impl Fn() -> String) -> Result<Option<T>, String> {
    match db.db.get_pinned_cf(db.cf(CF_TXNS), key) {
        Ok(Some(v)) => codec::decode(&v, what).map(Some).map_err(|e| e.to_string()),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn pending_in(db: &Db, state: &SmState, txn: &Txn) -> Result<Option<Half>, String> {
    if let Some(p) = state.unwritten_txns.pending.get(txn) {
        return Ok(p.clone());
    }
    read(db, &txn.key(PENDING), || format!("transaction {}", txn.handle()))
}

fn ended_in(db: &Db, state: &SmState, txn: &Txn) -> Result<Option<Outcome>, String> {
    if let Some(o) = state.unwritten_txns.ended.get(txn) {
        return Ok(Some(*o));
    }
    read(db, &txn.key(ENDED), || {
        format!("outcome of transaction {}", txn.handle())
    })
}

fn put_pending(db: &Db, state: &mut SmState, batch: &mut WriteBatch, txn: Txn, half: Half) {
    batch.put_cf(db.cf(CF_TXNS), txn.key(PENDING), codec::encode(&half));
    batch.put_cf(db.cf(CF_TXNS), txn.schedule_key(half.next_check_ms), []);
    state.unwritten_txns.pending.insert(txn, Some(half));
}

fn count(state: &mut SmState, change: i64) {
    state.txns_pending = state.txns_pending.saturating_add_signed(change);
    state.unwritten_txn_count = true;
}

/// Writes the pending count if the batch changed it.
pub(crate) fn write_count(db: &Db, state: &mut SmState, batch: &mut WriteBatch) {
    if std::mem::take(&mut state.unwritten_txn_count) {
        batch.put_cf(db.cf(CF_TXNS), COUNT_KEY, codec::encode(&state.txns_pending));
    }
}

/// The stored pending count (0 in a store that never had a transaction).
pub fn load_count(db: &Db) -> Result<u64, crate::state::LoadError> {
    match db.db.get_pinned_cf(db.cf(CF_TXNS), COUNT_KEY)? {
        Some(v) => Ok(codec::decode(&v, || "pending transaction count".into())?),
        None => Ok(0),
    }
}

/// Stores a half message (which the entry itself holds) for `(topic, queue, producer group)`
/// as pending; its first check is due `check_after_ms` after this entry.
pub(crate) fn prepare(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    at: &At,
    (topic, queue_id, producer_group): (&str, u32, &str),
    check_after_ms: i64,
    message: &MessageIn,
) -> CommandResult {
    if let Some(refused) = check_writable(state, topic, queue_id) {
        return refused;
    }
    if !(0..=MAX_CHECK_AFTER_MS).contains(&check_after_ms) {
        return CommandResult::Rejected(
            Rejection::InvalidArgument,
            format!("the first check is {check_after_ms} ms away; the limit is 0..={MAX_CHECK_AFTER_MS}"),
        );
    }
    let txn = Txn {
        log_index: at.log_index,
        position: at.first_position,
    };
    let half = Half {
        topic: topic.to_owned(),
        queue_id,
        producer_group: producer_group.to_owned(),
        message: message.clone(),
        prepared_ms: at.store_timestamp_ms,
        checks: 0,
        next_check_ms: at.store_timestamp_ms.saturating_add(check_after_ms),
    };
    put_pending(db, state, batch, txn, half);
    count(state, 1);
    CommandResult::Prepared {
        position: at.first_position,
    }
}

/// Ends a pending transaction: see the module's description. `append` is where and what a
/// commit appends (the half's own queue) or an abandon (queue 0 of [`CHECK_MAX_TOPIC`]); a
/// rollback carries none.
pub(crate) fn end(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    at: &At,
    txn: &Txn,
    outcome: Outcome,
    append_to: Option<(&str, u32, &MessageIn)>,
) -> CommandResult {
    let half = match pending_in(db, state, txn) {
        Ok(Some(half)) => half,
        Ok(None) => {
            return match ended_in(db, state, txn) {
                Ok(Some(ended)) if ended == outcome => CommandResult::Done,
                Ok(Some(ended)) => CommandResult::Rejected(
                    Rejection::AlreadyEnded,
                    format!("transaction {} was {} already", txn.handle(), ended.as_str()),
                ),
                Ok(None) => CommandResult::Rejected(
                    Rejection::MessageNotFound,
                    format!(
                        "no transaction {} is pending (never prepared, or its record is past retention)",
                        txn.handle()
                    ),
                ),
                Err(e) => unreadable(state, txn, e),
            }
        }
        Err(e) => return unreadable(state, txn, e),
    };
    let expected = match outcome {
        Outcome::Commit => Some((half.topic.as_str(), half.queue_id)),
        Outcome::Abandon => Some((CHECK_MAX_TOPIC, 0)),
        Outcome::Rollback => None,
    };
    let given = append_to.map(|(topic, queue_id, _)| (topic, queue_id));
    if expected != given {
        return CommandResult::Rejected(
            Rejection::InvalidArgument,
            format!(
                "transaction {} {} to {expected:?}, not {given:?}",
                txn.handle(),
                outcome.as_str(),
            ),
        );
    }
    batch.delete_cf(db.cf(CF_TXNS), txn.key(PENDING));
    batch.delete_cf(db.cf(CF_TXNS), txn.schedule_key(half.next_check_ms));
    batch.put_cf(db.cf(CF_TXNS), txn.key(ENDED), codec::encode(&outcome));
    state.unwritten_txns.pending.insert(*txn, None);
    state.unwritten_txns.ended.insert(*txn, outcome);
    count(state, -1);
    let Some((topic, queue_id, message)) = append_to else {
        return CommandResult::Done;
    };
    if outcome == Outcome::Abandon {
        crate::groups::ensure_system_topic(db, state, batch, CHECK_MAX_TOPIC);
    }
    // A topic deleted or made read-only meanwhile drops the message, as a send to it would fail.
    if let Some(refused) = check_writable(state, topic, queue_id) {
        return refused;
    }
    append(db, state, batch, at, (topic, queue_id), std::slice::from_ref(message))
}

/// Records a check asked of the producers: one more check, the next one `next_after_ms` after
/// this entry. Nothing for a transaction that ended meanwhile.
pub(crate) fn checked(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    at: &At,
    txn: &Txn,
    next_after_ms: i64,
) -> CommandResult {
    let mut half = match pending_in(db, state, txn) {
        Ok(Some(half)) => half,
        Ok(None) => return CommandResult::Done,
        Err(e) => return unreadable(state, txn, e),
    };
    batch.delete_cf(db.cf(CF_TXNS), txn.schedule_key(half.next_check_ms));
    half.checks = half.checks.saturating_add(1);
    half.next_check_ms = at.store_timestamp_ms.saturating_add(next_after_ms.max(0));
    put_pending(db, state, batch, *txn, half);
    CommandResult::Done
}

/// Deletes the outcome records of transactions prepared before `log_index` (whose entries
/// retention deletes in the same write).
pub(crate) fn forget_ended_before(db: &Db, batch: &mut WriteBatch, log_index: u64) {
    batch.delete_range_cf(db.cf(CF_TXNS), Txn::ended_below(0), Txn::ended_below(log_index));
}

fn unreadable(state: &mut SmState, txn: &Txn, e: String) -> CommandResult {
    tracing::error!("cannot read transaction {}: {e}", txn.handle());
    state.corrupt.get_or_insert_with(|| CorruptRecord {
        what: format!("transaction {}", txn.handle()),
        reason: e.clone(),
    });
    CommandResult::Rejected(
        Rejection::InvalidArgument,
        format!("transaction {} is unreadable: {e}", txn.handle()),
    )
}

fn corrupt(reason: impl ToString) -> CorruptRecord {
    CorruptRecord {
        what: "transactions".into(),
        reason: reason.to_string(),
    }
}

/// Up to `limit` pending transactions whose next check is due at or before `now_ms`, earliest
/// first, from the written state.
pub fn due_checks(db: &Db, now_ms: i64, limit: usize) -> Result<Vec<(Txn, Half)>, CorruptRecord> {
    let mut out = Vec::new();
    let from = IteratorMode::From(&[SCHEDULE], rocksdb::Direction::Forward);
    for item in db.db.iterator_cf(db.cf(CF_TXNS), from) {
        let (key, _) = item.map_err(corrupt)?;
        if key.first() != Some(&SCHEDULE) {
            break;
        }
        let (due, txn) =
            Txn::parse_schedule_key(&key).ok_or_else(|| corrupt(format!("a key of {} bytes", key.len())))?;
        if due > now_ms || out.len() >= limit {
            break;
        }
        match pending(db, &txn)? {
            Some(half) => out.push((txn, half)),
            None => {
                return Err(corrupt(format!(
                    "a check scheduled for {} which is not pending",
                    txn.handle()
                )))
            }
        }
    }
    Ok(out)
}

/// A pending transaction, from the written state.
pub fn pending(db: &Db, txn: &Txn) -> Result<Option<Half>, CorruptRecord> {
    read(db, &txn.key(PENDING), || format!("transaction {}", txn.handle())).map_err(corrupt)
}

/// How a transaction ended, if it did (and its record is not past retention).
pub fn ended(db: &Db, txn: &Txn) -> Result<Option<Outcome>, CorruptRecord> {
    read(db, &txn.key(ENDED), || {
        format!("outcome of transaction {}", txn.handle())
    })
    .map_err(corrupt)
}

/// Up to `limit` pending transactions, oldest first.
pub fn list(db: &Db, limit: usize) -> Result<Vec<(Txn, Half)>, CorruptRecord> {
    let mut out = Vec::new();
    let from = IteratorMode::From(&[PENDING], rocksdb::Direction::Forward);
    for item in db.db.iterator_cf(db.cf(CF_TXNS), from) {
        let (key, value) = item.map_err(corrupt)?;
        if key.first() != Some(&PENDING) || out.len() >= limit {
            break;
        }
        let txn = Txn {
            log_index: u64::from_be_bytes(
                key.get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| corrupt("key"))?,
            ),
            position: u32::from_be_bytes(
                key.get(9..13)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| corrupt("key"))?,
            ),
        };
        out.push((txn, codec::decode(&value, || format!("transaction {}", txn.handle()))?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_round_trips_and_garbage_is_refused() {
        let t = Txn {
            log_index: 0x1234,
            position: 7,
        };
        assert_eq!(t.handle(), "1234-7");
        assert_eq!(Txn::parse_handle(&t.handle()), Some(t));
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "1-2-3",
            "x-1",
            "11111111111111111-1",
            "1-111111111",
        ] {
            assert_eq!(Txn::parse_handle(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn schedule_keys_sort_by_time() {
        let a = Txn {
            log_index: 9,
            position: 0,
        };
        let b = Txn {
            log_index: 1,
            position: 0,
        };
        assert!(a.schedule_key(5) < b.schedule_key(6));
        assert_eq!(Txn::parse_schedule_key(&a.schedule_key(5)), Some((5, a)));
    }
}
