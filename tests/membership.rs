//! Membership changes of a real cluster, through the CLI: a fourth broker process started with
//! `join = true` is added, takes over as master, is refused removal while master, and leaves;
//! the failover drill moves the master role by transfer with no failed send.

use std::collections::BTreeSet;

use raftmq_blackbox::ScriptCluster;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_leads_and_leaves_through_the_cli() {
    let cluster = ScriptCluster::up(1, &["broker-a"]);
    let (ok, out, err) = cluster.cli(&["topic", "create", "M", "--queues", "2"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cluster.cli(&["send", "M", "before", "--count", "50"]);
    assert!(ok, "{out}{err}");
    assert_eq!(members(&cluster).0, BTreeSet::from([1, 2, 3]));

    // Node 4: its own config, join = true, listing only itself.
    let (client, raft, metrics) = (free_port(), free_port(), free_port());
    let list = cluster
        .namesrv
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        cluster.config.join("broker-a-4.toml"),
        format!(
            "group = \"broker-a\"\nnode-id = 4\njoin = true\nnamesrv = [{list}]\nnamesrv-heartbeat-ms = 500\n\
             metrics-addr = \"127.0.0.1:{metrics}\"\n\n[[members]]\nnode-id = 4\nraft-addr = \"127.0.0.1:{raft}\"\n\
             client-addr = \"127.0.0.1:{client}\"\n"
        ),
    )
    .expect("write node 4's config");
    cluster.must(&["start", "broker-a-4"]);
    let (raft_addr, client_addr) = (format!("127.0.0.1:{raft}"), format!("127.0.0.1:{client}"));
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
    assert_eq!(members(&cluster).0, BTreeSet::from([1, 2, 3, 4]));

    // It takes over as master, and serves what was sent before it joined.
    let (ok, out, err) = cluster.cli(&["group", "transfer-master", "broker-a", "--to", "4"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("node 4"), "{out}");
    assert_eq!(members(&cluster).1, 4);
    let (ok, out, err) = cluster.cli(&["send", "M", "after", "--count", "50"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cluster.cli(&["consume", "M", "--group", "g-members", "--count", "100", "--quiet"]);
    assert!(ok && out.trim() == "100", "{out}{err}");

    // The master cannot be removed: a stable code, a hint, nothing changed.
    let (ok, out, err) = cluster.cli(&["group", "remove-node", "broker-a", "--node-id", "4"]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("UNSAFE_MEMBERSHIP_CHANGE") && err.contains("transfer-master"),
        "{err}"
    );
    assert_eq!(members(&cluster), (BTreeSet::from([1, 2, 3, 4]), 4));

    // Handed back and removed, it leaves the routes.
    let (ok, out, err) = cluster.cli(&["group", "transfer-master", "broker-a"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cluster.cli(&["group", "remove-node", "broker-a", "--node-id", "4"]);
    assert!(ok, "{out}{err}");
    let (voters, master) = members(&cluster);
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

    // Planned master moves under a producer: nothing lost, no send failed.
    let (ok, out, err) = cluster.cli(&["drill", "--fault", "transfer", "--rounds", "3"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("acknowledged messages lost: 0") && out.contains("sends failed: 0;"),
        "{out}"
    );
    eprintln!("{out}");
}
