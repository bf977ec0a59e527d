//! The RocketMQ 5 protocol (`apache.rocketmq.v2`) at the wire, against an in-process group:
//! statuses for bad input, the receive stream's shape, digests, namespaces, the telemetry
//! handshake, forwarding from slaves, and POP state across a restart of every node. The
//! official clients themselves are driven in `tests/rocketmq5.rs`.

use std::time::Duration;

use raftmq_proto::rocketmq::messaging_service_client::MessagingServiceClient;
use raftmq_proto::rocketmq::{self as v2, Code};
use raftmq_testkit::{queue_offsets, wait_until, Group};
use tonic::transport::Channel;

async fn v2_client(addr: &str) -> MessagingServiceClient<Channel> {
    MessagingServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Opens a telemetry stream: the sender of the client's commands, and the server's replies.
async fn open_telemetry(
    c: &mut MessagingServiceClient<Channel>,
) -> (
    tokio::sync::mpsc::Sender<v2::TelemetryCommand>,
    tonic::Streaming<v2::TelemetryCommand>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let replies = c
        .telemetry(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, replies)
}

/// A client's Settings command for `pub_sub`.
fn settings(pub_sub: v2::settings::PubSub) -> v2::TelemetryCommand {
    v2::TelemetryCommand {
        status: None,
        command: Some(v2::telemetry_command::Command::Settings(v2::Settings {
            pub_sub: Some(pub_sub),
            ..Default::default()
        })),
    }
}

fn resource(name: &str) -> Option<v2::Resource> {
    Some(v2::Resource {
        resource_namespace: String::new(),
        name: name.into(),
    })
}

fn message(topic: &str, id: &str, body: &[u8]) -> v2::Message {
    v2::Message {
        topic: resource(topic),
        user_properties: Default::default(),
        system_properties: Some(v2::SystemProperties {
            message_id: id.into(),
            message_type: v2::MessageType::Normal as i32,
            body_encoding: v2::Encoding::Identity as i32,
            tag: Some("TagA".into()),
            ..Default::default()
        }),
        body: body.to_vec(),
    }
}

fn code(status: &Option<v2::Status>) -> Code {
    Code::try_from(status.as_ref().expect("a status").code).expect("a known code")
}

async fn send(c: &mut MessagingServiceClient<Channel>, m: v2::Message) -> v2::SendMessageResponse {
    c.send_message(v2::SendMessageRequest { messages: vec![m] })
        .await
        .expect("business errors are statuses, not gRPC errors")
        .into_inner()
}

fn receive_request(group: &str, topic: &str, invisible: Duration) -> v2::ReceiveMessageRequest {
    v2::ReceiveMessageRequest {
        group: resource(group),
        message_queue: Some(v2::MessageQueue {
            topic: resource(topic),
            id: 0,
            ..Default::default()
        }),
        filter_expression: Some(v2::FilterExpression {
            r#type: v2::FilterType::Tag as i32,
            expression: "*".into(),
        }),
        batch_size: 32,
        invisible_duration: Some(prost_duration(invisible)),
        auto_renew: false,
        long_polling_timeout: Some(prost_duration(Duration::from_secs(1))),
        attempt_id: None,
    }
}

fn prost_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A whole receive stream, as (status code, messages, saw a delivery timestamp last).
async fn receive(
    c: &mut MessagingServiceClient<Channel>,
    req: v2::ReceiveMessageRequest,
) -> (Code, Vec<v2::Message>, bool) {
    use v2::receive_message_response::Content;
    let mut stream = c.receive_message(req).await.expect("receive").into_inner();
    let mut items = Vec::new();
    while let Some(item) = stream.message().await.expect("stream") {
        items.push(item.content.expect("content"));
    }
    let Some(Content::Status(status)) = items.first() else {
        panic!("a receive stream starts with its status: {items:?}")
    };
    let code = Code::try_from(status.code).expect("known code");
    let timestamp_last = matches!(items.last(), Some(Content::DeliveryTimestamp(_)));
    let messages = items
        .into_iter()
        .filter_map(|c| match c {
            Content::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    (code, messages, timestamp_last)
}

async fn setup() -> (Group, u64, u64) {
    let group = Group::start(3, |c| c.max_delivery_attempts = 3).await;
    let master = group.wait_for_master(Duration::from_secs(10)).await;
    let slave = group.ids().into_iter().find(|id| *id != master).expect("a slave");
    for name in ["T", "ns%T"] {
        group.create_topic(master, name, 2).await;
    }
    (group, master, slave)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_rocketmq_codes_and_nothing_is_stored() {
    let (group, _master, slave) = setup().await;
    // Through a slave: every write is forwarded to the master.
    let mut c = v2_client(&group.addr(slave)).await;
    let cases: Vec<(v2::Message, Code)> = vec![
        (message("T", "id-empty", b""), Code::MessageBodyEmpty),
        (
            message("T", "id-big", &vec![7u8; (4 << 20) + 1]),
            Code::MessageBodyTooLarge,
        ),
        (message("T", "", b"no id"), Code::IllegalMessageId),
        (message("bad topic!", "id", b"x"), Code::IllegalTopic),
        (message("NoSuchTopic", "id", b"x"), Code::TopicNotFound),
        (
            {
                let mut m = message("T", "id-fifo", b"x");
                m.system_properties.as_mut().unwrap().message_group = Some("g".into());
                m
            },
            Code::MessagePropertyConflictWithType,
        ),
        (
            {
                let mut m = message("T", "id-prop", b"x");
                m.user_properties.insert("UNIQ_KEY".into(), "forged".into());
                m
            },
            Code::IllegalMessagePropertyKey,
        ),
    ];
    for (m, want) in cases {
        let id = m.system_properties.as_ref().unwrap().message_id.clone();
        let r = send(&mut c, m).await;
        assert_eq!(code(&r.status), want, "message {id:?}: {:?}", r.status);
    }
    let empty = c
        .send_message(v2::SendMessageRequest { messages: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&empty.status), Code::BadRequest);

    // A 4 MiB body fits (the gRPC decode limit is raised), and is the only thing stored.
    let big = vec![0xA5u8; 4 << 20];
    let r = send(&mut c, message("T", "id-4mib", &big)).await;
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    assert_eq!(r.entries.len(), 1);
    assert_eq!(
        r.entries[0].message_id, "id-4mib",
        "the client's own message id comes back"
    );
    let (status, messages, timestamp_last) = receive(&mut c, receive_request("G", "T", Duration::from_secs(30))).await;
    assert_eq!(status, Code::Ok);
    assert!(timestamp_last, "the stream ends with a delivery timestamp");
    assert_eq!(messages.len(), 1, "refused messages were not stored");
    let m = &messages[0];
    assert_eq!(m.body, big);
    let sys = m.system_properties.as_ref().unwrap();
    assert_eq!(sys.message_id, "id-4mib");
    assert_eq!(sys.delivery_attempt, Some(1));
    assert_eq!(sys.body_encoding, v2::Encoding::Identity as i32);
    let digest = sys.body_digest.as_ref().unwrap();
    assert_eq!(digest.r#type, v2::DigestType::Md5 as i32);
    assert_eq!(digest.checksum.len(), 32);
    assert_eq!(digest.checksum, digest.checksum.to_uppercase(), "upper-case hex");

    // Receives and acks with bad input.
    let (status, _, timestamp_last) =
        receive(&mut c, receive_request("G", "NoSuchTopic", Duration::from_secs(30))).await;
    assert_eq!(status, Code::TopicNotFound);
    assert!(timestamp_last);
    let mut sql = receive_request("G", "T", Duration::from_secs(30));
    sql.filter_expression = Some(v2::FilterExpression {
        r#type: v2::FilterType::Sql as i32,
        expression: "a > 1".into(),
    });
    // No message has a property `a`: none matches, and the group's position moves past them.
    assert_eq!(receive(&mut c, sql.clone()).await.0, Code::MessageNotFound);
    sql.filter_expression = Some(v2::FilterExpression {
        r#type: v2::FilterType::Sql as i32,
        expression: "a > 'x'".into(),
    });
    let refused = receive(&mut c, sql).await.0;
    assert_eq!(refused, Code::IllegalFilterExpression);
    let (status, _, _) = receive(&mut c, receive_request("G", "T", Duration::ZERO)).await;
    assert_eq!(status, Code::IllegalInvisibleTime);
    let (status, messages, _) = receive(&mut c, receive_request("G", "T", Duration::from_secs(30))).await;
    assert_eq!(
        (status, messages.len()),
        (Code::MessageNotFound, 0),
        "nothing new, nothing expired"
    );

    let ack = c
        .ack_message(v2::AckMessageRequest {
            group: resource("G"),
            topic: resource("T"),
            entries: vec![
                v2::AckMessageEntry {
                    message_id: "id-4mib".into(),
                    receipt_handle: sys.receipt_handle.clone().unwrap(),
                    lite_topic: None,
                },
                v2::AckMessageEntry {
                    message_id: "garbage".into(),
                    receipt_handle: "not a handle".into(),
                    lite_topic: None,
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&ack.status), Code::MultipleResults);
    assert_eq!(code(&ack.entries[0].status), Code::Ok);
    assert_eq!(code(&ack.entries[1].status), Code::InvalidReceiptHandle);
    let change = c
        .change_invisible_duration(v2::ChangeInvisibleDurationRequest {
            group: resource("G"),
            topic: resource("T"),
            receipt_handle: sys.receipt_handle.clone().unwrap(),
            invisible_duration: Some(prost_duration(Duration::from_secs(10))),
            message_id: "id-4mib".into(),
            lite_topic: None,
            suspend: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(&change.status),
        Code::InvalidReceiptHandle,
        "an acknowledged delivery is over"
    );

    // A consumer that gives up on a message sends it to the dead-letter topic itself.
    assert_eq!(
        code(&send(&mut c, message("T", "id-giveup", b"give up")).await.status),
        Code::Ok
    );
    let (_, got, _) = receive(&mut c, receive_request("G", "T", Duration::from_secs(30))).await;
    let giveup = got[0].system_properties.clone().unwrap();
    let forward = |handle: String| v2::ForwardMessageToDeadLetterQueueRequest {
        group: resource("G"),
        topic: resource("T"),
        receipt_handle: handle,
        message_id: "id-giveup".into(),
        delivery_attempt: 1,
        max_delivery_attempts: 16,
        lite_topic: None,
    };
    let r = c
        .forward_message_to_dead_letter_queue(forward(giveup.receipt_handle.clone().unwrap()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok);
    let again = c
        .forward_message_to_dead_letter_queue(forward(giveup.receipt_handle.unwrap()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&again.status), Code::InvalidReceiptHandle, "the delivery is over");
    let (_, dead, _) = receive(&mut c, receive_request("dlq-reader", "%DLQ%G", Duration::from_secs(30))).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, &b"give up"[..]);

    // An end of transaction without a topic: a clear status, not a gRPC error.
    let tx = c
        .end_transaction(v2::EndTransactionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&tx.status), Code::IllegalTopic);

    // A NameServer answers routes but not sends.
    let mut ns = v2_client(&group.namesrv_addr()).await;
    let r = send(&mut ns, message("T", "id-ns", b"x")).await;
    assert_eq!(code(&r.status), Code::IllegalAccessPoint);
    let route = ns
        .query_route(v2::QueryRouteRequest {
            topic: resource("NoSuchTopic"),
            endpoints: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&route.status), Code::TopicNotFound);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_routes_and_the_settings_handshake() {
    let (group, master, slave) = setup().await;
    let ns = v2_client(&group.namesrv_addr()).await;
    let namespaced = v2::Resource {
        resource_namespace: "ns".into(),
        name: "T".into(),
    };
    let route = wait_until("ns%T routed", Duration::from_secs(10), || {
        let mut ns = ns.clone();
        let topic = namespaced.clone();
        async move {
            let r = ns
                .query_route(v2::QueryRouteRequest {
                    topic: Some(topic),
                    endpoints: None,
                })
                .await
                .ok()?
                .into_inner();
            (!r.message_queues.is_empty()).then_some(r)
        }
    })
    .await;
    assert_eq!(code(&route.status), Code::Ok);
    assert_eq!(route.message_queues.len(), 2);
    let mut endpoints = Vec::new();
    for q in &route.message_queues {
        assert_eq!(
            q.topic.as_ref(),
            Some(&namespaced),
            "the topic is echoed with its namespace"
        );
        assert_eq!(q.permission, v2::Permission::ReadWrite as i32);
        assert_eq!(
            q.accept_message_types,
            vec![
                v2::MessageType::Normal as i32,
                v2::MessageType::Fifo as i32,
                v2::MessageType::Delay as i32,
                v2::MessageType::Transaction as i32
            ]
        );
        let broker = q.broker.as_ref().unwrap();
        assert_eq!((broker.name.as_str(), broker.id), ("broker-a", 0));
        let e = broker.endpoints.as_ref().unwrap();
        assert_eq!(e.scheme, v2::AddressScheme::IPv4 as i32);
        endpoints.push(format!("{}:{}", e.addresses[0].host, e.addresses[0].port));
    }
    assert_eq!(endpoints[0], group.addr(master), "queue 0 names the master");
    assert_ne!(endpoints[1], endpoints[0], "the other queues name the other nodes");

    // A namespaced send lands in raftmq's topic `ns%T` and comes back with its namespace.
    let mut c = v2_client(&group.addr(slave)).await;
    let mut m = message("T", "id-ns", b"namespaced");
    m.topic = Some(namespaced.clone());
    assert_eq!(code(&send(&mut c, m).await.status), Code::Ok);
    let mut admin = group.client(master).await;
    let mut stored = 0;
    for queue_id in 0..2 {
        let offsets = queue_offsets(&mut admin, "ns%T", queue_id).await;
        stored += offsets.max_offset;
    }
    assert_eq!(stored, 1);
    let mut req = receive_request("G", "T", Duration::from_secs(30));
    req.group.as_mut().unwrap().resource_namespace = "ns".into();
    req.message_queue.as_mut().unwrap().topic = Some(namespaced.clone());
    let (status, messages, _) = receive(&mut c, req).await;
    assert_eq!(status, Code::Ok);
    assert_eq!(messages[0].topic.as_ref(), Some(&namespaced));

    // Telemetry: each Settings gets OK and the effective settings; the stream stays open.
    let (tx, mut replies) = open_telemetry(&mut c).await;
    for pub_sub in [
        v2::settings::PubSub::Publishing(v2::Publishing::default()),
        v2::settings::PubSub::Subscription(v2::Subscription::default()),
    ] {
        tx.send(settings(pub_sub)).await.unwrap();
        let reply = replies.message().await.unwrap().expect("a reply per settings");
        assert_eq!(code(&reply.status), Code::Ok);
        let Some(v2::telemetry_command::Command::Settings(s)) = reply.command else {
            panic!("settings back")
        };
        match s.pub_sub.unwrap() {
            v2::settings::PubSub::Publishing(p) => {
                assert_eq!(p.max_body_size, 4 << 20);
                assert!(p.validate_message_type);
                assert!(s.backoff_policy.unwrap().max_attempts >= 1);
            }
            v2::settings::PubSub::Subscription(sub) => {
                assert!(sub.long_polling_timeout.unwrap().seconds > 0);
                assert_eq!(sub.fifo, Some(false));
                assert_eq!(
                    s.backoff_policy.unwrap().max_attempts,
                    3,
                    "the broker's max-delivery-attempts"
                );
            }
        }
    }
    // A group with settings of its own is told its retries and backoff.
    admin
        .update_group_config(raftmq_proto::GroupConfig {
            consumer_group: "ns%G2".into(),
            max_reconsume_times: 5,
            backoff_ms: vec![250, 1_500],
            ..Default::default()
        })
        .await
        .expect("group settings");
    let subscription = v2::Subscription {
        group: Some(v2::Resource {
            resource_namespace: "ns".into(),
            name: "G2".into(),
        }),
        ..Default::default()
    };
    // The node on the stream may be a slave that applies the update a moment after the master
    // answered it: clients send their settings again, and so does this test, until it has.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let policy = loop {
        tx.send(settings(v2::settings::PubSub::Subscription(subscription.clone())))
            .await
            .unwrap();
        let reply = replies.message().await.unwrap().expect("a reply");
        let Some(v2::telemetry_command::Command::Settings(s)) = reply.command else {
            panic!("settings back")
        };
        let policy = s.backoff_policy.unwrap();
        if policy.max_attempts == 6 || std::time::Instant::now() >= deadline {
            break policy;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(policy.max_attempts, 6, "the first delivery and the group's 5 retries");
    let Some(v2::retry_policy::Strategy::CustomizedBackoff(b)) = policy.strategy else {
        panic!("the group's table: {:?}", policy.strategy)
    };
    let next: Vec<(i64, i32)> = b.next.iter().map(|d| (d.seconds, d.nanos)).collect();
    assert_eq!(next, [(0, 250_000_000), (1, 500_000_000)]);
    drop(tx);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_survive_a_restart_of_every_node_and_dead_letter_after_max_attempts() {
    let (mut group, master, _) = setup().await;
    let mut c = v2_client(&group.addr(master)).await;
    assert_eq!(
        code(&send(&mut c, message("T", "id-1", b"survivor")).await.status),
        Code::Ok
    );
    let (status, messages, _) = receive(&mut c, receive_request("G", "T", Duration::from_secs(2))).await;
    assert_eq!((status, messages.len()), (Code::Ok, 1));

    for id in group.ids() {
        group.stop(id).await;
    }
    for id in group.ids() {
        group.restart(id).await.expect("restart");
    }
    let master = group.wait_for_master(Duration::from_secs(10)).await;
    let mut c = v2_client(&group.addr(master)).await;
    // Still invisible right after the restart is fine; once visible it comes back as attempt 2,
    // then 3, then (max-delivery-attempts = 3) it goes to the dead-letter topic.
    let mut attempts = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while attempts.len() < 2 && tokio::time::Instant::now() < deadline {
        let (_, messages, _) = receive(&mut c, receive_request("G", "T", Duration::from_secs(1))).await;
        for m in messages {
            assert_eq!(m.body, &b"survivor"[..]);
            attempts.push(m.system_properties.unwrap().delivery_attempt.unwrap());
        }
    }
    assert_eq!(attempts, vec![2, 3], "the attempt count survived the restart");
    let dlq = wait_until("the message in %DLQ%G", Duration::from_secs(15), || {
        let mut c = c.clone();
        async move {
            let (_, messages, _) = receive(&mut c, receive_request("G", "T", Duration::from_secs(1))).await;
            assert!(messages.is_empty(), "delivered past max-delivery-attempts");
            let mut admin = MessagingServiceClient::clone(&c);
            let (_, dead, _) = receive(
                &mut admin,
                receive_request("dlq-reader", "%DLQ%G", Duration::from_secs(30)),
            )
            .await;
            dead.into_iter().next()
        }
    })
    .await;
    assert_eq!(dlq.body, &b"survivor"[..]);
    assert_eq!(dlq.system_properties.unwrap().message_id, "id-1");
    assert_eq!(
        dlq.user_properties.get("DLQ_ORIGIN_TOPIC").map(String::as_str),
        Some("T")
    );
    group.shutdown().await;
}

fn delay_message(topic: &str, id: &str, due_ms: Option<i64>) -> v2::Message {
    let mut m = message(topic, id, b"later");
    let sys = m.system_properties.as_mut().unwrap();
    sys.message_type = v2::MessageType::Delay as i32;
    sys.delivery_timestamp = due_ms.map(|ms| prost_types::Timestamp {
        seconds: ms / 1000,
        nanos: (ms % 1000) as i32 * 1_000_000,
    });
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_messages_follow_rocketmqs_type_rules_and_can_be_recalled_from_any_node() {
    let (group, master, slave) = setup().await;
    let mut c = v2_client(&group.addr(master)).await;
    let now = raftmq_common::time::now_ms();

    // Type rules: DELAY needs a timestamp; NORMAL may not carry one; FIFO and DELAY do not mix;
    // no more than 30 days ahead.
    let mut normal_with_time = delay_message("T", "n1", Some(now + 5_000));
    normal_with_time.system_properties.as_mut().unwrap().message_type = v2::MessageType::Normal as i32;
    let mut fifo_delay = delay_message("T", "f1", Some(now + 5_000));
    fifo_delay.system_properties.as_mut().unwrap().message_group = Some("g".into());
    for (what, m, want) in [
        (
            "DELAY without a time",
            delay_message("T", "d0", None),
            Code::MessagePropertyConflictWithType,
        ),
        (
            "NORMAL with a time",
            normal_with_time,
            Code::MessagePropertyConflictWithType,
        ),
        (
            "DELAY in a message group",
            fifo_delay,
            Code::MessagePropertyConflictWithType,
        ),
        (
            "31 days ahead",
            delay_message("T", "d31", Some(now + 31 * 86_400_000)),
            Code::IllegalDeliveryTime,
        ),
    ] {
        let r = send(&mut c, m).await;
        assert_eq!(code(&r.status), want, "{what}: {:?}", r.status);
    }
    for q in 0..2 {
        assert_eq!(
            queue_offsets(&mut group.client(master).await, "T", q).await.max_offset,
            0
        );
    }

    // Two delayed messages; one recalled through a slave (forwarded to the master).
    let due = now + 1_500;
    let kept = send(&mut c, delay_message("T", "kept", Some(due))).await;
    let gone = send(&mut c, delay_message("T", "gone", Some(due))).await;
    assert_eq!(code(&kept.status), Code::Ok, "{:?}", kept.status);
    let handle = gone.entries[0].recall_handle.clone();
    assert!(!handle.is_empty(), "a DELAY send returns a recall handle");
    let mut via_slave = v2_client(&group.addr(slave)).await;
    let recall = |handle: String| v2::RecallMessageRequest {
        topic: resource("T"),
        recall_handle: handle,
    };
    let r = via_slave
        .recall_message(recall(handle.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    let r = via_slave.recall_message(recall(handle)).await.unwrap().into_inner();
    assert_eq!(
        code(&r.status),
        Code::MessageNotFound,
        "a second recall: {:?}",
        r.status
    );
    let r = c.recall_message(recall("garbage".into())).await.unwrap().into_inner();
    assert_eq!(code(&r.status), Code::BadRequest, "{:?}", r.status);

    // The kept one arrives at its time, as a DELAY message that says when it was due.
    let got = wait_until("the kept message delivered", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            let (_, messages, _) = receive(&mut c, receive_request("G", "T", Duration::from_secs(30))).await;
            (!messages.is_empty()).then_some(messages)
        }
    })
    .await;
    assert!(raftmq_common::time::now_ms() >= due);
    assert_eq!(got.len(), 1, "the recalled message is not delivered");
    let sys = got[0].system_properties.as_ref().unwrap();
    assert_eq!(sys.message_id, "kept");
    assert_eq!(sys.message_type, v2::MessageType::Delay as i32);
    assert_eq!(
        sys.delivery_timestamp.as_ref().map(raftmq_rocketmq::timestamp_to_ms),
        Some(due)
    );
}

fn transaction_message(topic: &str, id: &str, body: &[u8]) -> v2::Message {
    let mut m = message(topic, id, body);
    m.system_properties.as_mut().unwrap().message_type = v2::MessageType::Transaction as i32;
    m
}

fn end_request(transaction_id: &str, resolution: v2::TransactionResolution) -> v2::EndTransactionRequest {
    v2::EndTransactionRequest {
        topic: resource("T"),
        message_id: String::new(),
        transaction_id: transaction_id.into(),
        resolution: resolution as i32,
        source: v2::TransactionSource::SourceClient as i32,
        trace_context: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_roll_back_and_are_checked_over_telemetry() {
    let group = Group::start(3, |c| {
        c.transaction_check_after_ms = 2_000;
        c.transaction_check_interval_ms = 500;
    })
    .await;
    let master = group.wait_for_master(Duration::from_secs(10)).await;
    let slave = group.ids().into_iter().find(|id| *id != master).expect("a slave");
    group.create_topic(master, "T", 2).await;
    // Writes and ends through a slave, forwarded; the producer's telemetry at the master.
    let mut c = v2_client(&group.addr(slave)).await;
    let mut at_master = v2_client(&group.addr(master)).await;
    let (tx, mut telemetry) = open_telemetry(&mut at_master).await;
    tx.send(settings(v2::settings::PubSub::Publishing(v2::Publishing {
        topics: vec![resource("T").unwrap()],
        ..Default::default()
    })))
    .await
    .unwrap();
    let settings = telemetry.message().await.unwrap().expect("settings back");
    assert_eq!(code(&settings.status), Code::Ok);

    let mut ids = Vec::new();
    for (id, body) in [
        ("id-commit", "commit me"),
        ("id-rollback", "roll me back"),
        ("id-orphan", "orphan"),
    ] {
        let r = send(&mut c, transaction_message("T", id, body.as_bytes())).await;
        assert_eq!(code(&r.status), Code::Ok, "{r:?}");
        assert_eq!(r.entries[0].message_id, id);
        assert!(r.entries[0].transaction_id.starts_with("broker-a@"), "{r:?}");
        ids.push(r.entries[0].transaction_id.clone());
    }
    // Half messages are not received.
    let (status, none, _) = receive(&mut c, receive_request("G", "T", Duration::from_secs(30))).await;
    assert_eq!((status, none.len()), (Code::MessageNotFound, 0));

    let ended = c
        .end_transaction(end_request(&ids[0], v2::TransactionResolution::Commit))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&ended.status), Code::Ok, "{ended:?}");
    let ended = c
        .end_transaction(end_request(&ids[1], v2::TransactionResolution::Rollback))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&ended.status), Code::Ok);
    for (bad, expected) in [
        ("garbage", Code::InvalidTransactionId),
        ("broker-a@zz", Code::InvalidTransactionId),
    ] {
        let r = c
            .end_transaction(end_request(bad, v2::TransactionResolution::Commit))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&r.status), expected, "{bad}");
    }
    let contradicting = c
        .end_transaction(end_request(&ids[1], v2::TransactionResolution::Commit))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        code(&contradicting.status),
        Code::Ok,
        "a rolled-back transaction is not committed"
    );

    // The orphan is checked over the producer's telemetry stream; the answer commits it.
    let check = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let command = telemetry.message().await.unwrap().expect("the stream stays open");
            // A check of one ended meanwhile may come first; the orphan's comes in any case.
            if let Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(c)) = command.command {
                if c.transaction_id == ids[2] {
                    return c;
                }
            }
        }
    })
    .await
    .expect("a check within 10 s");
    assert_eq!(check.transaction_id, ids[2]);
    let m = check.message.expect("the half message");
    assert_eq!(m.body, &b"orphan"[..]);
    let sys = m.system_properties.unwrap();
    assert_eq!(sys.message_id, "id-orphan");
    assert_eq!(sys.message_type, v2::MessageType::Transaction as i32);
    assert!(sys.receipt_handle.is_none());
    let mut answer = end_request(&check.transaction_id, v2::TransactionResolution::Commit);
    answer.source = v2::TransactionSource::SourceServerCheck as i32;
    let r = at_master.end_transaction(answer).await.unwrap().into_inner();
    assert_eq!(code(&r.status), Code::Ok);

    // Received once each, whichever queues they went to (a receive long-polls up to 1 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut all = Vec::new();
    while all.len() < 2 && std::time::Instant::now() < deadline {
        for queue in 0..2 {
            let mut req = receive_request("G", "T", Duration::from_secs(30));
            req.message_queue.as_mut().unwrap().id = queue;
            let (_, got, _) = receive(&mut c, req).await;
            all.extend(got);
        }
    }
    let mut bodies: Vec<Vec<u8>> = all.iter().map(|m| m.body.clone()).collect();
    bodies.sort();
    assert_eq!(bodies, [b"commit me".to_vec(), b"orphan".to_vec()]);
    for m in &all {
        assert_eq!(
            m.system_properties.as_ref().unwrap().message_type,
            v2::MessageType::Transaction as i32
        );
    }
    // A transactional message with a message group breaks RocketMQ's type rules.
    let mut fifo = transaction_message("T", "id-x", b"x");
    fifo.system_properties.as_mut().unwrap().message_group = Some("g".into());
    assert_eq!(
        code(&send(&mut c, fifo).await.status),
        Code::MessagePropertyConflictWithType
    );
    group.shutdown().await;
}

fn fifo_message(topic: &str, id: &str, group: &str) -> v2::Message {
    let mut m = message(topic, id, id.as_bytes());
    let sys = m.system_properties.as_mut().unwrap();
    sys.message_type = v2::MessageType::Fifo as i32;
    sys.message_group = Some(group.into());
    m
}

async fn ack_all(c: &mut MessagingServiceClient<Channel>, group: &str, topic: &str, messages: &[v2::Message]) {
    let entries = messages
        .iter()
        .map(|m| {
            let sys = m.system_properties.as_ref().unwrap();
            v2::AckMessageEntry {
                message_id: sys.message_id.clone(),
                receipt_handle: sys.receipt_handle.clone().unwrap(),
                lite_topic: None,
            }
        })
        .collect();
    let r = c
        .ack_message(v2::AckMessageRequest {
            group: resource(group),
            topic: resource(topic),
            entries,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok, "{r:?}");
}

fn ids(messages: &[v2::Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m.system_properties.as_ref().unwrap().message_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_group_gets_a_queue_one_batch_at_a_time_in_order() {
    let group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(Duration::from_secs(10)).await;
    let slave = group.ids().into_iter().find(|id| *id != master).expect("a slave");
    group.create_topic(master, "F", 1).await;
    group.create_topic(master, "F2", 4).await;
    // Mark GF FIFO, leaving its retry settings alone.
    group
        .client(master)
        .await
        .update_group_config(raftmq_proto::GroupConfig {
            consumer_group: "GF".into(),
            fifo: Some(true),
            keep_retry_settings: true,
            ..Default::default()
        })
        .await
        .expect("mark GF FIFO");
    // A slave answers settings from what it has applied (a replica read): let it catch up.
    group.wait_caught_up(master, Duration::from_secs(10)).await;
    let mut c = v2_client(&group.addr(slave)).await;

    // The settings say so.
    let (tx, mut telemetry) = open_telemetry(&mut c).await;
    tx.send(settings(v2::settings::PubSub::Subscription(v2::Subscription {
        group: resource("GF"),
        ..Default::default()
    })))
    .await
    .unwrap();
    let reply = telemetry.message().await.unwrap().expect("settings");
    let Some(v2::telemetry_command::Command::Settings(s)) = reply.command else {
        panic!("settings back")
    };
    let Some(v2::settings::PubSub::Subscription(sub)) = s.pub_sub else {
        panic!("a subscription")
    };
    assert_eq!(sub.fifo, Some(true));

    // Two message groups, interleaved, through a slave (forwarded).
    let mut sent = Vec::new();
    for i in 0..5 {
        for g in ["A", "B"] {
            let id = format!("{g}{i}");
            let r = send(&mut c, fifo_message("F", &id, g)).await;
            assert_eq!(code(&r.status), Code::Ok, "{r:?}");
            sent.push(id);
        }
    }
    // The type rules: a FIFO message needs a group, and only a FIFO message has one.
    let mut no_group = fifo_message("F", "x1", "A");
    no_group.system_properties.as_mut().unwrap().message_group = None;
    assert_eq!(code(&send(&mut c, no_group).await.status), Code::IllegalMessageGroup);
    let mut normal = message("F", "x2", b"x");
    normal.system_properties.as_mut().unwrap().message_group = Some("A".into());
    assert_eq!(
        code(&send(&mut c, normal).await.status),
        Code::MessagePropertyConflictWithType
    );

    // Invisible for 30 s, long-polling 1 s; `short` batches come back after 1 s.
    let batch = |n: i32| {
        let mut r = receive_request("GF", "F", Duration::from_secs(30));
        r.batch_size = n;
        r
    };
    let short = |n: i32| {
        let mut r = receive_request("GF", "F", Duration::from_secs(1));
        r.batch_size = n;
        r
    };
    let (status, first, _) = receive(&mut c, batch(3)).await;
    assert_eq!(status, Code::Ok);
    assert_eq!(ids(&first), sent[..3]);
    let sys = first[0].system_properties.as_ref().unwrap();
    assert_eq!(sys.message_type, v2::MessageType::Fifo as i32);
    assert_eq!(sys.message_group.as_deref(), Some("A"));
    // Nothing more while that batch is out, even once part of it is acknowledged.
    let (status, none, _) = receive(&mut c, batch(3)).await;
    assert_eq!((status, none.len()), (Code::MessageNotFound, 0));
    ack_all(&mut c, "GF", "F", &first[..2]).await;
    let (status, none, _) = receive(&mut c, batch(3)).await;
    assert_eq!((status, none.len()), (Code::MessageNotFound, 0));
    ack_all(&mut c, "GF", "F", &first[2..]).await;

    // The next batch; not acknowledged, it comes back whole and in order after its invisibility.
    let (_, second, _) = receive(&mut c, short(3)).await;
    assert_eq!(ids(&second), sent[3..6]);
    let (_, again, _) = wait_until("the batch comes back", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            let got = receive(&mut c, batch(3)).await;
            (!got.1.is_empty()).then_some(got)
        }
    })
    .await;
    assert_eq!(ids(&again), sent[3..6], "redelivered in order");
    assert_eq!(again[0].system_properties.as_ref().unwrap().delivery_attempt, Some(2));
    ack_all(&mut c, "GF", "F", &again).await;
    let (_, rest, _) = receive(&mut c, batch(32)).await;
    assert_eq!(ids(&rest), sent[6..]);
    ack_all(&mut c, "GF", "F", &rest).await;

    // A group that is not FIFO gets everything at once.
    let (_, all, _) = receive(&mut c, receive_request("G", "F", Duration::from_secs(30))).await;
    assert_eq!(all.len(), 10);

    // A message group keeps to one queue of a topic with several.
    for i in 0..4 {
        let r = send(&mut c, fifo_message("F2", &format!("k{i}"), "K")).await;
        assert_eq!(code(&r.status), Code::Ok);
    }
    let mut queues = std::collections::BTreeSet::new();
    for q in 0..4 {
        let mut r = receive_request("G2", "F2", Duration::from_secs(30));
        r.message_queue.as_mut().unwrap().id = q;
        let (_, got, _) = receive(&mut c, r).await;
        queues.extend(got.iter().map(|m| m.system_properties.as_ref().unwrap().queue_id));
    }
    assert_eq!(queues.len(), 1, "one queue for one message group: {queues:?}");
    group.shutdown().await;
}
