//! The NameServer's Prometheus metrics: heartbeats, route queries, nodes expired (counters), and
//! at each scrape the registered nodes per broker group, topics and route watchers.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use raftmq_metrics::prometheus_client::collector::Collector;
use raftmq_metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use raftmq_metrics::prometheus_client::metrics::counter::Counter;
use raftmq_metrics::prometheus_client::metrics::gauge::ConstGauge;
use raftmq_metrics::prometheus_client::metrics::MetricType;
use raftmq_metrics::prometheus_client::registry::Registry;

use crate::service::Shared;

/// What the NameServer counts as it goes.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub heartbeats: Counter,
    /// Heartbeats and unregistrations refused for want of the cluster secret's proof.
    pub refusals: Counter,
    /// TLS handshakes refused (a plaintext client, no client certificate or an untrusted one).
    pub tls_refusals: Counter,
    /// Route queries over both protocols.
    pub route_queries: Counter,
    /// Broker nodes dropped for silence.
    pub expired_nodes: Counter,
    /// Route watch streams open now.
    pub watchers: Arc<AtomicI64>,
    /// gRPC connections: brokers' heartbeats and clients of both protocols.
    pub connections: raftmq_metrics::Connections,
}

/// Builds the registry of a NameServer whose shared state is `shared`.
pub fn registry(counters: &Counters, shared: Weak<Shared>) -> Registry {
    let mut registry = Registry::with_prefix("raftmq_namesrv");
    registry.register("heartbeats", "Broker heartbeats received", counters.heartbeats.clone());
    registry.register(
        "peer_refusals",
        "Broker heartbeats and unregistrations refused: no valid cluster-secret proof",
        counters.refusals.clone(),
    );
    registry.register(
        "tls_refusals",
        "TLS handshakes refused: a plaintext client, or a missing or untrusted client certificate",
        counters.tls_refusals.clone(),
    );
    registry.register(
        "route_queries",
        "Route queries answered (raftmq and RocketMQ 5 clients)",
        counters.route_queries.clone(),
    );
    registry.register(
        "expired_nodes",
        "Broker nodes dropped from the routes for silence",
        counters.expired_nodes.clone(),
    );
    counters.connections.register(
        &mut registry,
        "connections",
        "gRPC connections (brokers, raftmq and RocketMQ 5 clients)",
    );
    registry.register_collector(Box::new(Table {
        shared,
        watchers: counters.watchers.clone(),
    }));
    registry
}

#[derive(Debug)]
struct Table {
    shared: Weak<Shared>,
    watchers: Arc<AtomicI64>,
}

impl Collector for Table {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let watchers = self.watchers.load(Ordering::Relaxed).max(0);
        let mut family = encoder.encode_descriptor("watchers", "Route watch streams open", None, MetricType::Gauge)?;
        ConstGauge::new(watchers).encode(family.encode_family(&[("", ""); 0])?)?;
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let info = shared.cluster_info(Instant::now());
        let mut family = encoder.encode_descriptor(
            "nodes",
            "Live broker nodes registered, per broker group",
            None,
            MetricType::Gauge,
        )?;
        for g in &info.groups {
            ConstGauge::new(g.nodes.len() as i64).encode(family.encode_family(&[("group", g.group.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "group_has_master",
            "1 when a broker group's master is registered",
            None,
            MetricType::Gauge,
        )?;
        for g in &info.groups {
            let has = i64::from(!g.master_addr.is_empty());
            ConstGauge::new(has).encode(family.encode_family(&[("group", g.group.as_str())])?)?;
        }
        let mut family =
            encoder.encode_descriptor("topics", "Topics some live group holds", None, MetricType::Gauge)?;
        ConstGauge::new(shared.topic_count() as i64).encode(family.encode_family(&[("", ""); 0])?)?;
        Ok(())
    }
}
