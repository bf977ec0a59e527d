//! `raftmq dashboard`: the page and its JSON API against a running group, a message looked up
//! three ways, and a killed master replaced on the cluster view within two seconds; and the page
//! itself in headless Chromium (driven through ChromeDriver): each tab rendered, screenshots
//! saved, and a master killed while the page is open shown replaced within two seconds.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use raftmq_testkit::{binary, cli_create_topic, http_get, http_request, run_cli, wait_until, Group, ELECTION};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts the dashboard against `namesrv` on a free port; returns the process and its address.
async fn start(namesrv: &str) -> (tokio::process::Child, SocketAddr) {
    start_with(namesrv, &[]).await
}

async fn start_with(namesrv: &str, extra: &[&str]) -> (tokio::process::Child, SocketAddr) {
    let mut child = tokio::process::Command::new(binary("raftmq"))
        .args(["--namesrv", namesrv, "dashboard", "--listen", "127.0.0.1:0"])
        .args(extra)
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

/// A group of three with topic `Orders` (2 queues), `count` messages `body` with key `key` sent,
/// and `consumed` of them taken by consumer group `billing`: the group, its master, the
/// NameServer, and what the send printed.
async fn orders(body: &str, key: &str, count: u32, consumed: u32) -> (Group, u64, String, String) {
    let group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(ELECTION).await;
    let ns = group.namesrv_addr();
    cli_create_topic(&ns, "Orders", 2).await;
    let count = count.to_string();
    let (ok, sent, err) = run_cli(&ns, &["send", "Orders", body, "--keys", key, "--count", &count]).await;
    assert!(ok, "{err}");
    let consumed = consumed.to_string();
    let (ok, _, err) = run_cli(&ns, &["consume", "Orders", "--group", "billing", "--count", &consumed]).await;
    assert!(ok, "{err}");
    (group, master, ns, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_topics_groups_and_messages_live() {
    let (mut group, master, ns, out) = orders("first order", "order-7", 1, 1).await;
    // "sent ID to GROUP/QUEUE offset N"
    let id = out.split_whitespace().nth(1).expect("an id").to_owned();

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
    let disk = g["nodes"][0]["disk_used_percent"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=100.0).contains(&disk), "each node's disk: {cluster}");

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
    let billing = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["consumer_group"] == "billing")
        .unwrap();
    assert!(billing["members"].is_array(), "{billing}");

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

    // Changes: refused by a read-only dashboard, made by one started with --admin.
    let post = |addr: SocketAddr, path: &'static str| async move {
        let (head, body) = http_request(addr, "POST", path, None).await;
        (
            head,
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
        )
    };
    let (_, config) = json(addr, "/api/config").await;
    assert_eq!(config["admin"], false);
    let (head, refused) = post(addr, "/api/topics?topic=Made&queues=3").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(refused["code"], "NO_PERMISSION");
    let (_admin, admin_addr) = start_with(&ns, &["--admin"]).await;
    let (_, config) = json(admin_addr, "/api/config").await;
    assert_eq!(config["admin"], true);
    let (head, made) = post(admin_addr, "/api/topics?topic=Made&queues=3").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head} {made}");
    assert_eq!(made["groups"][0], "broker-a", "{made}");
    wait_until("the new topic is listed", Duration::from_secs(10), || async {
        let (_, t) = json(admin_addr, "/api/topics").await;
        t["topics"]
            .as_array()?
            .iter()
            .any(|x| x["topic"] == "Made" && x["queues_per_group"]["broker-a"] == 3)
            .then_some(())
    })
    .await;
    let (head, reset) = post(admin_addr, "/api/offsets?group=billing&topic=Orders&to=earliest").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head} {reset}");
    let (_, groups) = json(admin_addr, "/api/groups").await;
    let billing = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["consumer_group"] == "billing")
        .unwrap();
    assert_eq!(
        billing["lag"], 1,
        "billing reads the order again after a reset: {billing}"
    );
    let (head, resent) = post(admin_addr, "/api/dead-letters?group=billing").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head} {resent}");
    assert_eq!(resent["resent"], 0);
    let (head, missing) = post(admin_addr, "/api/offsets?group=billing").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(missing["code"], "INVALID_ARGUMENT");

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

/// A headless Chromium session through ChromeDriver's WebDriver HTTP API.
struct Browser {
    driver: tokio::process::Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        for (program, package) in [("chromium", "chromium"), ("chromedriver", "chromium-driver")] {
            assert!(
                std::process::Command::new("sh")
                    .args(["-c", &format!("command -v {program}")])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false),
                "{program} is missing; scripts/install-deps.sh installs Debian's {package}"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until("chromedriver answers", Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        // The flags this machine kind needs: root, no GPU, no network beyond loopback.
        let args = serde_json::json!([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,800",
            format!("--user-data-dir={}", profile.path().display()),
        ]);
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let (_, body) = http_request(addr, "POST", "/session", Some(&capabilities.to_string())).await;
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned();
        Browser {
            driver,
            addr,
            session,
            _profile: profile,
        }
    }

    async fn call(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let path = format!("/session/{}{path}", self.session);
        let body = body.to_string();
        let json = (method == "POST").then_some(body.as_str());
        let (_, answer) = http_request(self.addr, method, &path, json).await;
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert!(v["value"]["error"].is_null(), "{method} {path}: {v}");
        v["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call("POST", "/url", serde_json::json!({ "url": url })).await;
    }

    /// The text of the first element matching `selector` (empty when there is none).
    async fn text(&self, selector: &str) -> String {
        let script = "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';";
        let v = self
            .call(
                "POST",
                "/execute/sync",
                serde_json::json!({"script": script, "args": [selector]}),
            )
            .await;
        v.as_str().unwrap_or("").to_owned()
    }

    /// Saves a PNG screenshot of the page.
    async fn screenshot(&self, path: &std::path::Path) {
        let v = self.call("GET", "/screenshot", serde_json::Value::Null).await;
        let png = decode_base64(v.as_str().expect("base64"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).expect("write the screenshot");
    }

    async fn close(mut self) {
        self.call("DELETE", "", serde_json::Value::Null).await;
        let _ = self.driver.kill().await;
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_real_browser_shows_every_tab_and_a_new_master_within_two_seconds() {
    let (mut group, master, ns, _) = orders("an order", "order-9", 5, 2).await;
    let (_dashboard, addr) = start(&ns).await;
    let browser = Browser::start().await;
    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    browser.open(&format!("http://{addr}/#cluster")).await;
    let expected = format!("master: node {master}");
    let master_line = wait_until("the cluster tab names the master", Duration::from_secs(10), || async {
        let t = browser.text("[data-master=\"broker-a\"]").await;
        t.contains(&expected).then_some(t)
    })
    .await;
    assert!(master_line.contains(&group.addr(master)), "{master_line}");
    let table = browser.text("#cluster-body table").await;
    assert_eq!(table.matches("127.0.0.1:").count(), 3, "three nodes listed: {table}");
    browser.screenshot(&shots.join("cluster.png")).await;

    browser.open(&format!("http://{addr}/#topics")).await;
    let topics = wait_until("the topics tab lists Orders", Duration::from_secs(10), || async {
        let t = browser.text("#topics-body").await;
        t.contains("Orders").then_some(t)
    })
    .await;
    assert!(topics.contains("broker-a: 2"), "{topics}");
    browser.screenshot(&shots.join("topics.png")).await;

    browser.open(&format!("http://{addr}/#groups")).await;
    wait_until("the groups tab lists billing", Duration::from_secs(10), || async {
        browser.text("#groups-body").await.contains("billing").then_some(())
    })
    .await;
    browser.screenshot(&shots.join("groups.png")).await;

    // The page stays open on the cluster tab while the master dies.
    browser.open(&format!("http://{addr}/#cluster")).await;
    wait_until("the cluster tab is back", Duration::from_secs(10), || async {
        browser
            .text("[data-master=\"broker-a\"]")
            .await
            .contains(&expected)
            .then_some(())
    })
    .await;
    group.kill(master).await;
    let killed = Instant::now();
    let now_shown = wait_until("the page shows a new master", Duration::from_secs(10), || async {
        let t = browser.text("[data-master=\"broker-a\"]").await;
        (t.contains("master: node") && !t.contains(&expected)).then_some(t)
    })
    .await;
    let took = killed.elapsed();
    browser.screenshot(&shots.join("after-failover.png")).await;
    assert!(
        took <= Duration::from_secs(2),
        "the page showed {now_shown:?} {took:?} after the kill"
    );
    browser.close().await;
    group.shutdown().await;
}
