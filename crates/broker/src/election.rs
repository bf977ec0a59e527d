//! Elections a group can trust: pre-vote, master stickiness and leadership transfer.
//!
//! openraft 0.9 has no pre-vote: its election timer raises the term as soon as a node stops
//! hearing from its master, even when that node cannot win (a stale log, a node cut off or just
//! restarted), and the higher term then unseats a healthy master or, with a stale candidate on
//! one side and an up-to-date node on the other, keeps the group without one (issue 17: a
//! livelock with two healthy nodes). Here openraft's own timer is off (`enable_elect = false`)
//! and this module decides when a node stands for election:
//!
//! - **Pre-vote** (Raft thesis §9.6): a node whose timer fires first asks every voter whether it
//!   would vote for it now, and calls openraft's `elect()` (which raises the term) only when a
//!   majority, itself included, says yes. Asking changes nothing on the asked node.
//! - **Stickiness**: a node that heard from a live master within `stickiness` (openraft's leader
//!   lease, `election-timeout-max`), and the master itself, answer no. So a node rejoining a
//!   healthy group, or cut off from its master alone, never raises the term.
//! - **Transfer**: a master that stops cleanly (or is asked to: `raftmq group transfer-master`)
//!   first lets its in-flight writes commit, then asks an up-to-date slave to stand for election
//!   at once (`TimeoutNow`), so leadership moves before the process exits instead of after an
//!   election timeout. The candidate's vote requests name the master that asked, and the nodes
//!   that follow that master let them past openraft's leader lease (vendor/openraft change 3).
//!
//! What this module must never do: raise the term without a majority's pre-vote, except when the
//! master asks for a transfer. The term is raised only by openraft's `elect()`, which persists
//! the vote before any request goes out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use openraft::{LogId, Raft, RaftMetrics, ServerState, Vote};
use raftmq_common::shutdown::Stopping;
use raftmq_store::{BrokerNode, LogStore, NodeId, TypeConfig};
use serde::{Deserialize, Serialize};

use crate::network::{Connection, Network, PeerCalls};

/// When this node last heard from a live master (an append it accepted) or granted a vote, and
/// since when it has been master itself.
#[derive(Debug)]
pub struct LeaderContact {
    heard: Mutex<Instant>,
    master_since: Mutex<Option<Instant>>,
    /// When this node last granted another node's pre-vote: that node is about to stand.
    granted: Mutex<Option<Instant>>,
    /// Set while this node leads without hearing from a majority (see [`run`]): it takes no
    /// writes, which could not commit anyway, and sends nothing to its slaves (the network
    /// holds the same flag), so that they stop hearing from it and elect another master.
    quorum_lost: Arc<std::sync::atomic::AtomicBool>,
    /// The election this node stands in because its master asked it to take over: (the term it
    /// stands in, that master). Its vote requests say so (see [`Transfer`]).
    transfer: Transfer,
}

/// A leadership transfer this node stands in: `(term, the master that asked)`. Shared with the
/// network, which marks the vote requests of that term as a transfer's.
pub type Transfer = Arc<Mutex<Option<(u64, NodeId)>>>;

impl LeaderContact {
    pub fn new() -> Arc<LeaderContact> {
        Arc::new(LeaderContact {
            heard: Mutex::new(Instant::now()),
            master_since: Mutex::new(None),
            granted: Mutex::new(None),
            quorum_lost: Arc::default(),
            transfer: Arc::default(),
        })
    }

    /// The transfer this node stands in, for the network.
    pub fn transfer_flag(&self) -> Transfer {
        self.transfer.clone()
    }

    /// Notes that this node stands in `term` because `master` asked it to take over.
    pub fn standing_for_transfer(&self, term: u64, master: NodeId) {
        *self.transfer.lock().unwrap_or_else(|p| p.into_inner()) = Some((term, master));
    }

    /// Whether this node, as master, has lost touch with a majority of its group.
    pub fn quorum_lost(&self) -> bool {
        self.quorum_lost.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set_quorum_lost(&self, lost: bool) {
        self.quorum_lost.store(lost, std::sync::atomic::Ordering::Release);
    }

    /// The flag the network checks before it sends appends or snapshots.
    pub fn silence_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.quorum_lost.clone()
    }

    pub fn heard(&self) {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn last(&self) -> Instant {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that this node granted another node's pre-vote.
    pub fn granted_pre_vote(&self) {
        *self.granted.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn last_granted(&self) -> Option<Instant> {
        *self.granted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes this node's role as it changes.
    pub fn set_master(&self, master: bool) {
        let mut since = self.master_since.lock().unwrap_or_else(|p| p.into_inner());
        match (master, *since) {
            (true, None) => *since = Some(Instant::now()),
            (false, _) => *since = None,
            _ => {}
        }
    }

    /// How long this node has been master, if it is.
    pub fn master_for(&self) -> Option<Duration> {
        self.master_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    pub fn since(&self) -> Duration {
        self.last().elapsed()
    }
}

/// "Would you vote for me if I stood for election now?"
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    /// The term the candidate would stand in.
    pub term: u64,
    pub last_log_id: Option<LogId<NodeId>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteReply {
    pub granted: bool,
    /// Why not, for the candidate's log.
    pub reason: String,
}

/// The master's request that the target stand for election at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimeoutNowRequest {
    /// The master's vote: the target obeys only its current master.
    pub vote: Vote<NodeId>,
}

/// A refusal carried back to the caller of `PreVote` or `TimeoutNow`.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[error("{0}")]
pub struct Refused(pub String);

/// What a node knows when it answers a pre-vote.
#[derive(Debug, Clone)]
pub struct Local {
    pub leading: bool,
    pub since_contact: Duration,
    pub stickiness: Duration,
    pub last_log_id: Option<LogId<NodeId>>,
}

/// The pre-vote decision: yes only when this node would grant the real vote, and no master it
/// follows is alive.
pub fn pre_vote_answer(local: &Local, request: &PreVoteRequest) -> PreVoteReply {
    let refuse = |reason: String| PreVoteReply { granted: false, reason };
    if local.leading {
        return refuse("this node is the master".into());
    }
    if local.since_contact < local.stickiness {
        return refuse(format!(
            "this node heard from its master {} ms ago",
            local.since_contact.as_millis()
        ));
    }
    if request.last_log_id < local.last_log_id {
        return refuse(format!(
            "the candidate's log ends at {:?}, before this node's {:?}",
            request.last_log_id, local.last_log_id
        ));
    }
    PreVoteReply {
        granted: true,
        reason: String::new(),
    }
}

/// The id (term and index) of the last entry in this node's log, as openraft compares logs in a
/// vote. openraft 0.9's metrics give the index only, so it is read from the log store.
pub async fn last_log_id(log: &LogStore) -> Result<Option<LogId<NodeId>>, openraft::StorageError<NodeId>> {
    use openraft::storage::RaftLogStorage;
    Ok(log.clone().get_log_state().await?.last_log_id)
}

/// Election timings, from the broker's config.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Silence from the master before a node may stand (and before it grants a pre-vote):
    /// openraft's leader lease, so a pre-vote granted means the real vote will not meet a lease.
    pub stickiness: Duration,
    /// Random extra wait on top of `stickiness`, so that two nodes rarely stand at once.
    pub spread: Duration,
    /// Deadline of one pre-vote request.
    pub rpc_timeout: Duration,
}

impl Timing {
    pub fn new(election_timeout_min_ms: u64, election_timeout_max_ms: u64, raft_rpc_timeout: Duration) -> Timing {
        let spread = election_timeout_max_ms.saturating_sub(election_timeout_min_ms).max(1);
        Timing {
            stickiness: Duration::from_millis(election_timeout_max_ms),
            spread: Duration::from_millis(spread),
            rpc_timeout: raft_rpc_timeout.min(Duration::from_millis(500)),
        }
    }
}

/// Connections to the other voters, kept across rounds and remade when an address changes.
struct Peers {
    network: Network,
    open: BTreeMap<NodeId, (String, Connection)>,
}

impl Peers {
    async fn get(&mut self, id: NodeId, node: &BrokerNode) -> &mut Connection {
        use openraft::network::RaftNetworkFactory;
        let fresh = !matches!(self.open.get(&id), Some((addr, _)) if *addr == node.raft_addr);
        if fresh {
            let conn = self.network.new_client(id, node).await;
            self.open.insert(id, (node.raft_addr.clone(), conn));
        }
        &mut self.open.get_mut(&id).expect("inserted above").1
    }
}

/// A small xorshift generator for timer spreads: no need for a cryptographic source.
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Jitter((nanos ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn upto(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_nanos(self.0 % (max.as_nanos() as u64).max(1))
    }
}

/// The voters of the effective membership other than `me`, with their addresses, and the
/// number of votes that makes a majority. `None` when this node is not a voter.
fn electorate(metrics: &RaftMetrics<NodeId, BrokerNode>, me: NodeId) -> Option<(Vec<(NodeId, BrokerNode)>, usize)> {
    let membership = metrics.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    if !voters.contains(&me) {
        return None;
    }
    let others = voters
        .iter()
        .filter(|&&id| id != me)
        .filter_map(|&id| membership.get_node(&id).map(|n| (id, n.clone())))
        .collect();
    Some((others, voters.len() / 2 + 1))
}

/// Runs this node's election timer until `stop`: when no master has been heard from for
/// `stickiness` plus a random spread, a pre-vote round, and an election if a majority grants it.
pub async fn run(
    raft: Raft<TypeConfig>,
    log: LogStore,
    network: Network,
    contact: Arc<LeaderContact>,
    timing: Timing,
    mut stop: Stopping,
) {
    let me = network.me;
    let mut peers = Peers {
        network,
        open: BTreeMap::new(),
    };
    let mut jitter = Jitter::new(me);
    // Quorum checks in a row that a majority did not answer, while master.
    let mut unconfirmed = 0u32;
    // A node that has just started (or just stood) waits a whole timeout before standing again.
    let mut last_attempt = Instant::now();
    loop {
        let timeout = timing.stickiness + jitter.upto(timing.spread);
        // A whole timeout after the last sign of a master, this node's last try, or the last
        // pre-vote it granted (that candidate is about to win).
        let quiet_since = || {
            let mut t = contact.last().max(last_attempt);
            if let Some(g) = contact.last_granted() {
                t = t.max(g);
            }
            t
        };
        tokio::select! {
            _ = tokio::time::sleep_until((quiet_since() + timeout).into()) => {}
            _ = stop.wait() => return,
        }
        if quiet_since() + timeout > Instant::now() {
            continue; // heard from a master, or granted a pre-vote, meanwhile
        }
        let metrics = raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            contact.set_quorum_lost(false);
            unconfirmed = 0;
        }
        match metrics.state {
            ServerState::Leader if !contact.quorum_lost() => {
                last_attempt = Instant::now();
                // Check-quorum (Raft thesis §6.2): a master that hears from no majority steps
                // down. Without it, a master whose slaves receive its appends but whose replies
                // are lost (a one-way cut) keeps them from ever standing, and the group stalls.
                check_quorum(&raft, me, &contact, timing, &mut unconfirmed);
                continue;
            }
            // A master that stepped down is silent and stands like any other node: its pre-vote
            // wins only where a majority hears it and none hears another master.
            ServerState::Shutdown => return,
            _ => {}
        }
        let Some((others, majority)) = electorate(&metrics, me) else {
            last_attempt = Instant::now();
            continue;
        };
        last_attempt = Instant::now();
        let request = PreVoteRequest {
            term: metrics.vote.leader_id().term + 1,
            last_log_id: match last_log_id(&log).await {
                Ok(last) => last,
                Err(e) => {
                    tracing::warn!(node = me, "cannot read the log's end, not standing: {e}");
                    continue;
                }
            },
        };
        let round_start = Instant::now();
        let (granted, refusals) = pre_vote_round(&mut peers, &others, majority, &request, timing.rpc_timeout).await;
        // Two nodes whose timers fired together both win their pre-votes, and two elections at
        // once split the vote: one that granted another's pre-vote meanwhile backs off and tries
        // again after a new random timeout (the other, unless it did the same, stands now).
        let contested = contact.last_granted().is_some_and(|g| g >= round_start);
        if granted >= majority && contested {
            tracing::info!(
                node = me,
                "another node asked for pre-votes at the same time; backing off"
            );
            last_attempt = Instant::now();
            continue;
        }
        if granted >= majority {
            tracing::info!(
                node = me,
                term = request.term,
                granted,
                "no master heard from for {} ms and a majority would vote for this node: standing for election",
                contact.since().as_millis()
            );
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(node = me, "could not stand for election: {e}");
            }
            // Standing in a new term ends a stepped-down master's silence.
            contact.set_quorum_lost(false);
            unconfirmed = 0;
            last_attempt = Instant::now();
        } else {
            tracing::debug!(node = me, granted, ?refusals, "pre-vote lost; not raising the term");
        }
    }
}

/// Quorum checks a master may miss in a row before it steps down: one missed check can be a
/// slow moment of a busy machine, two are at least two election timeouts of silence.
const QUORUM_MISSES: u32 = 2;

/// One check-quorum round of a master: has a majority acknowledged it (an append or a heartbeat
/// answered) within the last two election timeouts? After [`QUORUM_MISSES`] misses in a row the
/// master steps down: it takes no more writes and falls silent (see
/// [`LeaderContact::silence_flag`]). Slaves that hear it, but are not heard by it, would
/// otherwise never stand; silent, it lets them elect another master.
fn check_quorum(raft: &Raft<TypeConfig>, me: NodeId, contact: &LeaderContact, timing: Timing, unconfirmed: &mut u32) {
    // openraft's own clock of the last time a quorum acknowledged this leader (refreshed on
    // every turn of its loop, at least every heartbeat tick).
    let since_ack = raft.metrics().borrow().millis_since_quorum_ack;
    if since_ack.is_none_or(|ms| Duration::from_millis(ms) <= timing.stickiness * 2) {
        *unconfirmed = 0;
        return;
    }
    *unconfirmed += 1;
    if *unconfirmed >= QUORUM_MISSES {
        tracing::warn!(
            node = me,
            "no majority acknowledged this master for {} ms: stepping down (no writes, no appends)",
            since_ack.unwrap_or_default()
        );
        contact.set_quorum_lost(true);
    }
}

/// Asks every other voter; returns the votes granted (this node's own included) and the
/// refusals. Stops as soon as a majority granted.
async fn pre_vote_round(
    peers: &mut Peers,
    others: &[(NodeId, BrokerNode)],
    majority: usize,
    request: &PreVoteRequest,
    timeout: Duration,
) -> (usize, Vec<String>) {
    let mut granted = 1; // this node's own
    let mut refusals = Vec::new();
    if granted >= majority {
        return (granted, refusals);
    }
    let mut handles: Vec<(NodeId, PeerCalls)> = Vec::new();
    for (id, node) in others {
        match peers.get(*id, node).await.calls() {
            Ok(h) => handles.push((*id, h)),
            Err(e) => refusals.push(format!("{id}: {e}")),
        }
    }
    let mut calls: FuturesUnordered<_> = handles
        .into_iter()
        .map(|(id, mut calls)| {
            let request = request.clone();
            async move {
                (
                    id,
                    tokio::time::timeout(timeout, calls.pre_vote(&request, timeout)).await,
                )
            }
        })
        .collect();
    while let Some((id, answer)) = calls.next().await {
        match answer {
            Ok(Ok(reply)) if reply.granted => {
                granted += 1;
                if granted >= majority {
                    break;
                }
            }
            Ok(Ok(reply)) => refusals.push(format!("{id}: {}", reply.reason)),
            Ok(Err(e)) => refusals.push(format!("{id}: {e}")),
            Err(_) => refusals.push(format!("{id}: no answer within {timeout:?}")),
        }
    }
    (granted, refusals)
}

/// Hands leadership to an up-to-date slave before a clean stop. Call it with new writes already
/// refused: it waits (at most `deadline` in all) until every proposed entry is applied and a
/// voter has all of the log, asks that voter to stand at once, and waits for a new master.
/// Returns the new master, or why there is none (the caller stops anyway: the group then elects
/// one after an election timeout).
pub async fn transfer_leadership(
    raft: &Raft<TypeConfig>,
    network: &Network,
    proposer: &crate::proposer::Proposer,
    to: Option<NodeId>,
    deadline: Duration,
) -> Result<NodeId, String> {
    let me = network.me;
    let end = Instant::now() + deadline;
    // A slave that has all of the log is normally there at once; when none is after a second,
    // the others are down or far behind, and waiting longer only delays the stop.
    let catch_up_end = Instant::now() + deadline.min(Duration::from_secs(1));
    let mut metrics_rx = raft.metrics();
    // The voters' leader leases need not run out first: the target's vote requests say they are
    // a transfer's, and every node that follows this master (this one too) lets them past its
    // lease (`RaftService::vote`). Before that (openraft's lease alone), a transfer worked only
    // where the target and this node were a majority: not in groups of four or five.
    // 1. Everything proposed (the proposer refuses new writes while handing over, and has none
    //    in flight: its entries would come after what the target has) is committed and applied, and some voter has it all.
    let (target, node, vote) = loop {
        let m = metrics_rx.borrow().clone();
        if m.state != ServerState::Leader {
            return Err("not the master".into());
        }
        let Some((others, _)) = electorate(&m, me) else {
            return Err("not a voter".into());
        };
        if others.is_empty() {
            return Err("no other voter".into());
        }
        let last = m.last_log_index;
        let applied = m.last_applied.map(|l| l.index);
        let matched = |id: NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|l| l.index)
        };
        if let Some(to) = to {
            if !others.iter().any(|(id, _)| *id == to) {
                return Err(format!("node {to} is not a voter of the group"));
            }
        }
        if last.is_some() && applied == last && proposer.idle() {
            // The named voter, or any that has all of the log (all are equally good then).
            if let Some((id, node)) = others
                .iter()
                .find(|(id, _)| matched(*id) == last && to.is_none_or(|to| to == *id))
            {
                break (*id, node.clone(), m.vote);
            }
        }
        if Instant::now() >= catch_up_end {
            return Err("no slave caught up in time".into());
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), metrics_rx.changed()).await;
    };
    // 2. Ask it to stand now.
    use openraft::network::RaftNetworkFactory;
    let mut conn = network.clone().new_client(target, &node).await;
    let left = end
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let mut calls = conn.calls().map_err(|e| format!("node {target} unreachable: {e}"))?;
    calls
        .timeout_now(&TimeoutNowRequest { vote }, left)
        .await
        .map_err(|e| format!("node {target} did not take over: {e}"))?;
    tracing::info!(node = me, target, "asked node {target} to take over as master");
    // 3. Wait until another node leads.
    let waited = raft
        .wait(Some(
            end.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(200)),
        ))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != Some(me),
            "another node leads",
        )
        .await;
    match waited {
        Ok(m) => Ok(m.current_leader.unwrap_or(target)),
        Err(e) => Err(format!("no new master in time: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn local(leading: bool, since_ms: u64, last: Option<LogId<NodeId>>) -> Local {
        Local {
            leading,
            since_contact: Duration::from_millis(since_ms),
            stickiness: Duration::from_millis(200),
            last_log_id: last,
        }
    }

    fn ask(term: u64, last: Option<LogId<NodeId>>) -> PreVoteRequest {
        PreVoteRequest {
            term,
            last_log_id: last,
        }
    }

    #[test]
    fn a_node_without_a_live_master_grants_an_up_to_date_candidate() {
        assert!(pre_vote_answer(&local(false, 500, log(3, 10)), &ask(4, log(3, 10))).granted);
        assert!(pre_vote_answer(&local(false, 500, log(3, 10)), &ask(4, log(4, 2))).granted);
        assert!(pre_vote_answer(&local(false, 500, None), &ask(1, None)).granted);
    }

    #[test]
    fn a_candidate_with_an_older_log_is_refused() {
        let reply = pre_vote_answer(&local(false, 500, log(3, 10)), &ask(9, log(3, 9)));
        assert!(!reply.granted);
        assert!(reply.reason.contains("before this node's"), "{}", reply.reason);
        assert!(!pre_vote_answer(&local(false, 500, log(4, 1)), &ask(9, log(3, 50))).granted);
    }

    #[test]
    fn the_master_and_a_node_that_heard_from_it_refuse() {
        let reply = pre_vote_answer(&local(true, 5_000, log(3, 10)), &ask(4, log(3, 10)));
        assert_eq!(reply.reason, "this node is the master");
        let reply = pre_vote_answer(&local(false, 199, log(3, 10)), &ask(4, log(3, 20)));
        assert!(!reply.granted);
        assert!(reply.reason.contains("heard from its master"), "{}", reply.reason);
    }

    #[test]
    fn timer_spreads_stay_within_their_bound() {
        let mut j = Jitter::new(3);
        for _ in 0..1000 {
            assert!(j.upto(Duration::from_millis(100)) < Duration::from_millis(100));
        }
    }
}
