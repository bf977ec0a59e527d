//! The producer: sync, async, one-way, batch and ordered (keyed) sends.
//!
//! Queue choice is round robin over every writable queue of the topic, or, with a sharding key,
//! a stable hash of the key over the queue list (same key → same queue while the queue count is
//! unchanged). A send that certainly did not happen (a slave answered `NOT_MASTER`, the node was
//! unreachable) is retried — at once at the master a slave names, on another group for
//! unkeyed sends — until the send timeout. A send whose outcome is unknown is never retried
//! silently: it returns [`ClientError::Timeout`].

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use raftmq_proto as pb;

use crate::error::{classify, ClientError, Retry};
use crate::message::{Message, SendResult};
use crate::route::MessageQueue;
use crate::Client;

/// Most `NOT_MASTER` hops followed within one attempt.
const MAX_HOPS: usize = 3;

/// Sends messages. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    client: Client,
    next: Arc<AtomicUsize>,
}

/// A send running in the background; await it for the result.
pub struct SendFuture(tokio::task::JoinHandle<Result<SendResult, ClientError>>);

impl Future for SendFuture {
    type Output = Result<SendResult, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|e| Err(ClientError::Other(format!("send task failed: {e}")))))
    }
}

/// FNV-1a: a hash that is the same in every process and version, unlike std's.
pub fn stable_hash(key: &str) -> u64 {
    key.bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

impl Producer {
    pub fn new(client: Client) -> Producer {
        Producer {
            client,
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Sends one message and waits for it to be committed.
    pub async fn send(&self, message: Message) -> Result<SendResult, ClientError> {
        let topic = message.topic.clone();
        first(self.send_to(&topic, vec![message], None).await)
    }

    /// Sends one message to the queue its sharding key hashes to: messages with the same key
    /// keep their order (while the topic's queue count is unchanged). No retry on another queue.
    pub async fn send_ordered(&self, message: Message, sharding_key: &str) -> Result<SendResult, ClientError> {
        let topic = message.topic.clone();
        first(self.send_to(&topic, vec![message], Some(sharding_key)).await)
    }

    /// Sends messages of one topic as one batch, into one queue, committed together.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendResult>, ClientError> {
        let topic = messages
            .first()
            .map(|m| m.topic.clone())
            .ok_or_else(|| ClientError::InvalidArgument("empty batch".into()))?;
        if let Some(m) = messages.iter().find(|m| m.topic != topic) {
            return Err(ClientError::InvalidArgument(format!(
                "a batch holds one topic; {:?} differs from {topic:?}",
                m.topic
            )));
        }
        self.send_to(&topic, messages, None).await
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

    async fn send_to(
        &self,
        topic: &str,
        messages: Vec<Message>,
        key: Option<&str>,
    ) -> Result<Vec<SendResult>, ClientError> {
        if messages.is_empty() {
            return Err(ClientError::InvalidArgument("nothing to send".into()));
        }
        let request_messages: Vec<pb::Message> = messages.iter().map(Message::to_proto).collect();
        let timeout = self.client.config().send_timeout;
        let deadline = Instant::now() + timeout;
        let mut route = self.client.route(topic).await?;
        let mut avoid: BTreeSet<String> = BTreeSet::new();
        let mut attempts = 0u32;
        let mut backoff = Duration::from_millis(20);
        loop {
            let all = route.write_queues();
            if all.is_empty() {
                return Err(ClientError::NoPermission(format!(
                    "topic {topic:?} has no writable queue"
                )));
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
                    self.send_following_leader(&addr, topic, &queue, &request_messages, deadline)
                        .await
                }
                None => Err((
                    Retry::Unreachable,
                    ClientError::Unavailable(format!("group {} has no master right now", queue.group)),
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
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
            route = self.client.refresh_route(topic).await.unwrap_or(route);
        }
    }

    /// One attempt at one group's master, following `NOT_MASTER` hops at once.
    async fn send_following_leader(
        &self,
        master: &str,
        topic: &str,
        queue: &MessageQueue,
        messages: &[pb::Message],
        deadline: Instant,
    ) -> Result<Vec<SendResult>, (Retry, ClientError)> {
        let mut target = master.to_owned();
        let mut last = (Retry::Unreachable, ClientError::Unavailable("no attempt".into()));
        for _ in 0..MAX_HOPS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err((
                    Retry::Unknown,
                    ClientError::Timeout(format!("send to {topic} not acknowledged in time")),
                ));
            }
            let mut broker = self.client.broker(&target).map_err(|e| (Retry::No, e))?;
            let request = self.client.request(
                pb::SendRequest {
                    topic: topic.to_owned(),
                    queue_id: queue.queue_id,
                    messages: messages.to_vec(),
                },
                left,
            );
            // A master that stops answering (paused, partitioned) would hold this send until its
            // deadline; when the NameServers announce another master, give up on it at once: its
            // outcome is unknown, and the next send goes to the new master.
            let reply = tokio::select! {
                reply = broker.send(request) => reply,
                _ = self.client.master_moved(topic, &queue.group, &target) => {
                    return Err((Retry::Unknown, ClientError::Timeout(format!("the master of {} changed while a send to {target} was in flight", queue.group))));
                }
            };
            match reply {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    return Ok(reply
                        .results
                        .into_iter()
                        .map(|r| SendResult {
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
                            ClientError::Timeout(format!("send to {target} not acknowledged within the send timeout")),
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

fn first(results: Result<Vec<SendResult>, ClientError>) -> Result<SendResult, ClientError> {
    results?
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Other("the broker acknowledged no message".into()))
}
