//! SQL92 subscriptions through raftmq's own protocol: the broker (master or slave) returns only
//! the messages the condition holds for, passes over those it cannot judge without stalling,
//! and refuses a bad expression with its position; a group consumer with a SQL subscription
//! gets exactly its messages.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_client::{
    Admin, Client, ConsumeFrom, ConsumeResult, ErrorCode, Message, MessageSelector, Producer, PullConsumer,
    PushConsumer, ReadPreference,
};
use raftmq_testkit::{wait_until, Group, ELECTION};

mod common;

const CONDITION: &str = "(n BETWEEN 100 AND 160 AND kind = 'a') OR (TAGS = 'late' AND n IN (190, 191))";

/// The `n` of message `i`: every tenth is not a number, which the condition cannot judge.
fn n_of(i: u32) -> String {
    if i % 10 == 7 {
        "x".into()
    } else {
        i.to_string()
    }
}

fn wanted(i: u32) -> bool {
    let Ok(n) = n_of(i).parse::<u32>() else {
        return false;
    };
    let kind_a = i.is_multiple_of(2);
    let late = i >= 180;
    ((100..=160).contains(&n) && kind_a) || (late && (n == 190 || n == 191))
}

/// 200 messages on `T` (2 queues) with properties `n` and `kind`, tagged `late` from 180 on.
async fn setup(group: &Group) -> Client {
    group.wait_for_master(ELECTION).await;
    let (client, _) = common::client_with_topic(&group.namesrv_addr(), "T", 2, 1).await;
    let producer = Producer::new(client.clone());
    for i in 0..200u32 {
        let m = Message::new("T", format!("m{i}"))
            .with_tags(if i >= 180 { "late" } else { "early" })
            .with_property("n", n_of(i))
            .with_property("kind", if i.is_multiple_of(2) { "a" } else { "b" });
        producer.send(m).await.expect("send");
    }
    client
}

/// Every message of `T` a pull with `selector` returns, read to the end of each queue.
async fn pull_all(client: &Client, preference: ReadPreference, selector: &MessageSelector) -> Vec<String> {
    let reader = PullConsumer::new(client.clone(), preference);
    let mut bodies = Vec::new();
    for q in reader.queues("T").await.expect("queues") {
        let mut offset = 0;
        loop {
            let r = reader
                .pull("T", &q, offset, 16, selector, Duration::ZERO)
                .await
                .expect("pull");
            assert!(
                r.next_offset > offset || r.next_offset == r.max_offset,
                "a pull moves on"
            );
            bodies.extend(r.messages.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()));
            offset = r.next_offset;
            if offset >= r.max_offset {
                break;
            }
        }
    }
    bodies.sort();
    bodies
}

fn expected() -> Vec<String> {
    let mut want: Vec<String> = (0..200u32).filter(|i| wanted(*i)).map(|i| format!("m{i}")).collect();
    want.sort();
    want
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sql_pull_returns_exactly_the_matching_messages_on_master_and_slave() {
    let group = Group::start(3, |_| {}).await;
    let client = setup(&group).await;
    let selector = MessageSelector::by_sql(CONDITION);
    let want = expected();
    assert!(want.len() > 20, "the condition holds for some messages: {want:?}");
    assert_eq!(pull_all(&client, ReadPreference::Master, &selector).await, want);
    // A slave evaluates the same condition over what it has applied.
    wait_until("a slave has applied every message", Duration::from_secs(10), || async {
        (pull_all(&client, ReadPreference::SlaveOnly, &MessageSelector::all())
            .await
            .len()
            == 200)
            .then_some(())
    })
    .await;
    assert_eq!(pull_all(&client, ReadPreference::SlaveOnly, &selector).await, want);
    // Tags still filter as before.
    let late = pull_all(&client, ReadPreference::Master, &MessageSelector::by_tag("late")).await;
    assert_eq!(late.len(), 20);

    // Bad expressions: refused with their position, by the broker and by the client's check.
    let reader = PullConsumer::new(client.clone(), ReadPreference::Master);
    let q = reader.queues("T").await.unwrap().remove(0);
    let bad = MessageSelector::by_sql("n > 1 AND");
    let e = reader.pull("T", &q, 0, 16, &bad, Duration::ZERO).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::IllegalFilterExpression, "{e}");
    assert!(e.message.contains("line 1, column 10"), "{e}");
    let e = bad.check().unwrap_err();
    assert_eq!(e.code, ErrorCode::IllegalFilterExpression, "{e}");
    let e = MessageSelector::by_sql("kind > 'a'").check().unwrap_err();
    assert!(e.message.contains("only numbers can be ordered"), "{e}");
    let e = reader.pull("T", &q, 0, 16, "a || ", Duration::ZERO).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::IllegalFilterExpression, "{e}");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_consumer_with_a_sql_subscription_gets_exactly_its_messages() {
    let group = Group::start(3, |_| {}).await;
    let client = setup(&group).await;
    let e = PushConsumer::builder(client.clone(), "G", "T")
        .sql("n >")
        .start(|_| ConsumeResult::Success)
        .await
        .err()
        .expect("a malformed expression is refused when the consumer starts");
    assert_eq!(e.code, ErrorCode::IllegalFilterExpression, "{e}");

    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let consumer = PushConsumer::builder(client.clone(), "G", "T")
        .sql(CONDITION)
        .consume_from(ConsumeFrom::First)
        .start(move |batch| {
            let mut seen = sink.lock().unwrap();
            seen.extend(batch.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()));
            ConsumeResult::Success
        })
        .await
        .expect("consumer");
    let want: BTreeSet<String> = expected().into_iter().collect();
    wait_until("every matching message consumed", Duration::from_secs(20), || async {
        (seen.lock().unwrap().iter().cloned().collect::<BTreeSet<_>>() == want).then_some(())
    })
    .await;
    // The group's offsets moved past the filtered-out messages to the end of each queue.
    let admin = Admin::new(client.clone());
    wait_until(
        "offsets committed to the queues' ends",
        Duration::from_secs(10),
        || async {
            let progress = admin.group_progress("G", "T").await.ok()?;
            progress
                .iter()
                .all(|q| q.consume_offset == Some(q.broker_offset))
                .then_some(())
        },
    )
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), want.len(), "no message twice: {seen:?}");
    consumer.shutdown().await;
    group.shutdown().await;
}
