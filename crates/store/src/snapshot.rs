//! Snapshots: the state machine plus the commit-log entries it points at.
//!
//! Because the Raft log is the commit log, a snapshot must carry the retained message bodies
//! too, or a node that installs it could index messages it does not have. That makes a full
//! snapshot as large as the retained commit log, so one is only written out when a slave needs
//! it:
//!
//! - Building a snapshot takes a RocksDB checkpoint (hard links, in the state machine's task so
//!   it matches the applied position exactly) and writes a small *pointer* file naming it. Nothing
//!   is copied: a build costs a memtable flush and a directory of links, however many messages
//!   are stored.
//! - Sending one ([`open_for_sending`]) streams the checkpoint into a *full* snapshot file,
//!   outside the state machine's task, and sends that.
//! - Installing one reads the full file into the database; the node then keeps a checkpoint and
//!   a pointer of its own, like a node that built it.
//!
//! Full file format: the magic `RAFTMQS1`, then records `[len: u32 LE][checksummed record]`, the
//! last one [`Record::End`] with the record count. A missing end, a bad checksum or a wrong count
//! is an error: a truncated transfer is never installed. Pointer file format: the magic
//! `RAFTMQP1`, then one checksummed [`Pointer`].

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rocksdb::{IteratorMode, Options, DB};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CorruptRecord};
use crate::db::{CF_CQ, CF_GROUPS, CF_KEYS, CF_LOG, CF_OFFSETS, CF_POP, CF_QUEUES, CF_TIMERS, CF_TOPICS, CF_TXNS};
use crate::keys;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"RAFTMQS1";
const POINTER_MAGIC: &[u8; 8] = b"RAFTMQP1";
/// Longest pointer file accepted.
const MAX_POINTER: u64 = 64 << 10;
/// Longest record accepted when reading: a log entry is bounded by the batch size limit.
const MAX_RECORD: usize = 256 << 20;

/// The column families a snapshot copies, in order.
/// New families go at the end, so that an older snapshot still names the same ones.
pub const SNAPSHOT_CFS: [&str; 10] = [
    CF_TOPICS, CF_QUEUES, CF_OFFSETS, CF_CQ, CF_LOG, CF_POP, CF_TIMERS, CF_GROUPS, CF_KEYS, CF_TXNS,
];

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

/// What a pointer file holds: the snapshot's metadata and where its checkpoint is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pointer {
    pub meta: SnapshotMeta,
    /// The checkpoint directory, an absolute path. (A pointer never leaves its node: it is
    /// written out in full to be sent. A data directory moved elsewhere leaves it dangling, and
    /// the state machine then has a new snapshot built.)
    pub checkpoint: PathBuf,
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

/// Writes a full snapshot file from a checkpoint directory. Only log entries up to the
/// snapshot's last log index are included: later ones may not be committed.
///
/// The file is not synced: it is only read back to be sent, and the receiving node syncs its
/// own copy before installing it.
pub fn write_from_checkpoint(checkpoint: &Path, meta: &SnapshotMeta, out: &Path) -> Result<u64, SnapshotError> {
    let mut w = BufWriter::new(File::create(out)?);
    let records = write_full(checkpoint, meta, &mut w)?;
    w.into_inner().map_err(|e| e.into_error())?;
    Ok(records)
}

/// Writes the full snapshot of a checkpoint to `w`; returns the number of records.
fn write_full(checkpoint: &Path, meta: &SnapshotMeta, w: &mut impl Write) -> Result<u64, SnapshotError> {
    // Every table file is opened up front: a newer snapshot may delete this checkpoint while it
    // is read (a long transfer), and open files stay readable.
    let mut options = Options::default();
    options.set_max_open_files(-1);
    let db = DB::open_cf_for_read_only(&options, checkpoint, crate::db::ALL_CFS, false)?;
    let last_index = meta.last_log_id.map(|l| l.index);
    w.write_all(MAGIC)?;
    let mut records = 0u64;
    let put = |w: &mut dyn Write, records: &mut u64, record: &Record| -> std::io::Result<()> {
        let bytes = codec::encode(record);
        w.write_all(&(bytes.len() as u32).to_le_bytes())?;
        w.write_all(&bytes)?;
        *records += 1;
        Ok(())
    };
    put(w, &mut records, &Record::Meta(meta.clone()))?;
    for (cf_index, name) in SNAPSHOT_CFS.iter().enumerate() {
        let cf = db
            .cf_handle(name)
            .ok_or_else(|| corrupt(format!("checkpoint lacks {name}")))?;
        for item in db.iterator_cf_opt(cf, crate::db::read_once(), IteratorMode::Start) {
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
            put(w, &mut records, &record)?;
        }
    }
    // The end record counts itself.
    let end = Record::End { records: records + 1 };
    put(w, &mut records, &end)?;
    Ok(records)
}

/// Cuts a byte stream into chunks of a fixed size and hands each to a sink.
struct Chunker<F: FnMut(Vec<u8>) -> bool> {
    size: usize,
    buf: Vec<u8>,
    sink: F,
}

impl<F: FnMut(Vec<u8>) -> bool> Chunker<F> {
    fn pass(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(self.size));
        if (self.sink)(chunk) {
            Ok(())
        } else {
            Err(std::io::Error::other("the snapshot's receiver went away"))
        }
    }
}

impl<F: FnMut(Vec<u8>) -> bool> Write for Chunker<F> {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let written = data.len();
        while !data.is_empty() {
            let take = (self.size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.size {
                self.pass()?;
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams the current snapshot, as the state machine hands it out, in chunks of `chunk_size`
/// bytes (the last one shorter), as it is produced: a pointer's checkpoint is read and encoded
/// on the fly, so the first chunk is ready at once however large the snapshot is, and nothing
/// is written to disk. `sink` returns false to stop early. Blocking: run it off the async
/// runtime.
///
/// Only a complete stream is a snapshot: a caller must not mark the last chunk it got as the
/// end unless this returned `Ok`.
pub fn stream_for_sending(
    mut file: File,
    chunk_size: usize,
    sink: impl FnMut(Vec<u8>) -> bool,
) -> Result<(), SnapshotError> {
    use std::io::{Seek, SeekFrom};
    let mut out = Chunker {
        size: chunk_size.max(1),
        buf: Vec::with_capacity(chunk_size.max(1)),
        sink,
    };
    match read_pointer(&mut file)? {
        Some(pointer) => {
            write_full(&pointer.checkpoint, &pointer.meta, &mut out)?;
        }
        None => {
            file.seek(SeekFrom::Start(0))?;
            std::io::copy(&mut file, &mut out)?;
        }
    }
    if !out.buf.is_empty() {
        out.pass()?;
    }
    Ok(())
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

/// Reads a full snapshot file through, checking every record and the end: a file that passes
/// installs without a read error.
pub fn verify_file(path: &Path) -> Result<u64, SnapshotError> {
    let mut reader = SnapshotReader::open(path)?;
    let mut records = 0;
    while reader.next_record()?.is_some() {
        records += 1;
    }
    Ok(records)
}

/// Reads only the metadata of a snapshot file, full or pointer.
pub fn read_meta(path: &Path) -> Result<SnapshotMeta, SnapshotError> {
    let mut file = File::open(path)?;
    if let Some(pointer) = read_pointer(&mut file)? {
        return Ok(pointer.meta);
    }
    match SnapshotReader::open(path)?.next_record()? {
        Some(Record::Meta(meta)) => Ok(meta),
        _ => Err(corrupt("first record is not the metadata")),
    }
}

/// Writes a pointer file to `path` (atomically, synced) naming `checkpoint`.
pub fn write_pointer(path: &Path, meta: &SnapshotMeta, checkpoint: &Path) -> Result<(), SnapshotError> {
    let pointer = Pointer {
        meta: meta.clone(),
        checkpoint: std::path::absolute(checkpoint)?,
    };
    let tmp = path.with_extension("pointer-tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(POINTER_MAGIC)?;
        file.write_all(&codec::encode(&pointer))?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads a pointer from the start of `file`: `None` when it is a full snapshot instead. Leaves
/// the file's position anywhere.
pub fn read_pointer(file: &mut File) -> Result<Option<Pointer>, SnapshotError> {
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic)
        .map_err(|_| corrupt("too short for a snapshot"))?;
    if &magic == MAGIC {
        return Ok(None);
    }
    if &magic != POINTER_MAGIC {
        return Err(corrupt("not a raftmq snapshot (bad magic)"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_POINTER).read_to_end(&mut bytes)?;
    Ok(Some(codec::decode(&bytes, || "snapshot pointer".into())?))
}

/// Turns the current snapshot's file, as the state machine hands it out, into a full snapshot
/// to send: a full file is returned rewound; a pointer's checkpoint is streamed into a new file
/// beside the checkpoint, which is unlinked at once and so goes away when the returned handle
/// is dropped.
///
/// Blocking, and as slow as writing the retained commit log out: call it off the async runtime
/// and off the state machine's task.
pub fn open_for_sending(mut file: File) -> Result<File, SnapshotError> {
    use std::io::{Seek, SeekFrom};
    let Some(pointer) = read_pointer(&mut file)? else {
        file.seek(SeekFrom::Start(0))?;
        return Ok(file);
    };
    let checkpoint = &pointer.checkpoint;
    let dir = checkpoint.parent().unwrap_or(Path::new("/"));
    let stamp = raftmq_common::time::now_nanos();
    let out = dir.join(format!("sending-{}-{stamp}.tmp", pointer.meta.snapshot_id));
    write_from_checkpoint(checkpoint, &pointer.meta, &out)?;
    let full = File::open(&out)?;
    std::fs::remove_file(&out)?;
    Ok(full)
}

/// File name of a snapshot.
pub fn file_name(dir: &Path, meta: &SnapshotMeta) -> PathBuf {
    dir.join(format!("{}.snap", meta.snapshot_id))
}
