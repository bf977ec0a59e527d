//! A broker group's membership: which nodes it has, adding, removing and replacing one, and
//! handing its master role over. Every change runs on the group's master.

use std::time::Duration;

use raftmq_proto as pb;
use raftmq_proto::broker_client::BrokerClient;

use crate::error::{classify, Retry};
use crate::{Admin, Error};

/// A node to add to a broker group.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub node_id: u64,
    pub raft_addr: String,
    pub client_addr: String,
}

/// What a master transfer left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMaster {
    pub node_id: u64,
    pub client_addr: String,
}

impl Admin {
    /// A broker group's membership as its master has it.
    pub async fn membership(&self, group: &str) -> Result<pb::Membership, Error> {
        let timeout = self.client.config().request_timeout;
        self.on_group_master(
            group,
            timeout,
            |mut b, r| async move { b.get_membership(r).await },
            pb::GetMembershipRequest {},
        )
        .await
    }

    /// Adds a node (started with `join = true`) to a broker group: it catches up as a learner
    /// for up to `catch_up`, then becomes a voter.
    pub async fn add_node(&self, group: &str, node: &NodeSpec, catch_up: Duration) -> Result<pb::Membership, Error> {
        let req = pb::AddNodeRequest {
            node_id: node.node_id,
            raft_addr: node.raft_addr.clone(),
            client_addr: node.client_addr.clone(),
            catch_up_timeout_ms: catch_up.as_millis() as u64,
        };
        self.on_group_master(
            group,
            change_timeout(catch_up),
            |mut b, r| async move { b.add_node(r).await },
            req,
        )
        .await
    }

    /// Removes a node from a broker group (not its master: transfer the role first).
    pub async fn remove_node(&self, group: &str, node_id: u64) -> Result<pb::Membership, Error> {
        let req = pb::RemoveNodeRequest { node_id };
        let timeout = change_timeout(Duration::ZERO);
        self.on_group_master(group, timeout, |mut b, r| async move { b.remove_node(r).await }, req)
            .await
    }

    /// Replaces voter `old` of a broker group with a new node (started with `join = true`).
    pub async fn replace_node(
        &self,
        group: &str,
        old: u64,
        node: &NodeSpec,
        catch_up: Duration,
    ) -> Result<pb::Membership, Error> {
        let req = pb::ReplaceNodeRequest {
            old_node_id: old,
            node_id: node.node_id,
            raft_addr: node.raft_addr.clone(),
            client_addr: node.client_addr.clone(),
            catch_up_timeout_ms: catch_up.as_millis() as u64,
        };
        self.on_group_master(
            group,
            change_timeout(catch_up),
            |mut b, r| async move { b.replace_node(r).await },
            req,
        )
        .await
    }

    /// Hands a broker group's master role to node `to`, or to any up-to-date voter.
    pub async fn transfer_master(&self, group: &str, to: Option<u64>) -> Result<NewMaster, Error> {
        let req = pb::TransferMasterRequest {
            to_node_id: to.unwrap_or(0),
        };
        let timeout = change_timeout(Duration::ZERO);
        let reply = self
            .on_group_master(
                group,
                timeout,
                |mut b, r| async move { b.transfer_master(r).await },
                req,
            )
            .await?;
        Ok(NewMaster {
            node_id: reply.master_node_id,
            client_addr: reply.master_addr,
        })
    }

    /// Calls the master of `group` once, following `NOT_MASTER` to the master it names. Not
    /// retried on `UNAVAILABLE`: a membership change that gave up says why, and repeating it is
    /// the caller's decision.
    async fn on_group_master<Req, T, F, Fut>(
        &self,
        group: &str,
        timeout: Duration,
        mut call: F,
        req: Req,
    ) -> Result<T, Error>
    where
        Req: Clone,
        F: FnMut(BrokerClient<crate::Transport>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (_, mut target) = self
            .masters(&[group.to_owned()])
            .await?
            .pop()
            .expect("masters answers every group it was asked for");
        let mut hops = 0;
        loop {
            let request = self.client.request(req.clone(), timeout);
            match call(self.client.broker(&target)?, request).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) => match classify(&status) {
                    (Retry::AtLeader(Some(leader)), _) if hops < 3 => {
                        hops += 1;
                        target = leader;
                    }
                    (_, e) => return Err(e),
                },
            }
        }
    }
}

/// A change's deadline: its catch-up time and the steps around it.
fn change_timeout(catch_up: Duration) -> Duration {
    catch_up + Duration::from_secs(30)
}
