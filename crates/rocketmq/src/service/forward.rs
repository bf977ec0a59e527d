//! Forwarding to the master: a write or a receive that lands on a slave goes to the group's
//! master with the caller's metadata and deadline. A forwarded request that lands on a node
//! that is no longer master is forwarded once more at most (then it answers HA_NOT_AVAILABLE
//! and the client retries), so requests never loop between nodes during an election.

use std::time::Duration;

use raftmq_proto::rocketmq::messaging_service_client::MessagingServiceClient;
use raftmq_proto::rocketmq::Code;
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{MessagingService, MAX_MESSAGE_SIZE};
use crate::status::Fail;
use crate::{Backend, Target};

/// Marks a request one node forwarded to another, with how many times it was forwarded.
const FORWARDED: &str = "x-raftmq-forwarded";
/// Most times one request is forwarded: a master that moved while the request travelled gets one
/// more hop (the request was not processed anywhere yet), never a loop.
const MAX_HOPS: u32 = 2;
/// Deadline of a forwarded request when the caller set none.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a forward waits for a new master after the old one turned out unreachable.
const NEXT_MASTER_WAIT: Duration = Duration::from_secs(3);

/// The master a request is forwarded to.
pub(super) struct Master {
    pub(super) addr: String,
    pub(super) client: MessagingServiceClient<Channel>,
}

/// Calls the master, and when the connection to it fails before the request is sent, once more
/// on the master the group names next.
macro_rules! forward {
    ($self:expr, $md:expr, $master:expr, $req:expr, $method:ident) => {{
        let Master { addr, mut client } = $master;
        match client.$method(forwarded(&$md, $req.clone())).await {
            Err(e) if raftmq_common::code::never_sent(&e) => match $self.next_master(&addr).await {
                Ok(mut next) => next.$method(forwarded(&$md, $req)).await.map_err(forward_failed),
                Err(f) => Err(f),
            },
            other => other.map_err(forward_failed),
        }
    }};
}

impl<B: Backend> MessagingService<B> {
    pub(super) fn client(&self, addr: &str) -> Result<MessagingServiceClient<Channel>, Fail> {
        let mut masters = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = masters.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = raftmq_common::tls::endpoint(addr, self.tls.as_ref())
            .map_err(|e| Fail::new(Code::InternalServerError, format!("bad master address: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let client = MessagingServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        masters.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// Where a write or receive runs: `Ok(None)` here, `Ok(Some(master))` forwarded.
    pub(super) async fn route_write(&self, md: &MetadataMap) -> Result<Option<Master>, Fail> {
        let target = self.backend.target().await;
        self.route_to(md, target)
    }

    /// Where a request with this target runs: `Ok(None)` here, `Ok(Some(master))` forwarded.
    pub(super) fn route_to(&self, md: &MetadataMap, target: Result<Target, Fail>) -> Result<Option<Master>, Fail> {
        match target? {
            Target::Here => Ok(None),
            Target::Master(_) if hops(md) >= MAX_HOPS => Err(Fail::new(
                Code::HaNotAvailable,
                "NOT_MASTER: the master moved while the request was forwarded; retry",
            )),
            Target::Master(addr) => Ok(Some(Master {
                client: self.client(&addr)?,
                addr,
            })),
        }
    }

    /// After the master at `dead` could not be reached (the request was never sent): waits for
    /// the group to name another master, so the request can go there instead of failing.
    pub(super) async fn next_master(&self, dead: &str) -> Result<MessagingServiceClient<Channel>, Fail> {
        let deadline = tokio::time::Instant::now() + NEXT_MASTER_WAIT;
        loop {
            match self.backend.target().await? {
                Target::Master(addr) if addr != dead => return self.client(&addr),
                // This node became master: the client's retry lands here.
                Target::Here => break,
                Target::Master(_) if tokio::time::Instant::now() >= deadline => break,
                Target::Master(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Err(Fail::new(
            Code::HaNotAvailable,
            format!("NOT_MASTER: the master at {dead} is unreachable and no other master is known yet; retry"),
        ))
    }
}

/// How many times a request was forwarded already.
fn hops(md: &MetadataMap) -> u32 {
    md.get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The caller's deadline from the `grpc-timeout` header.
pub(super) fn caller_timeout(md: &MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A request to forward: the caller's metadata (namespace, client id, ...), its deadline, and
/// the mark that stops a second hop.
pub(super) fn forwarded<T>(md: &MetadataMap, message: T) -> Request<T> {
    let mut req = Request::new(message);
    for kv in md.iter() {
        if let KeyAndValueRef::Ascii(k, v) = kv {
            let name = k.as_str();
            if !(name.starts_with("grpc-") || matches!(name, "te" | "content-type" | "user-agent")) {
                req.metadata_mut().insert(k.clone(), v.clone());
            }
        }
    }
    let hops = (hops(md) + 1).to_string();
    req.metadata_mut()
        .insert(FORWARDED, hops.parse().expect("digits are ascii"));
    req.set_timeout(caller_timeout(md).unwrap_or(FORWARD_TIMEOUT));
    req
}

/// A forwarded call that failed in transport: its outcome is unknown to us.
/// The master's answer as this node's: its message, without the master's response metadata.
pub(super) fn strip<T>(reply: Response<T>) -> Response<T> {
    Response::new(reply.into_inner())
}

pub(super) fn forward_failed(e: Status) -> Fail {
    Fail::new(
        Code::ProxyTimeout,
        format!(
            "TIMEOUT: forwarding to the master failed ({}): {}",
            e.code(),
            e.message()
        ),
    )
}
