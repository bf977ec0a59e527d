//! Broker node configuration: a TOML file, overridden by command-line flags.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use raftmq_common::config::ConfigError;
use raftmq_common::validate;
use serde::Deserialize;

/// One member of the broker group.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Member {
    pub node_id: u64,
    /// Where the other nodes send Raft traffic.
    pub raft_addr: String,
    /// Where clients reach this node. May equal `raft-addr`: one port then serves both.
    pub client_addr: String,
}

/// Whether appended entries are fsynced before they count (see `raftmq_store::FlushMode`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FlushMode {
    Sync,
    /// Unsafe on power loss; for tests and benchmarks that say so.
    Async,
}

/// Everything a broker node needs. Keys in the file are kebab-case.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct BrokerConfig {
    pub cluster: String,
    pub group: String,
    pub node_id: u64,
    /// The group's members at its first start, this node included. After the first start the
    /// membership lives in the Raft log (`raftmq group add-node` and the like change it) and
    /// this list gives only this node's own addresses.
    pub members: Vec<Member>,
    /// This node joins a group that runs already: it never sets a membership itself, and waits
    /// for the group's master to add it (`raftmq group add-node` / `replace-node`). `members`
    /// then needs to list only this node.
    pub join: bool,
    pub data_dir: PathBuf,
    /// NameServer addresses (`host:port`); every one gets heartbeats.
    pub namesrv: Vec<String>,
    pub flush_mode: FlushMode,
    /// Raft heartbeat interval, milliseconds.
    pub raft_heartbeat_ms: u64,
    /// Raft election timeout range, milliseconds. A new master follows the old one's death by
    /// about `election-timeout-max-ms` plus a random draw from the range.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Deadline of one Raft RPC, milliseconds.
    pub raft_rpc_timeout_ms: u64,
    /// How often every NameServer gets a heartbeat, milliseconds.
    pub namesrv_heartbeat_ms: u64,
    /// Largest message body, bytes (tags, keys and properties have their own 64 KiB).
    pub max_message_size: usize,
    /// Create unknown topics on first send (off by default, as in production RocketMQ).
    pub auto_create_topic: bool,
    /// Queue count of auto-created topics.
    pub default_queues: u32,
    /// Most messages group-committed into one Raft entry.
    pub max_batch_messages: usize,
    /// Most bytes group-committed into one Raft entry.
    pub max_batch_bytes: usize,
    /// Raft entries proposed but not yet committed, at most.
    pub max_inflight_entries: usize,
    /// Build a snapshot after this many log entries.
    pub snapshot_every_entries: u64,
    /// Log entries Raft keeps replicating from after a snapshot, before a lagging slave needs
    /// the snapshot instead. (Bodies stay for retention either way.)
    pub snapshot_log_keep: u64,
    /// Commit-log entries older than this are deleted, hours (RocketMQ's fileReservedTime).
    pub retention_hours: u64,
    /// Above this disk use (percent), retention also deletes the oldest entries early.
    pub disk_clean_percent: u8,
    /// At or above this disk use (percent), sends are refused with DISK_FULL.
    pub disk_full_percent: u8,
    /// How often retention runs, milliseconds.
    pub retention_check_ms: u64,
    /// A consumer silent this long leaves its group, milliseconds.
    pub consumer_expiry_ms: u64,
    /// Deliveries of one message to a consumer group (the first and the retries) before it moves
    /// to the group's dead-letter topic `%DLQ%<group>`, for groups without a
    /// `max-reconsume-times` of their own (`raftmq group update`). RocketMQ's default: 16
    /// retries, so 17.
    pub max_delivery_attempts: u32,
    /// A transaction neither committed nor rolled back this long after its half message is
    /// stored is checked with its producers, milliseconds (RocketMQ's 6 s; a message's
    /// `CHECK_IMMUNITY_TIME_IN_SECONDS` overrides it).
    pub transaction_check_after_ms: u64,
    /// Then again this often, milliseconds (RocketMQ's 60 s).
    pub transaction_check_interval_ms: u64,
    /// Checks asked before a transaction is given up and its half message moved to
    /// `TRANS_CHECK_MAX_TIME_TOPIC` (RocketMQ's 15).
    pub transaction_max_checks: u32,
    pub log_level: String,
    /// `text`, or `json`: one object a line with the node's group, id and term.
    pub log_format: raftmq_common::logging::LogFormat,
    /// Where the Prometheus endpoint (`/metrics`) listens: `host:port`, `auto` (the client
    /// port plus 20000, on the client address's host) or `off`.
    pub metrics_addr: String,
    /// Accept the test-only InjectFault RPC (link cuts for the chaos suite). Never in production.
    pub fault_injection: bool,
    /// Peer authentication, client authentication and rights (docs/security.md).
    pub security: raftmq_common::security::SecurityConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            cluster: "DefaultCluster".into(),
            group: "broker-a".into(),
            node_id: 1,
            members: Vec::new(),
            join: false,
            data_dir: PathBuf::from("data"),
            namesrv: Vec::new(),
            flush_mode: FlushMode::Sync,
            raft_heartbeat_ms: 30,
            election_timeout_min_ms: 100,
            election_timeout_max_ms: 200,
            raft_rpc_timeout_ms: 1000,
            namesrv_heartbeat_ms: 1000,
            max_message_size: 4 << 20,
            auto_create_topic: false,
            default_queues: 4,
            max_batch_messages: 256,
            max_batch_bytes: 4 << 20,
            max_inflight_entries: 4,
            snapshot_every_entries: 100_000,
            snapshot_log_keep: 1_000,
            retention_hours: 72,
            max_delivery_attempts: 17,
            transaction_check_after_ms: 6_000,
            transaction_check_interval_ms: 60_000,
            transaction_max_checks: 15,
            disk_clean_percent: 75,
            disk_full_percent: 90,
            retention_check_ms: 10_000,
            consumer_expiry_ms: 10_000,
            log_level: "info".into(),
            log_format: Default::default(),
            metrics_addr: "auto".into(),
            fault_injection: false,
            security: Default::default(),
        }
    }
}

impl BrokerConfig {
    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| Err(ConfigError::invalid(key, reason));
        validate::name("cluster", &self.cluster).map_err(|e| ConfigError::invalid("cluster", e.reason))?;
        validate::name("group", &self.group).map_err(|e| ConfigError::invalid("group", e.reason))?;
        if self.node_id == 0 {
            return bad("node-id", "must be at least 1".into());
        }
        if self.members.is_empty() {
            return bad(
                "members",
                "lists no member; list every node of the group, this one included".into(),
            );
        }
        let mut ids = BTreeSet::new();
        for (i, m) in self.members.iter().enumerate() {
            if m.node_id == 0 || !ids.insert(m.node_id) {
                return bad(
                    &format!("members[{i}].node-id"),
                    format!("{} is zero or listed twice", m.node_id),
                );
            }
            validate::addr("raft-addr", &m.raft_addr)
                .map_err(|e| ConfigError::invalid(format!("members[{i}].raft-addr"), e.reason))?;
            validate::addr("client-addr", &m.client_addr)
                .map_err(|e| ConfigError::invalid(format!("members[{i}].client-addr"), e.reason))?;
        }
        if !ids.contains(&self.node_id) {
            return bad("members", format!("does not list this node (node-id {})", self.node_id));
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data-dir", "must not be empty".into());
        }
        for (i, addr) in self.namesrv.iter().enumerate() {
            validate::addr("namesrv", addr).map_err(|e| ConfigError::invalid(format!("namesrv[{i}]"), e.reason))?;
        }
        if self.raft_heartbeat_ms == 0 || self.raft_heartbeat_ms * 2 >= self.election_timeout_min_ms {
            return bad(
                "raft-heartbeat-ms",
                format!(
                    "{} must be above 0 and below half of election-timeout-min-ms",
                    self.raft_heartbeat_ms
                ),
            );
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return bad(
                "election-timeout-max-ms",
                format!(
                    "{} must be above election-timeout-min-ms ({})",
                    self.election_timeout_max_ms, self.election_timeout_min_ms
                ),
            );
        }
        let positive = [
            ("raft-rpc-timeout-ms", self.raft_rpc_timeout_ms),
            ("namesrv-heartbeat-ms", self.namesrv_heartbeat_ms),
            ("max-message-size", self.max_message_size as u64),
            ("default-queues", self.default_queues as u64),
            ("max-batch-messages", self.max_batch_messages as u64),
            ("max-batch-bytes", self.max_batch_bytes as u64),
            ("max-inflight-entries", self.max_inflight_entries as u64),
            ("snapshot-every-entries", self.snapshot_every_entries),
            ("consumer-expiry-ms", self.consumer_expiry_ms),
            ("retention-hours", self.retention_hours),
            ("retention-check-ms", self.retention_check_ms),
            ("max-delivery-attempts", self.max_delivery_attempts as u64),
            ("transaction-check-after-ms", self.transaction_check_after_ms),
            ("transaction-check-interval-ms", self.transaction_check_interval_ms),
            ("transaction-max-checks", self.transaction_max_checks as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return bad(key, "must be above 0".into());
            }
        }
        if self.max_message_size > 64 << 20 {
            return bad(
                "max-message-size",
                format!("{} is over the 64 MiB limit", self.max_message_size),
            );
        }
        if self.max_batch_bytes < self.max_message_size {
            return bad(
                "max-batch-bytes",
                format!(
                    "{} is below max-message-size ({})",
                    self.max_batch_bytes, self.max_message_size
                ),
            );
        }
        for (key, value) in [
            ("disk-clean-percent", self.disk_clean_percent),
            ("disk-full-percent", self.disk_full_percent),
        ] {
            if !(1..=100).contains(&value) {
                return bad(key, format!("{value} is outside 1..=100"));
            }
        }
        if self.disk_clean_percent > self.disk_full_percent {
            return bad(
                "disk-clean-percent",
                format!(
                    "{} is above disk-full-percent ({})",
                    self.disk_clean_percent, self.disk_full_percent
                ),
            );
        }
        raftmq_common::runtime::check_log_level(&self.log_level).map_err(|e| ConfigError::invalid("log-level", e))?;
        self.metrics_bind_addr()?;
        self.security.load()?;
        if self.security.tls_cert_file.is_some() && self.me().raft_addr == self.me().client_addr {
            return bad(
                "security.tls-cert-file",
                "TLS on the client port needs Raft on a port of its own: give this node a raft-addr other than its client-addr".into(),
            );
        }
        Ok(())
    }

    /// The address the metrics endpoint binds, `None` when it is off.
    pub fn metrics_bind_addr(&self) -> Result<Option<String>, ConfigError> {
        let client = self
            .members
            .iter()
            .find(|m| m.node_id == self.node_id)
            .map_or("", |m| m.client_addr.as_str());
        raftmq_metrics::resolve(&self.metrics_addr, client).map_err(|e| ConfigError::invalid("metrics-addr", e))
    }

    pub fn me(&self) -> &Member {
        self.members
            .iter()
            .find(|m| m.node_id == self.node_id)
            .expect("validated: members lists this node")
    }

    pub fn raft_rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.raft_rpc_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_common::config::parse_toml;

    const GOOD: &str = r#"
cluster = "DefaultCluster"
group = "broker-a"
node-id = 2
data-dir = "/tmp/x"
namesrv = ["127.0.0.1:9876"]
[[members]]
node-id = 1
raft-addr = "127.0.0.1:20001"
client-addr = "127.0.0.1:10001"
[[members]]
node-id = 2
raft-addr = "127.0.0.1:20002"
client-addr = "127.0.0.1:10002"
"#;

    #[test]
    fn a_good_file() {
        let c: BrokerConfig = parse_toml(GOOD).unwrap();
        c.validate().unwrap();
        assert_eq!(c.me().client_addr, "127.0.0.1:10002");
        assert_eq!(c.flush_mode, FlushMode::Sync);
    }

    #[test]
    fn errors_name_the_key() {
        let err =
            parse_toml::<BrokerConfig>(&format!("{GOOD}\n[[members]]\nnode-id = 3\nraft-adr = \"x\"\n")).unwrap_err();
        assert!(err.contains("raft-adr"), "{err}");
        let err =
            parse_toml::<BrokerConfig>(&GOOD.replace("node-id = 2\ndata", "node-id = \"two\"\ndata")).unwrap_err();
        assert!(err.contains("node-id"), "{err}");
        let mut c: BrokerConfig = parse_toml(GOOD).unwrap();
        c.node_id = 9;
        assert!(c.validate().unwrap_err().to_string().contains("`members`"));
        let mut c: BrokerConfig = parse_toml(GOOD).unwrap();
        c.members[1].client_addr = "nowhere".into();
        assert!(c.validate().unwrap_err().to_string().contains("members[1].client-addr"));
        let mut c: BrokerConfig = parse_toml(GOOD).unwrap();
        c.election_timeout_max_ms = 100;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("election-timeout-max-ms"));
        let err = parse_toml::<BrokerConfig>(&format!("flush-mode = \"sometimes\"\n{GOOD}")).unwrap_err();
        assert!(err.contains("flush-mode") || err.contains("sometimes"), "{err}");
    }
}
