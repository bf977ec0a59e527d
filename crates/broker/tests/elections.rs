//! Liveness of a broker group's elections (issue 17): a connected majority always gets a master
//! within its deadline, and nothing that is not a failure of the master moves leadership or the
//! term: a new group's start, a slave cut off, a former master coming back. A clean stop of the
//! master hands leadership over without a failed send.

use std::time::{Duration, Instant};

use openraft::ServerState;
use raftmq_client::{Admin, Client, ClientConfig, Message, Producer};
use raftmq_common::ErrorCode;
use raftmq_proto as pb;
use raftmq_testkit::{code, send_request, wait_until, Group, CATCH_UP, ELECTION};

fn state(group: &Group, id: u64) -> ServerState {
    group.node(id).raft().metrics().borrow().state
}

/// Every running node's term and the leader it follows.
fn terms(group: &Group) -> Vec<(u64, u64, Option<u64>)> {
    group
        .up()
        .into_iter()
        .map(|id| {
            let m = group.node(id).raft().metrics().borrow().clone();
            (id, m.current_term, m.current_leader)
        })
        .collect()
}

/// Watches the group for `window`: every running node keeps the term and the master it had.
async fn assert_steady(group: &Group, window: Duration, what: &str) {
    let before = terms(group);
    let end = Instant::now() + window;
    while Instant::now() < end {
        let now = terms(group);
        assert_eq!(now, before, "{what}: (node, term, master) changed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(group: &Group, id: u64, body: &str) -> Result<u64, tonic::Status> {
    let mut c = group.client(id).await;
    let reply = c
        .send(send_request("T", 0, vec![raftmq_testkit::message(body, "")]))
        .await?;
    Ok(reply.get_ref().results[0].queue_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_elects_one_master_and_keeps_it() {
    let group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    // The lowest node id sets the membership and stands alone: no split vote.
    assert_eq!(group.term(master), 1, "the first master is elected in term 1");
    assert_steady(&group, Duration::from_secs(3), "after the first election").await;
    group.shutdown().await;
}

/// The livelock of issue 17: the node with the newer log refused the stale candidate's vote,
/// stood in that same term, lost on node id, and the two went round forever. Now the stale node
/// never raises the term (its pre-vote fails), and the up-to-date node is elected at its first
/// try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_node_with_the_higher_id_cannot_keep_the_group_without_a_master() {
    let (mut group, master) = Group::start_with_topic_t(|_| {}).await;
    let mut slaves: Vec<u64> = group.ids().into_iter().filter(|id| *id != master).collect();
    slaves.sort();
    let (current, stale) = (slaves[0], slaves[1]);
    let term = group.term(master);

    // The stale node misses entries while cut off; it may try to stand meanwhile, but a
    // pre-vote it cannot win never raises its term.
    group.faults.isolate(stale, group.ids());
    for i in 0..20 {
        send(&group, master, &format!("m{i}"))
            .await
            .expect("send while a slave is cut off");
    }
    let isolated = Instant::now();
    while isolated.elapsed() < Duration::from_millis(800) {
        assert_eq!(group.term(stale), term, "a node cut off raised its term");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The master dies; the stale node comes back.
    group.kill(master).await;
    let killed = Instant::now();
    group.faults.heal_all();
    let leader = group.wait_for_master(ELECTION).await;
    let took = killed.elapsed();
    assert_eq!(leader, current, "the node with the newer log is elected");
    assert!(
        took < Duration::from_secs(1),
        "a master after {took:?}, over the 1 s deadline"
    );
    assert_eq!(group.term(leader), term + 1, "one election, not a race of terms");
    send(&group, leader, "after").await.expect("the new master takes sends");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_cut_off_from_the_group_does_not_raise_the_term() {
    let (group, master) = Group::start_with_topic_t(|_| {}).await;
    let term = group.term(master);
    let slave = group.ids().into_iter().find(|id| *id != master).expect("a slave");
    // Cut off from everyone for several election timeouts: it stands, and its pre-votes fail.
    group.faults.isolate(slave, group.ids());
    let end = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < end {
        assert_eq!(group.term(slave), term, "the cut-off slave raised its term");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A slave cut off from the master alone: the other slave still hears the master and refuses.
    group.faults.heal_all();
    group.faults.cut(slave, master);
    let end = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < end {
        assert_eq!(
            group.term(slave),
            term,
            "a slave cut off from the master raised its term"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    group.faults.heal_all();
    send(&group, master, "healed")
        .await
        .expect("the master still takes sends");
    group.wait_caught_up(master, CATCH_UP).await;
    assert_eq!(
        group.wait_for_master(ELECTION).await,
        master,
        "the master did not change"
    );
    assert!(
        group.ids().iter().all(|id| group.term(*id) == term),
        "{:?}",
        terms(&group)
    );
    group.shutdown().await;
}

/// Issue 17's third finding: a killed master that starts again unseated the master its group had
/// elected meanwhile. Five kill-and-restart rounds: each kill elects one new master, each return
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_master_that_starts_again_rejoins_without_an_election() {
    let (mut group, mut master) = Group::start_with_topic_t(|_| {}).await;
    for round in 0..5 {
        send(&group, master, &format!("before {round}")).await.expect("send");
        group.kill(master).await;
        let next = group.wait_for_master(ELECTION).await;
        let term = group.term(next);
        send(&group, next, &format!("while down {round}"))
            .await
            .expect("send to the new master");
        group.restart(master).await.expect("restart");
        wait_until(
            &format!("round {round}: node {master} follows node {next}"),
            CATCH_UP,
            || async {
                let m = group.node(master).raft().metrics().borrow().clone();
                (m.current_leader == Some(next) && m.state == ServerState::Follower).then_some(())
            },
        )
        .await;
        group.wait_caught_up(next, CATCH_UP).await;
        assert_steady(
            &group,
            Duration::from_millis(700),
            &format!("round {round}: after node {master} rejoined"),
        )
        .await;
        assert_eq!(group.term(next), term, "round {round}: the return changed the term");
        assert_eq!(state(&group, next), ServerState::Leader);
        master = next;
    }
    group.shutdown().await;
}

/// A clean stop of the master hands leadership to a slave before the process ends: a producer
/// sending throughout sees no failed send, and the group's next master is in the next term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_of_the_master_hands_over_without_a_failed_send() {
    let mut group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    let client = Client::new(ClientConfig::new([group.namesrv_addr()])).expect("client");
    let admin = Admin::new(client.clone());
    wait_until("the group registered with a master", ELECTION, || async {
        admin.upsert_topic("T", 1, 1, pb::Permission::ReadWrite, &[]).await.ok()
    })
    .await;
    wait_until("the topic routed", ELECTION, || async {
        client.refresh_route("T").await.ok()
    })
    .await;
    let term = group.term(master);

    let producer = Producer::new(client.clone());
    let sender = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut failed = Vec::new();
        for i in 0..400 {
            match producer.send(Message::new("T", format!("m{i}"))).await {
                Ok(r) => acked.push((r.queue_offset, format!("m{i}"))),
                Err(e) => failed.push(format!("m{i}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (acked, failed)
    });
    // Let some sends through first.
    wait_until("sends acknowledged by the first master", ELECTION, || async {
        (group.applied(master) > 20).then_some(())
    })
    .await;
    let stopped = Instant::now();
    group.stop(master).await;
    let stop_took = stopped.elapsed();
    let next = group.wait_for_master(ELECTION).await;
    assert_ne!(next, master);
    assert_eq!(group.term(next), term + 1, "leadership moved by one election");
    let (acked, failed) = sender.await.expect("sender");
    assert!(
        failed.is_empty(),
        "sends failed while the master stopped ({stop_took:?}): {failed:?}"
    );
    assert_eq!(acked.len(), 400);
    // Every acknowledged message is on the new master, at its offset.
    group
        .check_present(next, acked.iter().map(|(o, b)| (*o, b.as_bytes())))
        .await;
    group.shutdown().await;
}

/// A one-way cut: the master's appends reach both slaves, but their answers never reach it.
/// The slaves keep hearing a master, so they refuse every pre-vote: without check-quorum the
/// group takes no write until the network heals. With it, the master steps down (it refuses
/// sends, and falls silent), and the slaves elect one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_no_majority_answers_steps_down_and_the_slaves_elect_another() {
    let (group, master) = Group::start_with_topic_t(|_| {}).await;
    send(&group, master, "before").await.expect("send before the cut");
    let term = group.term(master);
    let slaves: Vec<u64> = group.ids().into_iter().filter(|id| *id != master).collect();
    for s in &slaves {
        group.faults.lose_answers(master, *s);
    }
    let cut = Instant::now();
    let leader = wait_until(
        "a slave is master in a higher term and takes a send",
        Duration::from_secs(5),
        || async {
            for id in &slaves {
                if state(&group, *id) == ServerState::Leader
                    && group.term(*id) > term
                    && send(&group, *id, "after").await.is_ok()
                {
                    return Some(*id);
                }
            }
            None
        },
    )
    .await;
    eprintln!("a new master took a send {:?} after the cut", cut.elapsed());
    // The old master hears nobody yet: it refuses sends rather than hold them.
    let refused = send(&group, master, "to the old master")
        .await
        .expect_err("the old master refuses sends");
    assert_eq!(code(&refused), Some(ErrorCode::NotMaster), "{refused:?}");

    group.faults.heal_all();
    let new_term = group.term(leader);
    wait_until("the old master follows the new one", CATCH_UP, || async {
        let m = group.node(master).raft().metrics().borrow().clone();
        (m.current_leader == Some(leader) && m.current_term == new_term).then_some(())
    })
    .await;
    group.shutdown().await;
}
