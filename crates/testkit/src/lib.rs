//! The shared cluster fixture: a broker group (and optionally a NameServer) started in-process on
//! 127.0.0.1 ports picked by the OS, with kill, graceful stop, restart on the same data
//! directory, and link cuts. Every cluster test uses it; waits have deadlines and say what they
//! waited for.

pub mod certs;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use raftmq_broker::config::Member;
use raftmq_broker::node::Listeners;
use raftmq_broker::{Broker, BrokerConfig, Faults};
use raftmq_common::{Error, ErrorCode};
use raftmq_namesrv::{NameServer, NamesrvConfig};
use raftmq_proto as pb;
use raftmq_proto::broker_client::BrokerClient;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// Turns on test logs when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Whether a test that needs root can run here; `why` says what it needs root for.
///
/// As root, yes. Without root on CI (`CI` set) the test fails with that reason: CI runs as root,
/// so a CI without it must not pass these tests silently. On a developer's machine without root
/// the test is reported as skipped: one line on stderr, and a line in the file that
/// `scripts/test.sh` names in `RAFTMQ_SKIPPED_FILE`, so its summary counts the test as skipped
/// rather than passed.
pub fn runs_as_root(test: &str, why: &str) -> bool {
    if effective_uid() == Some(0) {
        return true;
    }
    let reason = format!("{test} needs root ({why})");
    assert!(std::env::var_os("CI").is_none(), "{reason}, and CI runs without root");
    let line = format!("SKIPPED: {reason}; run it as root (scripts/test.sh under sudo)\n");
    // Past the test harness's capture, so the line is seen even when the test "passes".
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    if let Some(file) = std::env::var_os("RAFTMQ_SKIPPED_FILE") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(file) {
            let _ = f.write_all(line.as_bytes());
        }
    }
    false
}

/// The effective user id, from /proc (Linux).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Polls `check` until it returns `Some`, failing with `what` after `deadline`.
/// A listener on any free port, for a test node's metrics endpoint.
async fn metrics_listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a metrics port")
}

pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Binds a listener on an exact address, retrying while the old socket lingers.
async fn bind_again(addr: SocketAddr) -> TcpListener {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < end => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

/// Starts a test node: clients on `client`, and Raft there too unless the config gives Raft an
/// address of its own (bound here); metrics on a free port.
async fn start_broker(config: BrokerConfig, client: TcpListener, faults: Arc<Faults>) -> anyhow::Result<Broker> {
    let me = config.me();
    let raft = if me.raft_addr != me.client_addr {
        Some(bind_again(me.raft_addr.parse()?).await)
    } else {
        None
    };
    let listeners = Listeners {
        client,
        raft,
        metrics: Some(metrics_listener().await),
    };
    Broker::start_with(config, listeners, faults).await
}

/// How long a test waits for a group to elect a master.
pub const ELECTION: Duration = Duration::from_secs(10);
/// How long a test waits for a node to catch up with the master.
pub const CATCH_UP: Duration = Duration::from_secs(10);

/// A broker group of N nodes in this process.
pub struct Group {
    pub dir: TempDir,
    pub faults: Arc<Faults>,
    pub configs: Vec<BrokerConfig>,
    nodes: Vec<Option<Broker>>,
    pub namesrv: Option<NameServer>,
}

impl Group {
    /// Starts `n` nodes (ids 1..=n) and a NameServer they heartbeat; `tune` adjusts every
    /// node's config before start.
    pub async fn start(n: u64, tune: impl Fn(&mut BrokerConfig)) -> Group {
        let namesrv_config = NamesrvConfig {
            listen: "127.0.0.1:0".into(),
            scan_interval_ms: 100,
            ..Default::default()
        };
        let namesrv = NameServer::start(&namesrv_config).await.expect("start NameServer");
        let addr = namesrv.addr().to_string();
        let mut group = Self::start_named(n, "broker-a", &addr, tune).await;
        group.namesrv = Some(namesrv);
        group
    }

    /// Starts three nodes tuned by `tune`, waits for a master and creates topic `T` with one
    /// queue; returns the group and the master.
    pub async fn start_with_topic_t(tune: impl Fn(&mut BrokerConfig)) -> (Group, u64) {
        let group = Group::start(3, tune).await;
        let master = group.wait_for_master(ELECTION).await;
        group.create_topic(master, "T", 1).await;
        (group, master)
    }

    /// Creates (or updates) a read-write topic with `queues` queues through node `id`.
    pub async fn create_topic(&self, id: u64, name: &str, queues: u32) {
        self.client(id)
            .await
            .upsert_topic(pb::UpsertTopicRequest {
                topic: Some(topic(name, queues)),
            })
            .await
            .expect("create topic");
    }

    /// Starts `n` nodes of group `name` that heartbeat an existing NameServer.
    pub async fn start_named(n: u64, name: &str, namesrv: &str, tune: impl Fn(&mut BrokerConfig)) -> Group {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        }
        let members: Vec<Member> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let addr = l.local_addr().expect("addr").to_string();
                Member {
                    node_id: i as u64 + 1,
                    raft_addr: addr.clone(),
                    client_addr: addr,
                }
            })
            .collect();
        let configs: Vec<BrokerConfig> = (1..=n)
            .map(|id| {
                let mut c = BrokerConfig {
                    group: name.to_owned(),
                    node_id: id,
                    members: members.clone(),
                    data_dir: dir.path().join(format!("node-{id}")),
                    namesrv: vec![namesrv.to_owned()],
                    namesrv_heartbeat_ms: 200,
                    // Any free port: `Group::metrics_addr` says which.
                    metrics_addr: "127.0.0.1:0".into(),
                    ..Default::default()
                };
                tune(&mut c);
                c.validate().expect("valid test config");
                c
            })
            .collect();
        let faults = Faults::new();
        let mut nodes = Vec::new();
        for (config, listener) in configs.iter().zip(listeners) {
            let broker = start_broker(config.clone(), listener, faults.clone())
                .await
                .expect("start broker");
            nodes.push(Some(broker));
        }
        Group {
            dir,
            faults,
            configs,
            nodes,
            namesrv: None,
        }
    }

    /// The NameServer this fixture started (panics for `start_named` groups).
    pub fn namesrv_addr(&self) -> String {
        self.namesrv
            .as_ref()
            .expect("this group started its own NameServer")
            .addr()
            .to_string()
    }

    /// A client of the NameServer this fixture started.
    pub async fn namesrv_client(&self) -> raftmq_proto::name_server_client::NameServerClient<Channel> {
        raftmq_proto::name_server_client::NameServerClient::connect(format!("http://{}", self.namesrv_addr()))
            .await
            .expect("connect to the NameServer")
    }

    pub fn ids(&self) -> Vec<u64> {
        (1..=self.configs.len() as u64).collect()
    }

    pub fn addr(&self, id: u64) -> String {
        self.configs[id as usize - 1].me().client_addr.clone()
    }

    /// Where a running node serves its metrics.
    pub fn metrics_addr(&self, id: u64) -> std::net::SocketAddr {
        self.node(id).metrics_addr().expect("test nodes serve metrics")
    }

    pub fn node(&self, id: u64) -> &Broker {
        self.nodes[id as usize - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is down"))
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.nodes[id as usize - 1].is_some()
    }

    pub fn up(&self) -> Vec<u64> {
        self.ids().into_iter().filter(|id| self.is_up(*id)).collect()
    }

    pub async fn client(&self, id: u64) -> BrokerClient<Channel> {
        BrokerClient::connect(format!("http://{}", self.addr(id)))
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20)
    }

    /// Waits until exactly one running node is master and every other running node of its
    /// membership follows it; returns the master's id.
    pub async fn wait_for_master(&self, deadline: Duration) -> u64 {
        wait_until("one master that every running node follows", deadline, || async {
            let up = self.up();
            let leaders: Vec<u64> = up
                .iter()
                .copied()
                .filter(|id| self.node(*id).raft().metrics().borrow().state == ServerState::Leader)
                .collect();
            let [leader] = leaders[..] else { return None };
            let (term, members) = {
                let m = self.node(leader).raft().metrics().borrow().clone();
                let members: Vec<u64> = m.membership_config.membership().nodes().map(|(id, _)| *id).collect();
                (m.current_term, members)
            };
            let agreed = up.iter().filter(|id| members.contains(id)).all(|id| {
                let m = self.node(*id).raft().metrics().borrow().clone();
                m.current_leader == Some(leader) && m.current_term == term
            });
            agreed.then_some(leader)
        })
        .await
    }

    pub fn term(&self, id: u64) -> u64 {
        self.node(id).raft().metrics().borrow().current_term
    }

    pub fn applied(&self, id: u64) -> u64 {
        self.node(id).reader().applied_index()
    }

    /// Waits until every running node of `id`'s membership has applied at least what `id` has
    /// applied.
    pub async fn wait_caught_up(&self, id: u64, deadline: Duration) {
        let target = self.applied(id);
        let members: Vec<u64> = {
            let m = self.node(id).raft().metrics().borrow().clone();
            m.membership_config.membership().nodes().map(|(id, _)| *id).collect()
        };
        for other in self.up().into_iter().filter(|n| members.contains(n)) {
            wait_until(&format!("node {other} applies up to {target}"), deadline, || async {
                (self.applied(other) >= target).then_some(())
            })
            .await;
        }
    }

    /// Sends numbered messages to topic `T` queue 0 one at a time, to whichever node is master,
    /// following NOT_MASTER; returns acknowledged offset -> body. Sends whose outcome is unknown
    /// are retried with a new number, so only acknowledged ones are counted.
    pub async fn send_stream(&self, from: usize, count: usize) -> std::collections::BTreeMap<u64, Vec<u8>> {
        let mut acked = std::collections::BTreeMap::new();
        let mut i = from;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut target = self.up()[0];
        while acked.len() < count {
            assert!(
                Instant::now() < deadline,
                "sends did not resume: {} of {count} acknowledged",
                acked.len()
            );
            let body = format!("message-{i:06}").into_bytes();
            i += 1;
            let Ok(mut c) = BrokerClient::connect(format!("http://{}", self.addr(target))).await else {
                target = self.next_up(target);
                continue;
            };
            match c.send(send_request("T", 0, vec![message(body.clone(), "")])).await {
                Ok(reply) => {
                    let r = &reply.get_ref().results[0];
                    assert!(
                        acked.insert(r.queue_offset, body).is_none(),
                        "offset {} acknowledged twice",
                        r.queue_offset
                    );
                }
                Err(status) => {
                    let leader = Error::from_status(&status)
                        .leader
                        .and_then(|addr| self.ids().into_iter().find(|id| self.addr(*id) == addr));
                    match leader {
                        Some(leader) if self.is_up(leader) => target = leader,
                        _ => {
                            target = self.next_up(target);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
        }
        acked
    }

    /// The running node after `current`, in id order, wrapping around.
    fn next_up(&self, current: u64) -> u64 {
        let up = self.up();
        let pos = up.iter().position(|id| *id == current).map(|p| p + 1).unwrap_or(0);
        up[pos % up.len()]
    }

    /// Waits until `node` has purged its log past `index` (after a snapshot).
    pub async fn wait_purged_past(&self, node: u64, index: u64) {
        wait_until(
            &format!("node {node} purged its log past entry {index}"),
            Duration::from_secs(20),
            || async {
                let m = self.node(node).raft().metrics().borrow().clone();
                m.purged.filter(|p| p.index > index).map(|_| ())
            },
        )
        .await;
    }

    /// Starts a new node (id: one past the highest so far) configured like node 1 but with
    /// `join = true`: it waits to be added by the group's master. Returns its id.
    pub async fn start_joining_node(&mut self) -> u64 {
        let id = self.configs.len() as u64 + 1;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let mut config = self.configs[0].clone();
        config.node_id = id;
        config.join = true;
        config.members = vec![Member {
            node_id: id,
            raft_addr: addr.clone(),
            client_addr: addr,
        }];
        config.data_dir = self.dir.path().join(format!("node-{id}"));
        config.validate().expect("valid joining config");
        let broker = start_broker(config.clone(), listener, self.faults.clone())
            .await
            .expect("start joining broker");
        self.configs.push(config);
        self.nodes.push(Some(broker));
        id
    }

    /// Removes a stopped node's data directory, as a lost disk would.
    pub async fn wipe(&self, id: u64) {
        assert!(!self.is_up(id), "node {id} is running");
        let dir = self.configs[id as usize - 1].data_dir.clone();
        wait_until(
            &format!("node {id}'s data removed"),
            Duration::from_secs(10),
            || async { std::fs::remove_dir_all(&dir).ok() },
        )
        .await;
    }

    /// Stops a node as SIGKILL would: no unregistering, no draining.
    pub async fn kill(&mut self, id: u64) {
        let node = self.nodes[id as usize - 1]
            .take()
            .unwrap_or_else(|| panic!("node {id} is already down"));
        node.crash().await;
    }

    /// Stops a node cleanly.
    pub async fn stop(&mut self, id: u64) {
        let node = self.nodes[id as usize - 1]
            .take()
            .unwrap_or_else(|| panic!("node {id} is already down"));
        node.shutdown().await.expect("clean shutdown");
    }

    /// Starts a stopped node again on its data directory and port.
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        assert!(!self.is_up(id), "node {id} is running");
        let config = self.configs[id as usize - 1].clone();
        // A killed node's store may still be closing in the background: retry briefly.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let listener = bind_again(self.addr(id).parse().expect("addr")).await;
            match start_broker(config.clone(), listener, self.faults.clone()).await {
                Ok(broker) => {
                    self.nodes[id as usize - 1] = Some(broker);
                    return Ok(());
                }
                Err(e) if format!("{e:#}").contains("lock") && Instant::now() < end => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens a stopped node's database directly (to damage it on purpose), waiting while the
    /// node's last background thread lets go of it.
    pub async fn open_db(&self, id: u64) -> std::sync::Arc<raftmq_store::db::Db> {
        assert!(!self.is_up(id), "node {id} is running");
        let dir = self.configs[id as usize - 1].data_dir.join("db");
        wait_until(
            &format!("node {id}'s database is free"),
            Duration::from_secs(10),
            || async { raftmq_store::db::Db::open(&dir).ok() },
        )
        .await
    }

    /// Requires every acknowledged message (queue offset -> body) of queue 0 of topic T to be on
    /// node `id`, byte for byte.
    pub async fn check_present<'a>(&self, id: u64, acked: impl IntoIterator<Item = (u64, &'a [u8])>) {
        let mut c = self.client(id).await;
        for (offset, body) in acked {
            let got = c
                .get_message(pb::GetMessageRequest {
                    topic: "T".into(),
                    queue_id: 0,
                    offset,
                    msg_id: String::new(),
                })
                .await
                .unwrap_or_else(|e| panic!("node {id}: acknowledged offset {offset} is missing: {e}"))
                .into_inner();
            assert_eq!(got.body, body, "node {id} offset {offset}");
        }
    }

    /// Stops every node and the NameServer cleanly.
    pub async fn shutdown(mut self) {
        for id in self.up() {
            self.stop(id).await;
        }
        if let Some(ns) = self.namesrv.take() {
            ns.shutdown().await.expect("NameServer shutdown");
        }
    }
}

/// The stable code of a failed call.
/// A send of messages to one queue of a topic.
pub fn send_request(topic: &str, queue_id: u32, messages: Vec<pb::Message>) -> pb::SendRequest {
    pb::SendRequest {
        topic: topic.into(),
        queue_id,
        messages,
    }
}

/// A queue's bounds as one node reports them.
pub async fn queue_offsets(client: &mut BrokerClient<Channel>, topic: &str, queue_id: u32) -> pb::QueueOffsetsReply {
    let request = pb::QueueOffsetsRequest {
        topic: topic.into(),
        queue_id,
    };
    client
        .get_queue_offsets(request)
        .await
        .expect("queue offsets")
        .into_inner()
}

pub fn code(status: &tonic::Status) -> Option<ErrorCode> {
    raftmq_common::code::answered(status).then(|| Error::from_status(status).code)
}

/// A topic with `queues` read and write queues.
pub fn topic(name: &str, queues: u32) -> pb::TopicConfig {
    pb::TopicConfig {
        name: name.into(),
        write_queues: queues,
        read_queues: queues,
        permission: pb::Permission::ReadWrite as i32,
    }
}

/// A message with a body and a tag.
pub fn message(body: impl Into<Vec<u8>>, tags: &str) -> pb::Message {
    pb::Message {
        topic: String::new(),
        tags: tags.into(),
        keys: String::new(),
        properties: Default::default(),
        body: body.into(),
        born_timestamp_ms: 0,
    }
}

/// Path of a binary built by `cargo build --bins` in the same target directory as the running
/// test (`scripts/test.sh` builds them first).
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run scripts/test.sh (it builds the binaries first) or `cargo build --bins`",
        path.display()
    );
    path
}

/// Runs `raftmq` with arguments; returns (success, stdout, stderr).
pub async fn run_cli(namesrv: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(binary("raftmq"))
        .arg("--namesrv")
        .arg(namesrv)
        .args(args)
        .output()
        .await
        .expect("run raftmq");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `raftmq topic create TOPIC --queues N`, retried until the NameServers know a group to create
/// it in; returns what it printed.
pub async fn cli_create_topic(namesrv: &str, topic: &str, queues: u32) -> String {
    let queues = queues.to_string();
    wait_until(&format!("topic {topic} created"), Duration::from_secs(10), || async {
        let (ok, out, _) = run_cli(namesrv, &["topic", "create", topic, "--queues", &queues]).await;
        ok.then_some(out)
    })
    .await
}

/// `GET /metrics` from a node's metrics endpoint: the body, after checking the answer is 200 in
/// the OpenMetrics text format.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let (head, body) = http_get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    // Chunked or not, the metrics end with OpenMetrics' `# EOF`.
    assert!(body.contains("# EOF"), "{body}");
    body
}

/// A plain HTTP/1.1 `GET` (the connection closed after it): the answer's head (status line and
/// headers) and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    http_request(addr, "GET", path, None).await
}

/// A plain HTTP/1.1 request, with a JSON body when given: the answer's head and body (a chunked
/// body is put back together).
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = json.unwrap_or("");
    let content = if json.is_some() {
        format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{content}Connection: close\r\n\r\n{body}");
    stream.write_all(request.as_bytes()).await.expect("send the request");
    // Read up to the end of the body: some servers (ChromeDriver) say `Connection: close` and
    // then wait for the client to close.
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let (head, body) = loop {
        let n = stream.read(&mut buf).await.expect("read the answer");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let lower = head.to_ascii_lowercase();
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let complete = match length {
                Some(len) => body.len() >= len,
                None if lower.contains("transfer-encoding: chunked") => {
                    body.contains("\r\n0\r\n") || body.starts_with("0\r\n")
                }
                None => n == 0,
            };
            if complete || n == 0 {
                break (head.to_owned(), body.to_owned());
            }
        }
        assert!(n > 0, "the connection closed before the answer's head");
    };
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body.as_str();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body
    };
    (head, body)
}

/// The value of the first sample of `series` (`name` or `name{a="x",b="y"}`) in a scrape: a
/// sample of that name whose labels include the ones given, in any order; `None` when there is
/// none.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    let (name, wanted) = split_series(series);
    scrape.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (head, value) = line.rsplit_once(' ')?;
        let (n, labels) = split_series(head);
        (n == name && wanted.iter().all(|w| labels.contains(w)))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// `name{a="x",b="y"}` as its name and its `a="x"` pairs.
fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, rest)) => {
            let labels = rest.trim_end_matches('}');
            (name, labels.split(',').filter(|p| !p.is_empty()).collect())
        }
        None => (series, Vec::new()),
    }
}
