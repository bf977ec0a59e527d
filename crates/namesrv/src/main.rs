//! `raftmq-namesrv`: runs one NameServer until SIGTERM or SIGINT.

use std::path::PathBuf;

use clap::Parser;
use raftmq_common::config::load_toml;
use raftmq_namesrv::{NameServer, NamesrvConfig};

/// The raftmq NameServer: collects broker heartbeats and serves topic routes.
#[derive(Debug, Parser)]
#[command(name = "raftmq-namesrv", version)]
struct Args {
    /// TOML config file; flags override its values.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:9876.
    #[arg(long)]
    listen: Option<String>,
    /// Drop a broker node from routes after this many milliseconds without a heartbeat.
    #[arg(long)]
    broker_expiry_ms: Option<u64>,
    /// How often to look for silent broker nodes, in milliseconds.
    #[arg(long)]
    scan_interval_ms: Option<u64>,
    /// Log filter (RUST_LOG overrides it).
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
    raftmq_common::runtime::exit_code("raftmq-namesrv", run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config: NamesrvConfig = match &args.config {
        Some(path) => load_toml(path)?,
        None => NamesrvConfig::default(),
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.broker_expiry_ms {
        config.broker_expiry_ms = v;
    }
    if let Some(v) = args.scan_interval_ms {
        config.scan_interval_ms = v;
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
        fields: vec![("namesrv", config.listen.clone().into())],
        term: false,
    };
    raftmq_common::logging::init(&config.log_level, config.log_format, context);

    let mut server = NameServer::start(&config).await?;
    // Scripts read this line to learn the port when listening on :0.
    println!("raftmq-namesrv listening on {}", server.addr());
    let ended = tokio::select! {
        _ = raftmq_common::runtime::shutdown_signal() => None,
        ended = server.stopped() => Some(ended),
    };
    match ended {
        None => server.shutdown().await,
        Some(ended) => ended,
    }
}
