//! The broker's client-facing gRPC service.
//!
//! Writes are accepted on the master only and answered after their Raft entry is committed.
//! Reads are served by any node from applied entries only. Every request is validated here, at
//! the edge, with an error naming the field; the state machine checks again, deterministically.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq_common::auth::Need;
use raftmq_common::validate;
use raftmq_proto as pb;
use raftmq_proto::broker_server::Broker;
use raftmq_store::body_crc;
use raftmq_store::types::{MessageIn, OffsetUpdate, TopicConfig};
use tonic::{Request, Response, Status};

use crate::convert::{self, to_proto, topic_to_proto};
use crate::ops;
use crate::ops::offsets::ResetTo;
use crate::ops::pull::PullStatus;
use crate::state::BrokerState;
use raftmq_common::{Error, ErrorCode};

/// The gRPC service.
#[derive(Clone)]
pub struct BrokerService {
    state: Arc<BrokerState>,
}

impl BrokerService {
    pub fn new(state: Arc<BrokerState>) -> Self {
        BrokerService { state }
    }

    /// Lets `request` (named `what`) through if its caller holds every need (see `guard`).
    fn allow<T>(&self, request: &Request<T>, what: &str, needs: &[Need<'_>]) -> Result<(), Status> {
        self.state
            .guard
            .check(request.metadata(), request.remote_addr(), what, needs)
            .map_err(Status::from)
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// A message as the store keeps it, its body's checksum computed here.
fn message_in(m: pb::Message) -> MessageIn {
    let mut properties: Vec<(String, String)> = m.properties.into_iter().collect();
    properties.sort();
    MessageIn {
        body_crc: body_crc(&m.body),
        tags: m.tags,
        keys: m.keys,
        properties,
        body: m.body.into(),
        born_timestamp_ms: m.born_timestamp_ms,
    }
}

/// A half message as a check shows it to its producer.
fn check_to_proto(check: ops::txn::Check) -> pb::TransactionCheck {
    let m = check.message;
    pb::TransactionCheck {
        transaction_id: check.transaction_id,
        message: Some(pb::StoredMessage {
            msg_id: check.msg_id,
            topic: check.topic,
            queue_id: check.queue_id,
            tags: m.tags,
            keys: m.keys,
            properties: m.properties.into_iter().collect(),
            body: m.body,
            born_timestamp_ms: m.born_timestamp_ms,
            body_crc: m.body_crc,
            ..Default::default()
        }),
        producer_group: check.producer_group,
        checks: check.checks,
    }
}

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn send(&self, request: Request<pb::SendRequest>) -> Reply<pb::SendReply> {
        self.allow(&request, "Send", &[Need::Publish(&request.get_ref().topic)])?;
        let req = request.into_inner();
        let mut messages = Vec::with_capacity(req.messages.len());
        for (i, m) in req.messages.into_iter().enumerate() {
            if !m.topic.is_empty() && m.topic != req.topic {
                return Err(ErrorCode::InvalidArgument
                    .err(format!(
                        "field `messages[{i}].topic`: {:?} differs from the batch's topic {:?}",
                        m.topic, req.topic
                    ))
                    .into());
            }
            messages.push(message_in(m));
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
            .map(|(i, msg_id)| match sent.scheduled.get(i) {
                Some((handle, due)) => pb::SendResult {
                    msg_id,
                    queue_id: sent.queue_id,
                    queue_offset: 0,
                    recall_handle: handle.clone(),
                    deliver_at_ms: *due,
                },
                None => pb::SendResult {
                    msg_id,
                    queue_id: sent.queue_id,
                    queue_offset: sent.first_offset + i as u64,
                    recall_handle: String::new(),
                    deliver_at_ms: 0,
                },
            })
            .collect();
        Ok(Response::new(pb::SendReply {
            group: self.state.config.group.clone(),
            results,
        }))
    }

    async fn recall(&self, request: Request<pb::RecallRequest>) -> Reply<pb::RecallReply> {
        self.allow(&request, "Recall", &[Need::Publish(&request.get_ref().topic)])?;
        let req = request.into_inner();
        ops::delay::recall(&self.state, &req.recall_handle).await?;
        Ok(Response::new(pb::RecallReply {}))
    }

    async fn send_half(&self, request: Request<pb::SendHalfRequest>) -> Reply<pb::SendHalfReply> {
        self.allow(&request, "SendHalf", &[Need::Publish(&request.get_ref().topic)])?;
        let req = request.into_inner();
        let m = req
            .message
            .ok_or_else(|| ErrorCode::InvalidArgument.err("field `message`: missing"))?;
        if !m.topic.is_empty() && m.topic != req.topic {
            return Err(ErrorCode::InvalidArgument
                .err(format!(
                    "field `message.topic`: {:?} differs from {:?}",
                    m.topic, req.topic
                ))
                .into());
        }
        let batch = ops::send::Batch {
            topic: req.topic,
            queue: ops::send::Queue::Given(req.queue_id),
            messages: vec![message_in(m)],
        };
        let prepared = ops::txn::prepare(&self.state, batch, &req.producer_group).await?;
        Ok(Response::new(pb::SendHalfReply {
            msg_id: prepared.msg_id,
            queue_id: prepared.queue_id,
            transaction_id: prepared.transaction_id,
        }))
    }

    async fn end_transaction(&self, request: Request<pb::EndTransactionRequest>) -> Reply<pb::EndTransactionReply> {
        let topic = ops::txn::topic_of(&self.state, &request.get_ref().transaction_id);
        let need = topic.as_deref().map_or(Need::Known, Need::Publish);
        self.allow(&request, "EndTransaction", &[need])?;
        let req = request.into_inner();
        let resolution = match pb::TransactionResolution::try_from(req.resolution) {
            Ok(pb::TransactionResolution::Commit) => ops::txn::Resolution::Commit,
            Ok(pb::TransactionResolution::Rollback) => ops::txn::Resolution::Rollback,
            _ => {
                return Err(ErrorCode::InvalidArgument
                    .err(format!(
                        "field `resolution`: {} is not COMMIT or ROLLBACK",
                        req.resolution
                    ))
                    .into())
            }
        };
        let msg_id = ops::txn::end(&self.state, &req.transaction_id, resolution).await?;
        Ok(Response::new(pb::EndTransactionReply {
            msg_id: msg_id.unwrap_or_default(),
        }))
    }

    type TransactionChecksStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::TransactionCheck, Status>> + Send>>;

    async fn transaction_checks(
        &self,
        request: Request<pb::TransactionChecksRequest>,
    ) -> Reply<Self::TransactionChecksStream> {
        // Checks show half messages of the producer group's topics: only an admin sees a
        // group's checks without naming the topics, anyone else needs pub on each it names.
        let r = request.get_ref();
        let mut needs: Vec<Need> = r.topics.iter().map(|t| Need::Publish(t)).collect();
        if r.topics.is_empty() {
            needs.push(Need::Admin);
        }
        self.allow(&request, "TransactionChecks", &needs)?;
        let req = request.into_inner();
        if req.producer_group.is_empty() && req.topics.is_empty() {
            return Err(ErrorCode::InvalidArgument
                .err("a producer answering checks names its producer group or its topics")
                .into());
        }
        if !req.producer_group.is_empty() {
            validate::name("producer group", &req.producer_group)?;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let registration = self
            .state
            .txn_producers
            .register(&req.client_id, &req.producer_group, req.topics, tx);
        let stop = self.state.stop.clone();
        // The registration lives as long as the stream: dropped when the producer goes away.
        let stream = futures::stream::unfold((rx, registration), move |(mut rx, registration)| {
            let mut stop = stop.clone();
            async move {
                tokio::select! {
                    check = rx.recv() => check.map(|c| (Ok(check_to_proto(c)), (rx, registration))),
                    _ = stop.wait() => None,
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Reply<pb::ListTransactionsReply> {
        self.allow(&request, "ListTransactions", &[Need::Admin])?;
        let req = request.into_inner();
        let limit = if req.limit == 0 { 100 } else { req.limit.min(10_000) } as usize;
        let transactions = ops::txn::pending(&self.state, limit)?
            .into_iter()
            .map(|(transaction_id, h)| pb::PendingTransaction {
                transaction_id,
                topic: h.topic,
                queue_id: h.queue_id,
                producer_group: h.producer_group,
                prepared_ms: h.prepared_ms,
                checks: h.checks,
                next_check_ms: h.next_check_ms,
                keys: h.message.keys,
            })
            .collect();
        Ok(Response::new(pb::ListTransactionsReply {
            transactions,
            pending: self.state.reader.pending_txns(),
        }))
    }

    async fn pull(&self, request: Request<pb::PullRequest>) -> Reply<pb::PullReply> {
        self.allow(&request, "Pull", &[Need::Subscribe(&request.get_ref().topic)])?;
        let req = request.into_inner();
        let query = ops::pull::PullQuery {
            topic: req.topic,
            queue_id: req.queue_id,
            offset: req.offset,
            filter: ops::pull::filter(&req.tag_expression, &req.sql_expression)?,
            max_messages: req.max_messages,
            max_bytes: req.max_bytes,
            wait: Duration::from_millis(req.wait_ms),
        };
        let pulled = ops::pull::pull(&self.state, query).await?;
        let status = match pulled.status {
            PullStatus::Found => pb::PullStatus::Found,
            PullStatus::NoNewMessage => pb::PullStatus::NoNewMessage,
            PullStatus::OffsetMoved => pb::PullStatus::OffsetMoved,
            PullStatus::OffsetIllegal => pb::PullStatus::OffsetIllegal,
        };
        Ok(Response::new(pb::PullReply {
            status: status as i32,
            next_offset: pulled.next_offset,
            min_offset: pulled.min_offset,
            max_offset: pulled.max_offset,
            messages: pulled.messages.into_iter().map(to_proto).collect(),
        }))
    }

    async fn get_queue_offsets(&self, request: Request<pb::QueueOffsetsRequest>) -> Reply<pb::QueueOffsetsReply> {
        self.allow(
            &request,
            "GetQueueOffsets",
            &[Need::Subscribe(&request.get_ref().topic)],
        )?;
        let req = request.into_inner();
        let (min_offset, max_offset) = ops::pull::bounds(&self.state, &req.topic, req.queue_id)?;
        Ok(Response::new(pb::QueueOffsetsReply { min_offset, max_offset }))
    }

    async fn search_offset(&self, request: Request<pb::SearchOffsetRequest>) -> Reply<pb::SearchOffsetReply> {
        self.allow(&request, "SearchOffset", &[Need::Subscribe(&request.get_ref().topic)])?;
        let req = request.into_inner();
        let offset = ops::pull::search(&self.state, &req.topic, req.queue_id, req.timestamp_ms)?;
        Ok(Response::new(pb::SearchOffsetReply { offset }))
    }

    async fn get_message(&self, request: Request<pb::GetMessageRequest>) -> Reply<pb::StoredMessage> {
        let (metadata, caller) = (request.metadata().clone(), request.remote_addr());
        let req = request.into_inner();
        let message = if req.msg_id.is_empty() {
            ops::pull::message(&self.state, &req.topic, req.queue_id, req.offset)?
        } else {
            ops::pull::message_by_id(&self.state, &req.msg_id)?
        };
        // By id the topic is known only now; nothing was handed out yet.
        self.state
            .guard
            .check(&metadata, caller, "GetMessage", &[Need::Subscribe(&message.topic)])?;
        Ok(Response::new(to_proto(message)))
    }

    async fn query_by_key(&self, request: Request<pb::QueryByKeyRequest>) -> Reply<pb::QueryByKeyReply> {
        self.allow(&request, "QueryByKey", &[Need::Subscribe(&request.get_ref().topic)])?;
        let req = request.into_inner();
        let range = (req.begin_ms, req.end_ms);
        let found = ops::pull::by_key(&self.state, &req.topic, &req.key, range, req.max_messages)?;
        Ok(Response::new(pb::QueryByKeyReply {
            messages: found.messages.into_iter().map(to_proto).collect(),
            truncated: found.truncated,
        }))
    }

    async fn commit_offsets(&self, request: Request<pb::CommitOffsetsRequest>) -> Reply<pb::CommitOffsetsReply> {
        let r = request.get_ref();
        let mut needs = vec![Need::Group(&r.consumer_group)];
        needs.extend(r.offsets.iter().map(|o| Need::Subscribe(&o.topic)));
        self.allow(&request, "CommitOffsets", &needs)?;
        let req = request.into_inner();
        let offsets = req
            .offsets
            .into_iter()
            .map(|o| OffsetUpdate {
                topic: o.topic,
                queue_id: o.queue_id,
                offset: o.offset,
            })
            .collect();
        ops::offsets::commit(&self.state, req.consumer_group, offsets).await?;
        Ok(Response::new(pb::CommitOffsetsReply {}))
    }

    async fn get_consume_offsets(
        &self,
        request: Request<pb::GetConsumeOffsetsRequest>,
    ) -> Reply<pb::GetConsumeOffsetsReply> {
        self.allow(
            &request,
            "GetConsumeOffsets",
            &[Need::Group(&request.get_ref().consumer_group)],
        )?;
        let req = request.into_inner();
        let topic = (!req.topic.is_empty()).then_some(req.topic.as_str());
        let offsets = ops::offsets::committed(&self.state, &req.consumer_group, topic)?
            .into_iter()
            .map(|(topic, queue_id, offset)| pb::OffsetEntry {
                topic,
                queue_id,
                offset,
            })
            .collect();
        Ok(Response::new(pb::GetConsumeOffsetsReply { offsets }))
    }

    async fn get_topic_consumers(
        &self,
        request: Request<pb::GetTopicConsumersRequest>,
    ) -> Reply<pb::GetTopicConsumersReply> {
        self.allow(
            &request,
            "GetTopicConsumers",
            &[Need::Subscribe(&request.get_ref().topic)],
        )?;
        let topic = request.into_inner().topic;
        let offsets = ops::offsets::topic_consumers(&self.state, &topic)?
            .into_iter()
            .map(|(consumer_group, queue_id, offset)| pb::GroupOffset {
                consumer_group,
                queue_id,
                offset,
            })
            .collect();
        Ok(Response::new(pb::GetTopicConsumersReply { offsets }))
    }

    async fn reset_offsets(&self, request: Request<pb::ResetOffsetsRequest>) -> Reply<pb::ResetOffsetsReply> {
        use pb::reset_offsets_request::Target;
        self.allow(&request, "ResetOffsets", &[Need::Admin])?;
        let req = request.into_inner();
        let to = match req.target {
            Some(Target::TimestampMs(ts)) => ResetTo::Timestamp(ts),
            Some(Target::Offset(o)) => ResetTo::Offset(o),
            Some(Target::ToEarliest(_)) => ResetTo::Earliest,
            Some(Target::ToLatest(_)) => ResetTo::Latest,
            None => {
                return Err(ErrorCode::InvalidArgument
                    .err("field `target`: say a timestamp, an offset, earliest or latest")
                    .into())
            }
        };
        let offsets = ops::offsets::reset(&self.state, req.consumer_group, &req.topic, to)
            .await?
            .into_iter()
            .map(|o| pb::OffsetEntry {
                topic: o.topic,
                queue_id: o.queue_id,
                offset: o.offset,
            })
            .collect();
        Ok(Response::new(pb::ResetOffsetsReply { offsets }))
    }

    async fn send_back(&self, request: Request<pb::SendBackRequest>) -> Reply<pb::SendBackReply> {
        let r = request.get_ref();
        self.allow(
            &request,
            "SendBack",
            &[Need::Group(&r.consumer_group), Need::Subscribe(&r.topic)],
        )?;
        let req = request.into_inner();
        let at = (req.topic.as_str(), req.queue_id, req.offset);
        let reply = match ops::retry::send_back(&self.state, &req.consumer_group, at).await? {
            ops::retry::SentBack::Retry {
                reconsume_times,
                deliver_at_ms,
            } => pb::SendBackReply {
                reconsume_times,
                deliver_at_ms,
                ..Default::default()
            },
            ops::retry::SentBack::DeadLettered { dlq_topic } => pb::SendBackReply {
                dead_lettered: true,
                dlq_topic,
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn get_group_config(&self, request: Request<pb::GetGroupConfigRequest>) -> Reply<pb::GroupConfig> {
        self.allow(
            &request,
            "GetGroupConfig",
            &[Need::Group(&request.get_ref().consumer_group)],
        )?;
        let name = request.into_inner().consumer_group;
        let config = ops::retry::group(&self.state, &name)?;
        let mut reply = convert::group_to_proto(&config);
        reply.effective_max_reconsume_times = ops::retry::effective_max(&self.state, &config);
        reply.fifo = Some(self.state.reader.is_fifo(&name));
        Ok(Response::new(reply))
    }

    async fn update_group_config(&self, request: Request<pb::GroupConfig>) -> Reply<pb::UpdateGroupConfigReply> {
        self.allow(&request, "UpdateGroupConfig", &[Need::Admin])?;
        let req = request.into_inner();
        let (fifo, keep) = (req.fifo, req.keep_retry_settings);
        let name = req.consumer_group.clone();
        let config = convert::group_from_proto(req)?;
        if !keep {
            ops::retry::update_group(&self.state, config).await?;
        }
        if let Some(fifo) = fifo {
            ops::retry::set_fifo(&self.state, &name, fifo).await?;
        }
        Ok(Response::new(pb::UpdateGroupConfigReply {}))
    }

    async fn lock_queues(&self, request: Request<pb::LockQueuesRequest>) -> Reply<pb::LockQueuesReply> {
        let r = request.get_ref();
        self.allow(
            &request,
            "LockQueues",
            &[Need::Group(&r.consumer_group), Need::Subscribe(&r.topic)],
        )?;
        let r = request.into_inner();
        let locked = ops::offsets::lock_queues(
            &self.state,
            (&r.consumer_group, &r.topic, &r.client_id),
            r.queue_ids,
            r.lease_ms,
        )
        .await?;
        Ok(Response::new(pb::LockQueuesReply { locked }))
    }

    async fn unlock_queues(&self, request: Request<pb::UnlockQueuesRequest>) -> Reply<pb::UnlockQueuesReply> {
        let r = request.get_ref();
        self.allow(
            &request,
            "UnlockQueues",
            &[Need::Group(&r.consumer_group), Need::Subscribe(&r.topic)],
        )?;
        let r = request.into_inner();
        ops::offsets::unlock_queues(&self.state, (&r.consumer_group, &r.topic, &r.client_id), r.queue_ids).await?;
        Ok(Response::new(pb::UnlockQueuesReply {}))
    }

    async fn consumer_heartbeat(
        &self,
        request: Request<pb::ConsumerHeartbeatRequest>,
    ) -> Reply<pb::ConsumerHeartbeatReply> {
        let r = request.get_ref();
        let mut needs = vec![Need::Group(&r.consumer_group)];
        needs.extend(r.topics.iter().map(|t| Need::Subscribe(t)));
        self.allow(&request, "ConsumerHeartbeat", &needs)?;
        let req = request.into_inner();
        validate::name("consumer_group", &req.consumer_group).map_err(Error::from)?;
        if req.client_id.is_empty() || req.client_id.len() > 255 {
            return Err(ErrorCode::InvalidArgument
                .err("field `client_id`: must be 1 to 255 bytes")
                .into());
        }
        self.state
            .consumers
            .heartbeat(&req.consumer_group, &req.client_id, &req.topics, Instant::now());
        Ok(Response::new(pb::ConsumerHeartbeatReply {}))
    }

    async fn get_consumers(&self, request: Request<pb::GetConsumersRequest>) -> Reply<pb::GetConsumersReply> {
        self.allow(
            &request,
            "GetConsumers",
            &[Need::Group(&request.get_ref().consumer_group)],
        )?;
        let req = request.into_inner();
        validate::name("consumer_group", &req.consumer_group).map_err(Error::from)?;
        Ok(Response::new(pb::GetConsumersReply {
            client_ids: self.state.consumers.members(&req.consumer_group, Instant::now()),
        }))
    }

    async fn unregister_consumer(
        &self,
        request: Request<pb::UnregisterConsumerRequest>,
    ) -> Reply<pb::UnregisterConsumerReply> {
        self.allow(
            &request,
            "UnregisterConsumer",
            &[Need::Group(&request.get_ref().consumer_group)],
        )?;
        let req = request.into_inner();
        self.state.consumers.unregister(&req.consumer_group, &req.client_id);
        Ok(Response::new(pb::UnregisterConsumerReply {}))
    }

    async fn upsert_topic(&self, request: Request<pb::UpsertTopicRequest>) -> Reply<pb::UpsertTopicReply> {
        self.allow(&request, "UpsertTopic", &[Need::Admin])?;
        let t = request
            .into_inner()
            .topic
            .ok_or_else(|| ErrorCode::InvalidArgument.err("field `topic`: missing"))?;
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
        self.allow(&request, "DeleteTopic", &[Need::Admin])?;
        ops::topics::delete(&self.state, request.into_inner().topic).await?;
        Ok(Response::new(pb::DeleteTopicReply {}))
    }

    async fn list_topics(&self, request: Request<pb::BrokerListTopicsRequest>) -> Reply<pb::BrokerTopicList> {
        self.allow(&request, "ListTopics", &[Need::Known])?;
        let topics = ops::topics::list(&self.state).iter().map(topic_to_proto).collect();
        Ok(Response::new(pb::BrokerTopicList { topics }))
    }

    async fn inject_fault(&self, request: Request<pb::InjectFaultRequest>) -> Reply<pb::InjectFaultReply> {
        self.allow(&request, "InjectFault", &[Need::Admin])?;
        let s = &self.state;
        if !s.config.fault_injection {
            return Err(ErrorCode::NoPermission
                .err("fault injection is off (fault-injection = false)")
                .into());
        }
        let cut = request.into_inner().cut_from;
        s.faults.heal_all();
        for peer in &cut {
            s.faults.cut(s.config.node_id, *peer);
        }
        tracing::warn!(node = s.config.node_id, ?cut, "fault injection: raft links cut");
        Ok(Response::new(pb::InjectFaultReply {}))
    }

    async fn put_user(&self, request: Request<pb::User>) -> Reply<pb::PutUserReply> {
        self.allow(&request, "PutUser", &[Need::Admin])?;
        ops::users::put(&self.state, convert::user_from_proto(request.into_inner())).await?;
        Ok(Response::new(pb::PutUserReply {}))
    }

    async fn delete_user(&self, request: Request<pb::DeleteUserRequest>) -> Reply<pb::DeleteUserReply> {
        self.allow(&request, "DeleteUser", &[Need::Admin])?;
        ops::users::delete(&self.state, request.into_inner().access_key).await?;
        Ok(Response::new(pb::DeleteUserReply {}))
    }

    async fn list_users(&self, request: Request<pb::ListUsersRequest>) -> Reply<pb::ListUsersReply> {
        self.allow(&request, "ListUsers", &[Need::Admin])?;
        let users = ops::users::list(&self.state)
            .iter()
            .map(|u| convert::user_to_proto(u, false))
            .collect();
        Ok(Response::new(pb::ListUsersReply { users }))
    }

    async fn get_membership(&self, request: Request<pb::GetMembershipRequest>) -> Reply<pb::Membership> {
        self.allow(&request, "GetMembership", &[Need::Known])?;
        Ok(Response::new(ops::membership::current(&self.state)))
    }

    async fn add_node(&self, request: Request<pb::AddNodeRequest>) -> Reply<pb::Membership> {
        self.allow(&request, "AddNode", &[Need::Admin])?;
        let r = request.into_inner();
        let new = ops::membership::NewNode::parse(r.node_id, &r.raft_addr, &r.client_addr)?;
        let done = ops::membership::add(&self.state, new, catch_up(r.catch_up_timeout_ms)).await?;
        Ok(Response::new(done))
    }

    async fn remove_node(&self, request: Request<pb::RemoveNodeRequest>) -> Reply<pb::Membership> {
        self.allow(&request, "RemoveNode", &[Need::Admin])?;
        let done = ops::membership::remove(&self.state, request.into_inner().node_id).await?;
        Ok(Response::new(done))
    }

    async fn replace_node(&self, request: Request<pb::ReplaceNodeRequest>) -> Reply<pb::Membership> {
        self.allow(&request, "ReplaceNode", &[Need::Admin])?;
        let r = request.into_inner();
        let new = ops::membership::NewNode::parse(r.node_id, &r.raft_addr, &r.client_addr)?;
        let done = ops::membership::replace(&self.state, r.old_node_id, new, catch_up(r.catch_up_timeout_ms)).await?;
        Ok(Response::new(done))
    }

    async fn transfer_master(&self, request: Request<pb::TransferMasterRequest>) -> Reply<pb::TransferMasterReply> {
        self.allow(&request, "TransferMaster", &[Need::Admin])?;
        let to = Some(request.into_inner().to_node_id).filter(|id| *id != 0);
        let master = ops::membership::transfer(&self.state, to).await?;
        let master_addr = ops::membership::current(&self.state)
            .members
            .into_iter()
            .find(|m| m.node_id == master)
            .map(|m| m.client_addr)
            .unwrap_or_default();
        Ok(Response::new(pb::TransferMasterReply {
            master_node_id: master,
            master_addr,
        }))
    }

    async fn get_node_status(&self, request: Request<pb::NodeStatusRequest>) -> Reply<pb::NodeStatus> {
        self.allow(&request, "GetNodeStatus", &[Need::Known])?;
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
        let disk = raftmq_store::disk::usage(&s.config.data_dir).ok();
        Ok(Response::new(pb::NodeStatus {
            cluster: s.config.cluster.clone(),
            group: s.config.group.clone(),
            node_id: s.config.node_id,
            role: convert::role(metrics.state) as i32,
            term: metrics.current_term,
            leader_id: metrics.current_leader.unwrap_or(0),
            leader_addr: s.leader_client_addr().unwrap_or_default(),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            commit_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            queues,
            pending_delayed: s.reader.pending_timers(),
            disk_total_bytes: disk.as_ref().map_or(0, |d| d.total_bytes),
            disk_available_bytes: disk.as_ref().map_or(0, |d| d.available_bytes),
            disk_used_percent: disk.as_ref().map_or(0.0, |d| d.used_percent()),
        }))
    }
}

/// A request's catch-up deadline; 0 is the default.
fn catch_up(ms: u64) -> std::time::Duration {
    if ms == 0 {
        ops::membership::DEFAULT_CATCH_UP
    } else {
        std::time::Duration::from_millis(ms)
    }
}
