//! Delayed messages through the client SDK against an in-process group: a group consumer gets
//! immediate messages at once and delayed ones at their time, a recalled one never, and a
//! producer's concurrent sends of both kinds are never mixed into one refused request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_client::{ConsumeFrom, ConsumeResult, ErrorCode, Message, Producer, PushConsumer, ReceivedMessage};
use raftmq_common::time::now_ms;
use raftmq_testkit::{wait_until, Group, ELECTION};

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_sends_arrive_at_their_time_and_a_recalled_one_never() {
    let group = Group::start(3, |_| {}).await;
    group.wait_for_master(ELECTION).await;
    let (client, _) = common::client_with_topic(&group.namesrv_addr(), "T", 2, 1).await;

    let seen: Arc<Mutex<Vec<(i64, ReceivedMessage)>>> = Arc::default();
    let consumer = {
        let seen = seen.clone();
        PushConsumer::builder(client.clone(), "G", "T")
            .consume_from(ConsumeFrom::First)
            .start(move |batch| {
                let mut s = seen.lock().unwrap();
                s.extend(batch.iter().map(|m| (now_ms(), m.clone())));
                ConsumeResult::Success
            })
            .await
            .expect("consumer")
    };

    let producer = Producer::new(client.clone());
    // Concurrent sends of both kinds go through the producer's batcher together.
    let mut pending = Vec::new();
    for i in 0..6 {
        let m = Message::new("T", format!("delayed-{i}")).with_delay(Duration::from_millis(1_500));
        pending.push(producer.send_async(m));
        pending.push(producer.send_async(Message::new("T", format!("now-{i}"))));
    }
    let level = producer
        .send(Message::new("T", "level-1").with_delay_level(1))
        .await
        .expect("a level-1 send");
    let mut results = Vec::new();
    for p in pending {
        results.push(p.await.expect("every send acknowledged"));
    }
    let delayed: Vec<_> = results.iter().filter_map(|r| r.delayed.clone()).collect();
    assert_eq!(delayed.len(), 6, "six delayed results with recall handles");
    assert!(level.delayed.is_some());
    let recalled = &delayed[0];
    producer.recall("T", &recalled.recall_handle).await.expect("recall");
    let again = producer.recall("T", &recalled.recall_handle).await.unwrap_err();
    assert_eq!(again.code, ErrorCode::MessageNotFound, "{again}");

    let last_due = delayed.iter().map(|d| d.deliver_at_ms).max().unwrap();
    wait_until(
        "five delayed, one level-1 and six immediate messages consumed",
        Duration::from_millis((last_due - now_ms()).max(0) as u64) + Duration::from_secs(5),
        || async { (seen.lock().unwrap().len() >= 12).then_some(()) },
    )
    .await;
    let seen = seen.lock().unwrap().clone();
    for (at, m) in &seen {
        let body = String::from_utf8_lossy(&m.body).into_owned();
        assert_ne!(body, "delayed-0", "the recalled message arrived");
        if let Some(due) = m.properties.get("TIMER_DELIVER_MS") {
            let due: i64 = due.parse().unwrap();
            assert!(*at >= due, "{body} consumed at {at}, before its time {due}");
        } else {
            assert!(body.starts_with("now-"), "{body} arrived without its due time");
        }
    }
    consumer.shutdown().await;
}
