//! The real `raftmq-namesrv` binary: starts, serves, rejects bad config, stops on signals.

use std::time::Duration;

use raftmq_blackbox::Process;
use raftmq_proto::name_server_client::NameServerClient;
use raftmq_proto::{BrokerHeartbeat, GetRouteRequest, Permission, Role, TopicConfig, TopicTable};

fn listening_addr(p: &mut Process) -> String {
    let line = p.wait_for_line("listening on", Duration::from_secs(20));
    line.rsplit(' ').next().expect("address").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_routes_and_stops_cleanly_on_sigterm() {
    let mut ns = Process::start("raftmq-namesrv", &["--listen", "127.0.0.1:0"]);
    let addr = listening_addr(&mut ns);
    let mut client = NameServerClient::connect(format!("http://{addr}")).await.unwrap();
    client
        .heartbeat(BrokerHeartbeat {
            cluster: "DefaultCluster".into(),
            group: "broker-a".into(),
            node_id: 1,
            client_addr: "127.0.0.1:10911".into(),
            role: Role::Master as i32,
            term: 1,
            leader_id: 1,
            applied_index: 3,
            topics: Some(TopicTable {
                topics: vec![TopicConfig {
                    name: "TopicTest".into(),
                    write_queues: 4,
                    read_queues: 4,
                    permission: Permission::ReadWrite as i32,
                }],
            }),
            members: vec![1],
        })
        .await
        .unwrap();
    let route = client
        .get_route(GetRouteRequest {
            topic: "TopicTest".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.groups[0].master_addr, "127.0.0.1:10911");
    drop(client);

    ns.signal("TERM");
    let status = ns.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}: {}", ns.output());
}

#[tokio::test]
async fn sigint_stops_it_too() {
    let mut ns = Process::start("raftmq-namesrv", &["--listen", "127.0.0.1:0"]);
    listening_addr(&mut ns);
    ns.signal("INT");
    assert!(ns.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn a_config_typo_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("namesrv.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nbroker-expiry = 5000\n").unwrap();
    let mut ns = Process::start("raftmq-namesrv", &["--config", path.to_str().unwrap()]);
    let status = ns.wait_exit(Duration::from_secs(10));
    let output = ns.output();
    assert!(!status.success());
    assert!(output.contains("broker-expiry"), "{output}");

    std::fs::write(&path, "scan-interval-ms = 60000\n").unwrap();
    let mut ns = Process::start("raftmq-namesrv", &["--config", path.to_str().unwrap()]);
    assert!(!ns.wait_exit(Duration::from_secs(10)).success());
    assert!(ns.output().contains("scan-interval-ms"));

    let mut ns = Process::start("raftmq-namesrv", &["--listen", "not-an-address"]);
    assert!(!ns.wait_exit(Duration::from_secs(10)).success());
    assert!(ns.output().contains("`listen`"));
}
