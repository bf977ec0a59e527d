//! The raftmq client SDK: what producers, consumers and operators use.
//!
//! A [`Client`] holds the NameServer list, the route cache and one gRPC channel per broker
//! node; [`Producer`], [`PullConsumer`], [`PushConsumer`] and [`Admin`] are built on it. Names
//! and defaults follow RocketMQ's clients (send timeout 3 s, 2 retries, clustering consumers,
//! average queue allocation).
//!
//! Guarantees: a send reported `Ok` is committed on a majority of its group. A send that timed
//! out is reported as [`Error::Timeout`] — unknown, never "failed". Consumers deliver at
//! least once: after a crash or failover a consumer may see messages again from its last
//! committed offset, never skip one.

pub mod admin;
pub mod consumer;
pub mod dead_letters;
pub mod error;
pub mod key_query;
pub mod membership;
pub mod message;
pub mod overview;
pub mod producer;
pub mod route;
pub mod transaction;
pub mod users;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use raftmq_common::shutdown::{Shutdown, Stopping};
use raftmq_proto as pb;
use raftmq_proto::broker_client::BrokerClient;
use tonic::transport::Channel;

pub use admin::Admin;
/// The type of a received message's body (re-exported so that users need not name the crate).
pub use bytes::Bytes;
pub use consumer::{
    ConsumeFrom, ConsumeResult, MessageModel, MessageSelector, PullConsumer, PullResult, PushConsumer,
    PushConsumerBuilder, ReadPreference, SentBack,
};
pub use key_query::KeyQueryResult;
pub use message::{Delayed, Message, ReceivedMessage, SendResult};
pub use overview::{ConsumerOffset, QueueBounds};
pub use producer::Producer;
pub use raftmq_common::{Error, ErrorCode};
pub use route::{GroupRoute, MessageQueue, TopicRoute};
pub use transaction::{Transaction, TransactionProducer, TransactionState};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// NameServer addresses (`host:port`), tried in turn.
    pub namesrv: Vec<String>,
    /// Deadline of one request other than a send.
    pub request_timeout: Duration,
    /// Deadline of one send; past it the outcome is unknown.
    pub send_timeout: Duration,
    /// Extra attempts of a send that certainly did not happen (node down, not master).
    pub retries: u32,
    /// How often cached routes are fetched again.
    pub route_refresh: Duration,
    /// Follow the NameServers' route watch stream.
    pub watch_routes: bool,
    /// Access key and secret key that sign every request to a broker, for clusters with
    /// `auth = true` (RocketMQ 5's signature, so the same users serve both protocols).
    pub credentials: Option<raftmq_common::auth::Credentials>,
    /// TLS to the NameServers and brokers (clusters whose client-facing ports serve TLS):
    /// the CA to trust and, for servers that ask, a client certificate.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Connections to each broker node that pulls and other reads take in turn (at least 1;
    /// default 4). Everything on one HTTP/2 connection goes through one task at each end, and
    /// a consumer reading several queues at once waited on it: 8 queues consumed 11-13 %
    /// faster over 2 connections and 4-7 % faster again over 4 (docs/benchmarks.md, session
    /// 23). Sends and admin calls keep one connection per node.
    pub read_connections: usize,
}

impl ClientConfig {
    pub fn new(namesrv: impl IntoIterator<Item = impl Into<String>>) -> ClientConfig {
        ClientConfig {
            namesrv: namesrv.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_secs(3),
            send_timeout: Duration::from_secs(3),
            retries: 2,
            route_refresh: Duration::from_secs(30),
            watch_routes: true,
            credentials: None,
            tls: None,
            read_connections: 4,
        }
    }

    /// The same settings, signing requests with `credentials`.
    pub fn with_credentials(mut self, credentials: raftmq_common::auth::Credentials) -> ClientConfig {
        self.credentials = Some(credentials);
        self
    }
}

/// Signs each request with the client's credentials, when it has some: a fresh signing time
/// every time, so a long-lived client never runs past the servers' clock skew.
#[derive(Clone, Default)]
pub struct Signer(Option<Arc<raftmq_common::auth::Credentials>>);

impl tonic::service::Interceptor for Signer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(credentials) = &self.0 {
            let (date_time, authorization) = credentials.sign(std::time::SystemTime::now());
            let md = request.metadata_mut();
            if let (Ok(d), Ok(a)) = (date_time.parse(), authorization.parse()) {
                md.insert(raftmq_common::auth::DATE_TIME, d);
                md.insert(raftmq_common::auth::AUTHORIZATION, a);
            }
        }
        Ok(request)
    }
}

/// The channel to a broker node: a gRPC channel whose requests the client's [`Signer`] signs.
pub type Transport = tonic::service::interceptor::InterceptedService<Channel, Signer>;

struct Inner {
    config: ClientConfig,
    routes: route::Routes,
    pool: Mutex<HashMap<String, BrokerClient<Transport>>>,
    /// The read connections to each broker node (see [`ClientConfig::read_connections`]).
    read_pool: Mutex<HashMap<String, Vec<BrokerClient<Transport>>>>,
    /// Which read connection the next read takes.
    next_read: std::sync::atomic::AtomicUsize,
    stop: Shutdown,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

/// A connection to a raftmq cluster. Cheap to clone; background route refreshing stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Creates a client. No connection is made until the first call. Needs a Tokio runtime.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        let routes = route::Routes::new(&config.namesrv, config.request_timeout, config.tls.as_ref())?;
        let (stop, stopped) = Shutdown::new();
        let inner = Arc::new(Inner {
            config,
            routes,
            pool: Mutex::new(HashMap::new()),
            read_pool: Mutex::new(HashMap::new()),
            next_read: std::sync::atomic::AtomicUsize::new(0),
            stop,
        });
        tokio::spawn(refresh_routes(Arc::downgrade(&inner), stopped.clone()));
        if inner.config.watch_routes {
            tokio::spawn(watch_routes(Arc::downgrade(&inner), stopped));
        }
        Ok(Client { inner })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The topic's route, from the cache when present.
    pub async fn route(&self, topic: &str) -> Result<Arc<TopicRoute>, Error> {
        raftmq_common::validate::name("topic", topic).map_err(|e| ErrorCode::InvalidArgument.err(e.to_string()))?;
        self.inner.routes.get(topic).await
    }

    /// Fetches the topic's route now.
    pub async fn refresh_route(&self, topic: &str) -> Result<Arc<TopicRoute>, Error> {
        self.inner.routes.refresh(topic).await
    }

    /// Resolves once the route cache names another master for `group` than `master`.
    pub(crate) async fn master_moved(&self, topic: &str, group: &str, master: &str) {
        self.inner.routes.master_moved(topic, group, master).await
    }

    /// Resolves at the next change of any cached route.
    pub(crate) async fn route_changed(&self) {
        self.inner.routes.changed().await
    }

    /// A gRPC client for one broker node.
    pub fn broker(&self, addr: &str) -> Result<BrokerClient<Transport>, Error> {
        let mut pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = pool.get(addr) {
            return Ok(c.clone());
        }
        let client = self.connect(addr)?;
        pool.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// A gRPC client for reads from one broker node: its read connections in turn.
    pub(crate) fn reader(&self, addr: &str) -> Result<BrokerClient<Transport>, Error> {
        let count = self.inner.config.read_connections.max(1);
        let i = self.inner.next_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % count;
        let mut pool = self.inner.read_pool.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up by `&str` first: a pull should not allocate the address again.
        if let Some(clients) = pool.get(addr).filter(|c| c.len() >= count) {
            return Ok(clients[i].clone());
        }
        let clients = pool.entry(addr.to_owned()).or_default();
        while clients.len() < count {
            clients.push(self.connect(addr)?);
        }
        Ok(clients[i].clone())
    }

    /// A new lazily connected gRPC client for one broker node, signing with the credentials.
    fn connect(&self, addr: &str) -> Result<BrokerClient<Transport>, Error> {
        let channel =
            route::endpoint(addr, self.inner.config.request_timeout, self.inner.config.tls.as_ref())?.connect_lazy();
        let signer = Signer(self.inner.config.credentials.clone().map(Arc::new));
        Ok(BrokerClient::with_interceptor(channel, signer)
            .max_decoding_message_size(128 << 20)
            .max_encoding_message_size(128 << 20))
    }

    /// Asks the NameServers (in turn) for the cluster.
    pub async fn cluster_info(&self) -> Result<pb::ClusterInfo, Error> {
        self.inner
            .routes
            .ask(|mut c| async move { c.get_cluster_info(pb::GetClusterInfoRequest {}).await })
            .await
    }

    /// Every topic some live group holds.
    pub async fn topics(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .inner
            .routes
            .ask(|mut c| async move { c.list_topics(pb::ListTopicsRequest {}).await })
            .await?
            .topics)
    }

    /// A request with the client's deadline.
    pub(crate) fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(timeout);
        r
    }
}

async fn refresh_routes(inner: Weak<Inner>, mut stop: Stopping) {
    let every = match inner.upgrade() {
        Some(i) => i.config.route_refresh,
        None => return,
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        for topic in inner.routes.cached_topics() {
            if let Err(e) = inner.routes.refresh(&topic).await {
                tracing::debug!(topic, "route refresh failed: {e}");
            }
        }
    }
}

/// Follows one NameServer's route watch stream at a time, moving to the next when it ends.
async fn watch_routes(inner: Weak<Inner>, mut stop: Stopping) {
    let mut attempt = 0usize;
    loop {
        let client = {
            let Some(inner) = inner.upgrade() else { return };
            let clients: Vec<_> = inner.routes.namesrv_clients().cloned().collect();
            clients[attempt % clients.len()].1.clone()
        };
        attempt += 1;
        let mut client = client;
        let stream = tokio::select! {
            s = client.watch_routes(pb::WatchRoutesRequest { topic: String::new() }) => s,
            _ = stop.wait() => return,
        };
        if let Ok(stream) = stream {
            let mut stream = stream.into_inner();
            loop {
                let event = tokio::select! {
                    e = stream.message() => e,
                    _ = stop.wait() => return,
                };
                let Ok(Some(event)) = event else { break };
                let Some(inner) = inner.upgrade() else { return };
                // Only topics this client uses are cached; others are not worth the memory.
                if inner.routes.is_cached(&event.topic) {
                    match &event.route {
                        Some(route) => {
                            inner.routes.store(route);
                        }
                        None => inner.routes.forget(&event.topic),
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait() => return,
        }
    }
}
