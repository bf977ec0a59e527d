//! The route cache: which broker groups hold a topic's queues, and their masters and slaves.
//!
//! Filled from any NameServer (tried in turn), refreshed on a timer and on every routing error,
//! and updated by the NameServer's route watch stream, so a failover reaches clients without a
//! poll. A stale route is never fatal: `NOT_MASTER` names the new master and callers go there.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raftmq_proto as pb;
use raftmq_proto::name_server_client::NameServerClient;
use tonic::transport::{Channel, Endpoint};

use raftmq_common::{Error, ErrorCode};

/// One broker group's part of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRoute {
    pub group: String,
    pub write_queues: u32,
    pub read_queues: u32,
    pub permission: i32,
    /// Empty when the group has no live master right now.
    pub master: Option<String>,
    pub slaves: Vec<String>,
}

impl GroupRoute {
    pub fn writable(&self) -> bool {
        self.permission & pb::Permission::Write as i32 != 0
    }

    pub fn readable(&self) -> bool {
        self.permission & pb::Permission::Read as i32 != 0
    }
}

/// A topic's route, groups sorted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoute {
    pub topic: String,
    pub groups: Vec<GroupRoute>,
}

/// A message queue: (group, queue id). Sorted by group then id, as rebalancing needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageQueue {
    pub group: String,
    pub queue_id: u32,
}

impl std::fmt::Display for MessageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.group, self.queue_id)
    }
}

impl TopicRoute {
    pub fn from_proto(route: &pb::TopicRoute) -> TopicRoute {
        let mut groups: Vec<GroupRoute> = route
            .queues
            .iter()
            .map(|q| {
                let data = route.groups.iter().find(|g| g.group == q.group);
                GroupRoute {
                    group: q.group.clone(),
                    write_queues: q.write_queues,
                    read_queues: q.read_queues,
                    permission: q.permission,
                    master: data.map(|g| g.master_addr.clone()).filter(|a| !a.is_empty()),
                    slaves: data
                        .map(|g| g.slaves.iter().map(|s| s.addr.clone()).collect())
                        .unwrap_or_default(),
                }
            })
            .collect();
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        TopicRoute {
            topic: route.topic.clone(),
            groups,
        }
    }

    pub fn group(&self, name: &str) -> Option<&GroupRoute> {
        self.groups.iter().find(|g| g.group == name)
    }

    /// Queues a producer may write to, in a stable order.
    pub fn write_queues(&self) -> Vec<MessageQueue> {
        self.groups
            .iter()
            .filter(|g| g.writable())
            .flat_map(|g| {
                (0..g.write_queues).map(|q| MessageQueue {
                    group: g.group.clone(),
                    queue_id: q,
                })
            })
            .collect()
    }

    /// Queues a consumer reads, in a stable order.
    pub fn read_queues(&self) -> Vec<MessageQueue> {
        self.groups
            .iter()
            .filter(|g| g.readable())
            .flat_map(|g| {
                (0..g.read_queues).map(|q| MessageQueue {
                    group: g.group.clone(),
                    queue_id: q,
                })
            })
            .collect()
    }
}

/// The largest HTTP/2 frame a node may send this client. HTTP/2's default, 16 KiB, cut a pull's
/// answer (a quarter of a MiB for 256 messages of 1 KiB) into 17 frames, and a server writes each
/// frame with a system call of its own; at 1 MiB an answer goes in one or a few. Consuming a
/// stored backlog took 7-10 % less client CPU per message (docs/benchmarks.md, session 24).
const MAX_FRAME_BYTES: u32 = 1 << 20;

pub(crate) fn endpoint(
    addr: &str,
    timeout: Duration,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Endpoint, Error> {
    Ok(raftmq_common::tls::endpoint(addr, tls)
        .map_err(|e| ErrorCode::InvalidArgument.err(e))?
        .connect_timeout(timeout)
        .max_frame_size(MAX_FRAME_BYTES)
        .tcp_nodelay(true))
}

/// The NameServer list and the cached routes.
pub(crate) struct Routes {
    namesrv: Vec<(String, NameServerClient<Channel>)>,
    timeout: Duration,
    cache: RwLock<HashMap<String, Arc<TopicRoute>>>,
    /// Bumped whenever a cached route changes, so in-flight calls can notice a new master.
    version: tokio::sync::watch::Sender<u64>,
}

impl Routes {
    pub fn new(
        namesrv: &[String],
        timeout: Duration,
        tls: Option<&tonic::transport::ClientTlsConfig>,
    ) -> Result<Routes, Error> {
        if namesrv.is_empty() {
            return Err(ErrorCode::InvalidArgument.err("no NameServer address given"));
        }
        let mut clients = Vec::new();
        for addr in namesrv {
            raftmq_common::validate::addr("namesrv", addr)
                .map_err(|e| ErrorCode::InvalidArgument.err(e.to_string()))?;
            clients.push((
                addr.clone(),
                NameServerClient::new(endpoint(addr, timeout, tls)?.connect_lazy()),
            ));
        }
        Ok(Routes {
            namesrv: clients,
            timeout,
            cache: RwLock::new(HashMap::new()),
            version: tokio::sync::watch::channel(0).0,
        })
    }

    pub fn namesrv_clients(&self) -> impl Iterator<Item = &(String, NameServerClient<Channel>)> {
        self.namesrv.iter()
    }

    /// Calls every NameServer in turn until one answers; a `TOPIC_NOT_FOUND` or invalid request
    /// is final, a transport error moves on.
    pub async fn ask<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut(NameServerClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = ErrorCode::Unavailable.err("no NameServer answered");
        for (addr, client) in &self.namesrv {
            match tokio::time::timeout(self.timeout, call(client.clone())).await {
                Ok(Ok(reply)) => return Ok(reply.into_inner()),
                Ok(Err(status)) => {
                    if raftmq_common::code::answered(&status) {
                        return Err(Error::from_status(&status));
                    }
                    tracing::debug!(namesrv = %addr, "NameServer failed: {status}");
                    last = ErrorCode::Unavailable.err(format!("NameServer {addr}: {}", status.message()));
                }
                Err(_) => {
                    last = ErrorCode::Unavailable
                        .err(format!("NameServer {addr} did not answer within {:?}", self.timeout))
                }
            }
        }
        Err(last)
    }

    /// The cached route, fetched when absent.
    pub async fn get(&self, topic: &str) -> Result<Arc<TopicRoute>, Error> {
        if let Some(route) = self.cache.read().unwrap_or_else(|p| p.into_inner()).get(topic) {
            return Ok(route.clone());
        }
        self.refresh(topic).await
    }

    /// Fetches a route now and caches it.
    pub async fn refresh(&self, topic: &str) -> Result<Arc<TopicRoute>, Error> {
        let req = pb::GetRouteRequest {
            topic: topic.to_owned(),
        };
        match self
            .ask(|mut c| {
                let req = req.clone();
                async move { c.get_route(req).await }
            })
            .await
        {
            Ok(route) => Ok(self.store(&route)),
            Err(e) => {
                if e.code == ErrorCode::TopicNotFound {
                    self.forget(topic);
                }
                Err(e)
            }
        }
    }

    pub fn store(&self, route: &pb::TopicRoute) -> Arc<TopicRoute> {
        let route = Arc::new(TopicRoute::from_proto(route));
        let old = self
            .cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(route.topic.clone(), route.clone());
        if old.as_deref() != Some(&*route) {
            self.version.send_modify(|v| *v += 1);
        }
        route
    }

    /// Resolves at the next change of any cached route.
    pub async fn changed(&self) {
        let mut version = self.version.subscribe();
        let _ = version.changed().await;
    }

    /// Resolves when the cached route changes to name a master for `group` other than `master`.
    pub async fn master_moved(&self, topic: &str, group: &str, master: &str) {
        // Only a route that changes from now on counts: the cached one may already name another
        // node (this send followed a NOT_MASTER to a master the NameServers do not know yet),
        // and giving up on it at once made an unknown outcome of a send that might never have
        // left (seen in the chaos suite: thousands per run).
        let mut version = self.version.subscribe();
        loop {
            if version.changed().await.is_err() {
                return;
            }
            let moved = self
                .cache
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(topic)
                .and_then(|r| r.group(group).and_then(|g| g.master.clone()))
                .is_some_and(|m| m != master);
            if moved {
                return;
            }
        }
    }

    pub fn forget(&self, topic: &str) {
        self.cache.write().unwrap_or_else(|p| p.into_inner()).remove(topic);
    }

    pub fn cached_topics(&self) -> Vec<String> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub fn is_cached(&self, topic: &str) -> bool {
        self.cache.read().unwrap_or_else(|p| p.into_inner()).contains_key(topic)
    }
}
