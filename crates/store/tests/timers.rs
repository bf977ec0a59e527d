//! Delayed messages in the store: a pending timer is on disk, counted, found when due, travels
//! with a snapshot, and is delivered or recalled exactly once, also when a delivery and a recall
//! (or two deliveries) are applied in one batch.

use raftmq_store::timers::Timer;
use raftmq_store::types::{Command, CommandResult, Rejection};
use raftmq_store::Store;

mod common;
use common::*;

/// Entry `index` has timestamp 1000 + index (see `common::entry`).
const DUE: i64 = 1_004;

fn schedule(body: &str) -> Command {
    Command::Schedule {
        topic: "T".into(),
        queue_id: 0,
        due_ms: DUE,
        message: message(body, ""),
    }
}

fn deliver(timer: Timer, body: &str) -> Command {
    Command::Deliver {
        timer,
        topic: "T".into(),
        queue_id: 0,
        message: message(body, ""),
    }
}

/// A store with topic T (entry 1) and one delayed message scheduled by entry 2, due at entry 4.
async fn scheduled(dir: &std::path::Path) -> (Store, Timer) {
    let mut store = open(dir);
    commit(&mut store, vec![entry(1, vec![topic("T", 1)])]).await;
    let r = commit(&mut store, vec![entry(2, vec![schedule("later")])]).await;
    assert_eq!(r[0].results, vec![CommandResult::Scheduled { position: 0 }]);
    let timer = Timer {
        due_ms: DUE,
        log_index: 2,
        position: 0,
    };
    (store, timer)
}

fn bodies(store: &Store) -> Vec<Vec<u8>> {
    let read = store.reader.read("T", 0, 0, 100, u64::MAX, &|_| true).unwrap();
    read.messages.into_iter().map(|m| m.body.to_vec()).collect()
}

#[tokio::test]
async fn a_pending_timer_travels_with_a_snapshot_and_is_delivered_once() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, timer) = scheduled(a_dir.path()).await;
    assert_eq!(a.reader.pending_timers(), 1);
    assert!(
        bodies(&a).is_empty(),
        "a delayed message is in no queue before its time"
    );
    assert!(a.reader.due_timers(None, DUE - 1, 10).unwrap().is_empty());
    let due = a.reader.due_timers(None, DUE, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].timer, due[0].target.message.body.as_ref()),
        (timer, &b"later"[..])
    );

    let snapshot = build_snapshot(&mut a).await;
    let mut b = open(b_dir.path());
    transfer(snapshot, &mut b).await;
    assert_eq!(b.reader.pending_timers(), 1, "the timer came with the snapshot");
    assert_eq!(b.reader.due_timers(None, DUE, 10).unwrap(), due);

    // Too early by the entry's own time: refused, still pending.
    let r = commit(&mut b, vec![entry(3, vec![deliver(timer, "later")])]).await;
    assert!(matches!(
        r[0].results[0],
        CommandResult::Rejected(Rejection::InvalidArgument, _)
    ));
    assert_eq!(b.reader.pending_timers(), 1);
    // Due: delivered once, however often it is proposed (a second master, a retry).
    let r = commit(&mut b, vec![entry(4, vec![deliver(timer, "later")])]).await;
    assert!(matches!(
        r[0].results[0],
        CommandResult::Sent {
            first_offset: 0,
            count: 1,
            ..
        }
    ));
    let r = commit(&mut b, vec![entry(5, vec![deliver(timer, "later")])]).await;
    assert_eq!(r[0].results[0], CommandResult::Done);
    assert_eq!(bodies(&b), vec![b"later".to_vec()]);
    assert_eq!(b.reader.pending_timers(), 0);
    let r = commit(&mut b, vec![entry(6, vec![Command::Recall { timer }])]).await;
    assert!(matches!(
        r[0].results[0],
        CommandResult::Rejected(Rejection::AlreadyDelivered, _)
    ));

    // Reopened, it stays delivered and counted.
    drop(b);
    let b = open(b_dir.path());
    assert_eq!(b.reader.pending_timers(), 0);
    assert_eq!(bodies(&b), vec![b"later".to_vec()]);
}

#[tokio::test]
async fn a_recall_and_deliveries_in_one_batch_end_the_timer_once() {
    // Recall first: the deliveries that follow in the same batch store nothing.
    let dir = tempfile::tempdir().unwrap();
    let (mut store, timer) = scheduled(dir.path()).await;
    commit(&mut store, vec![entry(3, vec![])]).await;
    let r = commit(
        &mut store,
        vec![
            entry(4, vec![Command::Recall { timer }]),
            entry(5, vec![deliver(timer, "later"), deliver(timer, "later")]),
        ],
    )
    .await;
    assert_eq!(r[0].results, vec![CommandResult::Done]);
    assert_eq!(r[1].results, vec![CommandResult::Done, CommandResult::Done]);
    assert!(bodies(&store).is_empty(), "a recalled message is never delivered");
    assert_eq!(store.reader.pending_timers(), 0);

    // Delivery first: stored once, and the recall after it in the same batch is refused.
    let dir = tempfile::tempdir().unwrap();
    let (mut store, timer) = scheduled(dir.path()).await;
    commit(&mut store, vec![entry(3, vec![])]).await;
    let r = commit(
        &mut store,
        vec![
            entry(4, vec![deliver(timer, "later"), deliver(timer, "later")]),
            entry(5, vec![Command::Recall { timer }]),
        ],
    )
    .await;
    assert!(matches!(r[0].results[0], CommandResult::Sent { .. }));
    assert_eq!(r[0].results[1], CommandResult::Done);
    assert!(matches!(
        r[1].results[0],
        CommandResult::Rejected(Rejection::AlreadyDelivered, _)
    ));
    assert_eq!(bodies(&store), vec![b"later".to_vec()]);
    let r = commit(&mut store, vec![entry(6, vec![Command::Recall { timer }])]).await;
    assert!(matches!(
        r[0].results[0],
        CommandResult::Rejected(Rejection::AlreadyDelivered, _)
    ));
}

#[tokio::test]
async fn a_timer_for_a_missing_topic_or_too_far_ahead_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let r = commit(&mut store, vec![entry(1, vec![schedule("nowhere")])]).await;
    assert!(matches!(
        r[0].results[0],
        CommandResult::Rejected(Rejection::TopicNotFound, _)
    ));
    commit(&mut store, vec![entry(2, vec![topic("T", 1)])]).await;
    let far = Command::Schedule {
        topic: "T".into(),
        queue_id: 0,
        due_ms: 1_003 + raftmq_store::timers::MAX_DELAY_MS + 1,
        message: message("far", ""),
    };
    let r = commit(&mut store, vec![entry(3, vec![far])]).await;
    assert!(matches!(
        r[0].results[0],
        CommandResult::Rejected(Rejection::InvalidArgument, _)
    ));
    assert_eq!(store.reader.pending_timers(), 0);
}

#[tokio::test]
async fn a_scan_goes_on_after_the_timer_it_was_given() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    commit(&mut store, vec![entry(1, vec![topic("T", 1)])]).await;
    commit(
        &mut store,
        vec![entry(2, vec![schedule("a"), schedule("b"), schedule("c")])],
    )
    .await;
    let first = store.reader.due_timers(None, DUE, 2).unwrap();
    assert_eq!(first.len(), 2);
    let rest = store.reader.due_timers(Some(&first[1].timer), DUE, 10).unwrap();
    let bodies: Vec<&[u8]> = rest.iter().map(|d| d.target.message.body.as_ref()).collect();
    assert_eq!(bodies, vec![&b"c"[..]]);
    assert!(store
        .reader
        .due_timers(Some(&rest[0].timer), DUE, 10)
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_damaged_timer_stops_the_state_machine_and_writes_nothing() {
    use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
    let dir = tempfile::tempdir().unwrap();
    let (mut store, timer) = scheduled(dir.path()).await;
    // Overwrite the timer's value with garbage, as a bad disk would.
    {
        let db = &store.db;
        let cf = db.cf(raftmq_store::db::CF_TIMERS);
        let key = db
            .db
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|kv| kv.unwrap().0)
            .find(|k| k.first() == Some(&b'D'))
            .expect("the timer's key");
        db.db.put_cf(cf, key, b"\xff\xff not a timer").unwrap();
    }

    let entries = vec![entry(3, vec![deliver(timer, "later")])];
    store.log.blocking_append(entries.clone()).await.unwrap();
    let applied_before = store.reader.applied_index();
    let err = store
        .state_machine
        .apply(entries)
        .await
        .expect_err("damaged data must stop apply");
    assert!(err.to_string().contains("timer"), "{err}");
    assert!(bodies(&store).is_empty(), "nothing delivered");
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.reader.applied_index(),
        applied_before,
        "the failed batch was not written"
    );
}
