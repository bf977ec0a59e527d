//! The Raft type configuration of a broker group and the commands its log carries.
//!
//! A log entry is a [`Request`]: the master's store timestamp and a batch of [`Command`]s, many
//! producers' sends group-committed into one entry. Applying an entry must be deterministic:
//! every replica derives the same queue offsets from the same entries, so nothing here may depend
//! on the local clock or on local state other than the state machine itself.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A member of a broker group as Raft knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerNode {
    /// Where the other nodes of the group send Raft traffic.
    pub raft_addr: String,
    /// Where clients reach this node (the address a slave names in `NOT_MASTER`).
    pub client_addr: String,
}

impl fmt::Display for BrokerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} client={}", self.raft_addr, self.client_addr)
    }
}

/// Snapshot data travels as a file, so a large state never sits in memory whole.
pub type SnapshotFile = tokio::fs::File;

openraft::declare_raft_types!(
    /// The Raft types of a raftmq broker group.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = BrokerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BrokerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BrokerNode>;
pub type Vote = openraft::Vote<NodeId>;

/// What clients may do with a topic's queues (RocketMQ's PermName bits).
pub mod perm {
    pub const READ: u32 = 4;
    pub const WRITE: u32 = 2;
    pub const READ_WRITE: u32 = 6;
}

/// A topic as the broker group holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub name: String,
    pub write_queues: u32,
    pub read_queues: u32,
    /// [`perm`] bits.
    pub permission: u32,
}

impl TopicConfig {
    /// Queues that exist, for reads and offsets: the larger of the two counts.
    pub fn queues(&self) -> u32 {
        self.write_queues.max(self.read_queues)
    }
}

/// A message as the master received it, before it has an offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageIn {
    pub tags: String,
    pub keys: String,
    pub properties: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub born_timestamp_ms: i64,
    /// CRC32 of the body, computed by the master before proposing; checked on every read.
    pub body_crc: u32,
}

impl MessageIn {
    /// Bytes this message takes, for size limits.
    pub fn size(&self) -> usize {
        self.body.len()
            + self.tags.len()
            + self.keys.len()
            + self.properties.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// One consume offset of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetUpdate {
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
}

/// One state change, carried in a log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Appends messages to one queue of a topic.
    Send {
        topic: String,
        queue_id: u32,
        messages: Vec<MessageIn>,
    },
    /// Creates a topic or changes its queue counts and permission.
    UpsertTopic(TopicConfig),
    /// Deletes a topic, its queues' indexes and every group's offsets in it.
    DeleteTopic { name: String },
    /// Commits consume offsets. With `increase_only`, an offset below the stored one is ignored
    /// (a consumer that lost its queue in a rebalance must not move the group backwards).
    CommitOffsets {
        group: String,
        offsets: Vec<OffsetUpdate>,
        increase_only: bool,
    },
}

/// A Raft log entry's application data: a batch of commands proposed together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The master's clock when it proposed the entry: every message's store timestamp.
    pub store_timestamp_ms: i64,
    pub commands: Vec<Command>,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Request({} commands)", self.commands.len())
    }
}

/// Why the state machine refused a command. Deterministic: every replica refuses the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    TopicNotFound,
    QueueNotFound,
    NoPermission,
    InvalidArgument,
}

/// The outcome of one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Messages stored at `first_offset..first_offset + count`; `first_position` is the position
    /// of the first one among all messages of the entry (for message ids).
    Sent {
        first_offset: u64,
        count: u32,
        first_position: u32,
    },
    Done,
    Rejected(Rejection, String),
}

/// The outcome of applying one entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The index of the entry, for message ids.
    pub log_index: u64,
    /// One result per command of the request, in order; empty for entries without a request.
    pub results: Vec<CommandResult>,
}
