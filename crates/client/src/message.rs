//! Messages as producers build them and consumers receive them.

use std::collections::BTreeMap;

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

/// What an acknowledged send returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    pub msg_id: String,
    pub group: String,
    pub queue_id: u32,
    pub queue_offset: u64,
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
    pub body: Vec<u8>,
    pub born_timestamp_ms: i64,
    pub store_timestamp_ms: i64,
}

impl ReceivedMessage {
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
