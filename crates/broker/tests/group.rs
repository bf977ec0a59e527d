//! A three-node broker group in one process: election, replication, NOT_MASTER, failover,
//! restart, snapshot catch-up, corruption.

use std::collections::BTreeMap;
use std::time::Duration;

use raftmq_common::ErrorCode;
use raftmq_proto as pb;
use raftmq_testkit::{code, message, queue_offsets, send_request, topic, wait_until, Group};

const ELECTION: Duration = Duration::from_secs(10);
const CATCH_UP: Duration = Duration::from_secs(10);

/// Starts three nodes tuned by `tune`, waits for a master and creates topic T with one queue;
/// returns the group and the master.
async fn group_with_topic_t(tune: impl Fn(&mut raftmq_broker::BrokerConfig)) -> (Group, u64) {
    let group = Group::start(3, tune).await;
    let master = group.wait_for_master(ELECTION).await;
    create_topic(&group, master, "T", 1).await;
    (group, master)
}

/// Waits until `node` has purged its log past `index` (after a snapshot).
async fn wait_purged_past(group: &Group, node: u64, index: u64) {
    wait_until(
        &format!("node {node} purged its log past entry {index}"),
        Duration::from_secs(20),
        || async {
            let m = group.node(node).raft().metrics().borrow().clone();
            m.purged.filter(|p| p.index > index).map(|_| ())
        },
    )
    .await;
}

async fn create_topic(group: &Group, master: u64, name: &str, queues: u32) {
    let mut c = group.client(master).await;
    c.upsert_topic(pb::UpsertTopicRequest {
        topic: Some(topic(name, queues)),
    })
    .await
    .expect("create topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_to_the_master_is_on_both_slaves_byte_for_byte() {
    let group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    create_topic(&group, master, "T", 2).await;

    let body: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let mut m = message(body.clone(), "tagA");
    m.keys = "order-1".into();
    m.properties.insert("k".into(), "v".into());
    let reply = group
        .client(master)
        .await
        .send(send_request("T", 1, vec![m, message("second", "tagB")]))
        .await
        .expect("send")
        .into_inner();
    assert_eq!(reply.results.len(), 2);
    assert_eq!((reply.results[0].queue_id, reply.results[0].queue_offset), (1, 0));
    assert_eq!(reply.results[1].queue_offset, 1);

    group.wait_caught_up(master, CATCH_UP).await;
    for id in group.ids() {
        let got = group
            .client(id)
            .await
            .get_message(pb::GetMessageRequest {
                topic: "T".into(),
                queue_id: 1,
                offset: 0,
            })
            .await
            .unwrap_or_else(|e| panic!("node {id}: {e}"))
            .into_inner();
        assert_eq!(got.body, body, "node {id}");
        assert_eq!(got.msg_id, reply.results[0].msg_id, "node {id}");
        assert_eq!((got.tags.as_str(), got.keys.as_str()), ("tagA", "order-1"));
        assert_eq!(got.properties.get("k").map(String::as_str), Some("v"));
        // A pull with a tag filter on every node, slaves included.
        let pulled = group
            .client(id)
            .await
            .pull(pb::PullRequest {
                topic: "T".into(),
                queue_id: 1,
                offset: 0,
                max_messages: 10,
                tag_expression: "tagB || tagC".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(pulled.messages.len(), 1);
        assert_eq!(pulled.messages[0].body, b"second");
        assert_eq!(pulled.next_offset, 2);
    }
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_answers_not_master_with_the_masters_address() {
    let group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    create_topic(&group, master, "T", 1).await;
    let slave = group.ids().into_iter().find(|id| *id != master).unwrap();
    let err = group
        .client(slave)
        .await
        .send(send_request("T", 0, vec![message("x", "")]))
        .await
        .unwrap_err();
    let remote = raftmq_common::RemoteError::from_status(&err);
    assert_eq!(remote.code, Some(ErrorCode::NotMaster));
    assert_eq!(remote.leader.as_deref(), Some(group.addr(master).as_str()));
    // Topic admin is a write too.
    let err = group
        .client(slave)
        .await
        .upsert_topic(pb::UpsertTopicRequest {
            topic: Some(topic("U", 1)),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::NotMaster));
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_stable_codes_and_store_nothing() {
    let group = Group::start(3, |c| c.max_message_size = 1024).await;
    let master = group.wait_for_master(ELECTION).await;
    create_topic(&group, master, "T", 2).await;
    let mut c = group.client(master).await;
    let send = |topic: &str, queue_id: u32, body: Vec<u8>| pb::SendRequest {
        topic: topic.into(),
        queue_id,
        messages: vec![message(body, "")],
    };

    let cases = [
        (send("Nope", 0, b"x".to_vec()), ErrorCode::TopicNotFound),
        (send("T", 2, b"x".to_vec()), ErrorCode::QueueNotFound),
        (send("T", 0, vec![0; 2048]), ErrorCode::MessageTooLarge),
        (send("bad topic", 0, b"x".to_vec()), ErrorCode::InvalidArgument),
        (send_request("T", 0, vec![]), ErrorCode::InvalidArgument),
    ];
    for (request, expected) in cases {
        let err = c.send(request).await.unwrap_err();
        assert_eq!(code(&err), Some(expected), "{err:?}");
    }
    let err = c
        .upsert_topic(pb::UpsertTopicRequest {
            topic: Some(topic("Z", 0)),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::InvalidArgument));
    assert!(err.message().contains("write_queues"), "{}", err.message());
    let err = c
        .pull(pb::PullRequest {
            topic: "T".into(),
            queue_id: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::QueueNotFound));
    let err = c
        .get_message(pb::GetMessageRequest {
            topic: "T".into(),
            queue_id: 0,
            offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::MessageNotFound));
    let offsets = queue_offsets(&mut c, "T", 0).await;
    assert_eq!(offsets.max_offset, 0, "nothing refused was stored");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_master_mid_stream_loses_no_acknowledged_message() {
    let mut group = Group::start(3, |_| {}).await;
    let first = group.wait_for_master(ELECTION).await;
    create_topic(&group, first, "T", 1).await;
    let first_term = group.term(first);

    // A producer that always writes to whoever answers as master.
    let acked_before = send_stream(&group, 0, 30).await;
    group.kill(first).await;
    let second = group.wait_for_master(ELECTION).await;
    assert_ne!(second, first);
    assert!(group.term(second) > first_term, "the new master's term is higher");
    let acked_after = send_stream(&group, 30, 30).await;

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
        check_present(&group, id, &all).await;
    }
    group.shutdown().await;
}

/// Sends numbered messages one at a time to the current master, following NOT_MASTER; returns
/// acknowledged offset -> body. Sends whose outcome is unknown are retried with a new number,
/// so only acknowledged ones are counted.
async fn send_stream(group: &Group, from: usize, count: usize) -> BTreeMap<u64, Vec<u8>> {
    let mut acked = BTreeMap::new();
    let mut i = from;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut target = group.up()[0];
    while acked.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "sends did not resume: {} of {count} acknowledged",
            acked.len()
        );
        let body = format!("message-{i:06}").into_bytes();
        i += 1;
        let Ok(mut c) =
            raftmq_proto::broker_client::BrokerClient::connect(format!("http://{}", group.addr(target))).await
        else {
            target = next_node(group, target);
            continue;
        };
        match c.send(send_request("T", 0, vec![message(body.clone(), "")])).await {
            Ok(reply) => {
                let r = &reply.get_ref().results[0];
                assert!(
                    acked.insert(r.queue_offset, body).is_none(),
                    "offset {} acknowledged twice",
                    r.queue_offset
                );
            }
            Err(status) => {
                let remote = raftmq_common::RemoteError::from_status(&status);
                match remote
                    .leader
                    .and_then(|addr| group.ids().into_iter().find(|id| group.addr(*id) == addr))
                {
                    Some(leader) if group.is_up(leader) => target = leader,
                    _ => {
                        target = next_node(group, target);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }
    acked
}

fn next_node(group: &Group, current: u64) -> u64 {
    let up = group.up();
    let pos = up.iter().position(|id| *id == current).map(|p| p + 1).unwrap_or(0);
    up[pos % up.len()]
}

async fn check_present(group: &Group, id: u64, acked: &BTreeMap<u64, Vec<u8>>) {
    group
        .check_present(id, acked.iter().map(|(o, b)| (*o, b.as_slice())))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_node_keeps_everything_acknowledged() {
    let mut group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    create_topic(&group, master, "T", 1).await;
    let acked = send_stream(&group, 0, 40).await;
    for id in group.ids() {
        group.kill(id).await;
    }
    for id in group.ids() {
        group.restart(id).await.expect("restart");
    }
    let master = group.wait_for_master(ELECTION).await;
    group.wait_caught_up(master, CATCH_UP).await;
    for id in group.ids() {
        check_present(&group, id, &acked).await;
    }
    // And the group takes writes again, after the old ones.
    let more = send_stream(&group, 1000, 5).await;
    assert!(more.keys().all(|o| *o >= 40), "{more:?}");
    group.shutdown().await;
}

/// A node is down while the master purges its log past a snapshot; started again, it installs
/// the snapshot (each install delayed by `install_delay`) and catches up, without an election.
async fn lagging_node_catches_up_by_snapshot(install_delay: Duration) {
    let (mut group, master) = group_with_topic_t(|c| {
        c.snapshot_every_entries = 20;
        c.snapshot_log_keep = 0;
    })
    .await;
    let lagging = group.ids().into_iter().find(|id| *id != master).unwrap();
    group.kill(lagging).await;
    let acked = send_stream(&group, 0, 60).await;
    let master = group.wait_for_master(ELECTION).await;
    wait_purged_past(&group, master, 10).await;
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
    check_present(&group, lagging, &acked).await;
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
    let (group, master) = group_with_topic_t(|_| {}).await;
    let acked = send_with_master_sync_stalled(&group, master, 20).await;
    assert_eq!(acked.len(), 20, "20 distinct offsets");
    // The master has not counted its own copy of these entries: its sync never returned.
    let (own, last) = masters_own_progress(&group, master);
    assert!(own.unwrap_or(0) < last, "own progress {own:?}, last entry {last}");
    for id in group.ids() {
        group.wait_caught_up(id, CATCH_UP).await;
        check_present(&group, id, &acked).await;
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
    let (mut group, master) = group_with_topic_t(|c| {
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
    acked.extend(send_stream(&group, 100, 10).await);
    let leader = group.wait_for_master(ELECTION).await;
    assert!(group.term(leader) > term, "term {} after {term}", group.term(leader));
    group.wait_caught_up(leader, CATCH_UP).await;
    assert_eq!(acked.len(), 20, "20 distinct offsets acknowledged");
    for id in group.ids() {
        check_present(&group, id, &acked).await;
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
    let (group, old) = group_with_topic_t(|c| {
        c.snapshot_every_entries = 20;
        c.snapshot_log_keep = 0;
    })
    .await;
    send_stream(&group, 0, 5).await;

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
    wait_purged_past(&group, new, 20).await;
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

/// The first commit-log entry in a node's snapshot checkpoint; `None` while there is none (or it
/// is being replaced).
fn first_entry_in_snapshot(dir: &std::path::Path) -> Option<u64> {
    let checkpoint = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))?
        .path();
    let db = rocksdb::DB::open_cf_for_read_only(
        &rocksdb::Options::default(),
        &checkpoint,
        raftmq_store::db::ALL_CFS,
        false,
    )
    .ok()?;
    let cf = db.cf_handle(raftmq_store::db::CF_LOG)?;
    let (key, _) = db.iterator_cf(cf, rocksdb::IteratorMode::Start).next()?.ok()?;
    raftmq_store::keys::log_index(&key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_under_disk_pressure_takes_a_snapshot_so_the_old_one_lets_go() {
    let (group, master) = group_with_topic_t(|c| {
        c.snapshot_every_entries = 40;
        c.snapshot_log_keep = 0;
        // Any disk counts as under pressure: retention deletes all that Raft no longer needs.
        c.disk_clean_percent = 1;
        c.retention_check_ms = 100;
    })
    .await;
    send_stream(&group, 0, 50).await;
    group.wait_caught_up(master, CATCH_UP).await;
    // Retention deletes what the snapshot at entry 40 covers. That snapshot's checkpoint links
    // the table files holding those entries; the snapshot retention asks for next replaces it,
    // so no checkpoint holds a deleted entry (the interval alone would wait until entry 80).
    for config in &group.configs {
        let dir = config.data_dir.join("snapshots");
        wait_until(
            &format!("node {}'s snapshot holds no deleted entry", config.node_id),
            Duration::from_secs(20),
            || async { first_entry_in_snapshot(&dir).filter(|first| *first >= 40) },
        )
        .await;
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
    let mut group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    create_topic(&group, master, "T", 1).await;
    send_stream(&group, 0, 5).await;
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
async fn the_nameserver_routes_the_group_and_follows_a_failover() {
    let mut group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    create_topic(&group, master, "T", 4).await;
    let mut ns = group.namesrv_client().await;
    let route_master = |route: &pb::TopicRoute| route.groups.first().map(|g| g.master_addr.clone());
    let master_addr = group.addr(master);
    wait_until("the NameServer routes T to the master", Duration::from_secs(10), || {
        let mut ns = ns.clone();
        let want = master_addr.clone();
        async move {
            let route = ns
                .get_route(pb::GetRouteRequest { topic: "T".into() })
                .await
                .ok()?
                .into_inner();
            (route_master(&route) == Some(want)
                && route.groups[0].slaves.len() == 2
                && route.queues[0].write_queues == 4)
                .then_some(())
        }
    })
    .await;
    group.kill(master).await;
    let second = group.wait_for_master(ELECTION).await;
    let second_addr = group.addr(second);
    wait_until(
        "the NameServer routes T to the new master",
        Duration::from_secs(10),
        || {
            let mut ns = ns.clone();
            let want = second_addr.clone();
            async move {
                let route = ns
                    .get_route(pb::GetRouteRequest { topic: "T".into() })
                    .await
                    .ok()?
                    .into_inner();
                (route_master(&route) == Some(want)).then_some(())
            }
        },
    )
    .await;
    let info = ns
        .get_cluster_info(pb::GetClusterInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.groups[0].master_node_id, second);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sends_and_keeps_what_is_stored() {
    // A limit of 1% is below any real disk's use: the disk counts as full from the start.
    let (group, master) = group_with_topic_t(|c| {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_pull_returns_when_a_message_is_committed_and_slaves_serve_it_too() {
    let group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    create_topic(&group, master, "T", 1).await;
    // The slave serves the topic once it has applied its creation.
    group.wait_caught_up(master, CATCH_UP).await;
    let slave = group.ids().into_iter().find(|id| *id != master).unwrap();
    let mut slave_client = group.client(slave).await;
    let waiting = tokio::spawn(async move {
        slave_client
            .pull(pb::PullRequest {
                topic: "T".into(),
                queue_id: 0,
                offset: 0,
                max_messages: 8,
                wait_ms: 20_000,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    });
    // Give the pull time to start waiting; the assertion below does not depend on it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    group
        .client(master)
        .await
        .send(send_request("T", 0, vec![message("wake up", "")]))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the pull returned")
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, pb::PullStatus::Found as i32);
    assert_eq!(reply.messages[0].body, b"wake up");

    // An empty pull with no wait answers at once.
    let reply = group
        .client(slave)
        .await
        .pull(pb::PullRequest {
            topic: "T".into(),
            queue_id: 0,
            offset: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status, pb::PullStatus::NoNewMessage as i32);
    assert_eq!((reply.next_offset, reply.max_offset), (1, 1));
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_offsets_are_replicated_and_survive_a_failover() {
    let mut group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    create_topic(&group, master, "T", 2).await;
    send_stream(&group, 0, 10).await;
    let mut c = group.client(master).await;
    let commit = |offset| pb::CommitOffsetsRequest {
        consumer_group: "g1".into(),
        offsets: vec![pb::OffsetEntry {
            topic: "T".into(),
            queue_id: 0,
            offset,
        }],
    };
    c.commit_offsets(commit(7)).await.unwrap();
    // A commit that would move the group backwards is ignored (a stale rebalance member).
    c.commit_offsets(commit(3)).await.unwrap();
    group.kill(master).await;
    let second = group.wait_for_master(ELECTION).await;
    let got = group
        .client(second)
        .await
        .get_consume_offsets(pb::GetConsumeOffsetsRequest {
            consumer_group: "g1".into(),
            topic: "T".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.offsets,
        vec![pb::OffsetEntry {
            topic: "T".into(),
            queue_id: 0,
            offset: 7
        }]
    );

    // A reset may move it anywhere, per queue.
    use pb::reset_offsets_request::Target;
    let reset = group
        .client(second)
        .await
        .reset_offsets(pb::ResetOffsetsRequest {
            consumer_group: "g1".into(),
            topic: "T".into(),
            target: Some(Target::ToEarliest(true)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reset.offsets.iter().map(|o| (o.queue_id, o.offset)).collect::<Vec<_>>(),
        vec![(0, 0), (1, 0)]
    );
    let err = group
        .client(second)
        .await
        .commit_offsets(pb::CommitOffsetsRequest {
            consumer_group: "bad group".into(),
            offsets: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::InvalidArgument));
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_unregisters_from_the_nameserver_at_once() {
    let mut group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    create_topic(&group, master, "T", 1).await;
    let mut ns = group.namesrv_client().await;
    wait_until("three nodes registered", Duration::from_secs(10), || {
        let mut ns = ns.clone();
        async move {
            (ns.get_cluster_info(pb::GetClusterInfoRequest {})
                .await
                .ok()?
                .into_inner()
                .groups
                .first()?
                .nodes
                .len()
                == 3)
                .then_some(())
        }
    })
    .await;
    let slave = group.ids().into_iter().find(|id| *id != master).unwrap();
    group.stop(slave).await;
    // Well before the 5 s expiry: the node said goodbye.
    let info = ns
        .get_cluster_info(pb::GetClusterInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let nodes: Vec<u64> = info.groups[0].nodes.iter().map(|n| n.node_id).collect();
    assert!(!nodes.contains(&slave), "{nodes:?}");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_for_another_node_are_rejected() {
    let group = Group::start(3, |_| {}).await;
    group.wait_for_master(ELECTION).await;
    let mut raft =
        raftmq_proto::raft_transport_client::RaftTransportClient::connect(format!("http://{}", group.addr(1)))
            .await
            .unwrap();
    for (group_name, target) in [("broker-a", 2), ("broker-b", 1)] {
        let err = raft
            .vote(pb::RaftEnvelope {
                group: group_name.into(),
                from_node_id: 3,
                target_node_id: target,
                payload: Default::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(code(&err), Some(ErrorCode::InvalidArgument), "{err:?}");
    }
    let err = raft
        .vote(pb::RaftEnvelope {
            group: "broker-a".into(),
            from_node_id: 3,
            target_node_id: 1,
            payload: vec![0xff; 7].into(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("undecodable"), "{err:?}");
    group.shutdown().await;
}

/// The plain-TCP AppendEntries link (see `raftmq_broker::append_link`) checks its hello as the
/// gRPC envelope is checked, and a connection that sends garbage is closed without harm: the
/// node keeps replicating and serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_connections_for_another_node_are_refused_and_garbage_closes_them() {
    use raftmq_broker::append_link::{connect, read_frame, Hello};
    use tokio::io::AsyncWriteExt;
    let group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    let slave = group.ids().into_iter().find(|id| *id != master).unwrap();
    let timeout = Duration::from_secs(5);
    for (group_name, target) in [("broker-a", master), ("broker-b", slave)] {
        let hello = Hello {
            group: group_name.into(),
            from: master,
            target,
        };
        let err = connect(&group.addr(slave), &hello, timeout).await.unwrap_err();
        assert!(err.to_string().contains("reached"), "{err}");
    }
    // A well-formed hello, then a frame that is no AppendEntries, then one over the size limit.
    for garbage in [
        [7u8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7].to_vec(),
        u32::MAX.to_le_bytes().to_vec(),
    ] {
        let hello = Hello {
            group: "broker-a".into(),
            from: master,
            target: slave,
        };
        let mut stream = connect(&group.addr(slave), &hello, timeout)
            .await
            .expect("hello accepted");
        stream.write_all(&garbage).await.unwrap();
        let closed = tokio::time::timeout(timeout, read_frame(&mut stream))
            .await
            .expect("closed in time");
        assert!(closed.is_err(), "a garbage frame was answered: {closed:?}");
    }
    // The group still commits, and the slave still has everything.
    create_topic(&group, master, "T", 1).await;
    let sent = group
        .client(master)
        .await
        .send(send_request("T", 0, vec![message("after garbage", "")]))
        .await
        .unwrap()
        .into_inner();
    group.wait_caught_up(master, Duration::from_secs(10)).await;
    let pulled = group
        .client(slave)
        .await
        .pull(pb::PullRequest {
            topic: "T".into(),
            queue_id: 0,
            offset: 0,
            max_messages: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pulled.messages.len(), 1, "{sent:?}");
    assert_eq!(pulled.messages[0].body, b"after garbage");
    group.shutdown().await;
}
