//! `raftmq chaos`: the fault-injection suite. Producers send unique, self-describing messages
//! and a consumer group reads continuously while faults chosen at random from a printed seed hit
//! one broker group; then the checker proves that no acknowledged message was lost.
//!
//! Faults go through the cluster script (kill, pause, restart), the brokers' test-only
//! `InjectFault` RPC (Raft link cuts; nodes must run with `fault-injection = true`), and the
//! nodes' data directories (a full disk, a torn WAL tail: [`crate::chaos_disk`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use raftmq_client::{
    Admin, Client, ClientConfig, ConsumeFrom, ConsumeResult, Message, MessageQueue, Producer, PushConsumer,
};
use raftmq_common::ErrorCode;
use raftmq_proto as pb;
use serde_json::json;

use crate::ops::{group_info, node_status, script};

#[derive(Debug, Args)]
pub struct ChaosArgs {
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Seed of the fault choices; printed, so a failing run can be replayed.
    #[arg(long)]
    seed: Option<u64>,
    /// The broker group under test (nodes named GROUP-NODEID by the cluster script).
    #[arg(long, default_value = "broker-a")]
    group: String,
    #[arg(long, default_value = "ChaosTopic")]
    topic: String,
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Faults to draw from (default: all). Names: kill-master, pause-master, kill-slave,
    /// kill-all, restart-namesrv, partition-master, partition-slave, disk-full (needs root to
    /// mount a tmpfs), torn-tail (needs brokers with fault-injection = true), hold-slave (a
    /// slave stays dead for the next 2-4 rounds while other faults hit), master-cycle (the
    /// master killed and started again three times in a row), rolling-restart (every node
    /// stopped cleanly and started again in turn, the master last).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// How long a fault lasts before it is healed, ms.
    #[arg(long, default_value_t = 1500)]
    fault_ms: u64,
    #[arg(long, default_value = "scripts/cluster.sh")]
    script: PathBuf,
    /// The cluster runs with `scripts/cluster.sh up --netns` (a network namespace per node): adds
    /// the real partitions to the faults drawn by default. Names: net-isolate-master,
    /// net-isolate-slave (a node cut from every node and every client), net-split (the master
    /// and the clients on one side, both slaves and the NameServer on the other), net-oneway-out
    /// (the master's traffic to the slaves dropped, theirs to it delivered), net-oneway-in (the
    /// slaves' traffic to the master dropped, its to them delivered).
    #[arg(long)]
    netns: bool,
    /// The cluster runs with `scripts/cluster.sh up --lazyfs` (all data on raftmq-lazyfs): adds
    /// power-loss (every broker killed at once, every write no fsync covered dropped, all
    /// started again) to the faults drawn by default.
    #[arg(long)]
    lazyfs: bool,
}

/// Longest a connected majority may go without a master that acknowledges a send: a round over
/// it fails the run (issue 17).
const LIVENESS: Duration = Duration::from_secs(5);

const ALL_FAULTS: [&str; 12] = [
    "kill-master",
    "pause-master",
    "kill-slave",
    "kill-all",
    "restart-namesrv",
    "partition-master",
    "partition-slave",
    "disk-full",
    "torn-tail",
    "hold-slave",
    "master-cycle",
    "rolling-restart",
];

/// Partitions in network namespaces (`--netns` clusters only).
const NET_FAULTS: [&str; 5] = [
    "net-isolate-master",
    "net-isolate-slave",
    "net-split",
    "net-oneway-out",
    "net-oneway-in",
];

/// xorshift64*: small, seedable, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
}

/// A message the consumer group got: queue, offset, body.
type Received = (MessageQueue, u64, Vec<u8>);

/// What happened to one send.
#[derive(Debug, Clone)]
enum Outcome {
    Acked(MessageQueue, u64),
    /// Reported as certainly not stored, with the error.
    Failed(String),
    /// Timed out or cut off mid-call, with the error.
    Unknown(String),
}

/// The group as the NameServers route it, once they do (a restarted NameServer is empty until
/// the next broker heartbeats).
async fn routed_group(admin: &Admin, group: &str, nodes: usize) -> anyhow::Result<pb::GroupInfo> {
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

async fn cut(client: &Client, addr: &str, from: Vec<u64>) -> anyhow::Result<()> {
    let mut b = client.broker(addr)?;
    b.inject_fault(deadline(pb::InjectFaultRequest { cut_from: from }))
        .await
        .map_err(|s| anyhow::anyhow!("InjectFault on {addr}: {}", s.message()))?;
    Ok(())
}

/// A request with a deadline: a call to a paused or cut-off node must not wait forever.
fn deadline<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(Duration::from_secs(5));
    r
}

/// Runs one step of the wind-down, failing the run (with the step's name) past its deadline.
async fn stage<T>(
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
async fn wait_healthy(client: &Client, nodes: &BTreeMap<u64, String>, deadline: Duration) -> anyhow::Result<()> {
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

/// The liveness check: a send started after a moment must be acknowledged within [`LIVENESS`].
struct Liveness {
    /// When the newest acknowledged send had started.
    last_ack: Arc<Mutex<Instant>>,
    seed: u64,
}

impl Liveness {
    /// Waits for an acknowledged send started at or after `since`; returns how long after
    /// `since` it came, or fails the run.
    async fn wait(&self, since: Instant, round: u32, what: &str) -> anyhow::Result<Duration> {
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

pub async fn run(namesrv: &[String], args: ChaosArgs, as_json: bool) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    });
    eprintln!("chaos: seed {seed} (replay with --seed {seed})");
    let known: Vec<&str> = ALL_FAULTS
        .iter()
        .chain(if args.netns { &NET_FAULTS[..] } else { &[] })
        .chain(if args.lazyfs { &["power-loss"][..] } else { &[] })
        .copied()
        .collect();
    let faults: Vec<String> = if args.faults.is_empty() {
        known.iter().map(|s| s.to_string()).collect()
    } else {
        args.faults.clone()
    };
    if let Some(bad) = faults.iter().find(|f| !known.contains(&f.as_str())) {
        if bad == "power-loss" {
            bail!("fault power-loss needs a cluster on raftmq-lazyfs: scripts/chaos.sh --lazyfs");
        }
        if NET_FAULTS.contains(&bad.as_str()) {
            bail!("fault {bad} needs a cluster in network namespaces: scripts/chaos.sh --netns");
        }
        bail!("unknown fault {bad:?}; known: {}", known.join(", "));
    }
    let mut rng = Rng(seed);
    let client = Client::new(ClientConfig::new(namesrv.to_vec()))?;
    let admin = Admin::new(client.clone());
    let info = routed_group(&admin, &args.group, 3).await?;
    let end = Instant::now() + Duration::from_secs(30);
    let groups = std::slice::from_ref(&args.group);
    while let Err(e) = admin
        .upsert_topic(&args.topic, 4, 4, pb::Permission::ReadWrite, groups)
        .await
    {
        if Instant::now() >= end {
            return Err(e.into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nodes: BTreeMap<u64, String> = info.nodes.iter().map(|n| (n.node_id, n.addr.clone())).collect();
    wait_healthy(&client, &nodes, Duration::from_secs(30)).await?;

    // Producers: body "p{producer}-{seq}", every attempt a new seq.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<BTreeMap<String, Outcome>>> = Arc::default();
    // When the newest acknowledged send had started.
    let last_ack: Arc<Mutex<Instant>> = Arc::new(Mutex::new(Instant::now()));
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let (producer, stop, outcomes, last_ack, topic) = (
            Producer::new(client.clone()),
            stop.clone(),
            outcomes.clone(),
            last_ack.clone(),
            args.topic.clone(),
        );
        producers.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let body = format!("p{p}-{seq}");
                seq += 1;
                let started = Instant::now();
                let outcome = match producer.send(Message::new(&topic, body.clone())).await {
                    Ok(r) => {
                        let mut last = last_ack.lock().unwrap();
                        *last = (*last).max(started);
                        Outcome::Acked(
                            MessageQueue {
                                group: r.group,
                                queue_id: r.queue_id,
                            },
                            r.queue_offset,
                        )
                    }
                    Err(e) if e.code() == Some(ErrorCode::Timeout) => Outcome::Unknown(e.to_string()),
                    Err(e) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Outcome::Failed(e.to_string())
                    }
                };
                outcomes.lock().unwrap().insert(body, outcome);
            }
        }));
    }
    // A consumer group reading all along; it records the consume offsets it sees committed.
    let consumed: Arc<Mutex<Vec<Received>>> = Arc::default();
    let consumer = {
        let consumed = consumed.clone();
        PushConsumer::builder(client.clone(), "chaos-group", &args.topic)
            .consume_from(ConsumeFrom::First)
            .start(move |batch| {
                let mut c = consumed.lock().unwrap();
                for m in batch {
                    c.push((
                        MessageQueue {
                            group: m.group.clone(),
                            queue_id: m.queue_id,
                        },
                        m.queue_offset,
                        m.body.clone(),
                    ));
                }
                ConsumeResult::Success
            })
            .await?
    };
    let offsets_seen: Arc<Mutex<Vec<String>>> = Arc::default();
    // Committed consume offsets as the current master (highest term seen) reports them: they
    // must never move backwards. (A lagging slave may show older ones; that is not a commit
    // going back, so slaves are not asked.)
    let watcher = {
        let (client, stop, nodes, violations, topic) = (
            client.clone(),
            stop.clone(),
            nodes.clone(),
            offsets_seen.clone(),
            args.topic.clone(),
        );
        tokio::spawn(async move {
            let mut last: BTreeMap<u32, u64> = BTreeMap::new();
            let mut term = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut master = None;
                for addr in nodes.values() {
                    if let Some(s) = node_status(&client, addr).await {
                        if s.role == pb::Role::Master as i32
                            && s.term >= term
                            && master.as_ref().is_none_or(|(t, _)| s.term > *t)
                        {
                            master = Some((s.term, addr.clone()));
                        }
                    }
                }
                if let Some((t, addr)) = master {
                    term = t;
                    // This run's topic only: the group may have offsets in earlier runs' topics.
                    let req = pb::GetConsumeOffsetsRequest {
                        consumer_group: "chaos-group".into(),
                        topic: topic.clone(),
                    };
                    if let Ok(mut b) = client.broker(&addr) {
                        if let Ok(reply) = b.get_consume_offsets(deadline(req)).await {
                            for o in reply.into_inner().offsets {
                                if let Some(prev) = last.insert(o.queue_id, o.offset) {
                                    if o.offset < prev {
                                        let text = format!(
                                            "queue {} offset moved back from {prev} to {} (term {t})",
                                            o.queue_id, o.offset
                                        );
                                        violations.lock().unwrap().push(text);
                                    }
                                }
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let mut disk = crate::chaos_disk::DiskFaults::new(&args.script);
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    // Per fault kind: time from the fault to the first acknowledged send started after it, while
    // a majority stayed connected; and from the heal to the first one started after the heal.
    let mut during: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut recovery: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let fault_time = Duration::from_millis(args.fault_ms);
    let live = Liveness {
        last_ack: last_ack.clone(),
        seed,
    };
    // A slave kept dead across rounds, and the rounds it has left.
    let mut held: Option<(u64, u32)> = None;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..args.rounds {
        disk.keep_headroom()?;
        let mut fault = faults[(rng.next() % faults.len() as u64) as usize].clone();
        let held_node = held.map(|(n, _)| n);
        // Disk faults restart nodes through their own paths; they wait until no node is held.
        if held_node.is_some()
            && matches!(
                fault.as_str(),
                "disk-full" | "torn-tail" | "hold-slave" | "rolling-restart" | "power-loss"
            )
        {
            fault = "kill-master".into();
        }
        let alive: Vec<u64> = nodes.keys().copied().filter(|n| Some(*n) != held_node).collect();
        let info = routed_group(&admin, &args.group, alive.len()).await?;
        let master = info.master_node_id;
        let slaves: Vec<u64> = alive.iter().copied().filter(|n| *n != master).collect();
        let slave = slaves[(rng.next() % slaves.len() as u64) as usize];
        let majority = nodes.len() / 2 + 1;
        // Whether the nodes left connected by a fault that takes `out` away are a majority.
        let connected = |out: usize| alive.len().saturating_sub(out) >= majority;
        let name = |id: u64| format!("{}-{id}", args.group);
        let r = round + 1;
        eprintln!(
            "chaos: round {r}: {fault} (master {master}{})",
            held_node.map(|n| format!(", node {n} held down")).unwrap_or_default()
        );
        let fault_at = Instant::now();
        // The time to service within the fault (from when it is in place), when a majority stays
        // connected.
        let mut within: Option<Duration> = None;
        match fault.as_str() {
            "kill-master" => {
                script(&args.script, &["kill", &name(master)])?;
                if connected(1) {
                    within = Some(live.wait(Instant::now(), r, &fault).await?);
                }
                live.hold(fault_at, fault_time).await;
                script(&args.script, &["start", &name(master)])?;
            }
            "pause-master" => {
                script(&args.script, &["pause", &name(master)])?;
                if connected(1) {
                    within = Some(live.wait(Instant::now(), r, &fault).await?);
                }
                live.hold(fault_at, fault_time).await;
                script(&args.script, &["resume", &name(master)])?;
            }
            "kill-slave" => {
                script(&args.script, &["kill", &name(slave)])?;
                if connected(1) {
                    within = Some(live.wait(Instant::now(), r, &fault).await?);
                }
                live.hold(fault_at, fault_time).await;
                script(&args.script, &["start", &name(slave)])?;
            }
            "kill-all" => {
                for id in &alive {
                    script(&args.script, &["kill", &name(*id)])?;
                }
                for id in &alive {
                    script(&args.script, &["start", &name(*id)])?;
                }
            }
            "power-loss" => {
                // Small disks (disk-full) are tmpfs mounts: their data goes back to the lazy
                // filesystem first, so that it is on it when the power goes.
                disk.restore()?;
                let out = crate::ops::script_output(&args.script, &["power-off"])?;
                if let Some(line) = out.lines().find(|l| l.contains("power off:")) {
                    eprintln!("chaos:   {}", line.trim_start_matches("raftmq-lazyfs: "));
                }
                for id in &alive {
                    script(&args.script, &["start", &name(*id)])?;
                }
            }
            "restart-namesrv" => {
                script(&args.script, &["stop", "namesrv-1"])?;
                // Clients keep their routes; the brokers keep serving.
                within = Some(live.wait(Instant::now(), r, &fault).await?);
                live.hold(fault_at, fault_time).await;
                script(&args.script, &["start", "namesrv-1"])?;
            }
            "partition-master" | "partition-slave" => {
                let victim = if fault == "partition-master" { master } else { slave };
                let others: Vec<u64> = alive.iter().copied().filter(|n| *n != victim).collect();
                cut(&client, &nodes[&victim], others.clone()).await?;
                for o in &others {
                    cut(&client, &nodes[o], vec![victim]).await?;
                }
                if connected(1) {
                    within = Some(live.wait(Instant::now(), r, &fault).await?);
                }
                live.hold(fault_at, fault_time).await;
                for id in &alive {
                    cut(&client, &nodes[id], vec![]).await?;
                }
            }
            "net-isolate-master" | "net-isolate-slave" => {
                let victim = if fault == "net-isolate-master" { master } else { slave };
                script(&args.script, &["net", "isolate", &name(victim)])?;
                if connected(1) {
                    within = Some(live.wait(Instant::now(), r, &fault).await?);
                }
                live.hold(fault_at, fault_time).await;
                script(&args.script, &["net", "heal"])?;
            }
            "net-split" => {
                // The master and the clients on one side; the slaves and the NameServer on the
                // other. The clients reach only a master that cannot commit: nothing it answers
                // may be lost, and service is checked once the split heals.
                let mut far: Vec<String> = slaves.iter().map(|n| name(*n)).collect();
                far.push("namesrv-1".into());
                for other in &far {
                    script(&args.script, &["net", "cut", &name(master), other])?;
                    script(&args.script, &["net", "cut", "client", other])?;
                }
                live.hold(fault_at, fault_time).await;
                script(&args.script, &["net", "heal"])?;
            }
            "net-oneway-out" | "net-oneway-in" => {
                for s in &slaves {
                    let (from, to) = if fault == "net-oneway-out" {
                        (name(master), name(*s))
                    } else {
                        (name(*s), name(master))
                    };
                    script(&args.script, &["net", "cut", &from, &to, "--one-way"])?;
                }
                if connected(1) {
                    within = Some(live.wait(Instant::now(), r, &fault).await?);
                }
                live.hold(fault_at, fault_time).await;
                script(&args.script, &["net", "heal"])?;
            }
            "disk-full" => {
                let victim = *nodes
                    .keys()
                    .nth((rng.next() % nodes.len() as u64) as usize)
                    .expect("a node");
                let what = disk.disk_full(&name(victim), fault_time).await?;
                eprintln!("chaos:   {what}");
            }
            "torn-tail" => {
                let victim = *nodes
                    .keys()
                    .nth((rng.next() % nodes.len() as u64) as usize)
                    .expect("a node");
                let what = disk.torn_tail(&name(victim), rng.next())?;
                eprintln!("chaos:   {what}");
            }
            "hold-slave" => {
                let rounds = 2 + (rng.next() % 3) as u32;
                script(&args.script, &["kill", &name(slave)])?;
                within = Some(live.wait(Instant::now(), r, &fault).await?);
                eprintln!("chaos:   node {slave} stays down for {rounds} rounds");
                held = Some((slave, rounds + 1));
            }
            "master-cycle" => {
                // Kill and start the master three times; each time the group must serve again.
                let mut worst = Duration::ZERO;
                for _ in 0..3 {
                    let g = routed_group(&admin, &args.group, alive.len()).await?;
                    script(&args.script, &["kill", &name(g.master_node_id)])?;
                    let at = Instant::now();
                    script(&args.script, &["start", &name(g.master_node_id)])?;
                    worst = worst.max(live.wait(at, r, &fault).await?);
                }
                within = Some(worst);
            }
            "rolling-restart" => {
                // Clean stops, slaves first: the master hands leadership over when its turn comes.
                let mut order = slaves.clone();
                order.push(master);
                let mut worst = Duration::ZERO;
                for id in order {
                    script(&args.script, &["stop", &name(id)])?;
                    worst = worst.max(live.wait(Instant::now(), r, &fault).await?);
                    script(&args.script, &["start", &name(id)])?;
                    let up: BTreeMap<u64, String> = nodes
                        .iter()
                        .filter(|(n, _)| alive.contains(n))
                        .map(|(n, a)| (*n, a.clone()))
                        .collect();
                    wait_healthy(&client, &up, Duration::from_secs(30))
                        .await
                        .with_context(|| format!("round {r}: node {id} after its restart (seed {seed})"))?;
                }
                within = Some(worst);
            }
            other => bail!("unknown fault {other}"),
        }
        // The node held down comes back when its rounds are over.
        if let Some((n, left)) = held {
            if left <= 1 {
                script(&args.script, &["start", &name(n)])?;
                eprintln!("chaos:   node {n} starts again");
                held = None;
            } else {
                held = Some((n, left - 1));
            }
        }
        // Healed: a majority is connected again, so a send started now must be acknowledged.
        let healed = Instant::now();
        recovery
            .entry(fault.clone())
            .or_default()
            .push(live.wait(healed, r, &format!("{fault}, after the heal")).await?);
        if let Some(d) = within {
            during.entry(fault.clone()).or_default().push(d);
        }
        *counts.entry(fault).or_default() += 1;
        let up: BTreeMap<u64, String> = nodes
            .iter()
            .filter(|(n, _)| held.map(|(h, _)| h) != Some(**n))
            .map(|(n, a)| (*n, a.clone()))
            .collect();
        wait_healthy(&client, &up, Duration::from_secs(30))
            .await
            .with_context(|| format!("round {r} (seed {seed})"))?;
    }
    if let Some((n, _)) = held {
        script(&args.script, &["start", &format!("{}-{n}", args.group)])?;
    }

    stop.store(true, Ordering::SeqCst);
    // Every step of the wind-down has a deadline and says which one ran out: a wait without one
    // once kept a finished 300-round run from reaching its verdict.
    eprintln!("chaos: rounds done; stopping producers and the offset watcher");
    // Data moved onto small disks goes back to the real one (each such node restarts once).
    disk.restore()?;
    stage("stopping the producers", Duration::from_secs(60), async {
        for p in producers {
            p.await?;
        }
        Ok(())
    })
    .await?;
    stage("stopping the offset watcher", Duration::from_secs(30), async {
        Ok(watcher.await?)
    })
    .await?;
    stage(
        "waiting for a healthy group",
        Duration::from_secs(40),
        wait_healthy(&client, &nodes, Duration::from_secs(30)),
    )
    .await?;
    eprintln!("chaos: draining the consumer group");
    // Let the consumer drain, then stop it (it commits).
    let outcomes = outcomes.lock().unwrap().clone();
    let acked = outcomes.values().filter(|o| matches!(o, Outcome::Acked(..))).count();
    let acked_bodies: BTreeSet<Vec<u8>> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Acked(..)))
        .map(|(b, _)| b.as_bytes().to_vec())
        .collect();
    let drain_end = Instant::now() + Duration::from_secs(30);
    loop {
        let got: BTreeSet<Vec<u8>> = consumed.lock().unwrap().iter().map(|(_, _, b)| b.clone()).collect();
        if acked_bodies.is_subset(&got) || Instant::now() >= drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stage("stopping the consumer", Duration::from_secs(30), async {
        consumer.shutdown().await;
        Ok(())
    })
    .await?;

    // The checker: read every queue from every replica.
    eprintln!("chaos: reading every replica");
    let mut replicas: BTreeMap<u64, BTreeMap<(u32, u64), Vec<u8>>> = BTreeMap::new();
    for (id, addr) in &nodes {
        let mut content = BTreeMap::new();
        let mut b = client.broker(addr)?;
        for queue_id in 0..4 {
            let mut offset = 0;
            loop {
                let r = b
                    .pull(deadline(pb::PullRequest {
                        topic: args.topic.clone(),
                        queue_id,
                        offset,
                        max_messages: 1024,
                        ..Default::default()
                    }))
                    .await
                    .map_err(|s| anyhow::anyhow!("reading node {id}: {}", s.message()))?
                    .into_inner();
                if r.messages.is_empty() {
                    break;
                }
                for m in r.messages {
                    content.insert((queue_id, m.queue_offset), m.body);
                }
                offset = r.next_offset;
            }
        }
        replicas.insert(*id, content);
    }
    let mut problems: Vec<String> = offsets_seen.lock().unwrap().clone();
    let reference = replicas.values().next().cloned().unwrap_or_default();
    for (id, content) in &replicas {
        if *content != reference {
            problems.push(format!(
                "node {id} differs from node {}",
                replicas.keys().next().unwrap()
            ));
        }
    }
    let mut lost = 0;
    for (body, outcome) in &outcomes {
        if let Outcome::Acked(q, offset) = outcome {
            for (id, content) in &replicas {
                if content.get(&(q.queue_id, *offset)) != Some(&body.as_bytes().to_vec()) {
                    lost += 1;
                    problems.push(format!(
                        "acknowledged {body} at {q} offset {offset} missing on node {id}"
                    ));
                }
            }
        }
    }
    // Each body at most once; per producer and queue, offsets follow send order.
    let mut seen: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let mut order: BTreeMap<(String, u32), Vec<(u64, u64)>> = BTreeMap::new();
    for ((queue, offset), body) in &reference {
        *seen.entry(body.clone()).or_default() += 1;
        let text = String::from_utf8_lossy(body);
        if let Some((p, seq)) = text.split_once('-') {
            order
                .entry((p.to_owned(), *queue))
                .or_default()
                .push((*offset, seq.parse().unwrap_or(0)));
        }
    }
    let duplicates = seen.values().filter(|n| **n > 1).count();
    for ((p, q), list) in &order {
        if !list.windows(2).all(|w| w[0].1 < w[1].1) {
            problems.push(format!("producer {p} is out of order in queue {q}"));
        }
    }
    for (body, outcome) in &outcomes {
        if let Outcome::Failed(error) = outcome {
            if seen.contains_key(body.as_bytes()) {
                problems.push(format!("{body} was reported failed ({error}) but is stored"));
            }
        }
    }
    let unknown: Vec<&String> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Unknown(_)))
        .map(|(b, _)| b)
        .collect();
    let unknown_present = unknown.iter().filter(|b| seen.contains_key(b.as_bytes())).count();
    let consumed_set: BTreeSet<Vec<u8>> = consumed.lock().unwrap().iter().map(|(_, _, b)| b.clone()).collect();
    let not_consumed = outcomes
        .iter()
        .filter(|(b, o)| matches!(o, Outcome::Acked(..)) && !consumed_set.contains(b.as_bytes()))
        .count();
    if not_consumed > 0 {
        problems.push(format!(
            "{not_consumed} acknowledged messages never reached the consumer group"
        ));
    }

    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    // (median, worst) of a list, in ms.
    let figures = |v: Option<&Vec<Duration>>| {
        v.filter(|v| !v.is_empty()).map(|v| {
            let mut v = v.clone();
            v.sort();
            (ms(&v[v.len() / 2]), ms(&v[v.len() - 1]))
        })
    };
    if as_json {
        let rec: BTreeMap<&String, serde_json::Value> = counts
            .keys()
            .map(|f| {
                let d = figures(during.get(f));
                let h = figures(recovery.get(f));
                (
                    f,
                    json!({"during_median_ms": d.map(|x| x.0), "during_worst_ms": d.map(|x| x.1), "after_heal_median_ms": h.map(|x| x.0), "after_heal_worst_ms": h.map(|x| x.1)}),
                )
            })
            .collect();
        println!(
            "{}",
            json!({"seed": seed, "rounds": args.rounds, "faults": counts, "acknowledged": acked, "lost": lost, "duplicates": duplicates, "unknown": unknown.len(), "unknown_stored": unknown_present, "liveness_failures": 0, "recovery": rec, "problems": problems})
        );
    } else {
        println!(
            "seed {seed}, {} rounds, liveness failures 0 (a run with one stops there)",
            args.rounds
        );
        println!(
            "{:<16} {:>5} {:>22} {:>22}",
            "FAULT", "COUNT", "DURING median / worst", "AFTER HEAL med / worst"
        );
        let cell = |f: Option<(f64, f64)>| match f {
            Some((m, w)) => format!("{m:>7.0} / {w:>7.0} ms"),
            None => "-".to_owned(),
        };
        for (fault, n) in &counts {
            println!(
                "{fault:<16} {n:>5} {:>22} {:>22}",
                cell(figures(during.get(fault))),
                cell(figures(recovery.get(fault)))
            );
        }
        println!(
            "acknowledged {acked}, lost {lost}, duplicates {duplicates}, unknown {} ({} stored, {} absent)",
            unknown.len(),
            unknown_present,
            unknown.len() - unknown_present
        );
        // Why outcomes were unknown, the commonest reasons first (numbers and addresses
        // blanked so that the same reason counts once).
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for o in outcomes.values() {
            if let Outcome::Unknown(e) = o {
                let shape: String = e.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
                *reasons.entry(shape).or_default() += 1;
            }
        }
        let mut reasons: Vec<_> = reasons.into_iter().collect();
        reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
        for (reason, n) in reasons.iter().take(3) {
            println!("unknown x{n}: {reason}");
        }
        for p in &problems {
            println!("problem: {p}");
        }
    }
    if lost > 0 || duplicates > 0 || !problems.is_empty() {
        bail!("chaos found {} problems (seed {seed})", problems.len() + duplicates);
    }
    Ok(())
}
