//! The state machine's in-memory state: topics, queue bounds, consume offsets, POP deliveries in
//! flight, applied position.
//!
//! All of it is also in RocksDB; memory holds it so that apply and reads need no lookups. It is
//! small: a few numbers per queue and per (group, queue). The consume-queue index and the bodies
//! stay on disk.

use std::collections::{BTreeMap, HashMap};

use rocksdb::IteratorMode;
use serde::{Deserialize, Serialize};

use crate::codec::{self, CorruptRecord};
use crate::db::{Db, CF_GROUPS, CF_OFFSETS, CF_POP, CF_QUEUES, CF_TOPICS, META_APPLIED, META_MEMBERSHIP};
use crate::keys;
use crate::types::{LogId, StoredMembership, TopicConfig};

/// The bounds of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// The lowest offset still stored (retention moves it up).
    pub min_offset: u64,
    /// The offset the next message gets.
    pub next_offset: u64,
}

/// Where a message of a queue sits in the commit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CqEntry {
    pub log_index: u64,
    /// Position among all messages of the log entry.
    pub position: u32,
    pub store_timestamp_ms: i64,
    pub body_len: u32,
    /// Kept here so tag filtering needs no body read.
    pub tags: String,
}

/// (group, topic, queue)
pub type OffsetKey = (String, String, u32);

/// One message handed to a consumer group by a POP receive and not yet acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inflight {
    /// When it may be delivered again (master's clock, from the entry's store timestamp).
    pub visible_at_ms: i64,
    /// How many times it was delivered.
    pub attempt: u32,
    /// Index of the entry that delivered it or last changed its invisibility.
    pub lease: u64,
}

/// A consumer group's POP state in one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PopQueue {
    /// The next offset never delivered to the group.
    pub next: u64,
    pub inflight: BTreeMap<u64, Inflight>,
}

impl PopQueue {
    /// Where the group's consume progress stands: nothing below it awaits an acknowledgement.
    pub fn low_watermark(&self) -> u64 {
        self.inflight.keys().next().copied().unwrap_or(self.next).min(self.next)
    }
}

#[derive(Debug, Clone, Default)]
pub struct SmState {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub topics: BTreeMap<String, TopicConfig>,
    pub queues: HashMap<(String, u32), QueueState>,
    pub offsets: BTreeMap<OffsetKey, u64>,
    pub pops: BTreeMap<OffsetKey, PopQueue>,
    /// Timers changed by entries applied into a batch not yet written (the timers themselves
    /// are on disk only).
    pub unwritten_timers: crate::timers::Unwritten,
    /// How many delayed messages are pending.
    pub timers_pending: u64,
    /// Queues whose bounds changed in the batch not yet written, and whether the pending timer
    /// count did: written once per batch ([`crate::apply::write_changes`]), not once per
    /// command.
    pub unwritten_queues: std::collections::HashSet<(String, u32)>,
    pub unwritten_timer_count: bool,
    /// Transactions changed by entries applied into a batch not yet written.
    pub unwritten_txns: crate::txns::Unwritten,
    /// How many transactions are pending, and whether the batch changed the count.
    pub txns_pending: u64,
    pub unwritten_txn_count: bool,
    /// Committed data that apply found damaged: the state machine refuses to go on.
    pub corrupt: Option<CorruptRecord>,
    /// Consumer groups with settings of their own.
    pub groups: BTreeMap<String, crate::groups::GroupConfig>,
    /// Consumer groups marked FIFO.
    pub fifo_groups: std::collections::BTreeSet<String>,
    /// Queue locks of orderly consumers: (group, topic, queue) → holder.
    pub queue_locks: BTreeMap<OffsetKey, crate::groups::QueueLock>,
    /// Every node id that has been in the group's membership, with its last known addresses:
    /// an id once used is never given to another node.
    pub known_nodes: BTreeMap<crate::NodeId, crate::BrokerNode>,
    /// Users and their rights, by access key.
    pub users: BTreeMap<String, raftmq_common::auth::User>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Db(#[from] rocksdb::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
}

impl SmState {
    /// Reads the whole in-memory state from the database.
    pub fn load(db: &Db) -> Result<SmState, LoadError> {
        let mut state = SmState::default();
        if let Some(bytes) = db.get_meta(META_APPLIED)? {
            state.applied = codec::decode(&bytes, || "applied log id".into())?;
        }
        if let Some(bytes) = db.get_meta(META_MEMBERSHIP)? {
            state.membership = codec::decode(&bytes, || "membership".into())?;
        }
        for item in db.db.iterator_cf(db.cf(CF_TOPICS), IteratorMode::Start) {
            let (key, value) = item?;
            let topic: TopicConfig = codec::decode(&value, || format!("topic {}", String::from_utf8_lossy(&key)))?;
            state.topics.insert(topic.name.clone(), topic);
        }
        for item in db.db.iterator_cf(db.cf(CF_QUEUES), IteratorMode::Start) {
            let (key, value) = item?;
            let what = || format!("queue {}", String::from_utf8_lossy(&key));
            let id = keys::parse_queue(&key).ok_or_else(|| CorruptRecord {
                what: what(),
                reason: "bad key".into(),
            })?;
            state.queues.insert(id, codec::decode(&value, what)?);
        }
        for item in db.db.iterator_cf(db.cf(CF_OFFSETS), IteratorMode::Start) {
            let (key, value) = item?;
            let what = || format!("consume offset {}", String::from_utf8_lossy(&key));
            let id = keys::parse_consume_offset(&key).ok_or_else(|| CorruptRecord {
                what: what(),
                reason: "bad key".into(),
            })?;
            state.offsets.insert(id, codec::decode(&value, what)?);
        }
        for item in db.db.iterator_cf(db.cf(CF_POP), IteratorMode::Start) {
            let (key, value) = item?;
            let what = || format!("pop state {}", String::from_utf8_lossy(&key));
            let (group, topic, queue, offset) = keys::parse_pop(&key).ok_or_else(|| CorruptRecord {
                what: what(),
                reason: "bad key".into(),
            })?;
            let pq = state.pops.entry((group, topic, queue)).or_default();
            match offset {
                None => pq.next = codec::decode(&value, what)?,
                Some(offset) => {
                    pq.inflight.insert(offset, codec::decode(&value, what)?);
                }
            }
        }
        state.timers_pending = crate::timers::load_count(db)?;
        state.txns_pending = crate::txns::load_count(db)?;
        for item in db.db.iterator_cf(db.cf(CF_GROUPS), IteratorMode::Start) {
            let (key, value) = item?;
            if let Some(name) = key.strip_prefix(crate::groups::FIFO_PREFIX) {
                state.fifo_groups.insert(String::from_utf8_lossy(name).into_owned());
                continue;
            }
            if let Some(id) = key.strip_prefix(crate::groups::NODE_PREFIX) {
                let id = <[u8; 8]>::try_from(id)
                    .map(u64::from_be_bytes)
                    .map_err(|_| CorruptRecord {
                        what: "known node".into(),
                        reason: "bad key".into(),
                    })?;
                state
                    .known_nodes
                    .insert(id, codec::decode(&value, || format!("known node {id}"))?);
                continue;
            }
            if let Some(name) = key.strip_prefix(crate::users::USER_PREFIX) {
                let name = String::from_utf8_lossy(name).into_owned();
                let user = codec::decode(&value, || format!("user {name}"))?;
                state.users.insert(name, user);
                continue;
            }
            if key.starts_with(crate::groups::LOCK_PREFIX) {
                let id = crate::groups::parse_lock_key(&key).ok_or_else(|| CorruptRecord {
                    what: "queue lock".into(),
                    reason: "bad key".into(),
                })?;
                state
                    .queue_locks
                    .insert(id, codec::decode(&value, || "queue lock".into())?);
                continue;
            }
            let group: crate::groups::GroupConfig =
                codec::decode(&value, || format!("group {}", String::from_utf8_lossy(&key)))?;
            state.groups.insert(group.name.clone(), group);
        }
        Ok(state)
    }
}
