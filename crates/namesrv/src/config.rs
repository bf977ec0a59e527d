//! NameServer configuration: a TOML file, overridden by command-line flags.

use std::net::SocketAddr;
use std::time::Duration;

use raftmq_common::config::ConfigError;
use serde::Deserialize;

/// Everything a NameServer needs to run. Keys in the file are kebab-case (`broker-expiry-ms`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NamesrvConfig {
    /// Address to listen on for brokers and clients (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// A broker node silent for longer than this leaves the routes, in milliseconds.
    pub broker_expiry_ms: u64,
    /// How often silent nodes are looked for, in milliseconds (at most 1000).
    pub scan_interval_ms: u64,
    /// Log filter, e.g. `info` or `raftmq_namesrv=debug`. `RUST_LOG` overrides it.
    pub log_level: String,
    /// `text`, or `json`: one object a line with the NameServer's listen address.
    pub log_format: raftmq_common::logging::LogFormat,
    /// Where the Prometheus endpoint (`/metrics`) listens: `host:port`, `auto` (the listen port
    /// plus 20000, on the listen address's host) or `off`.
    pub metrics_addr: String,
    /// Peer authentication (`cluster-secret-file`): heartbeats only from brokers that hold the
    /// cluster secret (docs/security.md).
    pub security: raftmq_common::security::SecurityConfig,
}

impl Default for NamesrvConfig {
    fn default() -> Self {
        NamesrvConfig {
            listen: "127.0.0.1:9876".into(),
            broker_expiry_ms: 5_000,
            scan_interval_ms: 1_000,
            log_level: "info".into(),
            log_format: Default::default(),
            metrics_addr: "auto".into(),
            security: Default::default(),
        }
    }
}

impl NamesrvConfig {
    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if !(100..=3_600_000).contains(&self.broker_expiry_ms) {
            return Err(ConfigError::invalid(
                "broker-expiry-ms",
                format!("{} is outside 100..=3600000", self.broker_expiry_ms),
            ));
        }
        if !(10..=1_000).contains(&self.scan_interval_ms) {
            return Err(ConfigError::invalid(
                "scan-interval-ms",
                format!(
                    "{} is outside 10..=1000 (expired nodes must leave within a second)",
                    self.scan_interval_ms
                ),
            ));
        }
        raftmq_common::runtime::check_log_level(&self.log_level).map_err(|e| ConfigError::invalid("log-level", e))?;
        self.metrics_bind_addr()?;
        self.security.load()?;
        if self.security.auth {
            return Err(ConfigError::invalid(
                "security.auth",
                "is a broker key: brokers check client requests (a NameServer checks broker heartbeats with cluster-secret-file)",
            ));
        }
        Ok(())
    }

    /// The address the metrics endpoint binds, `None` when it is off.
    pub fn metrics_bind_addr(&self) -> Result<Option<String>, ConfigError> {
        raftmq_metrics::resolve(&self.metrics_addr, &self.listen).map_err(|e| ConfigError::invalid("metrics-addr", e))
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|_| ConfigError::invalid("listen", format!("{:?} is not an ip:port socket address", self.listen)))
    }

    pub fn broker_expiry(&self) -> Duration {
        Duration::from_millis(self.broker_expiry_ms)
    }

    pub fn scan_interval(&self) -> Duration {
        Duration::from_millis(self.scan_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_common::config::parse_toml;

    #[test]
    fn defaults_are_valid() {
        NamesrvConfig::default().validate().unwrap();
    }

    #[test]
    fn a_file_overrides_defaults() {
        let c: NamesrvConfig = parse_toml("listen = \"0.0.0.0:9000\"\nbroker-expiry-ms = 3000\n").unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.broker_expiry_ms, 3000);
        assert_eq!(c.scan_interval_ms, 1000);
    }

    #[test]
    fn an_unknown_key_is_named() {
        let err = parse_toml::<NamesrvConfig>("brokr-expiry-ms = 3000\n").unwrap_err();
        assert!(err.contains("brokr-expiry-ms"), "{err}");
    }

    #[test]
    fn a_bad_value_is_named() {
        let err = parse_toml::<NamesrvConfig>("broker-expiry-ms = \"soon\"\n").unwrap_err();
        assert!(err.contains("broker-expiry-ms"), "{err}");
        let c = NamesrvConfig {
            scan_interval_ms: 5000,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("scan-interval-ms"));
        let c = NamesrvConfig {
            listen: "nowhere".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("`listen`"));
        let c = NamesrvConfig {
            log_level: "lots=of=noise".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("log-level"));
    }
}
