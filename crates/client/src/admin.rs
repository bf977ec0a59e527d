//! Administration: topics, routes, the cluster, consumer group progress, single messages and
//! offset resets.

use std::time::Duration;

use raftmq_proto as pb;
use raftmq_proto::broker_client::BrokerClient;

use crate::consumer::{PullConsumer, ReadPreference};
use raftmq_common::{Error, ErrorCode};

use crate::error::{classify, Retry};
use crate::message::ReceivedMessage;
use crate::route::{MessageQueue, TopicRoute};
use crate::Client;

/// One queue of a consumer group's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueProgress {
    pub queue: MessageQueue,
    /// The queue's next offset (what has been stored).
    pub broker_offset: u64,
    /// The group's committed offset, `None` when it has none yet.
    pub consume_offset: Option<u64>,
    pub lag: u64,
}

/// Where a message is and who has consumed it ([`Admin::trace`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The message, with its broker group, queue, offset and store time.
    pub message: ReceivedMessage,
    /// Every consumer group with an offset in the message's queue: (group, its offset, whether
    /// it has consumed past the message).
    pub groups: Vec<(String, u64, bool)>,
}

/// Where a reset moves a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Timestamp(i64),
    Offset(u64),
}

/// Administrative calls.
#[derive(Clone)]
pub struct Admin {
    pub(crate) client: Client,
}

impl Admin {
    pub fn new(client: Client) -> Admin {
        Admin { client }
    }

    /// The client it calls through.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs a write on a master, following `NOT_MASTER` to the master it names.
    pub(crate) async fn on_master<T, F, Fut>(&self, master: &str, mut call: F) -> Result<T, Error>
    where
        F: FnMut(BrokerClient<crate::Transport>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut target = master.to_owned();
        let deadline = tokio::time::Instant::now() + self.client.config().send_timeout;
        loop {
            match call(self.client.broker(&target)?).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) => match classify(&status) {
                    (Retry::AtLeader(Some(leader)), _) => target = leader,
                    (Retry::AtLeader(None), e) | (Retry::Unreachable, e) => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(e);
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    (_, e) => return Err(e),
                },
            }
        }
    }

    /// Masters of every live group, or of the named ones: (group, master address).
    /// A group may be between masters for a moment (an election): wait for one up to the
    /// request deadline rather than fail at once.
    pub(crate) async fn masters(&self, groups: &[String]) -> Result<Vec<(String, String)>, Error> {
        let deadline = tokio::time::Instant::now() + self.client.config().send_timeout;
        loop {
            match self.masters_now(groups).await {
                Err(e) if e.code == ErrorCode::Unavailable && tokio::time::Instant::now() < deadline => {
                    tracing::debug!("waiting for masters: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn masters_now(&self, groups: &[String]) -> Result<Vec<(String, String)>, Error> {
        let info = self.client.cluster_info().await?;
        let mut out = Vec::new();
        for g in &info.groups {
            if groups.is_empty() || groups.contains(&g.group) {
                if g.master_addr.is_empty() {
                    return Err(ErrorCode::Unavailable.err(format!("group {} has no master right now", g.group)));
                }
                out.push((g.group.clone(), g.master_addr.clone()));
            }
        }
        for wanted in groups {
            if !out.iter().any(|(g, _)| g == wanted) {
                return Err(ErrorCode::InvalidArgument.err(format!("no live broker group named {wanted:?}")));
            }
        }
        if out.is_empty() {
            return Err(ErrorCode::Unavailable.err("no broker group is registered with the NameServers"));
        }
        Ok(out)
    }

    /// Creates or updates a topic in every group, or in the named groups. Returns the groups.
    pub async fn upsert_topic(
        &self,
        topic: &str,
        write_queues: u32,
        read_queues: u32,
        permission: pb::Permission,
        groups: &[String],
    ) -> Result<Vec<String>, Error> {
        raftmq_common::validate::name("topic", topic).map_err(|e| ErrorCode::InvalidArgument.err(e.to_string()))?;
        let config = pb::TopicConfig {
            name: topic.to_owned(),
            write_queues,
            read_queues,
            permission: permission as i32,
        };
        let mut done = Vec::new();
        for (group, master) in self.masters(groups).await? {
            let req = pb::UpsertTopicRequest {
                topic: Some(config.clone()),
            };
            let client = self.client.clone();
            self.on_master(&master, |mut b| {
                let r = client.request(req.clone(), client.config().request_timeout);
                async move { b.upsert_topic(r).await }
            })
            .await?;
            done.push(group);
        }
        Ok(done)
    }

    /// Deletes a topic from every group holding it.
    pub async fn delete_topic(&self, topic: &str) -> Result<Vec<String>, Error> {
        let route = self.client.refresh_route(topic).await?;
        let mut done = Vec::new();
        for g in &route.groups {
            let master = g
                .master
                .clone()
                .ok_or_else(|| ErrorCode::Unavailable.err(format!("group {} has no master right now", g.group)))?;
            let req = pb::DeleteTopicRequest {
                topic: topic.to_owned(),
            };
            let client = self.client.clone();
            self.on_master(&master, |mut b| {
                let r = client.request(req.clone(), client.config().request_timeout);
                async move { b.delete_topic(r).await }
            })
            .await?;
            done.push(g.group.clone());
        }
        Ok(done)
    }

    pub async fn route(&self, topic: &str) -> Result<std::sync::Arc<TopicRoute>, Error> {
        self.client.refresh_route(topic).await
    }

    pub async fn cluster(&self) -> Result<pb::ClusterInfo, Error> {
        self.client.cluster_info().await
    }

    /// One broker group as the NameServers report it; `None` when they do not know it.
    pub async fn group(&self, group: &str) -> Result<Option<pb::GroupInfo>, Error> {
        Ok(self.cluster().await?.groups.into_iter().find(|g| g.group == group))
    }

    pub async fn topics(&self) -> Result<Vec<String>, Error> {
        self.client.topics().await
    }

    /// Per queue: stored, committed, lag.
    pub async fn group_progress(&self, consumer_group: &str, topic: &str) -> Result<Vec<QueueProgress>, Error> {
        let reader = PullConsumer::new(self.client.clone(), ReadPreference::Master);
        let route = self.client.refresh_route(topic).await?;
        let mut out = Vec::new();
        for g in &route.groups {
            let committed = reader.committed_offsets(topic, &g.group, consumer_group).await?;
            for queue_id in 0..g.read_queues.max(g.write_queues) {
                let queue = MessageQueue {
                    group: g.group.clone(),
                    queue_id,
                };
                let (_, max) = reader.queue_offsets(topic, &queue).await?;
                let consume = committed.get(&queue_id).copied();
                out.push(QueueProgress {
                    lag: max.saturating_sub(consume.unwrap_or(0)),
                    broker_offset: max,
                    consume_offset: consume,
                    queue,
                });
            }
        }
        Ok(out)
    }

    /// One message by (topic, group, queue, offset).
    pub async fn get_message(
        &self,
        topic: &str,
        queue: &MessageQueue,
        offset: u64,
        preference: ReadPreference,
    ) -> Result<ReceivedMessage, Error> {
        let route = self.client.route(topic).await?;
        let g = route
            .group(&queue.group)
            .ok_or_else(|| ErrorCode::QueueNotFound.err(format!("group {} holds no queue of {topic}", queue.group)))?;
        let mut nodes: Vec<String> = match preference {
            ReadPreference::Master => g.master.iter().chain(g.slaves.iter()).cloned().collect(),
            ReadPreference::PreferSlave => g.slaves.iter().chain(g.master.iter()).cloned().collect(),
            ReadPreference::SlaveOnly => g.slaves.clone(),
        };
        nodes.dedup();
        let mut last = ErrorCode::Unavailable.err(format!("no node of {} answered", queue.group));
        for addr in nodes {
            let mut b = self.client.broker(&addr)?;
            let req = pb::GetMessageRequest {
                topic: topic.to_owned(),
                queue_id: queue.queue_id,
                offset,
                msg_id: String::new(),
            };
            match b
                .get_message(self.client.request(req, self.client.config().request_timeout))
                .await
            {
                Ok(m) => return Ok(ReceivedMessage::from_proto(&queue.group, m.into_inner())),
                Err(status) => match classify(&status) {
                    (Retry::No, e) => return Err(e),
                    (_, e) => last = e,
                },
            }
        }
        Err(last)
    }

    /// The message with an id, from whichever broker group stored it (any of its nodes:
    /// committed messages only). `MESSAGE_NOT_FOUND` when no group has it in a queue (never
    /// stored, removed by retention, or a delayed message before its time).
    pub async fn message_by_id(&self, msg_id: &str) -> Result<ReceivedMessage, Error> {
        let info = self.client.cluster_info().await?;
        let mut last = ErrorCode::MessageNotFound.err(format!("no broker group stores message {msg_id}"));
        for g in &info.groups {
            let nodes = std::iter::once(g.master_addr.clone())
                .chain(g.nodes.iter().map(|n| n.addr.clone()))
                .filter(|a| !a.is_empty());
            for addr in nodes {
                let req = pb::GetMessageRequest {
                    msg_id: msg_id.to_owned(),
                    ..Default::default()
                };
                let mut b = self.client.broker(&addr)?;
                match b
                    .get_message(self.client.request(req, self.client.config().request_timeout))
                    .await
                {
                    Ok(m) => return Ok(ReceivedMessage::from_proto(&g.group, m.into_inner())),
                    Err(status) => match classify(&status) {
                        // This group answered: not here. The next group, then.
                        (Retry::No, e) if e.code == ErrorCode::MessageNotFound => break,
                        (Retry::No, e) => return Err(e),
                        (_, e) => last = e,
                    },
                }
            }
        }
        Err(last)
    }

    /// Where the message with an id is stored and which consumer groups have consumed past it
    /// (their committed offsets in its queue, as its broker group's master knows them).
    pub async fn trace(&self, msg_id: &str) -> Result<Trace, Error> {
        let message = self.message_by_id(msg_id).await?;
        let masters = self.masters(std::slice::from_ref(&message.group)).await?;
        let req = pb::GetTopicConsumersRequest {
            topic: message.topic.clone(),
        };
        let client = self.client.clone();
        let reply = self
            .on_master(&masters[0].1, |mut b| {
                let r = client.request(req.clone(), client.config().request_timeout);
                async move { b.get_topic_consumers(r).await }
            })
            .await?;
        let groups = reply
            .offsets
            .into_iter()
            .filter(|o| o.queue_id == message.queue_id)
            .map(|o| {
                let past = o.offset > message.queue_offset;
                (o.consumer_group, o.offset, past)
            })
            .collect();
        Ok(Trace { message, groups })
    }

    /// Cancels a delayed message of `topic` that is not due yet, by the recall handle its send
    /// returned. `ALREADY_DELIVERED` when it was delivered already, `MESSAGE_NOT_FOUND` when the
    /// handle names nothing pending (recalled already).
    pub async fn recall(&self, topic: &str, recall_handle: &str) -> Result<(), Error> {
        let group = recall_handle
            .split_once('@')
            .map(|(g, _)| g)
            .ok_or_else(|| ErrorCode::InvalidArgument.err(format!("{recall_handle:?} is not a recall handle")))?;
        let route = self.client.route(topic).await?;
        let g = route
            .groups
            .iter()
            .find(|g| g.group == group)
            .ok_or_else(|| ErrorCode::InvalidArgument.err(format!("no group {group} holds topic {topic}")))?;
        // A slave answers NOT_MASTER naming the master, when there is none in the route yet.
        let node = g
            .master
            .iter()
            .chain(g.slaves.iter())
            .next()
            .cloned()
            .ok_or_else(|| ErrorCode::Unavailable.err(format!("group {group} has no live node")))?;
        let req = pb::RecallRequest {
            topic: topic.to_owned(),
            recall_handle: recall_handle.to_owned(),
        };
        let client = self.client.clone();
        self.on_master(&node, |mut b| {
            let r = client.request(req.clone(), client.config().request_timeout);
            async move { b.recall(r).await }
        })
        .await?;
        Ok(())
    }

    /// Moves a consumer group's offsets in a topic, in every group holding it.
    pub async fn reset_offsets(
        &self,
        consumer_group: &str,
        topic: &str,
        to: ResetTo,
    ) -> Result<Vec<(MessageQueue, u64)>, Error> {
        use pb::reset_offsets_request::Target;
        let target = match to {
            ResetTo::Earliest => Target::ToEarliest(true),
            ResetTo::Latest => Target::ToLatest(true),
            ResetTo::Timestamp(ts) => Target::TimestampMs(ts),
            ResetTo::Offset(o) => Target::Offset(o),
        };
        let route = self.client.refresh_route(topic).await?;
        let mut out = Vec::new();
        for g in &route.groups {
            let master = g
                .master
                .clone()
                .ok_or_else(|| ErrorCode::Unavailable.err(format!("group {} has no master right now", g.group)))?;
            let req = pb::ResetOffsetsRequest {
                consumer_group: consumer_group.to_owned(),
                topic: topic.to_owned(),
                target: Some(target),
            };
            let client = self.client.clone();
            let reply = self
                .on_master(&master, |mut b| {
                    let r = client.request(req.clone(), client.config().request_timeout);
                    async move { b.reset_offsets(r).await }
                })
                .await?;
            out.extend(reply.offsets.into_iter().map(|o| {
                (
                    MessageQueue {
                        group: g.group.clone(),
                        queue_id: o.queue_id,
                    },
                    o.offset,
                )
            }));
        }
        Ok(out)
    }
}
