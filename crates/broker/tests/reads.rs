//! Reads in a three-node group in one process: long-polling pulls served by the master and the
//! slaves, and consume offsets replicated through a failover.

use std::time::Duration;

use raftmq_common::ErrorCode;
use raftmq_proto as pb;
use raftmq_testkit::{code, message, send_request, Group, CATCH_UP, ELECTION};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_pull_returns_when_a_message_is_committed_and_slaves_serve_it_too() {
    let (group, master) = Group::start_with_topic_t(|_| {}).await;
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
    assert_eq!(reply.messages[0].body, &b"wake up"[..]);

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
    group.create_topic(master, "T", 2).await;
    group.send_stream(0, 10).await;
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
