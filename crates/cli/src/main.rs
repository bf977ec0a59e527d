//! `raftmq`: the command-line tool for raftmq clusters — topics, cluster view, send, consume,
//! consumer groups and single messages. Tables for people, `--json` for scripts; a failure exits
//! non-zero with one line saying why.

mod bench;
mod chaos;
mod chaos_disk;
mod drill;
mod ops;
mod table;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use raftmq_client::admin::ResetTo;
use raftmq_client::{
    Admin, Client, ClientConfig, ConsumeFrom, ConsumeResult, Message, MessageModel, MessageQueue, Producer,
    PullConsumer, PushConsumer, ReadPreference, ReceivedMessage,
};
use raftmq_proto as pb;
use serde_json::json;

/// Command-line tool for raftmq, a Raft-replicated message queue in the RocketMQ model.
#[derive(Debug, Parser)]
#[command(name = "raftmq", version, propagate_version = true)]
struct Cli {
    /// NameServer addresses, comma-separated (host:port).
    #[arg(
        long,
        short = 'n',
        env = "RAFTMQ_NAMESRV",
        value_delimiter = ',',
        default_value = "127.0.0.1:9876",
        global = true
    )]
    namesrv: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Deadline of each request, in milliseconds.
    #[arg(long, default_value_t = 3000, global = true)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, update, delete, list topics and show routes.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Show the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Send messages.
    Send(SendArgs),
    /// Consume messages, as a group member or by plain pulls.
    Consume(ConsumeArgs),
    /// Consumer group progress and offset resets.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Read single messages.
    #[command(subcommand)]
    Message(MessageCommand),
    /// Failover drill: fail a group's master while a producer sends; print the timings.
    Drill(drill::DrillArgs),
    /// Fault-injection suite: random faults under load, then a check that nothing acknowledged
    /// was lost.
    Chaos(chaos::ChaosArgs),
    /// Benchmarks: produce, consume, end to end.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Perm {
    /// read and write
    Rw,
    /// read only
    R,
    /// write only
    W,
}

impl Perm {
    fn proto(self) -> pb::Permission {
        match self {
            Perm::Rw => pb::Permission::ReadWrite,
            Perm::R => pb::Permission::Read,
            Perm::W => pb::Permission::Write,
        }
    }
}

#[derive(Debug, Args)]
struct TopicSpec {
    topic: String,
    /// Read and write queues per broker group.
    #[arg(long, default_value_t = 4)]
    queues: u32,
    /// Write queues per group (default: --queues).
    #[arg(long)]
    write_queues: Option<u32>,
    /// Read queues per group (default: --queues).
    #[arg(long)]
    read_queues: Option<u32>,
    #[arg(long, value_enum, default_value_t = Perm::Rw)]
    perm: Perm,
    /// Only these broker groups (default: every live group). Repeatable.
    #[arg(long = "group")]
    groups: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic in every broker group (or the named ones).
    Create(TopicSpec),
    /// Change a topic's queue counts or permission.
    Update(TopicSpec),
    /// Delete a topic from every group holding it.
    Delete { topic: String },
    /// List every topic.
    List,
    /// Show a topic's route: per group its queues, master and slaves.
    Route { topic: String },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Every node: group, id, role, term, address, applied index, lag behind its master.
    List,
    /// Wait until the NameServer lists every expected group with a master and all its nodes
    /// following it (a node that has not yet joined, or is standing, does not count).
    Wait {
        /// Expected groups and node counts, e.g. broker-a:3,broker-b:3.
        #[arg(long, value_delimiter = ',', required = true)]
        expect: Vec<String>,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Args)]
struct SendArgs {
    topic: String,
    /// The body; without it, --file or standard input.
    body: Option<String>,
    /// Read the body from a file.
    #[arg(long, conflicts_with = "body")]
    file: Option<std::path::PathBuf>,
    #[arg(long, default_value = "")]
    tags: String,
    #[arg(long, default_value = "")]
    keys: String,
    /// A user property, key=value. Repeatable.
    #[arg(long = "property", value_parser = parse_property)]
    properties: Vec<(String, String)>,
    /// Ordered send: messages with the same sharding key go to the same queue.
    #[arg(long)]
    sharding_key: Option<String>,
    /// Send the body this many times.
    #[arg(long, default_value_t = 1)]
    count: u32,
}

/// The nodes of a group that its master leads: the master, and the slaves that report it as
/// their leader in its term. 0 without a master.
fn following_master(g: &pb::GroupInfo) -> usize {
    if g.master_addr.is_empty() {
        return 0;
    }
    g.nodes
        .iter()
        .filter(|n| {
            n.node_id == g.master_node_id
                || (n.reported_role == pb::Role::Slave as i32 && n.leader_id == g.master_node_id && n.term == g.term)
        })
        .count()
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Read {
    Master,
    PreferSlave,
    Slave,
}

impl Read {
    fn preference(self) -> ReadPreference {
        match self {
            Read::Master => ReadPreference::Master,
            Read::PreferSlave => ReadPreference::PreferSlave,
            Read::Slave => ReadPreference::SlaveOnly,
        }
    }
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    topic: String,
    /// Consume as a member of this consumer group (offsets committed on the broker). Without
    /// it: plain pulls of every queue.
    #[arg(long)]
    group: Option<String>,
    /// Every member reads every queue (with --group).
    #[arg(long, requires = "group")]
    broadcast: bool,
    /// Where to start without a committed offset: first, last, or a time in ms since the epoch.
    #[arg(long, default_value = "first")]
    from: String,
    /// Which nodes to read from.
    #[arg(long, value_enum, default_value_t = Read::Master)]
    read: Read,
    /// Tag filter: `*` or `a || b`.
    #[arg(long, default_value = "*")]
    tags: String,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this many seconds without a new message.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
    /// Print only the number of messages consumed.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Per queue: stored offset, committed offset, lag.
    Progress { consumer_group: String, topic: String },
    /// Move a group's offsets: earliest, latest, a time in ms since the epoch, or offset:N.
    Reset {
        consumer_group: String,
        topic: String,
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
enum MessageCommand {
    /// One message by topic, broker group, queue and offset.
    Get {
        topic: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        queue: u32,
        #[arg(long)]
        offset: u64,
        #[arg(long, value_enum, default_value_t = Read::Master)]
        read: Read,
    },
}

/// Like other command-line tools, end quietly when the reader of our output goes away
/// (`raftmq consume T | head`): a print to the closed pipe panics, and that panic becomes a quiet
/// exit with the shell's status for SIGPIPE. SIGPIPE itself stays ignored, as Rust sets it: with
/// its default action, a write to a broker connection that had just been reset would kill the
/// tool without a word (the chaos suite lost its verdict that way).
fn quiet_when_the_reader_goes_away() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info)
    }));
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    quiet_when_the_reader_goes_away();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftmq: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

fn role_name(role: i32) -> &'static str {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Master) => "master",
        Ok(pb::Role::Slave) => "slave",
        Ok(pb::Role::Learner) => "learner",
        Ok(pb::Role::Candidate) => "candidate",
        _ => "unknown",
    }
}

fn perm_name(p: i32) -> &'static str {
    match pb::Permission::try_from(p) {
        Ok(pb::Permission::ReadWrite) => "rw",
        Ok(pb::Permission::Read) => "r",
        Ok(pb::Permission::Write) => "w",
        _ => "-",
    }
}

fn body_text(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(s) => s.to_owned(),
        Err(_) => body.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn message_json(m: &ReceivedMessage) -> serde_json::Value {
    json!({
        "msg_id": m.msg_id, "topic": m.topic, "group": m.group, "queue_id": m.queue_id,
        "queue_offset": m.queue_offset, "tags": m.tags, "keys": m.keys, "properties": m.properties,
        "body": body_text(&m.body), "born_timestamp_ms": m.born_timestamp_ms, "store_timestamp_ms": m.store_timestamp_ms,
    })
}

fn print_message(m: &ReceivedMessage, as_json: bool) {
    if as_json {
        println!("{}", message_json(m));
    } else {
        println!(
            "{}/{} offset={} id={} tags={:?} keys={:?} body={}",
            m.group,
            m.queue_id,
            m.queue_offset,
            m.msg_id,
            m.tags,
            m.keys,
            body_text(&m.body)
        );
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = ClientConfig::new(cli.namesrv.clone());
    config.request_timeout = Duration::from_millis(cli.timeout_ms);
    config.send_timeout = Duration::from_millis(cli.timeout_ms);
    // A one-shot command needs no route stream.
    config.watch_routes = false;
    let client = Client::new(config)?;
    let admin = Admin::new(client.clone());
    let as_json = cli.json;
    match cli.command {
        Command::Topic(TopicCommand::Create(spec)) | Command::Topic(TopicCommand::Update(spec)) => {
            let groups = admin
                .upsert_topic(
                    &spec.topic,
                    spec.write_queues.unwrap_or(spec.queues),
                    spec.read_queues.unwrap_or(spec.queues),
                    spec.perm.proto(),
                    &spec.groups,
                )
                .await?;
            if as_json {
                println!("{}", json!({"topic": spec.topic, "groups": groups}));
            } else {
                println!("topic {} set in {}", spec.topic, groups.join(", "));
            }
        }
        Command::Topic(TopicCommand::Delete { topic }) => {
            let groups = admin.delete_topic(&topic).await?;
            if as_json {
                println!("{}", json!({"topic": topic, "groups": groups}));
            } else {
                println!("topic {topic} deleted from {}", groups.join(", "));
            }
        }
        Command::Topic(TopicCommand::List) => {
            let topics = admin.topics().await?;
            if as_json {
                println!("{}", json!(topics));
            } else {
                for t in topics {
                    println!("{t}");
                }
            }
        }
        Command::Topic(TopicCommand::Route { topic }) => {
            let route = admin.route(&topic).await?;
            if as_json {
                let groups: Vec<_> = route
                    .groups
                    .iter()
                    .map(|g| json!({"group": g.group, "write_queues": g.write_queues, "read_queues": g.read_queues, "perm": perm_name(g.permission), "master": g.master, "slaves": g.slaves}))
                    .collect();
                println!("{}", json!({"topic": topic, "groups": groups}));
            } else {
                let rows: Vec<Vec<String>> = route
                    .groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.group.clone(),
                            g.write_queues.to_string(),
                            g.read_queues.to_string(),
                            perm_name(g.permission).into(),
                            g.master.clone().unwrap_or_else(|| "-".into()),
                            g.slaves.join(","),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(&["GROUP", "WRITE", "READ", "PERM", "MASTER", "SLAVES"], &rows)
                );
            }
        }
        Command::Cluster(ClusterCommand::List) => {
            let info = admin.cluster().await?;
            let mut rows = Vec::new();
            let mut items = Vec::new();
            for g in &info.groups {
                let master_applied = g
                    .nodes
                    .iter()
                    .find(|n| n.node_id == g.master_node_id)
                    .map(|n| n.applied_index);
                for n in &g.nodes {
                    let lag = master_applied.map(|m| m.saturating_sub(n.applied_index));
                    rows.push(vec![
                        g.cluster.clone(),
                        g.group.clone(),
                        n.node_id.to_string(),
                        role_name(n.role).into(),
                        n.term.to_string(),
                        n.addr.clone(),
                        n.applied_index.to_string(),
                        lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                        format!("{}ms", n.last_heartbeat_ms_ago),
                    ]);
                    items.push(json!({"cluster": g.cluster, "group": g.group, "node_id": n.node_id, "role": role_name(n.role), "term": n.term, "addr": n.addr, "applied_index": n.applied_index, "lag": lag, "last_heartbeat_ms_ago": n.last_heartbeat_ms_ago}));
                }
            }
            if as_json {
                println!("{}", json!(items));
            } else {
                print!(
                    "{}",
                    table::render(
                        &[
                            "CLUSTER",
                            "GROUP",
                            "NODE",
                            "ROLE",
                            "TERM",
                            "ADDRESS",
                            "APPLIED",
                            "LAG",
                            "HEARTBEAT"
                        ],
                        &rows
                    )
                );
            }
        }
        Command::Cluster(ClusterCommand::Wait { expect, timeout_secs }) => {
            let mut wanted = BTreeMap::new();
            for e in &expect {
                let (group, n) = e
                    .split_once(':')
                    .ok_or_else(|| anyhow!("--expect {e:?}: say GROUP:NODES"))?;
                wanted.insert(
                    group.to_owned(),
                    n.parse::<usize>()
                        .with_context(|| format!("--expect {e:?}: not a node count"))?,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(timeout_secs);
            loop {
                let missing: Vec<String> = match admin.cluster().await {
                    Ok(info) => wanted
                        .iter()
                        .filter(|(group, n)| {
                            !info
                                .groups
                                .iter()
                                .any(|g| &&g.group == group && following_master(g) >= **n)
                        })
                        .map(|(group, n)| format!("{group} (a master and {n} nodes following it)"))
                        .collect(),
                    Err(e) => vec![format!("an answer from the NameServer ({e})")],
                };
                if missing.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "UNAVAILABLE: after {timeout_secs} s still waiting for {}",
                        missing.join(", ")
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Command::Send(args) => send(&client, args, as_json).await?,
        Command::Drill(args) => drill::run(&cli.namesrv, args, as_json).await?,
        Command::Chaos(args) => chaos::run(&cli.namesrv, args, as_json).await?,
        Command::Bench(command) => bench::run(client.clone(), command, as_json).await?,
        Command::Consume(args) => consume(&client, args, as_json).await?,
        Command::Group(GroupCommand::Progress { consumer_group, topic }) => {
            let progress = admin.group_progress(&consumer_group, &topic).await?;
            if as_json {
                let items: Vec<_> = progress
                    .iter()
                    .map(|p| json!({"group": p.queue.group, "queue_id": p.queue.queue_id, "broker_offset": p.broker_offset, "consume_offset": p.consume_offset, "lag": p.lag}))
                    .collect();
                println!("{}", json!(items));
            } else {
                let rows: Vec<Vec<String>> = progress
                    .iter()
                    .map(|p| {
                        vec![
                            p.queue.group.clone(),
                            p.queue.queue_id.to_string(),
                            p.broker_offset.to_string(),
                            p.consume_offset.map(|o| o.to_string()).unwrap_or_else(|| "-".into()),
                            p.lag.to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(&["GROUP", "QUEUE", "BROKER_OFFSET", "CONSUME_OFFSET", "LAG"], &rows)
                );
                println!("total lag: {}", progress.iter().map(|p| p.lag).sum::<u64>());
            }
        }
        Command::Group(GroupCommand::Reset {
            consumer_group,
            topic,
            to,
        }) => {
            let target = match to.as_str() {
                "earliest" | "first" => ResetTo::Earliest,
                "latest" | "last" => ResetTo::Latest,
                other => match other.strip_prefix("offset:") {
                    Some(o) => ResetTo::Offset(o.parse().with_context(|| format!("--to {other}: not an offset"))?),
                    None => ResetTo::Timestamp(other.parse().map_err(|_| {
                        anyhow!("--to {other:?}: say earliest, latest, a time in ms since the epoch, or offset:N")
                    })?),
                },
            };
            let moved = admin.reset_offsets(&consumer_group, &topic, target).await?;
            if as_json {
                let items: Vec<_> = moved
                    .iter()
                    .map(|(q, o)| json!({"group": q.group, "queue_id": q.queue_id, "offset": o}))
                    .collect();
                println!("{}", json!(items));
            } else {
                let rows: Vec<Vec<String>> = moved
                    .iter()
                    .map(|(q, o)| vec![q.group.clone(), q.queue_id.to_string(), o.to_string()])
                    .collect();
                print!("{}", table::render(&["GROUP", "QUEUE", "OFFSET"], &rows));
            }
        }
        Command::Message(MessageCommand::Get {
            topic,
            group,
            queue,
            offset,
            read,
        }) => {
            let m = admin
                .get_message(
                    &topic,
                    &MessageQueue { group, queue_id: queue },
                    offset,
                    read.preference(),
                )
                .await?;
            print_message(&m, as_json);
        }
    }
    Ok(())
}

async fn send(client: &Client, args: SendArgs, as_json: bool) -> anyhow::Result<()> {
    let body = match (&args.body, &args.file) {
        (Some(b), _) => b.clone().into_bytes(),
        (None, Some(path)) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        (None, None) => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading standard input")?;
            buf
        }
    };
    let mut message = Message::new(&args.topic, body)
        .with_tags(&args.tags)
        .with_keys(&args.keys);
    for (k, v) in &args.properties {
        message = message.with_property(k, v);
    }
    let producer = Producer::new(client.clone());
    for _ in 0..args.count {
        let result = match &args.sharding_key {
            Some(key) => producer.send_ordered(message.clone(), key).await?,
            None => producer.send(message.clone()).await?,
        };
        if as_json {
            println!(
                "{}",
                json!({"msg_id": result.msg_id, "group": result.group, "queue_id": result.queue_id, "queue_offset": result.queue_offset})
            );
        } else {
            println!(
                "sent {} to {}/{} offset {}",
                result.msg_id, result.group, result.queue_id, result.queue_offset
            );
        }
    }
    Ok(())
}

fn parse_from(from: &str) -> anyhow::Result<ConsumeFrom> {
    Ok(match from {
        "first" | "earliest" => ConsumeFrom::First,
        "last" | "latest" => ConsumeFrom::Last,
        ts => ConsumeFrom::Timestamp(
            ts.parse()
                .map_err(|_| anyhow!("--from {ts:?}: say first, last or a time in ms since the epoch"))?,
        ),
    })
}

async fn consume(client: &Client, args: ConsumeArgs, as_json: bool) -> anyhow::Result<()> {
    let from = parse_from(&args.from)?;
    let limit = args.count.unwrap_or(usize::MAX);
    let idle = Duration::from_secs(args.idle_secs);
    let count = Arc::new(AtomicUsize::new(0));
    match &args.group {
        Some(group) => {
            let seen = count.clone();
            let quiet = args.quiet;
            let consumer = PushConsumer::builder(client.clone(), group, &args.topic)
                .tag_expression(&args.tags)
                .model(if args.broadcast {
                    MessageModel::Broadcasting
                } else {
                    MessageModel::Clustering
                })
                .read_preference(args.read.preference())
                .consume_from(from)
                .start(move |batch| {
                    for m in batch {
                        // Messages past the limit are not taken: they stay for the next consumer.
                        if seen.load(Ordering::SeqCst) >= limit {
                            return ConsumeResult::Retry;
                        }
                        if !quiet {
                            print_message(m, as_json);
                        }
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    ConsumeResult::Success
                })
                .await?;
            let mut last = (0, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let n = count.load(Ordering::SeqCst);
                if n != last.0 {
                    last = (n, Instant::now());
                }
                if n >= limit || last.1.elapsed() >= idle {
                    break;
                }
            }
            consumer.shutdown().await;
        }
        None => {
            let reader = PullConsumer::new(client.clone(), args.read.preference());
            let queues = reader.queues(&args.topic).await?;
            let mut offsets: BTreeMap<MessageQueue, u64> = BTreeMap::new();
            for q in &queues {
                let start = match from {
                    ConsumeFrom::First => reader.queue_offsets(&args.topic, q).await?.0,
                    ConsumeFrom::Last => reader.queue_offsets(&args.topic, q).await?.1,
                    ConsumeFrom::Timestamp(ts) => reader.search_offset(&args.topic, q, ts).await?,
                };
                offsets.insert(q.clone(), start);
            }
            let mut last_new = Instant::now();
            'outer: while last_new.elapsed() < idle {
                let mut any = false;
                for q in &queues {
                    let offset = offsets[q];
                    let result = reader
                        .pull(&args.topic, q, offset, 64, &args.tags, Duration::ZERO)
                        .await?;
                    offsets.insert(q.clone(), result.next_offset);
                    for m in &result.messages {
                        any = true;
                        if !args.quiet {
                            print_message(m, as_json);
                        }
                        if count.fetch_add(1, Ordering::SeqCst) + 1 >= limit {
                            break 'outer;
                        }
                    }
                }
                if any {
                    last_new = Instant::now();
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let n = count.load(Ordering::SeqCst);
    if args.quiet {
        if as_json {
            println!("{}", json!({"consumed": n}));
        } else {
            println!("{n}");
        }
    }
    if let Some(wanted) = args.count {
        if n < wanted {
            bail!(
                "consumed {n} of {wanted} messages before {} s without a new one",
                args.idle_secs
            );
        }
    }
    Ok(())
}
