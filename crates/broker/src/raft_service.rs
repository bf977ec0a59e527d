//! The receiving side of Raft traffic: checks the envelope, hands the request to openraft.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest};
use openraft::{Raft, Vote};
use raftmq_common::ErrorCode;
use raftmq_proto::raft_transport_server::RaftTransport;
use raftmq_proto::RaftEnvelope;
use raftmq_store::{NodeId, TypeConfig};
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::network::{decode, encode, Faults};

pub struct RaftService {
    pub group: String,
    pub me: NodeId,
    pub raft: Raft<TypeConfig>,
    /// When the leader's last append (or heartbeat) arrived.
    pub last_append: Arc<Mutex<Instant>>,
    /// Silence from the leader longer than this means it is gone (election-timeout-min).
    pub leader_silence: Duration,
    /// Fault injection (tests only).
    pub faults: Arc<Faults>,
}

/// Tells openraft, while a snapshot from the leader is being received or installed, that the
/// leader is alive. openraft 0.9 resets a follower's election timer on appends only, and a
/// leader streaming a snapshot sends nothing else to that follower: a snapshot that took longer
/// than an election timeout to send and install made the follower stand for election, the
/// leader step down on seeing its higher term, and the transfer start over, forever (measured:
/// a slave that missed 600k messages never caught up, the term climbing past 1,000).
///
/// The keep-alive is an append with the snapshot's vote and nothing else (no previous entry, no
/// entries, no commit index): openraft checks the vote as for a heartbeat and changes nothing
/// else. Appends are not awaited one by one: while the snapshot installs, openraft holds their
/// replies back until the install is done, but it checks (and renews) the vote on arrival. It
/// stops when the snapshot call returns, or when this node's vote moves past the snapshot's.
struct KeepAlive(tokio::task::JoinHandle<()>);

impl KeepAlive {
    fn start(raft: Raft<TypeConfig>, vote: Vote<NodeId>, every: Duration, last_append: Arc<Mutex<Instant>>) -> Self {
        KeepAlive(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if raft.metrics().borrow().vote > vote {
                    return;
                }
                let alive = AppendEntriesRequest {
                    vote,
                    prev_log_id: None,
                    entries: Vec::new(),
                    leader_commit: None,
                };
                let raft = raft.clone();
                let last_append = last_append.clone();
                tokio::spawn(async move {
                    if let Ok(AppendEntriesResponse::Success) = raft.append_entries(alive).await {
                        *last_append.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                    }
                });
            }
        }))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        // Requests decoded keep their encoding as a slice of the payload: a slave writes it to
        // its log as it came.
        let rpc = raftmq_store::decode_sharing(&envelope.payload, || decode(&envelope.payload))
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
            *self.last_append.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
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
        let (envelope, rpc): (RaftEnvelope, InstallSnapshotRequest<TypeConfig>) = self.open(request)?;
        let _alive = KeepAlive::start(
            self.raft.clone(),
            rpc.vote,
            self.leader_silence / 4,
            self.last_append.clone(),
        );
        let delay = self.faults.snapshot_install_delay();
        if rpc.done && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let result = self.raft.install_snapshot(rpc).await;
        self.reply(&envelope, &result)
    }
}
