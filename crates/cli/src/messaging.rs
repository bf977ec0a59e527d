//! `raftmq send` and `raftmq consume`, and how a message is printed.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use raftmq_client::{
    Client, ConsumeFrom, ConsumeResult, Message, MessageModel, MessageQueue, MessageSelector, Producer, PullConsumer,
    PushConsumer, ReadPreference, ReceivedMessage,
};
use serde_json::json;

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    pub(crate) topic: String,
    /// The body; without it, --file or standard input.
    pub(crate) body: Option<String>,
    /// Read the body from a file.
    #[arg(long, conflicts_with = "body")]
    pub(crate) file: Option<std::path::PathBuf>,
    #[arg(long, default_value = "")]
    pub(crate) tags: String,
    #[arg(long, default_value = "")]
    pub(crate) keys: String,
    /// A user property, key=value. Repeatable.
    #[arg(long = "property", value_parser = parse_property)]
    pub(crate) properties: Vec<(String, String)>,
    /// Ordered send: messages with the same sharding key go to the same queue.
    #[arg(long)]
    pub(crate) sharding_key: Option<String>,
    /// Send the body this many times.
    #[arg(long, default_value_t = 1)]
    pub(crate) count: u32,
    /// Deliver the message this long after it is stored: 1500ms, 30s, 10m, 2h, 7d.
    #[arg(long, value_parser = crate::when::parse_duration, conflicts_with = "deliver_at")]
    pub(crate) delay: Option<std::time::Duration>,
    /// Deliver the message at this time: RFC 3339 (2026-12-24T18:00:00Z, 2026-12-24T19:00:00+01:00)
    /// or ms since the Unix epoch.
    #[arg(long, value_parser = crate::when::parse_time_ms)]
    pub(crate) deliver_at: Option<i64>,
}

pub(crate) fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Read {
    Master,
    PreferSlave,
    Slave,
}

impl Read {
    pub(crate) fn preference(self) -> ReadPreference {
        match self {
            Read::Master => ReadPreference::Master,
            Read::PreferSlave => ReadPreference::PreferSlave,
            Read::Slave => ReadPreference::SlaveOnly,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    pub(crate) topic: String,
    /// Consume as a member of this consumer group (offsets committed on the broker). Without
    /// it: plain pulls of every queue.
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// Every member reads every queue (with --group), and keeps its offsets in a file on this
    /// machine, resumed next time.
    #[arg(long, requires = "group")]
    pub(crate) broadcast: bool,
    /// Where a broadcasting consumer keeps its offsets (default: $RAFTMQ_OFFSET_DIR, else
    /// ~/.raftmq_offsets).
    #[arg(long, requires = "broadcast")]
    pub(crate) offset_dir: Option<std::path::PathBuf>,
    /// Where to start without a committed offset: first, last, or a time in ms since the epoch.
    #[arg(long, default_value = "first")]
    pub(crate) from: String,
    /// Which nodes to read from.
    #[arg(long, value_enum, default_value_t = Read::Master)]
    pub(crate) read: Read,
    /// Tag filter: `*` or `a || b`.
    #[arg(long, default_value = "*")]
    pub(crate) tags: String,
    /// SQL92 filter over message properties, evaluated on the broker: `a > 5 AND (b = 'x' OR
    /// TAGS IN ('t1', 't2'))`, with BETWEEN, IN, NOT, IS [NOT] NULL. Instead of --tags.
    #[arg(long, conflicts_with = "tags")]
    pub(crate) sql: Option<String>,
    /// Stop after this many messages.
    #[arg(long)]
    pub(crate) count: Option<usize>,
    /// Stop after this many seconds without a new message.
    #[arg(long, default_value_t = 5)]
    pub(crate) idle_secs: u64,
    /// Print only the number of messages consumed.
    #[arg(long)]
    pub(crate) quiet: bool,
}

pub(crate) fn body_text(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(s) => s.to_owned(),
        Err(_) => body.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

pub(crate) fn message_json(m: &ReceivedMessage) -> serde_json::Value {
    json!({
        "msg_id": m.msg_id, "topic": m.topic, "group": m.group, "queue_id": m.queue_id,
        "queue_offset": m.queue_offset, "tags": m.tags, "keys": m.keys, "properties": m.properties,
        "body": body_text(&m.body), "born_timestamp_ms": m.born_timestamp_ms, "store_timestamp_ms": m.store_timestamp_ms,
    })
}

pub(crate) fn print_message(m: &ReceivedMessage, as_json: bool) {
    if as_json {
        println!("{}", message_json(m));
    } else {
        // A retried message says how often it came before.
        let retried = match m.reconsume_times() {
            0 => String::new(),
            n => format!(" reconsume={n}"),
        };
        println!(
            "{}/{} offset={} id={} tags={:?} keys={:?}{retried} body={}",
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

pub(crate) async fn send(client: &Client, args: SendArgs, as_json: bool) -> anyhow::Result<()> {
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
    if let Some(delay) = args.delay {
        message = message.with_delay(delay);
    }
    if let Some(at) = args.deliver_at {
        message = message.with_deliver_at(at);
    }
    let producer = Producer::new(client.clone());
    for _ in 0..args.count {
        let result = match &args.sharding_key {
            Some(key) => producer.send_ordered(message.clone(), key).await?,
            None => producer.send(message.clone()).await?,
        };
        if let Some(d) = &result.delayed {
            if as_json {
                println!(
                    "{}",
                    json!({"msg_id": result.msg_id, "group": result.group, "queue_id": result.queue_id, "deliver_at_ms": d.deliver_at_ms, "recall_handle": d.recall_handle})
                );
            } else {
                println!(
                    "scheduled {} for {}/{} at {} (recall handle {})",
                    result.msg_id,
                    result.group,
                    result.queue_id,
                    crate::when::format_time_ms(d.deliver_at_ms),
                    d.recall_handle
                );
            }
        } else if as_json {
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

pub(crate) fn parse_from(from: &str) -> anyhow::Result<ConsumeFrom> {
    Ok(match from {
        "first" | "earliest" => ConsumeFrom::First,
        "last" | "latest" => ConsumeFrom::Last,
        ts => ConsumeFrom::Timestamp(
            ts.parse()
                .map_err(|_| anyhow!("--from {ts:?}: say first, last or a time in ms since the epoch"))?,
        ),
    })
}

pub(crate) async fn consume(client: &Client, args: ConsumeArgs, as_json: bool) -> anyhow::Result<()> {
    let selector = match &args.sql {
        Some(sql) => MessageSelector::by_sql(sql),
        None => MessageSelector::by_tag(&args.tags),
    };
    // A bad expression fails here, with its line and column, before anything is read.
    selector.check()?;
    let from = parse_from(&args.from)?;
    let limit = args.count.unwrap_or(usize::MAX);
    let idle = Duration::from_secs(args.idle_secs);
    let count = Arc::new(AtomicUsize::new(0));
    match &args.group {
        Some(group) => {
            let seen = count.clone();
            let quiet = args.quiet;
            let mut builder = PushConsumer::builder(client.clone(), group, &args.topic);
            if let Some(dir) = &args.offset_dir {
                builder = builder.local_offset_dir(dir);
            }
            let consumer = builder
                .selector(selector.clone())
                .model(if args.broadcast {
                    MessageModel::Broadcasting
                } else {
                    MessageModel::Clustering
                })
                .read_preference(args.read.preference())
                .consume_from(from)
                // With --count, one message a batch, handed back in place (orderly) once the
                // count is reached: what is past it stays in its queue (not on the retry topic),
                // and what was printed is committed.
                .orderly(args.count.is_some())
                .batch_size(if args.count.is_some() { 1 } else { 32 })
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
                        .pull(&args.topic, q, offset, 64, &selector, Duration::ZERO)
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
