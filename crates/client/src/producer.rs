//! The producer: sync, async, one-way, batch and ordered (keyed) sends.
//!
//! Queue choice is round robin over every writable queue of the topic, or, with a sharding key,
//! a stable hash of the key over the queue list (same key → same queue while the queue count is
//! unchanged). A send that certainly did not happen (a slave answered `NOT_MASTER`, the node was
//! unreachable) is retried — at once at the master a slave names, on another group for
//! unkeyed sends — until the send timeout. A send whose outcome is unknown is never retried
//! silently: it returns [`Error::Timeout`].

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};

use raftmq_proto as pb;

use raftmq_common::{Error, ErrorCode};

use crate::error::{classify, Retry};
use crate::message::{Delayed, Message, SendResult};
use crate::route::MessageQueue;
use crate::Client;

/// Most `NOT_MASTER` hops followed within one attempt.
const MAX_HOPS: usize = 3;

/// How long a send in flight to a master that the NameServers no longer name still waits for
/// that master's answer.
const MOVED_GRACE: Duration = Duration::from_millis(250);

/// Sends messages. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    core: Core,
    batcher: mpsc::UnboundedSender<(Message, oneshot::Sender<Result<SendResult, Error>>)>,
    /// Requests in flight, at most [`MAX_BATCH_RPCS`]; shared with the batcher.
    slots: Arc<Semaphore>,
    /// Messages waiting in the batcher's channel.
    queued: Arc<AtomicUsize>,
}

/// What sending needs: the client and the round robin over queues. The batching task holds a
/// clone of it and not the channel, so it ends when the last [`Producer`] clone is dropped.
#[derive(Clone)]
struct Core {
    client: Client,
    next: Arc<AtomicUsize>,
}

/// Send requests one producer keeps in flight before it coalesces messages.
pub const MAX_BATCH_RPCS: usize = 8;
/// Most messages coalesced into one request.
const MAX_COALESCED: usize = 256;
/// Most bytes coalesced into one request.
const MAX_COALESCED_BYTES: usize = 1 << 20;

type Pending = (Message, oneshot::Sender<Result<SendResult, Error>>);

/// Coalesces single sends: takes what queued, groups it by topic, one request per group.
async fn batch_sends(
    producer: Core,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    slots: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // Senders woken by the request that freed this slot are queueing their next messages
        // right now: one turn of the scheduler lets them join this request.
        tokio::task::yield_now().await;
        queued.fetch_sub(1, Ordering::SeqCst);
        let mut bytes = first.0.body.len();
        // Delayed and immediate messages never share a request (a broker refuses the mix).
        let mut by_topic: std::collections::BTreeMap<(String, bool), Vec<Pending>> = Default::default();
        by_topic
            .entry((first.0.topic.clone(), first.0.is_delayed()))
            .or_default()
            .push(first);
        let mut count = 1;
        while count < MAX_COALESCED && bytes < MAX_COALESCED_BYTES {
            let Ok(p) = rx.try_recv() else { break };
            queued.fetch_sub(1, Ordering::SeqCst);
            bytes += p.0.body.len();
            count += 1;
            by_topic
                .entry((p.0.topic.clone(), p.0.is_delayed()))
                .or_default()
                .push(p);
        }
        let producer = producer.clone();
        tokio::spawn(async move {
            let sends = by_topic.into_iter().map(|((topic, _), pending)| {
                let producer = producer.clone();
                async move { producer.send_coalesced(&topic, pending).await }
            });
            futures::future::join_all(sends).await;
            drop(permit);
        });
    }
}

/// A send running in the background; await it for the result.
pub struct SendFuture(tokio::task::JoinHandle<Result<SendResult, Error>>);

impl Future for SendFuture {
    type Output = Result<SendResult, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|e| Err(ErrorCode::Internal.err(format!("send task failed: {e}")))))
    }
}

/// FNV-1a: a hash that is the same in every process and version, unlike std's.
pub fn stable_hash(key: &str) -> u64 {
    raftmq_common::stable_hash(key)
}

impl Producer {
    pub fn new(client: Client) -> Producer {
        // Start the round robin at a different queue in every process, as RocketMQ's producers
        // do, so short-lived producers do not all write to queue 0.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as usize)
            .unwrap_or(0)
            ^ std::process::id() as usize;
        let (tx, rx) = mpsc::unbounded_channel();
        let producer = Producer {
            core: Core {
                client,
                next: Arc::new(AtomicUsize::new(seed)),
            },
            batcher: tx,
            slots: Arc::new(Semaphore::new(MAX_BATCH_RPCS)),
            queued: Arc::new(AtomicUsize::new(0)),
        };
        tokio::spawn(batch_sends(
            producer.core.clone(),
            rx,
            producer.slots.clone(),
            producer.queued.clone(),
        ));
        producer
    }

    /// Sends one message and waits for it to be committed.
    ///
    /// Concurrent sends of one producer (async sends, many tasks) are coalesced: while
    /// [`MAX_BATCH_RPCS`] requests are in flight, new messages of a topic wait and go together in
    /// the next request, to one queue. An idle producer sends each message at once.
    pub async fn send(&self, message: Message) -> Result<SendResult, Error> {
        // An idle producer (nothing waiting, no request in flight) sends from this task, sparing
        // the hand-offs to the batcher and back (a sync sender's latency). A busy one leaves it
        // to the batcher: a message sent alone the moment a slot frees would take that slot
        // for a request of one.
        if self.queued.load(Ordering::SeqCst) == 0 && self.slots.available_permits() == MAX_BATCH_RPCS {
            if let Ok(_permit) = self.slots.clone().try_acquire_owned() {
                let topic = message.topic.clone();
                return first(self.core.send_to(&topic, std::slice::from_ref(&message), None).await);
            }
        }
        let (reply, result) = oneshot::channel();
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.batcher.send((message, reply)).is_err() {
            return Err(ErrorCode::Internal.err("the producer's batcher stopped"));
        }
        result
            .await
            .unwrap_or_else(|_| Err(ErrorCode::Internal.err("the producer's batcher stopped")))
    }

    /// Sends one message to the queue its sharding key hashes to: messages with the same key
    /// keep their order (while the topic's queue count is unchanged). No retry on another queue.
    pub async fn send_ordered(&self, message: Message, sharding_key: &str) -> Result<SendResult, Error> {
        let topic = message.topic.clone();
        first(
            self.core
                .send_to(&topic, std::slice::from_ref(&message), Some(sharding_key))
                .await,
        )
    }

    /// Sends messages of one topic as one batch, into one queue, committed together.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendResult>, Error> {
        let topic = messages
            .first()
            .map(|m| m.topic.clone())
            .ok_or_else(|| ErrorCode::InvalidArgument.err("empty batch"))?;
        if let Some(m) = messages.iter().find(|m| m.topic != topic) {
            return Err(ErrorCode::InvalidArgument
                .err(format!("a batch holds one topic; {:?} differs from {topic:?}", m.topic)));
        }
        self.core.send_to(&topic, &messages, None).await
    }

    /// Cancels a delayed message that is not due yet (see [`crate::Admin::recall`]).
    pub async fn recall(&self, topic: &str, recall_handle: &str) -> Result<(), Error> {
        crate::Admin::new(self.core.client.clone())
            .recall(topic, recall_handle)
            .await
    }

    /// Starts a send and returns at once; the future yields its result.
    pub fn send_async(&self, message: Message) -> SendFuture {
        let producer = self.clone();
        SendFuture(tokio::spawn(async move { producer.send(message).await }))
    }

    /// Starts a send and forgets it (RocketMQ's one-way send): nobody learns whether it arrived.
    pub fn send_oneway(&self, message: Message) {
        let producer = self.clone();
        tokio::spawn(async move {
            if let Err(e) = producer.send(message).await {
                tracing::debug!("one-way send failed: {e}");
            }
        });
    }
}

impl Core {
    /// Sends what the batcher coalesced for one topic as one request and answers each sender.
    async fn send_coalesced(&self, topic: &str, pending: Vec<Pending>) {
        let (messages, replies): (Vec<Message>, Vec<_>) = pending.into_iter().unzip();
        match self.send_to(topic, &messages, None).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            // One bad message must not fail its neighbours: send each alone to find it.
            Err(e)
                if matches!(e.code, ErrorCode::MessageTooLarge | ErrorCode::InvalidArgument) && messages.len() > 1 =>
            {
                for (message, reply) in messages.into_iter().zip(replies) {
                    let _ = reply.send(first(self.send_to(topic, std::slice::from_ref(&message), None).await));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    async fn send_to(&self, topic: &str, messages: &[Message], key: Option<&str>) -> Result<Vec<SendResult>, Error> {
        if messages.is_empty() {
            return Err(ErrorCode::InvalidArgument.err("nothing to send"));
        }
        let born_timestamp_ms = raftmq_common::time::now_ms();
        let timeout = self.client.config().send_timeout;
        let deadline = Instant::now() + timeout;
        let mut route = self.client.route(topic).await?;
        let mut avoid: BTreeSet<String> = BTreeSet::new();
        let mut attempts = 0u32;
        let mut backoff = Duration::from_millis(20);
        loop {
            let all = route.write_queues();
            if all.is_empty() {
                return Err(ErrorCode::NoPermission.err(format!("topic {topic:?} has no writable queue")));
            }
            let queue: MessageQueue = match key {
                Some(k) => all[(stable_hash(k) % all.len() as u64) as usize].clone(),
                None => {
                    let open: Vec<&MessageQueue> = all.iter().filter(|q| !avoid.contains(&q.group)).collect();
                    let pool = if open.is_empty() { all.iter().collect() } else { open };
                    pool[self.next.fetch_add(1, Ordering::Relaxed) % pool.len()].clone()
                }
            };
            let master = route.group(&queue.group).and_then(|g| g.master.clone());
            let outcome = match master {
                Some(addr) => {
                    self.send_following_leader(&addr, topic, &queue, messages, born_timestamp_ms, deadline)
                        .await
                }
                None => Err((
                    Retry::Unreachable,
                    ErrorCode::Unavailable.err(format!("group {} has no master right now", queue.group)),
                )),
            };
            match outcome {
                Ok(results) => return Ok(results),
                Err((Retry::No, e)) | Err((Retry::Unknown, e)) => return Err(e),
                Err((_, e)) => {
                    avoid.insert(queue.group.clone());
                    attempts += 1;
                    if Instant::now() + backoff >= deadline && attempts > self.client.config().retries {
                        return Err(e);
                    }
                }
            }
            // Wait before the next try, but no longer than until the NameServers announce a
            // route change (a new master): sends resume as soon as the group does.
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.client.route_changed() => {}
            }
            backoff = (backoff * 2).min(Duration::from_millis(100));
            route = self.client.refresh_route(topic).await.unwrap_or(route);
        }
    }

    /// One attempt at one group's master, following `NOT_MASTER` hops at once.
    async fn send_following_leader(
        &self,
        master: &str,
        topic: &str,
        queue: &MessageQueue,
        messages: &[Message],
        born_timestamp_ms: i64,
        deadline: Instant,
    ) -> Result<Vec<SendResult>, (Retry, Error)> {
        let mut target = master.to_owned();
        let mut last = (Retry::Unreachable, ErrorCode::Unavailable.err("no attempt"));
        for _ in 0..MAX_HOPS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err((
                    Retry::Unknown,
                    ErrorCode::Timeout.err(format!("send to {topic} not acknowledged in time")),
                ));
            }
            let mut broker = self.client.broker(&target).map_err(|e| (Retry::No, e))?;
            let request = self.client.request(
                pb::SendRequest {
                    topic: topic.to_owned(),
                    queue_id: queue.queue_id,
                    // Built for each attempt: tonic takes the request, and a copy kept for a
                    // retry would cost every send a copy of every body.
                    messages: messages.iter().map(|m| m.to_proto(born_timestamp_ms)).collect(),
                },
                left,
            );
            // A master that stops answering (paused, partitioned) would hold this send until its
            // deadline; when the NameServers announce another master, give up on it soon: its
            // outcome is unknown, and the next send goes to the new master. Not at once: a
            // master handing its role over answers every send it holds (committed, or NOT_MASTER
            // and so safe to retry), and the announcement may overtake that answer.
            let send = broker.send(request);
            tokio::pin!(send);
            let reply = tokio::select! {
                reply = &mut send => reply,
                _ = self.client.master_moved(topic, &queue.group, &target) => {
                    let grace = MOVED_GRACE.min(deadline.saturating_duration_since(Instant::now()));
                    match tokio::time::timeout(grace, &mut send).await {
                        Ok(reply) => reply,
                        Err(_) => return Err((Retry::Unknown, ErrorCode::Timeout.err(format!("the master of {} changed while a send to {target} was in flight", queue.group)))),
                    }
                }
            };
            match reply {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    return Ok(reply
                        .results
                        .into_iter()
                        .map(|r| SendResult {
                            delayed: (!r.recall_handle.is_empty()).then_some(Delayed {
                                deliver_at_ms: r.deliver_at_ms,
                                recall_handle: r.recall_handle,
                            }),
                            msg_id: r.msg_id,
                            group: reply.group.clone(),
                            queue_id: r.queue_id,
                            queue_offset: r.queue_offset,
                        })
                        .collect());
                }
                Err(status) => match classify(&status) {
                    (Retry::AtLeader(Some(leader)), _) => target = leader,
                    (Retry::Unknown, _) if status.code() == tonic::Code::DeadlineExceeded => {
                        return Err((
                            Retry::Unknown,
                            ErrorCode::Timeout
                                .err(format!("send to {target} not acknowledged within the send timeout")),
                        ))
                    }
                    other => {
                        last = other;
                        break;
                    }
                },
            }
        }
        Err(last)
    }
}

fn first(results: Result<Vec<SendResult>, Error>) -> Result<SendResult, Error> {
    results?
        .into_iter()
        .next()
        .ok_or_else(|| ErrorCode::Internal.err("the broker acknowledged no message"))
}
