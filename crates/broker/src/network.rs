//! Raft traffic between the nodes of a group, over gRPC.
//!
//! openraft's requests travel bincode-encoded inside a [`RaftEnvelope`] that names the group and
//! the target node; the receiver rejects an envelope meant for another node or group (a reused
//! port or a stale config must not feed one group's log into another). Every call has a deadline.
//!
//! [`Faults`] lets tests cut links between nodes; production code never sets it.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, SnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Snapshot, Vote};
use raftmq_proto::raft_transport_client::RaftTransportClient;
use raftmq_proto::RaftEnvelope;
use raftmq_store::{BrokerNode, NodeId, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::append_link;

/// Snapshot chunk size when openraft names none.
const DEFAULT_SNAPSHOT_CHUNK: usize = 3 << 20;
/// Most tries of one snapshot chunk before the transfer starts over.
const SNAPSHOT_CHUNK_TRIES: u32 = 5;
/// Deadline of a snapshot's last chunk, whose reply waits for the install.
const SNAPSHOT_INSTALL_TIMEOUT: Duration = Duration::from_secs(120);

use crate::wire::{decode, encode, encode_framed, MAX_RAFT_MESSAGE};

/// Links cut on purpose, for fault-injection tests. Shared by every node of an in-process group.
#[derive(Debug, Default)]
pub struct Faults {
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
    /// (from, to): what `from` sends reaches `to`, but `to`'s answers never come back (a one-way
    /// cut, the way TCP sees it while a connection lasts).
    deaf: Mutex<HashSet<(NodeId, NodeId)>>,
    /// Milliseconds every node waits before installing a received snapshot.
    slow_install_ms: std::sync::atomic::AtomicU64,
}

impl Faults {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<(NodeId, NodeId)>> {
        self.cut.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts the link between two nodes, both ways.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        let mut set = self.set();
        set.insert((a, b));
        set.insert((b, a));
    }

    /// Cuts a node off from every other listed node.
    pub fn isolate(&self, node: NodeId, others: impl IntoIterator<Item = NodeId>) {
        for other in others {
            if other != node {
                self.cut(node, other);
            }
        }
    }

    /// Makes every snapshot install take at least `delay` longer, as a large one would.
    pub fn slow_snapshot_installs(&self, delay: Duration) {
        self.slow_install_ms
            .store(delay.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn snapshot_install_delay(&self) -> Duration {
        Duration::from_millis(self.slow_install_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// `from` reaches `to`, but never hears its answers.
    pub fn lose_answers(&self, from: NodeId, to: NodeId) {
        self.deaf.lock().unwrap_or_else(|p| p.into_inner()).insert((from, to));
    }

    pub fn answers_lost(&self, from: NodeId, to: NodeId) -> bool {
        self.deaf
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(from, to))
    }

    pub fn heal_all(&self) {
        self.set().clear();
        self.deaf.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.set().contains(&(from, to))
    }
}

/// Creates connections to the other nodes of the group.
#[derive(Clone)]
pub struct Network {
    pub group: String,
    pub me: NodeId,
    pub timeout: Duration,
    pub faults: Arc<Faults>,
    /// Set while this node is a master that stepped down for want of a majority: it sends no
    /// appends, heartbeats or snapshots (see `election::check_quorum`).
    pub silent: Arc<std::sync::atomic::AtomicBool>,
    /// The leadership transfer this node stands in, if any: its vote requests of that term say
    /// so (see `election::LeaderContact::standing_for_transfer`).
    pub transfer: crate::election::Transfer,
    /// Proves every Raft message to its receiver, when the deployment has one.
    pub secret: Option<raftmq_common::auth::ClusterSecret>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BrokerNode) -> Connection {
        Connection {
            net: self.clone(),
            target,
            addr: node.raft_addr.clone(),
            client: None,
            append: None,
            failing: None,
        }
    }
}

/// One node's connection to one peer. The gRPC channel is made on first use and reconnects by
/// itself.
pub struct Connection {
    net: Network,
    target: NodeId,
    addr: String,
    client: Option<RaftTransportClient<Channel>>,
    /// The AppendEntries connection (see `append_link`), once open.
    append: Option<tokio::net::TcpStream>,
    /// Since when appends to the peer have failed, and whether that was logged: a peer is
    /// logged unreachable once its appends have failed for [`UNREACHABLE_AFTER`] (one timeout
    /// under load is not an outage), and reachable again at the next success after that, where
    /// openraft would log every retry.
    failing: Option<(std::time::Instant, bool)>,
}

/// How long appends to a peer must fail before the peer is logged unreachable.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
enum Method {
    Vote,
    Snapshot,
}

type RpcErr<E> = RPCError<NodeId, BrokerNode, E>;

/// The error of a call whose answer fault injection lost: a timeout, as the caller would see it.
fn lost_answer<E: std::error::Error>() -> RpcErr<E> {
    let why = std::io::Error::new(std::io::ErrorKind::TimedOut, "answer lost (fault injection)");
    RPCError::Network(NetworkError::new(&why))
}

impl Connection {
    /// One AppendEntries exchange over the append link.
    async fn append_once(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        self.check_cut().map_err(RPCError::Unreachable)?;
        self.check_silent().map_err(RPCError::Unreachable)?;
        let size = rpc
            .entries
            .iter()
            .map(raftmq_store::log_store::entry_size_hint)
            .sum::<usize>()
            + 256;
        let frame = encode_framed(&rpc, size).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let timeout = self.deadline(&option);
        let stream = self.append.take();
        let hello = append_link::Hello {
            group: self.net.group.clone(),
            from: self.net.me,
            target: self.target,
            proof: Vec::new(),
        };
        let (addr, connect_timeout, secret) = (self.addr.clone(), self.net.timeout, self.net.secret.clone());
        let exchange = async move {
            let mut stream = match stream {
                Some(stream) => stream,
                // Not reachable (refused, or not this node): openraft backs off before retrying.
                None => append_link::connect(&addr, &hello, secret.as_ref(), connect_timeout)
                    .await
                    .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?,
            };
            let net = |e: std::io::Error| RPCError::Network(NetworkError::new(&e));
            append_link::write_frame(&mut stream, frame).await.map_err(net)?;
            let body = append_link::read_frame(&mut stream).await.map_err(net)?;
            Ok::<_, RpcErr<RaftError<NodeId>>>((stream, body))
        };
        // On any failure the connection is dropped: a late answer must not be read as the
        // answer to the next request.
        let (stream, body) = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result?,
            Err(_) => {
                let why = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}"));
                return Err(RPCError::Network(NetworkError::new(&why)));
            }
        };
        if self.answer_lost() {
            // Delivered and handled there; the answer is lost, as the deadline would tell.
            tokio::time::sleep(timeout).await;
            return Err(lost_answer());
        }
        self.append = Some(stream);
        self.answer(&body)
    }

    /// Sends one snapshot chunk, retrying a few times on a timeout or a network error (the same
    /// chunk again: the receiver takes a chunk at an offset it already has).
    async fn send_chunk(
        &mut self,
        request: &InstallSnapshotRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let mut failures = 0u32;
        loop {
            let result: Result<InstallSnapshotResponse<NodeId>, RpcErr<RaftError<NodeId, InstallSnapshotError>>> =
                self.call(Method::Snapshot, request, option, 0).await;
            let err = match result {
                Ok(reply) => return Ok(reply),
                Err(RPCError::Unreachable(e)) => return Err(StreamingError::Unreachable(e)),
                Err(RPCError::RemoteError(e)) => {
                    // A mismatch (the receiver lost the stream, e.g. it restarted) or a fatal
                    // error: openraft starts over with a fresh stream.
                    return Err(StreamingError::Network(NetworkError::new(&e)));
                }
                Err(e) => e,
            };
            failures += 1;
            if failures >= SNAPSHOT_CHUNK_TRIES {
                return Err(StreamingError::Network(NetworkError::new(&err)));
            }
            tracing::warn!(
                target = self.target,
                offset = request.offset,
                "snapshot chunk failed, retrying: {err}"
            );
            tokio::time::sleep(Duration::from_millis(20 << failures)).await;
        }
    }

    fn client(&mut self) -> Result<RaftTransportClient<Channel>, Unreachable> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| Unreachable::new(&e))?
            .connect_timeout(self.net.timeout)
            .tcp_nodelay(true);
        let client = RaftTransportClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Appends, heartbeats and snapshots are not sent while this master has stepped down (votes
    /// are: standing again is how it ends).
    fn check_silent(&self) -> Result<(), Unreachable> {
        if self.net.silent.load(std::sync::atomic::Ordering::Acquire) {
            let why = std::io::Error::other("this master stepped down: no majority acknowledges it");
            return Err(Unreachable::new(&why));
        }
        Ok(())
    }

    /// Whether fault injection loses the target's answers (see [`Faults::lose_answers`]).
    fn answer_lost(&self) -> bool {
        self.net.faults.answers_lost(self.net.me, self.target)
    }

    /// Fails at once when fault injection cut the link to the target.
    fn check_cut(&self) -> Result<(), Unreachable> {
        if self.net.faults.is_cut(self.net.me, self.target) {
            let why = std::io::Error::other(format!(
                "link {} -> {} is cut (fault injection)",
                self.net.me, self.target
            ));
            return Err(Unreachable::new(&why));
        }
        Ok(())
    }

    /// How long one request may take: openraft's deadline, but not less than the Raft RPC timeout
    /// when openraft allows more.
    fn deadline(&self, option: &RPCOption) -> Duration {
        option.hard_ttl().min(self.net.timeout.max(option.soft_ttl()))
    }

    /// Decodes the target's answer: what openraft returned there, its error a remote one. The
    /// error is the one `RaftNetwork`'s methods return, however large.
    #[allow(clippy::result_large_err)]
    fn answer<Resp, E>(&self, payload: &[u8]) -> Result<Resp, RpcErr<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, E> = decode(payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        option: &RPCOption,
        transfer_from: NodeId,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.check_cut().map_err(RPCError::Unreachable)?;
        if matches!(method, Method::Snapshot) {
            self.check_silent().map_err(RPCError::Unreachable)?;
        }
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let envelope = RaftEnvelope {
            group: self.net.group.clone(),
            from_node_id: self.net.me,
            target_node_id: self.target,
            payload: payload.into(),
            transfer_from,
        };
        let name = match method {
            Method::Vote => "Vote",
            Method::Snapshot => "InstallSnapshot",
        };
        let mut request = prove(self.net.secret.as_ref(), name, envelope);
        request.set_timeout(self.deadline(option));
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let reply = match method {
            Method::Vote => client.vote(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
        };
        let envelope = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                return Err(match status.code() {
                    // Connection refused or reset: back off before the next try.
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
                    _ => RPCError::Network(NetworkError::new(&status)),
                });
            }
        };
        if self.answer_lost() {
            return Err(lost_answer());
        }
        self.answer(&envelope.payload)
    }
}

impl Connection {
    /// A handle for raftmq's own election calls to this peer (see `election`).
    pub fn calls(&mut self) -> Result<PeerCalls, Unreachable> {
        self.check_cut()?;
        Ok(PeerCalls {
            net: self.net.clone(),
            target: self.target,
            client: self.client()?,
        })
    }
}

/// raftmq's election calls to one peer, beside openraft's: `PreVote` and `TimeoutNow`. Cheap to
/// clone; fault injection's cuts apply as to every Raft message.
#[derive(Clone)]
pub struct PeerCalls {
    net: Network,
    target: NodeId,
    client: RaftTransportClient<Channel>,
}

#[derive(Clone, Copy)]
enum ElectionCall {
    PreVote,
    TimeoutNow,
}

impl PeerCalls {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        which: ElectionCall,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, String> {
        if self.net.faults.is_cut(self.net.me, self.target) {
            return Err(format!(
                "link {} -> {} is cut (fault injection)",
                self.net.me, self.target
            ));
        }
        let payload = encode(req).map_err(|e| e.to_string())?;
        let envelope = RaftEnvelope {
            group: self.net.group.clone(),
            from_node_id: self.net.me,
            target_node_id: self.target,
            payload: payload.into(),
            transfer_from: 0,
        };
        let name = match which {
            ElectionCall::PreVote => "PreVote",
            ElectionCall::TimeoutNow => "TimeoutNow",
        };
        let mut request = prove(self.net.secret.as_ref(), name, envelope);
        request.set_timeout(timeout);
        let reply = match which {
            ElectionCall::PreVote => self.client.pre_vote(request).await,
            ElectionCall::TimeoutNow => self.client.timeout_now(request).await,
        }
        .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
        if self.net.faults.answers_lost(self.net.me, self.target) {
            return Err("answer lost (fault injection)".into());
        }
        let result: Result<Resp, crate::election::Refused> =
            decode(&reply.into_inner().payload).map_err(|e| format!("undecodable answer: {e}"))?;
        result.map_err(|e| e.0)
    }

    pub async fn pre_vote(
        &mut self,
        req: &crate::election::PreVoteRequest,
        timeout: Duration,
    ) -> Result<crate::election::PreVoteReply, String> {
        self.call(ElectionCall::PreVote, req, timeout).await
    }

    pub async fn timeout_now(
        &mut self,
        req: &crate::election::TimeoutNowRequest,
        timeout: Duration,
    ) -> Result<(), String> {
        self.call(ElectionCall::TimeoutNow, req, timeout).await
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        let result = self.append_once(rpc, option).await;
        let (me, peer) = (self.net.me, self.target);
        match (&result, self.failing) {
            (Err(RPCError::Unreachable(_) | RPCError::Network(_)), None) => {
                self.failing = Some((std::time::Instant::now(), false));
            }
            (Err(e @ (RPCError::Unreachable(_) | RPCError::Network(_))), Some((since, false)))
                if since.elapsed() >= UNREACHABLE_AFTER =>
            {
                tracing::warn!(
                    node = me,
                    peer,
                    "cannot reach node {peer} for {:?}: {e}",
                    since.elapsed()
                );
                self.failing = Some((since, true));
            }
            (Err(RPCError::Unreachable(_) | RPCError::Network(_)), Some(_)) => {}
            (_, Some((_, logged))) => {
                if logged {
                    tracing::info!(node = me, peer, "node {peer} reachable again");
                }
                self.failing = None;
            }
            (_, None) => {}
        }
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<RaftError<NodeId, InstallSnapshotError>>> {
        self.call(Method::Snapshot, &rpc, &option, 0).await
    }

    /// The state machine hands out a pointer to a checkpoint (see `raftmq_store::snapshot`): the
    /// full snapshot is encoded from it chunk by chunk, off the async runtime, and each chunk sent
    /// as soon as it is ready. The follower hears from the leader at once, however large the
    /// snapshot: writing it all out first kept it silent past its election timeout.
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        self.check_silent().map_err(StreamingError::Unreachable)?;
        let Snapshot { meta, snapshot: data } = snapshot;
        let file = data.into_std().await;
        let chunk_size = option.snapshot_chunk_size().unwrap_or(DEFAULT_SNAPSHOT_CHUNK);
        // Two chunks ahead at most: the encoder waits for the network, not the other way.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
        let mut encoder = tokio::task::spawn_blocking(move || {
            raftmq_store::snapshot::stream_for_sending(file, chunk_size, |chunk| tx.blocking_send(chunk).is_ok())
        });
        let started = std::time::Instant::now();
        let mut cancel = std::pin::pin!(cancel);
        let mut offset = 0u64;
        let mut next = rx.recv().await;
        while let Some(chunk) = next.take() {
            next = rx.recv().await;
            let done = next.is_none();
            if done {
                // The stream ended: only a complete one may be marked as the end.
                let encoded = (&mut encoder)
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r.map_err(std::io::Error::other));
                if let Err(e) = encoded {
                    // Reported as a network failure, which openraft retries with a fresh
                    // snapshot, not as a storage error, which would stop this node: the commit
                    // log is fine, only this reading of a checkpoint failed (a newer snapshot
                    // may have replaced it meanwhile).
                    tracing::warn!(snapshot = %meta.snapshot_id, target = self.target, "cannot read the snapshot to send it: {e}");
                    return Err(StreamingError::Network(NetworkError::new(&e)));
                }
            }
            let len = chunk.len() as u64;
            let request = InstallSnapshotRequest {
                vote,
                meta: meta.clone(),
                offset,
                data: chunk,
                done,
            };
            // The last chunk's reply waits for the install, which takes as long as writing
            // the whole snapshot into the store.
            let chunk_option = if done {
                RPCOption::new(option.hard_ttl().max(SNAPSHOT_INSTALL_TIMEOUT))
            } else {
                option.clone()
            };
            let reply = tokio::select! {
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                reply = self.send_chunk(&request, &chunk_option) => reply?,
            };
            if reply.vote > vote {
                // A newer leader or candidate: openraft steps down on seeing it.
                return Ok(SnapshotResponse::new(reply.vote));
            }
            offset += len;
            if done {
                tracing::info!(
                    snapshot = %meta.snapshot_id,
                    target = self.target,
                    bytes = offset,
                    ms = started.elapsed().as_millis() as u64,
                    "sent a snapshot"
                );
                return Ok(SnapshotResponse::new(reply.vote));
            }
        }
        // The encoder stopped without a single chunk: it failed before writing anything. (The
        // loop above awaits the encoder only on its way out.)
        let e = match encoder.await {
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(())) => "the snapshot stream was empty".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(snapshot = %meta.snapshot_id, target = self.target, "cannot read the snapshot to send it: {e}");
        Err(StreamingError::Network(NetworkError::new(&std::io::Error::other(e))))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        let term = rpc.vote.leader_id().term;
        let transfer_from = self
            .net
            .transfer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .filter(|(t, _)| *t == term)
            .map_or(0, |(_, master)| master);
        self.call(Method::Vote, &rpc, &option, transfer_from).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A restarted peer should rejoin quickly; 100 ms between tries costs little.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

/// The parts of a Raft message a cluster-secret proof covers: the method, the group, the three
/// node ids and the payload.
pub fn proof_parts<R>(method: &str, envelope: &RaftEnvelope, with: impl FnOnce(&[&[u8]]) -> R) -> R {
    let mut ids = [0u8; 24];
    ids[..8].copy_from_slice(&envelope.from_node_id.to_le_bytes());
    ids[8..16].copy_from_slice(&envelope.target_node_id.to_le_bytes());
    ids[16..].copy_from_slice(&envelope.transfer_from.to_le_bytes());
    with(&[method.as_bytes(), envelope.group.as_bytes(), &ids, &envelope.payload])
}

/// A request carrying `envelope`, with the cluster secret's proof when there is a secret.
fn prove(
    secret: Option<&raftmq_common::auth::ClusterSecret>,
    method: &str,
    envelope: RaftEnvelope,
) -> tonic::Request<RaftEnvelope> {
    let proof = secret.map(|s| {
        proof_parts(method, &envelope, |parts| {
            s.sign(raftmq_common::time::now_ms() as u64, parts)
        })
    });
    raftmq_common::auth::with_proof(envelope, proof)
}
