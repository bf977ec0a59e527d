//! POP deliveries (RocketMQ 5's receive): which messages a consumer group holds invisible, and
//! until when.
//!
//! Every change goes through the Raft log, so a new master knows every delivery in flight: a
//! failover may deliver a message again, never lose one. Apply decides from the entry and the
//! state alone: the master proposes what it saw (a cursor, leases), and apply grants only what is
//! still true, so two receives racing for the same queue never get the same message.
//!
//! A delivery's lease is the index of the entry that made it (or last changed its invisibility).
//! An acknowledgement or change must name the current lease; one from an earlier delivery is
//! stale and refused.

use rocksdb::WriteBatch;

use crate::codec;
use crate::db::{Db, CF_OFFSETS, CF_POP};
use crate::keys;
use crate::queues::{append, At};
use crate::state::{Inflight, OffsetKey, PopQueue, SmState};
use crate::types::{CommandResult, MessageIn, Pop, PopLease, Rejection};

/// Most deliveries one group may hold in flight in one queue; past it, a receive only
/// redelivers until acknowledgements make room.
pub const MAX_INFLIGHT_PER_QUEUE: usize = 2048;

fn key(group: &str, topic: &str, queue_id: u32) -> OffsetKey {
    (group.to_owned(), topic.to_owned(), queue_id)
}

/// The group's POP state in a queue, created at the group's consume offset (or the queue's
/// first message) on its first receive.
fn pop_queue<'a>(state: &'a mut SmState, group: &str, topic: &str, queue_id: u32) -> &'a mut PopQueue {
    let k = key(group, topic, queue_id);
    let start = state.offsets.get(&k).copied().unwrap_or_else(|| {
        state
            .queues
            .get(&(topic.to_owned(), queue_id))
            .map(|q| q.min_offset)
            .unwrap_or(0)
    });
    state.pops.entry(k).or_insert_with(|| PopQueue {
        next: start,
        inflight: Default::default(),
    })
}

/// Where new deliveries start: the cursor, or past what retention removed.
pub fn effective_cursor(state: &SmState, group: &str, topic: &str, queue_id: u32) -> u64 {
    let bounds = state
        .queues
        .get(&(topic.to_owned(), queue_id))
        .copied()
        .unwrap_or_default();
    let cursor = match state.pops.get(&key(group, topic, queue_id)) {
        Some(pq) => pq.next,
        None => state
            .offsets
            .get(&key(group, topic, queue_id))
            .copied()
            .unwrap_or(bounds.min_offset),
    };
    cursor.max(bounds.min_offset)
}

/// Writes the in-flight record (or its removal) and keeps the group's consume offset at the
/// POP low watermark, so progress and lag read the same as for pull consumers.
fn persist(db: &Db, state: &mut SmState, batch: &mut WriteBatch, group: &str, topic: &str, queue_id: u32) {
    let k = key(group, topic, queue_id);
    let Some(pq) = state.pops.get(&k) else { return };
    batch.put_cf(
        db.cf(CF_POP),
        keys::pop_cursor(group, topic, queue_id),
        codec::encode(&pq.next),
    );
    let low = pq.low_watermark();
    if state.offsets.get(&k) != Some(&low) {
        batch.put_cf(
            db.cf(CF_OFFSETS),
            keys::consume_offset(group, topic, queue_id),
            codec::encode(&low),
        );
        state.offsets.insert(k, low);
    }
}

fn put_inflight(db: &Db, batch: &mut WriteBatch, group: &str, topic: &str, queue_id: u32, offset: u64, f: &Inflight) {
    batch.put_cf(
        db.cf(CF_POP),
        keys::pop_inflight(group, topic, queue_id, offset),
        codec::encode(f),
    );
}

fn del_inflight(db: &Db, batch: &mut WriteBatch, group: &str, topic: &str, queue_id: u32, offset: u64) {
    batch.delete_cf(db.cf(CF_POP), keys::pop_inflight(group, topic, queue_id, offset));
}

fn check_queue(state: &SmState, topic: &str, queue_id: u32) -> Result<(), CommandResult> {
    let Some(config) = state.topics.get(topic) else {
        return Err(CommandResult::Rejected(
            Rejection::TopicNotFound,
            format!("topic {topic:?} does not exist"),
        ));
    };
    if queue_id >= config.queues() {
        return Err(CommandResult::Rejected(
            Rejection::QueueNotFound,
            format!("topic {topic:?} has no queue {queue_id}"),
        ));
    }
    Ok(())
}

pub(crate) fn pop(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    log_index: u64,
    ts: i64,
    p: &Pop,
) -> CommandResult {
    if let Err(rejected) = check_queue(state, &p.topic, p.queue_id) {
        return rejected;
    }
    let bounds = state
        .queues
        .get(&(p.topic.clone(), p.queue_id))
        .copied()
        .unwrap_or_default();
    let visible_at_ms = ts.saturating_add(p.invisible_ms.min(i64::MAX as u64) as i64);
    let (group, topic, queue_id) = (p.group.as_str(), p.topic.as_str(), p.queue_id);
    let pq = pop_queue(state, group, topic, queue_id);
    let mut granted = Vec::new();
    for l in &p.forget {
        if pq.inflight.get(&l.offset).is_some_and(|f| f.lease == l.lease) {
            pq.inflight.remove(&l.offset);
            del_inflight(db, batch, group, topic, queue_id, l.offset);
        }
    }
    for l in &p.redeliver {
        if let Some(f) = pq.inflight.get_mut(&l.offset) {
            if f.lease == l.lease && f.visible_at_ms <= ts {
                f.attempt = f.attempt.saturating_add(1);
                f.lease = log_index;
                f.visible_at_ms = visible_at_ms;
                granted.push((l.offset, f.attempt));
                let f = *f;
                put_inflight(db, batch, group, topic, queue_id, l.offset, &f);
            }
        }
    }
    let cursor = pq.next.max(bounds.min_offset);
    let new_ok = p.new_from == cursor
        && p.new_to >= p.new_from
        && p.new_to <= bounds.next_offset
        && p.new.windows(2).all(|w| w[0] < w[1])
        && p.new.iter().all(|o| (p.new_from..p.new_to).contains(o))
        && pq.inflight.len() + p.new.len() <= MAX_INFLIGHT_PER_QUEUE;
    if new_ok {
        for &offset in &p.new {
            let f = Inflight {
                visible_at_ms,
                attempt: 1,
                lease: log_index,
            };
            pq.inflight.insert(offset, f);
            granted.push((offset, 1));
            put_inflight(db, batch, group, topic, queue_id, offset, &f);
        }
        pq.next = p.new_to;
    }
    persist(db, state, batch, group, topic, queue_id);
    CommandResult::Popped(granted)
}

pub(crate) fn ack(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    group: &str,
    topic: &str,
    queue_id: u32,
    entries: &[PopLease],
) -> CommandResult {
    let Some(pq) = state.pops.get_mut(&key(group, topic, queue_id)) else {
        return CommandResult::Acked(vec![false; entries.len()]);
    };
    let results = entries
        .iter()
        .map(|l| {
            let current = pq.inflight.get(&l.offset).is_some_and(|f| f.lease == l.lease);
            if current {
                pq.inflight.remove(&l.offset);
                del_inflight(db, batch, group, topic, queue_id, l.offset);
            }
            current
        })
        .collect();
    persist(db, state, batch, group, topic, queue_id);
    CommandResult::Acked(results)
}

pub(crate) fn change_invisible(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    at: &At,
    (group, topic, queue_id): (&str, &str, u32),
    lease: &PopLease,
    invisible_ms: u64,
) -> CommandResult {
    let (log_index, ts) = (at.log_index, at.store_timestamp_ms);
    let stale = || {
        CommandResult::Rejected(
            Rejection::StaleLease,
            format!(
                "the receipt handle of {topic}/{queue_id} offset {} is no longer current",
                lease.offset
            ),
        )
    };
    let Some(pq) = state.pops.get_mut(&key(group, topic, queue_id)) else {
        return stale();
    };
    let Some(f) = pq.inflight.get_mut(&lease.offset).filter(|f| f.lease == lease.lease) else {
        return stale();
    };
    f.lease = log_index;
    f.visible_at_ms = ts.saturating_add(invisible_ms.min(i64::MAX as u64) as i64);
    let f = *f;
    put_inflight(db, batch, group, topic, queue_id, lease.offset, &f);
    CommandResult::Done
}

pub(crate) fn dead_letter(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    at: &At,
    (group, topic, queue_id): (&str, &str, u32),
    lease: &PopLease,
    (dlq_topic, message): (&str, &MessageIn),
) -> CommandResult {
    let current = state
        .pops
        .get(&key(group, topic, queue_id))
        .and_then(|pq| pq.inflight.get(&lease.offset))
        .is_some_and(|f| f.lease == lease.lease);
    if !current {
        return CommandResult::Rejected(
            Rejection::StaleLease,
            format!(
                "the receipt handle of {topic}/{queue_id} offset {} is no longer current",
                lease.offset
            ),
        );
    }
    if let Err(e) = raftmq_common::validate::name("dead-letter topic", dlq_topic) {
        return CommandResult::Rejected(Rejection::InvalidArgument, e.to_string());
    }
    crate::groups::ensure_system_topic(db, state, batch, dlq_topic);
    let result = append(db, state, batch, at, (dlq_topic, 0), std::slice::from_ref(message));
    if let Some(pq) = state.pops.get_mut(&key(group, topic, queue_id)) {
        pq.inflight.remove(&lease.offset);
    }
    del_inflight(db, batch, group, topic, queue_id, lease.offset);
    persist(db, state, batch, group, topic, queue_id);
    result
}

/// What the master needs to propose a receive in one queue: read from the applied state.
#[derive(Debug, Clone, Default)]
pub struct PopView {
    /// The cursor new deliveries start from.
    pub cursor: u64,
    /// Deliveries whose invisibility expired, oldest offset first: (lease, attempt).
    pub expired: Vec<(PopLease, u32)>,
    pub inflight: usize,
    /// The earliest time an in-flight delivery becomes visible again.
    pub next_visible_at_ms: Option<i64>,
}

/// Builds the [`PopView`] of a group in a queue at `now_ms`, listing at most `max_expired`.
pub fn view(state: &SmState, group: &str, topic: &str, queue_id: u32, now_ms: i64, max_expired: usize) -> PopView {
    let mut v = PopView {
        cursor: effective_cursor(state, group, topic, queue_id),
        ..Default::default()
    };
    if let Some(pq) = state.pops.get(&key(group, topic, queue_id)) {
        v.inflight = pq.inflight.len();
        for (&offset, f) in &pq.inflight {
            if f.visible_at_ms <= now_ms {
                if v.expired.len() < max_expired {
                    v.expired.push((PopLease { offset, lease: f.lease }, f.attempt));
                }
            } else {
                v.next_visible_at_ms = Some(v.next_visible_at_ms.map_or(f.visible_at_ms, |t| t.min(f.visible_at_ms)));
            }
        }
    }
    v
}

/// The delivery of one message, if `lease` is current: (attempt, visible at).
pub fn delivery(state: &SmState, group: &str, topic: &str, queue_id: u32, lease: &PopLease) -> Option<Inflight> {
    state
        .pops
        .get(&key(group, topic, queue_id))?
        .inflight
        .get(&lease.offset)
        .filter(|f| f.lease == lease.lease)
        .copied()
}

/// Forgets every POP state of a topic (it was deleted).
pub(crate) fn delete_topic(db: &Db, state: &mut SmState, batch: &mut WriteBatch, name: &str) {
    let cf = db.cf(CF_POP);
    state.pops.retain(|(group, topic, queue), pq| {
        if topic != name {
            return true;
        }
        batch.delete_cf(cf, keys::pop_cursor(group, topic, *queue));
        for offset in pq.inflight.keys() {
            batch.delete_cf(cf, keys::pop_inflight(group, topic, *queue, *offset));
        }
        false
    });
}
