//! The receiving side of Raft traffic: checks the envelope, hands the request to openraft.

use openraft::Raft;
use raftmq_common::ErrorCode;
use raftmq_proto::raft_transport_server::RaftTransport;
use raftmq_proto::RaftEnvelope;
use raftmq_store::{NodeId, TypeConfig};
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::network::{decode, encode};

pub struct RaftService {
    pub group: String,
    pub me: NodeId,
    pub raft: Raft<TypeConfig>,
    /// When the leader's last append (or heartbeat) arrived.
    pub last_append: std::sync::Mutex<std::time::Instant>,
    /// Silence from the leader longer than this means it is gone (election-timeout-min).
    pub leader_silence: std::time::Duration,
}

impl RaftService {
    fn open<T: serde::de::DeserializeOwned>(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<(RaftEnvelope, T), Status> {
        let envelope = request.into_inner();
        if envelope.group != self.group || envelope.target_node_id != self.me {
            return Err(ErrorCode::InvalidArgument.status(format!(
                "raft message for {}/{} delivered to {}/{}",
                envelope.group, envelope.target_node_id, self.group, self.me
            )));
        }
        let rpc = decode(&envelope.payload)
            .map_err(|e| ErrorCode::InvalidArgument.status(format!("undecodable raft message: {e}")))?;
        Ok((envelope, rpc))
    }

    fn reply<R: Serialize>(&self, envelope: &RaftEnvelope, result: &R) -> Result<Response<RaftEnvelope>, Status> {
        let payload =
            encode(result).map_err(|e| ErrorCode::Internal.status(format!("cannot encode raft reply: {e}")))?;
        Ok(Response::new(RaftEnvelope {
            group: self.group.clone(),
            from_node_id: self.me,
            target_node_id: envelope.from_node_id,
            payload: payload.into(),
        }))
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        let (envelope, rpc) = self.open(request)?;
        let result = self.raft.append_entries(rpc).await;
        if result.is_ok() {
            *self.last_append.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        }
        self.reply(&envelope, &result)
    }

    async fn vote(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        let (envelope, rpc): (RaftEnvelope, openraft::raft::VoteRequest<NodeId>) = self.open(request)?;
        let candidate_log = rpc.last_log_id;
        let result = self.raft.vote(rpc).await;
        // A candidate whose log is behind ours can never win, and waiting for our own election
        // timer costs another timeout: when the leader has been silent past the election
        // timeout, stand for election now. (Safe: elections never lose committed entries; the
        // silence check keeps a healthy leader from being disturbed by a stale candidate.)
        if let Ok(resp) = &result {
            let leader_gone =
                self.last_append.lock().unwrap_or_else(|p| p.into_inner()).elapsed() > self.leader_silence;
            let follower = self.raft.metrics().borrow().state == openraft::ServerState::Follower;
            if !resp.vote_granted && candidate_log < resp.last_log_id && leader_gone && follower {
                tracing::info!(
                    node = self.me,
                    "a candidate with an older log asked for a vote; standing for election"
                );
                let raft = self.raft.clone();
                tokio::spawn(async move {
                    let _ = raft.trigger().elect().await;
                });
            }
        }
        self.reply(&envelope, &result)
    }

    async fn install_snapshot(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        let (envelope, rpc) = self.open(request)?;
        let result = self.raft.install_snapshot(rpc).await;
        self.reply(&envelope, &result)
    }
}
