//! The group consumer (RocketMQ's push consumer): one reader task per assigned queue calls the
//! handler batch by batch in queue order; a coordinator rebalances and commits on a timer and
//! commits a queue's offset when it gives the queue up.
//!
//! A batch the handler fails is sent back to the broker message by message: each comes again
//! from the group's retry topic `%RETRY%<group>` after the group's backoff, and goes to
//! `%DLQ%<group>` once it used up the group's retries; the queue moves on. The consumer reads
//! the retry topic as a second subscription, and its handler sees a retried message with the
//! topic and id it was first sent with. Orderly and broadcasting consumers retry in place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmq_common::shutdown::{Shutdown, Stopping};
use raftmq_common::{Error, ErrorCode};
use raftmq_proto as pb;
use tokio::task::JoinHandle;

use super::local_offsets::LocalOffsets;
use super::rebalance::{all_nodes, assignment, heartbeat};
use super::{ConsumeFrom, ConsumeResult, MessageModel, MessageSelector, PullConsumer, ReadPreference};
use crate::message::ReceivedMessage;
use crate::route::MessageQueue;
use crate::Client;

/// The handler a group consumer calls with each batch, in queue order.
pub type Handler = Arc<dyn Fn(&[ReceivedMessage]) -> ConsumeResult + Send + Sync>;

/// RocketMQ's broker-side lock lease for orderly consumers.
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(60);

/// Builds a [`PushConsumer`].
pub struct PushConsumerBuilder {
    client: Client,
    consumer_group: String,
    topic: String,
    selector: MessageSelector,
    model: MessageModel,
    read_preference: ReadPreference,
    consume_from: ConsumeFrom,
    batch_size: u32,
    rebalance_interval: Duration,
    commit_interval: Duration,
    client_id: String,
    orderly: bool,
    lock_lease: Duration,
    offset_dir: Option<std::path::PathBuf>,
    /// The member's id was chosen by the user (and is stable across restarts).
    named: bool,
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
            selector: MessageSelector::all(),
            model: MessageModel::Clustering,
            read_preference: ReadPreference::Master,
            consume_from: ConsumeFrom::Last,
            batch_size: 32,
            rebalance_interval: Duration::from_secs(1),
            commit_interval: Duration::from_secs(1),
            client_id: format!("{}@{}", std::process::id(), nanos),
            orderly: false,
            lock_lease: DEFAULT_LOCK_LEASE,
            offset_dir: None,
            named: false,
        }
    }

    /// Where a broadcasting consumer keeps its offsets: `DIR/<group>/<topic>.offsets`
    /// (`DIR/<group>/<client id>/<topic>.offsets` with a [`client_id`](Self::client_id) of
    /// one's own, so that members on one machine keep theirs apart), resumed when it starts
    /// again. Default: [`super::default_offset_dir`].
    pub fn local_offset_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.offset_dir = Some(dir.into());
        self
    }

    /// Orderly consumption (RocketMQ's `MessageListenerOrderly`): a failed batch is handled
    /// again in place after a pause, so the queue keeps its order and waits. By default a failed
    /// message is sent back for a later retry and the queue moves on.
    ///
    /// In a consumer group (clustering), an orderly member consumes a queue only while it holds
    /// the queue's lock on the broker (replicated, so a failover keeps it), renewed every third
    /// of its lease: two members never consume one queue at the same time, also during a
    /// rebalance. A member that dies leaves its queues locked until the lease ends.
    pub fn orderly(mut self, orderly: bool) -> Self {
        self.orderly = orderly;
        self
    }

    /// How long an orderly member's queue locks last without renewal (RocketMQ's 60 s).
    pub fn queue_lock_lease(mut self, lease: Duration) -> Self {
        self.lock_lease = lease;
        self
    }

    /// `*` or `a || b`.
    pub fn tag_expression(mut self, e: impl Into<String>) -> Self {
        self.selector = MessageSelector::by_tag(e);
        self
    }

    /// A SQL92 condition over message properties, evaluated by the broker (see
    /// [`MessageSelector::Sql`]). [`start`](Self::start) refuses one that does not parse.
    pub fn sql(mut self, e: impl Into<String>) -> Self {
        self.selector = MessageSelector::by_sql(e);
        self
    }

    pub fn selector(mut self, s: MessageSelector) -> Self {
        self.selector = s;
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
        self.named = true;
        self
    }

    /// Joins the group and starts consuming.
    pub async fn start(
        self,
        handler: impl Fn(&[ReceivedMessage]) -> ConsumeResult + Send + Sync + 'static,
    ) -> Result<PushConsumer, Error> {
        raftmq_common::validate::name("consumer group", &self.consumer_group)
            .map_err(|e| ErrorCode::InvalidArgument.err(e.to_string()))?;
        self.selector.check()?;
        // Fails early on an unknown topic.
        self.client.route(&self.topic).await?;
        let (stop, stopped) = Shutdown::new();
        let in_place = self.orderly || self.model == MessageModel::Broadcasting;
        let handler: Handler = Arc::new(handler);
        let local = |topic: &str| {
            (self.model == MessageModel::Broadcasting).then(|| {
                let dir = self.offset_dir.clone().unwrap_or_else(super::default_offset_dir);
                let member = self.named.then_some(self.client_id.as_str());
                LocalOffsets::new(&dir, &self.consumer_group, member, topic)
            })
        };
        let subscription = |topic: String, selector: MessageSelector, consume_from, retry_topic| {
            let topic_name = topic.clone();
            Arc::new(Shared {
                reader: PullConsumer::new(self.client.clone(), self.read_preference),
                client: self.client.clone(),
                consumer_group: self.consumer_group.clone(),
                topic,
                selector,
                model: self.model,
                consume_from,
                batch_size: self.batch_size,
                client_id: self.client_id.clone(),
                handler: handler.clone(),
                offsets: Mutex::new(HashMap::new()),
                assigned: Mutex::new(BTreeSet::new()),
                in_place,
                retry_topic,
                locks: (self.orderly && self.model == MessageModel::Clustering).then_some(self.lock_lease),
                local_offsets: local(&topic_name),
            })
        };
        let shared = subscription(self.topic.clone(), self.selector.clone(), self.consume_from, false);
        let mut subscriptions = vec![shared.clone()];
        if !in_place {
            // Everything retried is the group's to consume, from the first retry on.
            let retry = super::retry_topic(&self.consumer_group);
            subscriptions.push(subscription(retry, MessageSelector::all(), ConsumeFrom::First, true));
        }
        let tasks = subscriptions
            .into_iter()
            .map(|s| {
                tokio::spawn(coordinate(
                    s,
                    self.rebalance_interval,
                    self.commit_interval,
                    stopped.clone(),
                ))
            })
            .collect();
        Ok(PushConsumer { shared, stop, tasks })
    }
}

/// A queue's consume position as the consumer knows it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Position {
    offset: u64,
    committed: Option<u64>,
}

pub(super) struct Shared {
    pub(super) client: Client,
    pub(super) reader: PullConsumer,
    pub(super) consumer_group: String,
    pub(super) topic: String,
    pub(super) selector: MessageSelector,
    pub(super) model: MessageModel,
    pub(super) consume_from: ConsumeFrom,
    pub(super) batch_size: u32,
    pub(super) client_id: String,
    pub(super) handler: Handler,
    pub(super) offsets: Mutex<HashMap<MessageQueue, Position>>,
    pub(super) assigned: Mutex<BTreeSet<MessageQueue>>,
    /// A failed batch is handled again here (orderly, broadcasting) instead of sent back.
    in_place: bool,
    /// This subscription reads the group's retry topic.
    retry_topic: bool,
    /// An orderly group member: queues are consumed only under a broker lock of this lease.
    locks: Option<Duration>,
    /// A broadcasting consumer's offsets file.
    local_offsets: Option<LocalOffsets>,
}

/// A running group consumer. [`PushConsumer::shutdown`] commits what was consumed and leaves
/// the group; dropping it stops it without committing.
pub struct PushConsumer {
    /// The subscription to the topic (the one to the retry topic runs beside it).
    shared: Arc<Shared>,
    stop: Shutdown,
    tasks: Vec<JoinHandle<()>>,
}

impl PushConsumer {
    pub fn builder(client: Client, consumer_group: impl Into<String>, topic: impl Into<String>) -> PushConsumerBuilder {
        PushConsumerBuilder::new(client, consumer_group, topic)
    }

    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// The queues of the topic this member reads now.
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
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        self.stop.stop();
        for task in &self.tasks {
            task.abort();
        }
    }
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
                    unlock(&shared, std::slice::from_ref(&q)).await;
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
    let mut held = Vec::new();
    for (q, (stop_worker, handle)) in workers.drain() {
        stop_worker.stop();
        let _ = handle.await;
        held.push(q);
    }
    commit(&shared, None).await;
    unlock(&shared, &held).await;
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

/// Releases an orderly member's locks on queues it gave up (after committing their offsets).
async fn unlock(shared: &Shared, queues: &[MessageQueue]) {
    if shared.locks.is_none() {
        return;
    }
    for q in queues {
        let member = (shared.consumer_group.as_str(), shared.client_id.as_str());
        if let Err(e) = shared
            .reader
            .unlock_queues(&shared.topic, &q.group, member, &[q.queue_id])
            .await
        {
            tracing::debug!(queue = %q, "cannot release the queue's lock; it expires: {e}");
        }
    }
}

/// Holds an orderly member's lock on one queue: renewed once a third of the lease has passed,
/// and trusted only until a sixth of the lease before it ends (the margin covers the renewal's
/// own delay and the clocks).
#[derive(Default)]
struct QueueLockHeld {
    renew_at: Option<Instant>,
    valid_until: Option<Instant>,
}

impl QueueLockHeld {
    /// Whether the queue may be consumed now, renewing or taking the lock when due.
    async fn ensure(&mut self, shared: &Shared, queue: &MessageQueue, lease: Duration) -> bool {
        if self.renew_at.is_some_and(|at| Instant::now() < at) {
            return true;
        }
        // Counted from the ask: the lease began no earlier on the broker.
        let asked = Instant::now();
        let member = (shared.consumer_group.as_str(), shared.client_id.as_str());
        match shared
            .reader
            .lock_queues(&shared.topic, &queue.group, member, &[queue.queue_id], lease)
            .await
        {
            Ok(granted) if granted.contains(&queue.queue_id) => {
                self.renew_at = Some(asked + lease / 3);
                self.valid_until = Some(asked + lease - lease / 6);
                true
            }
            Ok(_) => {
                tracing::debug!(%queue, "the queue is locked by another member");
                *self = QueueLockHeld::default();
                false
            }
            Err(e) => {
                tracing::debug!(%queue, "cannot renew the queue's lock: {e}");
                self.valid_until.is_some_and(|until| Instant::now() < until)
            }
        }
    }
}

/// Commits dirty offsets (all, or one queue's), per broker group; a broadcasting consumer saves
/// all of its own to its file.
async fn commit(shared: &Shared, only: Option<&MessageQueue>) {
    if let Some(local) = &shared.local_offsets {
        save_local(shared, local);
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

/// Saves a broadcasting consumer's offsets when any moved since the last save.
fn save_local(shared: &Shared, local: &LocalOffsets) {
    let offsets: BTreeMap<MessageQueue, u64> = {
        let table = shared.offsets.lock().unwrap_or_else(|p| p.into_inner());
        if table.values().all(|p| p.committed == Some(p.offset)) {
            return;
        }
        table.iter().map(|(q, p)| (q.clone(), p.offset)).collect()
    };
    match local.save(&offsets) {
        Ok(()) => {
            let mut table = shared.offsets.lock().unwrap_or_else(|p| p.into_inner());
            for (q, offset) in offsets {
                if let Some(p) = table.get_mut(&q) {
                    p.committed = Some(offset);
                }
            }
        }
        Err(e) => tracing::warn!(path = %local.path().display(), "cannot save the offsets, will retry: {e}"),
    }
}

/// Where a queue starts: the committed offset (the broker's, or a broadcasting consumer's
/// own file), else the configured start.
/// Where a queue starts again after its lock was lost and taken back: what the group
/// committed (another member may have consumed meanwhile), not this member's own position.
async fn start_offset_committed(shared: &Shared, queue: &MessageQueue) -> Result<u64, Error> {
    shared.offsets.lock().unwrap_or_else(|p| p.into_inner()).remove(queue);
    let offset = start_offset(shared, queue).await?;
    shared.offsets.lock().unwrap_or_else(|p| p.into_inner()).insert(
        queue.clone(),
        Position {
            offset,
            committed: None,
        },
    );
    Ok(offset)
}

async fn start_offset(shared: &Shared, queue: &MessageQueue) -> Result<u64, Error> {
    if let Some(p) = shared.offsets.lock().unwrap_or_else(|p| p.into_inner()).get(queue) {
        return Ok(p.offset);
    }
    if let Some(local) = &shared.local_offsets {
        let saved = local
            .load()
            .map_err(|e| ErrorCode::InvalidArgument.err(e.to_string()))?;
        if let Some(offset) = saved.get(queue) {
            let (_, max) = shared.reader.queue_offsets(&shared.topic, queue).await?;
            // Past the queue's end: the file is of another incarnation of the topic (deleted
            // and created again, another cluster); it says nothing about this one.
            if *offset <= max {
                return Ok(*offset);
            }
            tracing::warn!(%queue, offset, max, path = %local.path().display(), "saved offset is past the queue's end; ignored");
        }
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
    // An orderly member holds the queue's lock before it reads where to start: the offsets the
    // previous holder committed before releasing it.
    let mut lock = QueueLockHeld::default();
    if let Some(lease) = shared.locks {
        while !lock.ensure(&shared, &queue, lease).await {
            if pause(&mut stop, Duration::from_millis(500)).await {
                return;
            }
        }
    }
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
        if let Some(lease) = shared.locks {
            if !lock.ensure(&shared, &queue, lease).await {
                // Lost (expired while unreachable, taken by another member): wait, then start
                // again from what was committed.
                if pause(&mut stop, Duration::from_millis(500)).await {
                    return;
                }
                if lock.ensure(&shared, &queue, lease).await {
                    match start_offset_committed(&shared, &queue).await {
                        Ok(o) => offset = o,
                        Err(_) => continue,
                    }
                }
                continue;
            }
        }
        let pulled = tokio::select! {
            r = shared.reader.pull(&shared.topic, &queue, offset, shared.batch_size, &shared.selector, Duration::from_secs(2)) => r,
            _ = stop.wait() => return,
        };
        match pulled {
            // Nothing new, filtered-out messages skipped, or the offset corrected by the broker.
            Ok(result) if result.messages.is_empty() => offset = result.next_offset,
            Ok(result) => {
                let mut batch = result.messages;
                if shared.retry_topic {
                    batch = batch.into_iter().map(ReceivedMessage::into_first_sent).collect();
                }
                loop {
                    match (shared.handler)(&batch) {
                        ConsumeResult::Success => break,
                        ConsumeResult::Retry if shared.in_place => {}
                        ConsumeResult::Retry => {
                            batch = send_back(&shared, &queue, batch).await;
                            if batch.is_empty() {
                                break;
                            }
                        }
                    }
                    if pause(&mut stop, Duration::from_secs(1)).await {
                        return;
                    }
                }
                offset = result.next_offset;
            }
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

/// Sends each message of a failed batch back to its broker for a later retry; returns those
/// that could not be, which are handled again here after a pause (as RocketMQ does).
async fn send_back(shared: &Shared, queue: &MessageQueue, batch: Vec<ReceivedMessage>) -> Vec<ReceivedMessage> {
    let calls = batch.iter().map(|m| {
        shared
            .reader
            .send_back(&shared.topic, queue, m.queue_offset, &shared.consumer_group)
    });
    let results = futures::future::join_all(calls).await;
    batch
        .into_iter()
        .zip(results)
        .filter_map(|(m, r)| match r {
            Ok(sent) => {
                tracing::debug!(%queue, offset = m.queue_offset, ?sent, "sent back for a retry");
                None
            }
            Err(e) => {
                tracing::warn!(%queue, offset = m.queue_offset, "cannot send a failed message back, retrying it here: {e}");
                Some(m)
            }
        })
        .collect()
}
