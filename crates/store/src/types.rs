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
    /// Encoded as `serde_bytes` encodes a `Vec<u8>` (a length and the bytes), which stores
    /// written before it was `Bytes` hold. Decoded under [`decode_sharing`], it is a slice of
    /// the shared buffer (a received frame, a log entry read back); a read hands it out
    /// without copying it.
    #[serde(deserialize_with = "shared_body")]
    pub body: bytes::Bytes,
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
    /// Stores a message now and appends it to its queue at `due_ms` (a delayed or timed
    /// message): a pending timer instead of a queue offset. See [`crate::timers`].
    Schedule {
        topic: String,
        queue_id: u32,
        due_ms: i64,
        message: MessageIn,
    },
    /// Appends a copy of a scheduled message to its queue if its timer is still pending, and
    /// ends the timer. Proposed by the master when the timer is due, with the timer's target.
    Deliver {
        timer: crate::timers::Timer,
        topic: String,
        queue_id: u32,
        message: MessageIn,
    },
    /// Cancels a pending timer: its message is never delivered.
    Recall { timer: crate::timers::Timer },
    /// Stores a consumer group's settings.
    UpdateGroup(crate::groups::GroupConfig),
    /// A message a consumer of `group` failed: with `due_ms`, scheduled on the group's retry
    /// topic (`topic` names it); without, appended to its dead-letter topic. The topic is
    /// created on first use. See [`crate::groups`].
    SendBack {
        group: String,
        topic: String,
        due_ms: Option<i64>,
        message: MessageIn,
    },
    /// Stores a half message of a transaction: pending, in no queue, until its producer
    /// commits; its first check is due `check_after_ms` after this entry. See
    /// [`crate::txns`].
    Prepare {
        topic: String,
        queue_id: u32,
        producer_group: String,
        check_after_ms: i64,
        message: MessageIn,
    },
    /// Ends a pending transaction. A commit carries a copy of the half message and appends it
    /// to its queue; an abandon appends it to queue 0 of [`crate::txns::CHECK_MAX_TOPIC`]; a
    /// rollback carries nothing.
    EndTxn {
        txn: crate::txns::Txn,
        outcome: crate::txns::Outcome,
        topic: String,
        queue_id: u32,
        message: Option<MessageIn>,
    },
    /// Records that the master asked the producers about a pending transaction: one more
    /// check, the next `next_after_ms` after this entry.
    TxnChecked { txn: crate::txns::Txn, next_after_ms: i64 },
    /// Marks a consumer group FIFO or not: a FIFO group gets a queue's next message only once
    /// every earlier delivery of that queue was acknowledged (or dead-lettered).
    SetGroupFifo { group: String, fifo: bool },
    /// Locks queues of a topic for one member of a consumer group (an orderly consumer) until
    /// `lease_ms` after this entry: granted where no other member holds a lock that is still
    /// valid at this entry's time. A member renews its locks by asking again.
    LockQueues {
        group: String,
        topic: String,
        client_id: String,
        queues: Vec<u32>,
        lease_ms: u64,
    },
    /// Releases the member's locks on the queues (those it holds).
    UnlockQueues {
        group: String,
        topic: String,
        client_id: String,
        queues: Vec<u32>,
    },
    /// Creates a user or replaces its secret key and rights.
    PutUser(raftmq_common::auth::User),
    /// Deletes a user.
    DeleteUser { access_key: String },
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
            Command::SendBack { topic, message, .. } => Some((topic, 0, std::slice::from_ref(message))),
            Command::Schedule {
                topic,
                queue_id,
                message,
                ..
            } => Some((topic, *queue_id, std::slice::from_ref(message))),
            Command::Deliver {
                topic,
                queue_id,
                message,
                ..
            } => Some((topic, *queue_id, std::slice::from_ref(message))),
            Command::Prepare {
                topic,
                queue_id,
                message,
                ..
            } => Some((topic, *queue_id, std::slice::from_ref(message))),
            Command::EndTxn {
                topic,
                queue_id,
                message: Some(message),
                ..
            } => Some((topic, *queue_id, std::slice::from_ref(message))),
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
///
/// Stored and sent as one byte string holding the bincode encoding of its two fields. That
/// encoding is made once, by the master when it proposes the entry, and kept with it: writing
/// the entry to the log and sending it to every slave copy those bytes instead of encoding each
/// message again. A slave keeps the bytes it received (a slice of the request, not a copy) for
/// its own log write.
#[derive(Clone, Default)]
pub struct Request {
    /// The master's clock when it proposed the entry: every message's store timestamp.
    pub store_timestamp_ms: i64,
    /// Shared, so the copies of an entry that openraft asks for (to replicate it, to apply it)
    /// cost a reference count, not a copy of every body.
    pub commands: std::sync::Arc<[Command]>,
    /// The encoding of the fields above, when known; `None` for an entry read back from disk,
    /// which is encoded again if it is ever sent.
    encoded: Option<bytes::Bytes>,
}

#[derive(Serialize)]
struct RequestFields<'a> {
    store_timestamp_ms: i64,
    commands: &'a [Command],
}

#[derive(Deserialize)]
struct OwnedRequestFields {
    store_timestamp_ms: i64,
    commands: Vec<Command>,
}

impl Request {
    /// A request with its encoding made now.
    pub fn new(store_timestamp_ms: i64, commands: Vec<Command>) -> Request {
        let mut request = Request {
            store_timestamp_ms,
            commands: commands.into(),
            encoded: None,
        };
        request.encoded = Some(request.encode_fields().into());
        request
    }

    fn encode_fields(&self) -> Vec<u8> {
        let fields = RequestFields {
            store_timestamp_ms: self.store_timestamp_ms,
            commands: &self.commands,
        };
        // Encoding into a Vec cannot fail for these types (see `codec::encode`).
        bincode::serde::encode_to_vec(&fields, bincode::config::standard()).expect("bincode encoding into a Vec")
    }

    /// Bytes its stored form takes, about (to size buffers).
    pub fn encoded_len(&self) -> usize {
        self.encoded.as_ref().map_or(0, |b| b.len())
    }

    fn decode_fields(bytes: &[u8], encoded: Option<bytes::Bytes>) -> Result<Request, String> {
        let (fields, used): (OwnedRequestFields, usize) =
            bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map_err(|e| e.to_string())?;
        if used != bytes.len() {
            return Err(format!("{} trailing bytes after a request", bytes.len() - used));
        }
        Ok(Request {
            store_timestamp_ms: fields.store_timestamp_ms,
            commands: fields.commands.into(),
            encoded,
        })
    }
}

impl PartialEq for Request {
    fn eq(&self, other: &Self) -> bool {
        self.store_timestamp_ms == other.store_timestamp_ms && self.commands == other.commands
    }
}

impl Eq for Request {}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("store_timestamp_ms", &self.store_timestamp_ms)
            .field("commands", &self.commands)
            .finish()
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Request({} commands)", self.commands.len())
    }
}

impl Serialize for Request {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.encoded {
            Some(bytes) => serializer.serialize_bytes(bytes),
            None => serializer.serialize_bytes(&self.encode_fields()),
        }
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Request;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an encoded request")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Request, E> {
                Request::decode_fields(v, shared_source::slice(v)).map_err(E::custom)
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Request, E> {
                Request::decode_fields(v, None).map_err(E::custom)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Request, E> {
                let request = Request::decode_fields(&v, None).map_err(E::custom)?;
                Ok(Request {
                    encoded: Some(v.into()),
                    ..request
                })
            }
        }
        deserializer.deserialize_bytes(Visit)
    }
}

/// Decoding from a buffer that is already shared (`Bytes`), a request keeps a slice of it as its
/// encoding instead of nothing: see [`decode_sharing`].
mod shared_source {
    use std::cell::RefCell;

    thread_local! {
        static SOURCE: RefCell<Option<bytes::Bytes>> = const { RefCell::new(None) };
    }

    /// Runs `decode` (which decodes from `source`) so that every [`Request`](super::Request)
    /// decoded keeps its encoding as a slice of `source`, to write or send it again without
    /// encoding it.
    pub fn decode_sharing<T>(source: &bytes::Bytes, decode: impl FnOnce() -> T) -> T {
        let previous = SOURCE.with(|s| s.replace(Some(source.clone())));
        let result = decode();
        SOURCE.with(|s| *s.borrow_mut() = previous);
        result
    }

    /// `part` as a slice of the current source, if it lies inside it.
    pub fn slice(part: &[u8]) -> Option<bytes::Bytes> {
        SOURCE.with(|s| {
            let source = s.borrow();
            let source = source.as_ref()?;
            let (start, end) = (source.as_ptr() as usize, source.as_ptr() as usize + source.len());
            let at = part.as_ptr() as usize;
            (at >= start && at + part.len() <= end).then(|| source.slice_ref(part))
        })
    }
}

pub use shared_source::decode_sharing;

/// A body as a slice of the buffer being decoded under [`decode_sharing`], else a copy.
fn shared_body<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bytes::Bytes, D::Error> {
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = bytes::Bytes;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a message body")
        }
        fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<bytes::Bytes, E> {
            Ok(shared_source::slice(v).unwrap_or_else(|| bytes::Bytes::copy_from_slice(v)))
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<bytes::Bytes, E> {
            Ok(bytes::Bytes::copy_from_slice(v))
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<bytes::Bytes, E> {
            Ok(v.into())
        }
    }
    deserializer.deserialize_bytes(Visit)
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
    /// A recall of a delayed message that was delivered already.
    AlreadyDelivered,
    /// A recall handle that names no pending message.
    MessageNotFound,
    /// A transaction ended the other way already.
    AlreadyEnded,
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
    /// A message stored with a pending timer, at `position` among the entry's messages.
    Scheduled {
        position: u32,
    },
    /// A half message stored pending, at `position` among the entry's messages.
    Prepared {
        position: u32,
    },
    /// The queues a [`Command::LockQueues`] granted.
    Locked(Vec<u32>),
}

/// The outcome of applying one entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The index of the entry, for message ids.
    pub log_index: u64,
    /// One result per command of the request, in order; empty for entries without a request.
    pub results: Vec<CommandResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        let message = MessageIn {
            tags: "t".into(),
            keys: "k".into(),
            properties: vec![("a".into(), "b".into())],
            body: bytes::Bytes::from_static(b"body"),
            born_timestamp_ms: 7,
            body_crc: 9,
        };
        Request::new(
            1_000,
            vec![Command::Send {
                topic: "T".into(),
                queue_id: 1,
                messages: vec![message; 3],
            }],
        )
    }

    /// An entry decoded from a received buffer re-encodes to the same bytes from a slice of
    /// that buffer (no copy, no encoding); one decoded from disk carries no encoding and makes
    /// the same bytes again when asked.
    #[test]
    fn a_request_keeps_its_encoding_where_it_can() {
        let original = request();
        let config = bincode::config::standard();
        let wire = bytes::Bytes::from(bincode::serde::encode_to_vec(&original, config).unwrap());

        let (shared, _): (Request, usize) =
            decode_sharing(&wire, || bincode::serde::decode_from_slice(&wire, config).unwrap());
        assert_eq!(shared, original);
        let kept = shared.encoded.as_ref().expect("a slice of the received buffer");
        let inside = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        assert!(inside.contains(&(kept.as_ptr() as usize)));
        assert_eq!(bincode::serde::encode_to_vec(&shared, config).unwrap(), wire[..]);
        let bodies = |r: &Request| -> Vec<bytes::Bytes> {
            r.commands
                .iter()
                .flat_map(|c| c.stored_messages().map(|(_, _, m)| m.to_vec()).unwrap_or_default())
                .map(|m| m.body)
                .collect()
        };
        for body in bodies(&shared) {
            assert!(
                inside.contains(&(body.as_ptr() as usize)),
                "a body is a slice of the buffer"
            );
        }

        let (plain, _): (Request, usize) = bincode::serde::decode_from_slice(&wire, config).unwrap();
        assert_eq!(plain, original);
        assert!(plain.encoded.is_none());
        for body in bodies(&plain) {
            assert!(
                !inside.contains(&(body.as_ptr() as usize)),
                "decoded without sharing, a copy"
            );
        }
        assert_eq!(bincode::serde::encode_to_vec(&plain, config).unwrap(), wire[..]);
    }

    /// Bytes that are not a request's encoding (format 1 stored the fields inline) fail to
    /// decode rather than decoding into something else.
    #[test]
    fn fields_written_inline_do_not_decode_as_a_request() {
        let original = request();
        let config = bincode::config::standard();
        let inline = bincode::serde::encode_to_vec(
            &RequestFields {
                store_timestamp_ms: original.store_timestamp_ms,
                commands: &original.commands,
            },
            config,
        )
        .unwrap();
        assert!(bincode::serde::decode_from_slice::<Request, _>(&inline, config).is_err());
    }

    /// A body is encoded as it was when it was a `Vec<u8>` under `serde_bytes`, so stores
    /// written before read the same, and what is written now reads as that did.
    #[test]
    fn a_body_encodes_as_the_serde_bytes_vec_it_was() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Before {
            tags: String,
            keys: String,
            properties: Vec<(String, String)>,
            #[serde(with = "serde_bytes")]
            body: Vec<u8>,
            born_timestamp_ms: i64,
            body_crc: u32,
        }
        let config = bincode::config::standard();
        let body: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let before = Before {
            tags: "t".into(),
            keys: "k".into(),
            properties: vec![("a".into(), "b".into())],
            body: body.clone(),
            born_timestamp_ms: 7,
            body_crc: 9,
        };
        let now = MessageIn {
            tags: "t".into(),
            keys: "k".into(),
            properties: vec![("a".into(), "b".into())],
            body: body.into(),
            born_timestamp_ms: 7,
            body_crc: 9,
        };
        let old_bytes = bincode::serde::encode_to_vec(&before, config).unwrap();
        assert_eq!(bincode::serde::encode_to_vec(&now, config).unwrap(), old_bytes);
        let (read, _): (MessageIn, usize) = bincode::serde::decode_from_slice(&old_bytes, config).unwrap();
        assert_eq!(read, now);
        let (back, _): (Before, usize) =
            bincode::serde::decode_from_slice(&bincode::serde::encode_to_vec(&now, config).unwrap(), config).unwrap();
        assert_eq!(back, before);
    }
}
