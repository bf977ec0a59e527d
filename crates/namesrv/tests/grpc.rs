//! The NameServer over real gRPC on 127.0.0.1:0.

use std::time::Duration;

use raftmq_common::{Error, ErrorCode};
use raftmq_namesrv::{NameServer, NamesrvConfig};
use raftmq_proto::name_server_client::NameServerClient;
use raftmq_proto::{
    BrokerHeartbeat, GetRouteRequest, Permission, Role, RouteEvent, TopicConfig, TopicTable, UnregisterRequest,
    WatchRoutesRequest,
};
use tonic::transport::Channel;

type Client = NameServerClient<Channel>;

async fn start(expiry_ms: u64) -> NameServer {
    let config = NamesrvConfig {
        listen: "127.0.0.1:0".into(),
        broker_expiry_ms: expiry_ms,
        scan_interval_ms: 50,
        ..Default::default()
    };
    config.validate().unwrap();
    NameServer::start(&config).await.unwrap()
}

async fn connect(ns: &NameServer) -> Client {
    NameServerClient::connect(format!("http://{}", ns.addr()))
        .await
        .unwrap()
}

fn heartbeat(node: u64, role: Role, term: u64, leader: u64, topics: &[&str]) -> BrokerHeartbeat {
    BrokerHeartbeat {
        cluster: "DefaultCluster".into(),
        group: "broker-a".into(),
        node_id: node,
        client_addr: format!("127.0.0.1:{}", 30000 + node),
        role: role as i32,
        term,
        leader_id: leader,
        applied_index: 1,
        topics: (role == Role::Master).then(|| TopicTable {
            topics: topics
                .iter()
                .map(|t| TopicConfig {
                    name: t.to_string(),
                    write_queues: 4,
                    read_queues: 4,
                    permission: Permission::ReadWrite as i32,
                })
                .collect(),
        }),
        members: Vec::new(),
    }
}

/// Sends the heartbeats of a three-node group with `master` as master in `term`.
async fn group_heartbeat(client: &mut Client, master: u64, term: u64, topics: &[&str]) {
    for node in 1..=3 {
        let hb = if node == master {
            heartbeat(node, Role::Master, term, node, topics)
        } else {
            heartbeat(node, Role::Slave, term, master, &[])
        };
        client.heartbeat(hb).await.unwrap();
    }
}

/// Reads watch events until one satisfies `pred`, failing after `deadline`.
async fn next_matching(
    stream: &mut tonic::Streaming<RouteEvent>,
    deadline: Duration,
    what: &str,
    pred: impl Fn(&RouteEvent) -> bool,
) -> RouteEvent {
    tokio::time::timeout(deadline, async {
        loop {
            let event = stream.message().await.unwrap().expect("stream ended");
            if pred(&event) {
                return event;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no watch event within {deadline:?}: {what}"))
}

fn code(status: &tonic::Status) -> Option<ErrorCode> {
    raftmq_common::code::answered(status).then(|| Error::from_status(status).code)
}

#[tokio::test]
async fn a_broker_heartbeating_two_nameservers_is_routable_from_both() {
    let ns1 = start(5000).await;
    let ns2 = start(5000).await;
    let mut c1 = connect(&ns1).await;
    let mut c2 = connect(&ns2).await;
    group_heartbeat(&mut c1, 1, 1, &["T"]).await;
    group_heartbeat(&mut c2, 1, 1, &["T"]).await;

    for client in [&mut c1, &mut c2] {
        let route = client
            .get_route(GetRouteRequest { topic: "T".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(route.groups[0].master_addr, "127.0.0.1:30001");
        let mut slaves: Vec<_> = route.groups[0].slaves.iter().map(|s| s.addr.clone()).collect();
        slaves.sort();
        assert_eq!(slaves, ["127.0.0.1:30002", "127.0.0.1:30003"]);
    }

    // One NameServer stops: the other still serves, and keeps taking heartbeats.
    ns1.shutdown().await.unwrap();
    assert!(c1.get_route(GetRouteRequest { topic: "T".into() }).await.is_err());
    group_heartbeat(&mut c2, 1, 1, &["T"]).await;
    let route = c2
        .get_route(GetRouteRequest { topic: "T".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.queues[0].write_queues, 4);
    ns2.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_watcher_sees_a_master_change_within_one_heartbeat() {
    let ns = start(5000).await;
    let mut client = connect(&ns).await;
    group_heartbeat(&mut client, 1, 1, &["T"]).await;

    let mut watch = client
        .watch_routes(WatchRoutesRequest { topic: "T".into() })
        .await
        .unwrap()
        .into_inner();
    let first = next_matching(&mut watch, Duration::from_secs(5), "initial route", |_| true).await;
    assert_eq!(first.route.unwrap().groups[0].master_node_id, 1);

    // Node 2 wins term 2: its first heartbeat as master is the change.
    client
        .heartbeat(heartbeat(2, Role::Master, 2, 2, &["T"]))
        .await
        .unwrap();
    let event = next_matching(&mut watch, Duration::from_secs(1), "master moved to node 2", |e| {
        e.route.as_ref().is_some_and(|r| r.groups[0].master_node_id == 2)
    })
    .await;
    let group = &event.route.unwrap().groups[0];
    assert_eq!(group.term, 2);
    assert!(
        group.slaves.iter().any(|s| s.node_id == 1),
        "old master listed as slave"
    );

    // A watcher of every topic sees a new topic appear.
    let mut all = client
        .watch_routes(WatchRoutesRequest { topic: String::new() })
        .await
        .unwrap()
        .into_inner();
    client
        .heartbeat(heartbeat(2, Role::Master, 2, 2, &["T", "U"]))
        .await
        .unwrap();
    next_matching(&mut all, Duration::from_secs(1), "topic U appears", |e| {
        e.topic == "U" && e.route.is_some()
    })
    .await;

    // Shutdown ends the watch streams instead of hanging on them.
    tokio::time::timeout(Duration::from_secs(10), ns.shutdown())
        .await
        .expect("shutdown with open watch streams")
        .unwrap();
}

#[tokio::test]
async fn silent_nodes_expire_and_watchers_are_told() {
    let ns = start(300).await;
    let mut client = connect(&ns).await;
    group_heartbeat(&mut client, 1, 1, &["T"]).await;
    let mut watch = client
        .watch_routes(WatchRoutesRequest { topic: "T".into() })
        .await
        .unwrap()
        .into_inner();
    next_matching(&mut watch, Duration::from_secs(5), "initial route", |e| {
        e.route.is_some()
    })
    .await;
    // Nobody heartbeats any more: the route goes away.
    next_matching(&mut watch, Duration::from_secs(5), "route removed", |e| {
        e.route.is_none()
    })
    .await;
    let err = client
        .get_route(GetRouteRequest { topic: "T".into() })
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::TopicNotFound));
    ns.shutdown().await.unwrap();
}

#[tokio::test]
async fn unregister_removes_a_node_at_once() {
    let ns = start(5000).await;
    let mut client = connect(&ns).await;
    group_heartbeat(&mut client, 1, 1, &["T"]).await;
    client
        .unregister(UnregisterRequest {
            cluster: "DefaultCluster".into(),
            group: "broker-a".into(),
            node_id: 1,
        })
        .await
        .unwrap();
    let route = client
        .get_route(GetRouteRequest { topic: "T".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.groups[0].master_addr, "", "no master until a new one heartbeats");
    assert_eq!(route.groups[0].slaves.len(), 2);
    ns.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_requests_get_clear_codes() {
    let ns = start(5000).await;
    let mut client = connect(&ns).await;

    let err = client
        .get_route(GetRouteRequest { topic: "Nope".into() })
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::TopicNotFound));
    assert!(err.message().starts_with("TOPIC_NOT_FOUND"), "{}", err.message());

    let invalid = |field: &'static str| {
        move |err: tonic::Status| {
            assert_eq!(code(&err), Some(ErrorCode::InvalidArgument), "{err:?}");
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(
                err.message().contains(&format!("`{field}`")),
                "{field}: {}",
                err.message()
            );
        }
    };
    invalid("topic")(
        client
            .get_route(GetRouteRequest { topic: String::new() })
            .await
            .unwrap_err(),
    );
    invalid("topic")(
        client
            .get_route(GetRouteRequest { topic: "x".repeat(128) })
            .await
            .unwrap_err(),
    );
    invalid("topic")(
        client
            .watch_routes(WatchRoutesRequest {
                topic: "bad topic".into(),
            })
            .await
            .unwrap_err(),
    );

    let good = heartbeat(1, Role::Master, 1, 1, &["T"]);
    let cases: Vec<(&str, BrokerHeartbeat)> = vec![
        (
            "cluster",
            BrokerHeartbeat {
                cluster: String::new(),
                ..good.clone()
            },
        ),
        (
            "group",
            BrokerHeartbeat {
                group: "a/b".into(),
                ..good.clone()
            },
        ),
        (
            "node_id",
            BrokerHeartbeat {
                node_id: 0,
                ..good.clone()
            },
        ),
        (
            "client_addr",
            BrokerHeartbeat {
                client_addr: "localhost".into(),
                ..good.clone()
            },
        ),
        (
            "client_addr",
            BrokerHeartbeat {
                client_addr: "127.0.0.1:99999".into(),
                ..good.clone()
            },
        ),
        (
            "role",
            BrokerHeartbeat {
                role: 42,
                ..good.clone()
            },
        ),
        ("topics.name", heartbeat(1, Role::Master, 1, 1, &[""])),
    ];
    for (field, hb) in cases {
        invalid(field)(client.heartbeat(hb).await.unwrap_err());
    }
    // Nothing malformed was registered.
    assert!(client
        .get_cluster_info(raftmq_proto::GetClusterInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .groups
        .is_empty());
    ns.shutdown().await.unwrap();
}
