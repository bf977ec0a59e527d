//! The broker's Prometheus metrics (served by `raftmq_metrics` on `metrics-addr`).
//!
//! Counters and histograms are updated where things happen (a send, a pull, a proposed entry, a
//! returned error, a retention pass, a change of term or leader); what is state (role, term,
//! indexes, replication lag, disk, queues, consumer lag, POP in flight, dead letters, pending
//! delayed messages) is read from the node at each scrape. Labels: topic, consumer group, queue,
//! node id, error code; never a message or a client id.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use openraft::ServerState;
use raftmq_metrics::prometheus_client::collector::Collector;
use raftmq_metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use raftmq_metrics::prometheus_client::metrics::counter::Counter;
use raftmq_metrics::prometheus_client::metrics::family::Family;
use raftmq_metrics::prometheus_client::metrics::gauge::ConstGauge;
use raftmq_metrics::prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use raftmq_metrics::prometheus_client::metrics::MetricType;
use raftmq_metrics::prometheus_client::registry::Registry;

use crate::state::BrokerState;

type TopicLabel = [(&'static str, String); 1];
type CodeLabel = [(&'static str, &'static str); 1];
type RefusalLabel = [(&'static str, &'static str); 2];

/// The broker's metrics. Cheap to clone pieces of (each metric is an `Arc` inside).
pub struct BrokerMetrics {
    registry: Registry,
    node: Arc<OnceLock<Weak<BrokerState>>>,
    pub sent_messages: Family<TopicLabel, Counter>,
    pub sent_bytes: Family<TopicLabel, Counter>,
    pub pulled_messages: Family<TopicLabel, Counter>,
    pub pulled_bytes: Family<TopicLabel, Counter>,
    pub send_seconds: Histogram,
    pub pull_seconds: Histogram,
    /// Messages per proposed Raft entry (group commit).
    pub entry_messages: Histogram,
    pub errors: Family<CodeLabel, Counter>,
    /// Requests refused by authentication or authorization (`UNAUTHENTICATED`, `FORBIDDEN`),
    /// by code and by who asked: a client (either protocol) or a peer (Raft traffic).
    pub refusals: Family<RefusalLabel, Counter>,
    pub elections: Counter,
    pub leader_changes: Counter,
    pub snapshots: Counter,
    pub retention_deleted: Counter,
    /// gRPC connections on the client port (both protocols; peers' votes too when Raft shares
    /// the port).
    pub connections: raftmq_metrics::Connections,
}

impl std::fmt::Debug for BrokerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerMetrics")
    }
}

impl BrokerMetrics {
    /// Metrics whose state part reads the node once [`attach`](Self::attach) names it, and the
    /// store's WAL sync times from `db`. Every series carries the node's `broker_group` and
    /// `node` (its id).
    pub fn new(group: &str, node_id: u64, db: Arc<raftmq_store::db::Db>) -> BrokerMetrics {
        let labels = [
            (Cow::Borrowed("broker_group"), Cow::Owned(group.to_owned())),
            (Cow::Borrowed("node"), Cow::Owned(node_id.to_string())),
        ];
        let mut registry = Registry::with_prefix_and_labels("raftmq_broker", labels.into_iter());
        let node: Arc<OnceLock<Weak<BrokerState>>> = Arc::default();
        let m = BrokerMetrics {
            sent_messages: Family::default(),
            sent_bytes: Family::default(),
            pulled_messages: Family::default(),
            pulled_bytes: Family::default(),
            send_seconds: Histogram::new(raftmq_metrics::latency_buckets()),
            pull_seconds: Histogram::new(raftmq_metrics::latency_buckets()),
            entry_messages: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            errors: Family::default(),
            refusals: Family::default(),
            elections: Counter::default(),
            leader_changes: Counter::default(),
            snapshots: Counter::default(),
            retention_deleted: Counter::default(),
            connections: raftmq_metrics::Connections::default(),
            registry: Registry::default(),
            node: node.clone(),
        };
        registry.register(
            "sent_messages",
            "Messages stored by sends, by topic (the master counts them)",
            m.sent_messages.clone(),
        );
        registry.register(
            "sent_bytes",
            "Body bytes stored by sends, by topic",
            m.sent_bytes.clone(),
        );
        registry.register(
            "pulled_messages",
            "Messages returned by pulls and POP receives, by topic",
            m.pulled_messages.clone(),
        );
        registry.register(
            "pulled_bytes",
            "Body bytes returned by pulls and POP receives, by topic",
            m.pulled_bytes.clone(),
        );
        registry.register(
            "send_seconds",
            "Time from a send's arrival to its answer (committed to a majority, applied)",
            m.send_seconds.clone(),
        );
        registry.register(
            "pull_seconds",
            "Time to answer a pull, long-polling wait included",
            m.pull_seconds.clone(),
        );
        registry.register(
            "entry_messages",
            "Messages (or commands) per proposed Raft entry: the group commit",
            m.entry_messages.clone(),
        );
        registry.register(
            "errors",
            "Errors answered to raftmq clients, by stable code",
            m.errors.clone(),
        );
        registry.register(
            "auth_refusals",
            "Requests refused for their credentials or rights, by code and by caller kind (client, peer)",
            m.refusals.clone(),
        );
        registry.register(
            "elections",
            "Terms this node has seen begin (each is an election)",
            m.elections.clone(),
        );
        registry.register(
            "leader_changes",
            "Changes of the master this node knows of",
            m.leader_changes.clone(),
        );
        registry.register(
            "snapshots",
            "Snapshots this node built or installed",
            m.snapshots.clone(),
        );
        registry.register(
            "retention_deleted_entries",
            "Commit-log entries deleted by retention",
            m.retention_deleted.clone(),
        );
        m.connections.register(
            &mut registry,
            "client_connections",
            "gRPC connections to the client port (raftmq and RocketMQ 5 clients, and peers' votes when Raft shares the port)",
        );
        registry.register_collector(Box::new(NodeState { node, db }));
        BrokerMetrics { registry, ..m }
    }

    /// Names the node whose state the scrape reads.
    pub fn attach(&self, state: &Arc<BrokerState>) {
        let _ = self.node.set(Arc::downgrade(state));
    }

    /// One scrape, as OpenMetrics text.
    pub fn render(&self) -> String {
        raftmq_metrics::encode(&self.registry)
    }

    pub fn sent(&self, topic: &str, messages: usize, bytes: usize, started: Instant) {
        let label = [("topic", topic.to_owned())];
        self.sent_messages.get_or_create(&label).inc_by(messages as u64);
        self.sent_bytes.get_or_create(&label).inc_by(bytes as u64);
        self.send_seconds.observe(started.elapsed().as_secs_f64());
    }

    pub fn pulled(&self, topic: &str, messages: usize, bytes: usize) {
        if messages == 0 {
            return;
        }
        let label = [("topic", topic.to_owned())];
        self.pulled_messages.get_or_create(&label).inc_by(messages as u64);
        self.pulled_bytes.get_or_create(&label).inc_by(bytes as u64);
    }

    /// One refused request: `who` is `client` or `peer`.
    pub fn refused(&self, code: raftmq_common::ErrorCode, who: &'static str) {
        self.refusals
            .get_or_create(&[("code", code.as_str()), ("caller", who)])
            .inc();
    }

    pub fn error(&self, code: raftmq_common::ErrorCode) {
        self.errors.get_or_create(&[("code", code.as_str())]).inc();
    }
}

/// Counts elections, leader changes and snapshots from Raft's metrics until `stop`.
/// Logs each once, at info (openraft's own logs are kept at warn), and keeps the term JSON log
/// lines carry.
pub async fn watch_raft(
    metrics: Arc<BrokerMetrics>,
    me: u64,
    mut raft: tokio::sync::watch::Receiver<openraft::RaftMetrics<raftmq_store::NodeId, raftmq_store::BrokerNode>>,
    mut stop: raftmq_common::shutdown::Stopping,
) {
    let (mut term, mut leader, mut snapshot, mut role) = {
        let m = raft.borrow_and_update();
        (m.current_term, m.current_leader, m.snapshot, m.state)
    };
    raftmq_common::logging::set_term(term);
    loop {
        tokio::select! {
            changed = raft.changed() => if changed.is_err() { return },
            _ = stop.wait() => return,
        }
        let m = raft.borrow_and_update().clone();
        if m.current_term > term {
            metrics.elections.inc_by(m.current_term - term);
            raftmq_common::logging::set_term(m.current_term);
            tracing::info!(node = me, term = m.current_term, from = term, "new term");
            term = m.current_term;
        }
        if m.state != role {
            tracing::info!(node = me, term = m.current_term, role = ?m.state, was = ?role, "role changed");
            role = m.state;
        }
        if m.current_leader != leader {
            if let Some(new) = m.current_leader {
                metrics.leader_changes.inc();
                tracing::info!(node = me, term = m.current_term, master = new, "master changed");
            }
            leader = m.current_leader;
        }
        if m.snapshot != snapshot {
            metrics.snapshots.inc();
            tracing::info!(node = me, index = ?m.snapshot.map(|l| l.index), "snapshot taken or installed");
            snapshot = m.snapshot;
        }
    }
}

/// What a scrape reads from the node.
struct NodeState {
    node: Arc<OnceLock<Weak<BrokerState>>>,
    db: Arc<raftmq_store::db::Db>,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeState")
    }
}

/// This process's resident set size, from `/proc/self/status` (Linux); `None` elsewhere.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Writes one gauge family: `samples` of (labels, value).
fn gauges<L: raftmq_metrics::prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(L, f64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> Result<(), std::fmt::Error> {
    let none: [(&str, &str); 0] = [];
    gauges(encoder, name, help, &[(none, value)])
}

impl Collector for NodeState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (buckets, count, sum) = self.db.sync_times.buckets();
        let sync = encoder.encode_descriptor(
            "wal_sync_seconds",
            "Time of each WAL fsync (a master's sync of its appends, a slave's synced append)",
            None,
            MetricType::Histogram,
        )?;
        encode_histogram(sync, sum, count, &buckets)?;
        let memory = self.db.memory();
        let per_cf = |f: fn(&raftmq_store::db::CfMemory) -> u64| -> Vec<([(&str, &str); 1], f64)> {
            memory.iter().map(|m| ([("cf", m.cf)], f(m) as f64)).collect()
        };
        gauges(
            &mut encoder,
            "store_memtable_bytes",
            "RocksDB memtables by column family: the active one and those not yet released after a flush",
            &per_cf(|m| m.memtables),
        )?;
        gauge(
            &mut encoder,
            "store_block_cache_bytes",
            "RocksDB block cache in use (one cache for every column family)",
            self.db.block_cache_bytes() as f64,
        )?;
        gauges(
            &mut encoder,
            "store_table_readers_bytes",
            "RocksDB table readers (index and filter blocks outside the block cache), by column family",
            &per_cf(|m| m.table_readers),
        )?;
        if let Some(rss) = resident_bytes() {
            gauge(
                &mut encoder,
                "resident_memory_bytes",
                "This process's resident memory (RSS)",
                rss as f64,
            )?;
        }

        let Some(state) = self.node.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let s = &*state;
        let info = [("cluster", s.config.cluster.clone())];
        gauges(&mut encoder, "info", "This node's cluster", &[(info, 1.0)])?;
        let m = s.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader if s.is_master() => "master",
            ServerState::Leader => "master_stepping_down",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Follower => "slave",
            ServerState::Shutdown => "shutdown",
        };
        let roles: Vec<([(&str, &str); 1], f64)> = [
            "master",
            "master_stepping_down",
            "slave",
            "candidate",
            "learner",
            "shutdown",
        ]
        .iter()
        .map(|r| ([("role", *r)], if *r == role { 1.0 } else { 0.0 }))
        .collect();
        gauges(&mut encoder, "role", "1 for this node's Raft role", &roles)?;
        gauge(&mut encoder, "term", "Current Raft term", m.current_term as f64)?;
        let last = m.last_log_index.unwrap_or(0);
        gauge(
            &mut encoder,
            "last_log_index",
            "Last Raft log index stored",
            last as f64,
        )?;
        gauge(
            &mut encoder,
            "applied_index",
            "Last log index applied (so committed)",
            m.last_applied.map_or(0, |l| l.index) as f64,
        )?;
        gauge(
            &mut encoder,
            "snapshot_index",
            "Log index of the current snapshot",
            m.snapshot.map_or(0, |l| l.index) as f64,
        )?;
        if let Some(replication) = &m.replication {
            let lag: Vec<([(&str, String); 1], f64)> = replication
                .iter()
                .filter(|(id, _)| **id != s.config.node_id)
                .map(|(id, matched)| {
                    let behind = last.saturating_sub(matched.map_or(0, |l| l.index));
                    ([("slave", id.to_string())], behind as f64)
                })
                .collect();
            gauges(
                &mut encoder,
                "replication_lag_entries",
                "On the master: log entries each slave has yet to confirm",
                &lag,
            )?;
        }
        if let Ok(disk) = raftmq_store::disk::usage(&s.config.data_dir) {
            gauge(
                &mut encoder,
                "disk_total_bytes",
                "Size of the data directory's filesystem",
                disk.total_bytes as f64,
            )?;
            gauge(
                &mut encoder,
                "disk_available_bytes",
                "Bytes available on the data directory's filesystem",
                disk.available_bytes as f64,
            )?;
            gauge(
                &mut encoder,
                "disk_used_percent",
                "Disk use as DISK_FULL measures it",
                disk.used_percent(),
            )?;
        }
        gauge(
            &mut encoder,
            "delayed_pending",
            "Delayed messages stored and not yet due",
            s.reader.pending_timers() as f64,
        )?;
        gauge(
            &mut encoder,
            "transactions_pending",
            "Transactions whose half message is stored and neither committed nor rolled back",
            s.reader.pending_txns() as f64,
        )?;
        gauge(
            &mut encoder,
            "transaction_producers",
            "Producers connected here that answer transaction checks",
            s.txn_producers.count() as f64,
        )?;

        // Queues: their bounds, and what consumer groups have left in them.
        let queues = s.reader.queues();
        let mut messages = Vec::new();
        let mut dead = Vec::new();
        for (topic, queue_id, q) in &queues {
            let stored = q.next_offset.saturating_sub(q.min_offset) as f64;
            if let Some(group) = topic.strip_prefix("%DLQ%") {
                dead.push(([("group", group.to_owned())], stored));
            }
            messages.push(([("topic", topic.clone()), ("queue", queue_id.to_string())], stored));
        }
        gauges(
            &mut encoder,
            "queue_messages",
            "Messages stored in each queue (after retention)",
            &messages,
        )?;
        gauges(
            &mut encoder,
            "dead_letters",
            "Messages on each group's dead-letter topic",
            &dead,
        )?;
        let ends: std::collections::HashMap<(&str, u32), u64> = queues
            .iter()
            .map(|(t, q, st)| ((t.as_str(), *q), st.next_offset))
            .collect();
        let lag: Vec<([(&str, String); 3], f64)> = s
            .reader
            .all_consume_offsets()
            .into_iter()
            .map(|(group, topic, queue, offset)| {
                let end = ends.get(&(topic.as_str(), queue)).copied().unwrap_or(offset);
                let behind = end.saturating_sub(offset) as f64;
                (
                    [("group", group), ("topic", topic), ("queue", queue.to_string())],
                    behind,
                )
            })
            .collect();
        gauges(
            &mut encoder,
            "consumer_lag_messages",
            "Messages past each consumer group's committed offset, per queue",
            &lag,
        )?;
        let inflight: Vec<([(&str, String); 2], f64)> = s
            .reader
            .pop_inflight()
            .into_iter()
            .map(|(group, topic, n)| ([("group", group), ("topic", topic)], n as f64))
            .collect();
        gauges(
            &mut encoder,
            "pop_inflight",
            "POP deliveries (RocketMQ 5 consumers) not yet acknowledged",
            &inflight,
        )?;
        let members: Vec<([(&str, String); 1], f64)> = s
            .consumers
            .counts(Instant::now())
            .into_iter()
            .map(|(group, n)| ([("group", group)], n as f64))
            .collect();
        gauges(
            &mut encoder,
            "consumers",
            "Live members of each consumer group heartbeating to this node",
            &members,
        )?;
        Ok(())
    }
}

/// No exemplars: the histograms here carry none.
type Exemplars = std::collections::HashMap<
    usize,
    raftmq_metrics::prometheus_client::metrics::exemplar::Exemplar<[(&'static str, &'static str); 0], f64>,
>;

fn encode_histogram(
    mut encoder: raftmq_metrics::prometheus_client::encoding::MetricEncoder,
    sum: f64,
    count: u64,
    buckets: &[(f64, u64)],
) -> Result<(), std::fmt::Error> {
    let none: Option<&Exemplars> = None;
    encoder.encode_histogram(sum, count, buckets, none)
}

/// A gRPC service that counts the errors it answers by their stable code (the `x-raftmq-code`
/// header of an error answer), as [`BrokerMetrics::errors`].
#[derive(Clone)]
pub struct CountErrors<S> {
    inner: S,
    metrics: Arc<BrokerMetrics>,
}

impl<S> CountErrors<S> {
    pub fn new(inner: S, metrics: Arc<BrokerMetrics>) -> Self {
        CountErrors { inner, metrics }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for CountErrors<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, RB> tower::Service<http::Request<B>> for CountErrors<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let answer = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = answer.await?;
            let code = response
                .headers()
                .get(raftmq_common::code::CODE_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(raftmq_common::ErrorCode::parse);
            if let Some(code) = code {
                metrics.error(code);
            }
            Ok(response)
        })
    }
}
