//! `raftmq bench`: throughput and latency of sends, consumption, and both together.
//!
//! Figures, not assertions: throughput in msg/s and MiB/s, latency percentiles, errors by code.
//! Every produced body starts with the send time (µs since the epoch), so consumers can measure
//! end-to-end latency without trusting broker clocks.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use clap::{Args, Subcommand};
use futures::stream::{FuturesUnordered, StreamExt};
use raftmq_client::{
    Client, ConsumeFrom, ConsumeResult, Error, Message, MessageQueue, MessageSelector, Producer, PullConsumer,
    PushConsumer, ReadPreference, ReceivedMessage,
};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Send as fast as the window allows; latency is send to acknowledgement.
    Produce(ProduceArgs),
    /// Read a topic from the start (or a group's committed offsets); latency is from each
    /// message's store timestamp to its receipt.
    Consume(ConsumeArgs),
    /// Produce and consume together; latency is send to receipt.
    E2e(E2eArgs),
    /// Delayed messages: how late after their due time they become visible, in a burst all due
    /// in the same second or at a steady rate.
    Delay(delay::DelayArgs),
}

mod delay;

#[derive(Debug, Args, Clone)]
pub struct ProduceArgs {
    #[arg(long, default_value = "BenchTopic")]
    topic: String,
    /// Body size in bytes (at least 8: the send time is stored in the first 8).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Sends in flight per producer; 1 is a synchronous producer.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Messages per send request (a batch send).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// How long to run, seconds (ignored with --count).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Ordered sends with one sharding key per producer.
    #[arg(long)]
    keyed: bool,
    /// Every message gets a key of its own (`send --keys`), which the brokers index.
    #[arg(long)]
    keys: bool,
    /// Every message gets the property `n`, its number modulo 100: `bench consume --sql 'n < 1'`
    /// then matches 1 % of them.
    #[arg(long)]
    n_property: bool,
    /// Bodies of pseudo-random bytes, which do not compress (the default repeats one byte, which
    /// RocksDB's LZ4 shrinks to almost nothing on disk).
    #[arg(long)]
    random: bool,
    /// Each message is a transaction: a half message, then its commit. Latency is the whole
    /// transaction; the commit's own latency is reported beside it.
    #[arg(long, conflicts_with_all = ["keyed", "batch"])]
    transactional: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ConsumeArgs {
    #[arg(long, default_value = "BenchTopic")]
    topic: String,
    /// Messages per pull.
    #[arg(long, default_value_t = 256)]
    batch: u32,
    /// Read from slaves only.
    #[arg(long)]
    slave: bool,
    /// Consume as a member of this consumer group (offsets stored on the broker, queues
    /// assigned by rebalancing), from the group's committed offsets or else from the start,
    /// instead of pulling every queue from its start.
    #[arg(long)]
    group: Option<String>,
    /// Stop after this many seconds (or when every queue is read to its end).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// A SQL92 filter the brokers apply (without --group): the figures then count the messages
    /// delivered, and `scanned` the queue positions passed.
    #[arg(long, conflicts_with = "group")]
    sql: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct E2eArgs {
    #[command(flatten)]
    produce: ProduceArgs,
    #[arg(long)]
    slave: bool,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn body(size: usize) -> Vec<u8> {
    let mut b = vec![b'x'; size.max(8)];
    b[..8].copy_from_slice(&now_us().to_le_bytes());
    b
}

/// A body whose bytes after the send time are pseudo-random: xorshift64 from `seed` mixed by
/// splitmix64 (nearby seeds give unrelated bodies, so no two messages share bytes to compress).
fn random_body(size: usize, seed: u64) -> Vec<u8> {
    let mut b = body(size);
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x = (x ^ (x >> 31)) | 1;
    for chunk in b[8..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    b
}

fn store_us(m: &ReceivedMessage) -> u64 {
    (m.store_timestamp_ms.max(0) as u64).saturating_mul(1000)
}

fn sent_at(body: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(body.get(..8)?.try_into().ok()?))
}

/// Latency samples in microseconds.
#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn percentiles(&mut self) -> serde_json::Value {
        self.0.sort_unstable();
        let at = |p: f64| -> f64 {
            if self.0.is_empty() {
                return 0.0;
            }
            let i = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len()) - 1;
            self.0[i] as f64 / 1000.0
        };
        json!({"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": at(1.0), "samples": self.0.len()})
    }
}

/// Shared counters of a run, with a live line on a terminal.
struct Progress {
    done: AtomicU64,
    errors: AtomicU64,
    start: Instant,
    samples: Mutex<Samples>,
    by_code: Mutex<BTreeMap<String, u64>>,
}

impl Progress {
    fn new() -> Arc<Progress> {
        Arc::new(Progress {
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            start: Instant::now(),
            samples: Mutex::default(),
            by_code: Mutex::default(),
        })
    }

    fn error(&self, e: &Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.by_code.lock().unwrap().entry(error_key(e)).or_default() += 1;
    }

    fn spawn_line(self: &Arc<Self>, what: &'static str) -> tokio::task::JoinHandle<()> {
        let p = self.clone();
        tokio::spawn(async move {
            if !std::io::stderr().is_terminal() {
                return;
            }
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let done = p.done.load(Ordering::Relaxed);
                eprint!(
                    "\r{what}: {} msg/s, {} total, {} errors   ",
                    done - last,
                    done,
                    p.errors.load(Ordering::Relaxed)
                );
                last = done;
            }
        })
    }
}

fn report(kind: &str, progress: &Progress, elapsed: Duration, size: usize, extra: serde_json::Value, as_json: bool) {
    let done = progress.done.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let rate = done as f64 / secs;
    let mib = rate * size as f64 / (1024.0 * 1024.0);
    let lat = progress.samples.lock().unwrap().percentiles();
    let errors = progress.by_code.lock().unwrap().clone();
    let out = json!({"kind": kind, "messages": done, "seconds": secs, "msg_per_s": rate.round(), "mib_per_s": (mib * 100.0).round() / 100.0, "latency": lat, "errors": errors, "settings": extra});
    if as_json {
        println!("{out}");
        return;
    }
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    println!("{kind}: {done} messages in {secs:.1} s = {rate:.0} msg/s, {mib:.1} MiB/s");
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        lat["p50_ms"].as_f64().unwrap_or(0.0),
        lat["p90_ms"].as_f64().unwrap_or(0.0),
        lat["p99_ms"].as_f64().unwrap_or(0.0),
        lat["p999_ms"].as_f64().unwrap_or(0.0),
        lat["max_ms"].as_f64().unwrap_or(0.0)
    );
    if !errors.is_empty() {
        println!(
            "errors: {}",
            errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

fn error_key(e: &Error) -> String {
    e.code.as_str().to_owned()
}

pub async fn run(client: Client, command: BenchCommand, as_json: bool) -> anyhow::Result<()> {
    match command {
        BenchCommand::Produce(args) => produce(client, args, as_json).await,
        BenchCommand::Consume(args) => consume(client, args, as_json, None).await,
        BenchCommand::Delay(args) => delay::run(client, args, as_json).await,
        BenchCommand::E2e(args) => {
            let stop = Arc::new(AtomicBool::new(false));
            let consumer_args = ConsumeArgs {
                topic: args.produce.topic.clone(),
                batch: 256,
                slave: args.slave,
                group: None,
                duration: args.produce.duration + 5,
                sql: None,
            };
            // Start reading at the current end, so only this run's messages count.
            let c = tokio::spawn(consume(client.clone(), consumer_args, as_json, Some(stop.clone())));
            tokio::time::sleep(Duration::from_millis(500)).await;
            produce(client, args.produce, as_json).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop.store(true, Ordering::SeqCst);
            c.await?
        }
    }
}

async fn produce(client: Client, args: ProduceArgs, as_json: bool) -> anyhow::Result<()> {
    if args.window == 0 || args.producers == 0 || args.batch == 0 {
        bail!("--window, --producers and --batch must be at least 1");
    }
    client.route(&args.topic).await?;
    let progress = Progress::new();
    let line = progress.spawn_line("produce");
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let limit = args.count.unwrap_or(u64::MAX);
    let issued = Arc::new(AtomicU64::new(0));
    let commits: Arc<Mutex<Samples>> = Arc::default();
    let mut tasks = Vec::new();
    for p in 0..args.producers {
        let producer = Producer::new(client.clone());
        let transactions = if args.transactional {
            Some(
                raftmq_client::TransactionProducer::builder(client.clone(), "bench-transactions")
                    .topics([args.topic.clone()])
                    .checker(|_| async { raftmq_client::TransactionState::Commit })
                    .start()?,
            )
        } else {
            None
        };
        let commits = commits.clone();
        let (args, progress, issued) = (args.clone(), progress.clone(), issued.clone());
        // One task per producer keeps its window full: spawning a task per send cost the bench
        // client a fifth of its CPU, taken from the brokers it shares the machine with.
        tasks.push(tokio::spawn(async move {
            let key = format!("bench-key-{p}");
            let seq = AtomicU64::new(0);
            let message = || {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let body = if args.random {
                    random_body(args.size, (p as u64) << 40 ^ n)
                } else {
                    body(args.size)
                };
                let mut m = Message::new(&args.topic, body);
                if args.keys {
                    m = m.with_keys(format!("bench-{p}-{n}"));
                }
                if args.n_property {
                    m = m.with_property("n", (n % 100).to_string());
                }
                m
            };
            let send_one = |started: Instant| {
                let (producer, args, key, transactions, commits) = (&producer, &args, &key, &transactions, &commits);
                let batch: Vec<Message> = (0..args.batch).map(|_| message()).collect();
                async move {
                    let result = if let Some(t) = transactions {
                        let m = batch.into_iter().next().expect("one message");
                        match t.send(m).await {
                            Ok(txn) => {
                                let committing = Instant::now();
                                let done = txn.commit().await.map(|_| 1);
                                if done.is_ok() {
                                    commits.lock().unwrap().0.push(committing.elapsed().as_micros() as u64);
                                }
                                done
                            }
                            Err(e) => Err(e),
                        }
                    } else if args.batch > 1 {
                        producer.send_batch(batch).await.map(|r| r.len() as u64)
                    } else if args.keyed {
                        let m = batch.into_iter().next().expect("one message");
                        producer.send_ordered(m, key).await.map(|_| 1)
                    } else {
                        let m = batch.into_iter().next().expect("one message");
                        producer.send(m).await.map(|_| 1)
                    };
                    (started, result)
                }
            };
            let mut in_flight = FuturesUnordered::new();
            let mut samples = Vec::new();
            let mut issuing = true;
            loop {
                while issuing && in_flight.len() < args.window {
                    let out_of_time = args.count.is_none() && Instant::now() >= deadline;
                    if out_of_time || issued.fetch_add(args.batch as u64, Ordering::Relaxed) >= limit {
                        issuing = false;
                        break;
                    }
                    in_flight.push(send_one(Instant::now()));
                }
                let Some((started, result)) = in_flight.next().await else {
                    break;
                };
                match result {
                    Ok(n) => {
                        progress.done.fetch_add(n, Ordering::Relaxed);
                        samples.push(started.elapsed().as_micros() as u64);
                    }
                    Err(e) => progress.error(&e),
                }
            }
            progress.samples.lock().unwrap().0.extend(samples);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = progress.start.elapsed();
    line.abort();
    let mut extra = json!({"size": args.size, "producers": args.producers, "window": args.window, "batch": args.batch, "keyed": args.keyed, "keys": args.keys, "n_property": args.n_property, "random": args.random, "transactional": args.transactional});
    if args.transactional {
        let commit = commits.lock().unwrap().percentiles();
        if !as_json {
            println!(
                "commit latency ms: p50 {:.3}  p99 {:.3}  max {:.3}",
                commit["p50_ms"].as_f64().unwrap_or(0.0),
                commit["p99_ms"].as_f64().unwrap_or(0.0),
                commit["max_ms"].as_f64().unwrap_or(0.0)
            );
        }
        extra["commit_latency"] = commit;
    }
    report(
        if args.transactional {
            "produce (transactions)"
        } else {
            "produce"
        },
        &progress,
        elapsed,
        args.size,
        extra,
        as_json,
    );
    Ok(())
}

async fn consume(
    client: Client,
    args: ConsumeArgs,
    as_json: bool,
    live: Option<Arc<AtomicBool>>,
) -> anyhow::Result<()> {
    let preference = if args.slave {
        ReadPreference::SlaveOnly
    } else {
        ReadPreference::Master
    };
    let reader = PullConsumer::new(client.clone(), preference);
    let queues = reader.queues(&args.topic).await?;
    if let Some(group) = &args.group {
        return consume_in_group(client, reader, queues, group, args.clone(), preference, as_json).await;
    }
    let progress = Progress::new();
    let line = progress.spawn_line("consume");
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let bytes = Arc::new(AtomicU64::new(0));
    // Queue positions passed, delivered or filtered out.
    let scanned = Arc::new(AtomicU64::new(0));
    let selector = match &args.sql {
        Some(sql) => MessageSelector::by_sql(sql),
        None => MessageSelector::all(),
    };
    selector.check()?;
    let mut tasks = Vec::new();
    for q in queues {
        let (reader, progress, args, live, bytes, scanned, selector) = (
            reader.clone(),
            progress.clone(),
            args.clone(),
            live.clone(),
            bytes.clone(),
            scanned.clone(),
            selector.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let q: MessageQueue = q;
            // Live (e2e): from the current end; otherwise the whole queue as it is now.
            let (mut offset, end) = match reader.queue_offsets(&args.topic, &q).await {
                Ok((_, max)) if live.is_some() => (max, u64::MAX),
                Ok((min, max)) => (min, max),
                Err(e) => {
                    progress.error(&e);
                    return;
                }
            };
            let mut local = Vec::new();
            let stopped = || live.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
            while offset < end && Instant::now() < deadline && !stopped() {
                let wait = if live.is_some() {
                    Duration::from_millis(200)
                } else {
                    Duration::ZERO
                };
                match reader.pull(&args.topic, &q, offset, args.batch, &selector, wait).await {
                    Ok(r) => {
                        let now = now_us();
                        // Added once a pull: eight tasks adding to one counter per message
                        // fought over its cache line.
                        let mut pulled_bytes = 0u64;
                        for m in &r.messages {
                            // e2e: from the send time the producer wrote into the body (µs);
                            // consume: from the store timestamp the broker gave it (ms).
                            let since = if live.is_some() {
                                sent_at(&m.body)
                            } else {
                                Some(store_us(m))
                            };
                            if let Some(t) = since {
                                local.push(now.saturating_sub(t));
                            }
                            pulled_bytes += m.body.len() as u64;
                        }
                        bytes.fetch_add(pulled_bytes, Ordering::Relaxed);
                        progress.done.fetch_add(r.messages.len() as u64, Ordering::Relaxed);
                        scanned.fetch_add(r.next_offset.saturating_sub(offset), Ordering::Relaxed);
                        // A filter may pass over positions without returning a message.
                        if r.next_offset <= offset && live.is_none() {
                            break;
                        }
                        offset = r.next_offset;
                    }
                    Err(e) => {
                        progress.error(&e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            progress.samples.lock().unwrap().0.extend(local);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = progress.start.elapsed();
    line.abort();
    let done = progress.done.load(Ordering::Relaxed).max(1);
    let size = (bytes.load(Ordering::Relaxed) / done) as usize;
    let kind = if live.is_some() { "e2e" } else { "consume" };
    let scanned = scanned.load(Ordering::Relaxed);
    let scanned_per_s = (scanned as f64 / elapsed.as_secs_f64().max(1e-9)).round();
    let extra = json!({"batch": args.batch, "from": if args.slave { "slave" } else { "master" }, "sql": args.sql, "scanned": scanned, "scanned_per_s": scanned_per_s});
    if args.sql.is_some() && !as_json {
        println!(
            "filter {:?}: {scanned} queue positions passed = {scanned_per_s} /s",
            args.sql.as_deref().unwrap_or("")
        );
    }
    report(kind, &progress, elapsed, size, extra, as_json);
    Ok(())
}

/// `bench consume --group`: one member of a consumer group reads until every queue reaches the
/// end it had when the run started (or the duration ends), then commits its offsets and leaves.
async fn consume_in_group(
    client: Client,
    reader: PullConsumer,
    queues: Vec<MessageQueue>,
    group: &str,
    args: ConsumeArgs,
    preference: ReadPreference,
    as_json: bool,
) -> anyhow::Result<()> {
    // Where each queue ends now, and where the group starts in it: its committed offset, or
    // the queue's start for a group that has none.
    let mut ends: BTreeMap<MessageQueue, (u64, u64)> = BTreeMap::new();
    let mut committed: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
    for q in &queues {
        if !committed.contains_key(&q.group) {
            let offsets = reader.committed_offsets(&args.topic, &q.group, group).await?;
            committed.insert(q.group.clone(), offsets);
        }
        let (min, max) = reader.queue_offsets(&args.topic, q).await?;
        let from = committed[&q.group].get(&q.queue_id).copied().unwrap_or(min).max(min);
        ends.insert(q.clone(), (from, max));
    }
    let expected: u64 = ends.values().map(|(from, end)| end.saturating_sub(*from)).sum();
    let progress = Progress::new();
    let line = progress.spawn_line("consume");
    let bytes = Arc::new(AtomicU64::new(0));
    // The next offset each queue's handler is at.
    let positions: Arc<Mutex<BTreeMap<MessageQueue, u64>>> = Arc::default();
    let (caught_up_tx, mut caught_up) = tokio::sync::watch::channel(expected == 0);
    let handler = {
        let (progress, bytes, positions, ends) = (progress.clone(), bytes.clone(), positions.clone(), ends.clone());
        move |batch: &[ReceivedMessage]| {
            let now = now_us();
            let mut local = Vec::with_capacity(batch.len());
            for m in batch {
                local.push(now.saturating_sub(store_us(m)));
                bytes.fetch_add(m.body.len() as u64, Ordering::Relaxed);
            }
            progress.done.fetch_add(batch.len() as u64, Ordering::Relaxed);
            progress.samples.lock().unwrap().0.extend(local);
            if let Some(last) = batch.last() {
                let q = MessageQueue {
                    group: last.group.clone(),
                    queue_id: last.queue_id,
                };
                let mut positions = positions.lock().unwrap();
                positions.insert(q, last.queue_offset + 1);
                let done = ends
                    .iter()
                    .all(|(q, (from, end))| positions.get(q).copied().unwrap_or(*from) >= *end);
                if done {
                    let _ = caught_up_tx.send(true);
                }
            }
            ConsumeResult::Success
        }
    };
    let consumer = PushConsumer::builder(client, group, &args.topic)
        .read_preference(preference)
        .consume_from(ConsumeFrom::First)
        .batch_size(args.batch)
        .start(handler)
        .await?;
    let _ = tokio::time::timeout(Duration::from_secs(args.duration), caught_up.wait_for(|c| *c)).await;
    let elapsed = progress.start.elapsed();
    consumer.shutdown().await;
    line.abort();
    let done = progress.done.load(Ordering::Relaxed).max(1);
    let size = (bytes.load(Ordering::Relaxed) / done) as usize;
    let extra = json!({"batch": args.batch, "from": if args.slave { "slave" } else { "master" }, "group": group, "expected": expected});
    report("consume", &progress, elapsed, size, extra, as_json);
    Ok(())
}
