//! The official Apache RocketMQ 5 clients, unmodified, against real clusters started by
//! `scripts/cluster.sh`:
//!
//! - Python (PyPI `rocketmq-python-client` 5.1.2, installed by `scripts/install-deps.sh`):
//!   sends, tag filters, a 4 MiB body, POP receives with invisibility, acknowledgements and
//!   stale receipt handles, a push consumer with redelivery, the dead-letter topic, transactions
//!   (commit, rollback, checks answered by its TransactionChecker), FIFO order per message group
//!   through a master kill, a master
//!   killed while the producer sends, and deliveries in flight across a master kill
//!   (`tests/rocketmq5/official_client.py`);
//! - Rust (crates.io `rocketmq` 5.0.0): producer and simple consumer
//!   (`tests/rocketmq5/rust-client`, built by the test);
//! - Node.js (npm `rocketmq-client-nodejs` 1.0.8, installed by `scripts/install-deps.sh`):
//!   producer and simple consumer (`tests/rocketmq5/node-client`).
//!
//! These tests start the cluster, run the client side, and do the cluster-side parts (killing
//! the master, reading the dead-letter topic with raftmq's own tools).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raftmq_blackbox::{group_info, ScriptCluster};
use raftmq_client::{Admin, Client, ClientConfig};
use raftmq_testkit::wait_until;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rocketmq5/official_client.py")
}

/// Fails with what to do when the official client is not installed (never skips: a skipped
/// check would pass on a machine that cannot run it).
fn require_client() {
    let out = Command::new("python3")
        .args([
            "-c",
            "import rocketmq; from rocketmq import Producer, SimpleConsumer, PushConsumer",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the official RocketMQ 5 Python client is missing; install it with scripts/install-deps.sh \
         (pip install rocketmq-python-client==5.1.2): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a mode of the client script to its end; returns its RESULT line's JSON.
fn run_client(args: &[&str], deadline: Duration) -> String {
    let mut command = Command::new("python3");
    command.arg(script()).args(args);
    run_check(command, &format!("official_client.py {}", args.join(" ")), deadline)
}

fn result_line(stdout: &str) -> String {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in:\n{stdout}"))
        .to_owned()
}

fn create_topic(cluster: &ScriptCluster, topic: &str) {
    let (ok, out, err) = cluster.cli(&["topic", "create", topic, "--queues", "4"]);
    assert!(ok, "topic create {topic}: {out}{err}");
}

/// A broker node's client address (any node serves the protocol).
fn some_broker_addr(cluster: &ScriptCluster, node: u64) -> String {
    let text = std::fs::read_to_string(cluster.config.join(format!("broker-a-{node}.toml"))).expect("config");
    let mine = text
        .split("[[members]]")
        .skip(1)
        .find(|m| m.contains(&format!("node-id = {node}\n")))
        .expect("own member entry");
    let line = mine
        .lines()
        .find(|l| l.starts_with("client-addr"))
        .expect("client-addr");
    line.split('"').nth(1).expect("quoted").to_owned()
}

#[test]
fn sends_filters_invisibility_and_stale_handles_through_a_nameserver_and_a_broker() {
    require_client();
    let cluster = ScriptCluster::up(1, &["broker-a"]);
    create_topic(&cluster, "V5Basics");
    create_topic(&cluster, "V5Direct");
    let result = run_client(&["basics", &cluster.namesrv[0], "V5Basics"], Duration::from_secs(180));
    assert!(result.contains("\"redelivered_attempt\": 2"), "{result}");
    // A broker node works as the access point too, and not only the master: node 3 answers
    // QueryRoute itself and forwards writes when it is a slave.
    let broker = some_broker_addr(&cluster, 3);
    run_client(&["basics", &broker, "V5Direct"], Duration::from_secs(180));
}

#[test]
fn a_sql92_subscription_gets_exactly_its_messages_and_a_bad_one_is_refused() {
    require_client();
    let cluster = ScriptCluster::up(1, &["broker-a"]);
    create_topic(&cluster, "V5Sql");
    let result = run_client(&["sql", &cluster.namesrv[0], "V5Sql"], Duration::from_secs(120));
    assert!(result.contains("\"matched\": "), "{result}");
}

#[test]
fn a_delay_message_arrives_at_its_time_and_a_recalled_one_never() {
    require_client();
    let cluster = ScriptCluster::up(1, &["broker-a"]);
    create_topic(&cluster, "V5Delay");
    let result = run_client(&["delay", &cluster.namesrv[0], "V5Delay"], Duration::from_secs(120));
    assert!(result.contains("late_ms"), "{result}");
}

#[test]
fn transactions_commit_roll_back_and_open_ones_are_checked_with_the_producer() {
    require_client();
    let cluster = ScriptCluster::up_with(
        1,
        &["broker-a"],
        "transaction-check-after-ms = 1000\ntransaction-check-interval-ms = 1000",
    );
    create_topic(&cluster, "V5Tx");
    let result = run_client(&["transaction", &cluster.namesrv[0], "V5Tx"], Duration::from_secs(120));
    assert!(result.contains("\"received\": 2"), "{result}");
    // Nothing is left pending.
    let (ok, out, err) = cluster.cli(&["--json", "transaction", "list"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("\"pending\":0"), "{out}");
}

#[test]
fn a_push_consumer_gets_every_message_and_failed_ones_again() {
    require_client();
    let cluster = ScriptCluster::up(1, &["broker-a"]);
    create_topic(&cluster, "V5Push");
    let result = run_client(&["push", &cluster.namesrv[0], "V5Push"], Duration::from_secs(120));
    assert!(result.contains("\"redelivered\": 20"), "{result}");
}

#[test]
fn a_message_delivered_max_attempts_times_moves_to_the_dead_letter_topic() {
    require_client();
    let cluster = ScriptCluster::up_with(1, &["broker-a"], "max-delivery-attempts = 3");
    create_topic(&cluster, "V5Poison");
    let result = run_client(
        &["dead-letter", &cluster.namesrv[0], "V5Poison", "3"],
        Duration::from_secs(120),
    );
    let message_id = result
        .split("\"message_id\": \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("id");
    // raftmq's own tools read the dead-letter topic: the message is there once, with its
    // origin recorded.
    let (ok, out, err) = cluster.cli(&["consume", "%DLQ%g-dlq", "--json", "--idle-secs", "2"]);
    assert!(ok, "{out}{err}");
    let copies: Vec<&str> = out.lines().filter(|l| l.contains("poison")).collect();
    assert_eq!(copies.len(), 1, "one dead-lettered copy: {out}");
    assert!(
        copies[0].contains(message_id),
        "it keeps the producer's message id: {}",
        copies[0]
    );
    assert!(
        copies[0].contains("V5Poison"),
        "it names its origin topic: {}",
        copies[0]
    );
}

/// Runs a command to its end within `deadline`; returns its RESULT line.
fn run_check(mut command: Command, what: &str, deadline: Duration) -> String {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed (or ran past {deadline:?}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    result_line(&stdout)
}

#[test]
fn the_official_rust_client_sends_and_receives() {
    // Built here, outside the workspace: it pins its own (older) tonic and prost.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rocketmq5/rust-client/Cargo.toml");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("rocketmq5-rust-client");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = Command::new(cargo)
        .args(["build", "--quiet", "--locked", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo");
    assert!(
        build.status.success(),
        "building the official Rust client check failed: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let cluster = ScriptCluster::up(1, &["broker-a"]);
    create_topic(&cluster, "V5Rust");
    let mut command = Command::new(target.join("debug/rocketmq5-rust-client-check"));
    command.args([&cluster.namesrv[0], "V5Rust"]);
    let result = run_check(command, "the Rust client check", Duration::from_secs(120));
    assert!(result.contains("\"received_even\": 10"), "{result}");
}

#[test]
fn the_official_node_client_sends_and_receives_through_a_broker_node() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rocketmq5/node-client");
    assert!(
        dir.join("node_modules/rocketmq-client-nodejs").exists(),
        "the official Node.js client is missing; install it with scripts/install-deps.sh \
         (npm ci in tests/rocketmq5/node-client)"
    );
    let cluster = ScriptCluster::up(1, &["broker-a"]);
    create_topic(&cluster, "V5Node");
    let mut command = Command::new("node");
    command
        .current_dir(&dir)
        .args(["check.js", &some_broker_addr(&cluster, 2), "V5Node"]);
    let result = run_check(command, "the Node.js client check", Duration::from_secs(120));
    assert!(result.contains("\"received_even\":10"), "{result}");
}

/// Runs a failover mode of the client script: when it prints `ready`, kills the group's master
/// and tells it so; returns its RESULT line.
async fn run_with_master_kill(cluster: &ScriptCluster, args: &[&str], ready: &str) -> String {
    let mut child = Command::new("python3")
        .arg(script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = stdout.read_line(&mut line).expect("read");
        if n == 0 {
            let out = child.wait_with_output().expect("output");
            panic!(
                "official_client.py {} ended before {ready}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if line.trim() == ready {
            break;
        }
    }
    let admin = Admin::new(Client::new(ClientConfig::new(cluster.namesrv.clone())).expect("client"));
    let before = wait_until("a master", Duration::from_secs(15), || async {
        group_info(&admin, "broker-a")
            .await
            .filter(|g| !g.master_addr.is_empty())
    })
    .await;
    cluster.must(&["kill", &format!("broker-a-{}", before.master_node_id)]);
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "KILLED").expect("tell the client");
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read");
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert!(
        status.success(),
        "official_client.py {} failed:\n{rest}\n{stderr}",
        args.join(" ")
    );
    result_line(&rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_producer_rides_through_a_master_kill_without_losing_an_acknowledged_message() {
    require_client();
    let cluster = ScriptCluster::up(1, &["broker-a"]);
    create_topic(&cluster, "V5Failover");
    let result = run_with_master_kill(
        &cluster,
        &["failover", &cluster.namesrv[0], "V5Failover", "12"],
        "SENDING",
    )
    .await;
    assert!(result.contains("\"lost\": 0"), "{result}");
    eprintln!("failover under the official Python producer: {result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_group_keeps_each_message_group_in_order_through_a_master_kill() {
    require_client();
    let cluster = ScriptCluster::up(1, &["broker-a"]);
    create_topic(&cluster, "V5Fifo");
    let (ok, out, err) = cluster.cli(&["group", "update", "g-fifo", "--fifo", "true"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cluster.cli(&["group", "settings", "g-fifo"]);
    assert!(ok && out.contains("yes"), "{out}{err}");
    let result = run_with_master_kill(&cluster, &["fifo-failover", &cluster.namesrv[0], "V5Fifo"], "RECEIVED").await;
    assert!(result.contains("\"messages\": 90"), "{result}");
    eprintln!("FIFO across a master kill: {result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_in_flight_survive_a_master_kill() {
    require_client();
    let cluster = ScriptCluster::up(1, &["broker-a"]);
    create_topic(&cluster, "V5PopFailover");
    let result = run_with_master_kill(
        &cluster,
        &["pop-failover", &cluster.namesrv[0], "V5PopFailover"],
        "RECEIVED",
    )
    .await;
    assert!(result.contains("\"redelivered\": 10"), "{result}");
    eprintln!("POP deliveries across a master kill: {result}");
}

/// A secured cluster, all of it at once: TLS on the NameServer's and brokers' ports (Raft on
/// ports of its own, with the cluster secret), `auth = true`. The Python client connects over
/// TLS (trusting the test's CA) and signs with the access key and secret key of a user the SDK
/// created (with the bootstrap admin's credentials); it sends and receives. The same client
/// with a wrong secret key is refused UNAUTHORIZED, and a consumer group the user has no rights
/// for FORBIDDEN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_with_tls_and_credentials_works_on_a_secured_cluster_and_a_wrong_key_is_refused() {
    use raftmq_common::auth::{right, Credentials, User};
    use raftmq_testkit::certs::{write, TestCa};
    require_client();
    let keys = tempfile::tempdir().unwrap();
    let dir = keys.path();
    let ca = TestCa::new("raftmq test CA");
    let (cert, key) = ca.leaf("raftmq node");
    let security = raftmq_common::security::SecurityConfig {
        cluster_secret_file: Some(write(dir, "cluster.secret", "python-test-cluster-secret")),
        auth: true,
        admin_credentials_file: Some(write(
            dir,
            "admin.toml",
            "access-key = \"root\"\nsecret-key = \"root-secret-0123\"\n",
        )),
        tls_cert_file: Some(write(dir, "node.pem", &cert)),
        tls_key_file: Some(write(dir, "node.key", &key)),
        tls_ca_file: Some(write(dir, "ca.pem", &ca.pem)),
        ..Default::default()
    };
    let namesrv = raftmq_namesrv::NameServer::start(&raftmq_namesrv::NamesrvConfig {
        listen: "127.0.0.1:0".into(),
        scan_interval_ms: 100,
        security: raftmq_common::security::SecurityConfig {
            auth: false,
            admin_credentials_file: None,
            ..security.clone()
        },
        ..Default::default()
    })
    .await
    .expect("a TLS NameServer");
    let ns = namesrv.addr().to_string();
    // Raft on ports of its own: the client ports serve TLS only.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let raft: Vec<String> = held.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    drop(held);
    let group = raftmq_testkit::Group::start_named(3, "broker-a", &ns, |c| {
        for (m, addr) in c.members.iter_mut().zip(&raft) {
            m.raft_addr = addr.clone();
        }
        c.security = security.clone();
    })
    .await;
    let master = group.wait_for_master(raftmq_testkit::ELECTION).await;
    let mut config = ClientConfig::new([ns.clone()]).with_credentials(Credentials::new("root", "root-secret-0123"));
    config.tls = Some(
        raftmq_common::tls::ClientFiles {
            ca: dir.join("ca.pem"),
            cert: None,
            key: None,
        }
        .load()
        .unwrap(),
    );
    let admin = Admin::new(Client::new(config).unwrap());
    admin
        .upsert_topic("V5Secured", 2, 2, raftmq_proto::Permission::ReadWrite, &[])
        .await
        .expect("the admin creates the topic over TLS");
    let user = User {
        access_key: "py-app".into(),
        secret_key: "py-app-secret-42".into(),
        admin: false,
        topics: vec![("V5Secured".into(), right::PUB | right::SUB)],
        groups: vec![("g-secured".into(), right::SUB)],
    };
    admin.put_user(&user, &[]).await.expect("the admin adds the user");
    group.wait_caught_up(master, raftmq_testkit::CATCH_UP).await;
    // Through the NameServer, which answers routes to anyone: the brokers check each send and
    // receive, and the client reports their codes.
    let ca_file = dir.join("ca.pem");
    let result = tokio::task::spawn_blocking(move || {
        let mut command = Command::new("python3");
        command
            .arg(script())
            .args(["secured", &ns, "V5Secured", "g-secured"])
            .env("RAFTMQ_ACCESS_KEY", "py-app")
            .env("RAFTMQ_SECRET_KEY", "py-app-secret-42")
            .env("RAFTMQ_TLS", "1")
            .env("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", ca_file);
        run_check(command, "official_client.py secured", Duration::from_secs(120))
    })
    .await
    .unwrap();
    assert!(result.contains("\"received\": 5"), "{result}");
    assert!(result.contains("\"tls\": true"), "{result}");
    assert!(
        result.contains("wrong_key") && result.contains("foreign_group"),
        "{result}"
    );
    group.shutdown().await;
    namesrv.shutdown().await.unwrap();
}
