//! Whole-group power loss: every node of a group keeps its data on `raftmq-lazyfs`, all of them
//! lose power at once (SIGKILL, then every write no fsync covered is dropped), and come back.
//! Every acknowledged message must still be there. The same fault run against a deliberately
//! broken build (a debug-only switch that skips every fsync) must lose some: that is the proof
//! that the fault can see a missing fsync at all.

use std::collections::BTreeMap;
use std::time::Duration;

use raftmq_blackbox::{group_info, ScriptCluster, ScriptOptions};
use raftmq_client::{Admin, Client, ClientConfig, Message, Producer};
use raftmq_proto as pb;
use raftmq_testkit::runs_as_root;

const NODES: [&str; 3] = ["broker-a-1", "broker-a-2", "broker-a-3"];

/// What a power cut and a restart did to the acknowledged messages.
struct Outcome {
    acked: usize,
    /// Acknowledged messages not readable after the restart.
    lost: Vec<String>,
    /// What raftmq-lazyfs says it dropped.
    dropped: String,
}

async fn power_cut(test: &str, env: &[(&str, &str)]) -> Option<Outcome> {
    if !runs_as_root(test, "it mounts a FUSE filesystem") {
        return None;
    }
    let cluster = ScriptCluster::start(
        1,
        &["broker-a"],
        &ScriptOptions {
            up_flags: &["--lazyfs"],
            env,
            ..Default::default()
        },
    );
    let (ok, out, err) = cluster.cli(&["topic", "create", "Power", "--queues", "2"]);
    assert!(ok, "{out}{err}");
    let client = Client::new(ClientConfig::new(cluster.namesrv.clone())).expect("client");
    let producer = Producer::new(client.clone());
    // Acknowledged: (queue, offset) -> body.
    let mut acked: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for i in 0..300 {
        let body = format!("m-{i}");
        let r = producer
            .send(Message::new("Power", body.clone()))
            .await
            .unwrap_or_else(|e| panic!("send {i} before the power cut: {e}"));
        acked.insert((r.queue_id, r.queue_offset), body);
    }

    let dropped = cluster.must(&["power-off"]);
    assert!(dropped.contains("power off:"), "{dropped}");
    for node in NODES {
        cluster.must(&["start", node]);
    }

    // Back: a master, and every node's view of both queues from it.
    let admin = Admin::new(client.clone());
    let master = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(g) = group_info(&admin, "broker-a")
                .await
                .filter(|g| !g.master_addr.is_empty())
            {
                return g.master_addr;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let Ok(master) = master else {
        return Some(Outcome {
            acked: acked.len(),
            lost: vec!["no master within 30 s of the restart".into()],
            dropped,
        });
    };
    let mut stored: BTreeMap<(u32, u64), String> = BTreeMap::new();
    let mut lost: Vec<String> = Vec::new();
    'queues: for queue_id in 0..2 {
        let mut offset = 0;
        loop {
            let mut b = client.broker(&master).expect("master client");
            // A node just back may still be catching up: a failure is retried for a while,
            // and one that lasts means the queue cannot be read (its topic lost, say).
            let end = std::time::Instant::now() + Duration::from_secs(30);
            let reply = loop {
                let req = pb::PullRequest {
                    topic: "Power".into(),
                    queue_id,
                    offset,
                    max_messages: 256,
                    ..Default::default()
                };
                match b.pull(req).await {
                    Ok(r) => break r.into_inner(),
                    Err(e) if std::time::Instant::now() >= end => {
                        lost.push(format!(
                            "queue {queue_id} unreadable from offset {offset}: {}",
                            e.message()
                        ));
                        continue 'queues;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            if reply.messages.is_empty() {
                break;
            }
            for m in reply.messages {
                stored.insert(
                    (queue_id, m.queue_offset),
                    String::from_utf8_lossy(&m.body).into_owned(),
                );
            }
            offset = reply.next_offset;
        }
    }
    lost.extend(
        acked
            .iter()
            .filter(|(at, body)| stored.get(at) != Some(body))
            .map(|((q, o), body)| format!("{body} at queue {q} offset {o}")),
    );
    Some(Outcome {
        acked: acked.len(),
        lost,
        dropped,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_a_whole_group_power_loss() {
    let Some(outcome) = power_cut("every_acknowledged_message_survives_a_whole_group_power_loss", &[]).await else {
        return;
    };
    assert!(
        outcome.lost.is_empty(),
        "{} of {} acknowledged messages lost ({}): {:?}",
        outcome.lost.len(),
        outcome.acked,
        outcome.dropped.trim(),
        &outcome.lost[..outcome.lost.len().min(5)]
    );
    eprintln!("{} acknowledged, none lost; {}", outcome.acked, outcome.dropped.trim());
    // The cut did drop writes (RocksDB's own unsynced files at least): a fault that drops
    // nothing would make this test pass whatever the brokers did.
    assert!(!outcome.dropped.contains(": 0 files"), "{}", outcome.dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_power_loss_catches_a_build_that_skips_fsync() {
    let env = [("RAFTMQ_BROKEN_SKIP_FSYNC", "1")];
    let Some(outcome) = power_cut("the_power_loss_catches_a_build_that_skips_fsync", &env).await else {
        return;
    };
    eprintln!(
        "the broken build: {} acknowledged messages lost or unreadable queues, of {} acknowledged ({}); first: {:?}",
        outcome.lost.len(),
        outcome.acked,
        outcome.dropped.trim(),
        outcome.lost.first()
    );
    assert!(
        !outcome.lost.is_empty(),
        "a build that skips fsync lost none of {} acknowledged messages to a power loss ({}): the fault cannot see a missing fsync",
        outcome.acked,
        outcome.dropped.trim()
    );
}
