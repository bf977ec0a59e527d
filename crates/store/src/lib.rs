//! RocksDB storage of one broker node: the Raft log, which is also the commit log, and the state
//! machine, which indexes it.
//!
//! Each message body is stored once, inside the Raft entry that carried it. The state machine
//! keeps only the consume-queue index (queue offset → log position), queue bounds, topics and
//! consume offsets. Opening a store checks that nothing committed is damaged or went backwards;
//! it refuses to open rather than let a damaged node vote.

// openraft's `StorageError` is large, and its storage traits impose it as the error type; boxing
// it only in our helpers would add a conversion at every call for nothing.
#![allow(clippy::result_large_err)]

pub mod apply;
pub mod codec;
pub mod db;
pub mod disk;
pub mod groups;
pub mod key_index;
pub mod keys;
pub mod log_store;
pub mod pop;
pub mod queues;
pub mod reader;
pub mod retention;
pub mod snapshot;
pub mod state;
pub mod state_machine;
pub mod timers;
pub mod txns;
pub mod types;
pub mod users;

use std::path::{Path, PathBuf};

use openraft::RaftLogId;
use rocksdb::IteratorMode;

pub use log_store::{FlushMode, Leading, LogStore, SyncStall};
pub use reader::{KeyQuery, ReadError, ReadResult, StoreReader, StoredMessage, Wanted};
pub use retention::{Retention, RetentionReport};
pub use state_machine::StateMachine;
pub use types::*;

use crate::db::{Db, CF_LOG, META_COMMITTED, META_INSTALLING, META_VOTE};
use crate::state::SmState;
use crate::state_machine::SmShared;

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub flush: FlushMode,
    /// First part of every message id, telling broker groups apart.
    pub id_prefix: u32,
    /// Record after every WAL sync how much of the WAL is synced (see
    /// [`db::SYNCED_WAL_MARK`]); for fault injection only.
    pub mark_synced_wal: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            flush: FlushMode::Sync,
            id_prefix: 0,
            mark_synced_wal: false,
        }
    }
}

/// Why a store could not be opened. Every variant means: do not start this node as it is.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the database in {path}: {source}")]
    Db { path: String, source: rocksdb::Error },
    #[error("cannot use the data directory {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("corrupted data in {path}: {detail}; the node refuses to start (restore this node from a replica: wipe the directory and let it rejoin as a new node)")]
    Corrupt { path: String, detail: String },
    #[error("data in {path} went backwards: {detail}; the node refuses to start")]
    WentBackwards { path: String, detail: String },
    #[error("the store in {path} is in format {found}, and this build reads format {expected} only; the node refuses to start (run the build that wrote it, or wipe the directory and let the node rejoin its group as a new node)")]
    Format { path: String, found: u32, expected: u32 },
}

/// An opened store: the halves openraft takes, and a reader for clients.
pub struct Store {
    pub log: LogStore,
    pub state_machine: StateMachine,
    pub reader: StoreReader,
    pub retention: Retention,
    /// The database itself, for [`flush_memtables`] at a clean stop.
    pub db: std::sync::Arc<Db>,
    /// Set while this node leads its group (see [`Leading`]).
    pub leading: Leading,
    /// Fault injection: stalls the syncs of this node's appends while it leads.
    pub sync_stall: SyncStall,
}

/// Writes every memtable to disk. Nothing needs it for durability (the WAL is synced), but a
/// store closed after it opens without replaying the WAL: a clean restart with a large log
/// takes a tenth of the time.
pub fn flush_memtables(db: &Db) -> Result<(), rocksdb::Error> {
    for name in db::ALL_CFS {
        db.db.flush_cf(db.cf(name))?;
    }
    db.mark_after_flush()
}

/// What the recovery checks found, for the start-up log line.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub entries_checked: u64,
}

impl Store {
    /// Opens (or creates) the store in `dir` and runs the recovery checks.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<(Store, Recovered), OpenError> {
        let shown = dir.display().to_string();
        let io = |source| OpenError::Io {
            path: shown.clone(),
            source,
        };
        let snapshot_dir: PathBuf = dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir).map_err(io)?;
        let db = Db::open(&dir.join("db")).map_err(|source| OpenError::Db {
            path: shown.clone(),
            source,
        })?;
        if options.mark_synced_wal {
            db.enable_synced_wal_mark();
        }
        let corrupt = |detail: String| OpenError::Corrupt {
            path: shown.clone(),
            detail,
        };

        let format = store_format(&db).map_err(corrupt)?;
        if format != db::STORE_FORMAT {
            return Err(OpenError::Format {
                path: shown,
                found: format,
                expected: db::STORE_FORMAT,
            });
        }
        let recovered = check_log(&db).map_err(corrupt)?;
        if let Some(bytes) = db.get_meta(META_VOTE).map_err(|e| corrupt(e.to_string()))? {
            codec::decode::<Vote>(&bytes, || "vote".into()).map_err(|e| corrupt(e.to_string()))?;
        }
        let state = SmState::load(&db).map_err(|e| corrupt(e.to_string()))?;
        let shared = SmShared::new(state);
        let log = LogStore::new(db.clone(), options.flush, shared.subscribe()).map_err(|e| corrupt(e.to_string()))?;

        // An install interrupted by a crash is finished from its (synced) file first.
        if let Some(bytes) = db.get_meta(META_INSTALLING).map_err(|e| corrupt(e.to_string()))? {
            let meta: SnapshotMeta =
                codec::decode(&bytes, || "snapshot install marker".into()).map_err(|e| corrupt(e.to_string()))?;
            tracing::warn!(snapshot = %meta.snapshot_id, "finishing a snapshot install interrupted by a crash");
            let path = snapshot::file_name(&snapshot_dir, &meta);
            state_machine::install_from_file(&db, &shared, &path, &meta, &log.shared_cache())
                .map_err(|e| corrupt(format!("redoing snapshot install: {e}")))?;
        }
        let current = match db.get_meta(db::META_SNAPSHOT).map_err(|e| corrupt(e.to_string()))? {
            Some(bytes) => Some(
                codec::decode::<SnapshotMeta>(&bytes, || "snapshot meta".into()).map_err(|e| corrupt(e.to_string()))?,
            ),
            None => None,
        };
        state_machine::clean_snapshot_dir(&snapshot_dir, current.as_ref().map(|m| m.snapshot_id.as_str()), true);

        // Nothing went backwards: the log still reaches what was applied and committed.
        let applied = shared.read().applied;
        let log_end = recovered
            .last_index
            .max(log.last_purged().map(|l| l.index))
            .max(current.as_ref().and_then(|m| m.last_log_id.map(|l| l.index)));
        if let Some(applied) = applied {
            if log_end.is_none_or(|end| applied.index > end) {
                return Err(OpenError::WentBackwards {
                    path: shown,
                    detail: format!("entry {} was applied but the log ends at {log_end:?}", applied.index),
                });
            }
        }
        if let Some(bytes) = db.get_meta(META_COMMITTED).map_err(|e| corrupt(e.to_string()))? {
            let committed: Option<LogId> =
                codec::decode(&bytes, || "committed log id".into()).map_err(|e| corrupt(e.to_string()))?;
            if let Some(committed) = committed {
                if log_end.is_none_or(|end| committed.index > end) {
                    return Err(OpenError::WentBackwards {
                        path: shown,
                        detail: format!(
                            "entry {} was committed but the log ends at {log_end:?}",
                            committed.index
                        ),
                    });
                }
            }
        }
        if let Some(purged) = log_store::stored_last_purged(&db).map_err(|e| corrupt(e.to_string()))? {
            if applied.is_none_or(|a| a.index < purged.index) {
                return Err(OpenError::WentBackwards {
                    path: shown,
                    detail: format!(
                        "the log is purged up to {} but only {:?} was applied",
                        purged.index,
                        applied.map(|a| a.index)
                    ),
                });
            }
        }

        let reader = StoreReader::new(db.clone(), shared.clone(), options.id_prefix);
        let retention = Retention {
            db: db.clone(),
            shared: shared.clone(),
            log: log.clone(),
        };
        let db_handle = db.clone();
        let state_machine = StateMachine::new(db, shared, snapshot_dir, log.shared_cache());
        let recovered = Recovered {
            applied_index: applied.map(|a| a.index),
            ..recovered
        };
        Ok((
            Store {
                leading: log.leading(),
                sync_stall: log.sync_stall(),
                log,
                state_machine,
                reader,
                retention,
                db: db_handle,
            },
            recovered,
        ))
    }
}

/// The store's format, recording this build's in a new store. A store with data and no recorded
/// format was written in format 1.
fn store_format(db: &Db) -> Result<u32, String> {
    if let Some(bytes) = db.get_meta(db::META_FORMAT).map_err(|e| e.to_string())? {
        return codec::decode::<u32>(&bytes, || "store format".into()).map_err(|e| e.to_string());
    }
    let used = |cf| db.db.iterator_cf(db.cf(cf), IteratorMode::Start).next().is_some();
    if used(CF_LOG) || used(db::CF_META) {
        return Ok(1);
    }
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(db.cf(db::CF_META), db::META_FORMAT, codec::encode(&db::STORE_FORMAT));
    db.write(batch, true).map_err(|e| e.to_string())?;
    Ok(db::STORE_FORMAT)
}

/// Verifies every log record's checksum and that the indexes are contiguous.
fn check_log(db: &Db) -> Result<Recovered, String> {
    let mut recovered = Recovered::default();
    let mut expected: Option<u64> = None;
    for item in db
        .db
        .iterator_cf_opt(db.cf(CF_LOG), crate::db::read_once(), IteratorMode::Start)
    {
        let (key, value) = item.map_err(|e| e.to_string())?;
        let index = keys::log_index(&key).ok_or_else(|| format!("a log key of {} bytes", key.len()))?;
        if let Some(expected) = expected {
            if index != expected {
                return Err(format!("log entry {expected} is missing (the next present is {index})"));
            }
        }
        codec::verify(&value, &|| format!("log entry {index}")).map_err(|e| e.to_string())?;
        recovered.first_index.get_or_insert(index);
        recovered.last_index = Some(index);
        recovered.entries_checked += 1;
        expected = Some(index + 1);
    }
    // The last entry must also decode: it is what openraft reads first.
    if let Some(last) = recovered.last_index {
        let raw = db
            .db
            .get_cf(db.cf(CF_LOG), keys::log(last))
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let entry = log_store::decode_entry(last, &raw).map_err(|e| e.to_string())?;
        if entry.get_log_id().index != last {
            return Err(format!(
                "log entry stored at {last} says it is {}",
                entry.get_log_id().index
            ));
        }
    }
    Ok(recovered)
}

/// Computes the checksum a message body is stored with.
pub fn body_crc(body: &[u8]) -> u32 {
    crc32fast::hash(body)
}
