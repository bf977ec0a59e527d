//! Failover in a three-node group in one process: the master killed mid-stream, every node
//! restarted, a master whose own log sync hangs, a master that lost its unsynced tail, a master
//! cut off with writes in flight. Nothing acknowledged is lost.

use std::collections::BTreeMap;
use std::time::Duration;

use raftmq_common::ErrorCode;
use raftmq_testkit::{code, message, send_request, wait_until, Group, CATCH_UP, ELECTION};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_master_mid_stream_loses_no_acknowledged_message() {
    let (mut group, first) = Group::start_with_topic_t(|_| {}).await;
    let first_term = group.term(first);

    // A producer that always writes to whoever answers as master.
    let acked_before = group.send_stream(0, 30).await;
    group.kill(first).await;
    let second = group.wait_for_master(ELECTION).await;
    assert_ne!(second, first);
    assert!(group.term(second) > first_term, "the new master's term is higher");
    let acked_after = group.send_stream(30, 30).await;

    // Every acknowledged message is at its offset, on both survivors, then on the old master
    // once it is back.
    group.restart(first).await.expect("restart the old master");
    group
        .wait_caught_up(group.wait_for_master(ELECTION).await, CATCH_UP)
        .await;
    let mut all = acked_before;
    all.extend(acked_after);
    assert_eq!(all.len(), 60, "60 distinct offsets acknowledged");
    for id in group.ids() {
        group
            .check_present(id, all.iter().map(|(o, b)| (*o, b.as_slice())))
            .await;
    }
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_node_keeps_everything_acknowledged() {
    let (mut group, _master) = Group::start_with_topic_t(|_| {}).await;
    let acked = group.send_stream(0, 40).await;
    for id in group.ids() {
        group.kill(id).await;
    }
    for id in group.ids() {
        group.restart(id).await.expect("restart");
    }
    let master = group.wait_for_master(ELECTION).await;
    group.wait_caught_up(master, CATCH_UP).await;
    for id in group.ids() {
        group
            .check_present(id, acked.iter().map(|(o, b)| (*o, b.as_slice())))
            .await;
    }
    // And the group takes writes again, after the old ones.
    let more = group.send_stream(1000, 5).await;
    assert!(more.keys().all(|o| *o >= 40), "{more:?}");
    group.shutdown().await;
}

/// Sends one message to one node, as a client that does not follow redirects.
async fn send_to(group: &Group, id: u64, body: String) -> Result<u64, tonic::Status> {
    let mut c = group.client(id).await;
    let reply = c.send(send_request("T", 0, vec![message(body, "")])).await?;
    Ok(reply.get_ref().results[0].queue_offset)
}

/// Stalls the master's log syncs, then sends `count` messages to it one at a time; every one must
/// be acknowledged. Returns offset -> body.
async fn send_with_master_sync_stalled(group: &Group, master: u64, count: usize) -> BTreeMap<u64, Vec<u8>> {
    group.node(master).stall_log_sync(true);
    let mut acked = BTreeMap::new();
    for i in 0..count {
        let body = format!("while-stalled-{i}");
        let offset = send_to(group, master, body.clone())
            .await
            .expect("a send while the master's log sync hangs");
        acked.insert(offset, body.into_bytes());
    }
    acked
}

/// How far the master counts its own copy of the log as synced, and its last entry.
fn masters_own_progress(group: &Group, master: u64) -> (Option<u64>, u64) {
    let m = group.node(master).raft().metrics().borrow().clone();
    let own = m
        .replication
        .as_ref()
        .and_then(|r| r.get(&master).cloned())
        .flatten()
        .map(|l| l.index);
    (own, m.last_log_index.unwrap_or(0))
}

/// The master's own fsync is not on an acknowledgement's path: with its log syncs hung, sends
/// still commit through the two slaves. (openraft 0.9 as published waits for the leader's sync
/// before it replicates; these sends would time out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_log_sync_hangs_still_commits_through_its_slaves() {
    let (group, master) = Group::start_with_topic_t(|_| {}).await;
    let acked = send_with_master_sync_stalled(&group, master, 20).await;
    assert_eq!(acked.len(), 20, "20 distinct offsets");
    // The master has not counted its own copy of these entries: its sync never returned.
    let (own, last) = masters_own_progress(&group, master);
    assert!(own.unwrap_or(0) < last, "own progress {own:?}, last entry {last}");
    for id in group.ids() {
        group.wait_caught_up(id, CATCH_UP).await;
        group
            .check_present(id, acked.iter().map(|(o, b)| (*o, b.as_slice())))
            .await;
    }
    assert_eq!(
        group.wait_for_master(ELECTION).await,
        master,
        "the master kept its role"
    );

    // Once its disk answers, its own copy counts again and sends go on.
    group.node(master).stall_log_sync(false);
    wait_until("the master counts its own copy", CATCH_UP, || async {
        let (own, last) = masters_own_progress(&group, master);
        (own == Some(last)).then_some(())
    })
    .await;
    let offset = send_to(&group, master, "after".into())
        .await
        .expect("send after the stall");
    assert_eq!(offset, 20);
    group.shutdown().await;
}

/// Cuts a stopped node's newest WAL file back to where its last sync ended, as a power loss would
/// (the node runs with `fault-injection = true`, which keeps the mark). Returns the bytes cut.
fn cut_unsynced_wal(group: &Group, id: u64) -> u64 {
    let db = group.configs[id as usize - 1].data_dir.join("db");
    let mark = std::fs::read_to_string(db.join(raftmq_common::SYNCED_WAL_MARK)).expect("a synced-WAL mark");
    let (marked, synced) = mark.trim().split_once(' ').expect("mark: file and length");
    let synced: u64 = synced.parse().expect("mark length");
    let newest = std::fs::read_dir(&db)
        .expect("db dir")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let number: u64 = name.strip_suffix(".log")?.parse().ok()?;
            Some((number, name, e.path()))
        })
        .max()
        .expect("a WAL file");
    let keep = if newest.1 == marked { synced } else { 0 };
    let len = std::fs::metadata(&newest.2).expect("WAL size").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest.2)
        .and_then(|f| f.set_len(keep))
        .expect("cut the WAL");
    len - keep
}

/// A master that loses, in a power loss, entries it had replicated but not yet synced (the
/// slaves acknowledged them) does not take up its old term again at restart. If it did, it would
/// write other entries under the same log ids as the ones the slaves hold, and the replicas
/// would differ at the same offsets (found by the chaos suite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_lost_its_unsynced_tail_does_not_resume_its_term() {
    let (mut group, master) = Group::start_with_topic_t(|c| {
        c.fault_injection = true;
        // The slaves keep following the old master while it restarts.
        c.election_timeout_min_ms = 1_500;
        c.election_timeout_max_ms = 2_000;
    })
    .await;
    let term = group.term(master);
    let mut acked = send_with_master_sync_stalled(&group, master, 10).await;
    group.kill(master).await;
    let cut = cut_unsynced_wal(&group, master);
    assert!(cut > 0, "the master's unsynced entries were in its WAL");
    group.restart(master).await.expect("restart the old master");

    // Sends go on under a newer term, and every node ends up with every acknowledged message.
    acked.extend(group.send_stream(100, 10).await);
    let leader = group.wait_for_master(ELECTION).await;
    assert!(group.term(leader) > term, "term {} after {term}", group.term(leader));
    group.wait_caught_up(leader, CATCH_UP).await;
    assert_eq!(acked.len(), 20, "20 distinct offsets acknowledged");
    for id in group.ids() {
        group
            .check_present(id, acked.iter().map(|(o, b)| (*o, b.as_slice())))
            .await;
    }
    group.shutdown().await;
}

/// The master of the highest term among the running nodes, once there is one.
async fn newest_master(group: &Group, not: Option<u64>) -> u64 {
    wait_until("a master of a newer term", ELECTION, || async {
        group
            .up()
            .into_iter()
            .filter(|id| Some(*id) != not)
            .filter(|id| group.node(*id).raft().metrics().borrow().state == openraft::ServerState::Leader)
            .max_by_key(|id| group.term(*id))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_cut_off_with_writes_in_flight_takes_sends_again_later() {
    let (group, old) = Group::start_with_topic_t(|c| {
        c.snapshot_every_entries = 20;
        c.snapshot_log_keep = 0;
    })
    .await;
    group.send_stream(0, 5).await;

    // Cut the master off with sends in flight: they fill its pipeline and can never commit.
    group.faults.isolate(old, group.ids());
    let mut stranded = Vec::new();
    for i in 0..4 {
        let mut c = group.client(old).await;
        stranded.push(tokio::spawn(async move {
            c.send(send_request("T", 0, vec![message(format!("stranded-{i}"), "")]))
                .await
        }));
    }
    // The other two go on, past a snapshot: the old master's stranded entries are overwritten
    // on it by that snapshot, and openraft never answers them.
    let new = newest_master(&group, Some(old)).await;
    for i in 0..40 {
        send_to(&group, new, format!("new-{i}"))
            .await
            .expect("send to the new master");
    }
    group.wait_purged_past(new, 20).await;
    for s in stranded {
        let status = s
            .await
            .unwrap()
            .expect_err("a send to a cut-off master was acknowledged");
        assert_eq!(code(&status), Some(ErrorCode::Timeout), "{status:?}");
    }
    group.faults.heal_all();
    wait_until(
        "the old master installed a snapshot",
        Duration::from_secs(20),
        || async {
            group
                .node(old)
                .raft()
                .metrics()
                .borrow()
                .snapshot
                .filter(|s| s.index > 20)
        },
    )
    .await;

    // Make the old master master again: cut off whoever leads, until it is elected.
    let mut master = group.wait_for_master(ELECTION).await;
    for _ in 0..20 {
        if master == old {
            break;
        }
        group.faults.isolate(master, group.ids());
        newest_master(&group, Some(master)).await;
        group.faults.heal_all();
        master = group.wait_for_master(ELECTION).await;
    }
    assert_eq!(master, old, "the old master was not elected again");
    // It takes sends: its pipeline was not left full of writes nobody will answer.
    let offset = send_to(&group, old, "after".into())
        .await
        .expect("send to the old master");
    assert!(offset >= 45, "offset {offset}");
    group.shutdown().await;
}
