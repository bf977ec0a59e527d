//! Transactional messages through the client SDK against in-process groups: half messages never
//! visible, commit and rollback, repeated and contradicting ends, checks answered commit,
//! rollback and unknown, the check limit, and a failover between the send and the end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_client::transaction::{CHECK_MAX_TOPIC, PROP_TRANSACTION};
use raftmq_client::{ErrorCode, Message, TransactionProducer, TransactionState};
use raftmq_proto as pb;
use raftmq_testkit::{code, wait_until, Group, ELECTION};

mod common;

/// Every message of `topic` stored on node `id`, as (queue, body).
async fn stored(group: &Group, id: u64, topic: &str, queues: u32) -> Vec<(u32, String, BTreeMap<String, String>)> {
    let mut broker = group.client(id).await;
    let mut out = Vec::new();
    for queue_id in 0..queues {
        let reply = broker
            .pull(pb::PullRequest {
                topic: topic.into(),
                queue_id,
                offset: 0,
                max_messages: 1000,
                ..Default::default()
            })
            .await;
        let Ok(reply) = reply else { continue };
        for m in reply.into_inner().messages {
            out.push((
                queue_id,
                String::from_utf8(m.body.to_vec()).unwrap(),
                m.properties.into_iter().collect(),
            ));
        }
    }
    out
}

fn bodies(messages: &[(u32, String, BTreeMap<String, String>)]) -> Vec<String> {
    let mut b: Vec<String> = messages.iter().map(|(_, b, _)| b.clone()).collect();
    b.sort();
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_message_is_visible_only_once_committed_and_ends_are_idempotent() {
    let group = Group::start(3, |c| c.transaction_check_after_ms = 600_000).await;
    let master = group.wait_for_master(ELECTION).await;
    let (client, _) = common::client_with_topic(&group.namesrv_addr(), "T", 2, 1).await;
    let checked = Arc::new(Mutex::new(0));
    let producer = {
        let checked = checked.clone();
        TransactionProducer::builder(client.clone(), "P")
            .topics(["T"])
            .checker(move |_| {
                *checked.lock().unwrap() += 1;
                async { TransactionState::Unknown }
            })
            .start()
            .expect("producer")
    };

    let commit = producer
        .send(Message::new("T", "commit-me").with_keys("k1"))
        .await
        .expect("half 1");
    let rollback = producer.send(Message::new("T", "roll-me-back")).await.expect("half 2");
    let open = producer.send(Message::new("T", "left-open")).await.expect("half 3");
    assert!(commit.transaction_id.starts_with("broker-a@"), "{commit:?}");
    for id in group.ids() {
        group.wait_caught_up(id, Duration::from_secs(5)).await;
        assert!(
            stored(&group, id, "T", 2).await.is_empty(),
            "no half message is visible on node {id}"
        );
    }

    let stored_id = commit.clone().commit().await.expect("commit");
    assert!(stored_id.is_some(), "the first commit stores the message");
    assert_eq!(
        commit.clone().commit().await.expect("commit again"),
        None,
        "a repeated commit stores nothing"
    );
    rollback.clone().rollback().await.expect("rollback");
    rollback.clone().rollback().await.expect("a repeated rollback is done");
    let err = rollback.clone().commit().await.unwrap_err();
    assert_eq!(err.code, ErrorCode::TransactionEnded, "{err}");
    let err = commit.clone().rollback().await.unwrap_err();
    assert_eq!(err.code, ErrorCode::TransactionEnded, "{err}");

    for id in group.ids() {
        group.wait_caught_up(id, Duration::from_secs(5)).await;
        let messages = stored(&group, id, "T", 2).await;
        assert_eq!(bodies(&messages), ["commit-me"], "node {id}");
        assert_eq!(messages[0].0, commit.queue_id, "in the queue of its half message");
        assert_eq!(messages[0].2.get(PROP_TRANSACTION).map(String::as_str), Some("true"));
    }

    // The open one is listed pending, on a slave too.
    let slave = group.ids().into_iter().find(|id| *id != master).unwrap();
    let listed = group
        .client(slave)
        .await
        .list_transactions(pb::ListTransactionsRequest { limit: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.pending, 1);
    assert_eq!(listed.transactions[0].transaction_id, open.transaction_id);
    assert_eq!(listed.transactions[0].producer_group, "P");

    // An end sent to a slave names the master; bad and unknown ids are refused.
    let mut on_slave = group.client(slave).await;
    let end = |id: &str| pb::EndTransactionRequest {
        transaction_id: id.into(),
        resolution: pb::TransactionResolution::Commit as i32,
        from_check: false,
    };
    let refused = on_slave.end_transaction(end(&open.transaction_id)).await.unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::NotMaster), "{refused:?}");
    let mut on_master = group.client(master).await;
    for (id, expected) in [
        ("garbage", ErrorCode::InvalidArgument),
        ("broker-z@1-0", ErrorCode::InvalidArgument),
        ("broker-a@ffffff-0", ErrorCode::MessageNotFound),
    ] {
        let refused = on_master.end_transaction(end(id)).await.unwrap_err();
        assert_eq!(code(&refused), Some(expected), "{id}: {refused:?}");
    }
    let unspecified = on_master
        .end_transaction(pb::EndTransactionRequest {
            transaction_id: open.transaction_id.clone(),
            resolution: 0,
            from_check: false,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&unspecified), Some(ErrorCode::InvalidArgument));
    // Delayed transactional messages are refused.
    let err = producer
        .send(Message::new("T", "x").with_delay(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert_eq!(*checked.lock().unwrap(), 0, "nothing was due for a check");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transactions_are_checked_and_ended_as_the_checker_says_up_to_the_limit() {
    let group = Group::start(3, |c| {
        c.transaction_check_after_ms = 300;
        c.transaction_check_interval_ms = 300;
        c.transaction_max_checks = 3;
    })
    .await;
    group.wait_for_master(ELECTION).await;
    let (client, _) = common::client_with_topic(&group.namesrv_addr(), "T", 2, 1).await;
    let asked: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let checker = {
        let asked = asked.clone();
        move |m: raftmq_client::ReceivedMessage| {
            let body = String::from_utf8(m.body.to_vec()).unwrap();
            *asked.lock().unwrap().entry(body.clone()).or_default() += 1;
            async move {
                match body.as_str() {
                    "yes" => TransactionState::Commit,
                    "no" => TransactionState::Rollback,
                    _ => TransactionState::Unknown,
                }
            }
        }
    };
    // One producer sends and goes away without ending anything; another of the group answers.
    let answering = TransactionProducer::builder(client.clone(), "P")
        .topics(["T"])
        .checker(checker)
        .start()
        .expect("producer");
    {
        let silent = TransactionProducer::builder(client.clone(), "P")
            .checker(|_| async { TransactionState::Unknown })
            .start()
            .expect("producer");
        for body in ["yes", "no", "maybe"] {
            silent.send(Message::new("T", body)).await.expect("half message");
        }
        // Immune from checks for a minute: never asked within this test.
        silent
            .send(Message::new("T", "immune").with_property("CHECK_IMMUNITY_TIME_IN_SECONDS", "60"))
            .await
            .expect("half message");
    }

    let master = group.wait_for_master(ELECTION).await;
    wait_until("yes committed by its check", Duration::from_secs(10), || async {
        (bodies(&stored(&group, master, "T", 2).await) == ["yes"]).then_some(())
    })
    .await;
    let given_up = wait_until("maybe given up after three checks", Duration::from_secs(10), || async {
        let m = stored(&group, master, CHECK_MAX_TOPIC, 1).await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(bodies(&given_up), ["maybe"]);
    assert_eq!(
        given_up[0].2.get("TRANSACTION_CHECK_TIMES").map(String::as_str),
        Some("3")
    );
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.get("maybe"), Some(&3), "{asked:?}");
    assert_eq!(asked.get("yes"), Some(&1), "{asked:?}");
    assert_eq!(asked.get("no"), Some(&1), "{asked:?}");
    assert_eq!(asked.get("immune"), None, "{asked:?}");
    let listed = group
        .client(master)
        .await
        .list_transactions(pb::ListTransactionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.pending, 1, "only the immune one is left: {listed:?}");
    assert_eq!(
        bodies(&stored(&group, master, "T", 2).await),
        ["yes"],
        "no is never visible"
    );
    drop(answering);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_master_goes_on_checking_and_a_commit_repeated_after_a_failover_is_stored_once() {
    let mut group = Group::start(3, |c| {
        c.transaction_check_after_ms = 1_500;
        c.transaction_check_interval_ms = 300;
    })
    .await;
    let first = group.wait_for_master(ELECTION).await;
    let (client, _) = common::client_with_topic(&group.namesrv_addr(), "T", 2, 1).await;
    let asked_on: Arc<Mutex<Vec<String>>> = Arc::default();
    let producer = {
        let asked_on = asked_on.clone();
        TransactionProducer::builder(client.clone(), "P")
            .topics(["T"])
            .checker(move |m| {
                asked_on
                    .lock()
                    .unwrap()
                    .push(String::from_utf8(m.body.to_vec()).unwrap());
                async { TransactionState::Commit }
            })
            .start()
            .expect("producer")
    };
    let committed = producer
        .send(Message::new("T", "committed-before"))
        .await
        .expect("half");
    committed.clone().commit().await.expect("commit");
    let _open = producer.send(Message::new("T", "checked-after")).await.expect("half");

    // The master dies before the open one is due for a check.
    group.kill(first).await;
    let second = group.wait_for_master(ELECTION).await;
    assert_ne!(first, second);
    // The commit, repeated at the new master (a client retrying an unknown outcome), is done
    // and stores nothing more.
    assert_eq!(committed.clone().commit().await.expect("commit again"), None);
    wait_until(
        "the new master checks the open transaction",
        Duration::from_secs(15),
        || async {
            let b = bodies(&stored(&group, second, "T", 2).await);
            (b == ["checked-after", "committed-before"]).then_some(())
        },
    )
    .await;
    assert_eq!(asked_on.lock().unwrap().as_slice(), ["checked-after"]);
    // Still exactly one of each after the nodes caught up, on every live node.
    for id in group.up() {
        group.wait_caught_up(id, Duration::from_secs(5)).await;
        assert_eq!(
            bodies(&stored(&group, id, "T", 2).await),
            ["checked-after", "committed-before"],
            "node {id}"
        );
    }
    drop(producer);
    group.shutdown().await;
}
