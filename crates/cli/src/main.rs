//! `raftmq`: the command-line tool for raftmq clusters — topics, cluster view, send, consume,
//! consumer groups and single messages. Tables for people, `--json` for scripts; a failure exits
//! non-zero with one line saying why.

mod admin;
mod bench;
mod chaos;
mod dashboard;
mod drill;
mod messaging;
mod ops;
mod table;
mod when;

use std::time::Duration;

use clap::{Parser, Subcommand};
use raftmq_client::{Admin, Client, ClientConfig};

use admin::cluster::ClusterCommand;
use admin::group::GroupCommand;
use admin::message::MessageCommand;
use admin::topic::TopicCommand;
use messaging::{ConsumeArgs, SendArgs};

/// Command-line tool for raftmq, a Raft-replicated message queue in the RocketMQ model.
#[derive(Debug, Parser)]
#[command(name = "raftmq", version, propagate_version = true)]
struct Cli {
    /// NameServer addresses, comma-separated (host:port).
    #[arg(
        long,
        short = 'n',
        env = "RAFTMQ_NAMESRV",
        value_delimiter = ',',
        default_value = "127.0.0.1:9876",
        global = true
    )]
    namesrv: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Deadline of each request, in milliseconds.
    #[arg(long, default_value_t = 3000, global = true)]
    timeout_ms: u64,
    /// A TOML file with `access-key` and `secret-key` that sign every request (clusters with
    /// auth on). RAFTMQ_ACCESS_KEY and RAFTMQ_SECRET_KEY do the same; keys themselves never go
    /// on the command line.
    #[arg(long, env = "RAFTMQ_CREDENTIALS", global = true)]
    credentials: Option<std::path::PathBuf>,
    /// Connect over TLS, trusting this CA (PEM): clusters whose client-facing ports serve TLS.
    #[arg(long, env = "RAFTMQ_TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate and its key (PEM), for clusters that ask for one (mutual TLS).
    #[arg(long, env = "RAFTMQ_TLS_CERT", global = true, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long, env = "RAFTMQ_TLS_KEY", global = true, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, update, delete, list topics and show routes.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Show the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Send messages.
    Send(SendArgs),
    /// Consume messages, as a group member or by plain pulls.
    Consume(ConsumeArgs),
    /// Consumer groups: progress, offset resets, retry settings, dead letters. Broker groups:
    /// members, add-node, remove-node, replace-node, transfer-master.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Read single messages.
    #[command(subcommand)]
    Message(MessageCommand),
    /// Transactions left open: list them, commit or roll one back by hand.
    #[command(subcommand)]
    Transaction(admin::transaction::TransactionCommand),
    /// Failover drill: fail a group's master while a producer sends; print the timings.
    Drill(drill::DrillArgs),
    /// Fault-injection suite: random faults under load, then a check that nothing acknowledged
    /// was lost.
    Chaos(chaos::ChaosArgs),
    /// Benchmarks: produce, consume, end to end.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// A read-only web dashboard of the cluster (everything embedded; it polls once a second).
    Dashboard(dashboard::DashboardArgs),
    /// Users and their rights on a secured cluster (auth = true).
    #[command(subcommand)]
    Acl(admin::acl::AclCommand),
}

/// The credentials of this run (`--credentials`, or the environment), set once at start.
static CREDENTIALS: std::sync::OnceLock<Option<raftmq_common::auth::Credentials>> = std::sync::OnceLock::new();
/// The TLS settings of this run (`--tls-ca` and the like), set once at start.
static TLS: std::sync::OnceLock<Option<tonic::transport::ClientTlsConfig>> = std::sync::OnceLock::new();

/// Client settings for these NameServers, signing with this run's credentials.
pub(crate) fn client_config(namesrv: &[String]) -> ClientConfig {
    let mut config = ClientConfig::new(namesrv.to_vec());
    config.credentials = CREDENTIALS.get().cloned().flatten();
    config.tls = TLS.get().cloned().flatten();
    config
}

fn load_credentials(file: Option<&std::path::Path>) -> anyhow::Result<Option<raftmq_common::auth::Credentials>> {
    match file {
        Some(path) => Ok(Some(
            raftmq_common::auth::Credentials::from_file(path).map_err(|e| anyhow::anyhow!("--credentials: {e}"))?,
        )),
        None => raftmq_common::auth::Credentials::from_env().map_err(|e| anyhow::anyhow!(e)),
    }
}

/// Like other command-line tools, end quietly when the reader of our output goes away
/// (`raftmq consume T | head`): a print to the closed pipe panics, and that panic becomes a quiet
/// exit with the shell's status for SIGPIPE. SIGPIPE itself stays ignored, as Rust sets it: with
/// its default action, a write to a broker connection that had just been reset would kill the
/// tool without a word (the chaos suite lost its verdict that way).
fn quiet_when_the_reader_goes_away() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info)
    }));
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    quiet_when_the_reader_goes_away();
    let cli = Cli::parse();
    raftmq_common::runtime::exit_code("raftmq", run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = CREDENTIALS.set(load_credentials(cli.credentials.as_deref())?);
    let tls = match &cli.tls_ca {
        Some(ca) => Some(
            raftmq_common::tls::ClientFiles {
                ca: ca.clone(),
                cert: cli.tls_cert.clone(),
                key: cli.tls_key.clone(),
            }
            .load()
            .map_err(|e| anyhow::anyhow!("--tls-ca: {e}"))?,
        ),
        None => None,
    };
    let _ = TLS.set(tls);
    let mut config = client_config(&cli.namesrv);
    config.request_timeout = Duration::from_millis(cli.timeout_ms);
    config.send_timeout = Duration::from_millis(cli.timeout_ms);
    // A one-shot command needs no route stream.
    config.watch_routes = false;
    let client = Client::new(config)?;
    let admin = Admin::new(client.clone());
    let as_json = cli.json;
    match cli.command {
        Command::Topic(command) => admin::topic::run(&admin, command, as_json).await,
        Command::Cluster(command) => admin::cluster::run(&admin, command, as_json).await,
        Command::Group(command) => admin::group::run(&admin, command, as_json).await,
        Command::Message(command) => admin::message::run(&admin, command, as_json).await,
        Command::Transaction(command) => admin::transaction::run(&admin, command, as_json).await,
        Command::Send(args) => messaging::send(&client, args, as_json).await,
        Command::Consume(args) => messaging::consume(&client, args, as_json).await,
        Command::Drill(args) => drill::run(&cli.namesrv, args, as_json).await,
        Command::Chaos(args) => chaos::run(&cli.namesrv, args, as_json).await,
        Command::Bench(command) => bench::run(client.clone(), command, as_json).await,
        Command::Dashboard(args) => dashboard::run(&cli.namesrv, Duration::from_millis(cli.timeout_ms), args).await,
        Command::Acl(command) => admin::acl::run(&admin, command, as_json).await,
    }
}
