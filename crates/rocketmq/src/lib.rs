//! Apache RocketMQ 5's gRPC protocol, `apache.rocketmq.v2.MessagingService`, as raftmq serves it
//! so that the official RocketMQ 5 clients work unchanged.
//!
//! This crate is the protocol: requests in, statuses, routes, settings and receipt handles out.
//! What the operations mean (storing, POP deliveries) belongs to a [`Backend`]: the broker's does
//! everything, the NameServer's only answers routes. Every node serves the service; a node that
//! is not its group's master forwards writes and receives to the master, so a client that
//! reaches any node of a group keeps working through a failover.
//!
//! Business errors travel in the response's `status` with RocketMQ's codes, never as gRPC
//! errors; messages start with raftmq's stable code where there is one.

pub mod receipt;
pub mod route;
pub mod service;
pub mod settings;
pub mod status;

use std::time::Duration;

use raftmq_proto::rocketmq as v2;
use raftmq_proto::v1;

pub use service::MessagingService;
pub use status::Fail;

/// Where a node serves writes and receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// This node is its group's master.
    Here,
    /// Forward to the master at this client address.
    Master(String),
}

/// What the protocol needs from the node it runs on. Every method but [`Backend::route`] has a
/// default that answers "not served here" (what a NameServer says).
#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The route of a topic (its full name, namespace included) as the NameServers know it.
    async fn route(&self, topic: &str) -> Result<v1::TopicRoute, Fail>;

    /// A consumer group's retry policy (deliveries of a message before it is dead-lettered, and
    /// the delays between them), told to its consumers in their settings.
    fn consumer_retry_policy(&self, _group: &str) -> raftmq_proto::rocketmq::RetryPolicy {
        settings::default_consumer_retry_policy()
    }

    /// Whether a consumer group is FIFO, told to its consumers in their settings.
    fn consumer_is_fifo(&self, _group: &str) -> bool {
        false
    }

    /// Where writes and receives go from here; may wait a bounded time for a master to exist.
    async fn target(&self) -> Result<Target, Fail> {
        Err(Fail::illegal_access_point())
    }

    /// Stores messages of one topic; one result per message, in order.
    async fn send(&self, _ns: &str, _messages: Vec<v2::Message>) -> Result<Vec<v2::SendResultEntry>, Fail> {
        Err(Fail::illegal_access_point())
    }

    /// A POP receive from the topic's queues in this broker group (the named queue first),
    /// waiting up to `wait` for messages; an empty list means none arrived.
    async fn receive(
        &self,
        _ns: &str,
        _req: &v2::ReceiveMessageRequest,
        _wait: Duration,
    ) -> Result<Vec<v2::Message>, Fail> {
        Err(Fail::illegal_access_point())
    }

    /// Acknowledges deliveries; one result per entry, in order.
    async fn ack(&self, _ns: &str, _req: &v2::AckMessageRequest) -> Result<Vec<v2::AckMessageResultEntry>, Fail> {
        Err(Fail::illegal_access_point())
    }

    /// Changes a delivery's invisibility; returns the delivery's new receipt handle.
    async fn change_invisible(&self, _ns: &str, _req: &v2::ChangeInvisibleDurationRequest) -> Result<String, Fail> {
        Err(Fail::illegal_access_point())
    }

    /// Whether the caller of a request named `what` holds every need: checks the signature
    /// RocketMQ 5 clients send and the caller's rights. Every node passes everything by
    /// default (a NameServer, a broker without `auth`).
    fn authorize(
        &self,
        _md: &tonic::metadata::MetadataMap,
        _caller: Option<std::net::SocketAddr>,
        _what: &str,
        _needs: &[raftmq_common::auth::Need<'_>],
    ) -> Result<(), Fail> {
        Ok(())
    }

    /// The broker group this node belongs to; `None` on a NameServer.
    fn own_group(&self) -> Option<&str> {
        None
    }

    /// Where a recall runs: the master of the group its handle names (`group@timer`). On a
    /// node of that group, where writes go ([`Backend::target`]); anywhere else (a NameServer,
    /// a node of another group), that group's master as the route names it.
    async fn recall_target(&self, topic: &str, handle: &str) -> Result<Target, Fail> {
        let group = handle
            .split_once('@')
            .map(|(g, _)| g)
            .ok_or_else(|| Fail::new(v2::Code::BadRequest, format!("{handle:?} is not a recall handle")))?;
        self.group_target(topic, group).await
    }

    /// Where an end of transaction runs: the master of the group its transaction id names
    /// (`group@transaction`), as for a recall.
    async fn transaction_target(&self, topic: &str, transaction_id: &str) -> Result<Target, Fail> {
        let group = transaction_id.split_once('@').map(|(g, _)| g).ok_or_else(|| {
            Fail::new(
                v2::Code::InvalidTransactionId,
                format!("{transaction_id:?} is not a transaction id"),
            )
        })?;
        self.group_target(topic, group).await
    }

    /// The master of broker group `group` of `topic`: where writes go from here on a node of
    /// that group; elsewhere, that group's master (or a node that forwards to it) as the route
    /// names it.
    async fn group_target(&self, topic: &str, group: &str) -> Result<Target, Fail> {
        if self.own_group() == Some(group) {
            return self.target().await;
        }
        let route = self.route(topic).await?;
        let g = route.groups.iter().find(|g| g.group == group).ok_or_else(|| {
            Fail::new(
                v2::Code::BadRequest,
                format!("no broker group {group} holds topic {topic}"),
            )
        })?;
        // A slave forwards to its master; the master named first when there is one.
        route::nodes(g).into_iter().next().map(Target::Master).ok_or_else(|| {
            Fail::new(
                v2::Code::HaNotAvailable,
                format!("group {group} has no live node; retry"),
            )
        })
    }

    /// Cancels a delayed message by its recall handle; returns the message's id.
    async fn recall(&self, _ns: &str, _req: &v2::RecallMessageRequest) -> Result<String, Fail> {
        Err(Fail::illegal_access_point())
    }

    /// Ends a transaction (commit or rollback) by its transaction id.
    async fn end_transaction(&self, _ns: &str, _req: &v2::EndTransactionRequest) -> Result<(), Fail> {
        Err(Fail::illegal_access_point())
    }

    /// Registers a producer's telemetry stream to answer transaction checks of `topics` (full
    /// names) while the returned registration lives; `None` where nothing is checked (a
    /// NameServer).
    fn register_producer(
        &self,
        _ns: &str,
        _topics: Vec<String>,
        _commands: tokio::sync::mpsc::Sender<Result<v2::TelemetryCommand, tonic::Status>>,
    ) -> Option<Box<dyn Send + Sync>> {
        None
    }

    /// Moves a delivered message to its group's dead-letter topic.
    async fn forward_to_dead_letter(
        &self,
        _ns: &str,
        _req: &v2::ForwardMessageToDeadLetterQueueRequest,
    ) -> Result<(), Fail> {
        Err(Fail::illegal_access_point())
    }
}

/// The filter of a receive or a subscription: a tag expression (also when none is given) or,
/// with type SQL, RocketMQ's SQL92 subset. `ILLEGAL_FILTER_EXPRESSION` with line, column and
/// reason when it does not parse.
pub fn filter_of(f: Option<&v2::FilterExpression>) -> Result<raftmq_filter::Filter, status::Fail> {
    use raftmq_filter::{Filter, Kind};
    let Some(f) = f else {
        return Ok(Filter::all());
    };
    let kind = if f.r#type == v2::FilterType::Sql as i32 {
        Kind::Sql
    } else {
        Kind::Tag
    };
    Filter::parse(kind, &f.expression).map_err(|e| {
        let kind = if kind == Kind::Sql { "SQL" } else { "tag" };
        status::Fail::new(
            v2::Code::IllegalFilterExpression,
            format!("ILLEGAL_FILTER_EXPRESSION: {kind} expression {:?}: {e}", f.expression),
        )
    })
}

/// RocketMQ's namespaced name: `ns%name`, or the name alone without a namespace.
pub fn full_name(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}%{name}")
    }
}

/// Longest a message may stay invisible after a receive (RocketMQ's limit).
pub const MAX_INVISIBLE: Duration = Duration::from_secs(12 * 3600);
/// Shortest invisibility accepted.
pub const MIN_INVISIBLE: Duration = Duration::from_secs(1);
/// Invisibility of a receive that names none (push consumers ask for auto-renewal).
pub const DEFAULT_INVISIBLE: Duration = Duration::from_secs(60);
/// Deliveries of one message before it goes to the dead-letter topic (RocketMQ's default: the
/// first and 16 retries).
pub const MAX_DELIVERY_ATTEMPTS: u32 = 17;
/// Most messages one receive returns.
pub const MAX_RECEIVE_BATCH: usize = 256;

/// A protobuf duration as a std one (negative values are zero).
pub fn duration(d: &prost_types::Duration) -> Duration {
    if d.seconds < 0 || (d.seconds == 0 && d.nanos <= 0) {
        return Duration::ZERO;
    }
    Duration::new(d.seconds as u64, d.nanos.max(0) as u32)
}

pub fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn timestamp_to_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}
