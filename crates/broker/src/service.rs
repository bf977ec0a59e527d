//! The broker's client-facing gRPC service.
//!
//! Writes are accepted on the master only and answered after their Raft entry is committed.
//! Reads are served by any node from applied entries only. Every request is validated here, at
//! the edge, with an error naming the field; the state machine checks again, deterministically.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq_common::validate;
use raftmq_proto as pb;
use raftmq_proto::broker_server::Broker;
use raftmq_store::types::{Command, MessageIn, OffsetUpdate, TopicConfig};
use raftmq_store::{body_crc, StoredMessage};
use tonic::{Request, Response, Status};

use crate::error::BrokerError;
use crate::ops;
use crate::state::BrokerState;

/// Longest a pull may wait for new messages.
pub const MAX_PULL_WAIT: Duration = Duration::from_secs(30);
/// Most messages one pull returns.
pub const MAX_PULL_MESSAGES: u32 = 1024;

/// A tag expression: `*` (or empty) or `a || b`.
pub struct TagFilter(Option<BTreeSet<String>>);

impl TagFilter {
    pub fn parse(expression: &str) -> Result<TagFilter, BrokerError> {
        let e = expression.trim();
        if e.is_empty() || e == "*" {
            return Ok(TagFilter(None));
        }
        let tags: BTreeSet<String> = e.split("||").map(|t| t.trim().to_owned()).collect();
        if tags.iter().any(|t| t.is_empty()) {
            return Err(BrokerError::InvalidArgument(format!(
                "field `tag_expression`: {expression:?} has an empty tag"
            )));
        }
        Ok(TagFilter(Some(tags)))
    }

    pub fn matches(&self, tags: &str) -> bool {
        self.0.as_ref().is_none_or(|set| set.contains(tags))
    }
}

pub fn to_proto(m: StoredMessage) -> pb::StoredMessage {
    pb::StoredMessage {
        msg_id: m.msg_id,
        topic: m.topic,
        queue_id: m.queue_id,
        queue_offset: m.queue_offset,
        tags: m.tags,
        keys: m.keys,
        properties: m.properties.into_iter().collect(),
        body: m.body,
        born_timestamp_ms: m.born_timestamp_ms,
        store_timestamp_ms: m.store_timestamp_ms,
        log_index: m.log_index,
        body_crc: m.body_crc,
    }
}

fn topic_to_proto(t: &TopicConfig) -> pb::TopicConfig {
    pb::TopicConfig {
        name: t.name.clone(),
        write_queues: t.write_queues,
        read_queues: t.read_queues,
        permission: t.permission as i32,
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct BrokerService {
    state: Arc<BrokerState>,
}

impl BrokerService {
    pub fn new(state: Arc<BrokerState>) -> Self {
        BrokerService { state }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn send(&self, request: Request<pb::SendRequest>) -> Reply<pb::SendReply> {
        let req = request.into_inner();
        let mut messages = Vec::with_capacity(req.messages.len());
        for (i, m) in req.messages.into_iter().enumerate() {
            if !m.topic.is_empty() && m.topic != req.topic {
                return Err(BrokerError::InvalidArgument(format!(
                    "field `messages[{i}].topic`: {:?} differs from the batch's topic {:?}",
                    m.topic, req.topic
                ))
                .into());
            }
            let mut properties: Vec<(String, String)> = m.properties.into_iter().collect();
            properties.sort();
            messages.push(MessageIn {
                body_crc: body_crc(&m.body),
                tags: m.tags,
                keys: m.keys,
                properties,
                body: m.body,
                born_timestamp_ms: m.born_timestamp_ms,
            });
        }
        let batch = ops::send::Batch {
            topic: req.topic,
            queue: ops::send::Queue::Given(req.queue_id),
            messages,
        };
        let sent = ops::send::send(&self.state, batch).await?;
        let results = sent
            .msg_ids
            .into_iter()
            .enumerate()
            .map(|(i, msg_id)| pb::SendResult {
                msg_id,
                queue_id: sent.queue_id,
                queue_offset: sent.first_offset + i as u64,
            })
            .collect();
        Ok(Response::new(pb::SendReply {
            group: self.state.config.group.clone(),
            results,
        }))
    }

    async fn pull(&self, request: Request<pb::PullRequest>) -> Reply<pb::PullReply> {
        let s = &self.state;
        let req = request.into_inner();
        ops::topics::for_read(s, &req.topic, req.queue_id)?;
        let filter = TagFilter::parse(&req.tag_expression)?;
        let max_messages = req.max_messages.clamp(1, MAX_PULL_MESSAGES) as usize;
        let max_bytes = if req.max_bytes == 0 { 4 << 20 } else { req.max_bytes };
        let deadline = Instant::now() + Duration::from_millis(req.wait_ms).min(MAX_PULL_WAIT);
        let mut applied = s.reader.subscribe_applied();
        let mut stop = s.stop.clone();
        loop {
            applied.borrow_and_update();
            let read = s
                .reader
                .read(&req.topic, req.queue_id, req.offset, max_messages, max_bytes, &|tags| {
                    filter.matches(tags)
                })
                .map_err(BrokerError::from)?;
            let status = if req.offset < read.min_offset {
                pb::PullStatus::OffsetMoved
            } else if req.offset > read.max_offset {
                pb::PullStatus::OffsetIllegal
            } else if !read.messages.is_empty() {
                pb::PullStatus::Found
            } else {
                pb::PullStatus::NoNewMessage
            };
            // Filtered-out messages moved the offset on: report that rather than wait on.
            let moved = read.next_offset > req.offset.max(read.min_offset);
            let done = status != pb::PullStatus::NoNewMessage || moved || Instant::now() >= deadline;
            if done {
                return Ok(Response::new(pb::PullReply {
                    status: status as i32,
                    next_offset: if status == pb::PullStatus::OffsetIllegal {
                        read.max_offset
                    } else {
                        read.next_offset
                    },
                    min_offset: read.min_offset,
                    max_offset: read.max_offset,
                    messages: read.messages.into_iter().map(to_proto).collect(),
                }));
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return Err(BrokerError::Unavailable("the store is closing".into()).into()) },
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = stop.wait_for(|s| *s) => return Err(BrokerError::Unavailable("the broker is shutting down".into()).into()),
            }
        }
    }

    async fn get_queue_offsets(&self, request: Request<pb::QueueOffsetsRequest>) -> Reply<pb::QueueOffsetsReply> {
        let req = request.into_inner();
        ops::topics::for_read(&self.state, &req.topic, req.queue_id)?;
        let q = self.state.reader.queue_state(&req.topic, req.queue_id);
        Ok(Response::new(pb::QueueOffsetsReply {
            min_offset: q.min_offset,
            max_offset: q.next_offset,
        }))
    }

    async fn search_offset(&self, request: Request<pb::SearchOffsetRequest>) -> Reply<pb::SearchOffsetReply> {
        let req = request.into_inner();
        ops::topics::for_read(&self.state, &req.topic, req.queue_id)?;
        let offset = self
            .state
            .reader
            .search_offset(&req.topic, req.queue_id, req.timestamp_ms)
            .map_err(BrokerError::from)?;
        Ok(Response::new(pb::SearchOffsetReply { offset }))
    }

    async fn get_message(&self, request: Request<pb::GetMessageRequest>) -> Reply<pb::StoredMessage> {
        let req = request.into_inner();
        ops::topics::for_read(&self.state, &req.topic, req.queue_id)?;
        match self
            .state
            .reader
            .get(&req.topic, req.queue_id, req.offset)
            .map_err(BrokerError::from)?
        {
            Some(m) => Ok(Response::new(to_proto(m))),
            None => Err(BrokerError::MessageNotFound(format!(
                "no message at {}/{} offset {}",
                req.topic, req.queue_id, req.offset
            ))
            .into()),
        }
    }

    async fn commit_offsets(&self, request: Request<pb::CommitOffsetsRequest>) -> Reply<pb::CommitOffsetsReply> {
        let req = request.into_inner();
        validate::name("consumer_group", &req.consumer_group).map_err(BrokerError::from)?;
        let mut offsets = Vec::with_capacity(req.offsets.len());
        for o in req.offsets {
            validate::name("offsets.topic", &o.topic).map_err(BrokerError::from)?;
            offsets.push(OffsetUpdate {
                topic: o.topic,
                queue_id: o.queue_id,
                offset: o.offset,
            });
        }
        if offsets.is_empty() {
            return Ok(Response::new(pb::CommitOffsetsReply {}));
        }
        self.state.require_master()?;
        let command = Command::CommitOffsets {
            group: req.consumer_group,
            offsets,
            increase_only: true,
        };
        self.state.commit(command, 0).await?;
        Ok(Response::new(pb::CommitOffsetsReply {}))
    }

    async fn get_consume_offsets(
        &self,
        request: Request<pb::GetConsumeOffsetsRequest>,
    ) -> Reply<pb::GetConsumeOffsetsReply> {
        let req = request.into_inner();
        validate::name("consumer_group", &req.consumer_group).map_err(BrokerError::from)?;
        let topic = (!req.topic.is_empty()).then_some(req.topic.as_str());
        let offsets = self
            .state
            .reader
            .consume_offsets(&req.consumer_group, topic)
            .into_iter()
            .map(|(topic, queue_id, offset)| pb::OffsetEntry {
                topic,
                queue_id,
                offset,
            })
            .collect();
        Ok(Response::new(pb::GetConsumeOffsetsReply { offsets }))
    }

    async fn reset_offsets(&self, request: Request<pb::ResetOffsetsRequest>) -> Reply<pb::ResetOffsetsReply> {
        use pb::reset_offsets_request::Target;
        let s = &self.state;
        let req = request.into_inner();
        validate::name("consumer_group", &req.consumer_group).map_err(BrokerError::from)?;
        let topic = ops::topics::for_read(s, &req.topic, 0)?;
        let target = req.target.ok_or_else(|| {
            BrokerError::InvalidArgument("field `target`: say a timestamp, an offset, earliest or latest".into())
        })?;
        s.require_master()?;
        let mut offsets = Vec::new();
        for queue_id in 0..topic.queues() {
            let bounds = s.reader.queue_state(&topic.name, queue_id);
            let offset = match target {
                Target::TimestampMs(ts) => s
                    .reader
                    .search_offset(&topic.name, queue_id, ts)
                    .map_err(BrokerError::from)?,
                Target::Offset(o) => o.clamp(bounds.min_offset, bounds.next_offset),
                Target::ToEarliest(_) => bounds.min_offset,
                Target::ToLatest(_) => bounds.next_offset,
            };
            offsets.push(OffsetUpdate {
                topic: topic.name.clone(),
                queue_id,
                offset,
            });
        }
        let reply = offsets
            .iter()
            .map(|o| pb::OffsetEntry {
                topic: o.topic.clone(),
                queue_id: o.queue_id,
                offset: o.offset,
            })
            .collect();
        s.commit(
            Command::CommitOffsets {
                group: req.consumer_group,
                offsets,
                increase_only: false,
            },
            0,
        )
        .await?;
        Ok(Response::new(pb::ResetOffsetsReply { offsets: reply }))
    }

    async fn consumer_heartbeat(
        &self,
        request: Request<pb::ConsumerHeartbeatRequest>,
    ) -> Reply<pb::ConsumerHeartbeatReply> {
        let req = request.into_inner();
        validate::name("consumer_group", &req.consumer_group).map_err(BrokerError::from)?;
        if req.client_id.is_empty() || req.client_id.len() > 255 {
            return Err(BrokerError::InvalidArgument("field `client_id`: must be 1 to 255 bytes".into()).into());
        }
        self.state
            .consumers
            .heartbeat(&req.consumer_group, &req.client_id, &req.topics, Instant::now());
        Ok(Response::new(pb::ConsumerHeartbeatReply {}))
    }

    async fn get_consumers(&self, request: Request<pb::GetConsumersRequest>) -> Reply<pb::GetConsumersReply> {
        let req = request.into_inner();
        validate::name("consumer_group", &req.consumer_group).map_err(BrokerError::from)?;
        Ok(Response::new(pb::GetConsumersReply {
            client_ids: self.state.consumers.members(&req.consumer_group, Instant::now()),
        }))
    }

    async fn unregister_consumer(
        &self,
        request: Request<pb::UnregisterConsumerRequest>,
    ) -> Reply<pb::UnregisterConsumerReply> {
        let req = request.into_inner();
        self.state.consumers.unregister(&req.consumer_group, &req.client_id);
        Ok(Response::new(pb::UnregisterConsumerReply {}))
    }

    async fn upsert_topic(&self, request: Request<pb::UpsertTopicRequest>) -> Reply<pb::UpsertTopicReply> {
        let t = request
            .into_inner()
            .topic
            .ok_or_else(|| BrokerError::InvalidArgument("field `topic`: missing".into()))?;
        let config = TopicConfig {
            name: t.name,
            write_queues: t.write_queues,
            read_queues: t.read_queues,
            permission: t.permission.max(0) as u32,
        };
        ops::topics::upsert(&self.state, config).await?;
        Ok(Response::new(pb::UpsertTopicReply {}))
    }

    async fn delete_topic(&self, request: Request<pb::DeleteTopicRequest>) -> Reply<pb::DeleteTopicReply> {
        ops::topics::delete(&self.state, request.into_inner().topic).await?;
        Ok(Response::new(pb::DeleteTopicReply {}))
    }

    async fn list_topics(&self, _request: Request<pb::BrokerListTopicsRequest>) -> Reply<pb::BrokerTopicList> {
        let topics = ops::topics::list(&self.state).iter().map(topic_to_proto).collect();
        Ok(Response::new(pb::BrokerTopicList { topics }))
    }

    async fn inject_fault(&self, request: Request<pb::InjectFaultRequest>) -> Reply<pb::InjectFaultReply> {
        let s = &self.state;
        if !s.config.fault_injection {
            return Err(BrokerError::NoPermission("fault injection is off (fault-injection = false)".into()).into());
        }
        let cut = request.into_inner().cut_from;
        s.faults.heal_all();
        for peer in &cut {
            s.faults.cut(s.config.node_id, *peer);
        }
        tracing::warn!(node = s.config.node_id, ?cut, "fault injection: raft links cut");
        Ok(Response::new(pb::InjectFaultReply {}))
    }

    async fn get_node_status(&self, _request: Request<pb::NodeStatusRequest>) -> Reply<pb::NodeStatus> {
        let s = &self.state;
        let metrics = s.raft.metrics().borrow().clone();
        let queues = s
            .reader
            .queues()
            .into_iter()
            .map(|(topic, queue_id, q)| pb::QueueStatus {
                topic,
                queue_id,
                min_offset: q.min_offset,
                max_offset: q.next_offset,
            })
            .collect();
        Ok(Response::new(pb::NodeStatus {
            cluster: s.config.cluster.clone(),
            group: s.config.group.clone(),
            node_id: s.config.node_id,
            role: crate::heartbeat::role(metrics.state) as i32,
            term: metrics.current_term,
            leader_id: metrics.current_leader.unwrap_or(0),
            leader_addr: s.leader_client_addr().unwrap_or_default(),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            commit_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            queues,
        }))
    }
}

pub fn topic_config_to_proto(t: &TopicConfig) -> pb::TopicConfig {
    topic_to_proto(t)
}
