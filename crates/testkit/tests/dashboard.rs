//! `raftmq dashboard`: the page and its JSON API against a running group, a message looked up
//! three ways, and a killed master replaced on the cluster view within two seconds.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use raftmq_testkit::{binary, http_get, run_cli, wait_until, Group, ELECTION};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts the dashboard against `namesrv` on a free port; returns the process and its address.
async fn start(namesrv: &str) -> (tokio::process::Child, SocketAddr) {
    let mut child = tokio::process::Command::new(binary("raftmq"))
        .args(["--namesrv", namesrv, "dashboard", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start raftmq dashboard");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the dashboard prints its address")
        .unwrap()
        .expect("a line");
    let addr = line
        .trim()
        .strip_prefix("raftmq dashboard at http://")
        .and_then(|a| a.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (child, addr.parse().expect("an address"))
}

async fn json(addr: SocketAddr, path: &str) -> (String, serde_json::Value) {
    let (head, body) = http_get(addr, path).await;
    assert!(
        head.to_ascii_lowercase().contains("content-type: application/json"),
        "{head}"
    );
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (head, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_topics_groups_and_messages_live() {
    let mut group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    let ns = group.namesrv_addr();
    wait_until("topic created", Duration::from_secs(10), || async {
        run_cli(&ns, &["topic", "create", "Orders", "--queues", "2"])
            .await
            .0
            .then_some(())
    })
    .await;
    let (ok, out, err) = run_cli(&ns, &["send", "Orders", "first order", "--keys", "order-7"]).await;
    assert!(ok, "{err}");
    // "sent ID to GROUP/QUEUE offset N"
    let id = out.split_whitespace().nth(1).expect("an id").to_owned();
    let (ok, _, err) = run_cli(&ns, &["consume", "Orders", "--group", "billing", "--count", "1"]).await;
    assert!(ok, "{err}");

    let (_dashboard, addr) = start(&ns).await;
    let (head, page) = http_get(addr, "/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(page.contains("<title>raftmq dashboard</title>") && page.contains("/api/cluster"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    let (_, cluster) = json(addr, "/api/cluster").await;
    let g = &cluster["groups"][0];
    assert_eq!(g["group"], "broker-a", "{cluster}");
    assert_eq!(g["master_node_id"], master, "{cluster}");
    assert_eq!(g["nodes"].as_array().unwrap().len(), 3, "{cluster}");

    let (_, topics) = json(addr, "/api/topics").await;
    let orders = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "Orders")
        .unwrap_or_else(|| panic!("{topics}"))
        .clone();
    assert_eq!(orders["stored"], 1, "{orders}");
    assert_eq!(orders["queues_per_group"]["broker-a"], 2, "{orders}");

    let (_, groups) = wait_until("billing's offset committed", Duration::from_secs(10), || async {
        let (h, g) = json(addr, "/api/groups").await;
        g["groups"]
            .as_array()?
            .iter()
            .any(|x| x["consumer_group"] == "billing" && x["lag"] == 0)
            .then_some((h, g))
    })
    .await;
    assert!(groups.to_string().contains("\"topic\":\"Orders\""), "{groups}");

    // A message by id, by key, by queue and offset; bad lookups answer their code.
    let (_, by_id) = json(addr, &format!("/api/message?id={id}")).await;
    assert_eq!(by_id["messages"][0]["body"], "first order", "{by_id}");
    let (_, by_key) = json(addr, "/api/message?topic=Orders&key=order-7").await;
    assert_eq!(by_key["messages"][0]["msg_id"], id.as_str(), "{by_key}");
    let queue = by_id["messages"][0]["queue_id"].as_u64().unwrap();
    let offset = by_id["messages"][0]["queue_offset"].as_u64().unwrap();
    let (_, by_offset) = json(
        addr,
        &format!("/api/message?topic=Orders&group=broker-a&queue={queue}&offset={offset}"),
    )
    .await;
    assert_eq!(by_offset["messages"][0]["msg_id"], id.as_str());
    let (head, missing) = json(addr, "/api/message?topic=Nope&key=k").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(missing["code"], "TOPIC_NOT_FOUND");
    let (head, bad) = json(addr, "/api/message").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(bad["code"], "INVALID_ARGUMENT");

    // The master dies: the cluster view names the new one within two seconds.
    group.kill(master).await;
    let killed = Instant::now();
    let new = wait_until("the dashboard shows a new master", Duration::from_secs(5), || async {
        let (_, c) = json(addr, "/api/cluster").await;
        let m = c["groups"][0]["master_node_id"].as_u64()?;
        (m != 0 && m != master).then_some(m)
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "the new master {new} showed after {took:?}"
    );
    group.shutdown().await;
}
