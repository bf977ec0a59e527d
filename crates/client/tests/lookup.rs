//! Messages by key across broker groups: every group's key index is asked and the answers merge
//! newest first; a group whose master is down answers from a slave; bad queries get their code.

use std::collections::BTreeSet;

use raftmq_client::{ErrorCode, Message, Producer};
use raftmq_testkit::{Group, ELECTION};

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_found_by_key_in_every_group_newest_first_and_with_a_master_down() {
    let mut a = Group::start(3, |_| {}).await;
    let ns = a.namesrv_addr();
    let b = Group::start_named(3, "broker-b", &ns, |_| {}).await;
    a.wait_for_master(ELECTION).await;
    b.wait_for_master(ELECTION).await;
    let (client, admin) = common::client_with_topic(&ns, "T", 2, 2).await;

    // 40 messages, spread over both groups; message i has keys `order-{i % 3}` and `all`.
    let producer = Producer::new(client.clone());
    let mut groups_used = BTreeSet::new();
    for i in 0..40 {
        let m = Message::new("T", format!("m{i}")).with_keys(format!("order-{} all", i % 3));
        groups_used.insert(producer.send(m).await.expect("send").group);
    }
    assert_eq!(groups_used.len(), 2, "the sends reached both groups");

    let found = admin
        .query_by_key("T", "order-1", None, None, 100)
        .await
        .expect("query");
    let bodies: BTreeSet<String> = found
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    let want: BTreeSet<String> = (0..40).filter(|i| i % 3 == 1).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, want);
    assert!(!found.truncated);
    assert_eq!(
        found
            .messages
            .iter()
            .map(|m| m.group.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        2,
        "both groups answered"
    );
    assert!(
        found
            .messages
            .windows(2)
            .all(|w| w[0].store_timestamp_ms >= w[1].store_timestamp_ms),
        "newest first"
    );
    assert!(found.messages.iter().all(|m| m.keys.split(' ').any(|k| k == "order-1")));

    // A limit, and a time range that holds only the newest.
    let three = admin.query_by_key("T", "all", None, None, 3).await.unwrap();
    assert_eq!((three.messages.len(), three.truncated), (3, true));
    let newest = &three.messages[0];
    let since = admin
        .query_by_key("T", "all", Some(newest.store_timestamp_ms), None, 100)
        .await
        .unwrap();
    assert!(!since.messages.is_empty());
    assert!(since
        .messages
        .iter()
        .all(|m| m.store_timestamp_ms >= newest.store_timestamp_ms));
    let future = admin
        .query_by_key("T", "all", Some(newest.store_timestamp_ms + 3_600_000), None, 100)
        .await
        .unwrap();
    assert!(future.messages.is_empty());

    // Bad queries.
    let e = admin
        .query_by_key("NoSuchTopic", "k", None, None, 10)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::TopicNotFound, "{e}");
    let e = admin.query_by_key("T", "two keys", None, None, 10).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    let e = admin.query_by_key("T", "k", Some(10), Some(5), 10).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");

    // Group a's master dies: its slaves answer, with the same messages.
    let master = a.wait_for_master(ELECTION).await;
    a.kill(master).await;
    let again = admin
        .query_by_key("T", "order-1", None, None, 100)
        .await
        .expect("query after a kill");
    let again: BTreeSet<String> = again
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    assert_eq!(again, want);
    a.shutdown().await;
    b.shutdown().await;
}
