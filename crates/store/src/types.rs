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
    /// Hands messages of one queue to a consumer group for a while (RocketMQ 5's POP receive):
    /// new ones from the group's cursor and expired ones again. See [`Pop`].
    Pop(Pop),
    /// Acknowledges deliveries: each names its offset and the lease it was delivered under.
    PopAck {
        group: String,
        topic: String,
        queue_id: u32,
        entries: Vec<PopLease>,
    },
    /// Keeps a delivery invisible for `invisible_ms` more (from the entry's timestamp); the
    /// delivery gets this entry's index as its new lease.
    PopChangeInvisible {
        group: String,
        topic: String,
        queue_id: u32,
        lease: PopLease,
        invisible_ms: u64,
    },
    /// Ends a delivery by moving a copy of its message to the group's dead-letter topic.
    PopDeadLetter {
        group: String,
        topic: String,
        queue_id: u32,
        lease: PopLease,
        dlq_topic: String,
        message: MessageIn,
    },
}

impl Command {
    /// The messages this command stores, with their topic and queue: what message positions in
    /// an entry count.
    pub fn stored_messages(&self) -> Option<(&str, u32, &[MessageIn])> {
        match self {
            Command::Send {
                topic,
                queue_id,
                messages,
            } => Some((topic, *queue_id, messages)),
            Command::PopDeadLetter { dlq_topic, message, .. } => Some((dlq_topic, 0, std::slice::from_ref(message))),
            _ => None,
        }
    }
}

/// One delivery of a message to a consumer group: the message's offset and the index of the
/// entry that delivered it (or last changed its invisibility). A receipt handle carries both, so
/// a handle from an earlier delivery no longer matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopLease {
    pub offset: u64,
    pub lease: u64,
}

/// A POP receive as the master proposes it, from what it read of the state; apply grants only
/// what is still true when the entry applies, so concurrent receives never share a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pop {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    /// Deliveries whose invisibility has expired, to deliver again.
    pub redeliver: Vec<PopLease>,
    /// Deliveries to forget: retention removed their message, or the group's filter no longer
    /// selects it.
    pub forget: Vec<PopLease>,
    /// The group's cursor the master saw; new offsets are granted only if it is still there.
    pub new_from: u64,
    /// Where the cursor moves: past `new` and past messages the group's filter skipped.
    pub new_to: u64,
    /// New offsets to deliver, ascending, in `new_from..new_to`.
    pub new: Vec<u64>,
    pub invisible_ms: u64,
}

/// A Raft log entry's application data: a batch of commands proposed together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The master's clock when it proposed the entry: every message's store timestamp.
    pub store_timestamp_ms: i64,
    /// Shared, so the copies of an entry that openraft asks for (to replicate it, to apply it)
    /// cost a reference count, not a copy of every body. Encoded exactly as a `Vec` would be.
    pub commands: std::sync::Arc<[Command]>,
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
    /// A POP lease that is no longer current (acknowledged, redelivered or changed since).
    StaleLease,
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
    /// Offsets delivered by a [`Pop`], with their delivery attempt; the lease is the entry's
    /// index.
    Popped(Vec<(u64, u32)>),
    /// Per acknowledged entry: whether its lease was current.
    Acked(Vec<bool>),
}

/// The outcome of applying one entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The index of the entry, for message ids.
    pub log_index: u64,
    /// One result per command of the request, in order; empty for entries without a request.
    pub results: Vec<CommandResult>,
}
