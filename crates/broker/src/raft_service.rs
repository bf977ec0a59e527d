//! The receiving side of Raft traffic: checks the envelope, hands the request to openraft, and
//! answers raftmq's own election calls (pre-vote and transfer, see `election`).

use std::sync::Arc;
use std::time::Duration;

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest};
use openraft::{Raft, Vote};
use raftmq_common::ErrorCode;
use raftmq_proto::raft_transport_server::RaftTransport;
use raftmq_proto::RaftEnvelope;
use raftmq_store::{NodeId, TypeConfig};
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::election::{self, LeaderContact, PreVoteRequest, Refused, TimeoutNowRequest};
use crate::network::Faults;
use crate::wire::{decode, encode};

pub struct RaftService {
    pub group: String,
    pub me: NodeId,
    pub raft: Raft<TypeConfig>,
    /// The log, read for its last entry when answering a pre-vote.
    pub log: raftmq_store::LogStore,
    /// When a live master was last heard from (an accepted append) or a vote granted.
    pub contact: Arc<LeaderContact>,
    /// Silence from the leader longer than this means it is gone (election-timeout-min).
    pub leader_silence: Duration,
    /// How recently a master must have been heard from for a pre-vote to be refused.
    pub stickiness: Duration,
    /// Fault injection (tests only).
    pub faults: Arc<Faults>,
    /// Checks the cluster secret's proof on every message.
    pub guard: Arc<crate::guard::Guard>,
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
    fn start(raft: Raft<TypeConfig>, vote: Vote<NodeId>, every: Duration, contact: Arc<LeaderContact>) -> Self {
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
                let contact = contact.clone();
                tokio::spawn(async move {
                    if let Ok(AppendEntriesResponse::Success) = raft.append_entries(alive).await {
                        contact.heard();
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
    /// Checks the envelope (its target, then the cluster secret's proof) and decodes the
    /// message; nothing of a refused message reaches Raft.
    fn open<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        request: Request<RaftEnvelope>,
    ) -> Result<(RaftEnvelope, T), Status> {
        let caller = request.remote_addr();
        let proof = request
            .metadata()
            .get(raftmq_common::auth::PEER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let envelope = request.into_inner();
        if envelope.group != self.group || envelope.target_node_id != self.me {
            return Err(ErrorCode::InvalidArgument.status(format!(
                "raft message for {}/{} delivered to {}/{}",
                envelope.group, envelope.target_node_id, self.group, self.me
            )));
        }
        crate::network::proof_parts(method, &envelope, |parts| {
            self.guard.check_peer(proof.as_deref(), parts, caller, method)
        })?;
        if !crate::guard::is_member(&self.raft, envelope.from_node_id) {
            let why = format!("node {} is not a member of {}", envelope.from_node_id, self.group);
            return Err(self.guard.refused_peer(caller, method, &why).into());
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
            transfer_from: 0,
        }))
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        let (envelope, rpc) = self.open("AppendEntries", request)?;
        let result = self.raft.append_entries(rpc).await;
        if from_live_master(&result) {
            self.contact.heard();
        }
        self.reply(&envelope, &result)
    }

    async fn vote(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        let (envelope, rpc): (RaftEnvelope, openraft::raft::VoteRequest<NodeId>) = self.open("Vote", request)?;
        // A transfer's vote passes the leader lease only here: where the master that asked for
        // it is the one this node follows in its current term, or is this node.
        let transfer = envelope.transfer_from != 0 && {
            let vote = self.raft.metrics().borrow().vote;
            vote.is_committed()
                && vote.leader_id().voted_for() == Some(envelope.transfer_from)
                && rpc.vote.leader_id().term > vote.leader_id().term
        };
        let result = if transfer {
            self.raft.vote_for_transfer(rpc).await
        } else {
            self.raft.vote(rpc).await
        };
        // Raft's rule: a node that grants a vote waits a whole timeout before standing itself.
        if matches!(&result, Ok(resp) if resp.vote_granted) {
            self.contact.heard();
        }
        self.reply(&envelope, &result)
    }

    async fn pre_vote(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        let (envelope, ask): (RaftEnvelope, PreVoteRequest) = self.open("PreVote", request)?;
        let last_log_id = election::last_log_id(&self.log)
            .await
            .map_err(|e| ErrorCode::Internal.status(format!("cannot read the log's end: {e}")))?;
        let local = election::Local {
            // A master that stepped down for want of a majority answers as a slave would.
            leading: self.raft.metrics().borrow().state == openraft::ServerState::Leader && !self.contact.quorum_lost(),
            since_contact: self.contact.since(),
            stickiness: self.stickiness,
            last_log_id,
        };
        let voter = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let mut voters = membership.voter_ids().peekable();
            voters.peek().is_none() || voters.any(|id| id == envelope.from_node_id)
        };
        let answer = if voter {
            election::pre_vote_answer(&local, &ask)
        } else {
            // A node removed from the group that has not heard so.
            election::PreVoteReply {
                granted: false,
                reason: format!("node {} is not a voter of the group", envelope.from_node_id),
            }
        };
        if answer.granted {
            self.contact.granted_pre_vote();
        }
        tracing::debug!(node = self.me, candidate = envelope.from_node_id, ?answer, "pre-vote");
        self.reply(&envelope, &Ok::<_, Refused>(answer))
    }

    async fn timeout_now(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        let (envelope, ask): (RaftEnvelope, TimeoutNowRequest) = self.open("TimeoutNow", request)?;
        let (vote, state) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.vote, m.state)
        };
        // Only this node's current master may ask, in its current term.
        let result = if ask.vote != vote
            || !vote.is_committed()
            || vote.leader_id().voted_for() != Some(envelope.from_node_id)
        {
            Err(Refused(format!(
                "asked by {} with vote {}, but this node's vote is {vote}",
                envelope.from_node_id, ask.vote
            )))
        } else if state != openraft::ServerState::Follower {
            Err(Refused(format!("this node is {state:?}, not a follower")))
        } else {
            tracing::info!(
                node = self.me,
                master = envelope.from_node_id,
                "the master hands leadership over: standing for election now"
            );
            // openraft's elect() stands in the next term; its vote requests say who asked.
            self.contact
                .standing_for_transfer(vote.leader_id().term + 1, envelope.from_node_id);
            self.raft
                .trigger()
                .elect()
                .await
                .map_err(|e| Refused(format!("cannot stand for election: {e}")))
        };
        self.reply(&envelope, &result)
    }

    async fn install_snapshot(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        let (envelope, rpc): (RaftEnvelope, InstallSnapshotRequest<TypeConfig>) =
            self.open("InstallSnapshot", request)?;
        let _alive = KeepAlive::start(
            self.raft.clone(),
            rpc.vote,
            self.leader_silence / 4,
            self.contact.clone(),
        );
        let delay = self.faults.snapshot_install_delay();
        if rpc.done && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let result = self.raft.install_snapshot(rpc).await;
        self.reply(&envelope, &result)
    }
}

/// Whether an append's answer shows it came from this node's live master: accepted, or refused
/// only for a log mismatch. An append refused for its stale vote came from a deposed master.
pub fn from_live_master<E>(result: &Result<AppendEntriesResponse<NodeId>, E>) -> bool {
    matches!(result, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_)))
}
