//! What the drill and the chaos suite both do to a running cluster: run the cluster script, look
//! a group up in the NameServers, ask a node for its status.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use raftmq_client::{Admin, Client};
use raftmq_proto as pb;

/// Runs the cluster script; a failure carries its stderr.
pub fn script(path: &Path, args: &[&str]) -> anyhow::Result<()> {
    script_output(path, args).map(|_| ())
}

/// Runs the cluster script and returns what it printed; a failure carries its stderr.
pub fn script_output(path: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(path)
        .args(args)
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            path.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A group as the NameServers list it, if they do.
pub async fn group_info(admin: &Admin, group: &str) -> Option<pb::GroupInfo> {
    admin.group(group).await.ok().flatten()
}

/// A node's own view of itself, asked directly (short deadline: a paused node does not answer).
pub async fn node_status(client: &Client, addr: &str) -> Option<pb::NodeStatus> {
    let mut b = client.broker(addr).ok()?;
    let mut req = tonic::Request::new(pb::NodeStatusRequest {});
    req.set_timeout(Duration::from_millis(300));
    b.get_node_status(req).await.ok().map(|r| r.into_inner())
}
