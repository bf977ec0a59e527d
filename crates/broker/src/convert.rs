//! Conversions of the broker's values into `raftmq.v1` messages, shared by the service and the
//! NameServer heartbeats. A leaf: it knows no state.

use openraft::ServerState;
use raftmq_proto as pb;
use raftmq_proto::Role;
use raftmq_store::types::TopicConfig;
use raftmq_store::StoredMessage;

/// The role a node reports for its Raft state.
pub fn role(state: ServerState) -> Role {
    match state {
        ServerState::Leader => Role::Master,
        ServerState::Follower => Role::Slave,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner | ServerState::Shutdown => Role::Learner,
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

pub fn topic_to_proto(t: &TopicConfig) -> pb::TopicConfig {
    pb::TopicConfig {
        name: t.name.clone(),
        write_queues: t.write_queues,
        read_queues: t.read_queues,
        permission: t.permission as i32,
    }
}
