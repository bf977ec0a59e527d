//! openraft's log storage over the `log` column family, which is also the commit log.
//!
//! Durability rules, not up for debate: `append` reports entries flushed only after a synced write
//! (unless the node runs in the explicitly labelled async flush mode), `save_vote` returns only
//! after a synced write, and a record that fails its checksum is a storage error.
//!
//! On a follower, `append` syncs before it returns: openraft answers the leader right after it.
//! On the leader, `append` only writes (the entries are readable at once) and a sync thread
//! reports them flushed: the leader's Raft core (patched, see `vendor/openraft/RAFTMQ-PATCH.md`)
//! replicates them meanwhile and counts its own copy in the majority only once that report
//! comes. One sync covers every append that queued while the previous one ran.
//!
//! `purge` only records how far openraft no longer needs the log: the entries stay, because they
//! hold message bodies that consumers still read. Retention deletes them physically, never past
//! the purge point.
//!
//! The newest entries are also kept in memory ([`EntryCache`]): openraft reads every entry back
//! soon after appending it, to replicate it and to apply it, and serving those reads from memory
//! saves a database read and a decode of every message per read.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogId, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::codec;
use crate::db::{Db, CF_LOG, META_COMMITTED, META_LAST_PURGED, META_VOTE};
use crate::keys;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Whether an appended entry is fsynced before it counts as flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// fsync before acknowledging: an acknowledged message survives any minority of crashes.
    Sync,
    /// Acknowledge once the OS has the data: faster, but a power loss on a majority can lose
    /// acknowledged messages. Only for tests and benchmarks that say so.
    Async,
}

struct Shared {
    db: Arc<Db>,
    flush: FlushMode,
    /// Cached copy of the purge point, read on every log read.
    last_purged: Mutex<Option<LogId>>,
    /// The state machine's applied index.
    applied: tokio::sync::watch::Receiver<u64>,
    cache: SharedCache,
    /// Whether this node leads its group: its appends are synced by `syncer`.
    leading: Leading,
    /// Present in [`FlushMode::Sync`].
    syncer: Option<Syncer>,
}

/// Whether this node is its group's leader, as Raft last reported it. It only chooses where an
/// append is synced: a stale value costs speed for a moment, never durability, because openraft
/// waits for a follower's append to be flushed whichever way it is done.
#[derive(Clone, Default)]
pub struct Leading(Arc<AtomicBool>);

impl Leading {
    pub fn set(&self, leading: bool) {
        self.0.store(leading, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Fault injection for tests: while set, the leader's sync thread holds every flush report, as
/// a hung disk would. A store dropped meanwhile never syncs what was held, as after a power loss.
#[derive(Clone, Default)]
pub struct SyncStall(Arc<(Mutex<StallState>, Condvar)>);

#[derive(Default)]
struct StallState {
    stalled: bool,
    closing: bool,
}

impl SyncStall {
    pub fn set(&self, stalled: bool) {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner()).stalled = stalled;
        self.0 .1.notify_all();
    }

    fn close(&self) {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner()).closing = true;
        self.0 .1.notify_all();
    }

    /// Waits while stalled; false if the store closed meanwhile (nothing is to be synced).
    fn wait(&self) -> bool {
        let mut state = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if !state.stalled {
            return true;
        }
        while state.stalled && !state.closing {
            state = self.0 .1.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        !state.closing
    }
}

/// The thread that syncs the leader's appends, oldest first, as many per WAL sync as queued.
struct Syncer {
    /// Taken only when the syncer is dropped, which closes the channel.
    tx: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stall: SyncStall,
}

impl Syncer {
    fn start(db: Arc<Db>) -> std::io::Result<Syncer> {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let stall = SyncStall::default();
        let held = stall.clone();
        let thread = std::thread::Builder::new()
            .name("raftmq-wal-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    if !held.wait() {
                        // Closed while stalled: the held reports are dropped unsynced.
                        return;
                    }
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let result = db.sync_wal();
                    if let Err(e) = &result {
                        tracing::error!("syncing the log failed: {e}");
                    }
                    for callback in waiting {
                        let result = result.as_ref().map_err(|e| std::io::Error::other(e.to_string()));
                        callback.log_io_completed(result.copied());
                    }
                }
            })?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
            stall,
        })
    }

    /// Queues a flush report; gives the callback back if the thread is gone.
    fn submit(&self, callback: LogFlushed<TypeConfig>) -> Result<(), LogFlushed<TypeConfig>> {
        match &self.tx {
            Some(tx) => tx.send(callback).map_err(|e| e.0),
            None => Err(callback),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // The thread ends once the channel is closed and its queue is done; waiting for it means
        // the database is no longer held when the store is gone (a restart reopens it).
        drop(self.tx.take());
        self.stall.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The entry cache, shared with the state machine (installing a snapshot drops entries).
pub(crate) type SharedCache = Arc<Mutex<EntryCache>>;

/// Most entries, and most bytes as counted by `append` (about twice the record), the cache
/// holds: enough for the entries between appended and applied-everywhere under load (at
/// 130 MiB/s of 4 KiB sends, the last 30 ms or so), small enough to stay out of the memory
/// budget. A slave further behind is served from the database. 8 MiB (was 16) took about 10 MB
/// off a master's peak, with no change in CPU per message (docs/benchmarks.md, session 22).
const CACHE_MAX_ENTRIES: usize = 1024;
const CACHE_MAX_BYTES: usize = 8 << 20;

/// The newest log entries, contiguous by index; what it holds is always identical to what the
/// database holds at those indexes (appends, truncations and purges update both).
#[derive(Default)]
pub(crate) struct EntryCache {
    /// (entry, its encoded size), oldest first.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl EntryCache {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    /// Drops every entry at `index` or later.
    fn truncate_from(&mut self, index: u64) {
        while let Some((last, size)) = self.entries.back() {
            if last.log_id.index < index {
                break;
            }
            self.bytes -= size;
            self.entries.pop_back();
        }
    }

    /// Drops every entry up to `index`.
    pub(crate) fn purge_upto(&mut self, index: u64) {
        while let Some((first, size)) = self.entries.front() {
            if first.log_id.index > index {
                break;
            }
            self.bytes -= size;
            self.entries.pop_front();
        }
    }

    fn push(&mut self, entry: Entry, size: usize) {
        let index = entry.log_id.index;
        // Appends are contiguous; anything else (a gap, an overwrite) restarts the cache there.
        self.truncate_from(index);
        if self
            .entries
            .back()
            .is_some_and(|(last, _)| last.log_id.index + 1 != index)
        {
            self.entries.clear();
            self.bytes = 0;
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > CACHE_MAX_ENTRIES || (self.bytes > CACHE_MAX_BYTES && self.entries.len() > 1) {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    /// The entries `start..end` if the cache holds all of them.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.entries.back()?.0.log_id.index;
        if start < first || end > last + 1 {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end.max(start) - first) as usize;
        Some(self.entries.range(from..to).map(|(e, _)| e.clone()).collect())
    }
}

/// The Raft log store. Cheap to clone; every clone sees the same log.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

/// Decodes one stored log entry; a bad record is an error naming its index. The stored bytes
/// are copied once, whole, and the entry's bodies and its request's encoding are slices of that
/// copy (see [`crate::types::decode_sharing`]): one allocation instead of one per message, and
/// an entry sent on to a slave is not encoded again.
pub fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, codec::CorruptRecord> {
    let whole = bytes::Bytes::copy_from_slice(bytes);
    crate::types::decode_sharing(&whole, || codec::decode(&whole, || format!("log entry {index}")))
}

/// The last purged log id as recorded on disk.
pub(crate) fn stored_last_purged(db: &Db) -> Result<Option<LogId>, StorageError> {
    match db.get_meta(META_LAST_PURGED).map_err(read_err)? {
        Some(bytes) => Ok(Some(
            codec::decode(&bytes, || "last purged log id".into()).map_err(read_err)?,
        )),
        None => Ok(None),
    }
}

impl LogStore {
    pub(crate) fn new(
        db: Arc<Db>,
        flush: FlushMode,
        applied: tokio::sync::watch::Receiver<u64>,
    ) -> Result<Self, StorageError> {
        let last_purged = stored_last_purged(&db)?;
        let syncer = match flush {
            FlushMode::Sync => Some(Syncer::start(db.clone()).map_err(write_err)?),
            FlushMode::Async => None,
        };
        Ok(LogStore {
            shared: Arc::new(Shared {
                db,
                flush,
                last_purged: Mutex::new(last_purged),
                applied,
                cache: SharedCache::default(),
                leading: Leading::default(),
                syncer,
            }),
        })
    }

    fn db(&self) -> &Db {
        &self.shared.db
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, EntryCache> {
        self.shared.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle that tells this store whether its node leads.
    pub(crate) fn leading(&self) -> Leading {
        self.shared.leading.clone()
    }

    /// The fault-injection handle that stalls the leader's syncs (inert in async flush mode).
    pub(crate) fn sync_stall(&self) -> SyncStall {
        self.shared.syncer.as_ref().map(|s| s.stall.clone()).unwrap_or_default()
    }

    pub(crate) fn shared_cache(&self) -> SharedCache {
        self.shared.cache.clone()
    }

    pub(crate) fn last_purged(&self) -> Option<LogId> {
        *self.shared.last_purged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last entry physically present, purged or not.
    pub(crate) fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let mut iter = self.db().db.iterator_cf(self.db().cf(CF_LOG), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item.map_err(read_err)?;
                let index = keys::log_index(&key).unwrap_or_default();
                Ok(Some(decode_entry(index, &value).map_err(read_err)?))
            }
        }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8], what: &str) -> Result<Option<T>, StorageError> {
        match self.db().get_meta(key).map_err(read_err)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes, || what.to_owned()).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db().cf(crate::db::CF_META), key, codec::encode(value));
        self.db().write(batch, sync)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        // Entries up to the purge point are gone as far as openraft is concerned.
        if let Some(purged) = self.last_purged() {
            start = start.max(purged.index + 1);
        }
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(entries) = self.cache().get(start, end) {
            return Ok(entries);
        }
        let db = self.db();
        let from = keys::log(start);
        let iter = db
            .db
            .iterator_cf(db.cf(CF_LOG), IteratorMode::From(&from, Direction::Forward));
        let mut entries = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(read_err)?;
            let index = keys::log_index(&key).ok_or_else(|| {
                read_err(codec::CorruptRecord {
                    what: "log key".into(),
                    reason: format!("{} bytes instead of 8", key.len()),
                })
            })?;
            if !range.contains(&index) {
                break;
            }
            let entry = decode_entry(index, &value)
                .map_err(|e| StorageError::from(StorageIOError::read_log_at_index(index, &e)))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = self.last_purged();
        let last_present = self.last_entry()?.map(|e| *e.get_log_id());
        let last_log_id = match (last_present, last_purged) {
            (Some(present), Some(purged)) if present.index > purged.index => Some(present),
            (present, None) => present,
            (_, purged) => purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(META_VOTE, vote, true)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(META_VOTE, "vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: after a crash openraft learns the commit index from the leader again; the
        // saved value only lets a restarted node re-apply sooner.
        self.write_meta(META_COMMITTED, &committed, false).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(META_COMMITTED, "committed log id")?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let db = self.db();
        let cf = db.cf(CF_LOG);
        let mut batch = WriteBatch::default();
        let mut appended = Vec::new();
        for entry in entries {
            let hint = entry_size_hint(&entry);
            let bytes = codec::encode_sized(&entry, hint);
            batch.put_cf(cf, keys::log(entry.get_log_id().index), &bytes);
            // Cached, the entry holds its decoded commands and, most often, its request's
            // encoding too: about twice the record.
            let held = bytes.len() + hint;
            appended.push((entry, held));
        }
        // A follower's core waits for this append to be flushed before it answers the leader, so
        // the sync is made here, in the one write: handing it to another thread only added two
        // thread wake-ups to every acknowledgement's path. The leader's core goes on at once
        // (replicating these entries) and learns of the flush from the sync thread.
        let syncer = self.shared.syncer.as_ref().filter(|_| self.shared.leading.get());
        let sync = self.shared.flush == FlushMode::Sync && syncer.is_none();
        if let Err(e) = db.write(batch, sync) {
            // The database may hold part of it or none: the cache must not claim either.
            if let Some((first, _)) = appended.first() {
                self.cache().truncate_from(first.log_id.index);
            }
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(write_err(e));
        }
        {
            let mut cache = self.cache();
            for (entry, size) in appended {
                cache.push(entry, size);
            }
        }
        let Some(syncer) = syncer else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        if let Err(callback) = syncer.submit(callback) {
            // The sync thread is gone (the store is being dropped): sync here.
            match db.sync_wal() {
                Ok(()) => callback.log_io_completed(Ok(())),
                Err(e) => {
                    callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                    return Err(write_err(e));
                }
            }
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating the log from here on");
        self.cache().truncate_from(log_id.index);
        let db = self.db();
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(db.cf(CF_LOG), keys::log(log_id.index), keys::log(u64::MAX));
        // The last possible key is excluded by delete_range; delete it too.
        batch.delete_cf(db.cf(CF_LOG), keys::log(u64::MAX));
        db.write(batch, true).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // openraft 0.9 purges up to a snapshot it is installing while the install still runs.
        // Recorded on disk then, a failed install (a full disk) left the log purged past what
        // was applied, with nothing covering the gap, and the node refused to start (found by
        // the chaos suite). Such a purge is recorded by the install itself, in its last batch;
        // here it only changes what this process reports.
        let applied = *self.shared.applied.borrow();
        if log_id.index <= applied {
            self.write_meta(META_LAST_PURGED, &log_id, true).map_err(write_err)?;
        }
        *self.shared.last_purged.lock().unwrap_or_else(|p| p.into_inner()) = Some(log_id);
        self.cache().purge_upto(log_id.index);
        Ok(())
    }
}

/// About the bytes an entry's encoding takes: its request's encoding, plus room for the rest.
pub fn entry_size_hint(entry: &Entry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(request) => request.encoded_len() + 64,
        _ => 256,
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    #[test]
    fn the_cache_serves_only_ranges_it_holds_whole() {
        let mut cache = EntryCache::default();
        assert!(cache.get(1, 2).is_none());
        for i in 1..=5 {
            cache.push(entry(1, i), 10);
        }
        assert_eq!(indexes(&cache.get(2, 4).unwrap()), vec![(1, 2), (1, 3)]);
        assert_eq!(cache.get(3, 3).unwrap().len(), 0);
        assert!(cache.get(0, 3).is_none(), "index 0 is not cached");
        assert!(cache.get(4, 7).is_none(), "index 6 is not cached");
    }

    #[test]
    fn an_overwrite_truncation_or_purge_never_leaves_a_stale_entry() {
        let mut cache = EntryCache::default();
        for i in 1..=5 {
            cache.push(entry(1, i), 10);
        }
        // A new leader overwrites 4..: the old term's 4 and 5 must be gone.
        cache.push(entry(2, 4), 10);
        assert_eq!(indexes(&cache.get(1, 5).unwrap()), vec![(1, 1), (1, 2), (1, 3), (2, 4)]);
        assert!(cache.get(5, 6).is_none());
        cache.truncate_from(3);
        assert!(cache.get(3, 4).is_none());
        cache.purge_upto(1);
        assert!(cache.get(1, 2).is_none());
        assert_eq!(indexes(&cache.get(2, 3).unwrap()), vec![(1, 2)]);
        // A gap restarts the cache at the new entry.
        cache.push(entry(2, 9), 10);
        assert!(cache.get(2, 3).is_none());
        assert_eq!(indexes(&cache.get(9, 10).unwrap()), vec![(2, 9)]);
        assert_eq!(cache.bytes, 10);
    }

    #[test]
    fn the_cache_stays_within_its_bounds() {
        let mut cache = EntryCache::default();
        for i in 1..=(CACHE_MAX_ENTRIES as u64 + 10) {
            cache.push(entry(1, i), 10);
        }
        assert_eq!(cache.entries.len(), CACHE_MAX_ENTRIES);
        assert_eq!(cache.first_index(), Some(11));
        for i in 1..=4 {
            cache.push(entry(1, CACHE_MAX_ENTRIES as u64 + 10 + i), CACHE_MAX_BYTES / 2);
        }
        assert!(cache.bytes <= CACHE_MAX_BYTES, "{} bytes cached", cache.bytes);
        // One entry larger than the bound is still kept: it is the newest.
        cache.push(entry(1, CACHE_MAX_ENTRIES as u64 + 15), CACHE_MAX_BYTES * 2);
        assert_eq!(cache.entries.len(), 1);
    }
}
