//! `raftmq drill`: the failover drill. With a producer sending continuously, it kills (or
//! pauses) a group's master through the cluster script, or hands its role over
//! (`--fault transfer`), and measures what an operator cares about: time to a new master, time
//! until sends succeed again, time until the NameServers route the new master, sends that
//! failed, the slowest acknowledged send, and whether every acknowledged message is still
//! readable.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use raftmq_client::{Admin, Client, ClientConfig, Message, MessageQueue, Producer};
use raftmq_common::shutdown::Shutdown;
use raftmq_proto as pb;
use serde_json::json;

use crate::ops::{group_info, node_status, script};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the master, then start it again.
    Kill,
    /// SIGSTOP the master past the election timeout, then SIGCONT it.
    Pause,
    /// Cut the master off from every node and client (a cluster in network namespaces:
    /// `scripts/failover-drill.sh --netns`), then heal the network.
    Isolate,
    /// Hand the master role to another voter (`raftmq group transfer-master`): a planned
    /// change, which should fail no send.
    Transfer,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// The broker group whose master is failed.
    #[arg(long, default_value = "broker-a")]
    group: String,
    /// Topic the drill writes (created in that group only).
    #[arg(long, default_value = "DrillTopic")]
    topic: String,
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    #[arg(long, value_enum, default_value_t = Fault::Kill)]
    fault: Fault,
    /// The cluster script; nodes are named GROUP-NODEID.
    #[arg(long, default_value = "scripts/cluster.sh")]
    script: PathBuf,
    /// How long a paused (or isolated) master stays so, ms.
    #[arg(long, default_value_t = 2000)]
    pause_ms: u64,
}

/// One acknowledged send.
#[derive(Debug, Clone)]
struct Ack {
    started: Instant,
    done: Instant,
    queue: MessageQueue,
    offset: u64,
    body: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct Round {
    new_master: Duration,
    sends_resumed: Duration,
    routed: Duration,
    acked_before: usize,
    acked_after: usize,
    lost: usize,
    unknown: usize,
    /// Sends that failed with an error (not a timeout, whose outcome is unknown).
    failed: usize,
    /// The longest an acknowledged send took.
    slowest_send: Duration,
    /// Terms the group went through from the new master's election until a second after the
    /// old master rejoined: 0 when the return disturbed nothing.
    rejoin_term_changes: u64,
}

fn summary(name: &str, mut values: Vec<Duration>) -> String {
    values.sort();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    format!(
        "{name:<22} min {:>8}  median {:>8}  max {:>8}",
        ms(values[0]),
        ms(values[values.len() / 2]),
        ms(values[values.len() - 1])
    )
}

pub async fn run(namesrv: &[String], args: DrillArgs, as_json: bool) -> anyhow::Result<()> {
    let mut config = crate::client_config(namesrv);
    config.send_timeout = Duration::from_secs(5);
    let client = Client::new(config)?;
    let admin = Admin::new(client.clone());
    admin
        .upsert_topic(
            &args.topic,
            1,
            1,
            pb::Permission::ReadWrite,
            std::slice::from_ref(&args.group),
        )
        .await?;
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let r = drill_round(&client, &admin, &args, namesrv, round)
            .await
            .with_context(|| format!("round {}", round + 1))?;
        if !as_json {
            println!(
                "round {:>2}: new master {:>5.0} ms, sends resumed {:>5.0} ms, routed {:>5.0} ms, acked {} before / {} after, slowest send {:.0} ms, failed {}, lost {}, unknown {}, term changes at rejoin {}",
                round + 1,
                r.new_master.as_secs_f64() * 1000.0,
                r.sends_resumed.as_secs_f64() * 1000.0,
                r.routed.as_secs_f64() * 1000.0,
                r.acked_before,
                r.acked_after,
                r.slowest_send.as_secs_f64() * 1000.0,
                r.failed,
                r.lost,
                r.unknown,
                r.rejoin_term_changes
            );
        }
        rounds.push(r);
    }
    let lost: usize = rounds.iter().map(|r| r.lost).sum();
    let failed: usize = rounds.iter().map(|r| r.failed).sum();
    if as_json {
        let items: Vec<_> = rounds
            .iter()
            .map(|r| json!({"new_master_ms": r.new_master.as_millis(), "sends_resumed_ms": r.sends_resumed.as_millis(), "routed_ms": r.routed.as_millis(), "acked_before": r.acked_before, "acked_after": r.acked_after, "slowest_send_ms": r.slowest_send.as_millis(), "failed": r.failed, "lost": r.lost, "unknown": r.unknown, "rejoin_term_changes": r.rejoin_term_changes}))
            .collect();
        println!(
            "{}",
            json!({"fault": format!("{:?}", args.fault).to_lowercase(), "rounds": items, "lost": lost, "failed": failed})
        );
    } else {
        println!("{} rounds of {:?}:", rounds.len(), args.fault);
        println!(
            "{}",
            summary("new master", rounds.iter().map(|r| r.new_master).collect())
        );
        println!(
            "{}",
            summary("sends succeed again", rounds.iter().map(|r| r.sends_resumed).collect())
        );
        println!(
            "{}",
            summary("NameServers route it", rounds.iter().map(|r| r.routed).collect())
        );
        println!(
            "{}",
            summary("slowest send", rounds.iter().map(|r| r.slowest_send).collect())
        );
        println!(
            "sends failed: {failed}; outcome unknown (timed out): {}",
            rounds.iter().map(|r| r.unknown).sum::<usize>()
        );
        println!(
            "term changes while the old master rejoined: {} (worst round {})",
            rounds.iter().map(|r| r.rejoin_term_changes).sum::<u64>(),
            rounds.iter().map(|r| r.rejoin_term_changes).max().unwrap_or(0)
        );
        println!("acknowledged messages lost: {lost}");
    }
    if lost > 0 {
        bail!("{lost} acknowledged messages were lost");
    }
    Ok(())
}

async fn drill_round(
    client: &Client,
    admin: &Admin,
    args: &DrillArgs,
    namesrv: &[String],
    round: u32,
) -> anyhow::Result<Round> {
    let before = group_info(admin, &args.group)
        .await
        .with_context(|| format!("no group {} registered", args.group))?;
    if before.master_addr.is_empty() {
        bail!("group {} has no master", args.group);
    }
    let old_master = before.master_node_id;
    let old_term = before.term;
    let victim = format!("{}-{}", args.group, old_master);
    let survivors: Vec<String> = before
        .nodes
        .iter()
        .filter(|n| n.node_id != old_master)
        .map(|n| n.addr.clone())
        .collect();

    // The producer: one send in flight, numbered bodies.
    let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let unknown = Arc::new(Mutex::new(0usize));
    let failed = Arc::new(Mutex::new(0usize));
    let (stop_tx, stop_rx) = Shutdown::new();
    let producer = {
        let producer = Producer::new(client.clone());
        let (acks, unknown, failed, topic) = (acks.clone(), unknown.clone(), failed.clone(), args.topic.clone());
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop_rx.is_stopped() {
                let body = format!("drill-{round}-{seq}").into_bytes();
                seq += 1;
                let started = Instant::now();
                match producer.send(Message::new(&topic, body.clone())).await {
                    Ok(r) => acks.lock().unwrap().push(Ack {
                        started,
                        done: Instant::now(),
                        queue: MessageQueue {
                            group: r.group,
                            queue_id: r.queue_id,
                        },
                        offset: r.queue_offset,
                        body,
                    }),
                    Err(e) if e.code == raftmq_common::ErrorCode::Timeout => *unknown.lock().unwrap() += 1,
                    Err(e) => {
                        eprintln!("send failed: {e}");
                        *failed.lock().unwrap() += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                }
            }
        })
    };
    // Warm up: acknowledgements are flowing.
    let warm = Instant::now();
    while acks.lock().unwrap().len() < 20 {
        if warm.elapsed() > Duration::from_secs(10) {
            bail!("the producer got no acknowledgements before the fault");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let fault_at = Instant::now();
    let verb: &[&str] = match args.fault {
        Fault::Kill => &["kill"],
        Fault::Pause => &["pause"],
        Fault::Isolate => &["net", "isolate"],
        Fault::Transfer => &[],
    };
    if args.fault == Fault::Transfer {
        admin.transfer_master(&args.group, None).await?;
    } else {
        let (path, mut call) = (
            args.script.clone(),
            verb.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        call.push(victim.clone());
        tokio::task::spawn_blocking(move || script(&path, &call.iter().map(String::as_str).collect::<Vec<_>>()))
            .await??;
    }
    // From here the old master certainly serves nothing.
    let fault_done = Instant::now();
    // Three clocks run from the fault at once: a survivor is master in a higher term; a send
    // started after the fault is acknowledged; every NameServer routes the new master.
    let namesrv_clients: Vec<Admin> = namesrv
        .iter()
        .map(|ns| {
            Client::new(ClientConfig {
                watch_routes: false,
                ..crate::client_config(std::slice::from_ref(ns))
            })
            .map(Admin::new)
        })
        .collect::<Result<_, _>>()?;
    let mut new_master: Option<(Duration, pb::NodeStatus)> = None;
    let mut resumed: Option<Duration> = None;
    let mut routed: Option<Duration> = None;
    while new_master.is_none() || resumed.is_none() || routed.is_none() {
        if fault_at.elapsed() > Duration::from_secs(30) {
            bail!("30 s after the fault: new master {new_master:?}, sends resumed {resumed:?}, routed {routed:?}");
        }
        if new_master.is_none() {
            for addr in &survivors {
                if let Some(s) = node_status(client, addr).await {
                    if s.role == pb::Role::Master as i32 && s.term > old_term {
                        new_master = Some((fault_at.elapsed(), s));
                        break;
                    }
                }
            }
        }
        if resumed.is_none() {
            // Started once the fault was in place, so not the old master's acknowledgement.
            resumed = acks
                .lock()
                .unwrap()
                .iter()
                .find(|a| a.started >= fault_done)
                .map(|a| a.done.duration_since(fault_at));
        }
        if let (None, Some((_, status))) = (routed, &new_master) {
            let mut all = true;
            for admin in &namesrv_clients {
                let info = admin.cluster().await.ok();
                all &= info
                    .and_then(|i| i.groups.into_iter().find(|g| g.group == args.group))
                    .is_some_and(|g| g.master_node_id == status.node_id);
            }
            if all {
                routed = Some(fault_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (new_master_after, status) = new_master.expect("loop ends with a master");
    let (resumed, routed) = (resumed.expect("loop ends resumed"), routed.expect("loop ends routed"));
    // Some more sends on the new master, then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.stop();
    producer.await?;

    // The old master comes back.
    match args.fault {
        Fault::Transfer => {}
        Fault::Kill => script(&args.script, &["start", &victim])?,
        Fault::Pause | Fault::Isolate => {
            let paused_for = fault_at.elapsed();
            if paused_for < Duration::from_millis(args.pause_ms) {
                tokio::time::sleep(Duration::from_millis(args.pause_ms) - paused_for).await;
            }
            if args.fault == Fault::Pause {
                script(&args.script, &["resume", &victim])?;
            } else {
                script(&args.script, &["net", "heal"])?;
            }
        }
    }
    let old_addr = before
        .nodes
        .iter()
        .find(|n| n.node_id == old_master)
        .map(|n| n.addr.clone())
        .unwrap_or_default();
    let back = Instant::now();
    loop {
        if let Some(s) = node_status(client, &old_addr).await {
            if s.role == pb::Role::Slave as i32 && s.term >= status.term && s.applied_index >= status.applied_index {
                break;
            }
        }
        if back.elapsed() > Duration::from_secs(30) {
            bail!("{victim} did not rejoin as a slave within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A rejoining node must not unseat the master: watch every node's term for a second more.
    let mut highest = status.term;
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(1) {
        for n in &before.nodes {
            if let Some(s) = node_status(client, &n.addr).await {
                highest = highest.max(s.term);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every acknowledged message is where its acknowledgement said.
    let acks = acks.lock().unwrap().clone();
    let mut lost = 0;
    for a in &acks {
        match admin
            .get_message(&args.topic, &a.queue, a.offset, raftmq_client::ReadPreference::Master)
            .await
        {
            Ok(m) if m.body == a.body => {}
            Ok(m) => {
                eprintln!(
                    "offset {} of {} holds {:?}, acknowledged {:?}",
                    a.offset,
                    a.queue,
                    String::from_utf8_lossy(&m.body),
                    String::from_utf8_lossy(&a.body)
                );
                lost += 1;
            }
            Err(e) => {
                eprintln!("acknowledged offset {} of {} is unreadable: {e}", a.offset, a.queue);
                lost += 1;
            }
        }
    }
    let unknown = *unknown.lock().unwrap();
    let failed = *failed.lock().unwrap();
    let slowest_send = acks.iter().map(|a| a.done - a.started).max().unwrap_or_default();
    Ok(Round {
        new_master: new_master_after,
        sends_resumed: resumed,
        routed,
        acked_before: acks.iter().filter(|a| a.done < fault_at).count(),
        acked_after: acks.iter().filter(|a| a.done >= fault_at).count(),
        lost,
        unknown,
        failed,
        slowest_send,
        rejoin_term_changes: highest - status.term,
    })
}
