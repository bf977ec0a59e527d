//! The metrics endpoints, scraped as Prometheus would: the names are there, sends, pulls,
//! errors and consumer offsets move them, the master and the slaves say their roles, the
//! NameServer counts its nodes and route queries, and no label is per message or per client.

use std::collections::BTreeSet;
use std::time::Duration;

use raftmq_proto as pb;
use raftmq_testkit::{sample, scrape, wait_until, Group, ELECTION};

/// The label names of every sample of a scrape.
fn label_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, labels)) = line.split_once('{') else {
            continue;
        };
        let labels = labels.split('}').next().unwrap_or("");
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            names.insert(pair.split('=').next().unwrap_or("").to_owned());
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_and_the_nameserver_serve_metrics_that_move() {
    let group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    let mut broker = pb::broker_client::BrokerClient::connect(format!("http://{}", group.addr(master)))
        .await
        .unwrap();
    wait_until("topic T created", Duration::from_secs(10), || {
        let mut broker = broker.clone();
        async move {
            broker
                .upsert_topic(pb::UpsertTopicRequest {
                    topic: Some(pb::TopicConfig {
                        name: "T".into(),
                        write_queues: 2,
                        read_queues: 2,
                        permission: pb::Permission::ReadWrite as i32,
                    }),
                })
                .await
                .ok()
        }
    })
    .await;

    let before = scrape(group.metrics_addr(master)).await;
    for name in [
        "raftmq_broker_term",
        "raftmq_broker_applied_index",
        "raftmq_broker_last_log_index",
        "raftmq_broker_wal_sync_seconds_count",
        "raftmq_broker_disk_available_bytes",
        "raftmq_broker_delayed_pending",
        "raftmq_broker_transactions_pending",
        "raftmq_broker_transaction_producers",
        "raftmq_broker_elections_total",
        "raftmq_broker_leader_changes_total",
    ] {
        assert!(sample(&before, name).is_some(), "{name} missing from:\n{before}");
    }
    assert_eq!(
        sample(&before, r#"raftmq_broker_role{role="master"}"#),
        Some(1.0),
        "{before}"
    );
    let me = format!(r#"raftmq_broker_info{{broker_group="broker-a",node="{master}",cluster="DefaultCluster"}}"#);
    assert_eq!(sample(&before, &me), Some(1.0), "every series names its node: {before}");
    assert!(sample(&before, r#"raftmq_broker_sent_messages_total{topic="T"}"#).is_none());
    let slave = group.ids().into_iter().find(|id| *id != master).unwrap();
    let on_slave = scrape(group.metrics_addr(slave)).await;
    assert_eq!(
        sample(&on_slave, r#"raftmq_broker_role{role="slave"}"#),
        Some(1.0),
        "{on_slave}"
    );

    // Ten sends of 100 bytes, one to a topic that does not exist, a pull, a commit.
    for i in 0..10 {
        let r = broker
            .send(pb::SendRequest {
                topic: "T".into(),
                queue_id: 0,
                messages: vec![pb::Message {
                    body: vec![b'x'; 100],
                    keys: format!("k{i}"),
                    ..Default::default()
                }],
            })
            .await;
        r.expect("send");
    }
    let refused = broker
        .send(pb::SendRequest {
            topic: "NoSuchTopic".into(),
            messages: vec![pb::Message {
                body: b"x".to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await;
    assert!(refused.is_err());
    let pulled = broker
        .pull(pb::PullRequest {
            topic: "T".into(),
            queue_id: 0,
            offset: 0,
            max_messages: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pulled.messages.len(), 4);
    broker
        .commit_offsets(pb::CommitOffsetsRequest {
            consumer_group: "G".into(),
            offsets: vec![pb::OffsetEntry {
                topic: "T".into(),
                queue_id: 0,
                offset: 4,
            }],
        })
        .await
        .unwrap();

    let after = scrape(group.metrics_addr(master)).await;
    assert_eq!(
        sample(&after, r#"raftmq_broker_sent_messages_total{topic="T"}"#),
        Some(10.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, r#"raftmq_broker_sent_bytes_total{topic="T"}"#),
        Some(1000.0)
    );
    assert_eq!(
        sample(&after, r#"raftmq_broker_pulled_messages_total{topic="T"}"#),
        Some(4.0)
    );
    assert_eq!(
        sample(&after, r#"raftmq_broker_errors_total{code="TOPIC_NOT_FOUND"}"#),
        Some(1.0),
        "{after}"
    );
    assert!(sample(&after, "raftmq_broker_send_seconds_count").unwrap() >= 10.0);
    assert!(sample(&after, "raftmq_broker_entry_messages_count").unwrap() >= 10.0);
    assert!(sample(&after, "raftmq_broker_wal_sync_seconds_count").unwrap() >= 10.0);
    assert_eq!(
        sample(
            &after,
            r#"raftmq_broker_consumer_lag_messages{group="G",topic="T",queue="0"}"#
        ),
        Some(6.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, r#"raftmq_broker_queue_messages{topic="T",queue="0"}"#),
        Some(10.0)
    );
    assert!(
        sample(&after, "raftmq_broker_applied_index").unwrap()
            > sample(&before, "raftmq_broker_applied_index").unwrap()
    );
    // Memory: the messages sent sit in the log family's memtable; the process is resident.
    assert!(
        sample(&after, r#"raftmq_broker_store_memtable_bytes{cf="log"}"#).unwrap() >= 1000.0,
        "{after}"
    );
    assert!(sample(&after, "raftmq_broker_store_block_cache_bytes").unwrap() <= (8 << 20) as f64);
    assert!(sample(&after, "raftmq_broker_resident_memory_bytes").unwrap() > (1 << 20) as f64);
    for id in group.ids().into_iter().filter(|id| *id != master) {
        let series = format!(r#"raftmq_broker_replication_lag_entries{{slave="{id}"}}"#);
        assert!(sample(&after, &series).is_some(), "{series} missing from:\n{after}");
    }
    // Bounded labels: nothing per message or per client.
    let allowed: BTreeSet<String> = [
        "topic",
        "queue",
        "group",
        "broker_group",
        "code",
        "role",
        "slave",
        "cf",
        "cluster",
        "node",
        "le",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let names = label_names(&after);
    assert!(
        names.is_subset(&allowed),
        "unexpected labels: {:?}",
        names.difference(&allowed)
    );

    // The NameServer: the group's three nodes, heartbeats, route queries.
    let ns_addr = group
        .namesrv
        .as_ref()
        .unwrap()
        .metrics_addr()
        .expect("NameServer metrics");
    let ns = scrape(ns_addr).await;
    assert_eq!(
        sample(&ns, r#"raftmq_namesrv_nodes{group="broker-a"}"#),
        Some(3.0),
        "{ns}"
    );
    assert_eq!(
        sample(&ns, r#"raftmq_namesrv_group_has_master{group="broker-a"}"#),
        Some(1.0)
    );
    assert!(sample(&ns, "raftmq_namesrv_heartbeats_total").unwrap() > 0.0);
    let queries = sample(&ns, "raftmq_namesrv_route_queries_total").unwrap();
    let mut client = group.namesrv_client().await;
    client
        .get_route(pb::GetRouteRequest { topic: "T".into() })
        .await
        .unwrap();
    let ns = scrape(ns_addr).await;
    assert_eq!(sample(&ns, "raftmq_namesrv_route_queries_total"), Some(queries + 1.0));
    assert!(label_names(&ns).is_subset(&allowed));
    assert!(sample(&ns, "raftmq_namesrv_connections").unwrap() >= 1.0, "{ns}");
    assert!(sample(&ns, "raftmq_namesrv_connections_accepted_total").unwrap() >= 1.0);

    // Connections: one more client is counted while it is open, and no longer once it closes.
    let open = |text: &str| sample(text, "raftmq_broker_client_connections").expect("client_connections");
    let before = open(&after);
    assert!(before >= 1.0, "this test's own connection: {after}");
    let accepted = sample(&after, "raftmq_broker_client_connections_accepted_total").unwrap();
    let mut another = pb::broker_client::BrokerClient::connect(format!("http://{}", group.addr(master)))
        .await
        .unwrap();
    another
        .pull(pb::PullRequest {
            topic: "T".into(),
            max_messages: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let metrics_at = group.metrics_addr(master);
    wait_until("the new connection counted", Duration::from_secs(5), || async move {
        let now = scrape(metrics_at).await;
        (open(&now) == before + 1.0
            && sample(&now, "raftmq_broker_client_connections_accepted_total").unwrap() > accepted)
            .then_some(())
    })
    .await;
    drop(another);
    wait_until(
        "the closed connection no longer counted",
        Duration::from_secs(5),
        || async move { (open(&scrape(metrics_at).await) == before).then_some(()) },
    )
    .await;

    // The Grafana dashboard asks only for families the nodes serve.
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/grafana/raftmq.json"))
        .expect("docs/grafana/raftmq.json");
    let served = format!("{after}{ns}");
    let mut asked = BTreeSet::new();
    for (i, _) in dashboard.match_indices("raftmq_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_owned();
        asked.insert(family);
    }
    assert!(asked.len() > 10, "{asked:?}");
    for family in &asked {
        assert!(
            served.contains(&format!("# TYPE {family} ")),
            "the dashboard asks for {family}, which no node serves"
        );
    }
    group.shutdown().await;
}
