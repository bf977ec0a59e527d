//! Replication in a three-node group in one process: a message is on every node byte for byte, a
//! slave answers NOT_MASTER with the master's address, bad requests get stable codes and store
//! nothing, and the links between nodes refuse messages meant for another node.

use std::time::Duration;

use raftmq_common::ErrorCode;
use raftmq_proto as pb;
use raftmq_testkit::{code, message, queue_offsets, send_request, topic, Group, CATCH_UP, ELECTION};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_to_the_master_is_on_both_slaves_byte_for_byte() {
    let group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    group.create_topic(master, "T", 2).await;

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
                msg_id: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("node {id}: {e}"))
            .into_inner();
        assert_eq!(got.body, body, "node {id}");
        assert_eq!(got.msg_id, reply.results[0].msg_id, "node {id}");
        assert_eq!((got.tags.as_str(), got.keys.as_str()), ("tagA", "order-1"));
        assert_eq!(got.properties.get("k").map(String::as_str), Some("v"));
        // By id, on every node: the same message, with its queue and offset.
        let by_id = group
            .client(id)
            .await
            .get_message(pb::GetMessageRequest {
                msg_id: reply.results[1].msg_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("node {id}: {e}"))
            .into_inner();
        assert_eq!(
            (&by_id.body[..], by_id.queue_id, by_id.queue_offset),
            (&b"second"[..], 1, 1)
        );
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
        assert_eq!(pulled.messages[0].body, &b"second"[..]);
        assert_eq!(pulled.next_offset, 2);
    }
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_answers_not_master_with_the_masters_address() {
    let (group, master) = Group::start_with_topic_t(|_| {}).await;
    let slave = group.ids().into_iter().find(|id| *id != master).unwrap();
    let err = group
        .client(slave)
        .await
        .send(send_request("T", 0, vec![message("x", "")]))
        .await
        .unwrap_err();
    let remote = raftmq_common::Error::from_status(&err);
    assert_eq!(remote.code, ErrorCode::NotMaster);
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
    group.create_topic(master, "T", 2).await;
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
            msg_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::MessageNotFound));
    for (id, expected) in [
        ("garbage", ErrorCode::InvalidArgument),
        ("0123456789abcdef0123456789abcdef", ErrorCode::MessageNotFound),
    ] {
        let req = pb::GetMessageRequest {
            msg_id: id.into(),
            ..Default::default()
        };
        let err = c.get_message(req).await.unwrap_err();
        assert_eq!(code(&err), Some(expected), "{id}: {err}");
    }
    let offsets = queue_offsets(&mut c, "T", 0).await;
    assert_eq!(offsets.max_offset, 0, "nothing refused was stored");
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
                transfer_from: 0,
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
            transfer_from: 0,
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
            proof: Vec::new(),
        };
        let err = connect(&group.addr(slave), &hello, None, timeout).await.unwrap_err();
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
            proof: Vec::new(),
        };
        let mut stream = connect(&group.addr(slave), &hello, None, timeout)
            .await
            .expect("hello accepted");
        stream.write_all(&garbage).await.unwrap();
        let closed = tokio::time::timeout(timeout, read_frame(&mut stream))
            .await
            .expect("closed in time");
        assert!(closed.is_err(), "a garbage frame was answered: {closed:?}");
    }
    // The group still commits, and the slave still has everything.
    group.create_topic(master, "T", 1).await;
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
    assert_eq!(pulled.messages[0].body, &b"after garbage"[..]);
    group.shutdown().await;
}
