//! The NameServer's view of a three-node group in one process: routes that follow a failover, and
//! a clean stop that unregisters at once.

use std::time::Duration;

use raftmq_proto as pb;
use raftmq_testkit::{wait_until, Group, ELECTION};

/// Topic T's route as the NameServer answers it now.
async fn route_of_t(
    ns: &raftmq_proto::name_server_client::NameServerClient<tonic::transport::Channel>,
) -> Option<pb::TopicRoute> {
    let mut ns = ns.clone();
    let route = ns.get_route(pb::GetRouteRequest { topic: "T".into() }).await.ok()?;
    Some(route.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nameserver_routes_the_group_and_follows_a_failover() {
    let mut group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    group.create_topic(master, "T", 4).await;
    let mut ns = group.namesrv_client().await;
    let route_master = |route: &pb::TopicRoute| route.groups.first().map(|g| g.master_addr.clone());
    let master_addr = group.addr(master);
    wait_until(
        "the NameServer routes T to the master",
        Duration::from_secs(10),
        || async {
            let route = route_of_t(&ns).await?;
            (route_master(&route) == Some(master_addr.clone())
                && route.groups[0].slaves.len() == 2
                && route.queues[0].write_queues == 4)
                .then_some(())
        },
    )
    .await;
    group.kill(master).await;
    let second = group.wait_for_master(ELECTION).await;
    let second_addr = group.addr(second);
    wait_until(
        "the NameServer routes T to the new master",
        Duration::from_secs(10),
        || async {
            let route = route_of_t(&ns).await?;
            (route_master(&route) == Some(second_addr.clone())).then_some(())
        },
    )
    .await;
    let info = ns
        .get_cluster_info(pb::GetClusterInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.groups[0].master_node_id, second);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_unregisters_from_the_nameserver_at_once() {
    let (mut group, master) = Group::start_with_topic_t(|_| {}).await;
    let mut ns = group.namesrv_client().await;
    wait_until("three nodes registered", Duration::from_secs(10), || {
        let mut ns = ns.clone();
        async move {
            (ns.get_cluster_info(pb::GetClusterInfoRequest {})
                .await
                .ok()?
                .into_inner()
                .groups
                .first()?
                .nodes
                .len()
                == 3)
                .then_some(())
        }
    })
    .await;
    let slave = group.ids().into_iter().find(|id| *id != master).unwrap();
    group.stop(slave).await;
    // Well before the 5 s expiry: the node said goodbye.
    let info = ns
        .get_cluster_info(pb::GetClusterInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let nodes: Vec<u64> = info.groups[0].nodes.iter().map(|n| n.node_id).collect();
    assert!(!nodes.contains(&slave), "{nodes:?}");
    group.shutdown().await;
}
