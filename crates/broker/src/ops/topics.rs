//! Topics: create or update, delete, list; and the topic rules of the other operations (a read
//! names an existing topic and queue; a send may create its topic when auto-create is on).

use std::time::Duration;

use raftmq_common::validate;
use raftmq_store::types::{perm, Command, TopicConfig};

use crate::state::BrokerState;
use raftmq_common::{Error, ErrorCode};

/// How long a topic change waits for the NameServers to hear it (a heartbeat RPC's deadline and
/// some).
const ANNOUNCE_WAIT: Duration = Duration::from_secs(3);

/// Creates a topic or changes its queues and permission, on the master; returns once committed
/// and announced to the NameServers (see [`announce`]).
pub async fn upsert(state: &BrokerState, config: TopicConfig) -> Result<(), Error> {
    raftmq_store::apply::check_topic(&config).map_err(|e| ErrorCode::InvalidArgument.err(e))?;
    state.require_master()?;
    state.commit(Command::UpsertTopic(config), 0).await?;
    announce(state).await;
    Ok(())
}

/// Deletes a topic and its messages, on the master; returns once committed and announced.
pub async fn delete(state: &BrokerState, name: String) -> Result<(), Error> {
    validate::name("topic", &name)?;
    state.require_master()?;
    state.commit(Command::DeleteTopic { name }, 0).await?;
    announce(state).await;
    Ok(())
}

/// The topics this node has applied.
pub fn list(state: &BrokerState) -> Vec<TopicConfig> {
    state.reader.topics()
}

/// Waits until the NameServers have been sent the topic table as it is now, so a topic that
/// was just created or deleted is routed as such once the admin call returns. A NameServer
/// that does not answer does not hold the call past [`ANNOUNCE_WAIT`]: the topic change is
/// committed either way, and the next heartbeat carries it.
async fn announce(state: &BrokerState) {
    let generation = *state.reader.subscribe_topics().borrow();
    let mut announced = state.announced_topics.subscribe();
    let waited = tokio::time::timeout(ANNOUNCE_WAIT, announced.wait_for(|g| *g >= generation)).await;
    if !matches!(waited, Ok(Ok(_))) {
        tracing::warn!("the NameServers have not heard the new topic table yet; the next heartbeat carries it");
    }
}

/// The topic a read names, which must exist here with that queue.
pub fn for_read(state: &BrokerState, topic: &str, queue_id: u32) -> Result<TopicConfig, Error> {
    validate::name("topic", topic)?;
    let config = state.reader.topic(topic).ok_or_else(|| {
        ErrorCode::TopicNotFound.err(format!(
            "topic {topic:?} does not exist in group {}",
            state.config.group
        ))
    })?;
    if queue_id >= config.queues() {
        return Err(ErrorCode::QueueNotFound.err(format!(
            "topic {topic:?} has {} queues; queue {queue_id} does not exist",
            config.queues()
        )));
    }
    Ok(config)
}

/// The topic to send to, created first when auto-create is on.
pub async fn for_send(state: &BrokerState, topic: &str) -> Result<TopicConfig, Error> {
    if let Some(config) = state.reader.topic(topic) {
        return Ok(config);
    }
    if !state.config.auto_create_topic {
        return Err(ErrorCode::TopicNotFound.err(format!(
            "topic {topic:?} does not exist in group {} (auto-create is off)",
            state.config.group
        )));
    }
    let config = TopicConfig {
        name: topic.to_owned(),
        write_queues: state.config.default_queues,
        read_queues: state.config.default_queues,
        permission: perm::READ_WRITE,
    };
    tracing::info!(topic, queues = config.write_queues, "auto-creating topic");
    state.commit(Command::UpsertTopic(config.clone()), 0).await?;
    Ok(state.reader.topic(topic).unwrap_or(config))
}
