//! What the client's test files share: a client of a running cluster with a topic created in
//! every broker group and routed.
// Each test file uses a part of it.
#![allow(dead_code)]

use std::time::Duration;

use raftmq_client::{Admin, Client, ClientConfig};
use raftmq_proto as pb;
use raftmq_testkit::wait_until;

/// A client of the NameServer `namesrv`, once `topic` (with `queues` queues) is created and
/// routed in `groups` broker groups.
pub async fn client_with_topic(namesrv: &str, topic: &str, queues: u32, groups: usize) -> (Client, Admin) {
    let client = Client::new(ClientConfig::new([namesrv.to_owned()])).expect("client");
    let admin = Admin::new(client.clone());
    wait_until(
        &format!("topic {topic} created and routed in {groups} groups"),
        Duration::from_secs(10),
        || async {
            admin
                .upsert_topic(topic, queues, queues, pb::Permission::ReadWrite, &[])
                .await
                .ok()?;
            (client.refresh_route(topic).await.ok()?.groups.len() >= groups).then_some(())
        },
    )
    .await;
    (client, admin)
}
