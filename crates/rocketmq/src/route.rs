//! raftmq routes as RocketMQ 5 message queues and assignments.
//!
//! Each broker group is one RocketMQ broker with id 0 (the one clients write to). Every live node
//! of the group serves it, and a node that is not the master forwards writes, so the group's
//! queues are spread over its nodes, the master first: queue `i` names node `i mod n` as its
//! endpoint. A client that cannot reach one node retries on the next queue, which names
//! another, so it rides through a failover without waiting for its route refresh.
//!
//! Why not every node in one endpoint list: the gRPC C core (the Python client, among others)
//! sends such a multi-address target as the HTTP/2 `:authority` ("a:1,b:2"), which is not a
//! valid authority, and the HTTP/2 server raftmq uses refuses the request with a protocol error.

use std::net::IpAddr;

use raftmq_proto::rocketmq as v2;
use raftmq_proto::v1;

/// RocketMQ permission bits as raftmq stores them.
const READ: i32 = 4;
const WRITE: i32 = 2;

/// Endpoints of `host:port` addresses: IPv4 or IPv6 when every host is one, otherwise a single
/// domain name (clients accept only one address with that scheme).
pub fn endpoints(addrs: &[String]) -> Option<v2::Endpoints> {
    let parsed: Vec<(String, i32)> = addrs
        .iter()
        .filter_map(|a| {
            let (host, port) = a.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect();
    let first = parsed.first()?;
    let kind = |h: &str| match h.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => v2::AddressScheme::IPv4,
        Ok(IpAddr::V6(_)) => v2::AddressScheme::IPv6,
        Err(_) => v2::AddressScheme::DomainName,
    };
    let scheme = kind(&first.0);
    let addresses: Vec<v2::Address> =
        if scheme == v2::AddressScheme::DomainName || parsed.iter().any(|(h, _)| kind(h) != scheme) {
            vec![v2::Address {
                host: first.0.clone(),
                port: first.1,
            }]
        } else {
            parsed
                .iter()
                .map(|(host, port)| v2::Address {
                    host: host.clone(),
                    port: *port,
                })
                .collect()
        };
    Some(v2::Endpoints {
        scheme: scheme as i32,
        addresses,
    })
}

/// The live nodes of a group, the master first.
pub fn nodes(group: &v1::GroupData) -> Vec<String> {
    let mut addrs = Vec::new();
    if !group.master_addr.is_empty() {
        addrs.push(group.master_addr.clone());
    }
    addrs.extend(group.slaves.iter().map(|s| s.addr.clone()).filter(|a| !a.is_empty()));
    addrs
}

/// The group's broker as queue `queue_id` names it: one of its nodes as the endpoint.
pub fn broker(group: &v1::GroupData, queue_id: u32) -> Option<v2::Broker> {
    let nodes = nodes(group);
    let node = nodes.get(queue_id as usize % nodes.len().max(1))?;
    Some(v2::Broker {
        name: group.group.clone(),
        id: 0,
        endpoints: Some(endpoints(std::slice::from_ref(node))?),
    })
}

fn permission(bits: i32) -> v2::Permission {
    match (bits & READ != 0, bits & WRITE != 0) {
        (true, true) => v2::Permission::ReadWrite,
        (true, false) => v2::Permission::Read,
        (false, true) => v2::Permission::Write,
        (false, false) => v2::Permission::None,
    }
}

/// What raftmq accepts: normal, FIFO, delayed and transactional messages.
pub fn accepted_types() -> Vec<i32> {
    vec![
        v2::MessageType::Normal as i32,
        v2::MessageType::Fifo as i32,
        v2::MessageType::Delay as i32,
        v2::MessageType::Transaction as i32,
    ]
}

/// The message queues of a route; `topic` is echoed back as the client named it.
pub fn message_queues(route: &v1::TopicRoute, topic: &v2::Resource) -> Vec<v2::MessageQueue> {
    let mut out = Vec::new();
    for q in &route.queues {
        let Some(group) = route.groups.iter().find(|g| g.group == q.group) else {
            continue;
        };
        for id in 0..q.write_queues.max(q.read_queues) {
            let Some(broker) = broker(group, id) else { continue };
            let mut bits = q.permission;
            if id >= q.read_queues {
                bits &= !READ;
            }
            if id >= q.write_queues {
                bits &= !WRITE;
            }
            out.push(v2::MessageQueue {
                topic: Some(topic.clone()),
                id: id as i32,
                permission: permission(bits) as i32,
                broker: Some(broker),
                accept_message_types: accepted_types(),
            });
        }
    }
    out
}

/// A push consumer's assignments: every readable queue. Receives are POP receives, so every
/// member of a consumer group can poll every queue and still gets each message alone.
pub fn assignments(route: &v1::TopicRoute, topic: &v2::Resource) -> Vec<v2::Assignment> {
    message_queues(route, topic)
        .into_iter()
        .filter(|q| {
            matches!(
                v2::Permission::try_from(q.permission),
                Ok(v2::Permission::Read | v2::Permission::ReadWrite)
            )
        })
        .map(|q| v2::Assignment { message_queue: Some(q) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> v1::TopicRoute {
        v1::TopicRoute {
            topic: "ns%T".into(),
            queues: vec![v1::QueueData {
                group: "broker-a".into(),
                write_queues: 2,
                read_queues: 3,
                permission: 6,
            }],
            groups: vec![v1::GroupData {
                cluster: "c".into(),
                group: "broker-a".into(),
                master_addr: "127.0.0.1:10912".into(),
                master_node_id: 2,
                term: 3,
                slaves: vec![v1::NodeAddr {
                    node_id: 1,
                    addr: "127.0.0.1:10911".into(),
                }],
            }],
        }
    }

    #[test]
    fn queues_spread_over_every_node_of_broker_id_zero() {
        let topic = v2::Resource {
            resource_namespace: "ns".into(),
            name: "T".into(),
        };
        let queues = message_queues(&route(), &topic);
        assert_eq!(queues.len(), 3);
        let endpoint = |i: usize| {
            let b = queues[i].broker.as_ref().unwrap();
            assert_eq!((b.name.as_str(), b.id), ("broker-a", 0));
            let e = b.endpoints.as_ref().unwrap();
            assert_eq!(e.scheme, v2::AddressScheme::IPv4 as i32);
            assert_eq!(e.addresses.len(), 1);
            e.addresses[0].port
        };
        assert_eq!(
            (endpoint(0), endpoint(1), endpoint(2)),
            (10912, 10911, 10912),
            "queues spread over the nodes, the master first"
        );
        assert_eq!(queues[0].topic.as_ref(), Some(&topic));
        assert_eq!(queues[0].permission, v2::Permission::ReadWrite as i32);
        assert_eq!(
            queues[2].permission,
            v2::Permission::Read as i32,
            "queue 2 is read-only"
        );
        assert_eq!(
            queues[0].accept_message_types,
            vec![
                v2::MessageType::Normal as i32,
                v2::MessageType::Fifo as i32,
                v2::MessageType::Delay as i32,
                v2::MessageType::Transaction as i32
            ]
        );
        let a = assignments(&route(), &topic);
        assert_eq!(a.len(), 3, "every readable queue");
    }

    #[test]
    fn domain_names_give_one_address() {
        let e = endpoints(&["a.example:1".into(), "b.example:2".into()]).unwrap();
        assert_eq!(e.scheme, v2::AddressScheme::DomainName as i32);
        assert_eq!(e.addresses.len(), 1);
        assert!(endpoints(&[]).is_none());
    }
}
