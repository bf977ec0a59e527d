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
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, StorageIOError};
use rocksdb::WriteBatch;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::apply::{apply_request, write_changes};
use crate::codec;
use crate::db::{Db, CF_LOG, CF_META, META_APPLIED, META_INSTALLING, META_LAST_PURGED, META_MEMBERSHIP, META_SNAPSHOT};
use crate::keys;
use crate::log_store::{stored_last_purged, SharedCache};
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
    /// Serializes making a snapshot current (a build finishing, an install).
    snapshot_lock: Arc<Mutex<()>>,
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
            snapshot_lock: Arc::new(Mutex::new(())),
        }
    }

    /// The file `begin_receiving_snapshot` made that `received` is, found by its inode.
    fn receiving_path(&self, received: &std::fs::Metadata) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(&self.snapshot_dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name();
            let m = e.metadata().ok()?;
            (name.to_string_lossy().starts_with("incoming-") && m.ino() == received.ino() && m.dev() == received.dev())
                .then(|| e.path())
        })
    }

    /// Where snapshot files and checkpoints are kept.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
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
    // The log is purged up to the snapshot, atomically with the install (the log store does not
    // record a purge past what is applied: see its `purge`).
    if let Some(last) = meta.last_log_id {
        if stored_last_purged(db)?.is_none_or(|p| p.index < last.index) {
            batch.put_cf(meta_cf, META_LAST_PURGED, codec::encode(&last));
        }
    }
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

/// The checkpoint directory of a snapshot.
pub(crate) fn checkpoint_dir(dir: &Path, snapshot_id: &str) -> PathBuf {
    dir.join(format!("checkpoint-{snapshot_id}"))
}

/// Removes every snapshot (file and checkpoint) but the one with id `keep`. With `everything`,
/// also leftovers of builds, sends and transfers (only safe when none runs: at start).
pub(crate) fn clean_snapshot_dir(dir: &Path, keep: Option<&str>, everything: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let kept: Vec<PathBuf> = keep
        .map(|id| vec![dir.join(format!("{id}.snap")), checkpoint_dir(dir, id)])
        .unwrap_or_default();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_snapshot = name.ends_with(".snap") || name.starts_with("checkpoint-");
        if !kept.contains(&path) && (everything || is_snapshot) {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), "cannot remove an old snapshot: {e}");
            }
        }
    }
}

/// Takes a checkpoint of the whole database into `dir` (hard links, after a memtable flush).
fn take_checkpoint(db: &Db, dir: &Path) -> Result<(), rocksdb::Error> {
    rocksdb::checkpoint::Checkpoint::new(&db.db).and_then(|c| c.create_checkpoint(dir))?;
    db.mark_after_flush()
}

/// Makes a built snapshot the current one, unless the current one is newer: writes its pointer,
/// records it, and removes older snapshots. Returns the current snapshot's metadata.
fn publish(
    db: &Db,
    dir: &Path,
    lock: &Mutex<()>,
    meta: &SnapshotMeta,
    checkpoint: &Path,
) -> Result<SnapshotMeta, StorageError> {
    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    // A usable current snapshot that is newer wins: an install overtook this build while it ran
    // (and may have removed its checkpoint). One as new does not: a build asked for by retention
    // when nothing was applied since the last snapshot has the same last entry, and it must
    // replace that snapshot, whose checkpoint still links the table files of what retention
    // just deleted (kept, the disk would stay full until the next interval's snapshot).
    let current = current_meta(db)?;
    if let Some(current) = current {
        let newer = current.last_log_id > meta.last_log_id || !checkpoint.is_dir();
        if newer && open_current(dir, &current)?.is_some() {
            let _ = std::fs::remove_dir_all(checkpoint);
            return Ok(current);
        }
    }
    if !checkpoint.is_dir() {
        return Err(snap_err(std::io::Error::other(format!(
            "the snapshot's checkpoint {} is gone",
            checkpoint.display()
        ))));
    }
    let path = snapshot::file_name(dir, meta);
    snapshot::write_pointer(&path, meta, checkpoint).map_err(snap_err)?;
    let mut batch = WriteBatch::default();
    batch.put_cf(db.cf(CF_META), META_SNAPSHOT, codec::encode(meta));
    db.write(batch, true).map_err(snap_err)?;
    clean_snapshot_dir(dir, Some(&meta.snapshot_id), false);
    Ok(meta.clone())
}

fn current_meta(db: &Db) -> Result<Option<SnapshotMeta>, StorageError> {
    match db.get_meta(META_SNAPSHOT).map_err(sm_read_err)? {
        Some(bytes) => Ok(Some(
            codec::decode(&bytes, || "snapshot meta".into()).map_err(sm_read_err)?,
        )),
        None => Ok(None),
    }
}

/// Opens the current snapshot's file; `None` when it or its checkpoint is gone.
fn open_current(dir: &Path, meta: &SnapshotMeta) -> Result<Option<std::fs::File>, StorageError> {
    let path = snapshot::file_name(dir, meta);
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "the current snapshot file is missing; a new one will be built");
            return Ok(None);
        }
        Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
    };
    let pointer = snapshot::read_pointer(&mut file).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    if let Some(pointer) = pointer {
        if !pointer.checkpoint.is_dir() {
            tracing::warn!(path = %pointer.checkpoint.display(), "the current snapshot's checkpoint is missing; a new one will be built");
            return Ok(None);
        }
    }
    Ok(Some(file))
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
                    let topics = state.topics.len();
                    let results = apply_request(db, &mut state, &mut batch, log_index, &request);
                    // A system topic created on first use (retry, dead letters) is news too.
                    topics_changed |= state.topics.len() != topics;
                    results
                }
                EntryPayload::Membership(membership) => {
                    let nodes = membership.nodes().map(|(id, n)| (*id, n.clone())).collect::<Vec<_>>();
                    crate::groups::remember_nodes(db, &mut state, &mut batch, nodes);
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    batch.put_cf(db.cf(CF_META), META_MEMBERSHIP, codec::encode(&state.membership));
                    Vec::new()
                }
            };
            responses.push(Response { log_index, results });
        }
        if let Some(corrupt) = state.corrupt.take() {
            // Damaged committed data stops this node loudly rather than let it answer
            // differently from its group; nothing of this batch is written.
            tracing::error!("the state machine stops: {corrupt}");
            return Err(sm_read_err(corrupt));
        }
        write_changes(db, &mut state, &mut batch);
        batch.put_cf(db.cf(CF_META), META_APPLIED, codec::encode(&state.applied));
        db.write(batch, false).map_err(sm_write_err)?;
        state.unwritten_timers.clear();
        state.unwritten_txns.clear();
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
        let stamp = raftmq_common::time::now_nanos();
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{stamp}", l.leader_id.term, l.index),
            None => format!("0-0-{stamp}"),
        };
        let checkpoint_dir = checkpoint_dir(&self.snapshot_dir, &snapshot_id);
        let checkpoint = take_checkpoint(&self.db, &checkpoint_dir)
            .map(|()| checkpoint_dir)
            .map_err(|e| e.to_string());
        SnapshotBuilder {
            db: self.db.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            snapshot_lock: self.snapshot_lock.clone(),
            checkpoint,
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let stamp = raftmq_common::time::now_nanos();
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
        let started = std::time::Instant::now();
        let path = snapshot::file_name(&self.snapshot_dir, meta);
        let tmp = path.with_extension("receiving");
        snapshot.flush().await.map_err(snap_err)?;
        snapshot.sync_all().await.map_err(snap_err)?;
        // The file openraft received into is normally one `begin_receiving_snapshot` made in
        // the snapshot directory: it is kept under its new name rather than copied.
        match self.receiving_path(&snapshot.metadata().await.map_err(snap_err)?) {
            Some(received) => std::fs::rename(received, &tmp).map_err(snap_err)?,
            None => {
                snapshot.seek(std::io::SeekFrom::Start(0)).await.map_err(snap_err)?;
                let mut out = tokio::fs::File::create(&tmp).await.map_err(snap_err)?;
                tokio::io::copy(&mut *snapshot, &mut out).await.map_err(snap_err)?;
                out.sync_all().await.map_err(snap_err)?;
            }
        }
        drop(snapshot);
        let received_at = started.elapsed();
        // Nodes send full snapshots, but a pointer is installable where its checkpoint is found:
        // openraft's storage test suite hands one store's snapshot straight to another.
        let mut received = std::fs::File::open(&tmp).map_err(snap_err)?;
        if snapshot::read_pointer(&mut received).map_err(snap_err)?.is_some() {
            let mut full = snapshot::open_for_sending(received).map_err(snap_err)?;
            let mut out = std::fs::File::create(&tmp).map_err(snap_err)?;
            std::io::copy(&mut full, &mut out).map_err(snap_err)?;
            out.sync_all().map_err(snap_err)?;
        }
        // Checked whole before anything changes: once the install marker is written, a restart
        // redoes the install from this file, and a damaged one would keep the node down.
        let records = snapshot::verify_file(&tmp).map_err(snap_err)?;
        let verified_at = started.elapsed();
        tokio::fs::rename(&tmp, &path).await.map_err(snap_err)?;
        let _guard = self.snapshot_lock.lock().unwrap_or_else(|p| p.into_inner());
        install_from_file(&self.db, &self.shared, &path, meta, &self.log_cache)?;
        let loaded_at = started.elapsed();
        clean_snapshot_dir(&self.snapshot_dir, Some(&meta.snapshot_id), false);
        // The database now holds exactly the snapshot (and perhaps newer log entries, which a
        // pointer's reader skips): keep a checkpoint and a pointer, as a node that built it,
        // instead of a second full copy of the retained log.
        let checkpoint = checkpoint_dir(&self.snapshot_dir, &meta.snapshot_id);
        if checkpoint.exists() {
            // This node's own snapshot, installed again: its old checkpoint goes.
            let _ = std::fs::remove_dir_all(&checkpoint);
        }
        let converted = take_checkpoint(&self.db, &checkpoint)
            .map_err(|e| e.to_string())
            .and_then(|()| snapshot::write_pointer(&path, meta, &checkpoint).map_err(|e| e.to_string()));
        if let Err(e) = converted {
            tracing::warn!(snapshot = %meta.snapshot_id, "keeping the received snapshot file: cannot replace it with a checkpoint: {e}");
            let _ = std::fs::remove_dir_all(&checkpoint);
        }
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            records,
            receive_ms = ms(received_at),
            verify_ms = ms(verified_at - received_at),
            load_ms = ms(loaded_at - verified_at),
            checkpoint_ms = ms(started.elapsed() - loaded_at),
            "installed a snapshot"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(meta) = current_meta(&self.db)? else {
            return Ok(None);
        };
        Ok(open_current(&self.snapshot_dir, &meta)?.map(|file| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

/// Finishes a snapshot from the checkpoint taken in the state machine's task.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    snapshot_dir: PathBuf,
    snapshot_lock: Arc<Mutex<()>>,
    checkpoint: Result<PathBuf, String>,
    meta: SnapshotMeta,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let checkpoint = self
            .checkpoint
            .clone()
            .map_err(|e| snap_err(std::io::Error::other(e)))?;
        let (db, dir, lock, meta) = (
            self.db.clone(),
            self.snapshot_dir.clone(),
            self.snapshot_lock.clone(),
            self.meta.clone(),
        );
        let (current, file) = tokio::task::spawn_blocking(move || {
            let current = publish(&db, &dir, &lock, &meta, &checkpoint)?;
            let file = open_current(&dir, &current)?;
            Ok::<_, StorageError>((current, file))
        })
        .await
        .map_err(|e| snap_err(std::io::Error::other(e.to_string())))??;
        let file = file.ok_or_else(|| snap_err(std::io::Error::other("the snapshot just made current is gone")))?;
        tracing::info!(snapshot = %current.snapshot_id, last = ?current.last_log_id, "snapshot built (checkpoint)");
        Ok(Snapshot {
            meta: current,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}
