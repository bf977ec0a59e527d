//! What a dashboard shows of topics and consumer groups: every queue's bounds, and every
//! consumer group's committed offsets in a topic, from each broker group's master.

use raftmq_common::Error;
use raftmq_proto as pb;

use crate::consumer::{PullConsumer, ReadPreference};
use crate::route::MessageQueue;
use crate::Admin;

/// One queue of a topic: its broker group, id and offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueBounds {
    pub queue: MessageQueue,
    /// The first offset still stored (retention moves it).
    pub min_offset: u64,
    /// The offset the next message gets.
    pub max_offset: u64,
}

/// A consumer group's committed offset in one queue of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOffset {
    pub consumer_group: String,
    pub queue: MessageQueue,
    pub offset: u64,
}

impl Admin {
    /// Every queue of a topic, in every broker group that holds it.
    pub async fn queue_bounds(&self, topic: &str) -> Result<Vec<QueueBounds>, Error> {
        let reader = PullConsumer::new(self.client.clone(), ReadPreference::Master);
        let mut out = Vec::new();
        for queue in reader.queues(topic).await? {
            let (min_offset, max_offset) = reader.queue_offsets(topic, &queue).await?;
            out.push(QueueBounds {
                queue,
                min_offset,
                max_offset,
            });
        }
        Ok(out)
    }

    /// Every consumer group's committed offsets in a topic, as each broker group's master has
    /// them.
    pub async fn topic_consumers(&self, topic: &str) -> Result<Vec<ConsumerOffset>, Error> {
        let route = self.client.route(topic).await?;
        let groups: Vec<String> = route.groups.iter().map(|g| g.group.clone()).collect();
        let mut out = Vec::new();
        for (group, master) in self.masters(&groups).await? {
            let req = pb::GetTopicConsumersRequest {
                topic: topic.to_owned(),
            };
            let client = self.client.clone();
            let reply = self
                .on_master(&master, |mut b| {
                    let r = client.request(req.clone(), client.config().request_timeout);
                    async move { b.get_topic_consumers(r).await }
                })
                .await?;
            out.extend(reply.offsets.into_iter().map(|o| ConsumerOffset {
                consumer_group: o.consumer_group,
                queue: MessageQueue {
                    group: group.clone(),
                    queue_id: o.queue_id,
                },
                offset: o.offset,
            }));
        }
        Ok(out)
    }
}
