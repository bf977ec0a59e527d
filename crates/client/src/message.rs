//! Messages as producers build them and consumers receive them.

use std::collections::BTreeMap;

use bytes::Bytes;
use raftmq_proto as pb;

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    /// One tag, for consumers' tag filters.
    pub tags: String,
    /// Space-separated keys.
    pub keys: String,
    pub properties: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn new(topic: impl Into<String>, body: impl Into<Vec<u8>>) -> Message {
        Message {
            topic: topic.into(),
            body: body.into(),
            ..Default::default()
        }
    }

    pub fn with_tags(mut self, tags: impl Into<String>) -> Message {
        self.tags = tags.into();
        self
    }

    pub fn with_keys(mut self, keys: impl Into<String>) -> Message {
        self.keys = keys.into();
        self
    }

    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Message {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Delivers the message `delay` after the broker stores it (100 ms precision; up to 30 days).
    pub fn with_delay(self, delay: std::time::Duration) -> Message {
        self.with_property(PROP_DELAY_MS, delay.as_millis().to_string())
    }

    /// Delivers the message at `deliver_at_ms` (ms since the Unix epoch); a time past means now.
    pub fn with_deliver_at(self, deliver_at_ms: i64) -> Message {
        self.with_property(PROP_DELIVER_MS, deliver_at_ms.to_string())
    }

    /// Delivers the message after RocketMQ's delay level `level`, 1 to 18 (`1s 5s 10s 30s 1m 2m
    /// 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h`); 0 is no delay.
    pub fn with_delay_level(self, level: u32) -> Message {
        self.with_property(PROP_DELAY_LEVEL, level.to_string())
    }

    /// Whether the message asks to be delivered later.
    pub fn is_delayed(&self) -> bool {
        [PROP_DELIVER_MS, PROP_DELAY_MS, PROP_DELAY_SEC]
            .iter()
            .any(|p| self.properties.contains_key(*p))
            || self.properties.get(PROP_DELAY_LEVEL).is_some_and(|l| l != "0")
    }

    /// The message as a send request carries it; the request names the topic once, for all.
    pub(crate) fn to_proto(&self, born_timestamp_ms: i64) -> pb::Message {
        pb::Message {
            topic: String::new(),
            tags: self.tags.clone(),
            keys: self.keys.clone(),
            properties: self.properties.clone().into_iter().collect(),
            body: self.body.clone(),
            born_timestamp_ms,
        }
    }
}

/// The property holding a delayed message's delivery time, ms since the epoch; a delivered
/// delayed message carries it, so a consumer sees when it was due.
pub const PROP_DELIVER_MS: &str = "TIMER_DELIVER_MS";
/// A delay in ms from the send.
pub const PROP_DELAY_MS: &str = "TIMER_DELAY_MS";
/// A delay in seconds from the send.
pub const PROP_DELAY_SEC: &str = "TIMER_DELAY_SEC";
/// A RocketMQ delay level, 1 to 18.
pub const PROP_DELAY_LEVEL: &str = "DELAY";
/// On a retried message: the topic it was first sent to (RocketMQ's property).
pub const PROP_RETRY_TOPIC: &str = "RETRY_TOPIC";
/// On a retried or dead-lettered message: how many times it was consumed again.
pub const PROP_RECONSUME_TIME: &str = "RECONSUME_TIME";
/// On a retried or dead-lettered message: its id when first stored.
pub const PROP_ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
/// On a dead letter: the topic it was first sent to.
pub const PROP_DLQ_ORIGIN_TOPIC: &str = "DLQ_ORIGIN_TOPIC";
/// On a dead letter: its id when first stored.
pub const PROP_DLQ_ORIGIN_MESSAGE_ID: &str = "DLQ_ORIGIN_MESSAGE_ID";

/// What an acknowledged send returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    pub msg_id: String,
    pub group: String,
    pub queue_id: u32,
    /// The message's offset in its queue; 0 for a delayed message (it has none until due).
    pub queue_offset: u64,
    /// For a delayed message: when it is due, and the handle that recalls it until then
    /// ([`Producer::recall`](crate::Producer::recall)).
    pub delayed: Option<Delayed>,
}

/// A delayed message as its send left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delayed {
    pub deliver_at_ms: i64,
    pub recall_handle: String,
}

/// A message as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub msg_id: String,
    pub topic: String,
    pub group: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub tags: String,
    pub keys: String,
    pub properties: BTreeMap<String, String>,
    /// A slice of the buffer the broker's answer arrived in: received without a copy per
    /// message. It derefs to `[u8]`. It keeps that buffer (the whole answer, up to a pull's
    /// batch of messages) alive: to keep a few messages long after the rest are dropped, keep
    /// `body.to_vec()` instead.
    pub body: Bytes,
    pub born_timestamp_ms: i64,
    pub store_timestamp_ms: i64,
}

impl ReceivedMessage {
    /// How many times this message was consumed again after a failure (0 on its first delivery).
    pub fn reconsume_times(&self) -> u32 {
        self.properties
            .get(PROP_RECONSUME_TIME)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// A message read from a group's retry topic as its consumer sees it: the topic and id it
    /// had when first sent.
    pub(crate) fn into_first_sent(mut self) -> ReceivedMessage {
        if let Some(topic) = self.properties.get(PROP_RETRY_TOPIC) {
            self.topic = topic.clone();
        }
        if let Some(id) = self.properties.get(PROP_ORIGIN_MESSAGE_ID) {
            self.msg_id = id.clone();
        }
        self
    }

    pub(crate) fn from_proto(group: &str, m: pb::StoredMessage) -> ReceivedMessage {
        ReceivedMessage {
            msg_id: m.msg_id,
            topic: m.topic,
            group: group.to_owned(),
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
            tags: m.tags,
            keys: m.keys,
            properties: m.properties.into_iter().collect(),
            body: m.body,
            born_timestamp_ms: m.born_timestamp_ms,
            store_timestamp_ms: m.store_timestamp_ms,
        }
    }
}
