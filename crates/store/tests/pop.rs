//! POP deliveries as the state machine applies them: grants, races, redelivery, acknowledgement,
//! stale leases, dead letters, and the state surviving a reopen and a snapshot.

use std::path::Path;

use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use raftmq_store::types::{perm, Command, CommandResult, MessageIn, Pop, PopLease, Rejection, Request, TopicConfig};
use raftmq_store::{body_crc, Entry, LogId, Store, StoreOptions};

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// Entry `index` with store timestamp `ts`.
fn entry(index: u64, ts: i64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request::new(ts, commands)),
    }
}

fn message(body: &str) -> MessageIn {
    MessageIn {
        tags: String::new(),
        keys: String::new(),
        properties: vec![],
        body: body.as_bytes().to_vec().into(),
        born_timestamp_ms: 1,
        body_crc: body_crc(body.as_bytes()),
    }
}

fn setup() -> Vec<Command> {
    vec![
        Command::UpsertTopic(TopicConfig {
            name: "T".into(),
            write_queues: 1,
            read_queues: 1,
            permission: perm::READ_WRITE,
        }),
        Command::Send {
            topic: "T".into(),
            queue_id: 0,
            messages: ["m0", "m1", "m2", "m3"].iter().map(|b| message(b)).collect(),
        },
    ]
}

fn pop(redeliver: Vec<PopLease>, new_from: u64, new_to: u64, new: Vec<u64>) -> Command {
    Command::Pop(Pop {
        group: "G".into(),
        topic: "T".into(),
        queue_id: 0,
        redeliver,
        forget: vec![],
        new_from,
        new_to,
        new,
        invisible_ms: 1_000,
    })
}

fn ack(entries: Vec<PopLease>) -> Command {
    Command::PopAck {
        group: "G".into(),
        topic: "T".into(),
        queue_id: 0,
        entries,
    }
}

fn lease(offset: u64, lease: u64) -> PopLease {
    PopLease { offset, lease }
}

async fn commit(store: &mut Store, e: Entry) -> Vec<CommandResult> {
    store.log.blocking_append(vec![e.clone()]).await.unwrap();
    store.state_machine.apply(vec![e]).await.unwrap().remove(0).results
}

fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap().0
}

fn consume_offset(store: &Store) -> Option<u64> {
    store
        .reader
        .consume_offsets("G", Some("T"))
        .into_iter()
        .find(|(_, q, _)| *q == 0)
        .map(|(_, _, o)| o)
}

#[tokio::test]
async fn deliveries_are_granted_once_redelivered_after_expiry_and_acked_by_current_lease_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    commit(&mut store, entry(1, 1_000, setup())).await;

    // Two receives race from the same cursor: only the first one's new offsets are granted.
    let r = commit(
        &mut store,
        entry(
            2,
            2_000,
            vec![pop(vec![], 0, 2, vec![0, 1]), pop(vec![], 0, 2, vec![0, 1])],
        ),
    )
    .await;
    assert_eq!(r[0], CommandResult::Popped(vec![(0, 1), (1, 1)]));
    assert_eq!(r[1], CommandResult::Popped(vec![]), "a stale cursor grants nothing");
    let v = store.reader.pop_view("G", "T", 0, 2_500, 10);
    assert_eq!((v.cursor, v.inflight, v.expired.len()), (2, 2, 0));
    assert_eq!(v.next_visible_at_ms, Some(3_000));

    // Offset 3 is skipped by a filter (the cursor moves past it without delivering it).
    let r = commit(&mut store, entry(3, 2_100, vec![pop(vec![], 2, 4, vec![2])])).await;
    assert_eq!(r[0], CommandResult::Popped(vec![(2, 1)]));

    // Before expiry, a redelivery is refused; after it, granted with attempt 2 and a new lease.
    let r = commit(&mut store, entry(4, 2_900, vec![pop(vec![lease(0, 2)], 4, 4, vec![])])).await;
    assert_eq!(r[0], CommandResult::Popped(vec![]));
    let v = store.reader.pop_view("G", "T", 0, 3_000, 10);
    assert_eq!(v.expired, vec![(lease(0, 2), 1), (lease(1, 2), 1)]);
    let r = commit(&mut store, entry(5, 3_000, vec![pop(vec![lease(0, 2)], 4, 4, vec![])])).await;
    assert_eq!(r[0], CommandResult::Popped(vec![(0, 2)]));

    // The first delivery's handle is stale now; the second's acknowledges it.
    let r = commit(&mut store, entry(6, 3_100, vec![ack(vec![lease(0, 2), lease(1, 2)])])).await;
    assert_eq!(r[0], CommandResult::Acked(vec![false, true]));
    let r = commit(&mut store, entry(7, 3_200, vec![ack(vec![lease(0, 5), lease(1, 2)])])).await;
    assert_eq!(
        r[0],
        CommandResult::Acked(vec![true, false]),
        "an acknowledgement is not repeated"
    );
    assert_eq!(
        consume_offset(&store),
        Some(2),
        "progress stops at the oldest unacknowledged offset"
    );

    // Change invisible: the old lease stops working, the new one (the entry's index) works.
    let change = |l: PopLease| Command::PopChangeInvisible {
        group: "G".into(),
        topic: "T".into(),
        queue_id: 0,
        lease: l,
        invisible_ms: 60_000,
    };
    let r = commit(&mut store, entry(8, 3_300, vec![change(lease(2, 3))])).await;
    assert_eq!(r[0], CommandResult::Done);
    let r = commit(&mut store, entry(9, 3_400, vec![change(lease(2, 3))])).await;
    assert!(matches!(r[0], CommandResult::Rejected(Rejection::StaleLease, _)));
    assert_eq!(
        store.reader.pop_view("G", "T", 0, 10_000, 10).expired,
        vec![],
        "invisible for 60 s now"
    );

    // Dead letter: the message moves to %DLQ%G, created on first use.
    let r = commit(
        &mut store,
        entry(
            10,
            3_500,
            vec![Command::PopDeadLetter {
                group: "G".into(),
                topic: "T".into(),
                queue_id: 0,
                lease: lease(2, 8),
                dlq_topic: "%DLQ%G".into(),
                message: message("m2"),
            }],
        ),
    )
    .await;
    assert!(
        matches!(
            r[0],
            CommandResult::Sent {
                first_offset: 0,
                count: 1,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(store.reader.get("%DLQ%G", 0, 0).unwrap().unwrap().body, &b"m2"[..]);
    assert_eq!(
        consume_offset(&store),
        Some(4),
        "everything below the cursor is settled"
    );
    assert_eq!(store.reader.pop_view("G", "T", 0, 10_000, 10).inflight, 0);

    // The state survives a reopen.
    commit(&mut store, entry(11, 4_000, vec![pop(vec![], 4, 4, vec![])])).await;
    drop(store);
    let store = open(dir.path());
    let v = store.reader.pop_view("G", "T", 0, 10_000, 10);
    assert_eq!((v.cursor, v.inflight), (4, 0));
}

#[tokio::test]
async fn in_flight_deliveries_travel_in_a_snapshot() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = open(leader_dir.path());
    commit(&mut leader, entry(1, 1_000, setup())).await;
    commit(&mut leader, entry(2, 2_000, vec![pop(vec![], 0, 3, vec![0, 2])])).await;
    let snapshot = leader
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut follower = open(follower_dir.path());
    let pointer = snapshot.snapshot.into_std().await;
    let full = raftmq_store::snapshot::open_for_sending(pointer).unwrap();
    let mut source = tokio::fs::File::from_std(full);
    let mut incoming = follower.state_machine.begin_receiving_snapshot().await.unwrap();
    tokio::io::copy(&mut source, &mut *incoming).await.unwrap();
    follower
        .state_machine
        .install_snapshot(&snapshot.meta, incoming)
        .await
        .unwrap();
    let v = follower.reader.pop_view("G", "T", 0, 5_000, 10);
    assert_eq!(v.cursor, 3);
    assert_eq!(v.expired, vec![(lease(0, 2), 1), (lease(2, 2), 1)]);
}

#[tokio::test]
async fn a_new_group_starts_at_its_committed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let mut commands = setup();
    commands.push(Command::CommitOffsets {
        group: "G".into(),
        offsets: vec![raftmq_store::types::OffsetUpdate {
            topic: "T".into(),
            queue_id: 0,
            offset: 3,
        }],
        increase_only: true,
    });
    commit(&mut store, entry(1, 1_000, commands)).await;
    assert_eq!(store.reader.pop_view("G", "T", 0, 0, 1).cursor, 3);
    let r = commit(&mut store, entry(2, 2_000, vec![pop(vec![], 0, 2, vec![0, 1])])).await;
    assert_eq!(
        r[0],
        CommandResult::Popped(vec![]),
        "offsets before the group's position are not handed out"
    );
    let r = commit(&mut store, entry(3, 2_000, vec![pop(vec![], 3, 4, vec![3])])).await;
    assert_eq!(r[0], CommandResult::Popped(vec![(3, 1)]));
}
