//! openraft's log storage over the `log` column family, which is also the commit log.
//!
//! Durability rules, not up for debate: `append` reports entries flushed only after a synced write
//! (unless the node runs in the explicitly labelled async flush mode), `save_vote` returns only
//! after a synced write, and a record that fails its checksum is a storage error.
//!
//! `purge` only records how far openraft no longer needs the log: the entries stay, because they
//! hold message bodies that consumers still read. Retention deletes them physically, never past
//! the purge point.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

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
    /// Appended-but-not-yet-synced batches wait here for the syncer thread.
    syncer: Mutex<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>>,
}

/// Syncs the WAL off openraft's core task and reports appends flushed only after that.
///
/// An append writes its batch without sync (so the entries are readable at once, as openraft
/// requires) and hands its callback here. One fsync of the WAL covers every write made before
/// it, so the thread takes every callback waiting, syncs once, then reports them all: group
/// commit at the disk, and the Raft core never blocks on an fsync.
///
/// It holds the database weakly: the store's owner decides when the database closes, never this
/// thread (a database closed by a thread racing process exit aborts the process).
fn run_syncer(db: std::sync::Weak<Db>, rx: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let synced = match db.upgrade() {
            Some(db) => db.synced(|| db.db.flush_wal(true)).map_err(|e| e.to_string()),
            None => Err("the database is closed".to_string()),
        };
        match synced {
            Ok(()) => {
                for callback in waiting {
                    callback.log_io_completed(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!("syncing the Raft log failed: {e}");
                for callback in waiting {
                    callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                }
            }
        }
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

/// Decodes one stored log entry; a bad record is an error naming its index.
pub fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, codec::CorruptRecord> {
    codec::decode(bytes, || format!("log entry {index}"))
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>, flush: FlushMode) -> Result<Self, StorageError> {
        let last_purged = match db.get_meta(META_LAST_PURGED).map_err(read_err)? {
            Some(bytes) => Some(codec::decode(&bytes, || "last purged log id".into()).map_err(read_err)?),
            None => None,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let sync_db = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("raftmq-log-sync".into())
            .spawn(move || run_syncer(sync_db, rx))
            .map_err(write_err)?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                db,
                flush,
                last_purged: Mutex::new(last_purged),
                syncer: Mutex::new(tx),
            }),
        })
    }

    fn db(&self) -> &Db {
        &self.shared.db
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
        for entry in entries {
            batch.put_cf(cf, keys::log(entry.get_log_id().index), codec::encode(&entry));
        }
        // Written unsynced: readable now; durable when the syncer has synced the WAL.
        if let Err(e) = db.write(batch, false) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(write_err(e));
        }
        match self.shared.flush {
            FlushMode::Async => callback.log_io_completed(Ok(())),
            FlushMode::Sync => {
                let sent = self
                    .shared
                    .syncer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .send(callback);
                if let Err(std::sync::mpsc::SendError(callback)) = sent {
                    callback.log_io_completed(Err(std::io::Error::other("the log syncer stopped")));
                    return Err(write_err(std::io::Error::other("the log syncer stopped")));
                }
            }
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating the log from here on");
        let db = self.db();
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(db.cf(CF_LOG), keys::log(log_id.index), keys::log(u64::MAX));
        // The last possible key is excluded by delete_range; delete it too.
        batch.delete_cf(db.cf(CF_LOG), keys::log(u64::MAX));
        db.write(batch, true).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write_meta(META_LAST_PURGED, &log_id, true).map_err(write_err)?;
        *self.shared.last_purged.lock().unwrap_or_else(|p| p.into_inner()) = Some(log_id);
        Ok(())
    }
}
