//! `raftmq cluster`: every node as the NameServers list it, and a wait for a formed cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use raftmq_client::Admin;
use raftmq_proto as pb;
use serde_json::json;

use super::role_name;
use crate::table;

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Every node: group, id, role, term, address, applied index, lag behind its master.
    List,
    /// Wait until the NameServer lists every expected group with a master and all its nodes
    /// following it (a node that has not yet joined, or is standing, does not count).
    Wait {
        /// Expected groups and node counts, e.g. broker-a:3,broker-b:3.
        #[arg(long, value_delimiter = ',', required = true)]
        expect: Vec<String>,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

/// The nodes of a group that its master leads: the master, and the slaves that report it as
/// their leader in its term. 0 without a master.
fn following_master(g: &pb::GroupInfo) -> usize {
    if g.master_addr.is_empty() {
        return 0;
    }
    g.nodes
        .iter()
        .filter(|n| {
            n.node_id == g.master_node_id
                || (n.reported_role == pb::Role::Slave as i32 && n.leader_id == g.master_node_id && n.term == g.term)
        })
        .count()
}

/// What a NameServer lists of a group, for a wait that timed out: each node's role, term and
/// the master it follows, so that the message says which node is missing or astray.
fn seen_nodes(g: &pb::GroupInfo) -> String {
    let nodes: Vec<String> = g
        .nodes
        .iter()
        .map(|n| {
            format!(
                "node {} {} term {} following {} ({}ms ago)",
                n.node_id,
                role_name(n.reported_role),
                n.term,
                n.leader_id,
                n.last_heartbeat_ms_ago
            )
        })
        .collect();
    format!("master {} term {}: {}", g.master_node_id, g.term, nodes.join(", "))
}

pub(crate) async fn run(admin: &Admin, command: ClusterCommand, as_json: bool) -> anyhow::Result<()> {
    match command {
        ClusterCommand::List => {
            let info = admin.cluster().await?;
            let mut rows = Vec::new();
            let mut items = Vec::new();
            for g in &info.groups {
                let master_applied = g
                    .nodes
                    .iter()
                    .find(|n| n.node_id == g.master_node_id)
                    .map(|n| n.applied_index);
                for n in &g.nodes {
                    let lag = master_applied.map(|m| m.saturating_sub(n.applied_index));
                    rows.push(vec![
                        g.cluster.clone(),
                        g.group.clone(),
                        n.node_id.to_string(),
                        role_name(n.role).into(),
                        n.term.to_string(),
                        n.addr.clone(),
                        n.applied_index.to_string(),
                        lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                        format!("{}ms", n.last_heartbeat_ms_ago),
                    ]);
                    items.push(json!({"cluster": g.cluster, "group": g.group, "node_id": n.node_id, "role": role_name(n.role), "term": n.term, "addr": n.addr, "applied_index": n.applied_index, "lag": lag, "last_heartbeat_ms_ago": n.last_heartbeat_ms_ago}));
                }
            }
            if as_json {
                println!("{}", json!(items));
            } else {
                print!(
                    "{}",
                    table::render(
                        &[
                            "CLUSTER",
                            "GROUP",
                            "NODE",
                            "ROLE",
                            "TERM",
                            "ADDRESS",
                            "APPLIED",
                            "LAG",
                            "HEARTBEAT"
                        ],
                        &rows
                    )
                );
            }
        }
        ClusterCommand::Wait { expect, timeout_secs } => {
            let mut wanted = BTreeMap::new();
            for e in &expect {
                let (group, n) = e
                    .split_once(':')
                    .ok_or_else(|| anyhow!("--expect {e:?}: say GROUP:NODES"))?;
                wanted.insert(
                    group.to_owned(),
                    n.parse::<usize>()
                        .with_context(|| format!("--expect {e:?}: not a node count"))?,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(timeout_secs);
            loop {
                let missing: Vec<String> = match admin.cluster().await {
                    Ok(info) => wanted
                        .iter()
                        .filter(|(group, n)| {
                            !info
                                .groups
                                .iter()
                                .any(|g| &&g.group == group && following_master(g) >= **n)
                        })
                        .map(|(group, n)| {
                            let seen = info
                                .groups
                                .iter()
                                .find(|g| &g.group == group)
                                .map(seen_nodes)
                                .unwrap_or_else(|| "not listed".into());
                            format!("{group} (a master and {n} nodes following it; listed: {seen})")
                        })
                        .collect(),
                    Err(e) => vec![format!("an answer from the NameServer ({e})")],
                };
                if missing.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "UNAVAILABLE: after {timeout_secs} s still waiting for {}",
                        missing.join(", ")
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}
