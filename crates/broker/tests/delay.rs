//! Delayed messages in a three-node group in one process: never visible early, visible on every
//! node within a second of their time, delivered once across a master failover just before the
//! due time and across a full stop of the group over it, recalled before it, and refused with
//! stable codes when malformed.

use std::time::Duration;

use raftmq_common::time::now_ms;
use raftmq_common::ErrorCode;
use raftmq_proto as pb;
use raftmq_testkit::{code, message, queue_offsets, send_request, wait_until, Group, CATCH_UP, ELECTION};

/// How late after its due time a message may become visible (the bound).
const LATE: Duration = Duration::from_secs(1);

fn delayed(body: &str, delay_ms: u64) -> pb::Message {
    let mut m = message(body, "");
    m.properties.insert("TIMER_DELAY_MS".into(), delay_ms.to_string());
    m
}

/// Sends one delayed message to node `id`; returns its result (recall handle, due time).
async fn send_delayed(group: &Group, id: u64, body: &str, delay_ms: u64) -> pb::SendResult {
    let reply = group
        .client(id)
        .await
        .send(send_request("T", 0, vec![delayed(body, delay_ms)]))
        .await
        .expect("delayed send")
        .into_inner();
    reply.results.into_iter().next().expect("one result")
}

/// Every message of queue T/0 on node `id`.
async fn messages_on(group: &Group, id: u64) -> Vec<pb::StoredMessage> {
    group
        .client(id)
        .await
        .pull(pb::PullRequest {
            topic: "T".into(),
            queue_id: 0,
            offset: 0,
            max_messages: 64,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().messages)
        .unwrap_or_default()
}

/// Waits until node `id` serves `count` messages of T/0; fails if not by `due + LATE + extra`.
async fn wait_delivered(group: &Group, id: u64, count: usize, due_ms: i64, extra: Duration) -> Vec<pb::StoredMessage> {
    let left = Duration::from_millis((due_ms - now_ms()).max(0) as u64) + LATE + extra;
    wait_until(
        &format!("node {id} serves {count} delivered messages"),
        left,
        || async {
            let got = messages_on(group, id).await;
            (got.len() >= count).then_some(got)
        },
    )
    .await
}

/// Checks that the queue stays empty on every node up to shortly before `due_ms`.
async fn assert_hidden_until(group: &Group, due_ms: i64) {
    while now_ms() < due_ms - 100 {
        for id in group.up() {
            let offsets = queue_offsets(&mut group.client(id).await, "T", 0).await;
            assert_eq!(
                offsets.max_offset, 0,
                "node {id} shows a delayed message before its time"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_appears_on_every_node_at_its_time_and_not_before() {
    let (group, master) = Group::start_with_topic_t(|_| {}).await;
    let sent_at = now_ms();
    let result = send_delayed(&group, master, "later", 1_500).await;
    assert!(
        !result.recall_handle.is_empty(),
        "a delayed send returns a recall handle"
    );
    assert!(
        (sent_at + 1_500..=now_ms() + 1_500).contains(&result.deliver_at_ms),
        "due {} for a send at {sent_at} + 1.5 s",
        result.deliver_at_ms
    );
    assert_hidden_until(&group, result.deliver_at_ms).await;
    for id in group.ids() {
        let got = wait_delivered(&group, id, 1, result.deliver_at_ms, CATCH_UP).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, &b"later"[..]);
        assert!(
            got[0].store_timestamp_ms >= result.deliver_at_ms,
            "stored before its time"
        );
        assert_eq!(
            got[0].properties.get("TIMER_DELIVER_MS"),
            Some(&result.deliver_at_ms.to_string()),
            "a consumer sees when the message was due"
        );
        assert!(got[0].born_timestamp_ms <= sent_at + 1_000, "and when it was sent");
    }
    let master_copy = wait_delivered(&group, master, 1, result.deliver_at_ms, Duration::ZERO).await;
    let lateness = master_copy[0].store_timestamp_ms - result.deliver_at_ms;
    assert!(lateness < LATE.as_millis() as i64, "delivered {lateness} ms late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_just_before_the_due_time_delivers_once_through_the_next() {
    let (mut group, master) = Group::start_with_topic_t(|_| {}).await;
    let result = send_delayed(&group, master, "across a failover", 2_000).await;
    group.wait_caught_up(master, CATCH_UP).await;
    // Just before it is due.
    tokio::time::sleep(Duration::from_millis(
        (result.deliver_at_ms - now_ms() - 200).max(0) as u64
    ))
    .await;
    group.kill(master).await;
    let next = group.wait_for_master(ELECTION).await;
    assert_ne!(next, master);
    let got = wait_delivered(&group, next, 1, result.deliver_at_ms, ELECTION).await;
    assert_eq!(got[0].body, &b"across a failover"[..]);
    // The old master comes back: still exactly one copy everywhere, however long we look.
    group.restart(master).await.expect("restart");
    group.wait_caught_up(master, CATCH_UP).await;
    for id in group.ids() {
        wait_until("every node caught up", CATCH_UP, || async {
            (group.applied(id) >= group.applied(next)).then_some(())
        })
        .await;
        let all = messages_on(&group, id).await;
        assert_eq!(all.len(), 1, "node {id} holds {} copies", all.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_stopped_over_the_due_time_delivers_at_once_when_it_is_back() {
    let (mut group, master) = Group::start_with_topic_t(|_| {}).await;
    let result = send_delayed(&group, master, "while down", 1_000).await;
    for id in group.ids() {
        group.wait_caught_up(id, CATCH_UP).await;
    }
    for id in group.ids() {
        group.stop(id).await;
    }
    // Down past the due time.
    tokio::time::sleep(Duration::from_millis(
        (result.deliver_at_ms - now_ms() + 1_000).max(0) as u64
    ))
    .await;
    for id in group.ids() {
        group.restart(id).await.expect("restart");
    }
    let back = group.wait_for_master(ELECTION).await;
    let elected = now_ms();
    let got = wait_delivered(&group, back, 1, elected, Duration::ZERO).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, &b"while down"[..]);
    assert!(got[0].store_timestamp_ms - elected < LATE.as_millis() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recalled_message_never_arrives_and_recalls_say_why_they_fail() {
    let (group, master) = Group::start_with_topic_t(|_| {}).await;
    let recalled = send_delayed(&group, master, "recalled", 1_500).await;
    let kept = send_delayed(&group, master, "kept", 1_500).await;
    let recall = |handle: String| {
        let group = &group;
        async move {
            group
                .client(master)
                .await
                .recall(pb::RecallRequest {
                    topic: "T".into(),
                    recall_handle: handle,
                })
                .await
        }
    };
    recall(recalled.recall_handle.clone())
        .await
        .expect("recall before the due time");
    let again = recall(recalled.recall_handle.clone()).await.unwrap_err();
    assert_eq!(code(&again), Some(ErrorCode::MessageNotFound), "{again:?}");
    for garbage in ["", "nonsense", "broker-a@zz-1-2", "other-group@1-2-3"] {
        let err = recall(garbage.into()).await.unwrap_err();
        assert_eq!(code(&err), Some(ErrorCode::InvalidArgument), "{garbage:?}: {err:?}");
    }
    let got = wait_delivered(&group, master, 1, kept.deliver_at_ms, Duration::ZERO).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, &b"kept"[..]);
    let late = recall(kept.recall_handle.clone()).await.unwrap_err();
    assert_eq!(code(&late), Some(ErrorCode::AlreadyDelivered), "{late:?}");
    // Well past both due times: the recalled one never came.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(messages_on(&group, master).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_delays_get_stable_codes_and_store_nothing() {
    let (group, master) = Group::start_with_topic_t(|_| {}).await;
    let mut c = group.client(master).await;
    let with = |key: &str, value: &str| {
        let mut m = message("x", "");
        m.properties.insert(key.into(), value.into());
        m
    };
    for (what, messages) in [
        ("a delay that is no number", vec![with("TIMER_DELAY_MS", "soon")]),
        ("a negative level", vec![with("DELAY", "-2")]),
        ("more than 30 days ahead", vec![with("TIMER_DELAY_SEC", "2600000")]),
        ("a mixed batch", vec![delayed("a", 5_000), message("b", "")]),
    ] {
        let err = c.send(send_request("T", 0, messages)).await.unwrap_err();
        assert_eq!(code(&err), Some(ErrorCode::InvalidArgument), "{what}: {err:?}");
    }
    let status = c.get_node_status(pb::NodeStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(queue_offsets(&mut c, "T", 0).await.max_offset, 0);
    assert_eq!(status.pending_delayed, 0, "nothing was scheduled");
}
