//! Consumer group settings (retries and backoff) and dead letters: listing a group's, and
//! sending them back to the topic they came from.
//!
//! A group's settings live in every broker group (each holds its own queues and retries), so
//! an update goes to every master. A group's dead letters are on `%DLQ%<group>` in the broker
//! groups where its messages failed; resending all moves the group's own consume offset on that
//! topic past what it resent, so a second resend sends only newer dead letters.

use std::collections::BTreeMap;
use std::time::Duration;

use raftmq_common::{Error, ErrorCode};
use raftmq_proto as pb;

use crate::consumer::{dead_letter_topic, PullConsumer, ReadPreference};
use crate::message::{
    Message, ReceivedMessage, SendResult, PROP_DELIVER_MS, PROP_DLQ_ORIGIN_MESSAGE_ID, PROP_DLQ_ORIGIN_TOPIC,
    PROP_ORIGIN_MESSAGE_ID, PROP_RECONSUME_TIME, PROP_RETRY_TOPIC,
};
use crate::{Admin, Producer};

/// Most dead letters read per pull.
const PAGE: u32 = 256;

impl Admin {
    /// A consumer group's settings in every live broker group: (broker group, settings).
    pub async fn group_config(&self, consumer_group: &str) -> Result<Vec<(String, pb::GroupConfig)>, Error> {
        let req = pb::GetGroupConfigRequest {
            consumer_group: consumer_group.to_owned(),
        };
        let mut out = Vec::new();
        for (group, master) in self.masters(&[]).await? {
            let client = self.client.clone();
            let config = self
                .on_master(&master, |mut b| {
                    let r = client.request(req.clone(), client.config().request_timeout);
                    async move { b.get_group_config(r).await }
                })
                .await?;
            out.push((group, config));
        }
        Ok(out)
    }

    /// Stores a consumer group's settings in every live broker group; returns the groups.
    pub async fn update_group_config(&self, config: pb::GroupConfig) -> Result<Vec<String>, Error> {
        let mut done = Vec::new();
        for (group, master) in self.masters(&[]).await? {
            let client = self.client.clone();
            self.on_master(&master, |mut b| {
                let r = client.request(config.clone(), client.config().request_timeout);
                async move { b.update_group_config(r).await }
            })
            .await?;
            done.push(group);
        }
        Ok(done)
    }

    /// A consumer group's dead letters, oldest first, at most `limit`: all that are stored, or
    /// (`pending_only`) those past the group's consume offset on its dead-letter topic, that is
    /// those not resent by [`Admin::resend_dead_letters`]. Empty when the group has none.
    pub async fn dead_letters(
        &self,
        consumer_group: &str,
        pending_only: bool,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>, Error> {
        let topic = dead_letter_topic(consumer_group);
        let mut out = Vec::new();
        for (queue, from, to) in self.dead_letter_queues(consumer_group, pending_only).await? {
            let reader = PullConsumer::new(self.client.clone(), ReadPreference::Master);
            let mut offset = from;
            while offset < to && out.len() < limit {
                let page = reader.pull(&topic, &queue, offset, PAGE, "*", Duration::ZERO).await?;
                if page.next_offset <= offset {
                    break;
                }
                offset = page.next_offset;
                out.extend(page.messages.into_iter().take(limit - out.len()));
            }
        }
        Ok(out)
    }

    /// Per queue of the group's dead-letter topic: the queue, where to read from and its end.
    async fn dead_letter_queues(
        &self,
        consumer_group: &str,
        pending_only: bool,
    ) -> Result<Vec<(crate::MessageQueue, u64, u64)>, Error> {
        let topic = dead_letter_topic(consumer_group);
        let route = match self.client.refresh_route(&topic).await {
            Ok(route) => route,
            Err(e) if e.code == ErrorCode::TopicNotFound => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let reader = PullConsumer::new(self.client.clone(), ReadPreference::Master);
        let mut out = Vec::new();
        for queue in route.read_queues() {
            let (min, max) = reader.queue_offsets(&topic, &queue).await?;
            let mut from = min;
            if pending_only {
                let committed = reader.committed_offsets(&topic, &queue.group, consumer_group).await?;
                from = from.max(committed.get(&queue.queue_id).copied().unwrap_or(0));
            }
            out.push((queue, from, max));
        }
        Ok(out)
    }

    /// Sends one dead letter again to the topic it came from, as a new message without the
    /// retry and dead-letter properties.
    pub async fn resend_dead_letter(&self, dead_letter: &ReceivedMessage) -> Result<SendResult, Error> {
        let topic = dead_letter.properties.get(PROP_DLQ_ORIGIN_TOPIC).ok_or_else(|| {
            ErrorCode::InvalidArgument.err(format!(
                "message {} is not a dead letter (it has no {PROP_DLQ_ORIGIN_TOPIC})",
                dead_letter.msg_id
            ))
        })?;
        let mut properties = dead_letter.properties.clone();
        for p in [
            PROP_DLQ_ORIGIN_TOPIC,
            PROP_DLQ_ORIGIN_MESSAGE_ID,
            PROP_ORIGIN_MESSAGE_ID,
            PROP_RECONSUME_TIME,
            PROP_RETRY_TOPIC,
            PROP_DELIVER_MS,
        ] {
            properties.remove(p);
        }
        let message = Message {
            topic: topic.clone(),
            tags: dead_letter.tags.clone(),
            keys: dead_letter.keys.clone(),
            properties,
            body: dead_letter.body.to_vec(),
        };
        Producer::new(self.client.clone()).send(message).await
    }

    /// Resends every dead letter of the group not resent yet, then moves the group's offset on
    /// its dead-letter topic past them. Returns how many were resent.
    pub async fn resend_dead_letters(&self, consumer_group: &str) -> Result<usize, Error> {
        let topic = dead_letter_topic(consumer_group);
        let reader = PullConsumer::new(self.client.clone(), ReadPreference::Master);
        let mut sent = 0;
        for (queue, mut offset, to) in self.dead_letter_queues(consumer_group, true).await? {
            while offset < to {
                let page = reader.pull(&topic, &queue, offset, PAGE, "*", Duration::ZERO).await?;
                if page.next_offset <= offset {
                    break;
                }
                for m in &page.messages {
                    self.resend_dead_letter(m).await?;
                    sent += 1;
                }
                offset = page.next_offset;
                let offsets = BTreeMap::from([(queue.queue_id, offset)]);
                reader
                    .commit_offsets(&topic, &queue.group, consumer_group, &offsets)
                    .await?;
            }
        }
        Ok(sent)
    }
}
