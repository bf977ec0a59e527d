//! Who may do what on this node: authentication of client requests (RocketMQ 5's signature, in
//! either protocol) and their rights (the group's replicated users), and the cluster secret's
//! check of Raft traffic.
//!
//! Every refusal is an error with a stable code (`UNAUTHENTICATED`, `FORBIDDEN`) that names what
//! was refused and why, is logged with the caller's address, counted, and happens before the
//! request touches anything. With `auth` off every client request passes, as before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use raftmq_common::auth::{self, Need, User};
use raftmq_common::security::Security;
use raftmq_common::{Error, ErrorCode};
use raftmq_store::reader::StoreReader;
use tonic::metadata::MetadataMap;

use crate::metrics::BrokerMetrics;

/// The checks, shared by both protocols' services and the Raft service.
pub struct Guard {
    security: Security,
    reader: StoreReader,
    metrics: Arc<BrokerMetrics>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("auth", &self.security.auth).finish()
    }
}

/// What a node's own calls to another node's client port prove: the cluster secret over this
/// text and the time. Such a proof passes only checks that need a known caller (status and
/// membership reads), so a proof seen on the wire grants nothing more within its skew.
const PEER_CALL: &[u8] = b"client-port";

impl Guard {
    pub fn new(security: Security, reader: StoreReader, metrics: Arc<BrokerMetrics>) -> Self {
        Guard {
            security,
            reader,
            metrics,
        }
    }

    pub fn security(&self) -> &Security {
        &self.security
    }

    /// Checks a client request named `what` that needs `needs`. `Ok` when auth is off.
    pub fn check(
        &self,
        metadata: &MetadataMap,
        caller: Option<SocketAddr>,
        what: &str,
        needs: &[Need<'_>],
    ) -> Result<(), Error> {
        if !self.security.auth {
            return Ok(());
        }
        self.decide(metadata, what, needs).inspect_err(|e| {
            tracing::warn!(
                caller = %caller.map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
                request = what,
                code = e.code.as_str(),
                "refused: {}",
                e.message
            );
            self.metrics.refused(e.code, "client");
        })
    }

    fn decide(&self, metadata: &MetadataMap, what: &str, needs: &[Need<'_>]) -> Result<(), Error> {
        let header = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
        let unauthenticated = |why: String| ErrorCode::Unauthenticated.err(format!("{what} refused: {why}"));
        if let (Some(proof), Some(secret)) = (header(auth::PEER), &self.security.cluster_secret) {
            if needs.iter().all(|n| *n == Need::Known) {
                return secret
                    .verify(
                        proof,
                        &[PEER_CALL],
                        raftmq_common::time::now_ms() as u64,
                        self.security.clock_skew,
                    )
                    .map_err(unauthenticated);
            }
        }
        let Some(authorization) = header(auth::AUTHORIZATION) else {
            return Err(unauthenticated(format!(
                "the request is not signed (no {} header); set credentials (access key and secret key)",
                auth::AUTHORIZATION
            )));
        };
        let signed = auth::parse_authorization(authorization).map_err(unauthenticated)?;
        let date_time = header(auth::DATE_TIME)
            .ok_or_else(|| unauthenticated(format!("the request has no {} header", auth::DATE_TIME)))?;
        let user = self
            .user(&signed.access_key)
            .ok_or_else(|| unauthenticated(format!("unknown access key {:?}", signed.access_key)))?;
        auth::verify(
            &signed,
            &user.secret_key,
            date_time,
            SystemTime::now(),
            self.security.clock_skew,
        )
        .map_err(unauthenticated)?;
        match needs.iter().find(|n| !user.allows(**n)) {
            None => Ok(()),
            Some(need) => {
                Err(ErrorCode::Forbidden.err(format!("{what} refused: user {:?} lacks {need}", user.access_key)))
            }
        }
    }

    /// The bootstrap admin of the config, or a replicated user.
    fn user(&self, access_key: &str) -> Option<User> {
        match &self.security.admin {
            Some(admin) if admin.access_key == access_key => Some(User {
                access_key: admin.access_key.clone(),
                secret_key: admin.secret_key.clone(),
                admin: true,
                topics: Vec::new(),
                groups: Vec::new(),
            }),
            _ => self.reader.user(access_key),
        }
    }

    /// The proof a node's own call to another node's client port carries (`None` without a
    /// cluster secret).
    pub fn peer_call_proof(&self) -> Option<String> {
        peer_call_proof(&self.security)
    }

    /// Checks a proof over a Raft message's fields; logs and counts a refusal.
    pub fn check_peer(
        &self,
        proof: Option<&str>,
        parts: &[&[u8]],
        caller: Option<SocketAddr>,
        what: &str,
    ) -> Result<(), Error> {
        let Some(secret) = &self.security.cluster_secret else {
            return Ok(());
        };
        let result = match proof {
            None => Err("the message carries no cluster-secret proof".to_owned()),
            Some(proof) => secret.verify(
                proof,
                parts,
                raftmq_common::time::now_ms() as u64,
                self.security.clock_skew,
            ),
        };
        result.map_err(|why| self.refused_peer(caller, what, &why))
    }

    /// Logs and counts a refused peer; the error to answer it with.
    pub fn refused_peer(&self, caller: Option<SocketAddr>, what: &str, why: &str) -> Error {
        tracing::warn!(
            caller = %caller.map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
            request = what,
            "refused a peer: {why}"
        );
        self.metrics.refused(ErrorCode::Unauthenticated, "peer");
        ErrorCode::Unauthenticated.err(format!("{what} refused: {why}"))
    }
}

/// Whether `from` may send Raft messages to this node: a member (voter or learner) of the
/// membership this node has, or anyone while it has none yet (a node started with
/// `join = true` hears first from the master that adds it). A removed node is refused.
pub fn is_member(raft: &openraft::Raft<raftmq_store::TypeConfig>, from: raftmq_store::NodeId) -> bool {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    membership.nodes().next().is_none() || membership.get_node(&from).is_some()
}

/// See [`Guard::peer_call_proof`].
pub fn peer_call_proof(security: &Security) -> Option<String> {
    security
        .cluster_secret
        .as_ref()
        .map(|s| s.sign(raftmq_common::time::now_ms() as u64, &[PEER_CALL]))
}
