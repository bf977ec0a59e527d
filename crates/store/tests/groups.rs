//! Consumer groups in the store: settings are replicated state that survives a reopen and
//! travels with a snapshot; a message sent back is a timer on the group's retry topic (created
//! on first use) or a message of its dead-letter topic, and nothing else.

use raftmq_store::groups::{Backoff, GroupConfig};
use raftmq_store::types::{Command, CommandResult, Rejection};

mod common;
use common::*;

fn settings() -> GroupConfig {
    GroupConfig {
        name: "G".into(),
        max_reconsume_times: Some(3),
        backoff: Some(Backoff::Exponential {
            initial_ms: 100,
            max_ms: 10_000,
            multiplier: 2,
        }),
    }
}

fn send_back(topic: &str, due_ms: Option<i64>) -> Command {
    Command::SendBack {
        group: "G".into(),
        topic: topic.into(),
        due_ms,
        message: message("failed", "t"),
    }
}

#[tokio::test]
async fn settings_survive_a_reopen_and_travel_with_a_snapshot() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(a_dir.path());
    let bad = GroupConfig {
        backoff: Some(Backoff::Table(vec![])),
        ..settings()
    };
    let r = commit(
        &mut a,
        vec![entry(
            1,
            vec![Command::UpdateGroup(settings()), Command::UpdateGroup(bad)],
        )],
    )
    .await;
    assert_eq!(r[0].results[0], CommandResult::Done);
    assert!(matches!(
        r[0].results[1],
        CommandResult::Rejected(Rejection::InvalidArgument, _)
    ));
    assert_eq!(a.reader.group("G"), settings());
    assert_eq!(a.reader.group("other"), GroupConfig::new("other"), "defaults");
    drop(a);
    let mut a = open(a_dir.path());
    assert_eq!(a.reader.groups(), vec![settings()], "stored, not only in memory");

    let snapshot = build_snapshot(&mut a).await;
    let mut b = open(b_dir.path());
    transfer(snapshot, &mut b).await;
    assert_eq!(b.reader.group("G"), settings(), "came with the snapshot");
}

#[tokio::test]
async fn a_message_sent_back_waits_on_the_retry_topic_or_lands_in_the_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    // Entry 1 has timestamp 1001: the retry is due at 5000.
    let r = commit(
        &mut store,
        vec![entry(
            1,
            vec![
                send_back("%RETRY%G", Some(5_000)),
                send_back("%DLQ%G", None),
                send_back("%DLQ%G", Some(5_000)),
                send_back("%RETRY%other", Some(5_000)),
            ],
        )],
    )
    .await;
    assert_eq!(r[0].results[0], CommandResult::Scheduled { position: 0 });
    assert!(matches!(
        r[0].results[1],
        CommandResult::Sent {
            first_offset: 0,
            count: 1,
            ..
        }
    ));
    for refused in &r[0].results[2..] {
        assert!(
            matches!(refused, CommandResult::Rejected(Rejection::InvalidArgument, _)),
            "a send-back to another topic: {refused:?}"
        );
    }
    for name in ["%RETRY%G", "%DLQ%G"] {
        let t = store.reader.topic(name).expect("created on first use");
        assert_eq!((t.write_queues, t.read_queues), (1, 1));
    }
    assert!(store.reader.topic("%RETRY%other").is_none());
    assert_eq!(store.reader.pending_timers(), 1);
    let due = store.reader.due_timers(None, 5_000, 10).unwrap();
    assert_eq!((due[0].target.topic.as_str(), due[0].target.queue_id), ("%RETRY%G", 0));
    let dead = store.reader.read("%DLQ%G", 0, 0, 10, u64::MAX, &|_| true).unwrap();
    assert_eq!(dead.messages.len(), 1);
    assert_eq!(dead.messages[0].body, &b"failed"[..]);
}

fn lock(client: &str, queues: &[u32], lease_ms: u64) -> Command {
    Command::LockQueues {
        group: "G".into(),
        topic: "T".into(),
        client_id: client.into(),
        queues: queues.to_vec(),
        lease_ms,
    }
}

/// Entry `index` stamped `time_ms`.
fn entry_at(index: u64, time_ms: i64, commands: Vec<Command>) -> raftmq_store::Entry {
    raftmq_store::Entry {
        log_id: log_id(index),
        payload: openraft::EntryPayload::Normal(raftmq_store::types::Request::new(time_ms, commands)),
    }
}

/// Queue locks go by entry time only: a held lock is refused to another member until its
/// lease ends, renewed by its holder, released by it alone, and kept across a reopen.
#[tokio::test]
async fn queue_locks_are_granted_by_entry_time_renewed_released_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let r = commit(
        &mut s,
        vec![
            entry_at(1, 1001, vec![lock("a", &[0, 1], 5)]),
            entry_at(2, 1002, vec![lock("b", &[0, 1, 2], 5)]),
            entry_at(3, 1003, vec![lock("a", &[0], 5)]),
            entry_at(4, 1007, vec![lock("b", &[0, 1], 5)]),
            entry_at(
                5,
                1009,
                vec![
                    Command::UnlockQueues {
                        group: "G".into(),
                        topic: "T".into(),
                        client_id: "a".into(),
                        queues: vec![0, 2],
                    },
                    lock("c", &[0, 2], 5),
                ],
            ),
            entry_at(6, 1010, vec![lock("a", &[0], 0)]),
        ],
    )
    .await;
    assert_eq!(r[0].results[0], CommandResult::Locked(vec![0, 1]));
    assert_eq!(r[1].results[0], CommandResult::Locked(vec![2]), "a holds 0 and 1");
    assert_eq!(r[2].results[0], CommandResult::Locked(vec![0]), "a renews 0 until 1008");
    assert_eq!(
        r[3].results[0],
        CommandResult::Locked(vec![1]),
        "a's lock on 1 ended at 1006, on 0 not before 1008"
    );
    assert_eq!(
        r[4].results[1],
        CommandResult::Locked(vec![0, 2]),
        "a released 0 (not b's 2, which expired at 1007 anyway)"
    );
    assert!(matches!(
        r[5].results[0],
        CommandResult::Rejected(Rejection::InvalidArgument, _)
    ));
    drop(s);
    let mut s = open(dir.path());
    let r = commit(&mut s, vec![entry_at(7, 1011, vec![lock("d", &[0, 1], 5)])]).await;
    assert_eq!(
        r[0].results[0],
        CommandResult::Locked(vec![]),
        "c holds 0, b holds 1, after a reopen"
    );
}
