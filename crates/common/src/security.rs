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
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            cluster_secret_file: None,
            auth: false,
            admin_credentials_file: None,
            clock_skew_secs: 900,
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
        Ok(Security {
            cluster_secret,
            auth: self.auth,
            admin,
            clock_skew: Duration::from_secs(self.clock_skew_secs),
        })
    }
}
