//! Storage in a three-node group in one process: snapshot catch-up of a lagging node, retention
//! under disk pressure, a corrupted committed record, a full disk.

use std::time::Duration;

use raftmq_common::ErrorCode;
use raftmq_testkit::{code, message, queue_offsets, send_request, wait_until, Group, CATCH_UP, ELECTION};

/// A node is down while the master purges its log past a snapshot; started again, it installs
/// the snapshot (each install delayed by `install_delay`) and catches up, without an election.
async fn lagging_node_catches_up_by_snapshot(install_delay: Duration) {
    let (mut group, master) = Group::start_with_topic_t(|c| {
        c.snapshot_every_entries = 20;
        c.snapshot_log_keep = 0;
    })
    .await;
    let lagging = group.ids().into_iter().find(|id| *id != master).unwrap();
    group.kill(lagging).await;
    let acked = group.send_stream(0, 60).await;
    let master = group.wait_for_master(ELECTION).await;
    group.wait_purged_past(master, 10).await;
    let term = group.term(master);
    group.faults.slow_snapshot_installs(install_delay);
    group.restart(lagging).await.expect("restart");
    wait_until(
        "the lagging node installed a snapshot",
        Duration::from_secs(20),
        || async { group.node(lagging).raft().metrics().borrow().snapshot.map(|_| ()) },
    )
    .await;
    group.wait_caught_up(master, CATCH_UP).await;
    group
        .check_present(lagging, acked.iter().map(|(o, b)| (*o, b.as_slice())))
        .await;
    for id in group.ids() {
        assert_eq!(group.term(id), term, "node {id}'s term moved during the catch-up");
    }
    assert_eq!(group.wait_for_master(ELECTION).await, master);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_while_the_log_was_purged_catches_up_by_snapshot() {
    lagging_node_catches_up_by_snapshot(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_snapshot_install_does_not_unseat_the_master() {
    // Installing takes five times the longest election timeout, as a large snapshot does: the
    // slave must not stand for election meanwhile (the master would step down on its higher
    // term and start the transfer over).
    lagging_node_catches_up_by_snapshot(Duration::from_secs(1)).await;
}

/// What a node's snapshot checkpoint holds of the commit log: `Ok(Some(first index))`,
/// `Ok(None)` for no entry at all, or why it cannot be read now (none yet, or being replaced).
fn first_entry_in_snapshot(dir: &std::path::Path) -> Result<Option<u64>, String> {
    let checkpoints: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        .map(|e| e.path())
        .collect();
    let [checkpoint] = checkpoints.as_slice() else {
        return Err(format!("{} checkpoints: {checkpoints:?}", checkpoints.len()));
    };
    let db = rocksdb::DB::open_cf_for_read_only(
        &rocksdb::Options::default(),
        checkpoint,
        raftmq_store::db::ALL_CFS,
        false,
    )
    .map_err(|e| format!("{}: {e}", checkpoint.display()))?;
    let cf = db.cf_handle(raftmq_store::db::CF_LOG).ok_or("no log column family")?;
    // Bound before it is returned: the iterator borrows `db`.
    let first = match db.iterator_cf(cf, rocksdb::IteratorMode::Start).next() {
        None => Ok(None),
        Some(Ok((key, _))) => Ok(raftmq_store::keys::log_index(&key)),
        Some(Err(e)) => Err(format!("{}: {e}", checkpoint.display())),
    };
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_under_disk_pressure_takes_a_snapshot_so_the_old_one_lets_go() {
    let (group, master) = Group::start_with_topic_t(|c| {
        c.snapshot_every_entries = 40;
        c.snapshot_log_keep = 0;
        // Any disk counts as under pressure: retention deletes all that Raft no longer needs.
        c.disk_clean_percent = 1;
        c.retention_check_ms = 100;
    })
    .await;
    group.send_stream(0, 50).await;
    group.wait_caught_up(master, CATCH_UP).await;
    // Retention deletes what the snapshot at entry 40 covers. That snapshot's checkpoint links
    // the table files holding those entries; the snapshot retention asks for next replaces it,
    // so no checkpoint holds a deleted entry (the interval alone would wait until entry 80).
    for config in &group.configs {
        let dir = config.data_dir.join("snapshots");
        // Polled by hand rather than with `wait_until`, so a timeout says what the node's
        // snapshot held last.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let seen = first_entry_in_snapshot(&dir);
            if matches!(seen, Ok(None)) || matches!(seen, Ok(Some(first)) if first >= 40) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {}'s snapshot still holds a deleted entry after 20 s: {seen:?}",
                config.node_id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // One snapshot is kept: a pointer and its checkpoint.
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names[0].ends_with(".snap") && names[1].starts_with("checkpoint-"),
            "{names:?}"
        );
    }
    // And the messages went with it: the first 40 entries held the group's setup and most of
    // the first 40 messages, and the queue's first offset moved past them.
    let mut client = group.client(master).await;
    let bounds = queue_offsets(&mut client, "T", 0).await;
    assert!(bounds.min_offset >= 30 && bounds.max_offset == 50, "{bounds:?}");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_committed_record_keeps_the_node_down() {
    let (mut group, master) = Group::start_with_topic_t(|_| {}).await;
    group.send_stream(0, 5).await;
    group.wait_caught_up(master, CATCH_UP).await;
    let victim = group.ids().into_iter().find(|id| *id != master).unwrap();
    group.stop(victim).await;
    {
        let db = group.open_db(victim).await;
        let cf = db.cf(raftmq_store::db::CF_LOG);
        let key = raftmq_store::keys::log(3);
        let mut value = db.db.get_cf(cf, key).unwrap().expect("entry 3 exists");
        let i = value.len() / 2;
        value[i] ^= 0x01;
        db.db.put_cf(cf, key, value).unwrap();
    }
    let err = group
        .restart(victim)
        .await
        .expect_err("a corrupted node must not start");
    let text = format!("{err:#}");
    assert!(
        text.contains("log entry 3") && text.contains("refuses to start"),
        "{text}"
    );
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sends_and_keeps_what_is_stored() {
    // A limit of 1% is below any real disk's use: the disk counts as full from the start.
    let (group, master) = Group::start_with_topic_t(|c| {
        c.disk_full_percent = 1;
        c.disk_clean_percent = 1;
    })
    .await;
    let mut c = group.client(master).await;
    let err = c.send(send_request("T", 0, vec![message("x", "")])).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::DiskFull));
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let offsets = queue_offsets(&mut c, "T", 0).await;
    assert_eq!(offsets.max_offset, 0, "nothing was stored");
    group.shutdown().await;
}
