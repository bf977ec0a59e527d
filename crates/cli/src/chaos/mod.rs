//! `raftmq chaos`: the fault-injection suite. Producers send unique, self-describing messages
//! and a consumer group reads continuously while faults chosen at random from a printed seed hit
//! one broker group; then the checker proves that no acknowledged message was lost.
//!
//! - [`load`]: the producers, the consumer group and the offset watcher, recording;
//! - [`round`]: one fault put in place, held and healed, with the liveness check;
//! - [`disk`]: the disk faults (a full disk, a torn WAL tail);
//! - [`verdict`]: every replica read back and checked against the record.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use raftmq_client::{Admin, Client};
use raftmq_proto as pb;

mod cluster;
mod disk;
mod load;
mod round;
mod verdict;

use crate::ops::script;
use cluster::{routed_group, wait_healthy};

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
    /// stopped cleanly and started again in turn, the master last), transfer-master (the
    /// master role handed to a slave, as `raftmq group transfer-master` does), replace-node (a
    /// slave killed and its data deleted, and a new node with a new id put in its place with
    /// `raftmq group replace-node`).
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

const ALL_FAULTS: [&str; 14] = [
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
    "transfer-master",
    "replace-node",
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
pub struct Rng(u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
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
    let faults = faults(&args)?;
    let mut rng = Rng(seed);
    let client = Client::new(crate::client_config(namesrv))?;
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
    let mut nodes: BTreeMap<u64, String> = info.nodes.iter().map(|n| (n.node_id, n.addr.clone())).collect();
    wait_healthy(&client, &nodes, Duration::from_secs(30)).await?;

    let load = load::Load::start(&client, &args.topic, args.producers, &nodes).await?;
    let mut disk = disk::DiskFaults::new(&args.script);
    let mut recovery = verdict::Recovery::default();
    let live = round::Liveness {
        last_ack: load.last_ack.clone(),
        seed,
    };
    let mut held = round::Held::default();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in 1..=args.rounds {
        disk.keep_headroom()?;
        let mut fault = faults[(rng.next() % faults.len() as u64) as usize].clone();
        // Disk faults restart nodes through their own paths; they wait until no node is held.
        if held.0.is_some()
            && matches!(
                fault.as_str(),
                "disk-full" | "torn-tail" | "hold-slave" | "rolling-restart" | "power-loss" | "replace-node"
            )
        {
            fault = "kill-master".into();
        }
        let cluster = round::Cluster {
            script: &args.script,
            group: &args.group,
            client: &client,
            admin: &admin,
            nodes: &nodes,
            fault_time: Duration::from_millis(args.fault_ms),
            live: &live,
        };
        let mut replaced = None;
        let within = round::run(&cluster, r, &fault, &mut rng, &mut disk, &mut held, &mut replaced).await?;
        // A replaced node leaves the map; its successor is checked like the others from now on.
        if let Some((old, new, addr)) = replaced {
            nodes.remove(&old);
            nodes.insert(new, addr);
        }
        // Healed: a majority is connected again, so a send started now must be acknowledged.
        let healed = Instant::now();
        let after = live.wait(healed, r, &format!("{fault}, after the heal")).await?;
        recovery.after_heal.entry(fault.clone()).or_default().push(after);
        if let Some(d) = within {
            recovery.during.entry(fault.clone()).or_default().push(d);
        }
        *recovery.counts.entry(fault).or_default() += 1;
        let up: BTreeMap<u64, String> = nodes
            .iter()
            .filter(|(n, _)| held.0.map(|(h, _)| h) != Some(**n))
            .map(|(n, a)| (*n, a.clone()))
            .collect();
        wait_healthy(&client, &up, Duration::from_secs(30))
            .await
            .with_context(|| format!("round {r} (seed {seed})"))?;
    }
    if let Some((n, _)) = held.0 {
        script(&args.script, &["start", &format!("{}-{n}", args.group)])?;
    }

    load.halt();
    eprintln!("chaos: rounds done; stopping producers and the offset watcher");
    // Data moved onto small disks goes back to the real one (each such node restarts once).
    disk.restore()?;
    let record = load
        .stop(wait_healthy(&client, &nodes, Duration::from_secs(30)))
        .await?;
    // Transactions left open (or whose end was not answered) are ended by the checker, which
    // the record keeps alive: wait until none is pending before reading what was stored.
    eprintln!("chaos: waiting for the open transactions to be checked");
    let _answering = record.checker.clone();
    let admin = raftmq_client::Admin::new(client.clone());
    cluster::stage("checking the open transactions", Duration::from_secs(90), async {
        loop {
            if let Ok(groups) = admin.pending_transactions(&[], 1).await {
                if groups.iter().all(|g| g.pending == 0) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await?;
    eprintln!("chaos: reading every replica");
    let replicas = verdict::read_replicas(&client, &nodes, &args.topic).await?;
    verdict::judge(record, &replicas, &recovery, seed, args.rounds, as_json)
}

/// The faults to draw from: those asked for, or every one this cluster can take.
fn faults(args: &ChaosArgs) -> anyhow::Result<Vec<String>> {
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
    Ok(faults)
}
