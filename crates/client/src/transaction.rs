//! The transactional producer (RocketMQ's `TransactionMQProducer`).
//!
//! [`TransactionProducer::send`] stores a half message: committed to a majority of its broker
//! group like any send, but invisible to consumers. The producer runs its local transaction,
//! then [`Transaction::commit`]s (the message is appended to its queue and consumed like any
//! other) or [`Transaction::rollback`]s (it is discarded). A producer that dies or stays silent
//! is asked later: the master of the group calls the producer group's checker (one live member,
//! in turn), first `transaction-check-after-ms` after the send (6 s by default, or the
//! message's `CHECK_IMMUNITY_TIME_IN_SECONDS`), then every `transaction-check-interval-ms` (60
//! s), up to `transaction-max-checks` (15) times, after which the half message is moved to the
//! topic `TRANS_CHECK_MAX_TIME_TOPIC`.
//!
//! Ending a transaction is idempotent (the broker stores a commit once however often it is
//! asked), so the producer retries an end whose outcome is unknown, across a failover.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq_common::shutdown::{Shutdown, Stopping};
use raftmq_common::{Error, ErrorCode};
use raftmq_proto as pb;

use crate::error::{classify, Retry};
use crate::message::{Message, ReceivedMessage};
use crate::Client;

/// Marks a half message (and the message a commit stores).
pub const PROP_TRANSACTION: &str = "TRAN_MSG";
/// Seconds before the first check of a message, instead of the broker's default.
pub const PROP_CHECK_IMMUNITY: &str = "CHECK_IMMUNITY_TIME_IN_SECONDS";
/// The topic half messages go to when they were checked too often without an answer.
pub const CHECK_MAX_TOPIC: &str = "TRANS_CHECK_MAX_TIME_TOPIC";

/// What a local transaction (or a check) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionState {
    Commit,
    Rollback,
    /// Not known yet: the broker asks again later.
    Unknown,
}

type Checker = Arc<dyn Fn(ReceivedMessage) -> Pin<Box<dyn Future<Output = TransactionState> + Send>> + Send + Sync>;

/// Builds a [`TransactionProducer`].
pub struct TransactionProducerBuilder {
    client: Client,
    group: String,
    topics: Vec<String>,
    checker: Option<Checker>,
    client_id: String,
}

impl TransactionProducerBuilder {
    /// Topics this producer sends to: it answers checks for the broker groups holding them.
    pub fn topics(mut self, topics: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// Answers the broker's checks of transactions left open (by this or any producer of the
    /// group): the half message as it was sent, its `msg_id` the one the send returned.
    pub fn checker<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TransactionState> + Send + 'static,
    {
        self.checker = Some(Arc::new(move |m| Box::pin(check(m))));
        self
    }

    /// This producer's id in the broker's logs (default: process id and a time).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Starts answering checks. Refused without a checker: a producer that cannot answer
    /// leaves every unfinished transaction to time out.
    pub fn start(self) -> Result<TransactionProducer, Error> {
        raftmq_common::validate::name("producer group", &self.group)?;
        let checker = self
            .checker
            .ok_or_else(|| ErrorCode::InvalidArgument.err("a transactional producer needs a checker"))?;
        for topic in &self.topics {
            raftmq_common::validate::name("topic", topic)?;
        }
        let (stop, stopping) = Shutdown::new();
        let shared = Arc::new(Shared {
            client: self.client,
            group: self.group,
            topics: self.topics,
            client_id: self.client_id,
            checker,
            next: AtomicUsize::new(std::process::id() as usize),
        });
        tokio::spawn(watch_checks(shared.clone(), stopping));
        Ok(TransactionProducer {
            shared,
            _stop: Arc::new(stop),
        })
    }
}

struct Shared {
    client: Client,
    group: String,
    topics: Vec<String>,
    client_id: String,
    checker: Checker,
    next: AtomicUsize,
}

/// Sends transactional messages and answers checks until the last clone is dropped.
#[derive(Clone)]
pub struct TransactionProducer {
    shared: Arc<Shared>,
    _stop: Arc<Shutdown>,
}

/// A stored half message, to commit or roll back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub transaction_id: String,
    /// The half message's id (a commit stores the message under an id of its own).
    pub msg_id: String,
    pub topic: String,
    /// The broker group holding it.
    pub group: String,
    pub queue_id: u32,
    client: ClientRef,
}

#[derive(Clone)]
struct ClientRef(Client);

impl std::fmt::Debug for ClientRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

impl PartialEq for ClientRef {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ClientRef {}

impl TransactionProducer {
    pub fn builder(client: Client, producer_group: impl Into<String>) -> TransactionProducerBuilder {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        TransactionProducerBuilder {
            client,
            group: producer_group.into(),
            topics: Vec::new(),
            checker: None,
            client_id: format!("{}@{nanos}", std::process::id()),
        }
    }

    /// Stores a half message. `TIMEOUT` means its outcome is unknown: if it was stored, the
    /// broker checks it with this producer group later.
    pub async fn send(&self, message: Message) -> Result<Transaction, Error> {
        let s = &self.shared;
        if message.is_delayed() {
            return Err(ErrorCode::InvalidArgument.err("a transactional message cannot also be delayed"));
        }
        let topic = message.topic.clone();
        let born = raftmq_common::time::now_ms();
        let deadline = Instant::now() + s.client.config().send_timeout;
        let mut route = s.client.route(&topic).await?;
        let mut backoff = Duration::from_millis(20);
        loop {
            let queues = route.write_queues();
            if queues.is_empty() {
                return Err(ErrorCode::NoPermission.err(format!("topic {topic:?} has no writable queue")));
            }
            let queue = queues[s.next.fetch_add(1, Ordering::Relaxed) % queues.len()].clone();
            let request = pb::SendHalfRequest {
                topic: topic.clone(),
                queue_id: queue.queue_id,
                producer_group: s.group.clone(),
                message: Some(message.to_proto(born)),
            };
            let master = route.group(&queue.group).and_then(|g| g.master.clone());
            let outcome = match master {
                Some(addr) => {
                    on_master(&s.client, &addr, deadline, false, |mut b, left| {
                        let r = s.client.request(request.clone(), left);
                        async move { b.send_half(r).await }
                    })
                    .await
                }
                None => Err((
                    Retry::Unreachable,
                    ErrorCode::Unavailable.err(format!("group {} has no master right now", queue.group)),
                )),
            };
            match outcome {
                Ok(reply) => {
                    return Ok(Transaction {
                        transaction_id: reply.transaction_id,
                        msg_id: reply.msg_id,
                        topic,
                        group: queue.group,
                        queue_id: reply.queue_id,
                        client: ClientRef(s.client.clone()),
                    })
                }
                Err((Retry::No | Retry::Unknown, e)) => return Err(e),
                Err((_, e)) if Instant::now() + backoff >= deadline => return Err(e),
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = s.client.route_changed() => {}
            }
            backoff = (backoff * 2).min(Duration::from_millis(100));
            route = s.client.refresh_route(&topic).await.unwrap_or(route);
        }
    }

    /// RocketMQ's `sendMessageInTransaction`: stores the half message, runs `execute` (the local
    /// transaction) and ends the transaction as it says; on [`TransactionState::Unknown`] the
    /// transaction stays open for the checker. Returns the transaction and what `execute`
    /// said.
    pub async fn send_in_transaction<F, Fut>(
        &self,
        message: Message,
        execute: F,
    ) -> Result<(Transaction, TransactionState), Error>
    where
        F: FnOnce(&Transaction) -> Fut,
        Fut: Future<Output = TransactionState>,
    {
        let txn = self.send(message).await?;
        let state = execute(&txn).await;
        match state {
            TransactionState::Commit => {
                txn.clone().commit().await?;
            }
            TransactionState::Rollback => txn.clone().rollback().await?,
            TransactionState::Unknown => {}
        }
        Ok((txn, state))
    }
}

impl Transaction {
    /// Makes the message visible: appended to its queue once, however often this is retried.
    /// Returns the stored message's id (`None` when an earlier commit stored it).
    pub async fn commit(self) -> Result<Option<String>, Error> {
        let id = end(
            &self.client.0,
            &self.topic,
            &self.group,
            &self.transaction_id,
            true,
            false,
        )
        .await?;
        Ok(Some(id).filter(|i| !i.is_empty()))
    }

    /// Discards the half message.
    pub async fn rollback(self) -> Result<(), Error> {
        end(
            &self.client.0,
            &self.topic,
            &self.group,
            &self.transaction_id,
            false,
            false,
        )
        .await?;
        Ok(())
    }
}

fn end_request(transaction_id: &str, commit: bool, from_check: bool) -> pb::EndTransactionRequest {
    let resolution = if commit {
        pb::TransactionResolution::Commit
    } else {
        pb::TransactionResolution::Rollback
    };
    pb::EndTransactionRequest {
        transaction_id: transaction_id.to_owned(),
        resolution: resolution as i32,
        from_check,
    }
}

/// Ends a transaction at its group's master, following `NOT_MASTER` and retrying an unknown
/// outcome (an end is idempotent) until the send timeout.
async fn end(
    client: &Client,
    topic: &str,
    group: &str,
    transaction_id: &str,
    commit: bool,
    from_check: bool,
) -> Result<String, Error> {
    let request = end_request(transaction_id, commit, from_check);
    let deadline = Instant::now() + client.config().send_timeout;
    let mut route = client.route(topic).await?;
    loop {
        let g = route.group(group);
        // A slave answers NOT_MASTER naming the master, when the route has none yet.
        let node = g.and_then(|g| g.master.clone().or_else(|| g.slaves.first().cloned()));
        let outcome = match node {
            Some(addr) => {
                on_master(client, &addr, deadline, true, |mut b, left| {
                    let r = client.request(request.clone(), left);
                    async move { b.end_transaction(r).await }
                })
                .await
            }
            None => Err((
                Retry::Unreachable,
                ErrorCode::Unavailable.err(format!("group {group} has no live node")),
            )),
        };
        match outcome {
            Ok(reply) => return Ok(reply.msg_id),
            Err((Retry::No, e)) => return Err(e),
            Err((_, e)) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = client.route_changed() => {}
        }
        route = client.refresh_route(topic).await.unwrap_or(route);
    }
}

/// One call at a master, following `NOT_MASTER` hops; with `idempotent`, an unknown outcome
/// counts as worth retrying.
async fn on_master<T, F, Fut>(
    client: &Client,
    master: &str,
    deadline: Instant,
    idempotent: bool,
    mut call: F,
) -> Result<T, (Retry, Error)>
where
    F: FnMut(pb::broker_client::BrokerClient<crate::Transport>, Duration) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut target = master.to_owned();
    let mut last = (Retry::Unreachable, ErrorCode::Unavailable.err("no attempt"));
    for _ in 0..3 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err((Retry::Unknown, ErrorCode::Timeout.err("not acknowledged in time")));
        }
        let broker = client.broker(&target).map_err(|e| (Retry::No, e))?;
        match call(broker, left).await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) => match classify(&status) {
                (Retry::AtLeader(Some(leader)), _) => target = leader,
                (Retry::Unknown, e) if idempotent => return Err((Retry::Unreachable, e)),
                other => {
                    last = other;
                    break;
                }
            },
        }
    }
    Err(last)
}

/// How long a check stream stays open before it is opened again.
const STREAM_REFRESH: Duration = Duration::from_secs(10);

/// Keeps one check stream open to the master of every broker group holding the producer's
/// topics, until the producer is dropped.
async fn watch_checks(shared: Arc<Shared>, mut stop: Stopping) {
    let mut streams: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        for topic in &shared.topics {
            let Ok(route) = shared.client.route(topic).await else {
                continue;
            };
            for g in &route.groups {
                streams.entry(g.group.clone()).or_insert_with(|| {
                    tokio::spawn(check_stream(
                        shared.clone(),
                        topic.clone(),
                        g.group.clone(),
                        stop.clone(),
                    ))
                });
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait() => break,
        }
    }
    for (_, task) in streams {
        task.abort();
    }
}

/// The check stream to one group's master: reopened at the new master after a failover.
async fn check_stream(shared: Arc<Shared>, topic: String, group: String, mut stop: Stopping) {
    let request = pb::TransactionChecksRequest {
        producer_group: shared.group.clone(),
        client_id: shared.client_id.clone(),
        topics: shared.topics.clone(),
    };
    loop {
        let master = shared
            .client
            .route(&topic)
            .await
            .ok()
            .and_then(|r| r.group(&group).and_then(|g| g.master.clone()));
        if let Some(addr) = master {
            if let Ok(mut broker) = shared.client.broker(&addr) {
                let opened = tokio::select! {
                    r = broker.transaction_checks(request.clone()) => r,
                    _ = stop.wait() => return,
                };
                match opened {
                    Ok(stream) => {
                        tracing::debug!(%group, %addr, "transaction check stream open");
                        let mut stream = stream.into_inner();
                        // Opened again at a new master, and now and then anyway: a stream to a
                        // node cut off by the network can stay open without a word.
                        let reopen = tokio::time::sleep(STREAM_REFRESH);
                        tokio::pin!(reopen);
                        loop {
                            let next = tokio::select! {
                                n = stream.message() => n,
                                _ = shared.client.master_moved(&topic, &group, &addr) => break,
                                _ = &mut reopen => break,
                                _ = stop.wait() => return,
                            };
                            match next {
                                Ok(Some(check)) => {
                                    tokio::spawn(answer(shared.clone(), group.clone(), check));
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::debug!(%group, %addr, "transaction check stream ended: {e}");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(%group, %addr, "cannot open the transaction check stream: {e}"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shared.client.route_changed() => {}
            _ = stop.wait() => return,
        }
        let _ = shared.client.refresh_route(&topic).await;
    }
}

/// Asks the checker about one transaction and ends it as the checker says.
async fn answer(shared: Arc<Shared>, group: String, check: pb::TransactionCheck) {
    let Some(m) = check.message else { return };
    // The half message's own topic: a producer group may send to several.
    let topic = m.topic.clone();
    let message = ReceivedMessage::from_proto(&group, m);
    let state = (shared.checker)(message).await;
    let commit = match state {
        TransactionState::Commit => true,
        TransactionState::Rollback => false,
        TransactionState::Unknown => return,
    };
    if let Err(e) = end(&shared.client, &topic, &group, &check.transaction_id, commit, true).await {
        tracing::warn!(transaction = %check.transaction_id, "answering a transaction check failed: {e}");
    }
}

/// Pending transactions of one broker group, as an operator lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTransactions {
    pub group: String,
    /// Pending in the group, which may be more than listed.
    pub pending: u64,
    pub transactions: Vec<pb::PendingTransaction>,
}

impl crate::Admin {
    /// The pending transactions of every live broker group (or the named ones), oldest first,
    /// at most `limit` a group, read at each group's master.
    pub async fn pending_transactions(&self, groups: &[String], limit: u32) -> Result<Vec<PendingTransactions>, Error> {
        let mut out = Vec::new();
        for (group, master) in self.masters(groups).await? {
            let client = self.client.clone();
            let reply = self
                .on_master(&master, |mut b| {
                    let r = client.request(pb::ListTransactionsRequest { limit }, client.config().request_timeout);
                    async move { b.list_transactions(r).await }
                })
                .await?;
            out.push(PendingTransactions {
                group,
                pending: reply.pending,
                transactions: reply.transactions,
            });
        }
        Ok(out)
    }

    /// Ends a transaction by hand (an operator resolving one its producers cannot): commits or
    /// rolls it back at the master of the group its id names. Returns the stored message's id
    /// on a commit that stored it.
    pub async fn end_transaction(&self, transaction_id: &str, commit: bool) -> Result<Option<String>, Error> {
        let group = transaction_id
            .split_once('@')
            .map(|(g, _)| g.to_owned())
            .ok_or_else(|| ErrorCode::InvalidArgument.err(format!("{transaction_id:?} is not a transaction id")))?;
        let (_, master) = self
            .masters(std::slice::from_ref(&group))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ErrorCode::Unavailable.err(format!("group {group} has no master")))?;
        let request = end_request(transaction_id, commit, false);
        let client = self.client.clone();
        let reply = self
            .on_master(&master, |mut b| {
                let r = client.request(request.clone(), client.config().request_timeout);
                async move { b.end_transaction(r).await }
            })
            .await?;
        Ok(Some(reply.msg_id).filter(|i| !i.is_empty()))
    }
}
