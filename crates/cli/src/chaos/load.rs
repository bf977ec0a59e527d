//! The load a chaos run keeps on the group while faults hit it: producers sending unique,
//! self-describing bodies (`p{producer}-{seq}`, every attempt a new seq; every tenth one a
//! delayed message `d{producer}-{seq}`, due 0.5 to 2 s after its send; every tenth another a
//! transaction, in turn committed `tc...`, rolled back `tr...`, or left open `ts...` for the
//! checker, which commits `tc` and `ts` and rolls back `tr`) and recording what each send's
//! outcome was, a consumer group reading all along, an orderly consumer group (two members under
//! broker-held queue locks) reading all along, and a watcher of the committed consume offsets. It
//! records; [`super::verdict`] judges.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmq_client::{
    Client, ConsumeFrom, ConsumeResult, Message, MessageQueue, Producer, PushConsumer, TransactionProducer,
    TransactionState,
};
use raftmq_common::ErrorCode;
use raftmq_proto as pb;

use super::cluster::{deadline, stage};
use crate::ops::node_status;

/// The consumer group the run reads with.
const GROUP: &str = "chaos-group";
/// The orderly consumer group the run reads with.
const ORDERLY_GROUP: &str = "chaos-orderly";

/// A message the consumer group got: queue, offset, body.
pub type Received = (MessageQueue, u64, Vec<u8>);

/// What happened to one send.
#[derive(Debug, Clone)]
pub enum Outcome {
    Acked(MessageQueue, u64),
    /// A delayed message acknowledged: due at this time (ms since the epoch), in no queue yet.
    Scheduled(i64),
    /// Reported as certainly not stored, with the error.
    Failed(String),
    /// Timed out or cut off mid-call, with the error.
    Unknown(String),
    /// A transaction whose half message was stored and that ends committed: by its producer,
    /// or (when the commit was not answered, or it was left open) by the checker.
    TxCommitted,
    /// A transaction whose half message was stored and that ends rolled back.
    TxRolledBack,
}

/// The producer group of the run's transactions.
const TX_GROUP: &str = "chaos-transactions";

/// What the load saw, once it stopped.
pub struct Record {
    /// Every send by body.
    pub outcomes: BTreeMap<String, Outcome>,
    /// The checker of open transactions, kept answering until the verdict is read.
    pub checker: TransactionProducer,
    /// Every message the consumer group got.
    pub consumed: Vec<Received>,
    /// Every message the orderly group got, in the order each member handled them (one list
    /// per member).
    pub orderly: Vec<Vec<Received>>,
    /// Committed consume offsets that moved backwards.
    pub offsets_back: Vec<String>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<BTreeMap<String, Outcome>>>,
    /// When the newest acknowledged send had started.
    pub last_ack: Arc<Mutex<Instant>>,
    producers: Vec<tokio::task::JoinHandle<()>>,
    consumed: Arc<Mutex<Vec<Received>>>,
    consumer: PushConsumer,
    orderly: Vec<(PushConsumer, Arc<Mutex<Vec<Received>>>)>,
    offsets_back: Arc<Mutex<Vec<String>>>,
    watcher: tokio::task::JoinHandle<()>,
    checker: TransactionProducer,
}

impl Load {
    pub async fn start(
        client: &Client,
        topic: &str,
        producers: usize,
        nodes: &BTreeMap<u64, String>,
    ) -> anyhow::Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes: Arc<Mutex<BTreeMap<String, Outcome>>> = Arc::default();
        let last_ack = Arc::new(Mutex::new(Instant::now()));
        // Answers checks by the body: what was meant to commit commits.
        let checker = TransactionProducer::builder(client.clone(), TX_GROUP)
            .topics([topic.to_owned()])
            .checker(|m| async move {
                if m.body.starts_with(b"tr") {
                    TransactionState::Rollback
                } else {
                    TransactionState::Commit
                }
            })
            .start()?;
        let producers = (0..producers)
            .map(|p| {
                let send = Sender {
                    producer: Producer::new(client.clone()),
                    transactions: checker.clone(),
                    topic: topic.to_owned(),
                    outcomes: outcomes.clone(),
                    last_ack: last_ack.clone(),
                };
                tokio::spawn(send.run(p, stop.clone()))
            })
            .collect();
        let consumed: Arc<Mutex<Vec<Received>>> = Arc::default();
        let consumer = PushConsumer::builder(client.clone(), GROUP, topic)
            .consume_from(ConsumeFrom::First)
            .start(record_into(consumed.clone()))
            .await?;
        let mut orderly = Vec::new();
        for _ in 0..2 {
            let got: Arc<Mutex<Vec<Received>>> = Arc::default();
            let member = PushConsumer::builder(client.clone(), ORDERLY_GROUP, topic)
                .orderly(true)
                .consume_from(ConsumeFrom::First)
                .start(record_into(got.clone()))
                .await?;
            orderly.push((member, got));
        }
        let offsets_back: Arc<Mutex<Vec<String>>> = Arc::default();
        let watcher = tokio::spawn(watch_offsets(
            client.clone(),
            stop.clone(),
            nodes.clone(),
            offsets_back.clone(),
            topic.to_owned(),
        ));
        Ok(Load {
            stop,
            outcomes,
            last_ack,
            producers,
            consumed,
            consumer,
            orderly,
            offsets_back,
            watcher,
            checker,
        })
    }

    /// Tells the producers and the watcher to stop after their current step.
    pub fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the producers and the watcher to stop, lets the consumer group drain what was
    /// acknowledged (30 s at most), and stops it. Every step has a deadline and says which one
    /// ran out: a wait without one once kept a finished 300-round run from reaching its verdict.
    pub async fn stop(self, healthy: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<Record> {
        self.halt();
        stage("stopping the producers", Duration::from_secs(60), async {
            for p in self.producers {
                p.await?;
            }
            Ok(())
        })
        .await?;
        stage("stopping the offset watcher", Duration::from_secs(30), async {
            Ok(self.watcher.await?)
        })
        .await?;
        stage("waiting for a healthy group", Duration::from_secs(40), healthy).await?;
        eprintln!("chaos: draining the consumer group");
        let outcomes = self.outcomes.lock().unwrap().clone();
        let acked: Vec<&[u8]> = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Acked(..) | Outcome::Scheduled(_)))
            .map(|(b, _)| b.as_bytes())
            .collect();
        let drain_end = Instant::now() + Duration::from_secs(30);
        loop {
            let all_in = {
                let consumed = self.consumed.lock().unwrap();
                let got: std::collections::BTreeSet<&[u8]> = consumed.iter().map(|(_, _, b)| b.as_slice()).collect();
                acked.iter().all(|b| got.contains(b))
            };
            if all_in || Instant::now() >= drain_end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The orderly group drains too (its queues may wait for a dead member's lock).
        let orderly_end = Instant::now() + Duration::from_secs(90);
        loop {
            let all_in = {
                let mut got = std::collections::BTreeSet::new();
                for (_, list) in &self.orderly {
                    got.extend(list.lock().unwrap().iter().map(|(_, _, b)| b.clone()));
                }
                acked.iter().all(|b| got.contains(*b))
            };
            if all_in || Instant::now() >= orderly_end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut orderly = Vec::new();
        for (member, list) in self.orderly {
            stage("stopping an orderly member", Duration::from_secs(30), async {
                member.shutdown().await;
                Ok(())
            })
            .await?;
            orderly.push(std::mem::take(&mut *list.lock().unwrap()));
        }
        stage("stopping the consumer", Duration::from_secs(30), async {
            self.consumer.shutdown().await;
            Ok(())
        })
        .await?;
        let consumed = std::mem::take(&mut *self.consumed.lock().unwrap());
        let offsets_back = std::mem::take(&mut *self.offsets_back.lock().unwrap());
        Ok(Record {
            outcomes,
            checker: self.checker,
            orderly,
            consumed,
            offsets_back,
        })
    }
}

/// A consumer's handler that records every message it gets into `list`.
fn record_into(
    list: Arc<Mutex<Vec<Received>>>,
) -> impl Fn(&[raftmq_client::ReceivedMessage]) -> ConsumeResult + Send + Sync + 'static {
    move |batch| {
        let mut l = list.lock().unwrap();
        for m in batch {
            let queue = MessageQueue {
                group: m.group.clone(),
                queue_id: m.queue_id,
            };
            l.push((queue, m.queue_offset, m.body.to_vec()));
        }
        ConsumeResult::Success
    }
}

/// One producer of the run.
struct Sender {
    producer: Producer,
    transactions: TransactionProducer,
    topic: String,
    outcomes: Arc<Mutex<BTreeMap<String, Outcome>>>,
    last_ack: Arc<Mutex<Instant>>,
}

impl Sender {
    async fn run(self, p: usize, stop: Arc<AtomicBool>) {
        let mut seq = 0u64;
        while !stop.load(Ordering::SeqCst) {
            if seq % 10 == 4 {
                let kind = ["tc", "tr", "ts"][(seq / 10 % 3) as usize];
                let body = format!("{kind}{p}-{seq}");
                seq += 1;
                let outcome = self.transaction(kind, &body).await;
                self.outcomes.lock().unwrap().insert(body, outcome);
                continue;
            }
            let delayed = seq % 10 == 9;
            let body = format!("{}{p}-{seq}", if delayed { 'd' } else { 'p' });
            let mut message = Message::new(&self.topic, body.clone());
            if delayed {
                message = message.with_delay(Duration::from_millis(500 + seq % 16 * 100));
            }
            seq += 1;
            let started = Instant::now();
            let outcome = match self.producer.send(message).await {
                Ok(r) => {
                    let mut last = self.last_ack.lock().unwrap();
                    *last = (*last).max(started);
                    match r.delayed {
                        Some(d) => Outcome::Scheduled(d.deliver_at_ms),
                        None => {
                            let queue = MessageQueue {
                                group: r.group,
                                queue_id: r.queue_id,
                            };
                            Outcome::Acked(queue, r.queue_offset)
                        }
                    }
                }
                Err(e) if e.code == ErrorCode::Timeout => Outcome::Unknown(e.to_string()),
                Err(e) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Outcome::Failed(e.to_string())
                }
            };
            self.outcomes.lock().unwrap().insert(body, outcome);
        }
    }
}

impl Sender {
    /// One transaction: the half message, then its end as `kind` says. Whatever the end's
    /// answer, the outcome is what the transaction comes to: an end not answered is ended by the
    /// checker the same way.
    async fn transaction(&self, kind: &str, body: &str) -> Outcome {
        let started = Instant::now();
        let txn = match self.transactions.send(Message::new(&self.topic, body.to_owned())).await {
            Ok(txn) => txn,
            Err(e) if e.code == ErrorCode::Timeout => return Outcome::Unknown(e.to_string()),
            Err(e) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Outcome::Failed(e.to_string());
            }
        };
        {
            let mut last = self.last_ack.lock().unwrap();
            *last = (*last).max(started);
        }
        let ended = match kind {
            "tc" => txn.commit().await.map(|_| ()),
            "tr" => txn.rollback().await,
            _ => Ok(()),
        };
        // An end not answered is ended by the checker, the same way.
        let _ = ended;
        if kind == "tr" {
            Outcome::TxRolledBack
        } else {
            Outcome::TxCommitted
        }
    }
}

/// Committed consume offsets as the current master (highest term seen) reports them: they must
/// never move backwards. (A lagging slave may show older ones; that is not a commit going back,
/// so slaves are not asked.)
async fn watch_offsets(
    client: Client,
    stop: Arc<AtomicBool>,
    nodes: BTreeMap<u64, String>,
    violations: Arc<Mutex<Vec<String>>>,
    topic: String,
) {
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    let mut term = 0;
    while !stop.load(Ordering::SeqCst) {
        let mut master = None;
        for addr in nodes.values() {
            if let Some(s) = node_status(&client, addr).await {
                if s.role == pb::Role::Master as i32
                    && s.term >= term
                    && master.as_ref().is_none_or(|(t, _)| s.term > *t)
                {
                    master = Some((s.term, addr.clone()));
                }
            }
        }
        if let Some((t, addr)) = master {
            term = t;
            // This run's topic only: the group may have offsets in earlier runs' topics.
            let req = pb::GetConsumeOffsetsRequest {
                consumer_group: GROUP.into(),
                topic: topic.clone(),
            };
            if let Ok(mut b) = client.broker(&addr) {
                if let Ok(reply) = b.get_consume_offsets(deadline(req)).await {
                    for o in reply.into_inner().offsets {
                        if let Some(prev) = last.insert(o.queue_id, o.offset) {
                            if o.offset < prev {
                                let text = format!(
                                    "queue {} offset moved back from {prev} to {} (term {t})",
                                    o.queue_id, o.offset
                                );
                                violations.lock().unwrap().push(text);
                            }
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
