//! The chaos suite's view of the cluster under test: the group as the NameServers route it,
//! its health, and the brokers' test-only link cuts. Every call has a deadline: a paused or
//! cut-off node must never hang the run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use raftmq_client::{Admin, Client};
use raftmq_proto as pb;

use crate::ops::{group_info, node_status};

/// The group as the NameServers route it, once they do (a restarted NameServer is empty until
/// the next broker heartbeats).
pub async fn routed_group(admin: &Admin, group: &str, nodes: usize) -> anyhow::Result<pb::GroupInfo> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(g) = group_info(admin, group)
            .await
            .filter(|g| !g.master_addr.is_empty() && g.nodes.len() >= nodes)
        {
            return Ok(g);
        }
        if Instant::now() >= end {
            bail!("the NameServers did not route group {group} with a master within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn cut(client: &Client, addr: &str, from: Vec<u64>) -> anyhow::Result<()> {
    let mut b = client.broker(addr)?;
    b.inject_fault(deadline(pb::InjectFaultRequest { cut_from: from }))
        .await
        .map_err(|s| anyhow::anyhow!("InjectFault on {addr}: {}", s.message()))?;
    Ok(())
}

/// A request with a deadline: a call to a paused or cut-off node must not wait forever.
pub fn deadline<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(Duration::from_secs(5));
    r
}

/// Runs one step of the wind-down, failing the run (with the step's name) past its deadline.
pub async fn stage<T>(
    what: &str,
    limit: Duration,
    step: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, step).await {
        Ok(r) => r,
        Err(_) => bail!("chaos: {what} did not finish within {limit:?}"),
    }
}

/// Waits until the group has one master all nodes follow and every node applied as much.
pub async fn wait_healthy(client: &Client, nodes: &BTreeMap<u64, String>, deadline: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + deadline;
    loop {
        let mut statuses = Vec::new();
        for addr in nodes.values() {
            statuses.push(node_status(client, addr).await);
        }
        if let Some(all) = statuses.into_iter().collect::<Option<Vec<_>>>() {
            let masters: Vec<_> = all.iter().filter(|s| s.role == pb::Role::Master as i32).collect();
            if let [m] = masters[..] {
                if all
                    .iter()
                    .all(|s| s.leader_id == m.node_id && s.term == m.term && s.applied_index >= m.applied_index)
                {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= end {
            bail!("the group did not heal within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
