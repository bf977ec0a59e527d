//! Consumer group membership, as RocketMQ's ConsumerManager: kept in memory on each node from
//! client heartbeats, never replicated. After a failover clients heartbeat the new master within
//! one interval, and every member computes the same rebalance from the same sorted list.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One member of a consumer group: its subscribed topics and when it last heartbeated.
type Member = (BTreeSet<String>, Instant);

#[derive(Debug)]
pub struct Consumers {
    expiry: Duration,
    /// group -> client id -> member
    groups: Mutex<BTreeMap<String, BTreeMap<String, Member>>>,
}

impl Consumers {
    pub fn new(expiry: Duration) -> Self {
        Consumers {
            expiry,
            groups: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn heartbeat(&self, group: &str, client_id: &str, topics: &[String], now: Instant) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups
            .entry(group.to_owned())
            .or_default()
            .insert(client_id.to_owned(), (topics.iter().cloned().collect(), now));
    }

    pub fn unregister(&self, group: &str, client_id: &str) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(members) = groups.get_mut(group) {
            members.remove(client_id);
            if members.is_empty() {
                groups.remove(group);
            }
        }
    }

    /// How many live members each group has (raftmq's own consumers; RocketMQ 5 clients do not
    /// heartbeat here).
    pub fn counts(&self, now: Instant) -> Vec<(String, usize)> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups
            .iter()
            .map(|(g, members)| {
                let live = members
                    .values()
                    .filter(|(_, seen)| now.saturating_duration_since(*seen) <= self.expiry)
                    .count();
                (g.clone(), live)
            })
            .collect()
    }

    /// The live members of a group, sorted.
    pub fn members(&self, group: &str, now: Instant) -> Vec<String> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let Some(members) = groups.get_mut(group) else {
            return Vec::new();
        };
        members.retain(|_, (_, seen)| now.saturating_duration_since(*seen) <= self.expiry);
        members.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_sorted_and_expire() {
        let c = Consumers::new(Duration::from_secs(10));
        let t0 = Instant::now();
        c.heartbeat("g", "b", &["T".into()], t0);
        c.heartbeat("g", "a", &["T".into()], t0 + Duration::from_secs(5));
        assert_eq!(c.members("g", t0 + Duration::from_secs(6)), ["a", "b"]);
        assert_eq!(c.members("g", t0 + Duration::from_secs(12)), ["a"]);
        c.unregister("g", "a");
        assert!(c.members("g", t0).is_empty());
    }
}
