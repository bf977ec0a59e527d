//! Heartbeats to every NameServer: role, term and leader from Raft, and, from the master, the
//! topic table.
//!
//! One task; it sends on a timer and at once when the node's role, term or leader changes (a new
//! master is routed without waiting a whole interval). A NameServer that does not answer is
//! retried on the next beat; the others are not held up by it. On shutdown it unregisters.

use std::sync::Arc;
use std::time::Duration;

use openraft::metrics::RaftServerMetrics;
use raftmq_common::shutdown::Stopping;
use raftmq_proto::name_server_client::NameServerClient;
use raftmq_proto::{BrokerHeartbeat, Role, TopicTable, UnregisterRequest};
use raftmq_store::{BrokerNode, NodeId};
use tonic::transport::Channel;

use crate::convert::{role, topic_to_proto};
use crate::state::BrokerState;

/// Deadline of one heartbeat RPC.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn connect(
    addr: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Option<NameServerClient<Channel>> {
    let endpoint = raftmq_common::tls::endpoint(addr, tls)
        .ok()?
        .connect_timeout(RPC_TIMEOUT)
        .timeout(RPC_TIMEOUT);
    Some(NameServerClient::new(endpoint.connect_lazy()))
}

/// A heartbeat: role, term and leader from `server`, the metrics the loop woke on. openraft
/// publishes them before its full metrics, so those may still be older when the loop wakes: a
/// heartbeat built from them once said "learner" after the node had become a slave, and the
/// NameServers heard the truth only at the next tick (the start-up's 1 s stalls).
fn build(state: &BrokerState, server: &RaftServerMetrics<NodeId, BrokerNode>) -> BrokerHeartbeat {
    let role = role(server.state);
    let me = state.config.me();
    let applied = state.raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
    BrokerHeartbeat {
        cluster: state.config.cluster.clone(),
        group: state.config.group.clone(),
        node_id: state.config.node_id,
        client_addr: me.client_addr.clone(),
        role: role as i32,
        term: server.vote.leader_id().term,
        leader_id: server.current_leader.unwrap_or(0),
        applied_index: applied,
        topics: (role == Role::Master).then(|| TopicTable {
            topics: state.reader.topics().iter().map(topic_to_proto).collect(),
        }),
        members: if role == Role::Master {
            server
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// What a heartbeat says that is worth sending at once when it changes: role, term, leader,
/// topic table, membership.
type Announced = (i32, u64, u64, Option<TopicTable>, Vec<u64>);

fn raise(announced: &mut u64, generation: u64) -> bool {
    let raised = generation > *announced;
    *announced = (*announced).max(generation);
    raised
}

/// Runs until `stop` turns true, then unregisters from every NameServer.
pub async fn run(state: Arc<BrokerState>, mut stop: Stopping) {
    let clients: Vec<(String, NameServerClient<Channel>)> = state
        .config
        .namesrv
        .iter()
        .filter_map(|addr| connect(addr, state.guard.security().client_tls.as_ref()).map(|c| (addr.clone(), c)))
        .collect();
    if clients.is_empty() {
        tracing::warn!("no NameServer configured: clients can only reach this node by its address");
    }
    // Role, term and leader live in the server metrics, which change rarely; the full metrics
    // and the applied index change with every entry, far too often to wake on.
    let mut metrics = state.raft.server_metrics();
    let mut topics = state.reader.subscribe_topics();
    let mut tick = tokio::time::interval(Duration::from_millis(state.config.namesrv_heartbeat_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the NameServers last heard; a change is sent at once, not at the next tick.
    let mut last_sent: Option<Announced> = None;
    let mut failing = vec![false; clients.len()];
    let mut unregistered = false;
    loop {
        let on_timer = tokio::select! {
            _ = tick.tick() => true,
            changed = metrics.changed() => { if changed.is_err() { break } false }
            changed = topics.changed() => { if changed.is_err() { break } false }
            _ = stop.wait() => break,
        };
        // The generation is read before the table, so the table sent is at least that new.
        let generation = *topics.borrow_and_update();
        let server = metrics.borrow_and_update().clone();
        if !announced(&state, &server) {
            // Removed from the group, or joining and not added yet: clients must not be routed
            // here. Unregistered once, then silent until the membership lists this node.
            if !unregistered {
                tracing::info!(
                    node = state.config.node_id,
                    "not in the group's membership: not announced to the NameServers"
                );
                unregister(&state, &clients).await;
                unregistered = true;
            }
            last_sent = None;
            continue;
        }
        unregistered = false;
        let hb = build(&state, &server);
        let signature = Some((hb.role, hb.term, hb.leader_id, hb.topics.clone(), hb.members.clone()));
        if !on_timer && signature == last_sent {
            state.announced_topics.send_if_modified(|g| raise(g, generation));
            continue;
        }
        last_sent = signature;
        let sends = clients.iter().map(|(addr, client)| {
            let mut client = client.clone();
            let hb = proved(&state, "Heartbeat", hb.clone());
            async move { (addr, client.heartbeat(hb).await) }
        });
        for (i, (addr, result)) in futures::future::join_all(sends).await.into_iter().enumerate() {
            match result {
                Ok(_) if failing[i] => {
                    tracing::info!(namesrv = %addr, "NameServer reachable again");
                    failing[i] = false;
                }
                Ok(_) => {}
                Err(status) if !failing[i] => {
                    tracing::warn!(namesrv = %addr, "heartbeat failed: {}", status.message());
                    failing[i] = true;
                }
                Err(_) => {}
            }
        }
        // Every NameServer has answered or failed: an admin call that changed the topics may
        // return (see `ops::topics::announce`).
        state.announced_topics.send_if_modified(|g| raise(g, generation));
    }
    unregister(&state, &clients).await;
}

/// Whether this node is announced: a member (voter or learner) of the membership it has
/// applied, or, before its group's first membership, a node of the first start (not one that
/// joins a running group).
fn announced(state: &BrokerState, server: &RaftServerMetrics<NodeId, BrokerNode>) -> bool {
    let membership = server.membership_config.membership();
    if membership.get_node(&state.config.node_id).is_some() {
        return true;
    }
    !state.config.join && membership.nodes().next().is_none()
}

/// A call to a NameServer, with the cluster secret's proof when the deployment has one.
fn proved<T>(state: &BrokerState, call: &str, message: T) -> tonic::Request<T> {
    let c = &state.config;
    let proof = state.guard.security().cluster_secret.as_ref().map(|secret| {
        raftmq_common::auth::broker_call_parts(call, &c.cluster, &c.group, c.node_id, |parts| {
            secret.sign(raftmq_common::time::now_ms() as u64, parts)
        })
    });
    raftmq_common::auth::with_proof(message, proof)
}

async fn unregister(state: &BrokerState, clients: &[(String, NameServerClient<Channel>)]) {
    let unregister = clients.iter().map(|(_, client)| {
        let mut client = client.clone();
        let req = UnregisterRequest {
            cluster: state.config.cluster.clone(),
            group: state.config.group.clone(),
            node_id: state.config.node_id,
        };
        let req = proved(state, "Unregister", req);
        async move { client.unregister(req).await }
    });
    let _ = tokio::time::timeout(RPC_TIMEOUT, futures::future::join_all(unregister)).await;
}
