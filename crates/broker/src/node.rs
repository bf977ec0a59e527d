//! Assembling and running one broker node: store, Raft, servers, proposer, heartbeats.
//!
//! Every task started here listens to one stop signal, and [`Broker::shutdown`] returns only after
//! all of them ended. [`Broker::crash`] stops the node without any of the polite parts, as a
//! SIGKILL would, for tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::error::{InitializeError, RaftError};
use openraft::{Raft, SnapshotPolicy};
use raftmq_common::shutdown::{Shutdown, Stopping};
use raftmq_proto::broker_server::BrokerServer;
use raftmq_proto::raft_transport_server::RaftTransportServer;
use raftmq_store::{BrokerNode, FlushMode, NodeId, Store, StoreOptions, StoreReader, TypeConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, BrokerConfig};
use crate::consumers::Consumers;
use crate::election::{self, LeaderContact};
use crate::metrics::{BrokerMetrics, CountErrors};
use crate::network::{Faults, Network};
use crate::proposer::{Limits, Proposer};
use crate::raft_service::RaftService;
use crate::retention::DiskGuard;
use crate::service::BrokerService;
use crate::state::BrokerState;
use crate::wire::MAX_RAFT_MESSAGE;

/// How long shutdown waits for client connections to close.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a stopping master tries to hand leadership over before it stops anyway.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// The sockets a node serves on. Without a raft listener, the client port serves Raft too.
pub struct Listeners {
    pub client: TcpListener,
    pub raft: Option<TcpListener>,
    /// The metrics endpoint's, unless `metrics-addr = "off"`.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of this node's entry in `members`.
    pub async fn bind(config: &BrokerConfig) -> anyhow::Result<Listeners> {
        let me = config.me();
        let client = TcpListener::bind(&me.client_addr)
            .await
            .with_context(|| format!("cannot listen on client-addr {}", me.client_addr))?;
        let raft = if me.raft_addr == me.client_addr {
            None
        } else {
            Some(
                TcpListener::bind(&me.raft_addr)
                    .await
                    .with_context(|| format!("cannot listen on raft-addr {}", me.raft_addr))?,
            )
        };
        let metrics = match config.metrics_bind_addr()? {
            Some(addr) => Some(
                TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("cannot listen on metrics-addr {addr}"))?,
            ),
            None => None,
        };
        Ok(Listeners { client, raft, metrics })
    }
}

/// A running broker node.
pub struct Broker {
    state: Arc<BrokerState>,
    db: Arc<raftmq_store::db::Db>,
    sync_stall: raftmq_store::SyncStall,
    client_addr: SocketAddr,
    stop: Shutdown,
    /// Raft's connections, for the leadership transfer at a clean stop.
    network: Network,
    tasks: Vec<JoinHandle<()>>,
    servers: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    metrics_addr: Option<SocketAddr>,
}

impl Broker {
    /// Binds the configured addresses and starts. The config must have been validated.
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Broker> {
        let listeners = Listeners::bind(&config).await?;
        Self::start_with(config, listeners, Faults::new()).await
    }

    /// Starts on sockets already bound, with a fault switch shared with a test.
    pub async fn start_with(config: BrokerConfig, listeners: Listeners, faults: Arc<Faults>) -> anyhow::Result<Broker> {
        let security = config.security.load()?;
        let server_tls = match &security.server_tls {
            Some(files) => Some(raftmq_common::tls::ServerTls::load(files.clone()).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let store_options = StoreOptions {
            flush: match config.flush_mode {
                config::FlushMode::Sync => FlushMode::Sync,
                config::FlushMode::Async => FlushMode::Async,
            },
            id_prefix: crc32fast::hash(config.group.as_bytes()),
            // The chaos suite's torn-tail fault needs to know what a power loss could take.
            mark_synced_wal: config.fault_injection,
        };
        let dir = config.data_dir.clone();
        let (store, recovered) = tokio::task::spawn_blocking(move || Store::open(&dir, store_options)).await??;
        tracing::info!(
            dir = %config.data_dir.display(),
            first = ?recovered.first_index,
            last = ?recovered.last_index,
            applied = ?recovered.applied_index,
            checked = recovered.entries_checked,
            "store recovered"
        );
        if config.flush_mode == config::FlushMode::Async {
            tracing::warn!("flush-mode = \"async\": acknowledged messages can be lost if a majority loses power");
        }
        let reader: StoreReader = store.reader.clone();
        let retention = store.retention.clone();
        let db = store.db.clone();
        let leading = store.leading.clone();
        let sync_stall = store.sync_stall.clone();

        let raft_config = openraft::Config {
            cluster_name: config.group.clone(),
            heartbeat_interval: config.raft_heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            install_snapshot_timeout: config.raft_rpc_timeout_ms.max(5_000),
            max_payload_entries: 16,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: config.snapshot_log_keep,
            // Purge in steps no larger than the snapshot interval, or small intervals never purge.
            purge_batch_size: (config.snapshot_every_entries / 2).clamp(1, 256),
            // openraft's own election timer raises the term without asking first; elections
            // are driven by `election` instead (pre-vote, stickiness, transfer).
            enable_elect: false,
            ..Default::default()
        }
        .validate()?;
        let contact = LeaderContact::new();
        let network = Network {
            group: config.group.clone(),
            me: config.node_id,
            timeout: config.raft_rpc_timeout(),
            faults: faults.clone(),
            silent: contact.silence_flag(),
            transfer: contact.transfer_flag(),
            secret: security.cluster_secret.clone(),
        };
        let timing = election::Timing::new(
            config.election_timeout_min_ms,
            config.election_timeout_max_ms,
            config.raft_rpc_timeout(),
        );
        let log = store.log.clone();
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network.clone(),
            store.log,
            store.state_machine,
        )
        .await?;

        let (stop, stopped) = Shutdown::new();
        let limits = Limits {
            max_messages: config.max_batch_messages,
            max_bytes: config.max_batch_bytes,
            max_inflight: config.max_inflight_entries,
            timeout: Duration::from_millis(config.raft_rpc_timeout_ms * 5).max(Duration::from_secs(5)),
        };
        let metrics = Arc::new(BrokerMetrics::new(&config.group, config.node_id, db.clone()));
        let handing_over = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (proposer, proposer_task) = Proposer::start(
            raft.clone(),
            limits,
            metrics.entry_messages.clone(),
            handing_over.clone(),
            stopped.clone(),
        );
        let guard = Arc::new(crate::guard::Guard::new(security, reader.clone(), metrics.clone()));
        let state = Arc::new(BrokerState {
            guard: guard.clone(),
            metrics: metrics.clone(),
            consumers: Consumers::new(Duration::from_millis(config.consumer_expiry_ms)),
            disk: DiskGuard::new(config.data_dir.clone(), config.disk_full_percent),
            faults,
            config,
            raft: raft.clone(),
            reader,
            proposer,
            stop: stopped.clone(),
            handing_over,
            contact: contact.clone(),
            network: network.clone(),
            membership_busy: Default::default(),
            announced_topics: watch::channel(0).0,
            next_queue: Default::default(),
            pop_busy: Default::default(),
            txn_producers: Default::default(),
        });
        metrics.attach(&state);

        let max_message = state.config.max_batch_bytes + (1 << 20);
        let broker_service = CountErrors::new(
            BrokerServer::new(BrokerService::new(state.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message.max(16 << 20)),
            metrics.clone(),
        );
        let rocketmq = raftmq_rocketmq::MessagingService::new(
            Arc::new(crate::rocketmq::RocketMqBroker::new(state.clone())),
            stopped.clone(),
        )
        .with_tls(state.guard.security().client_tls.clone())
        .server();
        let append_server = crate::append_link::AppendServer {
            group: state.config.group.clone(),
            me: state.config.node_id,
            raft: raft.clone(),
            contact: contact.clone(),
            stop: stopped.clone(),
            guard: guard.clone(),
        };
        let raft_service = || {
            RaftTransportServer::new(RaftService {
                group: state.config.group.clone(),
                me: state.config.node_id,
                raft: raft.clone(),
                log: log.clone(),
                contact: contact.clone(),
                leader_silence: Duration::from_millis(state.config.election_timeout_min_ms),
                stickiness: timing.stickiness,
                faults: state.faults.clone(),
                guard: guard.clone(),
            })
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE)
        };
        let client_addr = listeners.client.local_addr()?;
        // Raft's port (the client port when they are the same) also takes AppendEntries
        // connections (see `append_link`).
        // Connections are counted on the client port; a separate Raft port's are not.
        let serve = |router: tonic::transport::server::Router,
                     listener: TcpListener,
                     raft_port: bool,
                     client_port: bool| {
            let mut stopped = stopped.clone();
            let incoming: std::pin::Pin<
                Box<dyn futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send>,
            > = if raft_port {
                Box::pin(append_server.clone().split(listener))
            } else {
                Box::pin(raftmq_common::runtime::incoming(listener))
            };
            let counted = if client_port {
                metrics.connections.clone()
            } else {
                raftmq_metrics::Connections::default()
            };
            let incoming = counted.track(incoming);
            let stopping = async move { stopped.wait().await };
            match &server_tls {
                // The client port serves TLS only (validated: Raft has a port of its own).
                Some(tls) if client_port => {
                    let metrics = metrics.clone();
                    let refused = Arc::new(move || metrics.refused(raftmq_common::ErrorCode::Unauthenticated, "tls"));
                    tokio::spawn(router.serve_with_incoming_shutdown(tls.clone().accept(incoming, refused), stopping))
                }
                _ => tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopping)),
            }
        };
        let tls_task = server_tls.as_ref().map(|tls| tls.watch(stopped.clone()));
        let mut servers = Vec::new();
        match listeners.raft {
            None => servers.push(serve(
                tonic::transport::Server::builder()
                    .add_service(broker_service)
                    .add_service(rocketmq)
                    .add_service(raft_service()),
                listeners.client,
                true,
                true,
            )),
            Some(raft_listener) => {
                servers.push(serve(
                    tonic::transport::Server::builder()
                        .add_service(broker_service)
                        .add_service(rocketmq),
                    listeners.client,
                    false,
                    true,
                ));
                servers.push(serve(
                    tonic::transport::Server::builder().add_service(raft_service()),
                    raft_listener,
                    true,
                    false,
                ));
            }
        }
        let retention_task = tokio::spawn(crate::retention::run(
            retention,
            metrics.retention_deleted.clone(),
            raft.clone(),
            (state.config.snapshot_every_entries / 2).max(1),
            state.config.data_dir.clone(),
            state.config.retention_hours,
            state.config.disk_clean_percent,
            Duration::from_millis(state.config.retention_check_ms),
            stopped.clone(),
        ));
        let role_task = tokio::spawn(track_leading(
            raft.server_metrics(),
            leading,
            contact.clone(),
            stopped.clone(),
        ));
        let election_task = tokio::spawn(election::run(
            raft.clone(),
            log,
            network.clone(),
            contact.clone(),
            timing,
            stopped.clone(),
        ));
        let first_start_task = tokio::spawn(initialize_group(
            raft.clone(),
            state.config.clone(),
            timing,
            stopped.clone(),
        ));
        let delivery_task = tokio::spawn(crate::ops::delay::run(state.clone(), stopped.clone()));
        let txn_check_task = tokio::spawn(crate::ops::txn::run(state.clone(), stopped.clone()));
        let raft_watch_task = tokio::spawn(crate::metrics::watch_raft(
            metrics.clone(),
            state.config.node_id,
            raft.metrics(),
            stopped.clone(),
        ));
        let metrics_endpoint = match listeners.metrics {
            Some(listener) => {
                let render = {
                    let metrics = metrics.clone();
                    Arc::new(move || metrics.render()) as raftmq_metrics::Render
                };
                let mut stopped = stopped.clone();
                let endpoint = raftmq_metrics::serve(listener, render, async move { stopped.wait().await })?;
                tracing::info!(addr = %endpoint.addr, "metrics at /metrics");
                Some(endpoint)
            }
            None => None,
        };
        let heartbeat_task = tokio::spawn(crate::heartbeat::run(state.clone(), stopped));
        tracing::info!(group = %state.config.group, node = state.config.node_id, %client_addr, "broker node started");
        Ok(Broker {
            state,
            db,
            sync_stall,
            client_addr,
            stop,
            network,
            metrics_addr: metrics_endpoint.as_ref().map(|e| e.addr),
            tasks: metrics_endpoint
                .map(|e| e.task)
                .into_iter()
                .chain([
                    raft_watch_task,
                    proposer_task,
                    heartbeat_task,
                    delivery_task,
                    txn_check_task,
                    retention_task,
                    role_task,
                    election_task,
                    first_start_task,
                ])
                .chain(tls_task)
                .collect(),
            servers,
        })
    }

    /// Where the metrics endpoint listens, unless it is off.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.state.raft
    }

    pub fn reader(&self) -> &StoreReader {
        &self.state.reader
    }

    pub fn node_id(&self) -> u64 {
        self.state.config.node_id
    }

    /// Fault injection for in-process tests: while `stalled`, this node's appends as master are
    /// written but never reported synced, as if its disk hung on fsync.
    pub fn stall_log_sync(&self, stalled: bool) {
        self.sync_stall.set(stalled);
    }

    /// Stops cleanly: a master first hands leadership to an up-to-date slave (it takes no new
    /// writes meanwhile, lets the ones in flight commit, and waits for the new master); then it
    /// unregisters from the NameServers, stops serving, stops Raft (every append it reported
    /// flushed is synced; the memtable flush below writes out the rest), and waits for every
    /// task.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if self.state.raft.metrics().borrow().state == openraft::ServerState::Leader {
            self.state
                .handing_over
                .store(true, std::sync::atomic::Ordering::Release);
            match election::transfer_leadership(
                &self.state.raft,
                &self.network,
                &self.state.proposer,
                None,
                HANDOVER_TIMEOUT,
            )
            .await
            {
                Ok(next) => tracing::info!(node = self.state.config.node_id, next, "leadership handed over"),
                Err(why) => tracing::warn!(
                    node = self.state.config.node_id,
                    "stopping without handing leadership over ({why}); the group elects a master after an election timeout"
                ),
            }
        }
        self.stop.stop();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        for mut server in self.servers.drain(..) {
            if tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await.is_err() {
                tracing::warn!("client connections stayed open for {DRAIN_TIMEOUT:?}; closing them");
                server.abort();
            }
        }
        self.state
            .raft
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("raft did not stop cleanly: {e}"))?;
        // So that the next start need not replay the WAL.
        if let Err(e) = raftmq_store::flush_memtables(&self.db) {
            tracing::warn!("flushing memtables at stop failed (the next start replays the WAL): {e}");
        }
        tracing::info!(node = self.state.config.node_id, "broker node stopped");
        Ok(())
    }

    /// Stops at once without unregistering or draining, as a killed process would.
    pub async fn crash(mut self) {
        for server in self.servers.drain(..) {
            server.abort();
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        let _ = self.state.raft.shutdown().await;
        // Returns once the database is closed, as a killed process's would be: the aborted
        // tasks let go of their handles as the runtime drops them.
        let db = self.db.clone();
        drop(self);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&db) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the node cannot go on: a server ended by itself, or the Raft core stopped
    /// (a storage error: a full disk, a failed write). Either is an error; the process should
    /// exit loudly rather than linger as a node that answers but never commits.
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        // The server metrics change only with role, term or leader, and their channel closes
        // when the core ends; the full metrics change with every entry, and waking this task
        // (the process's main thread) for each one costs a context switch per entry.
        let mut server = self.state.raft.server_metrics();
        let metrics = self.state.raft.metrics();
        let raft_stopped = async move {
            while server.changed().await.is_ok() {}
            match &metrics.borrow().running_state {
                Err(fatal) => fatal.to_string(),
                Ok(()) => "the Raft core ended".to_owned(),
            }
        };
        tokio::select! {
            (result, _, _) = futures::future::select_all(self.servers.iter_mut()) => {
                result??;
                Ok(())
            }
            fatal = raft_stopped => Err(anyhow::anyhow!(
                "the Raft core stopped ({fatal}); this node stops: fix the cause (a full disk, a failing \
                 device) and start it again, it recovers from its log"
            )),
        }
    }
}

/// The first start of an empty group sets its membership. The member with the lowest node id
/// does it as soon as a majority listens and stands for election alone, so a new group elects
/// its first master in term 1, without split votes; the others receive the membership from it.
/// A member that has heard nothing after a while (the lowest one is down at the first start)
/// sets it itself: they all write the same first entry, and a node that has a log already
/// refuses.
async fn initialize_group(raft: Raft<TypeConfig>, config: BrokerConfig, timing: election::Timing, mut stop: Stopping) {
    if config.join {
        // Its first log entries come from the master that adds it: a membership of its own
        // would begin a different log under the same first log id.
        if matches!(raft.is_initialized().await, Ok(false)) {
            tracing::info!(
                group = %config.group,
                node = config.node_id,
                "waiting to be added to the group (raftmq group add-node / replace-node)"
            );
        }
        return;
    }
    let lowest = config.members.iter().map(|m| m.node_id).min();
    if lowest != Some(config.node_id) {
        let wait = (timing.stickiness + timing.spread) * 10;
        let waiter = raft.wait(Some(wait));
        let joined = waiter.metrics(
            |m| m.membership_config.membership().voter_ids().next().is_some(),
            "the group's membership arrives",
        );
        tokio::select! {
            joined = joined => if joined.is_ok() { return },
            _ = stop.wait() => return,
        }
    }
    match raft.is_initialized().await {
        Ok(false) => {}
        _ => return,
    }
    // The first election goes out at once: wait (a little) until a majority listens, or it
    // fails against nodes still starting and the group's first master is elected a term later.
    let majority = config.members.len() / 2 + 1;
    let end = tokio::time::Instant::now() + timing.stickiness * 10;
    loop {
        let mut listening = 1; // this node
        for m in config.members.iter().filter(|m| m.node_id != config.node_id) {
            let probe = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(&m.raft_addr));
            if matches!(probe.await, Ok(Ok(_))) {
                listening += 1;
            }
        }
        if listening >= majority || tokio::time::Instant::now() >= end {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.wait() => return,
        }
    }
    let members: BTreeMap<u64, BrokerNode> = config
        .members
        .iter()
        .map(|m| {
            (
                m.node_id,
                BrokerNode {
                    raft_addr: m.raft_addr.clone(),
                    client_addr: m.client_addr.clone(),
                },
            )
        })
        .collect();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(group = %config.group, node = config.node_id, "initialized the group's membership"),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
        Err(e) => tracing::error!(group = %config.group, "initializing the group failed: {e}"),
    }
}

/// Tells the store whether this node leads, as the role changes: the leader's appends are synced
/// beside replication (see `raftmq_store::log_store`); and the election state since when.
async fn track_leading(
    mut server: watch::Receiver<openraft::metrics::RaftServerMetrics<NodeId, BrokerNode>>,
    leading: raftmq_store::Leading,
    contact: Arc<LeaderContact>,
    mut stop: Stopping,
) {
    let mut vote = None;
    loop {
        let (master, now_vote) = {
            let m = server.borrow_and_update();
            (m.state == openraft::ServerState::Leader, m.vote)
        };
        // A master that stepped down for want of a majority is silent until its vote changes
        // (another master's term reached it, or it stood again).
        if vote.is_some_and(|v| v != now_vote) {
            contact.set_quorum_lost(false);
        }
        vote = Some(now_vote);
        leading.set(master);
        contact.set_master(master);
        tokio::select! {
            changed = server.changed() => if changed.is_err() { break },
            _ = stop.wait() => break,
        }
    }
    leading.set(false);
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop.stop();
        for server in &self.servers {
            server.abort();
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}
