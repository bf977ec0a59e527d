//! The broker's RocketMQ 5 face: converts `apache.rocketmq.v2` messages, receipt handles and
//! statuses to and from the broker's operations (`crate::ops`: send, POP receive, ack, change of
//! invisibility, dead-lettering), and answers route and master queries from its own group when
//! no NameServer does. The rules of each operation live in `ops`, shared with raftmq's own face.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use openraft::ServerState;
use raftmq_proto::name_server_client::NameServerClient;
use raftmq_proto::rocketmq::{self as v2, Code};
use raftmq_proto::{v1, GetRouteRequest};
use raftmq_rocketmq::receipt::ReceiptHandle;
use raftmq_rocketmq::{full_name, Backend, Fail, Target};
use raftmq_store::types::{MessageIn, PopLease};
use raftmq_store::{body_crc, StoredMessage};
use tonic::transport::Channel;

use crate::ops;
use crate::ops::delay;
use crate::ops::pop::{PROP_DLQ_ORIGIN_MESSAGE_ID, PROP_DLQ_ORIGIN_TOPIC};
use crate::ops::send::MAX_PROPERTIES_SIZE;
use crate::state::BrokerState;
use raftmq_common::{Error, ErrorCode};

/// Property holding the producer's message id (RocketMQ's name for it).
pub const PROP_MESSAGE_ID: &str = "UNIQ_KEY";
/// Property holding the producer's host.
pub const PROP_BORN_HOST: &str = "__BORNHOST";
/// Property holding a FIFO message's message group (RocketMQ's sharding key).
pub const PROP_MESSAGE_GROUP: &str = "__SHARDINGKEY";
/// Properties raftmq sets itself: a user property may not use these names (a delay is asked for
/// with the DELAY type and a delivery timestamp).
const RESERVED: [&str; 12] = [
    PROP_MESSAGE_GROUP,
    ops::txn::PROP_TRANSACTION,
    ops::txn::PROP_PRODUCER_GROUP,
    ops::txn::PROP_CHECK_IMMUNITY,
    PROP_MESSAGE_ID,
    PROP_BORN_HOST,
    PROP_DLQ_ORIGIN_TOPIC,
    PROP_DLQ_ORIGIN_MESSAGE_ID,
    delay::PROP_DELIVER_MS,
    delay::PROP_DELAY_MS,
    delay::PROP_DELAY_SEC,
    delay::PROP_DELAY_LEVEL,
];
/// How long a write waits for the group to have a master before it answers HA_NOT_AVAILABLE.
const MASTER_WAIT: Duration = Duration::from_secs(3);
/// Deadline of a route query to a NameServer.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);

/// The backend of a broker node.
#[derive(Clone)]
pub struct RocketMqBroker {
    state: Arc<BrokerState>,
    namesrv: Vec<NameServerClient<Channel>>,
}

/// A resource's full name in its namespace (a missing resource has the empty name).
fn resource_name(namespace: &str, resource: Option<&v2::Resource>) -> String {
    full_name(namespace, resource.map(|r| r.name.as_str()).unwrap_or_default())
}

fn fail(e: Error) -> Fail {
    Fail::from(&e)
}

impl RocketMqBroker {
    pub fn new(state: Arc<BrokerState>) -> RocketMqBroker {
        let namesrv = state
            .config
            .namesrv
            .iter()
            .filter_map(|addr| crate::heartbeat::connect(addr, state.guard.security().client_tls.as_ref()))
            .collect();
        RocketMqBroker { state, namesrv }
    }

    fn group(&self) -> &str {
        &self.state.config.group
    }

    /// This group's own route of a topic, for when no NameServer answers.
    fn local_route(&self, topic: &str) -> Option<v1::TopicRoute> {
        let config = self.state.reader.topic(topic)?;
        let metrics = self.state.raft.metrics().borrow().clone();
        let members = metrics.membership_config.membership();
        let leader = metrics.current_leader;
        let mut group = v1::GroupData {
            cluster: self.state.config.cluster.clone(),
            group: self.group().to_owned(),
            term: metrics.current_term,
            ..Default::default()
        };
        for (id, node) in members.nodes() {
            if Some(*id) == leader {
                group.master_addr = node.client_addr.clone();
                group.master_node_id = *id;
            } else {
                group.slaves.push(v1::NodeAddr {
                    node_id: *id,
                    addr: node.client_addr.clone(),
                });
            }
        }
        Some(v1::TopicRoute {
            topic: topic.to_owned(),
            queues: vec![v1::QueueData {
                group: self.group().to_owned(),
                write_queues: config.write_queues,
                read_queues: config.read_queues,
                permission: config.permission as i32,
            }],
            groups: vec![group],
        })
    }

    fn handle(&self, queue_id: u32, lease: PopLease) -> String {
        ReceiptHandle {
            broker: self.group().to_owned(),
            queue_id,
            offset: lease.offset,
            lease: lease.lease,
        }
        .to_string()
    }

    /// Parses a receipt handle made by this group: the queue and the delivery's lease.
    fn parse_handle(&self, handle: &str) -> Result<(u32, PopLease), Fail> {
        ReceiptHandle::parse(handle)
            .filter(|h| h.broker == self.group())
            .map(|h| {
                let lease = PopLease {
                    offset: h.offset,
                    lease: h.lease,
                };
                (h.queue_id, lease)
            })
            .ok_or_else(|| {
                Fail::new(
                    Code::InvalidReceiptHandle,
                    format!(
                        "receipt handle {handle:?} was not issued by broker group {}",
                        self.group()
                    ),
                )
            })
    }

    /// Converts a protocol message into what the store keeps.
    /// A message as the store keeps it, and whether it is a transaction's half message.
    /// A half message as a transaction check shows it to a RocketMQ 5 producer: as it was sent,
    /// with the producer's message id, and nothing of a delivery.
    fn half_message(&self, namespace: &str, topic: String, message: MessageIn) -> v2::Message {
        let name = topic
            .strip_prefix(&format!("{namespace}%"))
            .filter(|_| !namespace.is_empty())
            .unwrap_or(&topic)
            .to_owned();
        let stored = StoredMessage {
            msg_id: String::new(),
            topic,
            queue_id: 0,
            queue_offset: 0,
            tags: message.tags,
            keys: message.keys,
            properties: message.properties,
            body: message.body,
            born_timestamp_ms: message.born_timestamp_ms,
            store_timestamp_ms: message.born_timestamp_ms,
            log_index: 0,
            body_crc: message.body_crc,
        };
        let mut m = self.delivery(namespace, &name, stored, String::new(), 0, Duration::ZERO);
        if let Some(sys) = m.system_properties.as_mut() {
            sys.receipt_handle = None;
            sys.invisible_duration = None;
            sys.delivery_attempt = None;
            sys.queue_offset = None;
        }
        m
    }

    /// Stores FIFO messages, each in the queue its message group hashes to (as RocketMQ's proxy
    /// does): one batch a queue, in request order, so a group's messages keep their order in
    /// one queue.
    async fn send_fifo(
        &self,
        topic: String,
        ids: Vec<String>,
        messages: Vec<MessageIn>,
        groups: Vec<String>,
    ) -> Result<Vec<v2::SendResultEntry>, Fail> {
        let queues = ops::topics::for_send(&self.state, &topic)
            .await
            .map_err(fail)?
            .write_queues
            .max(1);
        // queue -> (positions in the request, messages)
        let mut by_queue: BTreeMap<u32, (Vec<usize>, Vec<MessageIn>)> = BTreeMap::new();
        for (i, (message, group)) in messages.into_iter().zip(&groups).enumerate() {
            let queue_id = (raftmq_common::stable_hash(group) % u64::from(queues)) as u32;
            let (positions, batch) = by_queue.entry(queue_id).or_default();
            positions.push(i);
            batch.push(message);
        }
        let mut offsets = vec![0u64; ids.len()];
        for (queue_id, (positions, batch)) in by_queue {
            let batch = ops::send::Batch {
                topic: topic.clone(),
                queue: ops::send::Queue::Given(queue_id),
                messages: batch,
            };
            let sent = ops::send::send(&self.state, batch).await.map_err(fail)?;
            for (n, i) in positions.into_iter().enumerate() {
                offsets[i] = sent.first_offset + n as u64;
            }
        }
        Ok(ids
            .into_iter()
            .zip(offsets)
            .map(|(message_id, offset)| v2::SendResultEntry {
                status: Some(raftmq_rocketmq::status::ok()),
                message_id,
                transaction_id: String::new(),
                offset: offset as i64,
                recall_handle: String::new(),
            })
            .collect())
    }

    /// Stores each message as a transaction's half message (RocketMQ 5 producers have no
    /// producer group: a check goes to a producer publishing the topic).
    async fn send_halves(
        &self,
        topic: String,
        ids: Vec<String>,
        messages: Vec<MessageIn>,
    ) -> Result<Vec<v2::SendResultEntry>, Fail> {
        let mut entries = Vec::with_capacity(messages.len());
        for (message_id, message) in ids.into_iter().zip(messages) {
            let batch = ops::send::Batch {
                topic: topic.clone(),
                queue: ops::send::Queue::Next,
                messages: vec![message],
            };
            let prepared = ops::txn::prepare(&self.state, batch, "").await.map_err(fail)?;
            entries.push(v2::SendResultEntry {
                status: Some(raftmq_rocketmq::status::ok()),
                message_id,
                transaction_id: prepared.transaction_id,
                offset: 0,
                recall_handle: String::new(),
            });
        }
        Ok(entries)
    }

    /// A message as the store keeps it, whether it is a transaction's half message, and its
    /// message group if it is a FIFO one.
    fn message_in(&self, m: v2::Message) -> Result<(MessageIn, bool, Option<String>), Fail> {
        let sys = m.system_properties.unwrap_or_default();
        let (delayed, transactional, fifo) =
            match v2::MessageType::try_from(sys.message_type).unwrap_or(v2::MessageType::Unspecified) {
                v2::MessageType::Normal | v2::MessageType::Unspecified => (false, false, false),
                v2::MessageType::Delay => (true, false, false),
                v2::MessageType::Transaction => (false, true, false),
                v2::MessageType::Fifo => (false, false, true),
                other => {
                    return Err(Fail::new(
                        Code::Unsupported,
                        format!(
                            "{} messages are not served by raftmq; send NORMAL, FIFO, DELAY or TRANSACTION ones",
                            other.as_str_name()
                        ),
                    ))
                }
            };
        // RocketMQ's type rules: a DELAY message has a delivery time and no message group; a
        // NORMAL one has neither.
        if delayed != sys.delivery_timestamp.is_some() {
            return Err(Fail::new(
                Code::MessagePropertyConflictWithType,
                "a DELAY message needs a delivery timestamp, and only a DELAY message may have one",
            ));
        }
        // A FIFO message has a message group, and only a FIFO message has one.
        let message_group = match (fifo, sys.message_group.clone()) {
            (true, Some(g)) if !g.is_empty() && g.len() <= 128 => Some(g),
            (true, _) => {
                return Err(Fail::new(
                    Code::IllegalMessageGroup,
                    "a FIFO message needs a message group of 1 to 128 bytes",
                ))
            }
            (false, Some(_)) => {
                return Err(Fail::new(
                    Code::MessagePropertyConflictWithType,
                    "only a FIFO message may have a message group",
                ))
            }
            (false, None) => None,
        };
        let due_ms = sys.delivery_timestamp.as_ref().map(delivery_ms);
        if let Some(due) = due_ms {
            let ahead = due - raftmq_common::time::now_ms();
            if ahead > raftmq_store::timers::MAX_DELAY_MS {
                return Err(Fail::new(
                    Code::IllegalDeliveryTime,
                    format!(
                        "the delivery time is {} s ahead; the limit is {} days",
                        ahead / 1000,
                        raftmq_store::timers::MAX_DELAY_MS / 86_400_000
                    ),
                ));
            }
        }
        if sys.message_id.is_empty() || sys.message_id.len() > 128 {
            return Err(Fail::new(
                Code::IllegalMessageId,
                "field `message_id`: must be 1 to 128 bytes",
            ));
        }
        let max = self.state.config.max_message_size;
        let body = match v2::Encoding::try_from(sys.body_encoding).unwrap_or(v2::Encoding::Unspecified) {
            v2::Encoding::Gzip => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(m.body.as_slice())
                    .take(max as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| Fail::new(Code::MessageCorrupted, format!("the gzip body does not decode: {e}")))?;
                out
            }
            _ => m.body,
        };
        if body.is_empty() {
            return Err(Fail::new(Code::MessageBodyEmpty, "the message body is empty"));
        }
        if body.len() > max {
            return Err(Fail::new(
                Code::MessageBodyTooLarge,
                format!(
                    "MESSAGE_TOO_LARGE: the body is {} bytes; the limit is {max}",
                    body.len()
                ),
            ));
        }
        let mut properties = Vec::with_capacity(m.user_properties.len() + 2);
        for (k, v) in m.user_properties {
            if RESERVED.contains(&k.as_str()) || k.is_empty() {
                return Err(Fail::new(
                    Code::IllegalMessagePropertyKey,
                    format!("property {k:?} is reserved or empty"),
                ));
            }
            properties.push((k, v));
        }
        properties.push((PROP_MESSAGE_ID.to_owned(), sys.message_id));
        if let Some(due) = due_ms {
            properties.push((delay::PROP_DELIVER_MS.to_owned(), due.to_string()));
        }
        if !sys.born_host.is_empty() {
            properties.push((PROP_BORN_HOST.to_owned(), sys.born_host));
        }
        if let Some(g) = &message_group {
            properties.push((PROP_MESSAGE_GROUP.to_owned(), g.clone()));
        }
        if let Some(d) = sys.orphaned_transaction_recovery_duration.filter(|_| transactional) {
            let seconds = raftmq_rocketmq::duration(&d).as_secs();
            properties.push((ops::txn::PROP_CHECK_IMMUNITY.to_owned(), seconds.to_string()));
        }
        properties.sort();
        let message = MessageIn {
            body_crc: body_crc(&body),
            tags: sys.tag.unwrap_or_default(),
            keys: sys.keys.join(" "),
            properties,
            body: body.into(),
            born_timestamp_ms: sys
                .born_timestamp
                .as_ref()
                .map(raftmq_rocketmq::timestamp_to_ms)
                .unwrap_or(0),
        };
        if message.size() - message.body.len() > MAX_PROPERTIES_SIZE {
            return Err(Fail::new(
                Code::MessagePropertiesTooLarge,
                format!("tags, keys and properties exceed {MAX_PROPERTIES_SIZE} bytes"),
            ));
        }
        Ok((message, transactional, message_group))
    }

    /// A stored message as a delivery to a client.
    fn delivery(
        &self,
        namespace: &str,
        topic_name: &str,
        m: StoredMessage,
        handle: String,
        attempt: u32,
        invisible: Duration,
    ) -> v2::Message {
        let mut message_id = m.msg_id.clone();
        let mut born_host = String::new();
        let mut due_ms = None;
        let mut transactional = false;
        let mut message_group = None;
        let mut user = std::collections::HashMap::new();
        for (k, v) in m.properties {
            match k.as_str() {
                PROP_MESSAGE_ID => message_id = v,
                PROP_BORN_HOST => born_host = v,
                delay::PROP_DELIVER_MS => due_ms = v.parse::<i64>().ok(),
                ops::txn::PROP_TRANSACTION => transactional = v == "true",
                PROP_MESSAGE_GROUP => message_group = Some(v),
                ops::txn::PROP_PRODUCER_GROUP | ops::txn::PROP_CHECK_IMMUNITY => {}
                _ => {
                    user.insert(k, v);
                }
            }
        }
        let digest = Md5::digest(&m.body);
        let checksum: String = digest.iter().map(|b| format!("{b:02X}")).collect();
        v2::Message {
            topic: Some(v2::Resource {
                resource_namespace: namespace.to_owned(),
                name: topic_name.to_owned(),
            }),
            user_properties: user,
            system_properties: Some(v2::SystemProperties {
                tag: (!m.tags.is_empty()).then_some(m.tags),
                keys: m.keys.split_whitespace().map(str::to_owned).collect(),
                message_id,
                body_digest: Some(v2::Digest {
                    r#type: v2::DigestType::Md5 as i32,
                    checksum,
                }),
                body_encoding: v2::Encoding::Identity as i32,
                message_type: if due_ms.is_some() {
                    v2::MessageType::Delay
                } else if transactional {
                    v2::MessageType::Transaction
                } else if message_group.is_some() {
                    v2::MessageType::Fifo
                } else {
                    v2::MessageType::Normal
                } as i32,
                delivery_timestamp: due_ms.map(raftmq_rocketmq::timestamp_ms),
                message_group,
                born_timestamp: Some(raftmq_rocketmq::timestamp_ms(m.born_timestamp_ms)),
                born_host,
                store_timestamp: Some(raftmq_rocketmq::timestamp_ms(m.store_timestamp_ms)),
                store_host: self.state.config.me().client_addr.clone(),
                receipt_handle: Some(handle),
                queue_id: m.queue_id as i32,
                queue_offset: Some(m.queue_offset as i64),
                invisible_duration: Some(raftmq_rocketmq::proto_duration(invisible)),
                delivery_attempt: Some(attempt as i32),
                ..Default::default()
            }),
            body: m.body.to_vec(),
        }
    }
}

/// A delivery timestamp in ms. The official Python client 5.1.2 writes milliseconds into
/// `seconds`; a `seconds` past year 5000 is read as that.
fn delivery_ms(t: &prost_types::Timestamp) -> i64 {
    const YEAR_5000_S: i64 = 95_617_584_000;
    if t.seconds > YEAR_5000_S {
        t.seconds
    } else {
        raftmq_rocketmq::timestamp_to_ms(t)
    }
}

fn check_invisible(d: Duration) -> Result<Duration, Fail> {
    if d < raftmq_rocketmq::MIN_INVISIBLE || d > raftmq_rocketmq::MAX_INVISIBLE {
        return Err(Fail::new(
            Code::IllegalInvisibleTime,
            format!(
                "invisible duration {d:?} is outside {:?}..={:?}",
                raftmq_rocketmq::MIN_INVISIBLE,
                raftmq_rocketmq::MAX_INVISIBLE
            ),
        ));
    }
    Ok(d)
}

#[tonic::async_trait]
impl Backend for RocketMqBroker {
    fn authorize(
        &self,
        md: &tonic::metadata::MetadataMap,
        caller: Option<std::net::SocketAddr>,
        what: &str,
        needs: &[raftmq_common::auth::Need<'_>],
    ) -> Result<(), Fail> {
        self.state
            .guard
            .check(md, caller, what, needs)
            .map_err(|e| Fail::from_raftmq(e.code, &e.message))
    }

    fn consumer_is_fifo(&self, group: &str) -> bool {
        self.state.reader.is_fifo(group)
    }

    fn consumer_retry_policy(&self, group: &str) -> v2::RetryPolicy {
        use raftmq_rocketmq::settings::{consumer_retry_policy, Redelivery};
        use raftmq_store::groups::Backoff;
        let config = self.state.reader.group(group);
        let attempts = ops::retry::effective_max(&self.state, &config).saturating_add(1);
        let redelivery = match config.backoff() {
            Backoff::Table(ms) => Redelivery::Delays(ms.into_iter().map(Duration::from_millis).collect()),
            Backoff::Exponential {
                initial_ms,
                max_ms,
                multiplier,
            } => Redelivery::Exponential {
                initial: Duration::from_millis(initial_ms),
                max: Duration::from_millis(max_ms),
                multiplier: multiplier as f32,
            },
        };
        consumer_retry_policy(attempts, redelivery)
    }

    async fn route(&self, topic: &str) -> Result<v1::TopicRoute, Fail> {
        let mut not_found = false;
        for client in &self.namesrv {
            let mut client = client.clone();
            let mut req = tonic::Request::new(GetRouteRequest {
                topic: topic.to_owned(),
            });
            req.set_timeout(ROUTE_TIMEOUT);
            match client.get_route(req).await {
                Ok(route) => return Ok(route.into_inner()),
                Err(e) if Error::from_status(&e).code == ErrorCode::TopicNotFound => not_found = true,
                Err(e) => tracing::debug!("route query to a NameServer failed: {e}"),
            }
        }
        // No NameServer knows it (or none answers): this group's own view still serves clients
        // that came straight to a broker.
        self.local_route(topic).ok_or_else(|| {
            Fail::new(
                Code::TopicNotFound,
                format!(
                    "TOPIC_NOT_FOUND: topic {topic:?} does not exist{}",
                    if not_found {
                        ""
                    } else {
                        " in this broker group (no NameServer answered)"
                    }
                ),
            )
        })
    }

    async fn target(&self) -> Result<Target, Fail> {
        let deadline = Instant::now() + MASTER_WAIT;
        let mut metrics = self.state.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.state == ServerState::Leader {
                    return Ok(Target::Here);
                }
                if let Some(leader) = m.current_leader.filter(|l| *l != self.state.config.node_id) {
                    if let Some(node) = m.membership_config.membership().get_node(&leader) {
                        return Ok(Target::Master(node.client_addr.clone()));
                    }
                }
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(deadline.into()) => break,
            }
        }
        Err(Fail::new(
            Code::HaNotAvailable,
            format!(
                "NOT_MASTER: broker group {} has no master right now; retry",
                self.group()
            ),
        ))
    }

    async fn send(&self, namespace: &str, messages: Vec<v2::Message>) -> Result<Vec<v2::SendResultEntry>, Fail> {
        let topic = resource_name(namespace, messages[0].topic.as_ref());
        // The producer's message ids are the ones a RocketMQ 5 client knows its messages by.
        let mut ids = Vec::with_capacity(messages.len());
        let mut stored = Vec::with_capacity(messages.len());
        let mut transactional = 0;
        let mut groups = Vec::with_capacity(messages.len());
        for m in messages {
            ids.push(
                m.system_properties
                    .as_ref()
                    .map(|p| p.message_id.clone())
                    .unwrap_or_default(),
            );
            let (message, half, group) = self.message_in(m)?;
            stored.push(message);
            transactional += usize::from(half);
            groups.push(group);
        }
        if groups.iter().any(Option::is_some) {
            if groups.iter().any(Option::is_none) {
                return Err(Fail::new(
                    Code::MessagePropertyConflictWithType,
                    "a request is all FIFO messages or none",
                ));
            }
            let groups = groups.into_iter().flatten().collect();
            return self.send_fifo(topic, ids, stored, groups).await;
        }
        if transactional > 0 {
            if transactional != stored.len() {
                return Err(Fail::new(
                    Code::MessagePropertyConflictWithType,
                    "a request is all TRANSACTION messages or none",
                ));
            }
            return self.send_halves(topic, ids, stored).await;
        }
        let batch = ops::send::Batch {
            topic,
            queue: ops::send::Queue::Next,
            messages: stored,
        };
        let sent = ops::send::send(&self.state, batch).await.map_err(fail)?;
        Ok(ids
            .into_iter()
            .enumerate()
            .map(|(i, message_id)| v2::SendResultEntry {
                status: Some(raftmq_rocketmq::status::ok()),
                message_id,
                transaction_id: String::new(),
                offset: match sent.scheduled.get(i) {
                    Some(_) => 0,
                    None => (sent.first_offset + i as u64) as i64,
                },
                recall_handle: sent.scheduled.get(i).map(|(h, _)| h.clone()).unwrap_or_default(),
            })
            .collect())
    }

    async fn receive(
        &self,
        namespace: &str,
        req: &v2::ReceiveMessageRequest,
        wait: Duration,
    ) -> Result<Vec<v2::Message>, Fail> {
        let group = resource_name(namespace, req.group.as_ref());
        let queue = req.message_queue.clone().unwrap_or_default();
        let topic_name = queue.topic.as_ref().map(|t| t.name.clone()).unwrap_or_default();
        let topic = full_name(namespace, &topic_name);
        let filter = raftmq_rocketmq::filter_of(req.filter_expression.as_ref())?;
        let invisible = check_invisible(
            req.invisible_duration
                .as_ref()
                .map(raftmq_rocketmq::duration)
                .unwrap_or(raftmq_rocketmq::DEFAULT_INVISIBLE),
        )?;
        let receive = ops::pop::Receive {
            group: &group,
            topic: &topic,
            queue: u32::try_from(queue.id).ok(),
            filter: &filter,
            max: (req.batch_size.max(0) as usize).min(raftmq_rocketmq::MAX_RECEIVE_BATCH),
            invisible,
            wait,
        };
        let deliveries = ops::pop::receive(&self.state, receive).await.map_err(fail)?;
        Ok(deliveries
            .into_iter()
            .map(|d| {
                let handle = self.handle(d.message.queue_id, d.lease);
                self.delivery(namespace, &topic_name, d.message, handle, d.attempt, invisible)
            })
            .collect())
    }

    async fn ack(&self, namespace: &str, req: &v2::AckMessageRequest) -> Result<Vec<v2::AckMessageResultEntry>, Fail> {
        let group = resource_name(namespace, req.group.as_ref());
        let topic = resource_name(namespace, req.topic.as_ref());
        let mut results: Vec<Option<v2::Status>> = vec![None; req.entries.len()];
        let mut by_queue: BTreeMap<u32, Vec<(usize, PopLease)>> = BTreeMap::new();
        for (i, e) in req.entries.iter().enumerate() {
            match self.parse_handle(&e.receipt_handle) {
                Ok((queue_id, lease)) => by_queue.entry(queue_id).or_default().push((i, lease)),
                Err(f) => results[i] = Some(f.status()),
            }
        }
        let commits = by_queue.into_iter().map(|(queue_id, entries)| {
            let leases = entries.iter().map(|(_, l)| *l).collect();
            let (state, group, topic) = (&self.state, &group, &topic);
            async move { (entries, ops::pop::ack(state, group, topic, queue_id, leases).await) }
        });
        for (entries, result) in futures::future::join_all(commits).await {
            match result {
                Ok(each) => {
                    for ((i, _), one) in entries.into_iter().zip(each) {
                        results[i] = Some(match one {
                            Ok(()) => raftmq_rocketmq::status::ok(),
                            Err(e) => fail(e).status(),
                        });
                    }
                }
                Err(e) => {
                    let f = fail(e);
                    for (i, _) in entries {
                        results[i] = Some(f.status());
                    }
                }
            }
        }
        Ok(req
            .entries
            .iter()
            .zip(results)
            .map(|(e, status)| v2::AckMessageResultEntry {
                message_id: e.message_id.clone(),
                receipt_handle: e.receipt_handle.clone(),
                status,
            })
            .collect())
    }

    fn own_group(&self) -> Option<&str> {
        Some(self.group())
    }

    async fn recall(&self, _namespace: &str, req: &v2::RecallMessageRequest) -> Result<String, Fail> {
        ops::delay::recall(&self.state, &req.recall_handle).await.map_err(fail)
    }

    async fn end_transaction(&self, _namespace: &str, req: &v2::EndTransactionRequest) -> Result<(), Fail> {
        let resolution = match v2::TransactionResolution::try_from(req.resolution) {
            Ok(v2::TransactionResolution::Commit) => ops::txn::Resolution::Commit,
            Ok(v2::TransactionResolution::Rollback) => ops::txn::Resolution::Rollback,
            _ => {
                return Err(Fail::new(
                    Code::BadRequest,
                    format!("field `resolution`: {} is not COMMIT or ROLLBACK", req.resolution),
                ))
            }
        };
        if let Err(e) = ops::txn::parse_transaction_id(&self.state, &req.transaction_id) {
            return Err(Fail::new(Code::InvalidTransactionId, e.message));
        }
        ops::txn::end(&self.state, &req.transaction_id, resolution)
            .await
            .map(|_| ())
            .map_err(fail)
    }

    fn register_producer(
        &self,
        namespace: &str,
        topics: Vec<String>,
        commands: tokio::sync::mpsc::Sender<Result<v2::TelemetryCommand, tonic::Status>>,
    ) -> Option<Box<dyn Send + Sync>> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ops::txn::Check>(256);
        let registration = self.state.txn_producers.register("", "", topics, tx);
        let this = self.clone();
        let namespace = namespace.to_owned();
        // Checks become RecoverOrphanedTransactionCommands on the producer's telemetry stream;
        // this ends when the registration is dropped (the stream ended) or the stream closes.
        tokio::spawn(async move {
            while let Some(check) = rx.recv().await {
                let command = v2::TelemetryCommand {
                    status: None,
                    command: Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(
                        v2::RecoverOrphanedTransactionCommand {
                            message: Some(this.half_message(&namespace, check.topic, check.message)),
                            transaction_id: check.transaction_id,
                        },
                    )),
                };
                if commands.send(Ok(command)).await.is_err() {
                    return;
                }
            }
        });
        Some(Box::new(registration))
    }

    async fn change_invisible(
        &self,
        namespace: &str,
        req: &v2::ChangeInvisibleDurationRequest,
    ) -> Result<String, Fail> {
        let group = resource_name(namespace, req.group.as_ref());
        let topic = resource_name(namespace, req.topic.as_ref());
        let (queue_id, lease) = self.parse_handle(&req.receipt_handle)?;
        let invisible = check_invisible(
            req.invisible_duration
                .as_ref()
                .map(raftmq_rocketmq::duration)
                .unwrap_or_default(),
        )?;
        let lease = ops::pop::change_invisible(&self.state, &group, &topic, queue_id, lease, invisible)
            .await
            .map_err(fail)?;
        Ok(self.handle(queue_id, lease))
    }

    async fn forward_to_dead_letter(
        &self,
        namespace: &str,
        req: &v2::ForwardMessageToDeadLetterQueueRequest,
    ) -> Result<(), Fail> {
        let group = resource_name(namespace, req.group.as_ref());
        let topic = resource_name(namespace, req.topic.as_ref());
        let (queue_id, lease) = self.parse_handle(&req.receipt_handle)?;
        ops::pop::give_up(&self.state, &group, &topic, queue_id, lease)
            .await
            .map_err(fail)
    }
}
