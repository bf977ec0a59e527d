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
use std::sync::Arc;

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

/// The opened database, shared by the log store, the state machine and readers.
pub struct Db {
    pub db: DB,
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
        let cfs = ALL_CFS.iter().map(|name| {
            let mut cf = Options::default();
            if *name == CF_LOG {
                // Bodies are written once and read mostly soon after; large buffers mean fewer
                // flushes. Entries are already batched, so no compression on the hot path.
                cf.set_write_buffer_size(64 << 20);
                cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Arc::new(Db { db }))
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
        self.db.write_opt(batch, &opts)
    }

    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error> {
        self.db.get_cf(self.cf(CF_META), key)
    }
}
