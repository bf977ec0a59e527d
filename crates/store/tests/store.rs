//! The store as the broker uses it: apply sends, read them back, reopen, snapshot, corruption.

use std::path::Path;

use tokio::io::AsyncWriteExt;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use raftmq_store::types::{perm, Command, CommandResult, OffsetUpdate, Rejection, TopicConfig};
use raftmq_store::{Entry, OpenError, Store, StoreOptions};

mod common;
use common::*;

#[tokio::test]
async fn sends_get_dense_offsets_and_read_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let responses = commit(
        &mut store,
        vec![
            entry(1, vec![send("T", 0, &[("early", "a")])]),
            entry(2, vec![topic("T", 2)]),
            entry(
                3,
                vec![
                    send("T", 0, &[("m0", "a"), ("m1", "b")]),
                    send("T", 1, &[("other", "a")]),
                    send("T", 5, &[("x", "")]),
                ],
            ),
            entry(4, vec![send("T", 0, &[("m2", "c")])]),
        ],
    )
    .await;
    assert!(matches!(
        responses[0].results[0],
        CommandResult::Rejected(Rejection::TopicNotFound, _)
    ));
    assert_eq!(
        responses[2].results[0],
        CommandResult::Sent {
            first_offset: 0,
            count: 2,
            first_position: 0
        }
    );
    assert_eq!(
        responses[2].results[1],
        CommandResult::Sent {
            first_offset: 0,
            count: 1,
            first_position: 2
        }
    );
    assert!(matches!(
        responses[2].results[2],
        CommandResult::Rejected(Rejection::QueueNotFound, _)
    ));
    assert_eq!(
        responses[3].results[0],
        CommandResult::Sent {
            first_offset: 2,
            count: 1,
            first_position: 0
        }
    );

    let r = store.reader.read("T", 0, 0, 10, u64::MAX, &|_| true).unwrap();
    let bodies: Vec<_> = r
        .messages
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, ["m0", "m1", "m2"]);
    assert_eq!((r.next_offset, r.min_offset, r.max_offset), (3, 0, 3));
    let m1 = &r.messages[1];
    assert_eq!((m1.queue_offset, m1.log_index, m1.store_timestamp_ms), (1, 3, 1003));
    assert_eq!(m1.tags, "b");
    assert_eq!(m1.keys, "k1 k2");
    assert_eq!(m1.properties, vec![("a".to_string(), "b".to_string())]);
    assert_ne!(r.messages[0].msg_id, m1.msg_id);

    // Tag filter skips, and the next offset moves past what it skipped.
    let r = store.reader.read("T", 0, 0, 10, u64::MAX, &|tags| tags == "c").unwrap();
    assert_eq!(r.messages.len(), 1);
    assert_eq!(r.messages[0].queue_offset, 2);
    assert_eq!(r.next_offset, 3);

    // Max messages, max bytes (at least one), reading past the end.
    assert_eq!(
        store
            .reader
            .read("T", 0, 0, 2, u64::MAX, &|_| true)
            .unwrap()
            .next_offset,
        2
    );
    assert_eq!(
        store.reader.read("T", 0, 0, 10, 1, &|_| true).unwrap().messages.len(),
        1
    );
    assert!(store
        .reader
        .read("T", 0, 3, 10, u64::MAX, &|_| true)
        .unwrap()
        .messages
        .is_empty());
    assert_eq!(store.reader.get("T", 1, 0).unwrap().unwrap().body, &b"other"[..]);
    assert!(store.reader.get("T", 1, 1).unwrap().is_none());

    // Search by store timestamp.
    assert_eq!(store.reader.search_offset("T", 0, 0).unwrap(), 0);
    assert_eq!(store.reader.search_offset("T", 0, 1004).unwrap(), 2);
    assert_eq!(store.reader.search_offset("T", 0, 9999).unwrap(), 3);
}

#[tokio::test]
async fn offsets_topics_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let commit_offset = |offset, increase_only| Command::CommitOffsets {
        group: "g".into(),
        offsets: vec![OffsetUpdate {
            topic: "T".into(),
            queue_id: 0,
            offset,
        }],
        increase_only,
    };
    commit(
        &mut store,
        vec![entry(
            1,
            vec![topic("T", 1), commit_offset(5, true), commit_offset(3, true)],
        )],
    )
    .await;
    assert_eq!(
        store.reader.consume_offsets("g", Some("T")),
        vec![("T".to_string(), 0, 5)]
    );
    commit(&mut store, vec![entry(2, vec![commit_offset(3, false)])]).await;
    assert_eq!(store.reader.consume_offsets("g", None), vec![("T".to_string(), 0, 3)]);

    let bad = TopicConfig {
        name: "U".into(),
        write_queues: 0,
        read_queues: 1,
        permission: perm::READ_WRITE,
    };
    let r = commit(
        &mut store,
        vec![entry(3, vec![Command::UpsertTopic(bad), send("T", 0, &[("x", "")])])],
    )
    .await;
    assert!(matches!(
        r[0].results[0],
        CommandResult::Rejected(Rejection::InvalidArgument, _)
    ));

    let read_only = TopicConfig {
        name: "T".into(),
        write_queues: 1,
        read_queues: 1,
        permission: perm::READ,
    };
    let r = commit(
        &mut store,
        vec![entry(
            4,
            vec![Command::UpsertTopic(read_only), send("T", 0, &[("y", "")])],
        )],
    )
    .await;
    assert!(matches!(
        r[0].results[1],
        CommandResult::Rejected(Rejection::NoPermission, _)
    ));
    assert_eq!(store.reader.queue_state("T", 0).next_offset, 1);

    commit(
        &mut store,
        vec![entry(5, vec![Command::DeleteTopic { name: "T".into() }])],
    )
    .await;
    assert!(store.reader.topic("T").is_none());
    assert!(store.reader.consume_offsets("g", None).is_empty());
    assert_eq!(store.reader.queue_state("T", 0).next_offset, 0);
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        commit(
            &mut store,
            vec![
                entry(1, vec![topic("T", 1)]),
                entry(2, vec![send("T", 0, &[("a", ""), ("b", "")])]),
            ],
        )
        .await;
    }
    let (mut store, recovered) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(recovered.last_index, Some(2));
    assert_eq!(recovered.applied_index, Some(2));
    let (applied, _) = store.state_machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2)));
    let r = store.reader.read("T", 0, 0, 10, u64::MAX, &|_| true).unwrap();
    assert_eq!(
        r.messages.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    let state = store.log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(2)));
}

#[tokio::test]
async fn a_snapshot_carries_the_messages_to_another_node() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = open(leader_dir.path());
    commit(
        &mut leader,
        vec![
            entry(1, vec![topic("T", 1)]),
            entry(2, vec![send("T", 0, &[("a", "x"), ("b", "y")])]),
        ],
    )
    .await;
    let snapshot = build_snapshot(&mut leader).await;
    leader.log.purge(log_id(2)).await.unwrap();

    let mut follower = open(follower_dir.path());
    transfer(snapshot, &mut follower).await;

    let r = follower.reader.read("T", 0, 0, 10, u64::MAX, &|_| true).unwrap();
    assert_eq!(
        r.messages.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    assert_eq!(follower.reader.applied_index(), 2);
    drop(follower);
    // And it is still there after a restart.
    let follower = open(follower_dir.path());
    assert_eq!(follower.reader.get("T", 0, 1).unwrap().unwrap().body, &b"b"[..]);
    // The leader still serves its purged (but retained) entries.
    assert_eq!(leader.reader.get("T", 0, 0).unwrap().unwrap().body, &b"a"[..]);
}

#[tokio::test]
async fn building_a_snapshot_copies_no_message_and_it_still_travels_whole() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut leader = open(dirs[0].path());
    // 2,000 bodies of 1 KiB: 2 MB of commit log.
    let body = "x".repeat(1024);
    let mut entries = vec![entry(1, vec![topic("T", 2)])];
    for i in 0..20u64 {
        let bodies: Vec<(&str, &str)> = (0..100).map(|_| (body.as_str(), "")).collect();
        entries.push(entry(2 + i, vec![send("T", (i % 2) as u32, &bodies)]));
    }
    commit(&mut leader, entries).await;
    let mut snapshot = build_snapshot(&mut leader).await;
    // What the build wrote is a pointer to a checkpoint, not a copy of the log.
    let pointer = handed_out(&mut snapshot).await;
    assert!(pointer < 4096, "a built snapshot is {pointer} bytes");
    let id = snapshot.meta.snapshot_id.clone();
    assert_eq!(
        snapshot_dir_names(&leader),
        vec![format!("{id}.snap"), format!("checkpoint-{id}")]
    );
    leader.log.purge(log_id(21)).await.unwrap();
    // Entries applied after the build are not part of it.
    commit(&mut leader, vec![entry(22, vec![send("T", 0, &[("late", "")])])]).await;

    // Sent, it carries every body: the follower reads all 2,000.
    let mut follower = open(dirs[1].path());
    let sent = transfer(snapshot, &mut follower).await;
    assert!(sent > 2_000 * 1024, "sent {sent} bytes");
    // Nothing of the transfer is left behind: the received file became the snapshot, which
    // then became a pointer to a checkpoint of the follower's own.
    assert_eq!(
        snapshot_dir_names(&follower),
        vec![format!("{id}.snap"), format!("checkpoint-{id}")]
    );
    let read_all = |store: &Store| {
        (0..2u32)
            .map(|q| {
                let r = store.reader.read("T", q, 0, 2_000, u64::MAX, &|_| true).unwrap();
                assert!(r.messages.iter().all(|m| m.body == body.as_bytes()));
                r.messages.len()
            })
            .sum::<usize>()
    };
    assert_eq!(read_all(&follower), 2_000);
    assert_eq!(follower.reader.applied_index(), 21);
    // The sending copy is gone once sent; the leader keeps its one pointer and checkpoint.
    assert_eq!(snapshot_dir_names(&leader).len(), 2);

    // The follower keeps a pointer of its own too, and can pass the snapshot on, also after a
    // restart.
    let mut current = follower.state_machine.get_current_snapshot().await.unwrap().unwrap();
    assert!(handed_out(&mut current).await < 4096);
    drop(follower);
    let mut follower = open(dirs[1].path());
    let current = follower.state_machine.get_current_snapshot().await.unwrap().unwrap();
    let mut third = open(dirs[2].path());
    transfer(current, &mut third).await;
    assert_eq!(read_all(&third), 2_000);

    // A newer snapshot replaces the old one's pointer and checkpoint.
    let newer = build_snapshot(&mut leader).await;
    let new_id = newer.meta.snapshot_id.clone();
    assert_ne!(new_id, id);
    assert_eq!(
        snapshot_dir_names(&leader),
        vec![format!("{new_id}.snap"), format!("checkpoint-{new_id}")]
    );
    // A restart keeps the current snapshot and removes what a crash could leave behind.
    let leftover = leader.state_machine.snapshot_dir().join("incoming-1.tmp");
    std::fs::write(&leftover, b"partial").unwrap();
    drop(newer);
    drop(leader);
    let mut leader = open(dirs[0].path());
    assert_eq!(
        snapshot_dir_names(&leader),
        vec![format!("{new_id}.snap"), format!("checkpoint-{new_id}")]
    );
    let current = leader.state_machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.snapshot_id, new_id);
    drop(follower);
    let fresh_dir = tempfile::tempdir().unwrap();
    let mut fresh = open(fresh_dir.path());
    transfer(current, &mut fresh).await;
    assert_eq!(fresh.reader.get("T", 0, 1_000).unwrap().unwrap().body, &b"late"[..]);
}

#[tokio::test]
async fn a_streamed_snapshot_is_the_written_out_one_and_a_cut_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let body = "y".repeat(3000);
    let bodies: Vec<(&str, &str)> = (0..50).map(|_| (body.as_str(), "")).collect();
    commit(
        &mut store,
        vec![entry(1, vec![topic("T", 1)]), entry(2, vec![send("T", 0, &bodies)])],
    )
    .await;
    let snapshot = build_snapshot(&mut store).await;
    let pointer = snapshot.snapshot.into_std().await;
    let mut whole = Vec::new();
    std::io::Read::read_to_end(
        &mut raftmq_store::snapshot::open_for_sending(pointer.try_clone().unwrap()).unwrap(),
        &mut whole,
    )
    .unwrap();
    let mut streamed = Vec::new();
    raftmq_store::snapshot::stream_for_sending(pointer.try_clone().unwrap(), 1000, |c| {
        streamed.extend_from_slice(&c);
        true
    })
    .unwrap();
    assert!(whole.len() > 150_000, "{}", whole.len());
    assert!(streamed == whole, "the stream differs from the file");

    // A sink that stops early makes the stream fail, never end quietly.
    let mut taken = 0;
    let cut = raftmq_store::snapshot::stream_for_sending(pointer.try_clone().unwrap(), 1000, |_| {
        taken += 1;
        taken < 5
    });
    assert!(cut.is_err());
    // And a snapshot cut short is refused by the receiver, which keeps what it had.
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = open(other_dir.path());
    commit(&mut other, vec![entry(1, vec![topic("Mine", 1)])]).await;
    let mut incoming = other.state_machine.begin_receiving_snapshot().await.unwrap();
    incoming.write_all(&whole[..whole.len() - 10]).await.unwrap();
    assert!(other
        .state_machine
        .install_snapshot(&snapshot.meta, incoming)
        .await
        .is_err());
    drop(other);
    let other = open(other_dir.path());
    assert_eq!(other.reader.applied_index(), 1);

    // A newer snapshot may remove the checkpoint while a long transfer reads it: the stream
    // still completes, the same.
    let checkpoint = store
        .state_machine
        .snapshot_dir()
        .join(format!("checkpoint-{}", snapshot.meta.snapshot_id));
    let mut streamed = Vec::new();
    raftmq_store::snapshot::stream_for_sending(pointer.try_clone().unwrap(), 1000, |c| {
        if streamed.is_empty() {
            std::fs::remove_dir_all(&checkpoint).unwrap();
        }
        streamed.extend_from_slice(&c);
        true
    })
    .unwrap();
    assert!(streamed == whole, "the stream read while its checkpoint went differs");
}

#[tokio::test]
async fn a_purge_ahead_of_an_install_that_fails_is_not_kept() {
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = open(leader_dir.path());
    commit(
        &mut leader,
        vec![
            entry(1, vec![topic("T", 1)]),
            entry(2, vec![send("T", 0, &[("a", "")])]),
        ],
    )
    .await;
    let snapshot = build_snapshot(&mut leader).await;
    let pointer = snapshot.snapshot.into_std().await;
    let mut whole = Vec::new();
    raftmq_store::snapshot::stream_for_sending(pointer, 1 << 20, |c| {
        whole.extend_from_slice(&c);
        true
    })
    .unwrap();

    // openraft 0.9 purges up to the snapshot as the install starts; the install then fails.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut follower = open(dir.path());
        follower.log.purge(log_id(2)).await.unwrap();
        let mut incoming = follower.state_machine.begin_receiving_snapshot().await.unwrap();
        incoming.write_all(&whole[..whole.len() / 2]).await.unwrap();
        assert!(follower
            .state_machine
            .install_snapshot(&snapshot.meta, incoming)
            .await
            .is_err());
    }
    // The node starts again (nothing claims the log purged past what it applied) and can still
    // take the snapshot.
    let mut follower = Store::open(dir.path(), StoreOptions::default())
        .expect("a failed install leaves a store that opens")
        .0;
    assert_eq!(follower.log.get_log_state().await.unwrap().last_purged_log_id, None);
    follower.log.purge(log_id(2)).await.unwrap();
    let mut incoming = follower.state_machine.begin_receiving_snapshot().await.unwrap();
    incoming.write_all(&whole).await.unwrap();
    follower
        .state_machine
        .install_snapshot(&snapshot.meta, incoming)
        .await
        .unwrap();
    drop(follower);
    // A completed install records the purge itself.
    let mut follower = open(dir.path());
    assert_eq!(
        follower.log.get_log_state().await.unwrap().last_purged_log_id,
        Some(log_id(2))
    );
    assert_eq!(follower.reader.get("T", 0, 0).unwrap().unwrap().body, &b"a"[..]);
}

#[tokio::test]
async fn a_snapshot_whose_checkpoint_is_gone_is_not_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    commit(&mut store, vec![entry(1, vec![topic("T", 1)])]).await;
    let snapshot = build_snapshot(&mut store).await;
    let checkpoint = store
        .state_machine
        .snapshot_dir()
        .join(format!("checkpoint-{}", snapshot.meta.snapshot_id));
    std::fs::remove_dir_all(checkpoint).unwrap();
    // openraft then builds a new one (at start, or when a slave needs it).
    assert!(store.state_machine.get_current_snapshot().await.unwrap().is_none());
    let rebuilt = build_snapshot(&mut store).await;
    assert_eq!(rebuilt.meta.last_log_id, Some(log_id(1)));
    assert!(store.state_machine.get_current_snapshot().await.unwrap().is_some());
}

/// Stores topic T (entry 1) and message "payload" in its queue 0 (entry 2), then `more`, and
/// closes the store.
async fn store_one_message(dir: &Path, more: Vec<Entry>) {
    let mut store = open(dir);
    let mut entries = vec![
        entry(1, vec![topic("T", 1)]),
        entry(2, vec![send("T", 0, &[("payload", "")])]),
    ];
    entries.extend(more);
    commit(&mut store, entries).await;
}

/// Changes a closed store's database directly, as a bad disk or another build would.
fn edit_db(dir: &Path, edit: impl FnOnce(&raftmq_store::db::Db)) {
    let db = raftmq_store::db::Db::open(&dir.join("db")).unwrap();
    edit(&db);
}

/// A store written by a build with another log format (one without a recorded format is
/// format 1) is refused with a message naming both formats, never read as garbage; a store
/// this build wrote opens again.
#[tokio::test]
async fn a_store_in_another_format_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    store_one_message(dir.path(), vec![]).await;
    let store = open(dir.path());
    assert_eq!(store.reader.get("T", 0, 0).unwrap().unwrap().body, &b"payload"[..]);
    drop(store);
    let reopen_as = |format: Option<u32>| {
        edit_db(dir.path(), |db| {
            let cf = db.cf(raftmq_store::db::CF_META);
            match format {
                Some(f) => db
                    .db
                    .put_cf(cf, raftmq_store::db::META_FORMAT, raftmq_store::codec::encode(&f)),
                None => db.db.delete_cf(cf, raftmq_store::db::META_FORMAT),
            }
            .unwrap();
        });
        match Store::open(dir.path(), StoreOptions::default()) {
            Err(e) => e,
            Ok(_) => panic!("a store in format {format:?} opened"),
        }
    };
    for (format, found) in [(None, 1), (Some(3), 3)] {
        let err = reopen_as(format);
        assert!(
            matches!(err, OpenError::Format { found: f, expected: 2, .. } if f == found),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("format {found}")), "{err}");
    }
}

#[tokio::test]
async fn a_corrupted_committed_record_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    store_one_message(dir.path(), vec![entry(3, vec![])]).await;
    // Flip one byte of entry 2, as a bad disk would.
    edit_db(dir.path(), |db| {
        let cf = db.cf(raftmq_store::db::CF_LOG);
        let key = raftmq_store::keys::log(2);
        let mut value = db.db.get_cf(cf, key).unwrap().unwrap();
        let last = value.len() - 2;
        value[last] ^= 0xff;
        db.db.put_cf(cf, key, value).unwrap();
    });
    let err = match Store::open(dir.path(), StoreOptions::default()) {
        Err(e) => e,
        Ok(_) => panic!("a corrupted store opened"),
    };
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("log entry 2") && text.contains("checksum mismatch"),
        "{text}"
    );
    assert!(text.contains("refuses to start"), "{text}");
}

#[tokio::test]
async fn a_missing_committed_entry_is_caught_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        commit(
            &mut store,
            vec![entry(1, vec![topic("T", 1)]), entry(2, vec![]), entry(3, vec![])],
        )
        .await;
    }
    {
        let db = raftmq_store::db::Db::open(&dir.path().join("db")).unwrap();
        db.db
            .delete_cf(db.cf(raftmq_store::db::CF_LOG), raftmq_store::keys::log(3))
            .unwrap();
    }
    let err = Store::open(dir.path(), StoreOptions::default())
        .err()
        .expect("must refuse");
    assert!(matches!(err, OpenError::WentBackwards { .. }), "{err}");
}

#[tokio::test]
async fn retention_deletes_old_entries_but_never_what_raft_still_needs() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    // Entry i is stored at 1000 + i ms.
    commit(
        &mut store,
        vec![
            entry(1, vec![topic("T", 1)]),
            entry(2, vec![send("T", 0, &[("a", ""), ("b", "")])]),
            entry(3, vec![send("T", 0, &[("c", "")])]),
            entry(4, vec![send("T", 0, &[("d", "")])]),
        ],
    )
    .await;
    // Nothing is purged yet: nothing may go, however old.
    let report = store.retention.run(i64::MAX, u64::MAX).unwrap();
    assert_eq!(report.deleted_entries, 0);

    store.log.purge(log_id(3)).await.unwrap();
    // Everything before 1003 ms goes: entries 1 and 2.
    let report = store.retention.run(1003, 0).unwrap();
    assert_eq!(report.deleted_entries, 2);
    assert_eq!(report.first_index, Some(3));
    let r = store.reader.read("T", 0, 0, 10, u64::MAX, &|_| true).unwrap();
    assert_eq!(r.min_offset, 2, "the queue starts after the deleted messages");
    assert_eq!(
        r.messages.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        vec![b"c".to_vec(), b"d".to_vec()]
    );
    assert!(store.reader.get("T", 0, 0).unwrap().is_none());

    // Disk pressure deletes early, but still not past the purge point (entry 3).
    let report = store.retention.run(0, 100).unwrap();
    assert_eq!(report.deleted_entries, 1);
    assert_eq!(store.reader.queue_state("T", 0).min_offset, 3);
    assert_eq!(store.reader.get("T", 0, 3).unwrap().unwrap().body, &b"d"[..]);

    // It all holds after a restart, and the recovery checks accept the shortened log.
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.reader.queue_state("T", 0).min_offset, 3);
    assert_eq!(store.reader.get("T", 0, 3).unwrap().unwrap().body, &b"d"[..]);
}

/// Every message body goes through the WAL; old WAL files must go once their data is in table
/// files, or a busy node keeps gigabytes of WAL on disk and replays all of it after a crash.
#[tokio::test]
async fn the_wal_stays_bounded_under_a_steady_stream_of_sends() {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let mut store = open(dir.path());
    commit(&mut store, vec![entry(1, vec![topic("T", 4)])]).await;
    let wal_bytes = |dir: &Path| -> u64 {
        std::fs::read_dir(dir.join("db"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    // 3 × the bound in 1 MiB entries of incompressible bodies (128 × 8 KiB each).
    let body: String = (0..8192u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    let entries = 3 * raftmq_store::db::MAX_TOTAL_WAL_BYTES / (1 << 20);
    for i in 0..entries {
        let bodies: Vec<(&str, &str)> = (0..128).map(|_| (body.as_str(), "t")).collect();
        commit(&mut store, vec![entry(2 + i, vec![send("T", (i % 4) as u32, &bodies)])]).await;
    }
    // Flushes run in the background: wait for the oldest WAL files to be released. Besides the
    // live WAL, a few released files stay to be written over (never replayed), each about one
    // write buffer long.
    let buffer = raftmq_store::db::LOG_WRITE_BUFFER_BYTES as u64;
    let limit = raftmq_store::db::MAX_TOTAL_WAL_BYTES + buffer + raftmq_store::db::RECYCLED_WALS as u64 * buffer;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = wal_bytes(dir.path());
        if now <= limit {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{now} bytes of WAL after {} MiB of sends; expected at most {limit}",
            entries
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
