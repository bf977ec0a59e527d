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

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rocksdb::{BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

pub const CF_LOG: &str = "log";
pub const CF_META: &str = "meta";
pub const CF_TOPICS: &str = "topics";
pub const CF_QUEUES: &str = "queues";
pub const CF_CQ: &str = "cq";
pub const CF_OFFSETS: &str = "offsets";
pub const CF_POP: &str = "pop";
/// Pending delayed messages (see `timers`).
pub const CF_TIMERS: &str = "timers";
/// Consumer group settings, by group name.
pub const CF_GROUPS: &str = "groups";
/// The message key index (see `key_index`).
pub const CF_KEYS: &str = "keys";
/// Pending transactions and their check schedule (see `txns`).
pub const CF_TXNS: &str = "txns";
pub const ALL_CFS: [&str; 11] = [
    CF_LOG, CF_META, CF_TOPICS, CF_QUEUES, CF_CQ, CF_OFFSETS, CF_POP, CF_TIMERS, CF_GROUPS, CF_KEYS, CF_TXNS,
];

pub const META_VOTE: &[u8] = b"vote";
pub const META_COMMITTED: &[u8] = b"committed";
pub const META_LAST_PURGED: &[u8] = b"last_purged";
pub const META_APPLIED: &[u8] = b"applied";
pub const META_MEMBERSHIP: &[u8] = b"membership";
pub const META_SNAPSHOT: &[u8] = b"snapshot";
pub const META_INSTALLING: &[u8] = b"installing";
pub const META_FORMAT: &[u8] = b"format";

/// How log entries are encoded. 2: a request is one byte string (its fields' encoding, made
/// once and copied as is). Stores without a recorded format were written in format 1 (fields
/// inline), which this build cannot read.
pub const STORE_FORMAT: u32 = 2;

/// Write buffer (memtable) of the log family, where every message body lands first. RocksDB
/// keeps up to two (one filling, one being flushed). 16 MiB (was 32): with the two entry caches
/// at 8 MiB, a broker's peak under the standard benchmark went from 130-151 MB to 100-115 MB,
/// and the CPU per message did not move (docs/benchmarks.md, session 22).
pub const LOG_WRITE_BUFFER_BYTES: usize = 16 << 20;

/// Write buffer of every other family. The consume queue grows by an entry per message (about
/// 60 bytes); left at RocksDB's 64 MiB it held 40 MB in memory under the standard benchmark.
pub const SMALL_WRITE_BUFFER_BYTES: usize = 16 << 20;

/// The one block cache every column family reads table files through. Left to RocksDB, each
/// family got a 32 MiB cache of its own: a consumer reading a backlog filled the log's and the
/// consume queue's, 40-50 MB more resident memory that nothing reads again (a backlog is read
/// once, in order; the page cache keeps the files, and fresh messages are still in the
/// memtables or the log store's entry cache).
pub const BLOCK_CACHE_BYTES: usize = 8 << 20;

/// Most WAL kept before the families holding the oldest WAL file are flushed (and so what a
/// killed node replays at start): 128 MiB, eight of the log family's write buffers. Each time the
/// WAL reaches it, every small family flushes a table file of its own, and the consume queue's
/// are compacted into the whole of it: at 64 MiB, 4 KiB sends cost the brokers about a tenth
/// more CPU in alternating runs.
pub const MAX_TOTAL_WAL_BYTES: u64 = 128 << 20;

/// Obsolete WAL files kept to be written over instead of creating new ones: at most this many
/// files of up to about [`MAX_TOTAL_WAL_BYTES`] each stay on disk beside the live WAL.
pub const RECYCLED_WALS: usize = 2;

/// Kept when [`Db::enable_synced_wal_mark`] was called (fault injection).
pub use raftmq_common::SYNCED_WAL_MARK;

/// Upper bounds of the [`SyncTimes`] buckets, microseconds.
pub const SYNC_BUCKETS_US: [u64; 14] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
];

/// A histogram of WAL sync times, lock-free: a count per bucket of [`SYNC_BUCKETS_US`] (and one
/// above the last), their count and sum.
#[derive(Debug, Default)]
pub struct SyncTimes {
    buckets: [AtomicU64; SYNC_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl SyncTimes {
    fn record(&self, d: std::time::Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = SYNC_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(SYNC_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// (the count of each bucket by its upper bound in seconds, the last `+Inf`; the count; the
    /// sum in seconds).
    pub fn buckets(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut out = Vec::with_capacity(SYNC_BUCKETS_US.len() + 1);
        let mut total = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            total += n;
            let bound = SYNC_BUCKETS_US.get(i).map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            out.push((bound, n));
        }
        (out, total, self.sum_us.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// One column family's share of RocksDB's memory, in bytes (see [`Db::memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CfMemory {
    pub cf: &'static str,
    pub memtables: u64,
    pub table_readers: u64,
}

/// The opened database, shared by the log store, the state machine and readers.
pub struct Db {
    pub db: DB,
    /// How long the WAL syncs (a leader's, and a follower's synced appends) took.
    pub sync_times: SyncTimes,
    /// Shared by every column family (see [`BLOCK_CACHE_BYTES`]).
    block_cache: Cache,
    mark_enabled: AtomicBool,
    /// The highest (WAL file number, length) known synced.
    mark: Mutex<Option<(u64, u64)>>,
}

/// The newest WAL file of a RocksDB directory: (number, path).
fn newest_wal(dir: &Path) -> Option<(u64, PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let number: u64 = name.strip_suffix(".log")?.parse().ok()?;
            Some((number, e.path()))
        })
        .max()
}

/// RocksDB's WAL framing: 32 KiB blocks of records, each behind a header of checksum (4 bytes),
/// length (2, little-endian), type (1) and, in the recyclable format, the file's log number
/// (4, little-endian). A block's last bytes, too few for a header, are zeros.
const WAL_BLOCK: u64 = 32 * 1024;
const WAL_RECYCLABLE_HEADER: u64 = 11;

/// Where the records written into WAL file `number` end, reading on from `from` (a record
/// boundary, or 0). The file's length does not say: a recycled file still holds an earlier
/// file's records past that point. `None` for a file not in the recyclable format.
fn wal_records_end(path: &Path, number: u64, from: u64) -> std::io::Result<Option<u64>> {
    const WINDOW: u64 = 1 << 20;
    let mut file = std::fs::File::open(path)?;
    let mut pos = from;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        file.seek(SeekFrom::Start(pos))?;
        (&mut file).take(WINDOW).read_to_end(&mut buf)?;
        let base = pos;
        let at_eof = (buf.len() as u64) < WINDOW;
        loop {
            let i = pos - base;
            let in_block = WAL_BLOCK - pos % WAL_BLOCK;
            if in_block < WAL_RECYCLABLE_HEADER {
                if i + in_block > buf.len() as u64 {
                    break;
                }
                pos += in_block;
                continue;
            }
            let Some(header) = buf.get(i as usize..(i + WAL_RECYCLABLE_HEADER) as usize) else {
                break;
            };
            let kind = header[6];
            if kind == 0 {
                return Ok(Some(pos)); // preallocated space
            }
            let recyclable = matches!(kind, 5..=8) || (kind >= 10 && kind % 2 == 1);
            if !recyclable {
                return Ok(None);
            }
            let log = u32::from_le_bytes([header[7], header[8], header[9], header[10]]);
            if log != number as u32 {
                return Ok(Some(pos)); // an earlier file's record: this file's end
            }
            let next = pos + WAL_RECYCLABLE_HEADER + u64::from(u16::from_le_bytes([header[4], header[5]]));
            if next - base > buf.len() as u64 {
                break;
            }
            pos = next;
        }
        if at_eof || pos == base {
            // A record cut short by the end of the file was never completely written.
            return Ok(Some(pos));
        }
    }
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
        // Every acknowledged write waits for a WAL fsync on the master and on a slave. Into a
        // fresh WAL file each fsync also commits the file's new length to the filesystem
        // journal; into a recycled one (already that long) it syncs only the data. RocksDB
        // tells a recycled file's stale records from new ones by the log number in each
        // record's header, also when recovering after a power loss (RocksDB 9.1 and later).
        opts.set_recycle_log_file_num(RECYCLED_WALS);
        let block_cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut tables = BlockBasedOptions::default();
        tables.set_block_cache(&block_cache);
        opts.set_block_based_table_factory(&tables);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&tables);
            cf.set_write_buffer_size(SMALL_WRITE_BUFFER_BYTES);
            if *name == CF_LOG {
                // Bodies are written once and read mostly soon after; large buffers mean fewer
                // flushes. LZ4 applies only when a memtable is flushed to a table file, in the
                // background, not on the write path.
                cf.set_write_buffer_size(LOG_WRITE_BUFFER_BYTES);
                cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            if *name == CF_KEYS {
                // Keys share long prefixes (topic, key) and values repeat the queue.
                cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Arc::new(Db {
            db,
            sync_times: SyncTimes::default(),
            block_cache,
            mark_enabled: AtomicBool::new(false),
            mark: Mutex::new(None),
        }))
    }

    /// Starts keeping [`SYNCED_WAL_MARK`] (fault injection only: it costs a directory listing
    /// and a file write per sync).
    pub fn enable_synced_wal_mark(&self) {
        self.mark_enabled.store(true, Ordering::SeqCst);
    }

    /// Runs a synced write; with the mark enabled, records what it made durable: where the
    /// newest WAL's records end, measured after it returns. That covers the write itself and everything before it
    /// (one fsync syncs the whole file). It may also cover a concurrent unsynced write that
    /// landed in between, which only means the fault never cuts that one; measuring before the
    /// write would leave this write's own synced record outside the mark, to be cut.
    fn synced<T>(&self, sync: impl FnOnce() -> Result<T, rocksdb::Error>) -> Result<T, rocksdb::Error> {
        let started = std::time::Instant::now();
        let result = sync();
        self.sync_times.record(started.elapsed());
        if !self.mark_enabled.load(Ordering::SeqCst) {
            return result;
        }
        let result = result?;
        if let Some((number, path)) = newest_wal(self.db.path()) {
            let mut mark = self.mark.lock().unwrap_or_else(|p| p.into_inner());
            let from = match *mark {
                Some((n, end)) if n == number => end,
                _ => 0,
            };
            let end = match wal_records_end(&path, number, from) {
                Ok(Some(end)) => Ok(end),
                Ok(None) => std::fs::metadata(&path).map(|m| m.len()),
                Err(e) => Err(e),
            };
            let end = match end {
                Ok(end) => end,
                Err(e) => {
                    tracing::warn!("cannot measure the synced WAL: {e}");
                    return Ok(result);
                }
            };
            // Concurrent syncs may finish out of order: the mark only moves forward.
            if mark.is_none_or(|m| (number, end) > m) {
                *mark = Some((number, end));
                let dir = self.db.path();
                let tmp = dir.join(format!("{SYNCED_WAL_MARK}.tmp"));
                let text = format!("{number:06}.log {end}\n");
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
            self.sync_wal()?;
        }
        Ok(())
    }

    /// Syncs the WAL: every write made before the call is durable when it returns. Writes on
    /// other threads go on meanwhile, without waiting for it (a synced write would hold them).
    pub fn sync_wal(&self) -> Result<(), rocksdb::Error> {
        self.synced(|| self.db.flush_wal(!broken_fsync()))
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
        opts.set_sync(sync && !broken_fsync());
        if sync {
            self.synced(|| self.db.write_opt(batch, &opts))
        } else {
            self.db.write_opt(batch, &opts)
        }
    }

    /// What RocksDB holds in memory now, by column family: the memtables (the active one and
    /// those not yet released after a flush) and the table readers (index and filter blocks,
    /// held outside the block cache). A property RocksDB cannot give counts as 0.
    pub fn memory(&self) -> Vec<CfMemory> {
        let int = |cf: &ColumnFamily, name: &str| self.db.property_int_value_cf(cf, name).ok().flatten().unwrap_or(0);
        ALL_CFS
            .iter()
            .map(|name| {
                let cf = self.cf(name);
                CfMemory {
                    cf: name,
                    memtables: int(cf, "rocksdb.size-all-mem-tables"),
                    table_readers: int(cf, "rocksdb.estimate-table-readers-mem"),
                }
            })
            .collect()
    }

    /// Bytes in the shared block cache (see [`BLOCK_CACHE_BYTES`]).
    pub fn block_cache_bytes(&self) -> u64 {
        self.block_cache.get_usage() as u64
    }

    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error> {
        self.db.get_cf(self.cf(CF_META), key)
    }
}

/// Options for a scan that reads everything once, in order (the start-up check, a snapshot
/// stream): through no block cache, so it does not push out what readers use. The page cache
/// has the files.
pub(crate) fn read_once() -> rocksdb::ReadOptions {
    let mut read = rocksdb::ReadOptions::default();
    read.fill_cache(false);
    read
}

/// A deliberately broken build, for the test that proves the power-loss fault catches a skipped
/// fsync: in debug builds only, `RAFTMQ_BROKEN_SKIP_FSYNC=1` makes every "synced" write and WAL
/// sync skip its fsync. Release builds have no such switch.
fn broken_fsync() -> bool {
    #[cfg(debug_assertions)]
    {
        static BROKEN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *BROKEN.get_or_init(|| {
            let broken = std::env::var_os("RAFTMQ_BROKEN_SKIP_FSYNC").is_some_and(|v| v == "1");
            if broken {
                tracing::error!(
                    "RAFTMQ_BROKEN_SKIP_FSYNC=1: this node skips every fsync (a test of the power-loss fault)"
                );
            }
            broken
        })
    }
    #[cfg(not(debug_assertions))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(db: &Db, key: u64, value: &[u8]) {
        let mut batch = WriteBatch::default();
        batch.put_cf(db.cf(CF_LOG), key.to_be_bytes(), value);
        db.write(batch, true).unwrap();
    }

    fn mark(dir: &Path) -> (u64, u64) {
        let text = std::fs::read_to_string(dir.join(SYNCED_WAL_MARK)).unwrap();
        let (file, end) = text.trim().split_once(' ').unwrap();
        (
            file.strip_suffix(".log").unwrap().parse().unwrap(),
            end.parse().unwrap(),
        )
    }

    /// The fault-injection mark must name where the synced records end also in a recycled WAL,
    /// which is longer than what was written into it: cutting the file there (what the chaos
    /// suite's torn-tail fault may do) keeps every synced write, and RocksDB opens it.
    #[test]
    fn the_synced_mark_finds_the_end_of_a_recycled_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let value = vec![7u8; 100 << 10];
        let mut key = 0u64;
        let (number, end, len) = {
            let db = Db::open(&path).unwrap();
            db.enable_synced_wal_mark();
            // Fill WAL files and flush them away until the newest WAL is a recycled one, written
            // less than before.
            let recycled = (0..20).find_map(|round| {
                for _ in 0..if round < 3 { 20 } else { 5 } {
                    key += 1;
                    put(&db, key, &value);
                }
                let (number, end) = mark(&path);
                let len = std::fs::metadata(path.join(format!("{number:06}.log"))).unwrap().len();
                if len > end {
                    return Some((number, end, len));
                }
                for cf in ALL_CFS {
                    db.db.flush_cf(db.cf(cf)).unwrap();
                }
                None
            });
            recycled.expect("a recycled WAL file within 20 rounds")
        };
        assert!(end > 0 && end < len, "end {end}, length {len}");
        let wal = path.join(format!("{number:06}.log"));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .unwrap()
            .set_len(end)
            .unwrap();
        let db = Db::open(&path).unwrap();
        for k in 1..=key {
            let got = db.db.get_cf(db.cf(CF_LOG), k.to_be_bytes()).unwrap();
            assert_eq!(got.as_deref(), Some(&value[..]), "key {k} of {key}");
        }
    }
}
