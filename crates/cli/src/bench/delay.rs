//! `raftmq bench delay`: how late delayed messages become visible after their due time.
//!
//! Two shapes: a burst of `--count` messages all due at the same moment (`--due-in` seconds after
//! the run starts), and a steady `--rate` of sends each due `--delay-ms` after it is sent. A
//! reader per queue long-polls from the queue's end at the start and, for every message, takes
//! its due time from `TIMER_DELIVER_MS`: "stored" lateness is the delivery entry's timestamp less
//! the due time (the broker's view), "visible" lateness the moment the reader got it less the due
//! time (what a consumer sees; this machine's clock for both). A message seen before its time, or
//! twice, is counted and fails the run.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, ValueEnum};
use futures::stream::{FuturesUnordered, StreamExt};
use raftmq_client::{Client, Message, Producer, PullConsumer, ReadPreference};
use raftmq_common::time::now_ms;
use serde_json::json;

use super::Samples;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shape {
    /// Every message due at the same moment.
    Burst,
    /// A steady rate of sends, each due a fixed delay later.
    Steady,
}

#[derive(Debug, Args, Clone)]
pub struct DelayArgs {
    #[arg(long, default_value = "BenchDelay")]
    topic: String,
    #[arg(long, value_enum, default_value_t = Shape::Burst)]
    shape: Shape,
    /// Burst: how many messages.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Burst: seconds from the start of the run to the moment they are all due (sending them
    /// must finish before it).
    #[arg(long, default_value_t = 30)]
    due_in: u64,
    /// Steady: sends per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Steady: seconds of sending.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Steady: each message's delay, ms.
    #[arg(long, default_value_t = 2_000)]
    delay_ms: u64,
    /// Body size in bytes (at least 8: the message's number).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Sends in flight.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Only schedule the messages, without waiting for them (to measure a broker holding many
    /// pending ones; give a large --due-in).
    #[arg(long)]
    schedule_only: bool,
}

/// What the readers saw.
#[derive(Default)]
struct Seen {
    stored: Samples,
    visible: Samples,
    numbers: HashSet<u64>,
    early: u64,
    twice: u64,
}

pub async fn run(client: Client, args: DelayArgs, as_json: bool) -> anyhow::Result<()> {
    if args.window == 0 || args.rate == 0 {
        bail!("--window and --rate must be at least 1");
    }
    let route = client.route(&args.topic).await?;
    let reader = PullConsumer::new(client.clone(), ReadPreference::Master);
    let mut starts = Vec::new();
    for q in route.read_queues() {
        let (_, end) = reader.queue_offsets(&args.topic, &q).await?;
        starts.push((q, end));
    }
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = if args.schedule_only {
        Vec::new()
    } else {
        starts
            .into_iter()
            .map(|(queue, start)| {
                let (reader, topic, seen, delivered, stop) = (
                    reader.clone(),
                    args.topic.clone(),
                    seen.clone(),
                    delivered.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let mut offset = start;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(r) = reader
                            .pull(&topic, &queue, offset, 1024, "*", Duration::from_millis(500))
                            .await
                        else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        let now = now_ms();
                        let mut s = seen.lock().unwrap();
                        for m in &r.messages {
                            let Some(due) = m.properties.get("TIMER_DELIVER_MS").and_then(|d| d.parse::<i64>().ok())
                            else {
                                continue;
                            };
                            let number = m.body.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
                            if !s.numbers.insert(number.unwrap_or(u64::MAX)) {
                                s.twice += 1;
                            }
                            if m.store_timestamp_ms < due {
                                s.early += 1;
                            }
                            s.stored.0.push((m.store_timestamp_ms - due).max(0) as u64 * 1000);
                            s.visible.0.push((now - due).max(0) as u64 * 1000);
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        offset = r.next_offset;
                    }
                })
            })
            .collect()
    };

    let started = Instant::now();
    let producer = Producer::new(client.clone());
    let (sent, errors, last_due) = match args.shape {
        Shape::Burst => {
            let due = now_ms() + args.due_in as i64 * 1000;
            let (sent, errors) = send_all(&producer, &args, args.count, |_| Some(due), None).await;
            if now_ms() >= due {
                eprintln!("bench delay: sending took past the due time; give a larger --due-in");
            }
            (sent, errors, due)
        }
        Shape::Steady => {
            let count = args.rate * args.duration;
            let (sent, errors) = send_all(&producer, &args, count, |_| None, Some(args.rate)).await;
            (sent, errors, now_ms() + args.delay_ms as i64)
        }
    };
    let send_secs = started.elapsed().as_secs_f64();
    if !args.schedule_only {
        // Everything acknowledged is delivered by its due time plus 30 s, or it counts as missing.
        let end = last_due + 30_000;
        while delivered.load(Ordering::Relaxed) < sent && now_ms() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            let _ = r.await;
        }
    }
    let mut s = std::mem::take(&mut *seen.lock().unwrap());
    let got = delivered.load(Ordering::Relaxed);
    let (stored, visible) = (s.stored.percentiles(), s.visible.percentiles());
    let out = json!({"kind": "delay", "shape": format!("{:?}", args.shape).to_lowercase(), "sent": sent,
        "send_errors": errors, "send_seconds": send_secs, "delivered": got, "missing": sent.saturating_sub(got),
        "early": s.early, "twice": s.twice, "stored_late": stored, "visible_late": visible});
    if as_json {
        println!("{out}");
    } else {
        println!(
            "delay ({:?}): {sent} scheduled in {send_secs:.1} s ({errors} send errors), {got} delivered, {} missing, {} early, {} twice",
            args.shape,
            sent.saturating_sub(got),
            s.early,
            s.twice
        );
        for (what, p) in [("stored", &stored), ("visible", &visible)] {
            println!(
                "{what} late ms: p50 {:.0}  p99 {:.0}  max {:.0}",
                p["p50_ms"].as_f64().unwrap_or(0.0),
                p["p99_ms"].as_f64().unwrap_or(0.0),
                p["max_ms"].as_f64().unwrap_or(0.0)
            );
        }
    }
    if s.early > 0 || s.twice > 0 || (!args.schedule_only && got < sent) {
        bail!("delayed messages delivered early, twice or not at all");
    }
    Ok(())
}

/// Sends `count` delayed messages with a window (and a rate, for the steady shape); each is due
/// at `due(n)`, or `--delay-ms` after its send. Returns (acknowledged, failed).
async fn send_all(
    producer: &Producer,
    args: &DelayArgs,
    count: u64,
    due: impl Fn(u64) -> Option<i64>,
    rate: Option<u64>,
) -> (u64, u64) {
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut errors) = (0u64, 0u64);
    for n in 0..count {
        if let Some(rate) = rate {
            // The n-th send starts no earlier than n / rate seconds into the run.
            let at = Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = at.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let mut body = vec![b'x'; args.size.max(8)];
        body[..8].copy_from_slice(&n.to_le_bytes());
        let message = Message::new(&args.topic, body);
        let message = match due(n) {
            Some(at) => message.with_deliver_at(at),
            None => message.with_delay(Duration::from_millis(args.delay_ms)),
        };
        in_flight.push(producer.send_async(message));
        while in_flight.len() >= args.window {
            match in_flight.next().await {
                Some(Ok(_)) => sent += 1,
                Some(Err(_)) => errors += 1,
                None => break,
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        match r {
            Ok(_) => sent += 1,
            Err(_) => errors += 1,
        }
    }
    (sent, errors)
}
