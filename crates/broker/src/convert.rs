//! Conversions of the broker's values into `raftmq.v1` messages, shared by the service and the
//! NameServer heartbeats. A leaf: it knows no state.

use openraft::ServerState;
use raftmq_common::{Error, ErrorCode};
use raftmq_proto as pb;
use raftmq_proto::Role;
use raftmq_store::groups::{Backoff, GroupConfig};
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

/// A group's settings as `raftmq.v1` has them (the effective retries are the caller's to add).
pub fn group_to_proto(g: &GroupConfig) -> pb::GroupConfig {
    let (backoff_ms, exponential) = match &g.backoff {
        None => (vec![], None),
        Some(Backoff::Table(t)) => (t.clone(), None),
        Some(Backoff::Exponential {
            initial_ms,
            max_ms,
            multiplier,
        }) => (
            vec![],
            Some(pb::ExponentialBackoff {
                initial_ms: *initial_ms,
                max_ms: *max_ms,
                multiplier: *multiplier,
            }),
        ),
    };
    pb::GroupConfig {
        consumer_group: g.name.clone(),
        max_reconsume_times: g.max_reconsume_times.map_or(-1, |n| n.min(i32::MAX as u32) as i32),
        backoff_ms,
        exponential,
        effective_max_reconsume_times: 0,
        fifo: None,
        keep_retry_settings: false,
    }
}

/// A group's settings from `raftmq.v1`; a table and an exponential backoff together are refused.
pub fn group_from_proto(g: pb::GroupConfig) -> Result<GroupConfig, Error> {
    let backoff = match (g.backoff_ms.is_empty(), g.exponential) {
        (true, None) => None,
        (false, None) => Some(Backoff::Table(g.backoff_ms)),
        (true, Some(e)) => Some(Backoff::Exponential {
            initial_ms: e.initial_ms,
            max_ms: e.max_ms,
            multiplier: e.multiplier,
        }),
        (false, Some(_)) => {
            return Err(ErrorCode::InvalidArgument.err("field `backoff_ms`: give a table or `exponential`, not both"))
        }
    };
    let max_reconsume_times = match g.max_reconsume_times {
        -1 => None,
        n if n >= 0 => Some(n as u32),
        n => {
            return Err(ErrorCode::InvalidArgument.err(format!(
                "field `max_reconsume_times`: {n} is neither -1 (the default) nor a count"
            )))
        }
    };
    let config = GroupConfig {
        name: g.consumer_group,
        max_reconsume_times,
        backoff,
    };
    raftmq_store::groups::check(&config).map_err(|e| ErrorCode::InvalidArgument.err(e))?;
    Ok(config)
}

/// A user as the wire carries it; the secret key only when `with_secret`.
pub fn user_to_proto(u: &raftmq_common::auth::User, with_secret: bool) -> pb::User {
    use raftmq_common::auth::right;
    let grants = |gs: &[(String, u8)]| {
        gs.iter()
            .map(|(pattern, r)| pb::Grant {
                pattern: pattern.clone(),
                r#pub: r & right::PUB != 0,
                sub: r & right::SUB != 0,
            })
            .collect()
    };
    pb::User {
        access_key: u.access_key.clone(),
        secret_key: if with_secret {
            u.secret_key.clone()
        } else {
            String::new()
        },
        admin: u.admin,
        topics: grants(&u.topics),
        groups: grants(&u.groups),
    }
}

/// A user from the wire (checked by the store's rules when it is put).
pub fn user_from_proto(u: pb::User) -> raftmq_common::auth::User {
    use raftmq_common::auth::right;
    let grants = |gs: Vec<pb::Grant>| {
        gs.into_iter()
            .map(|g| {
                let r = if g.r#pub { right::PUB } else { 0 } | if g.sub { right::SUB } else { 0 };
                (g.pattern, r)
            })
            .collect()
    };
    raftmq_common::auth::User {
        access_key: u.access_key,
        secret_key: u.secret_key,
        admin: u.admin,
        topics: grants(u.topics),
        groups: grants(u.groups),
    }
}
