//! The `[security]` table of broker and NameServer configs, and what it loads: the cluster
//! secret, whether client requests must be signed, and the bootstrap admin.
//!
//! Everything is off by default, so a laptop cluster needs no keys. A deployment switches on
//! what it needs; secrets live in files the config names, never in the config itself, so the
//! configs can be shared and checked in.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{ClusterSecret, Credentials};
use crate::config::ConfigError;

/// The `[security]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SecurityConfig {
    /// A file holding the cluster secret (at least 16 bytes). With it, Raft traffic and broker
    /// heartbeats are accepted only from nodes that hold the same secret; every node of the
    /// deployment (brokers and NameServers) needs the same file.
    pub cluster_secret_file: Option<PathBuf>,
    /// Client requests must be signed by a known user with the rights they need (brokers).
    pub auth: bool,
    /// A TOML file with `access-key` and `secret-key`: the first admin, who creates the other
    /// users (`raftmq acl user-add`). Needed with `auth = true`; the same on every node.
    pub admin_credentials_file: Option<PathBuf>,
    /// How far a request's signing time may be from this node's clock, seconds.
    pub clock_skew_secs: u64,
    /// PEM certificate (chain) and key: the client-facing port (a broker's client port, a
    /// NameServer's port) serves TLS only. Reloaded on SIGHUP and when the files change.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Clients must present a certificate this CA signed (mutual TLS). Nodes then present
    /// their own certificate when they call each other's client-facing ports.
    pub tls_client_ca_file: Option<PathBuf>,
    /// The CA this node trusts for TLS to NameServers and other brokers' client ports. With
    /// it, this node connects to them over TLS only (a deployment is TLS throughout or not).
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            cluster_secret_file: None,
            auth: false,
            admin_credentials_file: None,
            clock_skew_secs: 900,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_ca_file: None,
        }
    }
}

/// What a node enforces, loaded from [`SecurityConfig`].
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub cluster_secret: Option<ClusterSecret>,
    pub auth: bool,
    pub admin: Option<Credentials>,
    pub clock_skew: Duration,
    /// This node's TLS identity, when its client-facing port serves TLS.
    pub server_tls: Option<crate::tls::ServerFiles>,
    /// How this node connects to other nodes' client-facing ports, when they serve TLS.
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
}

impl SecurityConfig {
    /// Reads the files the table names; the error names the key.
    pub fn load(&self) -> Result<Security, ConfigError> {
        let cluster_secret = match &self.cluster_secret_file {
            Some(path) => Some(
                ClusterSecret::from_file(path).map_err(|e| ConfigError::invalid("security.cluster-secret-file", e))?,
            ),
            None => None,
        };
        let admin = match &self.admin_credentials_file {
            Some(path) => Some(
                Credentials::from_file(path).map_err(|e| ConfigError::invalid("security.admin-credentials-file", e))?,
            ),
            None => None,
        };
        if self.auth && admin.is_none() {
            return Err(ConfigError::invalid(
                "security.admin-credentials-file",
                "needed with auth = true: it names the first admin, who creates the other users",
            ));
        }
        if !(1..=86_400).contains(&self.clock_skew_secs) {
            return Err(ConfigError::invalid(
                "security.clock-skew-secs",
                format!("{} is outside 1..=86400", self.clock_skew_secs),
            ));
        }
        let server_tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                let files = crate::tls::ServerFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca_file.clone(),
                };
                crate::tls::ServerTls::load(files.clone())
                    .map_err(|e| ConfigError::invalid("security.tls-cert-file", e))?;
                Some(files)
            }
            (None, None) if self.tls_client_ca_file.is_some() => {
                return Err(ConfigError::invalid(
                    "security.tls-client-ca-file",
                    "needs tls-cert-file and tls-key-file: client certificates are asked for in a TLS handshake",
                ))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "security.tls-key-file",
                    "needed with tls-cert-file",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "security.tls-cert-file",
                    "needed with tls-key-file",
                ))
            }
        };
        let client_tls = match &self.tls_ca_file {
            Some(ca) => {
                // Where servers want client certificates, a node shows its own.
                let mutual = self.tls_client_ca_file.is_some();
                let files = crate::tls::ClientFiles {
                    ca: ca.clone(),
                    cert: self.tls_cert_file.clone().filter(|_| mutual),
                    key: self.tls_key_file.clone().filter(|_| mutual),
                };
                Some(
                    files
                        .load()
                        .map_err(|e| ConfigError::invalid("security.tls-ca-file", e))?,
                )
            }
            None => None,
        };
        Ok(Security {
            cluster_secret,
            auth: self.auth,
            admin,
            clock_skew: Duration::from_secs(self.clock_skew_secs),
            server_tls,
            client_tls,
        })
    }
}
