//! TLS on the client-facing ports: a NameServer and a group serving TLS only, with Raft on ports
//! of their own. A client that trusts the cluster's CA sends and reads; a plaintext client and a
//! client that trusts another CA get nothing; with client certificates required, a client
//! without one or with one from another CA is refused in the handshake; and a renewed
//! certificate is taken up from its files without a restart.

use std::path::Path;
use std::time::Duration;

use raftmq_client::{Admin, Client, ClientConfig, Message, Producer};
use raftmq_common::security::SecurityConfig;
use raftmq_common::tls::ClientFiles;
use raftmq_testkit::certs::{write, TestCa as Ca};
use raftmq_testkit::{wait_until, Group, ELECTION};

/// Free ports for the nodes' Raft traffic (TLS needs Raft off the client port).
async fn raft_addrs(n: usize) -> Vec<String> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    held.iter().map(|l| l.local_addr().unwrap().to_string()).collect()
}

/// A TLS NameServer and a TLS group with a certificate from `ca` in `dir` (`node.pem`,
/// `node.key`; the CA in `ca.pem`). The nodes trust the CAs of `trust` when they call each
/// other; `mutual` asks clients for certificates signed by `ca`.
async fn secured_cluster(dir: &Path, ca: &Ca, trust: &[&Ca], mutual: bool) -> (raftmq_namesrv::NameServer, Group) {
    let (cert, key) = ca.leaf("raftmq node");
    let bundle: String = trust.iter().map(|c| c.pem.as_str()).collect();
    let security = SecurityConfig {
        tls_cert_file: Some(write(dir, "node.pem", &cert)),
        tls_key_file: Some(write(dir, "node.key", &key)),
        tls_ca_file: Some(write(dir, "trust.pem", &bundle)),
        tls_client_ca_file: mutual.then(|| write(dir, "ca.pem", &ca.pem)),
        ..Default::default()
    };
    write(dir, "ca.pem", &ca.pem);
    let namesrv = raftmq_namesrv::NameServer::start(&raftmq_namesrv::NamesrvConfig {
        listen: "127.0.0.1:0".into(),
        metrics_addr: "127.0.0.1:0".into(),
        scan_interval_ms: 100,
        security: security.clone(),
        ..Default::default()
    })
    .await
    .expect("a TLS NameServer starts");
    let raft = raft_addrs(3).await;
    let group = Group::start_named(3, "broker-a", &namesrv.addr().to_string(), |c| {
        for (m, addr) in c.members.iter_mut().zip(&raft) {
            m.raft_addr = addr.clone();
        }
        c.security = security.clone();
    })
    .await;
    group.wait_for_master(ELECTION).await;
    (namesrv, group)
}

fn client(namesrv: &str, tls: Option<ClientFiles>) -> Client {
    let mut config = ClientConfig::new([namesrv.to_owned()]);
    config.request_timeout = Duration::from_secs(2);
    config.send_timeout = Duration::from_secs(2);
    config.watch_routes = false;
    config.tls = tls.map(|f| f.load().expect("client TLS files"));
    Client::new(config).unwrap()
}

fn trusting(ca: &Path) -> Option<ClientFiles> {
    Some(ClientFiles {
        ca: ca.to_owned(),
        cert: None,
        key: None,
    })
}

/// Creates topic T and sends one message; the error's text on failure.
async fn round_trip(client: &Client) -> Result<(), String> {
    let admin = Admin::new(client.clone());
    admin
        .upsert_topic("T", 1, 1, raftmq_proto::Permission::ReadWrite, &[])
        .await
        .map_err(|e| e.to_string())?;
    let producer = Producer::new(client.clone());
    producer
        .send(Message::new("T", b"over TLS".to_vec()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_trust_the_ca_work_and_others_get_nothing_and_a_renewed_certificate_is_taken_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = Ca::new("raftmq test CA");
    let other = Ca::new("another CA");
    // The nodes trust both CAs, as during a CA rotation: each keeps reaching the others while
    // their certificates change one by one.
    let (namesrv, group) = secured_cluster(dir.path(), &ca1, &[&ca1, &other], false).await;
    let ns = namesrv.addr().to_string();

    round_trip(&client(&ns, trusting(&dir.path().join("ca.pem"))))
        .await
        .expect("a client that trusts the CA sends over TLS");
    // Plaintext gets no answer from a TLS port, and neither does a client that trusts another CA.
    let plain = round_trip(&client(&ns, None)).await.unwrap_err();
    assert!(plain.contains("UNAVAILABLE") || plain.contains("TIMEOUT"), "{plain}");
    let other_ca = write(dir.path(), "other-ca.pem", &other.pem);
    let untrusted = round_trip(&client(&ns, trusting(&other_ca))).await.unwrap_err();
    assert!(
        untrusted.contains("UNAVAILABLE") || untrusted.contains("TIMEOUT"),
        "{untrusted}"
    );

    // Renewal: the same files now hold a certificate from the other CA. Every node (and the
    // NameServer) takes it up within a few seconds, without a restart.
    let (cert, key) = other.leaf("renewed");
    write(dir.path(), "node.key", &key);
    write(dir.path(), "node.pem", &cert);
    wait_until("clients of the new CA are served", Duration::from_secs(20), || async {
        round_trip(&client(&ns, trusting(&other_ca))).await.ok()
    })
    .await;
    assert!(
        round_trip(&client(&ns, trusting(&dir.path().join("ca.pem"))))
            .await
            .is_err(),
        "the old certificate is still served"
    );
    group.shutdown().await;
    namesrv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_certificates_required_a_client_without_one_or_with_an_untrusted_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = Ca::new("raftmq test CA");
    let (namesrv, group) = secured_cluster(dir.path(), &ca1, &[&ca1], true).await;
    let ns = namesrv.addr().to_string();
    let ca_file = dir.path().join("ca.pem");

    // The nodes show their own certificates to each other: the group registered and routes.
    let (cert, key) = ca1.leaf("app");
    let with_cert = ClientFiles {
        ca: ca_file.clone(),
        cert: Some(write(dir.path(), "app.pem", &cert)),
        key: Some(write(dir.path(), "app.key", &key)),
    };
    round_trip(&client(&ns, Some(with_cert)))
        .await
        .expect("a client with a certificate from the CA is served");

    let none = round_trip(&client(&ns, trusting(&ca_file))).await.unwrap_err();
    assert!(none.contains("UNAVAILABLE") || none.contains("TIMEOUT"), "{none}");
    let other = Ca::new("another CA");
    let (cert, key) = other.leaf("intruder");
    let foreign = ClientFiles {
        ca: ca_file.clone(),
        cert: Some(write(dir.path(), "intruder.pem", &cert)),
        key: Some(write(dir.path(), "intruder.key", &key)),
    };
    let refused = round_trip(&client(&ns, Some(foreign))).await.unwrap_err();
    assert!(
        refused.contains("UNAVAILABLE") || refused.contains("TIMEOUT"),
        "{refused}"
    );
    // Both handshakes were refused at the NameServer, the clients' first stop, and counted.
    let metrics = raftmq_testkit::scrape(namesrv.metrics_addr().expect("metrics on")).await;
    let counted = raftmq_testkit::sample(&metrics, "raftmq_namesrv_tls_refusals_total").unwrap_or(0.0);
    assert!(counted >= 2.0, "{metrics}");
    group.shutdown().await;
    namesrv.shutdown().await.unwrap();
}
