//! Consumer groups: their settings (how often a failed message is retried, and after which
//! delays) and their system topics, `%RETRY%<group>` for messages waiting to be consumed again
//! and `%DLQ%<group>` for those that used up their retries.
//!
//! Settings are replicated state like topics: every node answers them, and a new master applies
//! the same retry rules. A message sent back for a retry is stored once, in the entry that sends
//! it back, as a pending timer on the group's retry topic (the timer machinery of delayed
//! messages delivers it), or appended to the dead-letter topic at once.

use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::db::{Db, CF_GROUPS, CF_TOPICS};
use crate::queues::{append, At};
use crate::state::SmState;
use crate::timers::{self, MAX_DELAY_MS};
use crate::types::{perm, CommandResult, MessageIn, Rejection, TopicConfig};

/// The retry topic of a consumer group, as RocketMQ names it.
pub fn retry_topic(group: &str) -> String {
    format!("%RETRY%{group}")
}

/// The dead-letter topic of a consumer group, as RocketMQ names it.
pub fn dead_letter_topic(group: &str) -> String {
    format!("%DLQ%{group}")
}

/// RocketMQ's retry delays for the n-th reconsume: `10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m
/// 30m 1h 2h` (its delay levels 3 to 18); past the last, the last.
pub const DEFAULT_BACKOFF_MS: [u64; 16] = [
    10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000, 480_000, 540_000, 600_000, 1_200_000,
    1_800_000, 3_600_000, 7_200_000,
];

/// RocketMQ's default number of retries before a message is dead-lettered.
pub const DEFAULT_MAX_RECONSUME_TIMES: u32 = 16;
/// Most retries a group may ask for.
pub const MAX_RECONSUME_TIMES: u32 = 1000;
/// Most delays a table may list.
const MAX_TABLE: usize = 64;

/// How long a message waits before its n-th retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backoff {
    /// The n-th retry waits the n-th delay (ms); past the table's end, its last.
    Table(Vec<u64>),
    /// `initial_ms * multiplier^(n-1)`, at most `max_ms`.
    Exponential {
        initial_ms: u64,
        max_ms: u64,
        multiplier: u32,
    },
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::Table(DEFAULT_BACKOFF_MS.to_vec())
    }
}

impl Backoff {
    /// The delay before retry `n` (1 for the first retry).
    pub fn delay_ms(&self, n: u32) -> u64 {
        let n = n.max(1);
        match self {
            Backoff::Table(table) => table
                .get(n as usize - 1)
                .or(table.last())
                .copied()
                .unwrap_or(DEFAULT_BACKOFF_MS[0]),
            Backoff::Exponential {
                initial_ms,
                max_ms,
                multiplier,
            } => {
                let mut d = *initial_ms;
                for _ in 1..n {
                    d = d.saturating_mul(*multiplier as u64);
                    if d >= *max_ms {
                        break;
                    }
                }
                d.min(*max_ms)
            }
        }
    }
}

/// A consumer group's settings; a group without stored settings has the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GroupConfig {
    pub name: String,
    /// Retries of a failed message before it is dead-lettered; `None` for the broker's default.
    pub max_reconsume_times: Option<u32>,
    /// The delays between retries; `None` for RocketMQ's table ([`DEFAULT_BACKOFF_MS`]).
    pub backoff: Option<Backoff>,
}

impl GroupConfig {
    /// The settings of a group that has none stored.
    pub fn new(name: &str) -> Self {
        GroupConfig {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    pub fn backoff(&self) -> Backoff {
        self.backoff.clone().unwrap_or_default()
    }
}

/// Checks a group's settings; the master runs the same check before proposing.
pub fn check(config: &GroupConfig) -> Result<(), String> {
    raftmq_common::validate::name("consumer group", &config.name).map_err(|e| e.to_string())?;
    if config.name.starts_with('%') {
        return Err(format!(
            "field `consumer group`: {:?} is a system name (starts with %)",
            config.name
        ));
    }
    if let Some(n) = config.max_reconsume_times.filter(|n| *n > MAX_RECONSUME_TIMES) {
        return Err(format!(
            "field `max_reconsume_times`: {n} is above {MAX_RECONSUME_TIMES}"
        ));
    }
    let in_range = |ms: u64| (1..=MAX_DELAY_MS as u64).contains(&ms);
    match &config.backoff {
        None => {}
        Some(Backoff::Table(table)) => {
            if table.is_empty() || table.len() > MAX_TABLE {
                return Err(format!(
                    "field `backoff`: a table of 1 to {MAX_TABLE} delays, not {}",
                    table.len()
                ));
            }
            if let Some(bad) = table.iter().find(|ms| !in_range(**ms)) {
                return Err(format!("field `backoff`: a delay of {bad} ms is outside 1 ms..30 days"));
            }
        }
        Some(Backoff::Exponential {
            initial_ms,
            max_ms,
            multiplier,
        }) => {
            if !in_range(*initial_ms) || !in_range(*max_ms) || max_ms < initial_ms {
                return Err(format!(
                    "field `backoff`: initial {initial_ms} ms and max {max_ms} ms must be within 1 ms..30 days, initial <= max"
                ));
            }
            if !(1..=100).contains(multiplier) {
                return Err(format!("field `backoff`: multiplier {multiplier} is outside 1..=100"));
            }
        }
    }
    Ok(())
}

/// Stores a group's settings.
pub(crate) fn update(db: &Db, state: &mut SmState, batch: &mut WriteBatch, config: &GroupConfig) -> CommandResult {
    if let Err(e) = check(config) {
        return CommandResult::Rejected(Rejection::InvalidArgument, e);
    }
    batch.put_cf(db.cf(CF_GROUPS), config.name.as_bytes(), codec::encode(config));
    state.groups.insert(config.name.clone(), config.clone());
    CommandResult::Done
}

/// Where a group's FIFO mark is kept: in the groups' column family, under a key no group name
/// can be (names never hold a NUL), so the settings' own records keep their format.
pub(crate) fn fifo_key(group: &str) -> Vec<u8> {
    let mut k = FIFO_PREFIX.to_vec();
    k.extend_from_slice(group.as_bytes());
    k
}

/// The prefix of [`fifo_key`]s.
pub(crate) const FIFO_PREFIX: &[u8] = b"\0fifo\0";

/// Marks a group FIFO (or not).
pub(crate) fn set_fifo(db: &Db, state: &mut SmState, batch: &mut WriteBatch, group: &str, fifo: bool) -> CommandResult {
    if let Err(e) = raftmq_common::validate::name("consumer group", group) {
        return CommandResult::Rejected(Rejection::InvalidArgument, e.to_string());
    }
    if fifo {
        batch.put_cf(db.cf(CF_GROUPS), fifo_key(group), codec::encode(&true));
        state.fifo_groups.insert(group.to_owned());
    } else {
        batch.delete_cf(db.cf(CF_GROUPS), fifo_key(group));
        state.fifo_groups.remove(group);
    }
    CommandResult::Done
}

/// The prefix of the records of node ids the group's membership has held (in the groups' column
/// family, as FIFO marks, so that snapshots carry them).
pub(crate) const NODE_PREFIX: &[u8] = b"\0node\0";

/// Records every node of a membership entry being applied as known: its id is never reused.
pub(crate) fn remember_nodes(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    nodes: impl IntoIterator<Item = (crate::NodeId, crate::BrokerNode)>,
) {
    for (id, node) in nodes {
        if state.known_nodes.get(&id) == Some(&node) {
            continue;
        }
        let mut key = NODE_PREFIX.to_vec();
        key.extend_from_slice(&id.to_be_bytes());
        batch.put_cf(db.cf(CF_GROUPS), key, codec::encode(&node));
        state.known_nodes.insert(id, node);
    }
}

/// The prefix of the keys of queue locks (in the groups' column family, as FIFO marks).
pub(crate) const LOCK_PREFIX: &[u8] = b"\0lock\0";

/// Longest lock lease.
pub const MAX_LOCK_LEASE_MS: u64 = 10 * 60 * 1000;

fn lock_key(group: &str, topic: &str, queue: u32) -> Vec<u8> {
    let mut k = LOCK_PREFIX.to_vec();
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&queue.to_be_bytes());
    k
}

/// Parses a lock key back to (group, topic, queue).
pub(crate) fn parse_lock_key(key: &[u8]) -> Option<(String, String, u32)> {
    let rest = key.strip_prefix(LOCK_PREFIX)?;
    let (names, queue) = rest.split_at(rest.len().checked_sub(5)?);
    let (sep, queue) = queue.split_first()?;
    if *sep != 0 {
        return None;
    }
    let mut parts = names.splitn(2, |b| *b == 0);
    let group = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let topic = String::from_utf8(parts.next()?.to_vec()).ok()?;
    Some((group, topic, u32::from_be_bytes(queue.try_into().ok()?)))
}

/// A queue lock: who holds it, and until when (an entry time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLock {
    pub client_id: String,
    pub expires_ms: i64,
}

/// Grants the member every queue no other member holds a valid lock on at `now_ms` (the
/// entry's time), until `now_ms + lease_ms`.
pub(crate) fn lock_queues(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    now_ms: i64,
    (group, topic, client_id): (&str, &str, &str),
    queues: &[u32],
    lease_ms: u64,
) -> CommandResult {
    if client_id.is_empty() || client_id.len() > 255 || lease_ms == 0 || lease_ms > MAX_LOCK_LEASE_MS {
        return CommandResult::Rejected(
            Rejection::InvalidArgument,
            format!("a lock needs a client id of 1 to 255 bytes and a lease of 1 to {MAX_LOCK_LEASE_MS} ms"),
        );
    }
    let mut granted = Vec::new();
    for &queue in queues {
        let key = (group.to_owned(), topic.to_owned(), queue);
        let free = match state.queue_locks.get(&key) {
            None => true,
            Some(l) => l.client_id == client_id || l.expires_ms <= now_ms,
        };
        if !free {
            continue;
        }
        let lock = QueueLock {
            client_id: client_id.to_owned(),
            expires_ms: now_ms.saturating_add(lease_ms as i64),
        };
        batch.put_cf(db.cf(CF_GROUPS), lock_key(group, topic, queue), codec::encode(&lock));
        state.queue_locks.insert(key, lock);
        granted.push(queue);
    }
    CommandResult::Locked(granted)
}

/// Releases the member's locks on the queues.
pub(crate) fn unlock_queues(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    (group, topic, client_id): (&str, &str, &str),
    queues: &[u32],
) -> CommandResult {
    for &queue in queues {
        let key = (group.to_owned(), topic.to_owned(), queue);
        if state.queue_locks.get(&key).is_some_and(|l| l.client_id == client_id) {
            batch.delete_cf(db.cf(CF_GROUPS), lock_key(group, topic, queue));
            state.queue_locks.remove(&key);
        }
    }
    CommandResult::Done
}

/// Creates a group's system topic on first use, as RocketMQ does: one queue, readable and
/// writable, so it can be consumed and inspected like any topic.
pub(crate) fn ensure_system_topic(db: &Db, state: &mut SmState, batch: &mut WriteBatch, name: &str) {
    if state.topics.contains_key(name) {
        return;
    }
    let config = TopicConfig {
        name: name.to_owned(),
        write_queues: 1,
        read_queues: 1,
        permission: perm::READ_WRITE,
    };
    batch.put_cf(db.cf(CF_TOPICS), name.as_bytes(), codec::encode(&config));
    state.topics.insert(name.to_owned(), config);
}

/// Stores a message a consumer of `group` failed: as a timer on the group's retry topic due at
/// `due_ms`, or (without a due time) appended to its dead-letter topic.
pub(crate) fn send_back(
    db: &Db,
    state: &mut SmState,
    batch: &mut WriteBatch,
    at: &At,
    (group, topic): (&str, &str),
    due_ms: Option<i64>,
    message: &MessageIn,
) -> CommandResult {
    let expected = match due_ms {
        Some(_) => retry_topic(group),
        None => dead_letter_topic(group),
    };
    if topic != expected {
        return CommandResult::Rejected(
            Rejection::InvalidArgument,
            format!("a message of group {group} is sent back to {expected}, not {topic}"),
        );
    }
    // A group name valid alone may be too long with the prefix.
    if let Err(e) = raftmq_common::validate::name("system topic", topic) {
        return CommandResult::Rejected(Rejection::InvalidArgument, e.to_string());
    }
    ensure_system_topic(db, state, batch, topic);
    match due_ms {
        Some(due) => timers::schedule(db, state, batch, at, (topic, 0), due, message),
        None => append(db, state, batch, at, (topic, 0), std::slice::from_ref(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_round_trip() {
        let k = lock_key("g", "T%x", 7);
        assert_eq!(parse_lock_key(&k), Some(("g".into(), "T%x".into(), 7)));
        assert_eq!(parse_lock_key(b"\0lock\0"), None);
    }

    #[test]
    fn backoff_follows_the_table_then_stays_at_its_end() {
        let b = Backoff::default();
        assert_eq!(b.delay_ms(1), 10_000);
        assert_eq!(b.delay_ms(2), 30_000);
        assert_eq!(b.delay_ms(16), 7_200_000);
        assert_eq!(b.delay_ms(40), 7_200_000);
        let e = Backoff::Exponential {
            initial_ms: 100,
            max_ms: 1_000,
            multiplier: 3,
        };
        assert_eq!([1, 2, 3, 4, 100].map(|n| e.delay_ms(n)), [100, 300, 900, 1_000, 1_000]);
    }

    #[test]
    fn bad_settings_are_refused() {
        let ok = GroupConfig::new("g");
        assert!(check(&ok).is_ok());
        for bad in [
            GroupConfig::new("%RETRY%g"),
            GroupConfig::new("a b"),
            GroupConfig {
                max_reconsume_times: Some(MAX_RECONSUME_TIMES + 1),
                ..ok.clone()
            },
            GroupConfig {
                backoff: Some(Backoff::Table(vec![])),
                ..ok.clone()
            },
            GroupConfig {
                backoff: Some(Backoff::Table(vec![0])),
                ..ok.clone()
            },
            GroupConfig {
                backoff: Some(Backoff::Exponential {
                    initial_ms: 10,
                    max_ms: 5,
                    multiplier: 2,
                }),
                ..ok.clone()
            },
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }
}
