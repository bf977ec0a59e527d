//! Membership changes of a real cluster, through the CLI: a fourth broker process started with
//! `join = true` (`scripts/cluster.sh add`) is added, takes over as master, is refused removal
//! while master, and leaves; the failover drill moves the master role by transfer with no failed
//! send. The same again with every node in a network namespace of its own (root), where the
//! grown group also loses its master to a real partition.

use std::collections::BTreeSet;

use raftmq_blackbox::{free_port, ScriptCluster, ScriptOptions};

/// The voters and the master of broker-a, from `raftmq group members --json`.
fn members(cluster: &ScriptCluster) -> (BTreeSet<u64>, u64) {
    let (ok, out, err) = cluster.cli(&["--json", "group", "members", "broker-a"]);
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let voters = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["voter"] == true)
        .map(|m| m["node_id"].as_u64().unwrap())
        .collect();
    (voters, v["master_node_id"].as_u64().unwrap())
}

/// Writes node 4's config (join = true, listing only itself) and adds it to the running cluster
/// with `cluster.sh add`; returns its raft and client addresses as the cluster runs it (in a
/// netns cluster, rewritten to its namespace's address).
fn start_node_4(cluster: &ScriptCluster) -> (String, String) {
    let list = raftmq_blackbox::toml_list(&cluster.namesrv);
    let (client, raft, metrics) = (free_port(), free_port(), free_port());
    let file = cluster.home.path().join("broker-a-4.toml");
    std::fs::write(
        &file,
        format!(
            "fault-injection = true\ngroup = \"broker-a\"\nnode-id = 4\njoin = true\nnamesrv = [{list}]\n\
             namesrv-heartbeat-ms = 500\nmetrics-addr = \"127.0.0.1:{metrics}\"\n\n[[members]]\nnode-id = 4\n\
             raft-addr = \"127.0.0.1:{raft}\"\nclient-addr = \"127.0.0.1:{client}\"\n"
        ),
    )
    .expect("write node 4's config");
    let out = cluster.must(&["add", file.to_str().expect("utf-8 path")]);
    let config = out
        .lines()
        .find_map(|l| l.strip_prefix("added broker-a-4: its config is "))
        .unwrap_or_else(|| panic!("cluster.sh add said: {out}"));
    let text = std::fs::read_to_string(config.trim()).expect("node 4's config as run");
    let addr = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().trim_start_matches('=').trim().trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("{key} in {text}"))
    };
    (addr("raft-addr"), addr("client-addr"))
}

async fn grow_lead_and_shrink(cluster: &ScriptCluster, netns: bool) {
    let (ok, out, err) = cluster.cli(&["topic", "create", "M", "--queues", "2"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cluster.cli(&["send", "M", "before", "--count", "50"]);
    assert!(ok, "{out}{err}");
    assert_eq!(members(cluster).0, BTreeSet::from([1, 2, 3]));

    let (raft_addr, client_addr) = start_node_4(cluster);
    let add = [
        "group",
        "add-node",
        "broker-a",
        "--node-id",
        "4",
        "--raft-addr",
        &raft_addr,
        "--client-addr",
        &client_addr,
        "--catch-up-timeout",
        "60s",
    ];
    let (ok, out, err) = cluster.cli(&add);
    assert!(ok, "{out}{err}");
    assert!(out.contains("node 4 joined broker-a as a voter"), "{out}");
    assert_eq!(members(cluster).0, BTreeSet::from([1, 2, 3, 4]));

    // It takes over as master (three votes of four), and serves what was sent before it joined.
    let (ok, out, err) = cluster.cli(&["group", "transfer-master", "broker-a", "--to", "4"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("node 4"), "{out}");
    assert_eq!(members(cluster).1, 4);
    let (ok, out, err) = cluster.cli(&["send", "M", "after", "--count", "50"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cluster.cli(&["consume", "M", "--group", "g-members", "--count", "100", "--quiet"]);
    assert!(ok && out.trim() == "100", "{out}{err}");

    if netns {
        // The new master cut off from everyone: the three others are a majority of four.
        eprint!("{}", cluster.must(&["net", "isolate", "broker-a-4"]));
        let master = raftmq_testkit::wait_until(
            "a new master among nodes 1-3",
            std::time::Duration::from_secs(15),
            || async {
                let (ok, out, _) = cluster.cli(&["--json", "group", "members", "broker-a"]);
                let v: serde_json::Value = serde_json::from_str(&out).ok()?;
                let master = v["master_node_id"].as_u64()?;
                (ok && (1..=3).contains(&master)).then_some(master)
            },
        )
        .await;
        eprintln!("node 4 isolated: node {master} is master of the other three");
        let (ok, out, err) = cluster.cli(&["send", "M", "cut", "--count", "20"]);
        assert!(ok, "sends during the partition: {out}{err}");
        cluster.must(&["net", "heal"]);
        // Back as a slave, it catches up and takes the role again.
        raftmq_testkit::wait_until("node 4 master again", std::time::Duration::from_secs(15), || async {
            let (ok, _, _) = cluster.cli(&["group", "transfer-master", "broker-a", "--to", "4"]);
            ok.then_some(())
        })
        .await;
        // The NameServer lists it once its heartbeat gets through: its connection to the
        // NameServer may take a few seconds to recover from the partition.
        raftmq_testkit::wait_until(
            "node 4 routed as master",
            std::time::Duration::from_secs(15),
            || async {
                let (ok, out, _) = cluster.cli(&["--json", "cluster", "list"]);
                let v: serde_json::Value = serde_json::from_str(&out).ok()?;
                let listed = v.as_array()?.iter().any(|n| n["node_id"] == 4 && n["role"] == "master");
                (ok && listed).then_some(())
            },
        )
        .await;
    }

    // The master cannot be removed: a stable code, a hint, nothing changed.
    let (ok, out, err) = cluster.cli(&["group", "remove-node", "broker-a", "--node-id", "4"]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("UNSAFE_MEMBERSHIP_CHANGE") && err.contains("transfer-master"),
        "{err}"
    );
    assert_eq!(members(cluster), (BTreeSet::from([1, 2, 3, 4]), 4));

    // Handed back and removed, it leaves the routes.
    let (ok, out, err) = cluster.cli(&["group", "transfer-master", "broker-a"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cluster.cli(&["group", "remove-node", "broker-a", "--node-id", "4"]);
    assert!(ok, "{out}{err}");
    let (voters, master) = members(cluster);
    assert_eq!(voters, BTreeSet::from([1, 2, 3]));
    assert_ne!(master, 4);
    raftmq_testkit::wait_until(
        "node 4 leaves the routes",
        std::time::Duration::from_secs(10),
        || async {
            let (ok, out, _) = cluster.cli(&["--json", "cluster", "list"]);
            (ok && !out.contains(&client_addr)).then_some(())
        },
    )
    .await;
    cluster.must(&["stop", "broker-a-4"]);
    // Everything sent is there, once.
    let total = if netns { 120 } else { 100 };
    let (ok, out, err) = cluster.cli(&["consume", "M", "--count", &total.to_string(), "--quiet"]);
    assert!(ok && out.trim() == total.to_string(), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_leads_and_leaves_through_the_cli() {
    let cluster = ScriptCluster::up(1, &["broker-a"]);
    grow_lead_and_shrink(&cluster, false).await;

    // Planned master moves under a producer: nothing lost, no send failed.
    let (ok, out, err) = cluster.cli(&["drill", "--fault", "transfer", "--rounds", "3"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("acknowledged messages lost: 0") && out.contains("sends failed: 0;"),
        "{out}"
    );
    eprintln!("{out}");
}

/// As above with every node in a network namespace of its own, and the grown group's master
/// isolated by a real partition. Root only; one such cluster per machine (its bridge is fixed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_in_its_own_namespace_joins_survives_a_partition_and_leaves() {
    if !raftmq_testkit::runs_as_root(
        "a_fourth_node_in_its_own_namespace_joins_survives_a_partition_and_leaves",
        "it makes network namespaces",
    ) {
        return;
    }
    let cluster = ScriptCluster::start(
        1,
        &["broker-a"],
        &ScriptOptions {
            broker_extra: "fault-injection = true",
            up_flags: &["--netns"],
            ..Default::default()
        },
    );
    grow_lead_and_shrink(&cluster, true).await;
    a_group_joins_while_a_consumer_group_consumes(&cluster).await;
}

/// broker-b's three nodes start in the running cluster (`cluster.sh add`, one namespace each),
/// and topic G is extended onto them while a consumer group member (a `raftmq consume --group`
/// process started before) reads it: it gets every message, from both groups, unrestarted.
async fn a_group_joins_while_a_consumer_group_consumes(cluster: &ScriptCluster) {
    let (ok, out, err) = cluster.cli(&["topic", "create", "G", "--queues", "2", "--group", "broker-a"]);
    assert!(ok, "{out}{err}");
    let consumer = tokio::process::Command::new(raftmq_testkit::binary("raftmq"))
        .args([
            "--namesrv",
            &cluster.namesrv_list(),
            "consume",
            "G",
            "--group",
            "g-grow",
        ])
        .args(["--count", "100", "--idle-secs", "60", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the consumer");
    let (ok, out, err) = cluster.cli(&["send", "G", "a-only", "--count", "50"]);
    assert!(ok, "{out}{err}");

    let mut files = Vec::new();
    for (node, text) in raftmq_blackbox::group_configs("broker-b", &cluster.namesrv, "") {
        let file = cluster.home.path().join(format!("broker-b-{node}.toml"));
        std::fs::write(&file, text).expect("write broker-b's config");
        files.push(file.to_str().expect("utf-8 path").to_owned());
    }
    let mut add = vec!["add"];
    add.extend(files.iter().map(String::as_str));
    cluster.must(&add);
    let (ok, out, err) = cluster.cli(&[
        "cluster",
        "wait",
        "--expect",
        "broker-a:3,broker-b:3",
        "--timeout-secs",
        "30",
    ]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cluster.cli(&["topic", "update", "G", "--queues", "2", "--group", "broker-b"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cluster.cli(&["--json", "topic", "route", "G"]);
    assert!(ok && out.contains("broker-b"), "{out}{err}");
    let (ok, out, err) = cluster.cli(&["send", "G", "both", "--count", "50"]);
    assert!(ok, "{out}{err}");
    let done = tokio::time::timeout(std::time::Duration::from_secs(90), consumer.wait_with_output())
        .await
        .expect("the consumer finishes")
        .expect("consumer output");
    let (out, err) = (
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr),
    );
    assert!(done.status.success() && out.trim() == "100", "{out}{err}");
    // Some of the later sends went to broker-b's queues, and the consumer group read them.
    let (ok, out, err) = cluster.cli(&["--json", "group", "progress", "g-grow", "G"]);
    assert!(ok, "{out}{err}");
    let progress: serde_json::Value = serde_json::from_str(&out).expect("json");
    let on_b: u64 = progress
        .as_array()
        .expect("queues")
        .iter()
        .filter(|q| q["group"] == "broker-b")
        .map(|q| q["broker_offset"].as_u64().unwrap_or(0))
        .sum();
    assert!(on_b > 0, "no send went to broker-b: {out}");
}
