//! Snapshot files: the state machine plus the commit-log entries it points at.
//!
//! Because the Raft log is the commit log, a snapshot must carry the retained message bodies
//! too, or a node that installs it could index messages it does not have. A snapshot is built
//! from a RocksDB checkpoint (hard links, taken in the state machine's task so it matches the
//! applied position exactly) and streamed to a file, so neither building nor sending it holds
//! the state in memory.
//!
//! File format: the magic `RAFTMQS1`, then records `[len: u32 LE][checksummed record]`, the last
//! one [`Record::End`] with the record count. A missing end, a bad checksum or a wrong count is
//! an error: a truncated transfer is never installed.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rocksdb::{IteratorMode, Options, DB};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CorruptRecord};
use crate::db::{CF_CQ, CF_LOG, CF_OFFSETS, CF_POP, CF_QUEUES, CF_TOPICS};
use crate::keys;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"RAFTMQS1";
/// Longest record accepted when reading: a log entry is bounded by the batch size limit.
const MAX_RECORD: usize = 256 << 20;

/// The column families a snapshot copies, in order.
pub const SNAPSHOT_CFS: [&str; 6] = [CF_TOPICS, CF_QUEUES, CF_OFFSETS, CF_CQ, CF_LOG, CF_POP];

#[derive(Debug, Serialize, Deserialize)]
pub enum Record {
    Meta(SnapshotMeta),
    /// A raw key/value of one column family (index into [`SNAPSHOT_CFS`]).
    Kv {
        cf: u8,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    End {
        records: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot database: {0}")]
    Db(#[from] rocksdb::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
}

fn corrupt(reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt(CorruptRecord {
        what: "snapshot".into(),
        reason: reason.into(),
    })
}

/// Writes a snapshot file from a checkpoint directory. Only log entries up to the snapshot's
/// last log index are included: later ones may not be committed.
pub fn write_from_checkpoint(checkpoint: &Path, meta: &SnapshotMeta, out: &Path) -> Result<u64, SnapshotError> {
    let db = DB::open_cf_for_read_only(&Options::default(), checkpoint, crate::db::ALL_CFS, false)?;
    let last_index = meta.last_log_id.map(|l| l.index);
    let tmp = out.with_extension("tmp");
    let mut w = BufWriter::new(File::create(&tmp)?);
    w.write_all(MAGIC)?;
    let mut records = 0u64;
    let put = |w: &mut BufWriter<File>, records: &mut u64, record: &Record| -> std::io::Result<()> {
        let bytes = codec::encode(record);
        w.write_all(&(bytes.len() as u32).to_le_bytes())?;
        w.write_all(&bytes)?;
        *records += 1;
        Ok(())
    };
    put(&mut w, &mut records, &Record::Meta(meta.clone()))?;
    for (cf_index, name) in SNAPSHOT_CFS.iter().enumerate() {
        let cf = db
            .cf_handle(name)
            .ok_or_else(|| corrupt(format!("checkpoint lacks {name}")))?;
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            if *name == CF_LOG {
                let index = keys::log_index(&key).ok_or_else(|| corrupt("bad log key"))?;
                if last_index.is_none_or(|last| index > last) {
                    break;
                }
            }
            let record = Record::Kv {
                cf: cf_index as u8,
                key: key.into_vec(),
                value: value.into_vec(),
            };
            put(&mut w, &mut records, &record)?;
        }
    }
    let end = Record::End { records: records + 1 };
    put(&mut w, &mut records, &end)?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, out)?;
    Ok(records)
}

/// Reads a snapshot file record by record, checking every checksum and the final count.
pub struct SnapshotReader {
    r: BufReader<File>,
    records: u64,
    done: bool,
}

impl SnapshotReader {
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        let mut r = BufReader::new(File::open(path)?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)
            .map_err(|_| corrupt("too short for a snapshot"))?;
        if &magic != MAGIC {
            return Err(corrupt("not a raftmq snapshot (bad magic)"));
        }
        Ok(SnapshotReader {
            r,
            records: 0,
            done: false,
        })
    }

    /// The next record; `None` after a valid end record.
    pub fn next_record(&mut self) -> Result<Option<Record>, SnapshotError> {
        if self.done {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.r
            .read_exact(&mut len)
            .map_err(|_| corrupt("truncated: no end record"))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_RECORD {
            return Err(corrupt(format!("record of {len} bytes")));
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf).map_err(|_| corrupt("truncated record"))?;
        let record: Record = codec::decode(&buf, || format!("snapshot record {}", self.records))?;
        self.records += 1;
        if let Record::End { records } = record {
            if records != self.records {
                return Err(corrupt(format!("end says {records} records, read {}", self.records)));
            }
            self.done = true;
            return Ok(None);
        }
        Ok(Some(record))
    }
}

/// Reads only the metadata (first record) of a snapshot file.
pub fn read_meta(path: &Path) -> Result<SnapshotMeta, SnapshotError> {
    match SnapshotReader::open(path)?.next_record()? {
        Some(Record::Meta(meta)) => Ok(meta),
        _ => Err(corrupt("first record is not the metadata")),
    }
}

/// File name of a snapshot.
pub fn file_name(dir: &Path, meta: &SnapshotMeta) -> PathBuf {
    dir.join(format!("{}.snap", meta.snapshot_id))
}
