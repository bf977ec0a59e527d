//! Rebalance: every member of a consumer group computes the same assignment of a topic's
//! queues from the same sorted member list, and heartbeats keep each member on that list.

use std::collections::BTreeSet;
use std::time::Duration;

use raftmq_proto as pb;

use super::push::Shared;
use super::MessageModel;
use crate::route::{MessageQueue, TopicRoute};

/// RocketMQ's AllocateMessageQueueAveragely: contiguous, as equal as possible, the same answer
/// on every member for the same sorted inputs.
pub fn allocate_averagely(queues: &[MessageQueue], members: &[String], me: &str) -> Vec<MessageQueue> {
    let Some(index) = members.iter().position(|m| m == me) else {
        return Vec::new();
    };
    let (q, n) = (queues.len(), members.len());
    if q == 0 {
        return Vec::new();
    }
    let rem = q % n;
    let size = if q <= n {
        1
    } else if rem > 0 && index < rem {
        q / n + 1
    } else {
        q / n
    };
    let start = if rem > 0 && index < rem {
        index * size
    } else {
        index * size + rem
    };
    (0..size.min(q.saturating_sub(start)))
        .map(|i| queues[(start + i) % q].clone())
        .collect()
}

/// Tells every node of every group holding the topic that this member is alive.
pub(super) async fn heartbeat(shared: &Shared, route: &TopicRoute) {
    if shared.model == MessageModel::Broadcasting {
        return;
    }
    let req = pb::ConsumerHeartbeatRequest {
        consumer_group: shared.consumer_group.clone(),
        client_id: shared.client_id.clone(),
        topics: vec![shared.topic.clone()],
    };
    let mut calls = Vec::new();
    for addr in all_nodes(route) {
        if let Ok(mut b) = shared.client.broker(&addr) {
            let r = shared.client.request(req.clone(), Duration::from_secs(1));
            calls.push(async move { b.consumer_heartbeat(r).await });
        }
    }
    futures::future::join_all(calls).await;
}

/// Every node of every group of a route.
pub(super) fn all_nodes(route: &TopicRoute) -> Vec<String> {
    route
        .groups
        .iter()
        .flat_map(|g| g.master.iter().chain(g.slaves.iter()))
        .cloned()
        .collect()
}

/// The queues this member should read, or `None` when the group's member list is unknown now.
pub(super) async fn assignment(shared: &Shared, route: &TopicRoute) -> Option<BTreeSet<MessageQueue>> {
    let mut queues = route.read_queues();
    queues.sort();
    if shared.model == MessageModel::Broadcasting {
        return Some(queues.into_iter().collect());
    }
    // Any master's list will do: every member heartbeats every node.
    let masters: Vec<String> = route.groups.iter().filter_map(|g| g.master.clone()).collect();
    for addr in masters {
        let Ok(mut b) = shared.client.broker(&addr) else {
            continue;
        };
        let req = pb::GetConsumersRequest {
            consumer_group: shared.consumer_group.clone(),
        };
        if let Ok(reply) = b
            .get_consumers(shared.client.request(req, Duration::from_secs(2)))
            .await
        {
            let mut members = reply.into_inner().client_ids;
            members.sort();
            if !members.contains(&shared.client_id) {
                return None;
            }
            return Some(
                allocate_averagely(&queues, &members, &shared.client_id)
                    .into_iter()
                    .collect(),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(n: u32) -> Vec<MessageQueue> {
        (0..n)
            .map(|q| MessageQueue {
                group: "broker-a".into(),
                queue_id: q,
            })
            .collect()
    }

    #[test]
    fn average_allocation_covers_every_queue_once() {
        for (nq, nm) in [(8, 3), (3, 3), (2, 3), (7, 2), (1, 1), (16, 5)] {
            let members: Vec<String> = (0..nm).map(|i| format!("c{i}")).collect();
            let mut seen = Vec::new();
            for m in &members {
                seen.extend(allocate_averagely(&queues(nq), &members, m));
            }
            seen.sort();
            assert_eq!(seen, queues(nq), "{nq} queues over {nm} members");
        }
        let members = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(allocate_averagely(&queues(8), &members, "a").len(), 3);
        assert_eq!(allocate_averagely(&queues(8), &members, "c").len(), 2);
        assert!(allocate_averagely(&queues(8), &members, "stranger").is_empty());
    }
}
