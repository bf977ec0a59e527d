//! The broker group's membership, changed online on its master: add a node (a learner that
//! catches up, then a voter), remove one, replace a dead one with a new node, and hand the
//! master role to another voter.
//!
//! Every change is a Raft membership entry (openraft's joint consensus when voters change), so
//! every node applies the same membership in log order; config files only seed the first one.
//! Steps that would leave the group without a master or a live majority are refused with
//! `UNSAFE_MEMBERSHIP_CHANGE` before anything is proposed. One change runs at a time.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use raftmq_common::{validate, Error, ErrorCode};
use raftmq_proto as pb;
use raftmq_store::{BrokerNode, NodeId};

use crate::state::BrokerState;

/// How long a node asked about (the new one, or a voter whose liveness counts) may take to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new node may take to catch up when the request does not say.
pub const DEFAULT_CATCH_UP: Duration = Duration::from_secs(600);
/// How long a master transfer may take, in all.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);

/// A node to add: its id and addresses.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub id: NodeId,
    pub node: BrokerNode,
}

impl NewNode {
    /// Checks the fields of a request naming a new node.
    pub fn parse(id: NodeId, raft_addr: &str, client_addr: &str) -> Result<NewNode, Error> {
        if id == 0 {
            return Err(ErrorCode::InvalidArgument.err("field `node_id`: must be at least 1"));
        }
        for (field, addr) in [("raft_addr", raft_addr), ("client_addr", client_addr)] {
            validate::addr(field, addr).map_err(|e| ErrorCode::InvalidArgument.err(format!("field `{field}`: {e}")))?;
        }
        Ok(NewNode {
            id,
            node: BrokerNode {
                raft_addr: raft_addr.to_owned(),
                client_addr: client_addr.to_owned(),
            },
        })
    }
}

/// The membership as this node has applied it.
pub fn current(state: &BrokerState) -> pb::Membership {
    let metrics = state.raft.metrics().borrow().clone();
    let stored = metrics.membership_config.clone();
    let membership = stored.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let members: Vec<pb::GroupMember> = membership
        .nodes()
        .map(|(id, n)| pb::GroupMember {
            node_id: *id,
            raft_addr: n.raft_addr.clone(),
            client_addr: n.client_addr.clone(),
            voter: voters.contains(id),
        })
        .collect();
    let retired = state
        .reader
        .known_nodes()
        .into_keys()
        .filter(|id| membership.get_node(id).is_none())
        .collect();
    pb::Membership {
        cluster: state.config.cluster.clone(),
        group: state.config.group.clone(),
        node_id: state.config.node_id,
        members,
        master_node_id: metrics.current_leader.unwrap_or(0),
        log_index: stored.log_id().map(|l| l.index).unwrap_or(0),
        changing: membership.get_joint_config().len() > 1,
        retired,
    }
}

/// Adds a node: a learner first, a voter once it has caught up (within `catch_up`).
pub async fn add(state: &BrokerState, new: NewNode, catch_up: Duration) -> Result<pb::Membership, Error> {
    let _one = begin(state)?;
    let before = current(state);
    if let Some(m) = member(&before, new.id) {
        if m.voter {
            return Err(ErrorCode::InvalidArgument.err(format!("node {} is a voter of the group already", new.id)));
        }
    }
    check_new(state, &before, &new)?;
    probe_new(state, &before, &new).await?;
    learn(state, &new, catch_up).await?;
    change(state, ChangeMembers::AddVoterIds(BTreeSet::from([new.id]))).await?;
    tracing::info!(node = new.id, "node {} added to the group as a voter", new.id);
    Ok(current(state))
}

/// Removes a node: a learner at once; a voter when the voters left keep a live majority and it
/// is not the master (transfer the master role first).
pub async fn remove(state: &BrokerState, id: NodeId) -> Result<pb::Membership, Error> {
    let _one = begin(state)?;
    let before = current(state);
    let Some(m) = member(&before, id) else {
        return Err(ErrorCode::InvalidArgument.err(format!("node {id} is not a member of the group")));
    };
    if !m.voter {
        change(state, ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await?;
        tracing::info!(node = id, "learner {id} removed from the group");
        return Ok(current(state));
    }
    not_the_master(state, id)?;
    let voters: BTreeSet<NodeId> = voters(&before).filter(|v| *v != id).collect();
    live_majority(state, &before, &voters, &format!("removing node {id}")).await?;
    change(state, ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await?;
    tracing::info!(node = id, "voter {id} removed from the group");
    Ok(current(state))
}

/// Replaces voter `old` (normally a dead one) with a new node: the new one catches up as a
/// learner, then one membership change swaps them.
pub async fn replace(
    state: &BrokerState,
    old: NodeId,
    new: NewNode,
    catch_up: Duration,
) -> Result<pb::Membership, Error> {
    let _one = begin(state)?;
    let before = current(state);
    if !member(&before, old).is_some_and(|m| m.voter) {
        return Err(ErrorCode::InvalidArgument.err(format!("node {old} is not a voter of the group")));
    }
    not_the_master(state, old)?;
    if member(&before, new.id).is_some_and(|m| m.voter) {
        return Err(ErrorCode::InvalidArgument.err(format!("node {} is a voter of the group already", new.id)));
    }
    check_new(state, &before, &new)?;
    probe_new(state, &before, &new).await?;
    let voters: BTreeSet<NodeId> = voters(&before).filter(|v| *v != old).chain([new.id]).collect();
    live_majority(state, &before, &voters, &format!("replacing node {old}")).await?;
    learn(state, &new, catch_up).await?;
    // Not retained as a learner: the old node leaves the membership altogether.
    change(state, ChangeMembers::ReplaceAllVoters(voters)).await?;
    tracing::info!(old, node = new.id, "node {old} replaced by node {}", new.id);
    Ok(current(state))
}

/// Hands the master role to voter `to` (or any up-to-date one) and waits until another node
/// leads. New writes are refused meanwhile (`NOT_MASTER` without a leader: clients back off
/// and find the new master); this node takes writes again if the transfer fails.
pub async fn transfer(state: &BrokerState, to: Option<NodeId>) -> Result<NodeId, Error> {
    let _one = begin(state)?;
    let me = state.config.node_id;
    if to == Some(me) {
        return Ok(me);
    }
    if let Some(to) = to {
        if !member(&current(state), to).is_some_and(|m| m.voter) {
            return Err(ErrorCode::InvalidArgument.err(format!("node {to} is not a voter of the group")));
        }
    }
    use std::sync::atomic::Ordering;
    state.handing_over.store(true, Ordering::Release);
    let result =
        crate::election::transfer_leadership(&state.raft, &state.network, &state.proposer, to, TRANSFER_TIMEOUT).await;
    state.handing_over.store(false, Ordering::Release);
    match result {
        Ok(next) => {
            tracing::info!(node = me, next, "master role handed to node {next}");
            Ok(next)
        }
        Err(why) => Err(ErrorCode::Unavailable.err(format!(
            "the master role was not handed over ({why}); node {me} stays master if it still leads"
        ))),
    }
}

/// The master, not busy with another change: holds the change lock.
fn begin(state: &BrokerState) -> Result<tokio::sync::MutexGuard<'_, ()>, Error> {
    state.require_master()?;
    state.membership_busy.try_lock().map_err(|_| {
        ErrorCode::Unavailable.err("another membership change or master transfer is running; retry when it ends")
    })
}

fn member(m: &pb::Membership, id: NodeId) -> Option<&pb::GroupMember> {
    m.members.iter().find(|n| n.node_id == id)
}

fn voters(m: &pb::Membership) -> impl Iterator<Item = NodeId> + '_ {
    m.members.iter().filter(|n| n.voter).map(|n| n.node_id)
}

fn not_the_master(state: &BrokerState, id: NodeId) -> Result<(), Error> {
    if id == state.config.node_id {
        return Err(ErrorCode::UnsafeMembershipChange.err(format!(
            "node {id} is the master: hand the role over first (raftmq group transfer-master {})",
            state.config.group
        )));
    }
    Ok(())
}

/// A new node's id must be new to the group (or a learner of it at the same addresses: a
/// repeated add after one that timed out).
fn check_new(state: &BrokerState, before: &pb::Membership, new: &NewNode) -> Result<(), Error> {
    if let Some(m) = member(before, new.id) {
        if m.raft_addr != new.node.raft_addr || m.client_addr != new.node.client_addr {
            return Err(ErrorCode::InvalidArgument.err(format!(
                "node {} is a learner of the group at {} (client {}); remove it first to give it other addresses",
                new.id, m.raft_addr, m.client_addr
            )));
        }
        return Ok(());
    }
    if state.reader.known_nodes().contains_key(&new.id) {
        return Err(ErrorCode::InvalidArgument.err(format!(
            "node id {} was a member of the group before; ids are never reused: give the new node an id the group has not had",
            new.id
        )));
    }
    Ok(())
}

/// A call to another node's client port, with the cluster secret's proof when auth is on.
fn peer_call<T>(state: &BrokerState, message: T) -> tonic::Request<T> {
    raftmq_common::auth::with_proof(message, state.guard.peer_call_proof())
}

fn client_of(
    state: &BrokerState,
    addr: &str,
) -> Result<raftmq_proto::broker_client::BrokerClient<tonic::transport::Channel>, Error> {
    let endpoint = raftmq_common::tls::endpoint(addr, state.guard.security().client_tls.as_ref())
        .map_err(|e| ErrorCode::InvalidArgument.err(e))?
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT);
    Ok(raftmq_proto::broker_client::BrokerClient::new(endpoint.connect_lazy()))
}

/// The new node answers on both addresses, is the node it is said to be, of this group, and
/// has no membership of its own (it was started with `join = true`), unless this group's
/// learner already.
async fn probe_new(state: &BrokerState, before: &pb::Membership, new: &NewNode) -> Result<(), Error> {
    let unreachable = |what: String| {
        ErrorCode::UnsafeMembershipChange.err(format!(
            "node {} cannot be reached ({what}): start it (with join = true) and check the addresses",
            new.id
        ))
    };
    let reply = client_of(state, &new.node.client_addr)?
        .get_membership(peer_call(state, pb::GetMembershipRequest {}))
        .await
        .map_err(|e| unreachable(format!("client address {}: {}", new.node.client_addr, e.message())))?
        .into_inner();
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&new.node.raft_addr)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(unreachable(format!("raft address {}: {e}", new.node.raft_addr))),
        Err(_) => return Err(unreachable(format!("raft address {}: no answer", new.node.raft_addr))),
    }
    let (cluster, group) = (&state.config.cluster, &state.config.group);
    if reply.node_id != new.id || &reply.group != group || &reply.cluster != cluster {
        return Err(ErrorCode::InvalidArgument.err(format!(
            "{} is node {} of group {} in cluster {}, not node {} of {group} in {cluster}",
            new.node.client_addr, reply.node_id, reply.group, reply.cluster, new.id
        )));
    }
    let ours = member(before, new.id).is_some();
    if !reply.members.is_empty() && !ours {
        return Err(ErrorCode::InvalidArgument.err(format!(
            "node {} has a membership of its own already (started without join = true, or a member elsewhere): \
             empty its data directory and start it with join = true",
            new.id
        )));
    }
    Ok(())
}

/// Adds `new` as a learner and waits until it has every entry the master had when it was added.
async fn learn(state: &BrokerState, new: &NewNode, catch_up: Duration) -> Result<(), Error> {
    let added = state
        .raft
        .add_learner(new.id, new.node.clone(), false)
        .await
        .map_err(write_error)?;
    let target = added.log_id.index;
    tracing::info!(
        node = new.id,
        target,
        "node {} added as a learner; waiting for it to catch up",
        new.id
    );
    let matched = |m: &openraft::RaftMetrics<NodeId, BrokerNode>| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(&new.id).cloned().flatten())
            .map(|l| l.index)
    };
    let waited = state
        .raft
        .wait(Some(catch_up))
        .metrics(|m| matched(m).is_some_and(|i| i >= target), "the new node catches up")
        .await;
    if waited.is_err() {
        let has = matched(&state.raft.metrics().borrow()).unwrap_or(0);
        return Err(ErrorCode::Unavailable.err(format!(
            "node {} is a learner with {has} of {target} entries after {catch_up:?}; it goes on catching up: \
             run the same command again to make it a voter, or remove it",
            new.id
        )));
    }
    Ok(())
}

/// The voters of the membership to be have a live majority, counting this master and the
/// nodes that answer and follow it; and so does the current one (a joint membership needs both).
async fn live_majority(
    state: &BrokerState,
    before: &pb::Membership,
    after: &BTreeSet<NodeId>,
    what: &str,
) -> Result<(), Error> {
    if after.is_empty() {
        return Err(ErrorCode::UnsafeMembershipChange.err(format!("{what} would leave the group without a voter")));
    }
    let me = state.config.node_id;
    let term = state.raft.metrics().borrow().current_term;
    let mut live = BTreeSet::from([me]);
    let everyone: BTreeSet<NodeId> = voters(before).chain(after.iter().copied()).collect();
    let probes = everyone.iter().filter(|id| **id != me).filter_map(|id| {
        let addr = member(before, *id)?.client_addr.clone();
        Some(async move {
            let status = client_of(state, &addr)
                .ok()?
                .get_node_status(peer_call(state, pb::NodeStatusRequest {}))
                .await
                .ok()?
                .into_inner();
            (status.leader_id == me && status.term == term).then_some(*id)
        })
    });
    live.extend(futures::future::join_all(probes).await.into_iter().flatten());
    // A node being added was probed already.
    live.extend(after.iter().filter(|id| member(before, **id).is_none()));
    for (name, set) in [("left", after), ("now", &voters(before).collect())] {
        let up = set.intersection(&live).count();
        if up < set.len() / 2 + 1 {
            let down: Vec<String> = set.difference(&live).map(ToString::to_string).collect();
            return Err(ErrorCode::UnsafeMembershipChange.err(format!(
                "{what} would leave the group unable to commit: {up} of the {} voters {name} are live \
                 (not answering or not following this master: {}); a majority is needed. Bring nodes back or \
                 replace dead ones first",
                set.len(),
                down.join(", ")
            )));
        }
    }
    Ok(())
}

async fn change(state: &BrokerState, changes: ChangeMembers<NodeId, BrokerNode>) -> Result<(), Error> {
    state
        .raft
        .change_membership(changes, false)
        .await
        .map_err(write_error)?;
    Ok(())
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BrokerNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Error::not_master(f.leader_node.map(|n| n.client_addr))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(p))) => {
            ErrorCode::Unavailable.err(format!(
                "a membership change is still committing ({p}); retry in a moment"
            ))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ErrorCode::InvalidArgument.err(e.to_string())
        }
        RaftError::Fatal(f) => ErrorCode::Unavailable.err(format!("the Raft core stopped: {f}")),
    }
}
