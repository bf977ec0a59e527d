//! Reads for clients: messages by (topic, queue, offset), queue bounds, topics and offsets.
//!
//! Every read goes through the consume-queue index, which holds only applied (committed) entries;
//! a body is taken from the commit log and checked against its checksum before it is returned.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use openraft::EntryPayload;
use rocksdb::{Direction, IteratorMode};
use tokio::sync::watch;

use crate::codec::{self, CorruptRecord};
use crate::db::{Db, CF_CQ, CF_KEYS, CF_LOG};
use crate::keys;
use crate::log_store::decode_entry;
use crate::state::{CqEntry, QueueState};
use crate::state_machine::SmShared;
use crate::types::{Entry, TopicConfig};

/// A stored message as readers get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub msg_id: String,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub tags: String,
    pub keys: String,
    pub properties: Vec<(String, String)>,
    /// Shared with the decoded log entry it was read from.
    pub body: bytes::Bytes,
    pub born_timestamp_ms: i64,
    pub store_timestamp_ms: i64,
    pub log_index: u64,
    pub body_crc: u32,
}

impl StoredMessage {
    /// The message as it would be sent again (a copy for a retry or a dead letter).
    pub fn into_message_in(self) -> crate::types::MessageIn {
        crate::types::MessageIn {
            tags: self.tags,
            keys: self.keys,
            properties: self.properties,
            body_crc: self.body_crc,
            // Its own copy: the body read is a slice of a whole log entry, which a message
            // sent again (a retry, a dead letter) would keep alive in the log store's cache.
            body: bytes::Bytes::copy_from_slice(&self.body),
            born_timestamp_ms: self.born_timestamp_ms,
        }
    }
}

/// Which messages a read returns: `tags` judges each message by its tag, from the index alone;
/// `message`, when set, judges those that pass by their tag and properties (it costs a read of
/// the message's log entry, which the next messages of the entry share).
pub struct Wanted<'a> {
    pub tags: &'a dyn Fn(&str) -> bool,
    pub message: Option<&'a PropertyFilter<'a>>,
}

/// Judges a message by its tag and properties.
pub type PropertyFilter<'a> = dyn Fn(&str, &[(String, String)]) -> bool + 'a;

/// What a key query found ([`StoreReader::query_key`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyQuery {
    /// Newest first.
    pub messages: Vec<StoredMessage>,
    pub truncated: bool,
}

/// What a read found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadResult {
    pub messages: Vec<StoredMessage>,
    /// Where the next read should start (past filtered-out messages too).
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Stored data is damaged: the node must not serve it.
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    #[error("database: {0}")]
    Db(#[from] rocksdb::Error),
}

/// Message id: the group's id prefix, the log index and the position in the entry, in hex.
pub fn message_id(prefix: u32, log_index: u64, position: u32) -> String {
    // Every pulled message gets one: written out digit by digit, not through `format!`, which
    // cost a consume from a slave about 4 % of the broker's CPU.
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut id = [0u8; 32];
    let mut put = |at: usize, digits: usize, value: u64| {
        for i in 0..digits {
            id[at + i] = HEX[((value >> (4 * (digits - 1 - i))) & 0xF) as usize];
        }
    };
    put(0, 8, u64::from(prefix));
    put(8, 16, log_index);
    put(24, 8, u64::from(position));
    String::from_utf8(id.to_vec()).expect("hex digits are ASCII")
}

/// Parses a [`message_id`]: the group's prefix, the log index, the position.
pub fn parse_message_id(id: &str) -> Option<(u32, u64, u32)> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((
        u32::from_str_radix(&id[..8], 16).ok()?,
        u64::from_str_radix(&id[8..24], 16).ok()?,
        u32::from_str_radix(&id[24..], 16).ok()?,
    ))
}

/// A read handle on the store. Cheap to clone.
#[derive(Clone)]
pub struct StoreReader {
    db: Arc<Db>,
    shared: Arc<SmShared>,
    id_prefix: u32,
    cache: Arc<Mutex<EntryCache>>,
}

/// Recently decoded commit-log entries. An entry carries many queues' messages (group commit),
/// so consumers of different queues, and consecutive pulls of one, read the same entries: decode
/// each once. Bounded by the entries' stored size.
#[derive(Default)]
struct EntryCache {
    entries: VecDeque<(u64, usize, Arc<Entry>)>,
    bytes: usize,
}

/// The most stored bytes of entries kept decoded: about 100 entries of 80 KB (the size group
/// commit makes under load), enough for consumers of eight queues reading one backlog side by
/// side. 16 MiB held 20-30 MB more on a broker serving a backlog, with the same read rate
/// (docs/benchmarks.md, session 22).
const ENTRY_CACHE_BYTES: usize = 8 << 20;

impl EntryCache {
    fn get(&self, index: u64) -> Option<Arc<Entry>> {
        self.entries
            .iter()
            .find(|(i, _, _)| *i == index)
            .map(|(_, _, e)| e.clone())
    }

    fn put(&mut self, index: u64, size: usize, entry: Arc<Entry>) {
        if self.get(index).is_some() {
            return;
        }
        self.entries.push_back((index, size, entry));
        self.bytes += size;
        while self.bytes > ENTRY_CACHE_BYTES && self.entries.len() > 1 {
            if let Some((_, size, _)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }
}

impl StoreReader {
    pub(crate) fn new(db: Arc<Db>, shared: Arc<SmShared>, id_prefix: u32) -> Self {
        StoreReader {
            db,
            shared,
            id_prefix,
            cache: Arc::default(),
        }
    }

    pub fn id_prefix(&self) -> u32 {
        self.id_prefix
    }

    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        self.shared.read().topics.get(name).cloned()
    }

    pub fn topics(&self) -> Vec<TopicConfig> {
        self.shared.read().topics.values().cloned().collect()
    }

    /// A consumer group's settings: the stored ones, or the defaults.
    pub fn group(&self, name: &str) -> crate::groups::GroupConfig {
        self.shared
            .read()
            .groups
            .get(name)
            .cloned()
            .unwrap_or_else(|| crate::groups::GroupConfig::new(name))
    }

    /// Whether a consumer group is FIFO.
    pub fn is_fifo(&self, group: &str) -> bool {
        self.shared.read().fifo_groups.contains(group)
    }

    /// Every node id the group's membership has held (as applied here), with its last known
    /// addresses.
    pub fn known_nodes(&self) -> BTreeMap<crate::NodeId, crate::BrokerNode> {
        self.shared.read().known_nodes.clone()
    }

    /// A user, by access key.
    pub fn user(&self, access_key: &str) -> Option<raftmq_common::auth::User> {
        self.shared.read().users.get(access_key).cloned()
    }

    /// Every user, by access key.
    pub fn users(&self) -> Vec<raftmq_common::auth::User> {
        self.shared.read().users.values().cloned().collect()
    }

    /// Every group with settings of its own.
    pub fn groups(&self) -> Vec<crate::groups::GroupConfig> {
        self.shared.read().groups.values().cloned().collect()
    }

    pub fn queue_state(&self, topic: &str, queue_id: u32) -> QueueState {
        crate::apply::queue_state(&self.shared.read(), topic, queue_id)
    }

    /// Every queue of every topic with its bounds, sorted.
    pub fn queues(&self) -> Vec<(String, u32, QueueState)> {
        let state = self.shared.read();
        let mut out: Vec<_> = state
            .topics
            .values()
            .flat_map(|t| (0..t.queues()).map(move |q| (t.name.clone(), q)))
            .map(|(t, q)| {
                let s = crate::apply::queue_state(&state, &t, q);
                (t, q, s)
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }

    /// A group's consume offsets, in one topic or all.
    pub fn consume_offsets(&self, group: &str, topic: Option<&str>) -> Vec<(String, u32, u64)> {
        self.shared
            .read()
            .offsets
            .iter()
            .filter(|((g, t, _), _)| g == group && topic.is_none_or(|topic| topic == t))
            .map(|((_, t, q), o)| (t.clone(), *q, *o))
            .collect()
    }

    /// Every committed offset: (group, topic, queue, offset).
    pub fn all_consume_offsets(&self) -> Vec<(String, String, u32, u64)> {
        self.shared
            .read()
            .offsets
            .iter()
            .map(|((g, t, q), o)| (g.clone(), t.clone(), *q, *o))
            .collect()
    }

    /// POP deliveries not yet acknowledged, per (group, topic).
    pub fn pop_inflight(&self) -> Vec<(String, String, usize)> {
        let mut out: Vec<(String, String, usize)> = Vec::new();
        for ((g, t, _), pq) in self.shared.read().pops.iter() {
            match out.last_mut() {
                Some((lg, lt, n)) if lg == g && lt == t => *n += pq.inflight.len(),
                _ => out.push((g.clone(), t.clone(), pq.inflight.len())),
            }
        }
        out
    }

    /// Every group's committed offsets in a topic: (group, queue, offset).
    pub fn topic_consumers(&self, topic: &str) -> Vec<(String, u32, u64)> {
        self.shared
            .read()
            .offsets
            .iter()
            .filter(|((_, t, _), _)| t == topic)
            .map(|((g, _, q), o)| (g.clone(), *q, *o))
            .collect()
    }

    /// A consumer group's POP state in a queue at `now_ms` (see [`crate::pop::view`]).
    pub fn pop_view(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        now_ms: i64,
        max_expired: usize,
    ) -> crate::pop::PopView {
        crate::pop::view(&self.shared.read(), group, topic, queue_id, now_ms, max_expired)
    }

    /// The current delivery named by a lease, if it is current.
    pub fn pop_delivery(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        lease: &crate::types::PopLease,
    ) -> Option<crate::state::Inflight> {
        crate::pop::delivery(&self.shared.read(), group, topic, queue_id, lease)
    }

    /// Up to `limit` delayed messages due at or before `now_ms`, earliest first (after `after`,
    /// when given).
    pub fn due_timers(
        &self,
        after: Option<&crate::timers::Timer>,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<crate::timers::DueTimer>, ReadError> {
        Ok(crate::timers::due(&self.db, after, now_ms, limit)?)
    }

    /// How many delayed messages are pending.
    pub fn pending_timers(&self) -> u64 {
        self.shared.read().timers_pending
    }

    /// Up to `limit` pending transactions whose next check is due at or before `now_ms`,
    /// earliest first.
    pub fn due_txn_checks(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(crate::txns::Txn, crate::txns::Half)>, ReadError> {
        Ok(crate::txns::due_checks(&self.db, now_ms, limit)?)
    }

    /// A pending transaction, as applied here.
    pub fn pending_txn(&self, txn: &crate::txns::Txn) -> Result<Option<crate::txns::Half>, ReadError> {
        Ok(crate::txns::pending(&self.db, txn)?)
    }

    /// How a transaction ended, if it did and its record is not past retention.
    pub fn txn_outcome(&self, txn: &crate::txns::Txn) -> Result<Option<crate::txns::Outcome>, ReadError> {
        Ok(crate::txns::ended(&self.db, txn)?)
    }

    /// Up to `limit` pending transactions, oldest first.
    pub fn list_txns(&self, limit: usize) -> Result<Vec<(crate::txns::Txn, crate::txns::Half)>, ReadError> {
        Ok(crate::txns::list(&self.db, limit)?)
    }

    /// How many transactions are pending.
    pub fn pending_txns(&self) -> u64 {
        self.shared.read().txns_pending
    }

    pub fn applied_index(&self) -> u64 {
        *self.shared.subscribe().borrow()
    }

    /// Changes every time entries are applied.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.shared.subscribe()
    }

    /// Changes whenever the topic table may have changed (not on every applied entry).
    pub fn subscribe_topics(&self) -> watch::Receiver<u64> {
        self.shared.subscribe_topics()
    }

    /// Reads up to `max_messages` messages (and about `max_bytes`, at least one) of a queue from
    /// `offset`, skipping those whose tags `filter` rejects.
    pub fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: u64,
        filter: &dyn Fn(&str) -> bool,
    ) -> Result<ReadResult, ReadError> {
        let wanted = Wanted {
            tags: filter,
            message: None,
        };
        self.read_wanted(topic, queue_id, offset, max_messages, max_bytes, &wanted)
    }

    /// [`read`](Self::read) with a filter that may also look at each message's properties.
    pub fn read_wanted(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: u64,
        wanted: &Wanted<'_>,
    ) -> Result<ReadResult, ReadError> {
        let bounds = self.queue_state(topic, queue_id);
        let start = offset.max(bounds.min_offset);
        let available = bounds.next_offset.saturating_sub(start);
        let mut result = ReadResult {
            messages: Vec::with_capacity(available.min(max_messages as u64).min(1024) as usize),
            next_offset: start,
            min_offset: bounds.min_offset,
            max_offset: bounds.next_offset,
        };
        if result.next_offset >= bounds.next_offset || max_messages == 0 {
            return Ok(result);
        }
        let from = keys::cq(topic, queue_id, result.next_offset);
        let mut expected = from.clone();
        let iter = self
            .db
            .db
            .iterator_cf(self.db.cf(CF_CQ), IteratorMode::From(&from, Direction::Forward));
        let mut bytes = 0u64;
        let mut cached: Option<Arc<Entry>> = None;
        // Bound the work of one read when a filter rejects most messages.
        let scan_limit = max_messages.saturating_mul(64).max(1024);
        for (scanned, item) in iter.enumerate() {
            if result.next_offset >= bounds.next_offset
                || result.messages.len() >= max_messages
                || scanned >= scan_limit
            {
                break;
            }
            let (key, value) = item?;
            // The start key turned into the next offset's, not a new key per message.
            keys::set_cq_offset(&mut expected, result.next_offset);
            if *key != *expected {
                // Retention may have cut the queue since we read its bounds: then the queue
                // moved on, which is no damage. Anything else is a hole in the index.
                let now = self.queue_state(topic, queue_id);
                if now.min_offset > result.next_offset {
                    result.min_offset = now.min_offset;
                    result.next_offset = now.min_offset;
                    return if result.messages.is_empty() {
                        self.read_wanted(topic, queue_id, now.min_offset, max_messages, max_bytes, wanted)
                    } else {
                        Ok(result)
                    };
                }
                return Err(CorruptRecord {
                    what: format!("consume queue {topic}/{queue_id}"),
                    reason: format!("offset {} is missing from the index", result.next_offset),
                }
                .into());
            }
            let cq: CqEntry = codec::decode(&value, || {
                format!("consume queue {topic}/{queue_id} offset {}", result.next_offset)
            })?;
            if !(wanted.tags)(&cq.tags) {
                result.next_offset += 1;
                continue;
            }
            // With a filter on properties, a message is judged before its size counts.
            if wanted.message.is_none() && !result.messages.is_empty() && bytes + cq.body_len as u64 > max_bytes {
                break;
            }
            let message = match self.message_at(topic, queue_id, result.next_offset, &cq, &mut cached, wanted.message) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    result.next_offset += 1;
                    continue;
                }
                // The body went to retention after we read its index entry: the queue moved on.
                Err(e) if self.queue_state(topic, queue_id).min_offset > result.next_offset => {
                    tracing::debug!("read raced with retention: {e}");
                    let min = self.queue_state(topic, queue_id).min_offset;
                    result.min_offset = min;
                    result.next_offset = min;
                    return if result.messages.is_empty() {
                        self.read_wanted(topic, queue_id, min, max_messages, max_bytes, wanted)
                    } else {
                        Ok(result)
                    };
                }
                Err(e) => return Err(e),
            };
            if wanted.message.is_some() && !result.messages.is_empty() && bytes + cq.body_len as u64 > max_bytes {
                break;
            }
            bytes += message.body.len() as u64;
            result.messages.push(message);
            result.next_offset += 1;
        }
        Ok(result)
    }

    /// One message, or `None` when the offset is outside the queue.
    pub fn get(&self, topic: &str, queue_id: u32, offset: u64) -> Result<Option<StoredMessage>, ReadError> {
        let r = self.read(topic, queue_id, offset, 1, u64::MAX, &|_| true)?;
        Ok(r.messages.into_iter().next().filter(|m| m.queue_offset == offset))
    }

    /// The message an id names, from applied entries only: its entry gives its topic and queue,
    /// a binary search of that queue's index its offset. `None` when nothing here is stored
    /// under it: another group's id, an entry not applied yet or removed by retention, a
    /// position past the entry's messages, or a message that is in no queue (a delayed one
    /// before its time; it is stored under an id of its own when due).
    pub fn get_by_id(&self, msg_id: &str) -> Result<Option<StoredMessage>, ReadError> {
        let Some((prefix, index, position)) = parse_message_id(msg_id) else {
            return Ok(None);
        };
        if prefix != self.id_prefix || index == 0 || index > self.applied_index() {
            return Ok(None);
        }
        let Some(raw) = self.db.db.get_pinned_cf(self.db.cf(CF_LOG), keys::log(index))? else {
            return Ok(None);
        };
        let entry = decode_entry(index, &raw)?;
        let EntryPayload::Normal(request) = &entry.payload else {
            return Ok(None);
        };
        let mut first = 0u32;
        let mut place = None;
        for command in request.commands.iter() {
            if let Some((topic, queue_id, messages)) = command.stored_messages() {
                if position >= first && position < first + messages.len() as u32 {
                    place = Some((topic.to_owned(), queue_id));
                    break;
                }
                first += messages.len() as u32;
            }
        }
        let Some((topic, queue_id)) = place else {
            return Ok(None);
        };
        // Index entries go up the log along a queue: search for (index, position).
        let bounds = self.queue_state(&topic, queue_id);
        let (mut lo, mut hi) = (bounds.min_offset, bounds.next_offset);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(value) = self
                .db
                .db
                .get_pinned_cf(self.db.cf(CF_CQ), keys::cq(&topic, queue_id, mid))?
            else {
                lo = mid + 1;
                continue;
            };
            let cq: CqEntry = codec::decode(&value, || format!("consume queue {topic}/{queue_id} offset {mid}"))?;
            match (cq.log_index, cq.position).cmp(&(index, position)) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return self.get(&topic, queue_id, mid),
            }
        }
        Ok(None)
    }

    /// The messages of `topic` with `key` among their keys stored in `[begin_ms, end_ms]`,
    /// newest first, at most `max`, from the key index (applied entries only). `truncated` when
    /// more may match: `max` was reached, or the scan of the key's entries hit its bound.
    pub fn query_key(
        &self,
        topic: &str,
        key: &str,
        begin_ms: i64,
        end_ms: i64,
        max: usize,
    ) -> Result<KeyQuery, ReadError> {
        // Store times follow the log, but a new master's clock may be a little behind the old
        // one's: scan this far past `begin_ms` before concluding nothing older matches.
        const CLOCK_SLACK_MS: i64 = 10 * 60 * 1000;
        const MAX_SCAN: usize = 100_000;
        let prefix = keys::message_key_prefix(topic, key);
        let end = keys::prefix_end(&prefix);
        let iter = self
            .db
            .db
            .iterator_cf(self.db.cf(CF_KEYS), IteratorMode::From(&end, Direction::Reverse));
        let mut out = KeyQuery::default();
        for (scanned, item) in iter.enumerate() {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if out.messages.len() >= max || scanned >= MAX_SCAN {
                out.truncated = true;
                break;
            }
            let Some((log_index, position)) = keys::parse_message_key(&prefix, &k) else {
                continue;
            };
            let hit = crate::key_index::Hit::decode(log_index, position, &v).ok_or_else(|| CorruptRecord {
                what: format!("key index {topic}/{key:?} entry {log_index}.{position}"),
                reason: format!("value of {} bytes", v.len()),
            })?;
            if hit.store_timestamp_ms < begin_ms.saturating_sub(CLOCK_SLACK_MS) {
                break;
            }
            if hit.store_timestamp_ms < begin_ms || hit.store_timestamp_ms > end_ms {
                continue;
            }
            // Retention may have cut the queue since the entry was read: then it is gone.
            let Some(m) = self.get(topic, hit.queue_id, hit.queue_offset)? else {
                continue;
            };
            if m.log_index != log_index || m.msg_id != message_id(self.id_prefix, log_index, position) {
                return Err(CorruptRecord {
                    what: format!("key index {topic}/{key:?} entry {log_index}.{position}"),
                    reason: format!(
                        "points at {topic}/{} offset {}, which holds message {}",
                        hit.queue_id, hit.queue_offset, m.msg_id
                    ),
                }
                .into());
            }
            out.messages.push(m);
        }
        Ok(out)
    }

    /// The first offset of a queue stored at or after `timestamp_ms` (the queue's end if none).
    pub fn search_offset(&self, topic: &str, queue_id: u32, timestamp_ms: i64) -> Result<u64, ReadError> {
        let bounds = self.queue_state(topic, queue_id);
        let (mut lo, mut hi) = (bounds.min_offset, bounds.next_offset);
        // Store timestamps are non-decreasing along a queue (one master clock per term, and the
        // master stamps entries in log order), so a binary search finds the first one.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let key = keys::cq(topic, queue_id, mid);
            let Some(value) = self.db.db.get_cf(self.db.cf(CF_CQ), &key)? else {
                // Removed by retention meanwhile: search above it.
                lo = mid + 1;
                continue;
            };
            let cq: CqEntry = codec::decode(&value, || format!("consume queue {topic}/{queue_id} offset {mid}"))?;
            if cq.store_timestamp_ms < timestamp_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// A decoded commit-log entry, from the cache when there.
    fn entry(&self, topic: &str, queue_id: u32, offset: u64, index: u64) -> Result<Option<Arc<Entry>>, ReadError> {
        if let Some(e) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(index) {
            return Ok(Some(e));
        }
        // Not through the block cache: an entry is decoded once into `self.cache`, so its block
        // would only push the consume-queue blocks, which every read needs, out of the cache.
        let mut once = rocksdb::ReadOptions::default();
        once.fill_cache(false);
        let raw = self
            .db
            .db
            .get_pinned_cf_opt(self.db.cf(CF_LOG), keys::log(index), &once)?
            .ok_or_else(|| CorruptRecord {
                what: format!("commit log entry {index}"),
                reason: format!("missing, but {topic}/{queue_id} offset {offset} points at it"),
            })?;
        let entry = Arc::new(decode_entry(index, &raw)?);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(index, raw.len(), entry.clone());
        Ok(Some(entry))
    }

    fn message_at(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        cq: &CqEntry,
        cached: &mut Option<Arc<Entry>>,
        wanted: Option<&PropertyFilter<'_>>,
    ) -> Result<Option<StoredMessage>, ReadError> {
        if cached.as_ref().is_none_or(|e| e.log_id.index != cq.log_index) {
            *cached = self.entry(topic, queue_id, offset, cq.log_index)?;
        }
        let entry = cached.as_ref().expect("cached above");
        let broken = |reason: String| CorruptRecord {
            what: format!("commit log entry {}", cq.log_index),
            reason,
        };
        let EntryPayload::Normal(request) = &entry.payload else {
            return Err(broken("holds no messages".into()).into());
        };
        let mut first = 0u32;
        for command in request.commands.iter() {
            let Some((t, q, messages)) = command.stored_messages() else {
                continue;
            };
            let count = messages.len() as u32;
            if cq.position >= first && cq.position < first + count {
                if t != topic || q != queue_id {
                    return Err(broken(format!(
                        "position {} is {t}/{q}, the index says {topic}/{queue_id}",
                        cq.position
                    ))
                    .into());
                }
                let m = &messages[(cq.position - first) as usize];
                if wanted.is_some_and(|wanted| !wanted(&m.tags, &m.properties)) {
                    return Ok(None);
                }
                if crc32fast::hash(&m.body) != m.body_crc {
                    return Err(broken(format!("body checksum mismatch at {topic}/{queue_id} offset {offset}")).into());
                }
                return Ok(Some(StoredMessage {
                    msg_id: message_id(self.id_prefix, cq.log_index, cq.position),
                    topic: topic.to_owned(),
                    queue_id,
                    queue_offset: offset,
                    tags: m.tags.clone(),
                    keys: m.keys.clone(),
                    properties: m.properties.clone(),
                    body: m.body.clone(), // a reference count, not a copy
                    born_timestamp_ms: m.born_timestamp_ms,
                    store_timestamp_ms: request.store_timestamp_ms,
                    log_index: cq.log_index,
                    body_crc: m.body_crc,
                }));
            }
            first += count;
        }
        Err(broken(format!("no message at position {}", cq.position)).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_is_the_three_fields_in_upper_case_hex() {
        for (prefix, index, position) in [
            (0, 0, 0),
            (0xDEAD_BEEF, 0x0123_4567_89AB_CDEF, 7),
            (u32::MAX, u64::MAX, u32::MAX),
        ] {
            let id = message_id(prefix, index, position);
            assert_eq!(id, format!("{prefix:08X}{index:016X}{position:08X}"));
            assert_eq!(parse_message_id(&id), Some((prefix, index, position)));
        }
    }
}
