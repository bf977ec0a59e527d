//! `raftmq-broker`: runs one broker node until SIGTERM or SIGINT.

use std::path::PathBuf;

use clap::Parser;
use raftmq_broker::{Broker, BrokerConfig};
use raftmq_common::config::load_toml;

/// A raftmq broker node: one member of a Raft-replicated broker group.
#[derive(Debug, Parser)]
#[command(name = "raftmq-broker", version)]
struct Args {
    /// TOML config file (cluster, group, node id, members, data dir, NameServers, ...).
    #[arg(short, long)]
    config: PathBuf,
    /// Overrides `data-dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides `namesrv`: comma-separated host:port list.
    #[arg(long, value_delimiter = ',')]
    namesrv: Option<Vec<String>>,
    /// Overrides `log-level` (RUST_LOG overrides both).
    #[arg(long)]
    log_level: Option<String>,
    /// Overrides `metrics-addr`: host:port, auto or off.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Overrides `log-format`: text or json.
    #[arg(long)]
    log_format: Option<raftmq_common::logging::LogFormat>,
    /// Replaces the config's `[security]` table with this TOML file's keys (the same keys, at
    /// the top level), so one set of node configs runs open or secured.
    #[arg(long)]
    security_config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    raftmq_common::runtime::exit_code("raftmq-broker", run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config: BrokerConfig = load_toml(&args.config)?;
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.namesrv {
        config.namesrv = v;
    }
    if let Some(v) = args.log_level {
        config.log_level = v;
    }
    if let Some(v) = args.metrics_addr {
        config.metrics_addr = v;
    }
    if let Some(v) = args.log_format {
        config.log_format = v;
    }
    if let Some(path) = &args.security_config {
        config.security = load_toml(path)?;
    }
    config.validate()?;
    let context = raftmq_common::logging::LogContext {
        fields: vec![("group", config.group.clone().into()), ("node", config.node_id.into())],
        term: true,
    };
    raftmq_common::logging::init(&config.log_level, config.log_format, context);

    let mut broker = Broker::start(config).await?;
    // Scripts read this line to know the node is serving.
    println!("raftmq-broker listening on {}", broker.client_addr());
    let ended = tokio::select! {
        _ = raftmq_common::runtime::shutdown_signal() => None,
        ended = broker.stopped() => Some(ended),
    };
    match ended {
        None => broker.shutdown().await,
        Some(ended) => ended,
    }
}
