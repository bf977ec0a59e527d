//! Explicit reads: one queue at a time, from the node the read preference picks, with the
//! consume offsets a group committed.

use std::collections::BTreeMap;
use std::time::Duration;

use raftmq_common::{Error, ErrorCode};
use raftmq_proto as pb;

use super::{nodes_for, MessageSelector, ReadPreference};
use crate::error::{classify, Retry};
use crate::message::ReceivedMessage;
use crate::route::MessageQueue;
use crate::Client;

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

/// What became of a message sent back after a failed consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentBack {
    /// It comes again from the group's retry topic at `deliver_at_ms`, as reconsume
    /// `reconsume_times`.
    Retry { reconsume_times: u32, deliver_at_ms: i64 },
    /// It used up the group's retries and is on its dead-letter topic.
    DeadLettered { dlq_topic: String },
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
    pub async fn queues(&self, topic: &str) -> Result<Vec<MessageQueue>, Error> {
        Ok(self.client.route(topic).await?.read_queues())
    }

    /// Calls `call` on the nodes of a group in read-preference order until one answers.
    async fn read<T, F, Fut>(&self, topic: &str, group: &str, mut call: F) -> Result<T, Error>
    where
        F: FnMut(raftmq_proto::broker_client::BrokerClient<crate::Transport>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut route = self.client.route(topic).await?;
        let mut last = ErrorCode::Unavailable.err(format!("no node of group {group} to read {topic} from"));
        for round in 0..2 {
            if round == 1 {
                // Second round with a fresh route: the group may have moved.
                route = self.client.refresh_route(topic).await?;
            }
            let Some(g) = route.group(group) else {
                return Err(ErrorCode::QueueNotFound.err(format!("group {group} holds no queue of {topic}")));
            };
            for addr in nodes_for(g, self.read_preference) {
                let broker = self.client.reader(&addr)?;
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

    /// Pulls up to `max` messages of a queue from `offset` that `selector` wants (a `&str` is a
    /// tag expression), waiting up to `wait` for one.
    pub async fn pull(
        &self,
        topic: &str,
        queue: &MessageQueue,
        offset: u64,
        max: u32,
        selector: impl Into<MessageSelector>,
        wait: Duration,
    ) -> Result<PullResult, Error> {
        let timeout = wait + self.client.config().request_timeout;
        let (tag_expression, sql_expression) = selector.into().wire();
        let req = pb::PullRequest {
            topic: topic.to_owned(),
            queue_id: queue.queue_id,
            offset,
            max_messages: max,
            max_bytes: 0,
            tag_expression,
            wait_ms: wait.as_millis() as u64,
            sql_expression,
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
    pub async fn queue_offsets(&self, topic: &str, queue: &MessageQueue) -> Result<(u64, u64), Error> {
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
    pub async fn search_offset(&self, topic: &str, queue: &MessageQueue, timestamp_ms: i64) -> Result<u64, Error> {
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
    ) -> Result<BTreeMap<u32, u64>, Error> {
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

    /// Calls `call` on the master of a broker group holding `topic`, following `NOT_MASTER`.
    async fn on_master<T, F, Fut>(&self, topic: &str, group: &str, mut call: F) -> Result<T, Error>
    where
        F: FnMut(raftmq_proto::broker_client::BrokerClient<crate::Transport>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let route = self.client.route(topic).await?;
        let mut target = route
            .group(group)
            .and_then(|g| g.master.clone())
            .ok_or_else(|| ErrorCode::Unavailable.err(format!("group {group} has no master")))?;
        for _ in 0..3 {
            match call(self.client.broker(&target)?).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) => match classify(&status) {
                    (Retry::AtLeader(Some(leader)), _) => target = leader,
                    (_, e) => {
                        let _ = self.client.refresh_route(topic).await;
                        return Err(e);
                    }
                },
            }
        }
        Err(ErrorCode::Unavailable.err(format!("group {group}: the master kept moving")))
    }

    /// Commits offsets to a group's master.
    pub async fn commit_offsets(
        &self,
        topic: &str,
        group: &str,
        consumer_group: &str,
        offsets: &BTreeMap<u32, u64>,
    ) -> Result<(), Error> {
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
        let client = &self.client;
        self.on_master(topic, group, |mut b| {
            let r = client.request(req.clone(), client.config().request_timeout);
            async move { b.commit_offsets(r).await }
        })
        .await?;
        Ok(())
    }

    /// Locks queues of `topic` in broker group `group` for this member of `consumer_group` for
    /// `lease`; returns the queues granted.
    pub async fn lock_queues(
        &self,
        topic: &str,
        group: &str,
        (consumer_group, client_id): (&str, &str),
        queues: &[u32],
        lease: Duration,
    ) -> Result<Vec<u32>, Error> {
        let req = pb::LockQueuesRequest {
            consumer_group: consumer_group.to_owned(),
            topic: topic.to_owned(),
            client_id: client_id.to_owned(),
            queue_ids: queues.to_vec(),
            lease_ms: lease.as_millis() as u64,
        };
        let client = &self.client;
        Ok(self
            .on_master(topic, group, |mut b| {
                let r = client.request(req.clone(), client.config().request_timeout);
                async move { b.lock_queues(r).await }
            })
            .await?
            .locked)
    }

    /// Releases this member's locks on queues of `topic` in broker group `group`.
    pub async fn unlock_queues(
        &self,
        topic: &str,
        group: &str,
        (consumer_group, client_id): (&str, &str),
        queues: &[u32],
    ) -> Result<(), Error> {
        let req = pb::UnlockQueuesRequest {
            consumer_group: consumer_group.to_owned(),
            topic: topic.to_owned(),
            client_id: client_id.to_owned(),
            queue_ids: queues.to_vec(),
        };
        let client = &self.client;
        self.on_master(topic, group, |mut b| {
            let r = client.request(req.clone(), client.config().request_timeout);
            async move { b.unlock_queues(r).await }
        })
        .await?;
        Ok(())
    }

    /// Hands a message `consumer_group` failed back to its broker group's master, which stores
    /// it for a retry (or, past the group's retries, as a dead letter). `topic` is where it was
    /// read (the original topic or the group's retry topic).
    pub async fn send_back(
        &self,
        topic: &str,
        queue: &MessageQueue,
        offset: u64,
        consumer_group: &str,
    ) -> Result<SentBack, Error> {
        let req = pb::SendBackRequest {
            consumer_group: consumer_group.to_owned(),
            topic: topic.to_owned(),
            queue_id: queue.queue_id,
            offset,
        };
        let client = &self.client;
        let r = self
            .on_master(topic, &queue.group, |mut b| {
                let r = client.request(req.clone(), client.config().request_timeout);
                async move { b.send_back(r).await }
            })
            .await?;
        Ok(if r.dead_lettered {
            SentBack::DeadLettered { dlq_topic: r.dlq_topic }
        } else {
            SentBack::Retry {
                reconsume_times: r.reconsume_times,
                deliver_at_ms: r.deliver_at_ms,
            }
        })
    }
}
