//! The NameServer's gRPC service: validates requests, updates the route table, and feeds route
//! watchers.
//!
//! It never blocks on a broker or a client: the table lock is held only for in-memory work, and a
//! watcher that reads too slowly is resent the full picture instead of slowing anyone down.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::Stream;
use raftmq_common::shutdown::Stopping;
use raftmq_common::validate;
use raftmq_common::validate::InvalidField;
use raftmq_common::ErrorCode;
use raftmq_proto::name_server_server::NameServer;
use raftmq_proto::{
    BrokerHeartbeat, ClusterInfo, GetClusterInfoRequest, GetRouteRequest, HeartbeatReply, ListTopicsRequest,
    Permission, RouteEvent, TopicList, TopicRoute, UnregisterReply, UnregisterRequest, WatchRoutesRequest,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::route::RouteTable;

/// The most queues one group may hold for one topic (RocketMQ caps defaultTopicQueueNums too).
pub const MAX_QUEUES: u32 = 1024;
/// How many change notices a slow watcher may fall behind before it is resent everything.
const EVENT_BACKLOG: usize = 1024;
/// How many route events one watcher's stream buffers.
const WATCH_BUFFER: usize = 256;

/// State shared by the service, the expiry scanner and the watch tasks.
pub struct Shared {
    table: Mutex<RouteTable>,
    changes: broadcast::Sender<Arc<BTreeSet<String>>>,
    expiry: Duration,
    shutdown: Stopping,
    pub counters: crate::metrics::Counters,
    /// With a cluster secret, heartbeats and unregistrations must prove it.
    security: raftmq_common::security::Security,
}

impl Shared {
    pub fn new(expiry: Duration, shutdown: Stopping, security: raftmq_common::security::Security) -> Arc<Self> {
        let (changes, _) = broadcast::channel(EVENT_BACKLOG);
        Arc::new(Shared {
            table: Mutex::new(RouteTable::new()),
            changes,
            expiry,
            shutdown,
            counters: Default::default(),
            security,
        })
    }

    /// Checks a broker node's proof of the cluster secret (passes without a secret); a
    /// refusal is logged with the caller's address and counted.
    fn check_broker<T>(&self, request: &Request<T>, call: &str, node: (&str, &str, u64)) -> Result<(), Status> {
        let Some(secret) = &self.security.cluster_secret else {
            return Ok(());
        };
        let proof = request
            .metadata()
            .get(raftmq_common::auth::PEER)
            .and_then(|v| v.to_str().ok());
        let checked = match proof {
            None => Err("the request carries no cluster-secret proof".to_owned()),
            Some(proof) => raftmq_common::auth::broker_call_parts(call, node.0, node.1, node.2, |parts| {
                secret.verify(
                    proof,
                    parts,
                    raftmq_common::time::now_ms() as u64,
                    self.security.clock_skew,
                )
            }),
        };
        checked.map_err(|why| {
            let caller = request
                .remote_addr()
                .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
            tracing::warn!(%caller, request = call, group = node.1, node = node.2, "refused a broker: {why}");
            self.counters.refusals.inc();
            ErrorCode::Unauthenticated.status(format!("{call} refused: {why}"))
        })
    }

    /// Every broker group and node, as `GetClusterInfo` answers.
    pub fn cluster_info(&self, now: Instant) -> raftmq_proto::ClusterInfo {
        self.table().cluster_info(now)
    }

    /// How many topics some live group holds.
    pub fn topic_count(&self) -> usize {
        self.table().topics().len()
    }

    fn table(&self) -> MutexGuard<'_, RouteTable> {
        // The table holds no invariant that a panicking holder could break half-way (every
        // mutation is a few map operations), so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, changed: BTreeSet<String>) {
        if !changed.is_empty() {
            tracing::debug!(topics = ?changed, "routes changed");
            // No receiver is not an error: nobody is watching.
            let _ = self.changes.send(Arc::new(changed));
        }
    }

    /// The route of a topic, `None` when no live group holds it.
    pub fn route(&self, topic: &str) -> Option<raftmq_proto::TopicRoute> {
        self.counters.route_queries.inc();
        self.table().route(topic)
    }

    /// Drops silent nodes; called by the scanner.
    pub fn expire(&self, now: Instant) {
        let (changed, expired) = {
            let mut table = self.table();
            let before = table.node_count();
            let changed = table.expire(now, self.expiry);
            (changed, before.saturating_sub(table.node_count()))
        };
        self.counters.expired_nodes.inc_by(expired as u64);
        if !changed.is_empty() {
            tracing::info!(topics = changed.len(), "expired silent broker nodes");
        }
        self.publish(changed);
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct NameServerService {
    shared: Arc<Shared>,
}

impl NameServerService {
    pub fn new(shared: Arc<Shared>) -> Self {
        NameServerService { shared }
    }
}

fn check_heartbeat(hb: &BrokerHeartbeat) -> Result<(), InvalidField> {
    validate::name("cluster", &hb.cluster)?;
    validate::name("group", &hb.group)?;
    if hb.node_id == 0 {
        return Err(InvalidField::new("node_id", "must be at least 1"));
    }
    validate::addr("client_addr", &hb.client_addr)?;
    if Role::try_from(hb.role).is_err() || hb.role == Role::Unspecified as i32 {
        return Err(InvalidField::new("role", format!("{} is not a role", hb.role)));
    }
    if let Some(table) = &hb.topics {
        for t in &table.topics {
            validate::name("topics.name", &t.name)?;
            for (field, n) in [
                ("topics.write_queues", t.write_queues),
                ("topics.read_queues", t.read_queues),
            ] {
                if n > MAX_QUEUES {
                    return Err(InvalidField::new(field, format!("{n} is over {MAX_QUEUES}")));
                }
            }
            if !matches!(
                Permission::try_from(t.permission),
                Ok(Permission::Read | Permission::Write | Permission::ReadWrite)
            ) {
                return Err(InvalidField::new(
                    "topics.permission",
                    format!("{} is not a permission", t.permission),
                ));
            }
        }
    }
    Ok(())
}

use raftmq_proto::Role;

type WatchStream = Pin<Box<dyn Stream<Item = Result<RouteEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NameServer for NameServerService {
    async fn heartbeat(&self, request: Request<BrokerHeartbeat>) -> Result<Response<HeartbeatReply>, Status> {
        let r = request.get_ref();
        self.shared
            .check_broker(&request, "Heartbeat", (&r.cluster, &r.group, r.node_id))?;
        let hb = request.into_inner();
        self.shared.counters.heartbeats.inc();
        check_heartbeat(&hb)?;
        let changed = self.shared.table().heartbeat(&hb, Instant::now());
        self.shared.publish(changed);
        Ok(Response::new(HeartbeatReply {
            expiry_ms: self.shared.expiry.as_millis() as u64,
        }))
    }

    async fn unregister(&self, request: Request<UnregisterRequest>) -> Result<Response<UnregisterReply>, Status> {
        let r = request.get_ref();
        self.shared
            .check_broker(&request, "Unregister", (&r.cluster, &r.group, r.node_id))?;
        let req = request.into_inner();
        validate::name("group", &req.group)?;
        let changed = self.shared.table().unregister(&req.group, req.node_id);
        tracing::info!(group = %req.group, node = req.node_id, "broker node unregistered");
        self.shared.publish(changed);
        Ok(Response::new(UnregisterReply {}))
    }

    async fn get_route(&self, request: Request<GetRouteRequest>) -> Result<Response<TopicRoute>, Status> {
        let topic = request.into_inner().topic;
        validate::name("topic", &topic)?;
        match self.shared.route(&topic) {
            Some(route) => Ok(Response::new(route)),
            None => Err(ErrorCode::TopicNotFound.status(format!("no live broker group holds topic {topic:?}"))),
        }
    }

    async fn get_cluster_info(
        &self,
        _request: Request<GetClusterInfoRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        Ok(Response::new(self.shared.table().cluster_info(Instant::now())))
    }

    async fn list_topics(&self, _request: Request<ListTopicsRequest>) -> Result<Response<TopicList>, Status> {
        Ok(Response::new(TopicList {
            topics: self.shared.table().topics(),
        }))
    }

    type WatchRoutesStream = WatchStream;

    async fn watch_routes(
        &self,
        request: Request<WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        let topic = request.into_inner().topic;
        if !topic.is_empty() {
            validate::name("topic", &topic)?;
        }
        let watched = (!topic.is_empty()).then_some(topic);
        let shared = self.shared.clone();
        // Subscribe before reading the table, so no change falls between the two.
        let mut changes = shared.changes.subscribe();
        let mut shutdown = shared.shutdown.clone();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            let _open = Watching::new(&shared.counters.watchers);
            let mut pending = snapshot(&shared, watched.as_deref());
            loop {
                for event in pending.drain(..) {
                    tokio::select! {
                        sent = tx.send(Ok(event)) => if sent.is_err() { return },
                        _ = shutdown.wait() => return,
                    }
                }
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tx.closed() => return,
                    received = changes.recv() => match received {
                        Ok(changed) => {
                            let table = shared.table();
                            pending = changed
                                .iter()
                                .filter(|t| watched.as_ref().is_none_or(|w| w == *t))
                                .map(|t| RouteEvent { topic: t.clone(), route: table.route(t) })
                                .collect();
                        }
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "route watcher fell behind; resending every route");
                            pending = snapshot(&shared, watched.as_deref());
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Counts an open watch stream while it lives.
struct Watching(Arc<std::sync::atomic::AtomicI64>);

impl Watching {
    fn new(count: &Arc<std::sync::atomic::AtomicI64>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Watching(count.clone())
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The current route of the watched topic, or of every topic.
fn snapshot(shared: &Shared, watched: Option<&str>) -> Vec<RouteEvent> {
    let table = shared.table();
    match watched {
        Some(t) => vec![RouteEvent {
            topic: t.to_owned(),
            route: table.route(t),
        }],
        None => table
            .topics()
            .into_iter()
            .map(|t| RouteEvent {
                route: table.route(&t),
                topic: t,
            })
            .collect(),
    }
}

/// The NameServer's part of the RocketMQ 5 protocol: routes (and, through them, assignments).
/// Clients configured with a NameServer as their access point query routes here and then talk
/// to the broker nodes the routes list.
pub struct RocketMqRoutes(pub Arc<Shared>);

#[tonic::async_trait]
impl raftmq_rocketmq::Backend for RocketMqRoutes {
    async fn route(&self, topic: &str) -> Result<raftmq_proto::TopicRoute, raftmq_rocketmq::Fail> {
        self.0.route(topic).ok_or_else(|| {
            raftmq_rocketmq::Fail::new(
                raftmq_proto::rocketmq::Code::TopicNotFound,
                format!("TOPIC_NOT_FOUND: no live broker group holds topic {topic:?}"),
            )
        })
    }
}
