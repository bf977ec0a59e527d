//! openraft's state machine: applies committed entries, builds and installs snapshots.
//!
//! Apply writes the consume-queue index, queue bounds, topics and offsets in one RocksDB batch
//! together with the applied log id, so the state on disk is always that of a whole prefix of the
//! log. It is not synced: after a crash openraft re-applies from the (synced) log.
//!
//! Readers see a message only after the batch that indexes it is written and the in-memory queue
//! bound moved past it; since only committed entries are applied, a read never returns a message
//! that a failover could take back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, StorageIOError};
use rocksdb::WriteBatch;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::apply::apply_request;
use crate::codec;
use crate::db::{Db, CF_LOG, CF_META, META_APPLIED, META_INSTALLING, META_MEMBERSHIP, META_SNAPSHOT};
use crate::keys;
use crate::log_store::SharedCache;
use crate::snapshot::{self, Record, SnapshotReader, SNAPSHOT_CFS};
use crate::state::SmState;
use crate::types::Command;
use crate::types::{LogId, Response, SnapshotFile, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// State shared between the state machine (the only writer) and readers.
pub struct SmShared {
    state: RwLock<SmState>,
    applied_tx: watch::Sender<u64>,
    /// Counts changes of the topic table (its value means nothing else).
    topics_tx: watch::Sender<u64>,
}

impl SmShared {
    pub(crate) fn new(state: SmState) -> Arc<Self> {
        let applied = state.applied.map(|l| l.index).unwrap_or(0);
        Arc::new(SmShared {
            state: RwLock::new(state),
            applied_tx: watch::channel(applied).0,
            topics_tx: watch::channel(0).0,
        })
    }

    pub fn read(&self) -> RwLockReadGuard<'_, SmState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, SmState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes every time entries are applied; the value is the applied index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// Changes every time the topic table may have changed.
    pub fn subscribe_topics(&self) -> watch::Receiver<u64> {
        self.topics_tx.subscribe()
    }

    fn topics_changed(&self) {
        self.topics_tx.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The state machine handed to openraft.
pub struct StateMachine {
    db: Arc<Db>,
    shared: Arc<SmShared>,
    snapshot_dir: PathBuf,
    log_cache: SharedCache,
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

impl StateMachine {
    pub(crate) fn new(db: Arc<Db>, shared: Arc<SmShared>, snapshot_dir: PathBuf, log_cache: SharedCache) -> Self {
        StateMachine {
            db,
            shared,
            snapshot_dir,
            log_cache,
        }
    }

    fn current_snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        match self.db.get_meta(META_SNAPSHOT).map_err(sm_read_err)? {
            Some(bytes) => Ok(Some(
                codec::decode(&bytes, || "snapshot meta".into()).map_err(sm_read_err)?,
            )),
            None => Ok(None),
        }
    }
}

/// Replaces the state machine's column families with a snapshot file's content.
///
/// Crash-safe: the `installing` marker is written (synced) first and removed with the final
/// batch, and a node that finds the marker at start redoes the install from the same file.
pub(crate) fn install_from_file(
    db: &Db,
    shared: &SmShared,
    path: &Path,
    meta: &SnapshotMeta,
    log_cache: &SharedCache,
) -> Result<(), StorageError> {
    let mut marker = WriteBatch::default();
    marker.put_cf(db.cf(CF_META), META_INSTALLING, codec::encode(meta));
    db.write(marker, true).map_err(snap_err)?;

    let mut state = shared.write();
    let mut reader = SnapshotReader::open(path).map_err(snap_err)?;
    let mut batch = WriteBatch::default();
    for name in SNAPSHOT_CFS {
        let cf = db.cf(name);
        if name == CF_LOG {
            // Entries past the snapshot stay: they may be this node's own newer log.
            let end = meta.last_log_id.map(|l| l.index + 1).unwrap_or(0);
            batch.delete_range_cf(cf, keys::log(0), keys::log(end));
            if let Some(last) = meta.last_log_id {
                log_cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .purge_upto(last.index);
            }
        } else {
            // Keys are names (at most 127 bytes) plus fixed-size numbers: all below 300 x 0xff.
            batch.delete_range_cf(cf, [].as_slice(), [0xffu8; 300].as_slice());
        }
    }
    while let Some(record) = reader.next_record().map_err(snap_err)? {
        match record {
            Record::Meta(_) => {}
            Record::Kv { cf, key, value } => {
                let name = SNAPSHOT_CFS.get(cf as usize).ok_or_else(|| {
                    snap_err(codec::CorruptRecord {
                        what: "snapshot".into(),
                        reason: format!("unknown column family {cf}"),
                    })
                })?;
                batch.put_cf(db.cf(name), key, value);
                if batch.size_in_bytes() > 8 << 20 {
                    db.write(std::mem::take(&mut batch), false).map_err(snap_err)?;
                }
            }
            Record::End { .. } => {}
        }
    }
    let meta_cf = db.cf(CF_META);
    batch.put_cf(meta_cf, META_APPLIED, codec::encode(&meta.last_log_id));
    batch.put_cf(meta_cf, META_MEMBERSHIP, codec::encode(&meta.last_membership));
    batch.put_cf(meta_cf, META_SNAPSHOT, codec::encode(meta));
    batch.delete_cf(meta_cf, META_INSTALLING);
    db.write(batch, true).map_err(snap_err)?;

    *state = SmState::load(db).map_err(sm_read_err)?;
    let applied = state.applied.map(|l| l.index).unwrap_or(0);
    drop(state);
    shared.applied_tx.send_replace(applied);
    shared.topics_changed();
    Ok(())
}

/// Removes every snapshot file except `keep`. With `everything`, also leftovers of builds and
/// transfers (only safe when no build or transfer runs: at start).
pub(crate) fn remove_other_snapshots(dir: &Path, keep: &Path) {
    clean_snapshot_dir(dir, Some(keep), false)
}

pub(crate) fn clean_snapshot_dir(dir: &Path, keep: Option<&Path>, everything: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_snapshot = path.extension().is_some_and(|e| e == "snap");
        if Some(path.as_path()) != keep && (everything || is_snapshot) {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), "cannot remove an old snapshot file: {e}");
            }
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.shared.read();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let db = &self.db;
        let mut state = self.shared.write();
        let mut batch = WriteBatch::default();
        let mut responses = Vec::new();
        let mut topics_changed = false;
        for entry in entries {
            let log_index = entry.log_id.index;
            state.applied = Some(entry.log_id);
            let results = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(request) => {
                    topics_changed |= request
                        .commands
                        .iter()
                        .any(|c| matches!(c, Command::UpsertTopic(_) | Command::DeleteTopic { .. }));
                    apply_request(db, &mut state, &mut batch, log_index, &request)
                }
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    batch.put_cf(db.cf(CF_META), META_MEMBERSHIP, codec::encode(&state.membership));
                    Vec::new()
                }
            };
            responses.push(Response { log_index, results });
        }
        batch.put_cf(db.cf(CF_META), META_APPLIED, codec::encode(&state.applied));
        db.write(batch, false).map_err(sm_write_err)?;
        let applied = state.applied.map(|l| l.index).unwrap_or(0);
        drop(state);
        self.shared.applied_tx.send_replace(applied);
        if topics_changed {
            self.shared.topics_changed();
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Taken here, in the state machine's task, so the checkpoint is exactly the applied state.
        let state = self.shared.read();
        let (last_log_id, last_membership) = (state.applied, state.membership.clone());
        drop(state);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{stamp}", l.leader_id.term, l.index),
            None => format!("0-0-{stamp}"),
        };
        let checkpoint_dir = self.snapshot_dir.join(format!("checkpoint-{snapshot_id}"));
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db.db)
            .and_then(|c| c.create_checkpoint(&checkpoint_dir))
            .map(|()| checkpoint_dir)
            .map_err(|e| e.to_string());
        SnapshotBuilder {
            db: self.db.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            checkpoint,
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = self.snapshot_dir.join(format!("incoming-{stamp}.tmp"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(snap_err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        tracing::info!(snapshot = %meta.snapshot_id, last = ?meta.last_log_id, "installing a snapshot");
        let path = snapshot::file_name(&self.snapshot_dir, meta);
        let tmp = path.with_extension("receiving");
        {
            snapshot.flush().await.map_err(snap_err)?;
            snapshot.seek(std::io::SeekFrom::Start(0)).await.map_err(snap_err)?;
            let mut out = tokio::fs::File::create(&tmp).await.map_err(snap_err)?;
            tokio::io::copy(&mut *snapshot, &mut out).await.map_err(snap_err)?;
            out.sync_all().await.map_err(snap_err)?;
        }
        tokio::fs::rename(&tmp, &path).await.map_err(snap_err)?;
        install_from_file(&self.db, &self.shared, &path, meta, &self.log_cache)?;
        remove_other_snapshots(&self.snapshot_dir, &path);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(meta) = self.current_snapshot_meta()? else {
            return Ok(None);
        };
        let path = snapshot::file_name(&self.snapshot_dir, &meta);
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(file),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "the current snapshot file is missing; a new one will be built");
                Ok(None)
            }
            Err(e) => Err(StorageIOError::read_snapshot(None, &e).into()),
        }
    }
}

/// Builds a snapshot file from a checkpoint, off the state machine's task.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    snapshot_dir: PathBuf,
    checkpoint: Result<PathBuf, String>,
    meta: SnapshotMeta,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let checkpoint = self
            .checkpoint
            .clone()
            .map_err(|e| snap_err(std::io::Error::other(e)))?;
        let meta = self.meta.clone();
        let path = snapshot::file_name(&self.snapshot_dir, &meta);
        let written = {
            let (checkpoint, meta, path) = (checkpoint.clone(), meta.clone(), path.clone());
            tokio::task::spawn_blocking(move || snapshot::write_from_checkpoint(&checkpoint, &meta, &path))
                .await
                .map_err(|e| snap_err(std::io::Error::other(e.to_string())))?
        };
        let _ = std::fs::remove_dir_all(&checkpoint);
        let records = written.map_err(snap_err)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(CF_META), META_SNAPSHOT, codec::encode(&meta));
        self.db.write(batch, true).map_err(snap_err)?;
        remove_other_snapshots(&self.snapshot_dir, &path);
        tracing::info!(snapshot = %meta.snapshot_id, records, "snapshot built");
        let file = tokio::fs::File::open(&path).await.map_err(snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}
