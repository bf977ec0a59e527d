//! `raftmq group members|add-node|remove-node|replace-node|transfer-master`: a broker group's
//! membership, changed online.

use std::time::Duration;

use clap::Args;
use raftmq_client::membership::NodeSpec;
use raftmq_client::Admin;
use raftmq_proto as pb;
use serde_json::json;

use crate::table;
use crate::when::parse_duration;

/// A node to add: started with `join = true` in its config.
#[derive(Debug, Args)]
pub(crate) struct NewNodeArgs {
    /// Its node id: one the group has never had.
    #[arg(long)]
    node_id: u64,
    /// Where the group's nodes reach it for Raft (its config's `raft-addr`).
    #[arg(long)]
    raft_addr: String,
    /// Where clients reach it (its config's `client-addr`).
    #[arg(long)]
    client_addr: String,
    /// How long it may take to catch up before this gives up (it stays a learner that goes on
    /// catching up; run the command again to make it a voter).
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    catch_up_timeout: Duration,
}

impl NewNodeArgs {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            node_id: self.node_id,
            raft_addr: self.raft_addr.clone(),
            client_addr: self.client_addr.clone(),
        }
    }
}

pub(crate) async fn members(admin: &Admin, group: &str, as_json: bool) -> anyhow::Result<()> {
    let m = admin.membership(group).await?;
    print_membership(&m, as_json);
    Ok(())
}

pub(crate) async fn add(admin: &Admin, group: &str, node: &NewNodeArgs, as_json: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let m = admin.add_node(group, &node.spec(), node.catch_up_timeout).await?;
    if !as_json {
        println!(
            "node {} joined {group} as a voter (caught up in {:.1} s)",
            node.node_id,
            started.elapsed().as_secs_f64()
        );
    }
    print_membership(&m, as_json);
    Ok(())
}

pub(crate) async fn remove(admin: &Admin, group: &str, node_id: u64, as_json: bool) -> anyhow::Result<()> {
    let m = admin.remove_node(group, node_id).await?;
    if !as_json {
        println!("node {node_id} left {group}; stop its process (its data is of no further use)");
    }
    print_membership(&m, as_json);
    Ok(())
}

pub(crate) async fn replace(
    admin: &Admin,
    group: &str,
    old: u64,
    node: &NewNodeArgs,
    as_json: bool,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let m = admin
        .replace_node(group, old, &node.spec(), node.catch_up_timeout)
        .await?;
    if !as_json {
        println!(
            "node {} replaced node {old} in {group} (caught up in {:.1} s)",
            node.node_id,
            started.elapsed().as_secs_f64()
        );
    }
    print_membership(&m, as_json);
    Ok(())
}

pub(crate) async fn transfer(admin: &Admin, group: &str, to: Option<u64>, as_json: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let master = admin.transfer_master(group, to).await?;
    let took = started.elapsed();
    if as_json {
        println!(
            "{}",
            json!({"group": group, "master_node_id": master.node_id, "master_addr": master.client_addr, "took_ms": took.as_millis() as u64})
        );
    } else {
        println!(
            "node {} ({}) is master of {group} (took {} ms)",
            master.node_id,
            master.client_addr,
            took.as_millis()
        );
    }
    Ok(())
}

fn print_membership(m: &pb::Membership, as_json: bool) {
    if as_json {
        let members: Vec<_> = m
            .members
            .iter()
            .map(|n| {
                json!({"node_id": n.node_id, "voter": n.voter, "master": n.node_id == m.master_node_id,
                       "raft_addr": n.raft_addr, "client_addr": n.client_addr})
            })
            .collect();
        println!(
            "{}",
            json!({"group": m.group, "members": members, "master_node_id": m.master_node_id,
                   "log_index": m.log_index, "changing": m.changing, "retired": m.retired})
        );
        return;
    }
    let rows: Vec<Vec<String>> = m
        .members
        .iter()
        .map(|n| {
            let role = match (n.node_id == m.master_node_id, n.voter) {
                (true, _) => "master",
                (false, true) => "voter",
                (false, false) => "learner",
            };
            vec![
                n.node_id.to_string(),
                role.to_owned(),
                n.raft_addr.clone(),
                n.client_addr.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["NODE", "ROLE", "RAFT_ADDR", "CLIENT_ADDR"], &rows)
    );
    let retired: Vec<String> = m.retired.iter().map(ToString::to_string).collect();
    println!(
        "membership at log index {}{}; retired ids: {}",
        m.log_index,
        if m.changing { " (a change is committing)" } else { "" },
        if retired.is_empty() {
            "none".into()
        } else {
            retired.join(", ")
        }
    );
}
