//! A broker group changing shape while it serves, through the SDK's admin calls: a node joins
//! under load, a voter leaves, a dead node is replaced after its disk is lost, the master role
//! moves 20 times under a producer; and every unsafe step is refused and changes nothing.
//! Each checks that nothing acknowledged is lost and that the group serves again afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq_client::membership::NodeSpec;
use raftmq_client::{Admin, Client, ClientConfig, ErrorCode, Message, Producer};
use raftmq_proto as pb;
use raftmq_testkit::{wait_until, Group, CATCH_UP, ELECTION};

const GROUP: &str = "broker-a";

fn admin(group: &Group) -> Admin {
    Admin::new(Client::new(ClientConfig::new([group.namesrv_addr()])).expect("client"))
}

fn spec(group: &Group, id: u64) -> NodeSpec {
    NodeSpec {
        node_id: id,
        raft_addr: group.addr(id),
        client_addr: group.addr(id),
    }
}

fn voters(m: &pb::Membership) -> BTreeSet<u64> {
    m.members.iter().filter(|n| n.voter).map(|n| n.node_id).collect()
}

/// The node ids the NameServer lists for the group, once they are `want`.
async fn routed(group: &Group, want: &BTreeSet<u64>) {
    let ns = group.namesrv_client().await;
    wait_until(
        &format!("the NameServer lists nodes {want:?}"),
        Duration::from_secs(10),
        || {
            let mut ns = ns.clone();
            async move {
                let info = ns
                    .get_cluster_info(pb::GetClusterInfoRequest {})
                    .await
                    .ok()?
                    .into_inner();
                let g = info.groups.into_iter().find(|g| g.group == GROUP)?;
                let ids: BTreeSet<u64> = g.nodes.iter().map(|n| n.node_id).collect();
                (&ids == want).then_some(())
            }
        },
    )
    .await;
}

fn all<'a>(maps: &'a [&'a BTreeMap<u64, Vec<u8>>]) -> impl Iterator<Item = (u64, &'a [u8])> {
    maps.iter().flat_map(|m| m.iter().map(|(o, b)| (*o, b.as_slice())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_under_load_then_a_voter_leaves_and_nothing_acknowledged_is_lost() {
    let (mut group, master) = Group::start_with_topic_t(|_| {}).await;
    let admin = admin(&group);
    let new = group.start_joining_node().await;
    // Not added yet: not routed.
    routed(&group, &BTreeSet::from([1, 2, 3])).await;

    let joining = spec(&group, new);
    let (before, added) = tokio::join!(
        group.send_stream(0, 300),
        admin.add_node(GROUP, &joining, Duration::from_secs(60))
    );
    let m = added.expect("add node 4");
    assert_eq!(voters(&m), BTreeSet::from([1, 2, 3, 4]));
    assert!(!m.changing);
    routed(&group, &BTreeSet::from([1, 2, 3, 4])).await;
    group.wait_caught_up(master, CATCH_UP).await;
    group.check_present(new, all(&[&before])).await;

    // Four voters need three votes: a transfer's passes the slaves' leader leases (it did not
    // before, and failed here), to the new node and back.
    let moved = admin
        .transfer_master(GROUP, Some(new))
        .await
        .expect("transfer to the new node");
    assert_eq!((moved.node_id, group.wait_for_master(ELECTION).await), (new, new));
    let moved = admin.transfer_master(GROUP, Some(master)).await.expect("transfer back");
    assert_eq!((moved.node_id, group.wait_for_master(ELECTION).await), (master, master));

    // A voter that is not the master leaves, under load.
    let victim = group.ids().into_iter().find(|id| *id != master && *id != new).unwrap();
    let (during, removed) = tokio::join!(group.send_stream(1_000, 300), admin.remove_node(GROUP, victim));
    let m = removed.expect("remove a slave");
    let left: BTreeSet<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != victim).collect();
    assert_eq!(voters(&m), left);
    assert_eq!(m.retired, [victim]);
    // The removed node is no longer routed, though its process still runs.
    routed(&group, &left).await;
    let seen = admin.membership(GROUP).await.expect("membership");
    assert_eq!(voters(&seen), left);

    // The three voters left fail over like any group: kill the master, sends resume.
    group.kill(master).await;
    let next = group.wait_for_master(ELECTION).await;
    assert!(left.contains(&next) && next != master);
    let after = group.send_stream(2_000, 100).await;
    group.wait_caught_up(next, CATCH_UP).await;
    for id in left.iter().filter(|id| **id != master) {
        group.check_present(*id, all(&[&before, &during, &after])).await;
    }
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_changes_are_refused_and_change_nothing() {
    let (mut group, master) = Group::start_with_topic_t(|_| {}).await;
    let admin = admin(&group);
    let original = admin.membership(GROUP).await.expect("membership");
    assert_eq!(voters(&original), BTreeSet::from([1, 2, 3]));
    let unchanged = |admin: Admin| async move {
        let m = admin.membership(GROUP).await.expect("membership");
        assert_eq!((voters(&m), m.members.len()), (BTreeSet::from([1, 2, 3]), 3), "{m:?}");
    };
    let code = |r: Result<pb::Membership, raftmq_client::Error>| r.expect_err("refused").code;

    // The master cannot remove itself.
    let e = admin.remove_node(GROUP, master).await.expect_err("refused");
    assert_eq!(e.code, ErrorCode::UnsafeMembershipChange, "{e}");
    assert!(e.message.contains("transfer-master"), "{e}");
    // A node nobody runs cannot be added.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let ghost = NodeSpec {
        node_id: 9,
        raft_addr: free.clone(),
        client_addr: free,
    };
    let e = admin
        .add_node(GROUP, &ghost, Duration::from_secs(5))
        .await
        .expect_err("refused");
    assert_eq!(e.code, ErrorCode::UnsafeMembershipChange, "{e}");
    // A voter cannot be added again, nor a node under another node's id.
    assert_eq!(
        code(admin.add_node(GROUP, &spec(&group, 2), CATCH_UP).await),
        ErrorCode::InvalidArgument
    );
    let slave = group.ids().into_iter().find(|id| *id != master).unwrap();
    let impostor = NodeSpec {
        node_id: 7,
        ..spec(&group, slave)
    };
    let e = admin.add_node(GROUP, &impostor, CATCH_UP).await.expect_err("refused");
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    assert!(e.message.contains(&format!("is node {slave}")), "{e}");
    assert_eq!(code(admin.remove_node(GROUP, 8).await), ErrorCode::InvalidArgument);
    assert_eq!(
        admin.transfer_master(GROUP, Some(8)).await.expect_err("refused").code,
        ErrorCode::InvalidArgument
    );
    unchanged(admin.clone()).await;

    // With one slave dead, removing the other would leave one live voter of two.
    let (dead, other) = {
        let slaves: Vec<u64> = group.ids().into_iter().filter(|id| *id != master).collect();
        (slaves[0], slaves[1])
    };
    group.kill(dead).await;
    let e = admin.remove_node(GROUP, other).await.expect_err("refused");
    assert_eq!(e.code, ErrorCode::UnsafeMembershipChange, "{e}");
    assert!(e.message.contains("1 of the 2 voters left are live"), "{e}");
    unchanged(admin.clone()).await;
    // Sends still work: the refusal changed nothing.
    let acked = group.send_stream(0, 20).await;

    // Once it is back, the same removal is safe; the removed id is never given out again.
    group.restart(dead).await.expect("restart");
    group.wait_for_master(ELECTION).await;
    wait_until("the restarted node follows again", ELECTION, || async {
        admin.remove_node(GROUP, other).await.ok()
    })
    .await;
    let m = admin.membership(GROUP).await.expect("membership");
    assert_eq!(voters(&m), BTreeSet::from([master, dead]));
    let e = admin
        .add_node(GROUP, &spec(&group, other), CATCH_UP)
        .await
        .expect_err("refused");
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    assert!(e.message.contains("never reused"), "{e}");
    group.check_present(dead, all(&[&acked])).await;
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_disk_is_replaced_by_a_new_one() {
    let (mut group, master) = Group::start_with_topic_t(|_| {}).await;
    let admin = admin(&group);
    let first = group.send_stream(0, 200).await;
    let lost = group.ids().into_iter().find(|id| *id != master).unwrap();
    group.kill(lost).await;
    group.wipe(lost).await;
    let new = group.start_joining_node().await;

    let joining = spec(&group, new);
    let (during, replaced) = tokio::join!(
        group.send_stream(1_000, 200),
        admin.replace_node(GROUP, lost, &joining, Duration::from_secs(60))
    );
    let m = replaced.expect("replace");
    let now: BTreeSet<u64> = [1, 2, 3, new].into_iter().filter(|id| *id != lost).collect();
    assert_eq!(voters(&m), now);
    assert_eq!(m.members.len(), 3, "the old node is gone altogether: {m:?}");
    assert_eq!(m.retired, [lost]);
    routed(&group, &now).await;
    group.wait_caught_up(master, CATCH_UP).await;
    group.check_present(new, all(&[&first, &during])).await;

    // The new node counts for the majority: with the master dead, the other two elect one.
    group.kill(master).await;
    let next = group.wait_for_master(ELECTION).await;
    let after = group.send_stream(2_000, 50).await;
    group.wait_caught_up(next, CATCH_UP).await;
    for id in now.iter().filter(|id| **id != master) {
        group.check_present(*id, all(&[&first, &during, &after])).await;
    }
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_master_transfers_under_a_producer_fail_no_send() {
    let (group, master) = Group::start_with_topic_t(|_| {}).await;
    let admin = admin(&group);
    let client = admin.client();
    wait_until("the topic routed", CATCH_UP, || async {
        client.refresh_route("T").await.ok()
    })
    .await;
    let producer = Producer::new(client.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender = {
        let (stop, count) = (stop.clone(), count.clone());
        tokio::spawn(async move {
            let (mut acked, mut failed, mut slowest) = (Vec::new(), Vec::new(), Duration::ZERO);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match producer.send(Message::new("T", format!("t{i}"))).await {
                    Ok(r) => {
                        acked.push((r.queue_id, r.queue_offset, format!("t{i}")));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.push(e.to_string()),
                }
                slowest = slowest.max(started.elapsed());
                i += 1;
            }
            (acked, failed, slowest)
        })
    };
    let mut masters = vec![master];
    for round in 0..20 {
        // Every master takes sends before it hands over.
        wait_until("sends acknowledged by this master", CATCH_UP, || async {
            (count.load(Ordering::Relaxed) >= (round + 1) * 10).then_some(())
        })
        .await;
        // Every other round names the target; the rest let the master pick.
        let current = *masters.last().unwrap();
        let to = (round % 2 == 1).then(|| group.ids().into_iter().find(|id| *id != current).unwrap());
        let moved = admin.transfer_master(GROUP, to).await.expect("transfer");
        assert_ne!(moved.node_id, current);
        if let Some(to) = to {
            assert_eq!(moved.node_id, to);
        }
        assert_eq!(group.wait_for_master(ELECTION).await, moved.node_id);
        masters.push(moved.node_id);
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, failed, slowest) = sender.await.unwrap();
    eprintln!(
        "20 master transfers under a producer: {} sends acknowledged, {} failed, slowest {slowest:?}; masters {masters:?}",
        acked.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "sends failed during transfers: {failed:?}");
    assert!(acked.len() >= 200, "the producer kept sending: {}", acked.len());
    // Every acknowledged send is stored where it was acknowledged.
    let last = *masters.last().unwrap();
    group.wait_caught_up(last, CATCH_UP).await;
    let mut c = group.client(last).await;
    for (queue_id, offset, body) in &acked {
        let got = c
            .get_message(pb::GetMessageRequest {
                topic: "T".into(),
                queue_id: *queue_id,
                offset: *offset,
                msg_id: String::new(),
            })
            .await
            .expect("acknowledged message")
            .into_inner();
        assert_eq!(got.body, body.as_bytes());
    }
    group.shutdown().await;
}

/// An acknowledged send: its broker group and body.
type Acked = (String, Vec<u8>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_group_added_to_a_running_cluster_takes_sends_and_its_queues_are_consumed() {
    use raftmq_client::{ConsumeFrom, ConsumeResult, PushConsumer, ReceivedMessage};
    use std::sync::Mutex;

    let (group_a, _) = Group::start_with_topic_t(|_| {}).await;
    let admin = admin(&group_a);
    let client = admin.client();
    wait_until("the topic routed", CATCH_UP, || async {
        client.refresh_route("T").await.ok()
    })
    .await;

    // A consumer group of two members, and a producer, running all along.
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let mut consumers = Vec::new();
    for i in 0..2 {
        let seen = seen.clone();
        let consumer = PushConsumer::builder(client.clone(), "g-grow", "T")
            .client_id(format!("grow-{i}"))
            .consume_from(ConsumeFrom::First)
            .start(move |batch: &[ReceivedMessage]| {
                seen.lock().unwrap().extend(batch.iter().map(|m| m.body.to_vec()));
                ConsumeResult::Success
            })
            .await
            .expect("consumer");
        consumers.push(consumer);
    }
    let stop = Arc::new(AtomicBool::new(false));
    // (broker group, body) of every acknowledged send.
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let sender = {
        let (stop, acked, producer) = (stop.clone(), acked.clone(), Producer::new(client.clone()));
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = format!("g{i}").into_bytes();
                i += 1;
                if let Ok(r) = producer.send(Message::new("T", body.clone())).await {
                    acked.lock().unwrap().push((r.group, body));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    wait_until("sends acknowledged by broker-a", CATCH_UP, || async {
        (acked.lock().unwrap().len() >= 50).then_some(())
    })
    .await;

    // broker-b starts, registers, and the topic is extended onto it: no client restarts.
    let group_b = Group::start_named(3, "broker-b", &group_a.namesrv_addr(), |_| {}).await;
    group_b.wait_for_master(ELECTION).await;
    let extended = wait_until("broker-b registered", ELECTION, || async {
        admin
            .upsert_topic("T", 2, 2, pb::Permission::ReadWrite, &["broker-b".to_owned()])
            .await
            .ok()
    })
    .await;
    assert_eq!(extended, ["broker-b"]);
    wait_until("the producer sends to broker-b too", CATCH_UP, || async {
        let n = acked.lock().unwrap().iter().filter(|(g, _)| g == "broker-b").count();
        (n >= 50).then_some(())
    })
    .await;
    wait_until("the consumers share the three queues", CATCH_UP, || async {
        let assigned: Vec<_> = consumers.iter().flat_map(|c| c.assigned_queues()).collect();
        let distinct: BTreeSet<_> = assigned.iter().cloned().collect();
        (assigned.len() == 3 && distinct.len() == 3 && distinct.iter().any(|q| q.group == "broker-b")).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();

    // Every acknowledged message is consumed, from both groups.
    let acked = acked.lock().unwrap().clone();
    let want: BTreeSet<Vec<u8>> = acked.iter().map(|(_, b)| b.clone()).collect();
    wait_until(
        "every acknowledged message consumed",
        Duration::from_secs(20),
        || async {
            let got: BTreeSet<Vec<u8>> = seen.lock().unwrap().iter().cloned().collect();
            want.is_subset(&got).then_some(())
        },
    )
    .await;
    let seen = seen.lock().unwrap().clone();
    let distinct: BTreeSet<&Vec<u8>> = seen.iter().collect();
    eprintln!(
        "a group added under load: {} acknowledged ({} by broker-b), {} deliveries, {} of them repeats",
        acked.len(),
        acked.iter().filter(|(g, _)| g == "broker-b").count(),
        seen.len(),
        seen.len() - distinct.len()
    );
    for consumer in consumers {
        consumer.shutdown().await;
    }
    group_b.shutdown().await;
    group_a.shutdown().await;
}
