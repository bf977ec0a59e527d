//! Consumers: a pull consumer for explicit reads, and a group consumer (RocketMQ's push
//! consumer) that shares a topic's queues among the members of a consumer group.
//!
//! Delivery is at least once. A group consumer commits the offset after the handler returned
//! success for a batch, periodically and when it gives a queue up; after a crash, a rebalance or
//! a failover a queue resumes from the last committed offset, so a message may come again but
//! none is skipped.
//!
//! - [`pull`]: [`PullConsumer`], explicit reads of one queue at a time, and consume offsets;
//! - [`push`]: [`PushConsumer`], the group consumer: a queue reader per assigned queue, the
//!   handler, and the periodic commit;
//! - [`rebalance`]: who in a group reads which queue, and the heartbeats that make a member
//!   known.

mod local_offsets;
mod pull;
mod push;
mod rebalance;

pub use local_offsets::default_offset_dir;
pub use pull::{PullConsumer, PullResult, SentBack};
pub use push::{Handler, PushConsumer, PushConsumerBuilder};
pub use rebalance::allocate_averagely;

use crate::route::GroupRoute;

/// Which messages of a topic a subscription wants (RocketMQ's `MessageSelector`): a tag
/// expression, or a SQL92 condition over the message's properties that the broker evaluates,
/// so that filtered-out messages never travel. A `&str` is a tag expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageSelector {
    /// `*` (or empty) for every message, or `a || b`.
    Tags(String),
    /// RocketMQ's SQL92 subset: comparisons, `AND`, `OR`, `NOT`, `BETWEEN`, `IN`,
    /// `IS [NOT] NULL` over properties; `TAGS` is the tag.
    Sql(String),
}

impl MessageSelector {
    pub fn by_tag(expression: impl Into<String>) -> Self {
        MessageSelector::Tags(expression.into())
    }

    pub fn by_sql(expression: impl Into<String>) -> Self {
        MessageSelector::Sql(expression.into())
    }

    /// Every message.
    pub fn all() -> Self {
        MessageSelector::Tags("*".into())
    }

    /// Parses the expression here, as the broker will: `ILLEGAL_FILTER_EXPRESSION` with line,
    /// column and reason when it does not parse.
    pub fn check(&self) -> Result<(), crate::Error> {
        let (kind, expression, name) = match self {
            MessageSelector::Tags(e) => (raftmq_filter::Kind::Tag, e, "tag"),
            MessageSelector::Sql(e) => (raftmq_filter::Kind::Sql, e, "SQL"),
        };
        raftmq_filter::Filter::parse(kind, expression)
            .map(|_| ())
            .map_err(|e| crate::ErrorCode::IllegalFilterExpression.err(format!("{name} expression: {e}")))
    }

    /// The request's (tag expression, SQL expression).
    pub(crate) fn wire(&self) -> (String, String) {
        match self {
            MessageSelector::Tags(e) => (e.clone(), String::new()),
            MessageSelector::Sql(e) => (String::new(), e.clone()),
        }
    }
}

impl From<&str> for MessageSelector {
    fn from(tags: &str) -> Self {
        MessageSelector::by_tag(tags)
    }
}

impl From<&String> for MessageSelector {
    fn from(tags: &String) -> Self {
        MessageSelector::by_tag(tags.as_str())
    }
}

impl From<&MessageSelector> for MessageSelector {
    fn from(s: &MessageSelector) -> Self {
        s.clone()
    }
}

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

/// Clustering shares queues among a group, whose offsets the brokers keep; broadcasting gives
/// every member every queue, and each member keeps its own offsets in a file on its machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageModel {
    Clustering,
    Broadcasting,
}

/// What a handler says about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeResult {
    Success,
    /// The batch failed. A clustering consumer sends each message back: it comes again from
    /// the group's retry topic after the group's backoff (10s, 30s, 1m, ... by default), and
    /// goes to the dead-letter topic after the group's retries; the queue moves on. An orderly
    /// or broadcasting consumer handles the same batch again after a pause, and the queue waits.
    Retry,
}

/// A consumer group's retry topic, as RocketMQ names it.
pub fn retry_topic(consumer_group: &str) -> String {
    format!("%RETRY%{consumer_group}")
}

/// A consumer group's dead-letter topic, as RocketMQ names it.
pub fn dead_letter_topic(consumer_group: &str) -> String {
    format!("%DLQ%{consumer_group}")
}

pub(crate) fn nodes_for(group: &GroupRoute, pref: ReadPreference) -> Vec<String> {
    let master = group.master.iter().cloned();
    let slaves = group.slaves.iter().cloned();
    match pref {
        ReadPreference::Master => master.chain(slaves).collect(),
        ReadPreference::PreferSlave => slaves.chain(master).collect(),
        ReadPreference::SlaveOnly => slaves.collect(),
    }
}
