//! Orderly consumers in one group under broker-held queue locks, against an in-process group:
//! three members, keyed sends, one member killed and then the master killed mid-stream. Per key,
//! messages are first delivered in send order with nothing skipped, and no two members ever
//! consume one queue at the same time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmq_client::{ConsumeFrom, ConsumeResult, Message, Producer, PushConsumer};
use raftmq_testkit::{wait_until, Group, ELECTION};

mod common;

/// One handler call: which member, which queue, when it ran, what it got.
#[derive(Debug, Clone)]
struct Call {
    member: usize,
    queue: (String, u32),
    start: Instant,
    end: Instant,
    bodies: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_members_never_share_a_queue_and_keep_each_key_in_order_across_kills() {
    let mut group = Group::start(3, |c| c.consumer_expiry_ms = 2_000).await;
    group.wait_for_master(ELECTION).await;
    let (client, _) = common::client_with_topic(&group.namesrv_addr(), "O", 4, 1).await;
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let start_member = |member: usize| {
        let calls = calls.clone();
        let client = client.clone();
        async move {
            PushConsumer::builder(client, "OG", "O")
                .orderly(true)
                .queue_lock_lease(Duration::from_secs(3))
                .consume_from(ConsumeFrom::First)
                .batch_size(4)
                .start(move |batch| {
                    let start = Instant::now();
                    // Long enough that two members on one queue would overlap.
                    std::thread::sleep(Duration::from_millis(3));
                    let m = &batch[0];
                    calls.lock().unwrap().push(Call {
                        member,
                        queue: (m.group.clone(), m.queue_id),
                        start,
                        end: Instant::now(),
                        bodies: batch
                            .iter()
                            .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
                            .collect(),
                    });
                    ConsumeResult::Success
                })
                .await
                .expect("member")
        }
    };
    let mut members = vec![start_member(0).await, start_member(1).await, start_member(2).await];

    // Keyed sends all along: each key's messages go to one queue in order.
    let producer = Producer::new(client.clone());
    let sent: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let sending = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = {
        let (producer, sent, sending) = (producer.clone(), sent.clone(), sending.clone());
        tokio::spawn(async move {
            let mut seq = 0u32;
            while sending.load(std::sync::atomic::Ordering::SeqCst) {
                for k in 0..8 {
                    let key = format!("k{k}");
                    let body = format!("{key}-{seq}");
                    // A send refused during the election is sent again: same key, same place in
                    // the order.
                    loop {
                        match producer.send_ordered(Message::new("O", body.clone()), &key).await {
                            Ok(_) => break,
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                    sent.lock().unwrap().insert(key, seq + 1);
                }
                seq += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A member dies without releasing anything: its queues wait for its locks to expire.
    drop(members.remove(2));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let master = group.wait_for_master(ELECTION).await;
    group.kill(master).await;
    group.wait_for_master(ELECTION).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sending.store(false, std::sync::atomic::Ordering::SeqCst);
    sender.await.unwrap();
    let sent = sent.lock().unwrap().clone();
    let total: u32 = sent.values().sum();

    wait_until("every message consumed", Duration::from_secs(30), || async {
        let calls = calls.lock().unwrap();
        let mut got = std::collections::BTreeSet::new();
        for c in calls.iter() {
            got.extend(c.bodies.iter().cloned());
        }
        (got.len() as u32 >= total).then_some(())
    })
    .await;
    for m in members {
        m.shutdown().await;
    }

    let calls = calls.lock().unwrap().clone();
    // Per key: first deliveries in send order, none skipped (a batch handled again after a
    // member died before committing it may repeat, never overtake).
    let mut first: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut sorted = calls.clone();
    sorted.sort_by_key(|c| c.start);
    for c in &sorted {
        for b in &c.bodies {
            if seen.insert(b.clone()) {
                let (key, seq) = b.split_once('-').unwrap();
                first.entry(key.to_owned()).or_default().push(seq.parse().unwrap());
            }
        }
    }
    for (key, seqs) in &first {
        let expected: Vec<u32> = (0..sent[key]).collect();
        assert_eq!(seqs, &expected, "key {key}: first deliveries out of order or skipped");
    }
    // No two members on one queue at the same time.
    let mut by_queue: BTreeMap<(String, u32), Vec<&Call>> = BTreeMap::new();
    for c in &calls {
        by_queue.entry(c.queue.clone()).or_default().push(c);
    }
    for (queue, list) in &by_queue {
        for a in list {
            for b in list {
                if a.member != b.member {
                    assert!(
                        a.end <= b.start || b.end <= a.start,
                        "members {} and {} consumed {queue:?} at the same time",
                        a.member,
                        b.member
                    );
                }
            }
        }
    }
    let members_per_queue: BTreeMap<_, usize> = by_queue
        .iter()
        .map(|(q, l)| {
            (
                q.clone(),
                l.iter()
                    .map(|c| c.member)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
            )
        })
        .collect();
    eprintln!(
        "{} calls, {total} messages; members per queue: {members_per_queue:?}",
        calls.len()
    );
    group.shutdown().await;
}
