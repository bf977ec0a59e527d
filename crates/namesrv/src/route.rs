//! The route table: which broker groups hold which topics, and who is master in each group.
//!
//! It is built only from broker heartbeats and kept only in memory; a restarted NameServer is
//! refilled within one heartbeat interval. It must never decide anything that needs agreement
//! between NameServers: each one reads the same heartbeats and reaches the same answer.
//!
//! Master rule: of the live nodes claiming master, the one with the highest term is listed as
//! master, and only if no live node of the group follows a leader of a higher term (a paused old
//! master that wakes up still claiming master is listed as a slave until it learns the new term).
//!
//! The topic table of a group comes from its master's heartbeats; a topic missing from the
//! master's table has been deleted. Every mutation returns the topics whose route changed, so
//! route watchers can be told.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use raftmq_proto::{
    BrokerHeartbeat, ClusterInfo, GroupData, GroupInfo, NodeAddr, NodeInfo, Permission, QueueData, Role, TopicConfig,
    TopicRoute,
};

#[derive(Debug, Clone)]
struct NodeState {
    addr: String,
    reported_role: Role,
    term: u64,
    leader_id: u64,
    applied_index: u64,
    last_seen: Instant,
}

#[derive(Debug, Clone, Default)]
struct GroupState {
    cluster: String,
    nodes: BTreeMap<u64, NodeState>,
    topics: BTreeMap<String, TopicConfig>,
    /// The node ids of the group's membership, as its listed master last reported them
    /// (`None` from brokers that do not report it): other nodes are not routed.
    members: Option<BTreeSet<u64>>,
}

/// What a route of one group looks like from outside; a change of it changes topic routes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupView {
    master: Option<(u64, String, u64)>,
    slaves: Vec<(u64, String)>,
    topics: BTreeMap<String, TopicConfig>,
    cluster: String,
}

impl GroupState {
    /// The node listed as master: `(node id, term)`.
    fn master(&self) -> Option<(u64, u64)> {
        // Terms that prove a master exists: a master's own, or a follower's that knows its leader.
        // A candidate's term does not count: a partitioned node bumping its term while the real
        // master still serves must not hide that master.
        let max_term = self
            .nodes
            .values()
            .filter(|n| n.reported_role == Role::Master || n.leader_id != 0)
            .map(|n| n.term)
            .max()?;
        self.nodes
            .iter()
            .filter(|(_, n)| n.reported_role == Role::Master && n.term == max_term)
            // Two masters in one term cannot happen in Raft; if heartbeats ever say so, prefer
            // the one that has applied more, then the lower id, so every NameServer agrees.
            .max_by_key(|(id, n)| (n.applied_index, std::cmp::Reverse(**id)))
            .map(|(id, n)| (*id, n.term))
    }

    fn view(&self) -> GroupView {
        let master = self.master();
        GroupView {
            master: master.map(|(id, term)| (id, self.nodes[&id].addr.clone(), term)),
            slaves: self
                .nodes
                .iter()
                .filter(|(id, _)| Some(**id) != master.map(|m| m.0))
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            topics: self.topics.clone(),
            cluster: self.cluster.clone(),
        }
    }

    fn listed_role(&self, node_id: u64, master: Option<(u64, u64)>) -> Role {
        if master.map(|m| m.0) == Some(node_id) {
            Role::Master
        } else if self.nodes[&node_id].reported_role == Role::Learner {
            Role::Learner
        } else {
            Role::Slave
        }
    }

    fn group_data(&self, name: &str) -> GroupData {
        let master = self.master();
        GroupData {
            cluster: self.cluster.clone(),
            group: name.to_owned(),
            master_addr: master.map(|(id, _)| self.nodes[&id].addr.clone()).unwrap_or_default(),
            master_node_id: master.map(|m| m.0).unwrap_or_default(),
            term: master.map(|m| m.1).unwrap_or_default(),
            slaves: self
                .nodes
                .iter()
                .filter(|(id, _)| Some(**id) != master.map(|m| m.0))
                .map(|(id, n)| NodeAddr {
                    node_id: *id,
                    addr: n.addr.clone(),
                })
                .collect(),
        }
    }
}

/// The NameServer's whole state. Not thread-safe by itself; the service wraps it in a mutex and
/// every operation is short.
#[derive(Debug, Default)]
pub struct RouteTable {
    groups: BTreeMap<String, GroupState>,
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers or refreshes a node. Returns the topics whose route changed.
    ///
    /// The caller has validated names and addresses.
    pub fn heartbeat(&mut self, hb: &BrokerHeartbeat, now: Instant) -> BTreeSet<String> {
        let before = self.groups.get(&hb.group).map(GroupState::view);
        let group = self.groups.entry(hb.group.clone()).or_default();
        group.cluster = hb.cluster.clone();
        group.nodes.insert(
            hb.node_id,
            NodeState {
                addr: hb.client_addr.clone(),
                reported_role: hb.role(),
                term: hb.term,
                leader_id: hb.leader_id,
                applied_index: hb.applied_index,
                last_seen: now,
            },
        );
        // Only the listed master's topic table counts: a stale master's copy may miss a topic
        // created after it lost its leadership.
        let from_master = group.master().map(|m| m.0) == Some(hb.node_id);
        if let Some(table) = &hb.topics {
            if from_master {
                group.topics = table.topics.iter().map(|t| (t.name.clone(), t.clone())).collect();
            }
        }
        // The master's membership decides who is routed: a node removed from the group may go
        // on heartbeating (it need not learn of its removal).
        if from_master && !hb.members.is_empty() {
            let members: BTreeSet<u64> = hb.members.iter().copied().collect();
            group.nodes.retain(|id, _| members.contains(id));
            group.members = Some(members);
        } else if group.members.as_ref().is_some_and(|m| !m.contains(&hb.node_id)) {
            group.nodes.remove(&hb.node_id);
        }
        let after = group.view();
        changed_topics(before.as_ref(), Some(&after))
    }

    /// Removes a node that is shutting down. Returns the topics whose route changed.
    pub fn unregister(&mut self, group: &str, node_id: u64) -> BTreeSet<String> {
        let Some(state) = self.groups.get_mut(group) else {
            return BTreeSet::new();
        };
        let before = state.view();
        if state.nodes.remove(&node_id).is_none() {
            return BTreeSet::new();
        }
        let after = if state.nodes.is_empty() {
            self.groups.remove(group);
            None
        } else {
            Some(state.view())
        };
        changed_topics(Some(&before), after.as_ref())
    }

    /// Drops every node not heard from within `expiry`. Returns the topics whose route changed.
    pub fn expire(&mut self, now: Instant, expiry: Duration) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        let mut empty = Vec::new();
        for (name, state) in self.groups.iter_mut() {
            let before = state.view();
            state
                .nodes
                .retain(|_, n| now.saturating_duration_since(n.last_seen) <= expiry);
            if state.nodes.is_empty() {
                empty.push(name.clone());
                changed.extend(changed_topics(Some(&before), None));
            } else {
                changed.extend(changed_topics(Some(&before), Some(&state.view())));
            }
        }
        for name in empty {
            self.groups.remove(&name);
        }
        changed
    }

    /// The route of a topic, `None` when no live group holds it.
    pub fn route(&self, topic: &str) -> Option<TopicRoute> {
        let mut route = TopicRoute {
            topic: topic.to_owned(),
            ..Default::default()
        };
        for (name, state) in &self.groups {
            if let Some(t) = state.topics.get(topic) {
                route.queues.push(QueueData {
                    group: name.clone(),
                    write_queues: t.write_queues,
                    read_queues: t.read_queues,
                    permission: t.permission,
                });
                route.groups.push(state.group_data(name));
            }
        }
        (!route.queues.is_empty()).then_some(route)
    }

    /// Every topic some live group holds, sorted.
    /// How many broker nodes are registered.
    pub fn node_count(&self) -> usize {
        self.groups.values().map(|g| g.nodes.len()).sum()
    }

    pub fn topics(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.groups.values().flat_map(|g| g.topics.keys()).collect();
        set.into_iter().cloned().collect()
    }

    /// Every group with its nodes, sorted by group and node id.
    pub fn cluster_info(&self, now: Instant) -> ClusterInfo {
        let groups = self
            .groups
            .iter()
            .map(|(name, state)| {
                let master = state.master();
                let data = state.group_data(name);
                GroupInfo {
                    cluster: state.cluster.clone(),
                    group: name.clone(),
                    master_addr: data.master_addr,
                    master_node_id: data.master_node_id,
                    term: state.nodes.values().map(|n| n.term).max().unwrap_or(0),
                    nodes: state
                        .nodes
                        .iter()
                        .map(|(id, n)| NodeInfo {
                            node_id: *id,
                            addr: n.addr.clone(),
                            role: state.listed_role(*id, master) as i32,
                            reported_role: n.reported_role as i32,
                            term: n.term,
                            leader_id: n.leader_id,
                            applied_index: n.applied_index,
                            last_heartbeat_ms_ago: now.saturating_duration_since(n.last_seen).as_millis() as u64,
                        })
                        .collect(),
                    topics: state.topics.values().cloned().collect(),
                }
            })
            .collect();
        ClusterInfo { groups }
    }
}

/// The topics whose route differs between two views of one group.
fn changed_topics(before: Option<&GroupView>, after: Option<&GroupView>) -> BTreeSet<String> {
    let topics = |v: Option<&GroupView>| -> BTreeSet<String> {
        v.map(|v| v.topics.keys().cloned().collect()).unwrap_or_default()
    };
    match (before, after) {
        (Some(b), Some(a)) if b == a => BTreeSet::new(),
        (Some(b), Some(a)) if b.master == a.master && b.slaves == a.slaves && b.cluster == a.cluster => {
            // Only the topic table changed: just the topics added, removed or altered.
            let mut changed: BTreeSet<String> = BTreeSet::new();
            for (name, t) in &b.topics {
                if a.topics.get(name) != Some(t) {
                    changed.insert(name.clone());
                }
            }
            for (name, t) in &a.topics {
                if b.topics.get(name) != Some(t) {
                    changed.insert(name.clone());
                }
            }
            changed
        }
        _ => topics(before).union(&topics(after)).cloned().collect(),
    }
}

/// Whether a permission allows writes.
pub fn writable(permission: i32) -> bool {
    permission & Permission::Write as i32 != 0
}

/// Whether a permission allows reads.
pub fn readable(permission: i32) -> bool {
    permission & Permission::Read as i32 != 0
}

#[cfg(test)]
mod tests;
