//! Retry and dead letters for a group consumer, through the client SDK against an in-process
//! group: a failed message comes again from the group's retry topic after the group's backoff,
//! its reconsume count rising, while its queue moves on; past the group's retries it is a dead
//! letter that can be resent; a retry pending over a master failover comes once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_client::{Admin, Client, ConsumeFrom, ConsumeResult, Message, Producer, PushConsumer};
use raftmq_common::time::now_ms;
use raftmq_proto as pb;
use raftmq_testkit::{wait_until, Group, ELECTION};

mod common;

/// What the handler saw of one delivery: when, the body, the reconsume count, topic and id.
#[derive(Debug, Clone)]
struct Seen {
    at_ms: i64,
    body: String,
    reconsume: u32,
    topic: String,
    msg_id: String,
}

/// A client of the group and its topic `T` with one queue (so order is visible).
async fn client_with_topic(group: &Group) -> (Client, Admin) {
    group.wait_for_master(ELECTION).await;
    common::client_with_topic(&group.namesrv_addr(), "T", 1, 1).await
}

/// A consumer of `T` in group `G`, one message per batch, failing what `fail` says.
async fn consumer(
    client: &Client,
    seen: Arc<Mutex<Vec<Seen>>>,
    fail: impl Fn(&Seen) -> bool + Send + Sync + 'static,
) -> PushConsumer {
    PushConsumer::builder(client.clone(), "G", "T")
        .consume_from(ConsumeFrom::First)
        .batch_size(1)
        .start(move |batch| {
            let mut failed = false;
            for m in batch {
                let s = Seen {
                    at_ms: now_ms(),
                    body: String::from_utf8_lossy(&m.body).into_owned(),
                    reconsume: m.reconsume_times(),
                    topic: m.topic.clone(),
                    msg_id: m.msg_id.clone(),
                };
                failed |= fail(&s);
                seen.lock().unwrap().push(s);
            }
            if failed {
                ConsumeResult::Retry
            } else {
                ConsumeResult::Success
            }
        })
        .await
        .expect("consumer")
}

fn deliveries_of(seen: &Mutex<Vec<Seen>>, body: &str) -> Vec<Seen> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| s.body == body)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_is_retried_with_backoff_then_dead_lettered_and_resent() {
    let group = Group::start(3, |_| {}).await;
    let (client, admin) = client_with_topic(&group).await;
    let settings = pb::GroupConfig {
        consumer_group: "G".into(),
        max_reconsume_times: 2,
        backoff_ms: vec![400, 800],
        ..Default::default()
    };
    admin.update_group_config(settings).await.expect("group settings");
    let stored = admin.group_config("G").await.expect("settings");
    assert!(!stored.is_empty());
    for (_, c) in &stored {
        assert_eq!(
            (c.effective_max_reconsume_times, c.backoff_ms.clone()),
            (2, vec![400, 800])
        );
    }
    let bad_settings = pb::GroupConfig {
        consumer_group: "G".into(),
        max_reconsume_times: -1,
        backoff_ms: vec![0],
        ..Default::default()
    };
    let err = admin.update_group_config(bad_settings).await.unwrap_err();
    assert_eq!(err.code, raftmq_client::ErrorCode::InvalidArgument, "{err}");

    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let failing = Arc::new(AtomicBool::new(true));
    let fail = failing.clone();
    let consumer = consumer(&client, seen.clone(), move |s| {
        s.body == "bad" && fail.load(Ordering::SeqCst)
    })
    .await;
    let producer = Producer::new(client.clone());
    let first = producer.send(Message::new("T", "bad")).await.expect("send");
    for i in 0..5 {
        producer
            .send(Message::new("T", format!("good-{i}")))
            .await
            .expect("send");
    }
    wait_until(
        "three deliveries of the failing message",
        Duration::from_secs(15),
        || async { (deliveries_of(&seen, "bad").len() >= 3).then_some(()) },
    )
    .await;
    wait_until("its dead letter", Duration::from_secs(5), || async {
        let letters = admin.dead_letters("G", true, 10).await.ok()?;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    // Nothing more comes: two retries, then the dead-letter topic.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let bad = deliveries_of(&seen, "bad");
    assert_eq!(
        bad.iter().map(|s| s.reconsume).collect::<Vec<_>>(),
        [0, 1, 2],
        "{bad:?}"
    );
    for s in &bad {
        assert_eq!(
            (s.topic.as_str(), s.msg_id.as_str()),
            ("T", first.msg_id.as_str()),
            "{s:?}"
        );
    }
    assert!(bad[1].at_ms - bad[0].at_ms >= 400, "first retry early: {bad:?}");
    assert!(bad[2].at_ms - bad[1].at_ms >= 800, "second retry early: {bad:?}");
    // The queue moved on: every good message came before the first retry.
    for i in 0..5 {
        let good = deliveries_of(&seen, &format!("good-{i}"));
        assert_eq!(good.len(), 1, "good-{i}: {good:?}");
        assert!(good[0].at_ms <= bad[1].at_ms, "good-{i} waited for the retry");
    }

    let letters = admin.dead_letters("G", true, 10).await.expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.body, &b"bad"[..]);
    assert_eq!(letter.properties.get("DLQ_ORIGIN_TOPIC").map(String::as_str), Some("T"));
    assert_eq!(
        letter.properties.get("DLQ_ORIGIN_MESSAGE_ID"),
        Some(&first.msg_id),
        "the dead letter names the message first sent"
    );

    // Resent to T, it is consumed once more as a new message; a second resend finds nothing.
    failing.store(false, Ordering::SeqCst);
    assert_eq!(admin.resend_dead_letters("G").await.expect("resend"), 1);
    wait_until("the resent message consumed", Duration::from_secs(10), || async {
        (deliveries_of(&seen, "bad").len() >= 4).then_some(())
    })
    .await;
    assert_eq!(deliveries_of(&seen, "bad")[3].reconsume, 0);
    assert_eq!(admin.resend_dead_letters("G").await.expect("resend"), 0);
    assert!(admin.dead_letters("G", true, 10).await.unwrap().is_empty());
    assert_eq!(
        admin.dead_letters("G", false, 10).await.unwrap().len(),
        1,
        "kept, only marked resent"
    );
    consumer.shutdown().await;
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_pending_over_a_master_failover_comes_once() {
    let mut group = Group::start(3, |_| {}).await;
    let (client, admin) = client_with_topic(&group).await;
    let settings = pb::GroupConfig {
        consumer_group: "G".into(),
        max_reconsume_times: 3,
        backoff_ms: vec![2_000],
        ..Default::default()
    };
    admin.update_group_config(settings).await.expect("group settings");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    // Fails the first delivery only.
    let consumer = consumer(&client, seen.clone(), |s| s.reconsume == 0).await;
    Producer::new(client.clone())
        .send(Message::new("T", "x"))
        .await
        .expect("send");
    let master = group.wait_for_master(ELECTION).await;
    let mut broker = group.client(master).await;
    wait_until("the failed delivery sent back", Duration::from_secs(10), || {
        let mut broker = broker.clone();
        async move {
            let status = broker
                .get_node_status(pb::NodeStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (status.pending_delayed == 1).then_some(())
        }
    })
    .await;
    let failed_at = deliveries_of(&seen, "x")[0].at_ms;
    // The master dies with the retry pending; the next one delivers it.
    group.kill(master).await;
    broker = group.client(group.wait_for_master(ELECTION).await).await;
    wait_until("the retry delivered", Duration::from_secs(15), || async {
        (deliveries_of(&seen, "x").len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let x = deliveries_of(&seen, "x");
    assert_eq!(x.iter().map(|s| s.reconsume).collect::<Vec<_>>(), [0, 1], "{x:?}");
    assert!(x[1].at_ms - failed_at >= 2_000, "retried early: {x:?}");
    let status = broker
        .get_node_status(pb::NodeStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.pending_delayed, 0);
    consumer.shutdown().await;
    group.shutdown().await;
}
