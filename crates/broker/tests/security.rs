//! A secured group (`auth = true`, a cluster secret): requests without valid credentials are
//! refused with UNAUTHENTICATED, requests beyond the caller's rights with FORBIDDEN, each
//! counted and changing nothing; users live in the replicated metadata, so slaves and restarted
//! nodes enforce them too; and Raft traffic from a node without the secret is refused before
//! anything is written.

use std::path::Path;
use std::time::{Duration, SystemTime};

use raftmq_common::auth::{right, ClusterSecret, Credentials};
use raftmq_common::security::SecurityConfig;
use raftmq_common::ErrorCode;
use raftmq_proto as pb;
use raftmq_testkit::{code, message, sample, scrape, send_request, topic, Group, CATCH_UP, ELECTION};
use tonic::Request;

const ADMIN: (&str, &str) = ("root", "root-secret-0123");

/// Writes the cluster secret and the bootstrap admin's file; returns the `[security]` table.
fn secured(dir: &Path, secret: &str) -> SecurityConfig {
    let secret_file = dir.join("cluster.secret");
    std::fs::write(&secret_file, secret).unwrap();
    let admin_file = dir.join("admin.toml");
    std::fs::write(
        &admin_file,
        format!("access-key = \"{}\"\nsecret-key = \"{}\"\n", ADMIN.0, ADMIN.1),
    )
    .unwrap();
    SecurityConfig {
        cluster_secret_file: Some(secret_file),
        auth: true,
        admin_credentials_file: Some(admin_file),
        clock_skew_secs: 60,
        ..Default::default()
    }
}

/// A request signed by `who` as of `at`.
fn signed_at<T>(message: T, who: &Credentials, at: SystemTime) -> Request<T> {
    let mut r = Request::new(message);
    let (date_time, authorization) = who.sign(at);
    r.metadata_mut().insert("x-mq-date-time", date_time.parse().unwrap());
    r.metadata_mut().insert("authorization", authorization.parse().unwrap());
    r
}

fn signed<T>(message: T, who: &Credentials) -> Request<T> {
    signed_at(message, who, SystemTime::now())
}

fn admin() -> Credentials {
    Credentials::new(ADMIN.0, ADMIN.1)
}

fn refused(result: Result<impl std::fmt::Debug, tonic::Status>, want: ErrorCode, words: &str) {
    let status = result.expect_err("refused");
    assert_eq!(code(&status), Some(want), "{status:?}");
    assert!(
        status.message().contains(words),
        "{words:?} not in {:?}",
        status.message()
    );
}

/// The UNAUTHENTICATED refusals node `id` has counted from `caller` (`client` or `peer`).
async fn unauthenticated(group: &Group, id: u64, caller: &str) -> Option<f64> {
    let metrics = scrape(group.metrics_addr(id)).await;
    let series = format!(r#"raftmq_broker_auth_refusals_total{{code="UNAUTHENTICATED",caller="{caller}"}}"#);
    sample(&metrics, &series)
}

async fn start(secret: &str) -> (Group, u64, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let security = secured(keys.path(), secret);
    let group = Group::start(3, |c| c.security = security.clone()).await;
    let master = group.wait_for_master(ELECTION).await;
    group
        .client(master)
        .await
        .upsert_topic(signed(
            pb::UpsertTopicRequest {
                topic: Some(topic("T", 1)),
            },
            &admin(),
        ))
        .await
        .expect("the bootstrap admin creates a topic");
    (group, master, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_valid_credentials_are_refused_counted_and_change_nothing() {
    let (group, master, _keys) = start("a-cluster-secret-of-some-length").await;
    let mut c = group.client(master).await;
    let send = || send_request("T", 0, vec![message("x", "")]);

    refused(c.send(send()).await, ErrorCode::Unauthenticated, "not signed");
    let stranger = Credentials::new("nobody", "whatever-secret");
    refused(
        c.send(signed(send(), &stranger)).await,
        ErrorCode::Unauthenticated,
        "unknown access key",
    );
    let wrong_key = Credentials::new(ADMIN.0, "not-the-secret");
    refused(
        c.send(signed(send(), &wrong_key)).await,
        ErrorCode::Unauthenticated,
        "does not match",
    );
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    refused(
        c.send(signed_at(send(), &admin(), an_hour_ago)).await,
        ErrorCode::Unauthenticated,
        "away from this node's clock",
    );
    let mut garbled = signed(send(), &admin());
    garbled
        .metadata_mut()
        .insert("authorization", "MQv2-HMAC-SHA1 Credential=root".parse().unwrap());
    refused(
        c.send(garbled).await,
        ErrorCode::Unauthenticated,
        "must sign x-mq-date-time",
    );
    // The RocketMQ 5 protocol refuses the same way, with its own code.
    let mut v5 = raftmq_proto::rocketmq::messaging_service_client::MessagingServiceClient::connect(format!(
        "http://{}",
        group.addr(master)
    ))
    .await
    .unwrap();
    let reply = v5
        .query_route(raftmq_proto::rocketmq::QueryRouteRequest {
            topic: Some(raftmq_proto::rocketmq::Resource {
                name: "T".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = reply.status.unwrap();
    assert_eq!(
        status.code,
        raftmq_proto::rocketmq::Code::Unauthorized as i32,
        "{status:?}"
    );
    assert!(status.message.contains("UNAUTHENTICATED"), "{status:?}");

    // Nothing was stored.
    let offsets = c
        .get_queue_offsets(signed(
            pb::QueueOffsetsRequest {
                topic: "T".into(),
                queue_id: 0,
            },
            &admin(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offsets.max_offset, 0);
    assert_eq!(unauthenticated(&group, master, "client").await, Some(6.0));
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_get_the_rights_they_were_given_on_every_node_and_after_a_restart() {
    let (mut group, master, _keys) = start("a-cluster-secret-of-some-length").await;
    let mut c = group.client(master).await;
    let app = Credentials::new("orders-app", "app-secret-123");
    let reader = Credentials::new("billing", "billing-secret-1");
    let grants = |grants: Vec<(&str, u8)>| -> Vec<pb::Grant> {
        grants
            .into_iter()
            .map(|(p, r)| pb::Grant {
                pattern: p.into(),
                r#pub: r & right::PUB != 0,
                sub: r & right::SUB != 0,
            })
            .collect()
    };
    let user = |who: &Credentials, topics: Vec<(&str, u8)>, groups: Vec<(&str, u8)>| pb::User {
        access_key: who.access_key.clone(),
        secret_key: who.secret_key.clone(),
        admin: false,
        topics: grants(topics),
        groups: grants(groups),
    };
    c.put_user(signed(user(&app, vec![("T", right::PUB)], vec![]), &admin()))
        .await
        .expect("admin adds a publisher");
    c.put_user(signed(
        user(&reader, vec![("T*", right::SUB)], vec![("billing-*", right::SUB)]),
        &admin(),
    ))
    .await
    .expect("admin adds a consumer");
    // Only an admin manages users; the list never shows secret keys.
    refused(
        c.put_user(signed(user(&app, vec![("*", right::PUB | right::SUB)], vec![]), &app))
            .await,
        ErrorCode::Forbidden,
        "lacks admin",
    );
    let listed = c
        .list_users(signed(pb::ListUsersRequest {}, &admin()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.users.len(), 2);
    assert!(listed.users.iter().all(|u| u.secret_key.is_empty()));

    c.send(signed(send_request("T", 0, vec![message("by app", "")]), &app))
        .await
        .expect("app publishes to T");
    refused(
        c.send(signed(send_request("T", 0, vec![message("x", "")]), &reader))
            .await,
        ErrorCode::Forbidden,
        "user \"billing\" lacks pub on topic \"T\"",
    );
    let pull = || pb::PullRequest {
        topic: "T".into(),
        queue_id: 0,
        offset: 0,
        max_messages: 10,
        ..Default::default()
    };
    refused(
        c.pull(signed(pull(), &app)).await,
        ErrorCode::Forbidden,
        "lacks sub on topic",
    );
    refused(
        c.upsert_topic(signed(
            pb::UpsertTopicRequest {
                topic: Some(topic("U", 1)),
            },
            &app,
        ))
        .await,
        ErrorCode::Forbidden,
        "UpsertTopic refused: user \"orders-app\" lacks admin",
    );
    let commit = |group: &str| pb::CommitOffsetsRequest {
        consumer_group: group.into(),
        offsets: vec![pb::OffsetEntry {
            topic: "T".into(),
            queue_id: 0,
            offset: 1,
        }],
    };
    refused(
        c.commit_offsets(signed(commit("other"), &reader)).await,
        ErrorCode::Forbidden,
        "lacks sub on group \"other\"",
    );
    c.commit_offsets(signed(commit("billing-eu"), &reader))
        .await
        .expect("the consumer commits for its group");

    // A slave holds the same users: it serves the consumer and refuses the publisher.
    group.wait_caught_up(master, CATCH_UP).await;
    let slave = group.ids().into_iter().find(|id| *id != master).unwrap();
    let mut s = group.client(slave).await;
    let pulled = s
        .pull(signed(pull(), &reader))
        .await
        .expect("reader pulls from a slave")
        .into_inner();
    assert_eq!(pulled.messages[0].body, &b"by app"[..]);
    refused(s.pull(signed(pull(), &app)).await, ErrorCode::Forbidden, "lacks sub");

    // Users survive a restart of every node.
    for id in group.ids() {
        group.stop(id).await;
    }
    for id in group.ids() {
        group.restart(id).await.expect("restart");
    }
    let master = group.wait_for_master(ELECTION).await;
    let mut c = group.client(master).await;
    c.send(signed(send_request("T", 0, vec![message("after restart", "")]), &app))
        .await
        .expect("app still publishes after a restart");

    // A deleted user is unknown at once.
    c.delete_user(signed(
        pb::DeleteUserRequest {
            access_key: app.access_key.clone(),
        },
        &admin(),
    ))
    .await
    .unwrap();
    refused(
        c.send(signed(send_request("T", 0, vec![message("x", "")]), &app)).await,
        ErrorCode::Unauthenticated,
        "unknown access key \"orders-app\"",
    );
    assert_eq!(unauthenticated(&group, master, "client").await, Some(1.0));
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_traffic_without_the_cluster_secret_is_refused_before_anything_is_written() {
    use openraft::raft::AppendEntriesRequest;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    use raftmq_broker::append_link::{connect, Hello};
    use raftmq_store::TypeConfig;

    let (group, master, _keys) = start("a-cluster-secret-of-some-length").await;
    let slave = group.ids().into_iter().find(|id| *id != master).unwrap();
    group.wait_caught_up(master, CATCH_UP).await;
    let before = group.node(slave).raft().metrics().borrow().clone();

    // The append link: a hello without a proof, and one proved with another secret.
    let hello = Hello {
        group: "broker-a".into(),
        from: master,
        target: slave,
        proof: Vec::new(),
    };
    let timeout = Duration::from_secs(5);
    let other = ClusterSecret::new(b"another-cluster-secret-here").unwrap();
    for secret in [None, Some(&other)] {
        let err = connect(&group.addr(slave), &hello, secret, timeout).await.unwrap_err();
        assert!(err.to_string().contains("cluster-secret proof"), "{err}");
    }

    // gRPC: an AppendEntries of a higher term with an entry, unproved or proved wrongly.
    let term = before.current_term + 5;
    let forged: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
        vote: Vote::new_committed(term, master),
        prev_log_id: before.last_applied,
        entries: vec![Entry {
            log_id: LogId::new(
                CommittedLeaderId::new(term, master),
                before.last_log_index.unwrap_or(0) + 1,
            ),
            payload: EntryPayload::Blank,
        }],
        leader_commit: None,
    };
    let envelope = pb::RaftEnvelope {
        group: "broker-a".into(),
        from_node_id: master,
        target_node_id: slave,
        payload: raftmq_broker::wire::encode(&forged).unwrap().into(),
        transfer_from: 0,
    };
    let mut raft = pb::raft_transport_client::RaftTransportClient::connect(format!("http://{}", group.addr(slave)))
        .await
        .unwrap();
    refused(
        raft.append_entries(envelope.clone()).await,
        ErrorCode::Unauthenticated,
        "no cluster-secret proof",
    );
    let mut wrong = Request::new(envelope.clone());
    let proof = other.sign(raftmq_common::time::now_ms() as u64, &[b"AppendEntries"]);
    wrong.metadata_mut().insert("x-raftmq-peer", proof.parse().unwrap());
    refused(
        raft.append_entries(wrong).await,
        ErrorCode::Unauthenticated,
        "does not match",
    );
    refused(
        raft.vote(envelope.clone()).await,
        ErrorCode::Unauthenticated,
        "no cluster-secret proof",
    );
    // With the secret, but from a node that is not a member: refused too, on both paths.
    let secret = ClusterSecret::new(b"a-cluster-secret-of-some-length").unwrap();
    let outsider = pb::RaftEnvelope {
        from_node_id: 9,
        ..envelope
    };
    let mut proved = Request::new(outsider.clone());
    let proof = raftmq_broker::network::proof_parts("AppendEntries", &outsider, |parts| {
        secret.sign(raftmq_common::time::now_ms() as u64, parts)
    });
    proved.metadata_mut().insert("x-raftmq-peer", proof.parse().unwrap());
    refused(
        raft.append_entries(proved).await,
        ErrorCode::Unauthenticated,
        "node 9 is not a member",
    );
    let hello9 = Hello {
        from: 9,
        ..hello.clone()
    };
    let err = connect(&group.addr(slave), &hello9, Some(&secret), timeout)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a member"), "{err}");

    // Nothing reached the slave's log or vote, and the group goes on under the same master.
    let after = group.node(slave).raft().metrics().borrow().clone();
    assert_eq!(after.current_term, before.current_term);
    assert!(after.last_log_index <= group.node(master).raft().metrics().borrow().last_log_index);
    assert_eq!(group.wait_for_master(ELECTION).await, master);
    group
        .client(master)
        .await
        .send(signed(send_request("T", 0, vec![message("still fine", "")]), &admin()))
        .await
        .expect("the group still commits");
    assert_eq!(unauthenticated(&group, slave, "peer").await, Some(7.0));
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nameserver_with_the_secret_routes_only_brokers_that_prove_it() {
    let keys = tempfile::tempdir().unwrap();
    let security = secured(keys.path(), "a-cluster-secret-of-some-length");
    let namesrv = raftmq_namesrv::NameServer::start(&raftmq_namesrv::NamesrvConfig {
        listen: "127.0.0.1:0".into(),
        scan_interval_ms: 100,
        security: SecurityConfig {
            auth: false,
            admin_credentials_file: None,
            ..security.clone()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let addr = namesrv.addr().to_string();
    // Brokers with the secret register; a forged heartbeat is refused.
    let group = Group::start_named(3, "broker-a", &addr, |c| c.security = security.clone()).await;
    group.wait_for_master(ELECTION).await;
    let mut ns = pb::name_server_client::NameServerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    raftmq_testkit::wait_until("the group is routed", ELECTION, || {
        let mut ns = ns.clone();
        async move {
            let info = ns
                .get_cluster_info(pb::GetClusterInfoRequest {})
                .await
                .ok()?
                .into_inner();
            info.groups
                .iter()
                .any(|g| g.group == "broker-a" && !g.master_addr.is_empty())
                .then_some(())
        }
    })
    .await;
    let forged = pb::BrokerHeartbeat {
        cluster: "DefaultCluster".into(),
        group: "broker-evil".into(),
        node_id: 1,
        client_addr: "127.0.0.1:1".into(),
        role: pb::Role::Master as i32,
        term: 99,
        leader_id: 1,
        ..Default::default()
    };
    refused(
        ns.heartbeat(forged).await,
        ErrorCode::Unauthenticated,
        "no cluster-secret proof",
    );
    let info = ns
        .get_cluster_info(pb::GetClusterInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.groups.iter().all(|g| g.group != "broker-evil"), "{info:?}");
    group.shutdown().await;
    namesrv.shutdown().await.unwrap();
}
