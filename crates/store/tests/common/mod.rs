//! What the store's test files share: entries as a committed log carries them, a store opened on
//! a directory, and snapshots built, sent and installed as openraft and the network do.
// Each test file uses a part of it.
#![allow(dead_code)]

use std::path::Path;

use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder, Snapshot};
use raftmq_store::types::{perm, Command, MessageIn, Request, TopicConfig};
use raftmq_store::{body_crc, Entry, LogId, Store, StoreOptions, TypeConfig};
use tokio::io::AsyncWriteExt;

pub fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

pub fn entry(index: u64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request::new(1_000 + index as i64, commands)),
    }
}

pub fn message(body: &str, tags: &str) -> MessageIn {
    MessageIn {
        tags: tags.into(),
        keys: "k1 k2".into(),
        properties: vec![("a".into(), "b".into())],
        body: body.as_bytes().to_vec().into(),
        born_timestamp_ms: 7,
        body_crc: body_crc(body.as_bytes()),
    }
}

pub fn topic(name: &str, queues: u32) -> Command {
    Command::UpsertTopic(TopicConfig {
        name: name.into(),
        write_queues: queues,
        read_queues: queues,
        permission: perm::READ_WRITE,
    })
}

pub fn send(topic: &str, queue: u32, bodies: &[(&str, &str)]) -> Command {
    Command::Send {
        topic: topic.into(),
        queue_id: queue,
        messages: bodies.iter().map(|(b, t)| message(b, t)).collect(),
    }
}

/// Appends and applies entries, as a committed log would.
pub async fn commit(store: &mut Store, entries: Vec<Entry>) -> Vec<raftmq_store::Response> {
    store.log.blocking_append(entries.clone()).await.unwrap();
    store.state_machine.apply(entries).await.unwrap()
}

pub fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap().0
}

/// Sends a snapshot as the network does: encoded chunk by chunk from its checkpoint, then
/// received and installed. Returns the size of what was sent.
pub async fn transfer(snapshot: Snapshot<TypeConfig>, to: &mut Store) -> u64 {
    let pointer = snapshot.snapshot.into_std().await;
    let mut chunks = Vec::new();
    raftmq_store::snapshot::stream_for_sending(pointer, 64 << 10, |c| {
        chunks.push(c);
        true
    })
    .unwrap();
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c.len() == 64 << 10));
    let mut incoming = to.state_machine.begin_receiving_snapshot().await.unwrap();
    let mut size = 0;
    for chunk in chunks {
        incoming.write_all(&chunk).await.unwrap();
        size += chunk.len() as u64;
    }
    to.state_machine
        .install_snapshot(&snapshot.meta, incoming)
        .await
        .unwrap();
    size
}

/// Builds a snapshot as openraft does.
pub async fn build_snapshot(store: &mut Store) -> Snapshot<TypeConfig> {
    store
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

/// The size of the file a snapshot hands out (a pointer, or a full snapshot).
pub async fn handed_out(snapshot: &mut Snapshot<TypeConfig>) -> u64 {
    snapshot.snapshot.metadata().await.unwrap().len()
}

/// Names in a store's snapshot directory, sorted.
pub fn snapshot_dir_names(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.state_machine.snapshot_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
