use super::*;

fn topic(name: &str, queues: u32, permission: Permission) -> TopicConfig {
    TopicConfig {
        name: name.into(),
        write_queues: queues,
        read_queues: queues,
        permission: permission as i32,
    }
}

fn hb(group: &str, node: u64, role: Role, term: u64, leader: u64) -> BrokerHeartbeat {
    BrokerHeartbeat {
        cluster: "DefaultCluster".into(),
        group: group.into(),
        node_id: node,
        client_addr: format!("127.0.0.1:{}", 10000 + node),
        role: role as i32,
        term,
        leader_id: leader,
        applied_index: 7,
        topics: None,
        members: Vec::new(),
    }
}

fn master_hb(group: &str, node: u64, term: u64, topics: Vec<TopicConfig>) -> BrokerHeartbeat {
    BrokerHeartbeat {
        topics: Some(raftmq_proto::TopicTable { topics }),
        ..hb(group, node, Role::Master, term, node)
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A group of three: node 1 master at `term`, nodes 2 and 3 following it.
fn group_of_three(t: &mut RouteTable, group: &str, term: u64, topics: Vec<TopicConfig>, now: Instant) {
    t.heartbeat(&master_hb(group, 1, term, topics), now);
    t.heartbeat(&hb(group, 2, Role::Slave, term, 1), now);
    t.heartbeat(&hb(group, 3, Role::Slave, term, 1), now);
}

#[test]
fn register_makes_a_topic_routable() {
    let mut t = RouteTable::new();
    let now = Instant::now();
    let changed = t.heartbeat(
        &master_hb("broker-a", 1, 3, vec![topic("T", 4, Permission::ReadWrite)]),
        now,
    );
    assert_eq!(changed, set(&["T"]));
    t.heartbeat(&hb("broker-a", 2, Role::Slave, 3, 1), now);

    let route = t.route("T").expect("route");
    assert_eq!(route.queues.len(), 1);
    assert_eq!(route.queues[0].group, "broker-a");
    assert_eq!(route.queues[0].write_queues, 4);
    let g = &route.groups[0];
    assert_eq!(g.master_addr, "127.0.0.1:10001");
    assert_eq!(g.master_node_id, 1);
    assert_eq!(g.term, 3);
    assert_eq!(
        g.slaves,
        vec![NodeAddr {
            node_id: 2,
            addr: "127.0.0.1:10002".into()
        }]
    );
    assert!(t.route("unknown").is_none());
    assert_eq!(t.topics(), vec!["T".to_string()]);
}

#[test]
fn a_topic_spread_over_two_groups() {
    let mut t = RouteTable::new();
    let now = Instant::now();
    group_of_three(&mut t, "broker-a", 1, vec![topic("T", 4, Permission::ReadWrite)], now);
    group_of_three(
        &mut t,
        "broker-b",
        1,
        vec![topic("T", 2, Permission::ReadWrite), topic("U", 1, Permission::Read)],
        now,
    );
    let route = t.route("T").unwrap();
    let groups: Vec<_> = route
        .queues
        .iter()
        .map(|q| (q.group.as_str(), q.write_queues))
        .collect();
    assert_eq!(groups, vec![("broker-a", 4), ("broker-b", 2)]);
    assert_eq!(t.topics(), vec!["T".to_string(), "U".to_string()]);
}

#[test]
fn refresh_changes_nothing_when_nothing_changed() {
    let mut t = RouteTable::new();
    let now = Instant::now();
    group_of_three(&mut t, "broker-a", 2, vec![topic("T", 4, Permission::ReadWrite)], now);
    let later = now + Duration::from_secs(1);
    assert!(t
        .heartbeat(
            &master_hb("broker-a", 1, 2, vec![topic("T", 4, Permission::ReadWrite)]),
            later
        )
        .is_empty());
    // An applied index moving on is not a route change either.
    let mut slave = hb("broker-a", 2, Role::Slave, 2, 1);
    slave.applied_index = 99;
    assert!(t.heartbeat(&slave, later).is_empty());
    let info = t.cluster_info(later);
    assert_eq!(info.groups[0].nodes[1].applied_index, 99);
}

#[test]
fn expiry_drops_silent_nodes_then_the_group() {
    let mut t = RouteTable::new();
    let start = Instant::now();
    group_of_three(&mut t, "broker-a", 1, vec![topic("T", 4, Permission::ReadWrite)], start);
    let expiry = Duration::from_secs(5);

    // Within the expiry nothing happens.
    assert!(t.expire(start + Duration::from_secs(5), expiry).is_empty());

    // The slaves keep heartbeating, the master goes silent.
    let t6 = start + Duration::from_secs(6);
    t.heartbeat(&hb("broker-a", 2, Role::Slave, 1, 1), t6);
    t.heartbeat(&hb("broker-a", 3, Role::Slave, 1, 1), t6);
    assert_eq!(t.expire(t6, expiry), set(&["T"]));
    let route = t.route("T").expect("the slaves still serve reads");
    assert_eq!(route.groups[0].master_addr, "");
    assert_eq!(route.groups[0].slaves.len(), 2);

    // Then everybody goes silent: the topic has no route left.
    assert_eq!(t.expire(t6 + Duration::from_secs(6), expiry), set(&["T"]));
    assert!(t.route("T").is_none());
    assert!(t.cluster_info(t6).groups.is_empty());
}

#[test]
fn unregister_removes_at_once() {
    let mut t = RouteTable::new();
    let now = Instant::now();
    group_of_three(&mut t, "broker-a", 1, vec![topic("T", 4, Permission::ReadWrite)], now);
    assert_eq!(t.unregister("broker-a", 3), set(&["T"]));
    assert_eq!(t.route("T").unwrap().groups[0].slaves.len(), 1);
    assert!(t.unregister("broker-a", 3).is_empty(), "unknown node");
    assert!(t.unregister("nope", 1).is_empty(), "unknown group");
}

#[test]
fn higher_term_wins_a_master_conflict() {
    let mut t = RouteTable::new();
    let now = Instant::now();
    let topics = vec![topic("T", 4, Permission::ReadWrite)];
    group_of_three(&mut t, "broker-a", 1, topics.clone(), now);

    // Node 2 is elected in term 2 while node 1 is paused and still claims master in term 1.
    let changed = t.heartbeat(&master_hb("broker-a", 2, 2, topics.clone()), now);
    assert_eq!(changed, set(&["T"]));
    let g = &t.route("T").unwrap().groups[0];
    assert_eq!((g.master_node_id, g.term), (2, 2));
    assert!(
        g.slaves.iter().any(|s| s.node_id == 1),
        "the stale master is listed as a slave"
    );

    // The stale master heartbeats again, still claiming term 1: nothing changes.
    assert!(t.heartbeat(&master_hb("broker-a", 1, 1, vec![]), now).is_empty());
    let info = t.cluster_info(now);
    let node1 = &info.groups[0].nodes[0];
    assert_eq!(node1.role, Role::Slave as i32);
    assert_eq!(node1.reported_role, Role::Master as i32);
    // Its (stale) empty topic table was ignored.
    assert!(t.route("T").is_some());
}

#[test]
fn followers_of_a_newer_term_unlist_a_stale_master() {
    let mut t = RouteTable::new();
    let now = Instant::now();
    group_of_three(&mut t, "broker-a", 1, vec![topic("T", 1, Permission::ReadWrite)], now);
    // Node 3 follows a new leader (node 2) in term 2 before node 2's own heartbeat arrives.
    t.heartbeat(&hb("broker-a", 3, Role::Slave, 2, 2), now);
    assert_eq!(
        t.route("T").unwrap().groups[0].master_addr,
        "",
        "node 1 is no longer master"
    );
    // A candidate bumping its term, with no leader, does not unlist a master.
    let mut t2 = RouteTable::new();
    group_of_three(&mut t2, "broker-a", 1, vec![topic("T", 1, Permission::ReadWrite)], now);
    t2.heartbeat(&hb("broker-a", 3, Role::Candidate, 9, 0), now);
    assert_eq!(t2.route("T").unwrap().groups[0].master_node_id, 1);
}

#[test]
fn topic_removal_and_update_come_from_the_master() {
    let mut t = RouteTable::new();
    let now = Instant::now();
    group_of_three(
        &mut t,
        "broker-a",
        1,
        vec![
            topic("T", 4, Permission::ReadWrite),
            topic("U", 4, Permission::ReadWrite),
        ],
        now,
    );

    // A slave's table is ignored.
    let mut slave = hb("broker-a", 2, Role::Slave, 1, 1);
    slave.topics = Some(raftmq_proto::TopicTable { topics: vec![] });
    assert!(t.heartbeat(&slave, now).is_empty());

    // The master deletes U and grows T: only those two changed.
    let changed = t.heartbeat(
        &master_hb("broker-a", 1, 1, vec![topic("T", 8, Permission::ReadWrite)]),
        now,
    );
    assert_eq!(changed, set(&["T", "U"]));
    assert!(t.route("U").is_none());
    assert_eq!(t.route("T").unwrap().queues[0].write_queues, 8);
}

#[test]
fn permission_is_routed() {
    let mut t = RouteTable::new();
    let now = Instant::now();
    group_of_three(&mut t, "broker-a", 1, vec![topic("T", 4, Permission::ReadWrite)], now);
    let changed = t.heartbeat(&master_hb("broker-a", 1, 1, vec![topic("T", 4, Permission::Read)]), now);
    assert_eq!(changed, set(&["T"]));
    let q = &t.route("T").unwrap().queues[0];
    assert!(readable(q.permission));
    assert!(!writable(q.permission));
    assert!(writable(Permission::ReadWrite as i32) && readable(Permission::ReadWrite as i32));
    assert!(writable(Permission::Write as i32) && !readable(Permission::Write as i32));
}

#[test]
fn a_node_changing_address_changes_the_route() {
    let mut t = RouteTable::new();
    let now = Instant::now();
    group_of_three(&mut t, "broker-a", 1, vec![topic("T", 4, Permission::ReadWrite)], now);
    let mut moved = hb("broker-a", 3, Role::Slave, 1, 1);
    moved.client_addr = "127.0.0.1:20003".into();
    assert_eq!(t.heartbeat(&moved, now), set(&["T"]));
    let g = &t.route("T").unwrap().groups[0];
    assert!(g.slaves.iter().any(|s| s.addr == "127.0.0.1:20003"));
}

#[test]
fn a_node_the_masters_membership_does_not_list_is_not_routed() {
    let mut t = RouteTable::new();
    let now = Instant::now();
    group_of_three(&mut t, "broker-a", 2, vec![topic("T", 4, Permission::ReadWrite)], now);
    let slaves = |t: &RouteTable| -> Vec<u64> {
        t.route("T").unwrap().groups[0]
            .slaves
            .iter()
            .map(|s| s.node_id)
            .collect()
    };
    assert_eq!(slaves(&t), [2, 3]);
    // Node 3 is removed: the master's membership no longer lists it.
    let members = BrokerHeartbeat {
        members: vec![1, 2, 4],
        ..master_hb("broker-a", 1, 2, vec![topic("T", 4, Permission::ReadWrite)])
    };
    let changed = t.heartbeat(&members, now);
    assert_eq!(changed, set(&["T"]));
    assert_eq!(slaves(&t), [2]);
    // It may go on heartbeating (it need not know): still not routed. Node 4, added, is.
    t.heartbeat(&hb("broker-a", 3, Role::Slave, 2, 1), now);
    t.heartbeat(&hb("broker-a", 4, Role::Learner, 2, 1), now);
    assert_eq!(slaves(&t), [2, 4]);
}
