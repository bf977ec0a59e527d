//! Consumers: a pull consumer for explicit reads, and a group consumer (RocketMQ's push
//! consumer) that shares a topic's queues among the members of a consumer group.
//!
//! Delivery is at least once. A group consumer commits the offset after the handler returned
//! success for a batch, periodically and when it gives a queue up; after a crash, a rebalance or
//! a failover a queue resumes from the last committed offset, so a message may come again but
//! none is skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmq_common::shutdown::{Shutdown, Stopping};
use raftmq_proto as pb;
use tokio::task::JoinHandle;

use crate::error::{classify, ClientError, Retry};
use crate::message::ReceivedMessage;
use crate::route::{GroupRoute, MessageQueue, TopicRoute};
use crate::Client;

/// Which node of a group reads are sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadPreference {
    /// The master; a slave when the master cannot be reached.
    #[default]
    Master,
    /// A slave; the master when no slave can be reached.
    PreferSlave,
    /// Slaves only.
    SlaveOnly,
}

/// Where a consumer group with no committed offset starts (RocketMQ's ConsumeFromWhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeFrom {
    First,
    Last,
    /// The first message stored at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// Clustering shares queues among a group; broadcasting gives every member every queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageModel {
    Clustering,
    Broadcasting,
}

/// What a handler says about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeResult {
    Success,
    /// Deliver the same batch again after a pause (the queue waits: order is kept).
    Retry,
}

/// The result of one pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullResult {
    pub messages: Vec<ReceivedMessage>,
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
    /// The offset asked for was outside the queue; `next_offset` says where to go.
    pub offset_moved: bool,
}

fn nodes_for(group: &GroupRoute, pref: ReadPreference) -> Vec<String> {
    let master = group.master.iter().cloned();
    let slaves = group.slaves.iter().cloned();
    match pref {
        ReadPreference::Master => master.chain(slaves).collect(),
        ReadPreference::PreferSlave => slaves.chain(master).collect(),
        ReadPreference::SlaveOnly => slaves.collect(),
    }
}

/// Reads queues explicitly.
#[derive(Clone)]
pub struct PullConsumer {
    client: Client,
    pub read_preference: ReadPreference,
}

impl PullConsumer {
    pub fn new(client: Client, read_preference: ReadPreference) -> PullConsumer {
        PullConsumer {
            client,
            read_preference,
        }
    }

    /// The topic's readable queues.
    pub async fn queues(&self, topic: &str) -> Result<Vec<MessageQueue>, ClientError> {
        Ok(self.client.route(topic).await?.read_queues())
    }

    /// Calls `call` on the nodes of a group in read-preference order until one answers.
    async fn read<T, F, Fut>(&self, topic: &str, group: &str, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(raftmq_proto::broker_client::BrokerClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut route = self.client.route(topic).await?;
        let mut last = ClientError::Unavailable(format!("no node of group {group} to read {topic} from"));
        for round in 0..2 {
            if round == 1 {
                // Second round with a fresh route: the group may have moved.
                route = self.client.refresh_route(topic).await?;
            }
            let Some(g) = route.group(group) else {
                return Err(ClientError::QueueNotFound(format!(
                    "group {group} holds no queue of {topic}"
                )));
            };
            for addr in nodes_for(g, self.read_preference) {
                let broker = self.client.broker(&addr)?;
                match call(broker).await {
                    Ok(reply) => return Ok(reply.into_inner()),
                    Err(status) => match classify(&status) {
                        (Retry::No, e) => return Err(e),
                        (_, e) => last = e,
                    },
                }
            }
        }
        Err(last)
    }

    /// Pulls up to `max` messages of a queue from `offset`, waiting up to `wait` for one.
    pub async fn pull(
        &self,
        topic: &str,
        queue: &MessageQueue,
        offset: u64,
        max: u32,
        tag_expression: &str,
        wait: Duration,
    ) -> Result<PullResult, ClientError> {
        let timeout = wait + self.client.config().request_timeout;
        let req = pb::PullRequest {
            topic: topic.to_owned(),
            queue_id: queue.queue_id,
            offset,
            max_messages: max,
            max_bytes: 0,
            tag_expression: tag_expression.to_owned(),
            wait_ms: wait.as_millis() as u64,
        };
        let client = self.client.clone();
        let reply = self
            .read(topic, &queue.group, |mut b| {
                let r = client.request(req.clone(), timeout);
                async move { b.pull(r).await }
            })
            .await?;
        let moved =
            reply.status == pb::PullStatus::OffsetMoved as i32 || reply.status == pb::PullStatus::OffsetIllegal as i32;
        Ok(PullResult {
            messages: reply
                .messages
                .into_iter()
                .map(|m| ReceivedMessage::from_proto(&queue.group, m))
                .collect(),
            next_offset: reply.next_offset,
            min_offset: reply.min_offset,
            max_offset: reply.max_offset,
            offset_moved: moved,
        })
    }

    /// A queue's lowest and next offsets.
    pub async fn queue_offsets(&self, topic: &str, queue: &MessageQueue) -> Result<(u64, u64), ClientError> {
        let req = pb::QueueOffsetsRequest {
            topic: topic.to_owned(),
            queue_id: queue.queue_id,
        };
        let client = self.client.clone();
        let r = self
            .read(topic, &queue.group, |mut b| {
                let r = client.request(req.clone(), client.config().request_timeout);
                async move { b.get_queue_offsets(r).await }
            })
            .await?;
        Ok((r.min_offset, r.max_offset))
    }

    /// The first offset of a queue stored at or after `timestamp_ms`.
    pub async fn search_offset(
        &self,
        topic: &str,
        queue: &MessageQueue,
        timestamp_ms: i64,
    ) -> Result<u64, ClientError> {
        let req = pb::SearchOffsetRequest {
            topic: topic.to_owned(),
            queue_id: queue.queue_id,
            timestamp_ms,
        };
        let client = self.client.clone();
        let r = self
            .read(topic, &queue.group, |mut b| {
                let r = client.request(req.clone(), client.config().request_timeout);
                async move { b.search_offset(r).await }
            })
            .await?;
        Ok(r.offset)
    }

    /// A consumer group's committed offsets in a topic, in one broker group.
    pub async fn committed_offsets(
        &self,
        topic: &str,
        group: &str,
        consumer_group: &str,
    ) -> Result<BTreeMap<u32, u64>, ClientError> {
        let req = pb::GetConsumeOffsetsRequest {
            consumer_group: consumer_group.to_owned(),
            topic: topic.to_owned(),
        };
        let client = self.client.clone();
        // Offsets are read from the master first: it has every committed one.
        let this = PullConsumer {
            client: self.client.clone(),
            read_preference: ReadPreference::Master,
        };
        let r = this
            .read(topic, group, |mut b| {
                let r = client.request(req.clone(), client.config().request_timeout);
                async move { b.get_consume_offsets(r).await }
            })
            .await?;
        Ok(r.offsets.into_iter().map(|o| (o.queue_id, o.offset)).collect())
    }

    /// Commits offsets to a group's master.
    pub async fn commit_offsets(
        &self,
        topic: &str,
        group: &str,
        consumer_group: &str,
        offsets: &BTreeMap<u32, u64>,
    ) -> Result<(), ClientError> {
        let route = self.client.route(topic).await?;
        let mut target = route
            .group(group)
            .and_then(|g| g.master.clone())
            .ok_or_else(|| ClientError::Unavailable(format!("group {group} has no master to commit to")))?;
        let req = pb::CommitOffsetsRequest {
            consumer_group: consumer_group.to_owned(),
            offsets: offsets
                .iter()
                .map(|(q, o)| pb::OffsetEntry {
                    topic: topic.to_owned(),
                    queue_id: *q,
                    offset: *o,
                })
                .collect(),
        };
        for _ in 0..3 {
            let mut b = self.client.broker(&target)?;
            match b
                .commit_offsets(self.client.request(req.clone(), self.client.config().request_timeout))
                .await
            {
                Ok(_) => return Ok(()),
                Err(status) => match classify(&status) {
                    (Retry::AtLeader(Some(leader)), _) => target = leader,
                    (_, e) => {
                        let _ = self.client.refresh_route(topic).await;
                        return Err(e);
                    }
                },
            }
        }
        Err(ClientError::Unavailable(format!(
            "group {group}: the master kept moving"
        )))
    }
}

/// The handler a group consumer calls with each batch, in queue order.
pub type Handler = Arc<dyn Fn(&[ReceivedMessage]) -> ConsumeResult + Send + Sync>;

/// Builds a [`PushConsumer`].
pub struct PushConsumerBuilder {
    client: Client,
    consumer_group: String,
    topic: String,
    tag_expression: String,
    model: MessageModel,
    read_preference: ReadPreference,
    consume_from: ConsumeFrom,
    batch_size: u32,
    rebalance_interval: Duration,
    commit_interval: Duration,
    client_id: String,
}

impl PushConsumerBuilder {
    pub fn new(client: Client, consumer_group: impl Into<String>, topic: impl Into<String>) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        PushConsumerBuilder {
            client,
            consumer_group: consumer_group.into(),
            topic: topic.into(),
            tag_expression: "*".into(),
            model: MessageModel::Clustering,
            read_preference: ReadPreference::Master,
            consume_from: ConsumeFrom::Last,
            batch_size: 32,
            rebalance_interval: Duration::from_secs(1),
            commit_interval: Duration::from_secs(1),
            client_id: format!("{}@{}", std::process::id(), nanos),
        }
    }

    /// `*` or `a || b`.
    pub fn tag_expression(mut self, e: impl Into<String>) -> Self {
        self.tag_expression = e.into();
        self
    }
    pub fn model(mut self, m: MessageModel) -> Self {
        self.model = m;
        self
    }
    pub fn read_preference(mut self, p: ReadPreference) -> Self {
        self.read_preference = p;
        self
    }
    /// Where a group with no committed offset starts (default: last, as RocketMQ).
    pub fn consume_from(mut self, f: ConsumeFrom) -> Self {
        self.consume_from = f;
        self
    }
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n.max(1);
        self
    }
    pub fn rebalance_interval(mut self, d: Duration) -> Self {
        self.rebalance_interval = d;
        self
    }
    pub fn commit_interval(mut self, d: Duration) -> Self {
        self.commit_interval = d;
        self
    }
    /// The member's id in its group (default: pid and a random part).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Joins the group and starts consuming.
    pub async fn start(
        self,
        handler: impl Fn(&[ReceivedMessage]) -> ConsumeResult + Send + Sync + 'static,
    ) -> Result<PushConsumer, ClientError> {
        raftmq_common::validate::name("consumer group", &self.consumer_group)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        // Fails early on an unknown topic.
        self.client.route(&self.topic).await?;
        let (stop, stopped) = Shutdown::new();
        let shared = Arc::new(Shared {
            reader: PullConsumer::new(self.client.clone(), self.read_preference),
            client: self.client.clone(),
            consumer_group: self.consumer_group,
            topic: self.topic,
            tag_expression: self.tag_expression,
            model: self.model,
            consume_from: self.consume_from,
            batch_size: self.batch_size,
            client_id: self.client_id,
            handler: Arc::new(handler),
            offsets: Mutex::new(HashMap::new()),
            assigned: Mutex::new(BTreeSet::new()),
        });
        let task = tokio::spawn(coordinate(
            shared.clone(),
            self.rebalance_interval,
            self.commit_interval,
            stopped,
        ));
        Ok(PushConsumer {
            shared,
            stop,
            task: Some(task),
        })
    }
}

/// A queue's consume position as the consumer knows it.
#[derive(Debug, Clone, Copy)]
struct Position {
    offset: u64,
    committed: Option<u64>,
}

struct Shared {
    client: Client,
    reader: PullConsumer,
    consumer_group: String,
    topic: String,
    tag_expression: String,
    model: MessageModel,
    consume_from: ConsumeFrom,
    batch_size: u32,
    client_id: String,
    handler: Handler,
    offsets: Mutex<HashMap<MessageQueue, Position>>,
    assigned: Mutex<BTreeSet<MessageQueue>>,
}

/// A running group consumer. [`PushConsumer::shutdown`] commits what was consumed and leaves
/// the group; dropping it stops it without committing.
pub struct PushConsumer {
    shared: Arc<Shared>,
    stop: Shutdown,
    task: Option<JoinHandle<()>>,
}

impl PushConsumer {
    pub fn builder(client: Client, consumer_group: impl Into<String>, topic: impl Into<String>) -> PushConsumerBuilder {
        PushConsumerBuilder::new(client, consumer_group, topic)
    }

    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// The queues this member reads now.
    pub fn assigned_queues(&self) -> Vec<MessageQueue> {
        self.shared
            .assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Stops consuming, commits the offsets of everything handled, and leaves the group.
    pub async fn shutdown(mut self) {
        self.stop.stop();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// RocketMQ's AllocateMessageQueueAveragely: contiguous, as equal as possible, the same answer
/// on every member for the same sorted inputs.
pub fn allocate_averagely(queues: &[MessageQueue], members: &[String], me: &str) -> Vec<MessageQueue> {
    let Some(index) = members.iter().position(|m| m == me) else {
        return Vec::new();
    };
    let (q, n) = (queues.len(), members.len());
    if q == 0 {
        return Vec::new();
    }
    let rem = q % n;
    let size = if q <= n {
        1
    } else if rem > 0 && index < rem {
        q / n + 1
    } else {
        q / n
    };
    let start = if rem > 0 && index < rem {
        index * size
    } else {
        index * size + rem
    };
    (0..size.min(q.saturating_sub(start)))
        .map(|i| queues[(start + i) % q].clone())
        .collect()
}

async fn coordinate(shared: Arc<Shared>, rebalance_every: Duration, commit_every: Duration, mut stop: Stopping) {
    let mut workers: HashMap<MessageQueue, (Shutdown, JoinHandle<()>)> = HashMap::new();
    let mut last_commit = Instant::now();
    loop {
        let route = shared
            .client
            .refresh_route(&shared.topic)
            .await
            .or(shared.client.route(&shared.topic).await);
        if let Ok(route) = route {
            heartbeat(&shared, &route).await;
            if let Some(target) = assignment(&shared, &route).await {
                // Give up queues no longer ours first (committing them), then take new ones.
                let gone: Vec<MessageQueue> = workers.keys().filter(|q| !target.contains(*q)).cloned().collect();
                for q in gone {
                    if let Some((stop_worker, handle)) = workers.remove(&q) {
                        stop_worker.stop();
                        let _ = handle.await;
                    }
                    commit(&shared, Some(&q)).await;
                    shared.offsets.lock().unwrap_or_else(|p| p.into_inner()).remove(&q);
                }
                for q in &target {
                    if !workers.contains_key(q) {
                        let (tx, rx) = Shutdown::new();
                        workers.insert(
                            q.clone(),
                            (tx, tokio::spawn(consume_queue(shared.clone(), q.clone(), rx))),
                        );
                    }
                }
                *shared.assigned.lock().unwrap_or_else(|p| p.into_inner()) = target;
            }
        }
        if last_commit.elapsed() >= commit_every {
            commit(&shared, None).await;
            last_commit = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(rebalance_every.min(commit_every)) => {}
            _ = stop.wait() => break,
        }
    }
    for (_, (stop_worker, handle)) in workers.drain() {
        stop_worker.stop();
        let _ = handle.await;
    }
    commit(&shared, None).await;
    if let Ok(route) = shared.client.route(&shared.topic).await {
        for addr in all_nodes(&route) {
            if let Ok(mut b) = shared.client.broker(&addr) {
                let req = pb::UnregisterConsumerRequest {
                    consumer_group: shared.consumer_group.clone(),
                    client_id: shared.client_id.clone(),
                };
                let _ = b
                    .unregister_consumer(shared.client.request(req, Duration::from_secs(1)))
                    .await;
            }
        }
    }
}

/// Tells every node of every group holding the topic that this member is alive.
async fn heartbeat(shared: &Shared, route: &TopicRoute) {
    if shared.model == MessageModel::Broadcasting {
        return;
    }
    let req = pb::ConsumerHeartbeatRequest {
        consumer_group: shared.consumer_group.clone(),
        client_id: shared.client_id.clone(),
        topics: vec![shared.topic.clone()],
    };
    let mut calls = Vec::new();
    for addr in all_nodes(route) {
        if let Ok(mut b) = shared.client.broker(&addr) {
            let r = shared.client.request(req.clone(), Duration::from_secs(1));
            calls.push(async move { b.consumer_heartbeat(r).await });
        }
    }
    futures::future::join_all(calls).await;
}

/// Every node of every group of a route.
fn all_nodes(route: &TopicRoute) -> Vec<String> {
    route
        .groups
        .iter()
        .flat_map(|g| g.master.iter().chain(g.slaves.iter()))
        .cloned()
        .collect()
}

/// The queues this member should read, or `None` when the group's member list is unknown now.
async fn assignment(shared: &Shared, route: &TopicRoute) -> Option<BTreeSet<MessageQueue>> {
    let mut queues = route.read_queues();
    queues.sort();
    if shared.model == MessageModel::Broadcasting {
        return Some(queues.into_iter().collect());
    }
    // Any master's list will do: every member heartbeats every node.
    let masters: Vec<String> = route.groups.iter().filter_map(|g| g.master.clone()).collect();
    for addr in masters {
        let Ok(mut b) = shared.client.broker(&addr) else {
            continue;
        };
        let req = pb::GetConsumersRequest {
            consumer_group: shared.consumer_group.clone(),
        };
        if let Ok(reply) = b
            .get_consumers(shared.client.request(req, Duration::from_secs(2)))
            .await
        {
            let mut members = reply.into_inner().client_ids;
            members.sort();
            if !members.contains(&shared.client_id) {
                return None;
            }
            return Some(
                allocate_averagely(&queues, &members, &shared.client_id)
                    .into_iter()
                    .collect(),
            );
        }
    }
    None
}

/// Commits dirty offsets (all, or one queue's), per broker group. Broadcasting keeps them local.
async fn commit(shared: &Shared, only: Option<&MessageQueue>) {
    if shared.model == MessageModel::Broadcasting {
        return;
    }
    let dirty: Vec<(MessageQueue, u64)> = {
        let offsets = shared.offsets.lock().unwrap_or_else(|p| p.into_inner());
        offsets
            .iter()
            .filter(|(q, p)| only.is_none_or(|o| o == *q) && p.committed != Some(p.offset))
            .map(|(q, p)| (q.clone(), p.offset))
            .collect()
    };
    let mut by_group: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
    for (q, o) in &dirty {
        by_group.entry(q.group.clone()).or_default().insert(q.queue_id, *o);
    }
    for (group, offsets) in by_group {
        match shared
            .reader
            .commit_offsets(&shared.topic, &group, &shared.consumer_group, &offsets)
            .await
        {
            Ok(()) => {
                let mut table = shared.offsets.lock().unwrap_or_else(|p| p.into_inner());
                for (queue_id, offset) in offsets {
                    if let Some(p) = table.get_mut(&MessageQueue {
                        group: group.clone(),
                        queue_id,
                    }) {
                        p.committed = Some(p.committed.map_or(offset, |c| c.max(offset)));
                    }
                }
            }
            Err(e) => tracing::debug!(group, "offset commit failed, will retry: {e}"),
        }
    }
}

/// Where a queue starts: the committed offset, else the configured start.
async fn start_offset(shared: &Shared, queue: &MessageQueue) -> Result<u64, ClientError> {
    if let Some(p) = shared.offsets.lock().unwrap_or_else(|p| p.into_inner()).get(queue) {
        return Ok(p.offset);
    }
    if shared.model == MessageModel::Clustering {
        let committed = shared
            .reader
            .committed_offsets(&shared.topic, &queue.group, &shared.consumer_group)
            .await?;
        if let Some(offset) = committed.get(&queue.queue_id) {
            return Ok(*offset);
        }
    }
    let (min, max) = shared.reader.queue_offsets(&shared.topic, queue).await?;
    Ok(match shared.consume_from {
        ConsumeFrom::First => min,
        ConsumeFrom::Last => max,
        ConsumeFrom::Timestamp(ts) => shared.reader.search_offset(&shared.topic, queue, ts).await?,
    })
}

async fn consume_queue(shared: Arc<Shared>, queue: MessageQueue, mut stop: Stopping) {
    let pause = |stop: &mut Stopping, d: Duration| {
        let mut stop = stop.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(d) => false,
                _ = stop.wait() => true,
            }
        }
    };
    let mut offset = loop {
        match start_offset(&shared, &queue).await {
            Ok(o) => break o,
            Err(e) => {
                tracing::debug!(%queue, "cannot find where to start: {e}");
                if pause(&mut stop, Duration::from_millis(500)).await {
                    return;
                }
            }
        }
    };
    shared
        .offsets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(queue.clone())
        .or_insert(Position {
            offset,
            committed: None,
        });
    loop {
        let pulled = tokio::select! {
            r = shared.reader.pull(&shared.topic, &queue, offset, shared.batch_size, &shared.tag_expression, Duration::from_secs(2)) => r,
            _ = stop.wait() => return,
        };
        match pulled {
            // Nothing new, filtered-out messages skipped, or the offset corrected by the broker.
            Ok(result) if result.messages.is_empty() => offset = result.next_offset,
            Ok(result) => loop {
                match (shared.handler)(&result.messages) {
                    ConsumeResult::Success => {
                        offset = result.next_offset;
                        break;
                    }
                    ConsumeResult::Retry => {
                        if pause(&mut stop, Duration::from_secs(1)).await {
                            return;
                        }
                    }
                }
            },
            Err(e) => {
                tracing::debug!(%queue, "pull failed: {e}");
                if pause(&mut stop, Duration::from_millis(200)).await {
                    return;
                }
                continue;
            }
        }
        if let Some(p) = shared.offsets.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&queue) {
            p.offset = offset;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(n: u32) -> Vec<MessageQueue> {
        (0..n)
            .map(|q| MessageQueue {
                group: "broker-a".into(),
                queue_id: q,
            })
            .collect()
    }

    #[test]
    fn average_allocation_covers_every_queue_once() {
        for (nq, nm) in [(8, 3), (3, 3), (2, 3), (7, 2), (1, 1), (16, 5)] {
            let members: Vec<String> = (0..nm).map(|i| format!("c{i}")).collect();
            let mut seen = Vec::new();
            for m in &members {
                seen.extend(allocate_averagely(&queues(nq), &members, m));
            }
            seen.sort();
            assert_eq!(seen, queues(nq), "{nq} queues over {nm} members");
        }
        let members = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(allocate_averagely(&queues(8), &members, "a").len(), 3);
        assert_eq!(allocate_averagely(&queues(8), &members, "c").len(), 2);
        assert!(allocate_averagely(&queues(8), &members, "stranger").is_empty());
    }
}
