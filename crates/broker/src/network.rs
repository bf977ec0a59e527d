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
use openraft::network::snapshot_transport::{Chunked, SnapshotTransport};
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

/// Largest Raft message accepted, encoded.
pub const MAX_RAFT_MESSAGE: usize = 256 << 20;

fn bincode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_RAFT_MESSAGE>,
> {
    bincode::config::standard().with_limit::<MAX_RAFT_MESSAGE>()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode_config())
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode_config()).map(|(v, _)| v)
}

/// Links cut on purpose, for fault-injection tests. Shared by every node of an in-process group.
#[derive(Debug, Default)]
pub struct Faults {
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
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

    pub fn heal_all(&self) {
        self.set().clear();
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
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BrokerNode) -> Connection {
        Connection {
            net: self.clone(),
            target,
            addr: node.raft_addr.clone(),
            client: None,
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
}

#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

type RpcErr<E> = RPCError<NodeId, BrokerNode, E>;

impl Connection {
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

    async fn call<Req, Resp, E>(&mut self, method: Method, req: &Req, option: &RPCOption) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.net.faults.is_cut(self.net.me, self.target) {
            let why = std::io::Error::other(format!(
                "link {} -> {} is cut (fault injection)",
                self.net.me, self.target
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&why)));
        }
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftEnvelope {
            group: self.net.group.clone(),
            from_node_id: self.net.me,
            target_node_id: self.target,
            payload: payload.into(),
        });
        request.set_timeout(option.hard_ttl().min(self.net.timeout.max(option.soft_ttl())));
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let reply = match method {
            Method::Append => client.append_entries(request).await,
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
        let result: Result<Resp, E> =
            decode(&envelope.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        self.call(Method::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<RaftError<NodeId, InstallSnapshotError>>> {
        self.call(Method::Snapshot, &rpc, &option).await
    }

    /// The state machine hands out a pointer to a checkpoint (see `raftmq_store::snapshot`): the
    /// full snapshot is written out here, off the state machine's task, then sent in chunks.
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let Snapshot { meta, snapshot: data } = snapshot;
        let file = data.into_std().await;
        let started = std::time::Instant::now();
        let full = tokio::task::spawn_blocking(move || raftmq_store::snapshot::open_for_sending(file))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r.map_err(std::io::Error::other));
        let full = match full {
            Ok(full) => full,
            Err(e) => {
                // Reported as a network failure, which openraft retries (with a fresh snapshot),
                // not as a storage error, which would stop this node: the commit log itself is
                // fine, only this copy of it failed (a newer snapshot may have replaced the
                // checkpoint while it was read, or the disk filled up).
                tracing::warn!(snapshot = %meta.snapshot_id, target = self.target, "cannot write the snapshot out to send it: {e}");
                return Err(StreamingError::Network(NetworkError::new(&e)));
            }
        };
        let bytes = full.metadata().map(|m| m.len()).unwrap_or(0);
        tracing::info!(
            snapshot = %meta.snapshot_id,
            target = self.target,
            bytes,
            write_ms = started.elapsed().as_millis() as u64,
            "sending a snapshot"
        );
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(full)),
        };
        Chunked::send_snapshot(self, vote, snapshot, cancel, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A restarted peer should rejoin quickly; 100 ms between tries costs little.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}
