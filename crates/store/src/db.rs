//! The node's one RocksDB instance and its column families.
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `log` | index | Raft entry: the commit log, each message body stored here once |
//! | `meta` | name | vote, committed, last purged, applied log id, membership, snapshot meta |
//! | `topics` | name | topic config |
//! | `queues` | topic, queue | min and next offset |
//! | `cq` | topic, queue, offset | consume-queue entry: where the message sits in the log |
//! | `offsets` | group, topic, queue | consume offset |
//! | `pop` | group, topic, queue [, offset] | POP cursor, or one delivery in flight |

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

pub const CF_LOG: &str = "log";
pub const CF_META: &str = "meta";
pub const CF_TOPICS: &str = "topics";
pub const CF_QUEUES: &str = "queues";
pub const CF_CQ: &str = "cq";
pub const CF_OFFSETS: &str = "offsets";
pub const CF_POP: &str = "pop";
pub const ALL_CFS: [&str; 7] = [CF_LOG, CF_META, CF_TOPICS, CF_QUEUES, CF_CQ, CF_OFFSETS, CF_POP];

pub const META_VOTE: &[u8] = b"vote";
pub const META_COMMITTED: &[u8] = b"committed";
pub const META_LAST_PURGED: &[u8] = b"last_purged";
pub const META_APPLIED: &[u8] = b"applied";
pub const META_MEMBERSHIP: &[u8] = b"membership";
pub const META_SNAPSHOT: &[u8] = b"snapshot";
pub const META_INSTALLING: &[u8] = b"installing";

/// Write buffer (memtable) of the log family, where every message body lands first.
pub const LOG_WRITE_BUFFER_BYTES: usize = 64 << 20;

/// Most WAL kept before the families holding the oldest WAL file are flushed: two of the log
/// family's write buffers.
pub const MAX_TOTAL_WAL_BYTES: u64 = 2 * LOG_WRITE_BUFFER_BYTES as u64;

/// Kept when [`Db::enable_synced_wal_mark`] was called (fault injection).
pub use raftmq_common::SYNCED_WAL_MARK;

/// The opened database, shared by the log store, the state machine and readers.
pub struct Db {
    pub db: DB,
    mark_enabled: AtomicBool,
    /// The highest (WAL file number, length) known synced.
    mark: Mutex<Option<(u64, u64)>>,
}

/// The newest WAL file of a RocksDB directory: (number, length).
fn newest_wal(dir: &Path) -> Option<(u64, u64)> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let number: u64 = name.strip_suffix(".log")?.parse().ok()?;
            Some((number, e.metadata().ok()?.len()))
        })
        .max()
}

impl Db {
    pub fn open(path: &Path) -> Result<Arc<Db>, rocksdb::Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Bounded background work: this runs beside the broker on small machines.
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        // A WAL file is deleted only once every family with data in it has flushed, and the small
        // families (meta, queues, consume queue, offsets) fill their write buffers slowly: left
        // alone, every message body stayed in the WAL until about 1.8 GB of it had built up,
        // doubling the disk used and replayed in full after a crash. Past this total, RocksDB
        // flushes the families holding the oldest WAL so it can go.
        opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut cf = Options::default();
            if *name == CF_LOG {
                // Bodies are written once and read mostly soon after; large buffers mean fewer
                // flushes. LZ4 applies only when a memtable is flushed to a table file, in the
                // background, not on the write path.
                cf.set_write_buffer_size(LOG_WRITE_BUFFER_BYTES);
                cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Arc::new(Db {
            db,
            mark_enabled: AtomicBool::new(false),
            mark: Mutex::new(None),
        }))
    }

    /// Starts keeping [`SYNCED_WAL_MARK`] (fault injection only: it costs a directory listing
    /// and a file write per sync).
    pub fn enable_synced_wal_mark(&self) {
        self.mark_enabled.store(true, Ordering::SeqCst);
    }

    /// Runs a synced write; with the mark enabled, records what it made durable: the WAL's
    /// length measured after it returns. That covers the write itself and everything before it
    /// (one fsync syncs the whole file). It may also cover a concurrent unsynced write that
    /// landed in between, which only means the fault never cuts that one; measuring before the
    /// write would leave this write's own synced record outside the mark, to be cut.
    fn synced<T>(&self, sync: impl FnOnce() -> Result<T, rocksdb::Error>) -> Result<T, rocksdb::Error> {
        if !self.mark_enabled.load(Ordering::SeqCst) {
            return sync();
        }
        let result = sync()?;
        if let Some((number, len)) = newest_wal(self.db.path()) {
            let mut mark = self.mark.lock().unwrap_or_else(|p| p.into_inner());
            // Concurrent syncs may finish out of order: the mark only moves forward.
            if mark.is_none_or(|m| (number, len) > m) {
                *mark = Some((number, len));
                let dir = self.db.path();
                let tmp = dir.join(format!("{SYNCED_WAL_MARK}.tmp"));
                let text = format!("{number:06}.log {len}\n");
                if let Err(e) =
                    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, dir.join(SYNCED_WAL_MARK)))
                {
                    tracing::warn!("cannot record the synced WAL length: {e}");
                }
            }
        }
        Ok(result)
    }

    /// After RocksDB flushed memtables (a checkpoint does): with the mark enabled, syncs the WAL
    /// and records the mark. A flush syncs the WAL files it closes, and moves the data they
    /// hold into table files; a mark left behind them would let fault injection cut synced
    /// records whose data is already in a table file, which RocksDB rightly refuses to open
    /// ("SST file is ahead of WALs") and no power loss can produce.
    pub fn mark_after_flush(&self) -> Result<(), rocksdb::Error> {
        if self.mark_enabled.load(Ordering::SeqCst) {
            self.synced(|| self.db.flush_wal(true))?;
        }
        Ok(())
    }

    pub fn cf(&self, name: &str) -> &ColumnFamily {
        // Every family is created at open, so a missing one is a bug, not bad input.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} was opened"))
    }

    /// Writes a batch; `sync` makes it durable (WAL fsync) before returning.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), rocksdb::Error> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        if sync {
            self.synced(|| self.db.write_opt(batch, &opts))
        } else {
            self.db.write_opt(batch, &opts)
        }
    }

    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error> {
        self.db.get_cf(self.cf(CF_META), key)
    }
}
