//! One round of a chaos run: put one fault in place, hold it, heal it, and measure how long a
//! connected majority went without acknowledging a send. Faults go through the cluster script
//! (kill, pause, restart, network cuts), the brokers' test-only `InjectFault` RPC (Raft link
//! cuts) and the nodes' data directories ([`super::disk`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raftmq_client::{Admin, Client};

use super::cluster::{cut, routed_group, wait_healthy};
use super::disk::DiskFaults;
use super::Rng;
use crate::ops::script;

/// Longest a connected majority may go without a master that acknowledges a send: a round over
/// it fails the run (issue 17).
const LIVENESS: Duration = Duration::from_secs(5);

/// The liveness check: a send started after a moment must be acknowledged within [`LIVENESS`].
pub struct Liveness {
    /// When the newest acknowledged send had started.
    pub last_ack: Arc<Mutex<Instant>>,
    pub seed: u64,
}

impl Liveness {
    /// Waits for an acknowledged send started at or after `since`; returns how long after
    /// `since` it came, or fails the run.
    pub async fn wait(&self, since: Instant, round: u32, what: &str) -> anyhow::Result<Duration> {
        loop {
            if *self.last_ack.lock().unwrap() >= since {
                return Ok(since.elapsed());
            }
            if since.elapsed() > LIVENESS {
                bail!(
                    "liveness: round {round}: a connected majority acknowledged no send for {LIVENESS:?} ({what}; seed {})",
                    self.seed
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Keeps a fault in place until `fault_time` after it began.
    async fn hold(&self, fault_at: Instant, fault_time: Duration) {
        tokio::time::sleep(fault_time.saturating_sub(fault_at.elapsed())).await;
    }
}

/// What every round works with.
pub struct Cluster<'a> {
    pub script: &'a Path,
    pub group: &'a str,
    pub client: &'a Client,
    pub admin: &'a Admin,
    /// Every node of the group under test: node id → client address.
    pub nodes: &'a BTreeMap<u64, String>,
    pub fault_time: Duration,
    pub live: &'a Liveness,
}

impl Cluster<'_> {
    fn name(&self, id: u64) -> String {
        format!("{}-{id}", self.group)
    }

    fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        script(self.script, args)
    }
}

/// The state one round leaves for the next: a slave kept dead across rounds, and the rounds it
/// has left.
#[derive(Default)]
pub struct Held(pub Option<(u64, u32)>);

/// A node the round replaced: (the old id, the new id, the new node's client address). The run
/// takes it into its node map before the next round.
pub type Replaced = Option<(u64, u64, String)>;

/// Runs round `r` with `fault`; returns the time to service within the fault (from when it is
/// in place), when a majority stayed connected.
pub async fn run(
    c: &Cluster<'_>,
    r: u32,
    fault: &str,
    rng: &mut Rng,
    disk: &mut DiskFaults,
    held: &mut Held,
    replaced: &mut Replaced,
) -> anyhow::Result<Option<Duration>> {
    let held_node = held.0.map(|(n, _)| n);
    let alive: Vec<u64> = c.nodes.keys().copied().filter(|n| Some(*n) != held_node).collect();
    let info = routed_group(c.admin, c.group, alive.len()).await?;
    let master = info.master_node_id;
    let slaves: Vec<u64> = alive.iter().copied().filter(|n| *n != master).collect();
    let slave = slaves[(rng.next() % slaves.len() as u64) as usize];
    let majority = c.nodes.len() / 2 + 1;
    // Whether the nodes left connected by a fault that takes `out` away are a majority.
    let connected = |out: usize| alive.len().saturating_sub(out) >= majority;
    let (live, name) = (c.live, |id: u64| c.name(id));
    eprintln!(
        "chaos: round {r}: {fault} (master {master}{})",
        held_node.map(|n| format!(", node {n} held down")).unwrap_or_default()
    );
    let fault_at = Instant::now();
    let mut within: Option<Duration> = None;
    match fault {
        "kill-master" | "pause-master" | "kill-slave" => {
            let (down, up, victim) = match fault {
                "kill-master" => ("kill", "start", master),
                "pause-master" => ("pause", "resume", master),
                _ => ("kill", "start", slave),
            };
            c.script(&[down, &name(victim)])?;
            if connected(1) {
                within = Some(live.wait(Instant::now(), r, fault).await?);
            }
            live.hold(fault_at, c.fault_time).await;
            c.script(&[up, &name(victim)])?;
        }
        "kill-all" => {
            for id in &alive {
                c.script(&["kill", &name(*id)])?;
            }
            for id in &alive {
                c.script(&["start", &name(*id)])?;
            }
        }
        "power-loss" => {
            // Small disks (disk-full) are tmpfs mounts: their data goes back to the lazy
            // filesystem first, so that it is on it when the power goes.
            disk.restore()?;
            let out = crate::ops::script_output(c.script, &["power-off"])?;
            if let Some(line) = out.lines().find(|l| l.contains("power off:")) {
                eprintln!("chaos:   {}", line.trim_start_matches("raftmq-lazyfs: "));
            }
            for id in &alive {
                c.script(&["start", &name(*id)])?;
            }
        }
        "restart-namesrv" => {
            c.script(&["stop", "namesrv-1"])?;
            // Clients keep their routes; the brokers keep serving.
            within = Some(live.wait(Instant::now(), r, fault).await?);
            live.hold(fault_at, c.fault_time).await;
            c.script(&["start", "namesrv-1"])?;
        }
        "partition-master" | "partition-slave" => {
            let victim = if fault == "partition-master" { master } else { slave };
            let others: Vec<u64> = alive.iter().copied().filter(|n| *n != victim).collect();
            cut(c.client, &c.nodes[&victim], others.clone()).await?;
            for o in &others {
                cut(c.client, &c.nodes[o], vec![victim]).await?;
            }
            if connected(1) {
                within = Some(live.wait(Instant::now(), r, fault).await?);
            }
            live.hold(fault_at, c.fault_time).await;
            for id in &alive {
                cut(c.client, &c.nodes[id], vec![]).await?;
            }
        }
        "net-isolate-master" | "net-isolate-slave" => {
            let victim = if fault == "net-isolate-master" { master } else { slave };
            c.script(&["net", "isolate", &name(victim)])?;
            if connected(1) {
                within = Some(live.wait(Instant::now(), r, fault).await?);
            }
            live.hold(fault_at, c.fault_time).await;
            c.script(&["net", "heal"])?;
        }
        "net-split" => {
            // The master and the clients on one side; the slaves and the NameServer on the
            // other. The clients reach only a master that cannot commit: nothing it answers
            // may be lost, and service is checked once the split heals.
            let mut far: Vec<String> = slaves.iter().map(|n| name(*n)).collect();
            far.push("namesrv-1".into());
            for other in &far {
                c.script(&["net", "cut", &name(master), other])?;
                c.script(&["net", "cut", "client", other])?;
            }
            live.hold(fault_at, c.fault_time).await;
            c.script(&["net", "heal"])?;
        }
        "net-oneway-out" | "net-oneway-in" => {
            for s in &slaves {
                let (from, to) = if fault == "net-oneway-out" {
                    (name(master), name(*s))
                } else {
                    (name(*s), name(master))
                };
                c.script(&["net", "cut", &from, &to, "--one-way"])?;
            }
            if connected(1) {
                within = Some(live.wait(Instant::now(), r, fault).await?);
            }
            live.hold(fault_at, c.fault_time).await;
            c.script(&["net", "heal"])?;
        }
        "disk-full" | "torn-tail" => {
            let victim = *c
                .nodes
                .keys()
                .nth((rng.next() % c.nodes.len() as u64) as usize)
                .expect("a node");
            let what = if fault == "disk-full" {
                disk.disk_full(&name(victim), c.fault_time).await?
            } else {
                disk.torn_tail(&name(victim), rng.next())?
            };
            eprintln!("chaos:   {what}");
        }
        "hold-slave" => {
            let rounds = 2 + (rng.next() % 3) as u32;
            c.script(&["kill", &name(slave)])?;
            within = Some(live.wait(Instant::now(), r, fault).await?);
            eprintln!("chaos:   node {slave} stays down for {rounds} rounds");
            held.0 = Some((slave, rounds + 1));
        }
        "master-cycle" => {
            // Kill and start the master three times; each time the group must serve again.
            let mut worst = Duration::ZERO;
            for _ in 0..3 {
                let g = routed_group(c.admin, c.group, alive.len()).await?;
                c.script(&["kill", &name(g.master_node_id)])?;
                let at = Instant::now();
                c.script(&["start", &name(g.master_node_id)])?;
                worst = worst.max(live.wait(at, r, fault).await?);
            }
            within = Some(worst);
        }
        "transfer-master" => {
            // A planned move of the master role: to the drawn slave, or (every other draw) to
            // whichever voter the master picks. A slave still catching up from the last fault
            // may make one attempt give up; three in a row fail the run.
            let to = rng.next().is_multiple_of(2).then_some(slave);
            let at = Instant::now();
            let mut attempt = 0;
            let moved = loop {
                attempt += 1;
                match c.admin.transfer_master(c.group, to).await {
                    Ok(m) => break m,
                    Err(e) if attempt < 3 => {
                        eprintln!("chaos:   transfer attempt {attempt} gave up: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => bail!(
                        "round {r}: the master role was not handed over: {e} (seed {})",
                        live.seed
                    ),
                }
            };
            eprintln!(
                "chaos:   master role handed from node {master} to node {}",
                moved.node_id
            );
            within = Some(live.wait(at, r, fault).await?);
        }
        "replace-node" => {
            // A slave loses its disk: killed, its data deleted, and a new node with a new id
            // (ids are never reused) replaces it through `raftmq group replace-node`.
            c.script(&["kill", &name(slave)])?;
            let at = Instant::now();
            within = Some(live.wait(at, r, fault).await?);
            disk.wipe(&name(slave))?;
            let new_id = c.nodes.keys().max().copied().unwrap_or(0).max(slave) + 1;
            let (raft_addr, client_addr) = start_joining(c, disk.run(), slave, new_id)?;
            let spec = raftmq_client::membership::NodeSpec {
                node_id: new_id,
                raft_addr,
                client_addr: client_addr.clone(),
            };
            let m = c
                .admin
                .replace_node(c.group, slave, &spec, Duration::from_secs(120))
                .await
                .with_context(|| {
                    format!(
                        "round {r}: replacing node {slave} by node {new_id} (seed {})",
                        live.seed
                    )
                })?;
            eprintln!(
                "chaos:   node {slave} lost its disk; node {new_id} replaced it (voters {:?})",
                m.members
                    .iter()
                    .filter(|n| n.voter)
                    .map(|n| n.node_id)
                    .collect::<Vec<_>>()
            );
            *replaced = Some((slave, new_id, client_addr));
        }
        "rolling-restart" => {
            // Clean stops, slaves first: the master hands leadership over when its turn comes.
            let mut order = slaves.clone();
            order.push(master);
            let mut worst = Duration::ZERO;
            let up: BTreeMap<u64, String> = c
                .nodes
                .iter()
                .filter(|(n, _)| alive.contains(n))
                .map(|(n, a)| (*n, a.clone()))
                .collect();
            for id in order {
                c.script(&["stop", &name(id)])?;
                worst = worst.max(live.wait(Instant::now(), r, fault).await?);
                c.script(&["start", &name(id)])?;
                wait_healthy(c.client, &up, Duration::from_secs(30))
                    .await
                    .with_context(|| format!("round {r}: node {id} after its restart (seed {})", live.seed))?;
            }
            within = Some(worst);
        }
        other => bail!("unknown fault {other}"),
    }
    // The node held down comes back when its rounds are over.
    if let Some((n, left)) = held.0 {
        if left <= 1 {
            c.script(&["start", &name(n)])?;
            eprintln!("chaos:   node {n} starts again");
            held.0 = None;
        } else {
            held.0 = Some((n, left - 1));
        }
    }
    Ok(within)
}

/// Starts node `new_id` of the group with `join = true` (`cluster.sh add`), configured as node
/// `like` is but for its id and its own free ports; returns its raft and client addresses as the
/// cluster runs it (rewritten to its namespace's address in a `--netns` cluster).
fn start_joining(c: &Cluster<'_>, run: &Path, like: u64, new_id: u64) -> anyhow::Result<(String, String)> {
    let config_dir = std::fs::read_to_string(run.join("config-dir")).context("the cluster's config-dir")?;
    let template = std::fs::read_to_string(Path::new(config_dir.trim()).join(format!("{}.toml", c.name(like))))
        .with_context(|| format!("node {like}'s config"))?;
    // Its top-level keys but node-id, join and metrics-addr; then its own member entry.
    let mut text = String::new();
    for line in template.lines() {
        if line.trim_start().starts_with("[[members]]") {
            break;
        }
        let key = line.split('=').next().unwrap_or("").trim();
        if !matches!(key, "node-id" | "join" | "metrics-addr" | "data-dir") {
            text.push_str(line);
            text.push('\n');
        }
    }
    let port = || -> anyhow::Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    let (raft, client) = (port()?, port()?);
    text.push_str(&format!(
        "node-id = {new_id}\njoin = true\nmetrics-addr = \"off\"\n\n[[members]]\nnode-id = {new_id}\n\
         raft-addr = \"127.0.0.1:{raft}\"\nclient-addr = \"127.0.0.1:{client}\"\n"
    ));
    let file = std::env::temp_dir().join(format!("raftmq-chaos-{}-{}", std::process::id(), new_id));
    std::fs::create_dir_all(&file)?;
    let file = file.join(format!("{}.toml", c.name(new_id)));
    std::fs::write(&file, text)?;
    let out = crate::ops::script_output(c.script, &["add", file.to_str().context("utf-8 path")?])?;
    let path = out
        .lines()
        .find_map(|l| l.split_once(": its config is ").map(|(_, p)| p.trim().to_owned()))
        .with_context(|| format!("cluster.sh add said: {out}"))?;
    let run = std::fs::read_to_string(&path)?;
    let addr = |key: &str| -> anyhow::Result<String> {
        run.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().trim_start_matches('=').trim().trim_matches('"').to_owned())
            .with_context(|| format!("{key} in {path}"))
    };
    Ok((addr("raft-addr")?, addr("client-addr")?))
}
