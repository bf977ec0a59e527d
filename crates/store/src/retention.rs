//! Retention: deleting the oldest commit-log entries by age, or by disk use.
//!
//! Each node runs it on its own, as each RocketMQ broker deletes its own files; queue minimum
//! offsets may differ between replicas for a while, the messages that remain never do. Two limits
//! hold whatever the age or disk: nothing past what Raft has purged (a slave may still need it)
//! and nothing not yet applied is deleted. The consume-queue index is cut first, then the log, so
//! a reader never follows the index to a deleted body without seeing the queue move on. The key
//! index entries of the deleted messages go in the same write as their log entries.

use std::sync::Arc;

use openraft::EntryPayload;
use rocksdb::{IteratorMode, WriteBatch};

use crate::codec;
use crate::db::{Db, CF_CQ, CF_LOG, CF_QUEUES};
use crate::key_index;
use crate::keys;
use crate::log_store::{decode_entry, LogStore};
use crate::state::CqEntry;
use crate::state_machine::SmShared;

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_entries: u64,
    /// The first log index still stored after the pass.
    pub first_index: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("database: {0}")]
    Db(#[from] rocksdb::Error),
    #[error(transparent)]
    Corrupt(#[from] codec::CorruptRecord),
}

/// Most entries one pass deletes, so a pass stays short.
const MAX_PER_PASS: u64 = 100_000;
/// Most key-index entries one pass deletes (about 64 MiB of batch), for the same reason.
const MAX_KEY_DELETES_PER_PASS: usize = 1_000_000;

/// Runs retention over one store.
#[derive(Clone)]
pub struct Retention {
    pub(crate) db: Arc<Db>,
    pub(crate) shared: Arc<SmShared>,
    pub(crate) log: LogStore,
}

impl Retention {
    /// Deletes entries stored before `cutoff_ms`, and at least `force_entries` of the oldest ones
    /// whatever their age (for disk pressure), within the limits above.
    pub fn run(&self, cutoff_ms: i64, force_entries: u64) -> Result<RetentionReport, RetentionError> {
        let applied = self.shared.read().applied.map(|l| l.index);
        let purged = self.log.last_purged().map(|l| l.index);
        let Some(limit) = applied.min(purged) else {
            return Ok(RetentionReport {
                deleted_entries: 0,
                first_index: self.first_index()?,
            });
        };
        // Find where the kept part starts.
        let mut end = None;
        let mut first = None;
        // The key-index entries of the messages of the entries deleted.
        let mut keys_batch = WriteBatch::default();
        let mut key_deletes = 0usize;
        for (scanned, item) in (0u64..).zip(self.db.db.iterator_cf(self.db.cf(CF_LOG), IteratorMode::Start)) {
            let (key, value) = item?;
            let index = keys::log_index(&key).unwrap_or(u64::MAX);
            first.get_or_insert(index);
            if index > limit || scanned >= MAX_PER_PASS {
                end = Some(index);
                break;
            }
            let entry = decode_entry(index, &value)?;
            let stored_at = match &entry.payload {
                EntryPayload::Normal(request) => Some(request.store_timestamp_ms),
                _ => None,
            };
            if scanned >= force_entries && stored_at.is_some_and(|ts| ts >= cutoff_ms) {
                end = Some(index);
                break;
            }
            if key_deletes >= MAX_KEY_DELETES_PER_PASS {
                end = Some(index);
                break;
            }
            if let EntryPayload::Normal(request) = &entry.payload {
                let mut position = 0u32;
                for (topic, _, messages) in request.commands.iter().filter_map(|c| c.stored_messages()) {
                    for m in messages.iter() {
                        if !m.keys.is_empty() {
                            key_deletes +=
                                key_index::delete(&self.db, &mut keys_batch, topic, &m.keys, index, position);
                        }
                        position += 1;
                    }
                }
            }
            end = Some(index + 1);
        }
        let (Some(first), Some(end)) = (first, end) else {
            return Ok(RetentionReport::default());
        };
        if end <= first {
            return Ok(RetentionReport {
                deleted_entries: 0,
                first_index: Some(first),
            });
        }
        self.cut_index_below(end)?;
        let mut batch = keys_batch;
        batch.delete_range_cf(self.db.cf(CF_LOG), keys::log(first), keys::log(end));
        // Outcomes of transactions prepared in the deleted entries. Each node forgets them on
        // its own schedule; apply only answers from them (a repeated end is done or refused,
        // and writes nothing either way), so replicas stay identical.
        crate::txns::forget_ended_before(&self.db, &mut batch, end);
        self.db.write(batch, false)?;
        // Give the space back now rather than at some later compaction.
        self.db
            .db
            .compact_range_cf(self.db.cf(CF_LOG), None::<&[u8]>, Some(keys::log(end).as_slice()));
        tracing::info!(from = first, to = end - 1, "retention deleted commit-log entries");
        Ok(RetentionReport {
            deleted_entries: end - first,
            first_index: Some(end),
        })
    }

    /// Moves every queue's minimum offset past the entries below `end`, deleting their index.
    fn cut_index_below(&self, end: u64) -> Result<(), RetentionError> {
        let mut state = self.shared.write();
        let mut batch = WriteBatch::default();
        let cq = self.db.cf(CF_CQ);
        for ((topic, queue_id), bounds) in state.queues.iter_mut() {
            let mut new_min = bounds.min_offset;
            while new_min < bounds.next_offset {
                let Some(value) = self.db.db.get_pinned_cf(cq, keys::cq(topic, *queue_id, new_min))? else {
                    break;
                };
                let entry: CqEntry =
                    codec::decode(&value, || format!("consume queue {topic}/{queue_id} offset {new_min}"))?;
                if entry.log_index >= end {
                    break;
                }
                new_min += 1;
            }
            if new_min > bounds.min_offset {
                batch.delete_range_cf(
                    cq,
                    keys::cq(topic, *queue_id, bounds.min_offset),
                    keys::cq(topic, *queue_id, new_min),
                );
                bounds.min_offset = new_min;
                batch.put_cf(
                    self.db.cf(CF_QUEUES),
                    keys::queue(topic, *queue_id),
                    codec::encode(&*bounds),
                );
            }
        }
        self.db.write(batch, false)?;
        Ok(())
    }

    /// The first log index physically present.
    pub fn first_index(&self) -> Result<Option<u64>, RetentionError> {
        match self.db.db.iterator_cf(self.db.cf(CF_LOG), IteratorMode::Start).next() {
            Some(item) => Ok(keys::log_index(&item?.0)),
            None => Ok(None),
        }
    }
}
