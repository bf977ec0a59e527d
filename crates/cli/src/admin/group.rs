//! `raftmq group`: a consumer group's progress (lag per queue), offset resets, retry settings
//! and dead letters; and a broker group's membership (see `members`).

use anyhow::{anyhow, Context};
use clap::Subcommand;
use raftmq_client::admin::ResetTo;
use raftmq_client::Admin;
use serde_json::json;

use crate::table;

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Per queue: stored offset, committed offset, lag.
    Progress { consumer_group: String, topic: String },
    /// Move a group's offsets: earliest, latest, a time in ms since the epoch, or offset:N.
    Reset {
        consumer_group: String,
        topic: String,
        #[arg(long)]
        to: String,
    },
    /// The group's retry settings in every broker group.
    Settings { consumer_group: String },
    /// Store the group's retry settings (and whether it is FIFO) in every broker group. With
    /// only --fifo, the retry settings stay as they are; otherwise one not given is `default`.
    Update {
        consumer_group: String,
        /// Retries of a failed message before it goes to %DLQ%<group>, or `default`.
        #[arg(long)]
        max_reconsume_times: Option<String>,
        /// Delays before the 1st, 2nd, ... retry (`10s,1m,10m`; past the end, the last),
        /// `exp:INITIAL,MAX,MULTIPLIER`, or `default` (10s 30s 1m 2m ... 2h).
        #[arg(long)]
        backoff: Option<String>,
        /// FIFO: a queue's next message is delivered to the group (RocketMQ 5 consumers) only
        /// once the earlier ones were acknowledged.
        #[arg(long)]
        fifo: Option<bool>,
    },
    /// The group's dead letters.
    #[command(subcommand)]
    Dlq(super::dlq::DlqCommand),
    /// A broker group's nodes: voters, learners, the master, retired ids.
    Members { broker_group: String },
    /// Add a node to a broker group. Start it first with `join = true`; it catches up as a
    /// learner, then becomes a voter.
    AddNode {
        broker_group: String,
        #[command(flatten)]
        node: super::members::NewNodeArgs,
    },
    /// Remove a node from a broker group (a voter only while the rest keep a live majority;
    /// never the master: transfer-master first).
    RemoveNode {
        broker_group: String,
        #[arg(long)]
        node_id: u64,
    },
    /// Replace a voter (a dead one, say) with a new node started with `join = true`.
    ReplaceNode {
        broker_group: String,
        /// The voter to take out.
        #[arg(long)]
        old: u64,
        #[command(flatten)]
        node: super::members::NewNodeArgs,
    },
    /// Hand a broker group's master role to another voter (any up-to-date one without --to).
    TransferMaster {
        broker_group: String,
        #[arg(long)]
        to: Option<u64>,
    },
}

pub(crate) async fn run(admin: &Admin, command: GroupCommand, as_json: bool) -> anyhow::Result<()> {
    match command {
        GroupCommand::Settings { consumer_group } => super::dlq::settings(admin, &consumer_group, as_json).await?,
        GroupCommand::Update {
            consumer_group,
            max_reconsume_times,
            backoff,
            fifo,
        } => {
            let keep = max_reconsume_times.is_none() && backoff.is_none();
            if keep && fifo.is_none() {
                anyhow::bail!("nothing to update: give --max-reconsume-times, --backoff or --fifo");
            }
            let mut config = super::dlq::update_request(
                &consumer_group,
                max_reconsume_times.as_deref().unwrap_or("default"),
                backoff.as_deref().unwrap_or("default"),
            )?;
            config.fifo = fifo;
            config.keep_retry_settings = keep;
            let groups = admin.update_group_config(config).await?;
            if as_json {
                println!("{}", json!({"updated": groups}));
            } else {
                println!("updated {consumer_group} in {}", groups.join(", "));
            }
        }
        GroupCommand::Dlq(command) => super::dlq::run(admin, command, as_json).await?,
        GroupCommand::Members { broker_group } => super::members::members(admin, &broker_group, as_json).await?,
        GroupCommand::AddNode { broker_group, node } => {
            super::members::add(admin, &broker_group, &node, as_json).await?
        }
        GroupCommand::RemoveNode { broker_group, node_id } => {
            super::members::remove(admin, &broker_group, node_id, as_json).await?
        }
        GroupCommand::ReplaceNode {
            broker_group,
            old,
            node,
        } => super::members::replace(admin, &broker_group, old, &node, as_json).await?,
        GroupCommand::TransferMaster { broker_group, to } => {
            super::members::transfer(admin, &broker_group, to, as_json).await?
        }
        GroupCommand::Progress { consumer_group, topic } => {
            let progress = admin.group_progress(&consumer_group, &topic).await?;
            if as_json {
                let items: Vec<_> = progress
                    .iter()
                    .map(|p| json!({"group": p.queue.group, "queue_id": p.queue.queue_id, "broker_offset": p.broker_offset, "consume_offset": p.consume_offset, "lag": p.lag}))
                    .collect();
                println!("{}", json!(items));
            } else {
                let rows: Vec<Vec<String>> = progress
                    .iter()
                    .map(|p| {
                        vec![
                            p.queue.group.clone(),
                            p.queue.queue_id.to_string(),
                            p.broker_offset.to_string(),
                            p.consume_offset.map(|o| o.to_string()).unwrap_or_else(|| "-".into()),
                            p.lag.to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(&["GROUP", "QUEUE", "BROKER_OFFSET", "CONSUME_OFFSET", "LAG"], &rows)
                );
                println!("total lag: {}", progress.iter().map(|p| p.lag).sum::<u64>());
            }
        }
        GroupCommand::Reset {
            consumer_group,
            topic,
            to,
        } => {
            let target = match to.as_str() {
                "earliest" | "first" => ResetTo::Earliest,
                "latest" | "last" => ResetTo::Latest,
                other => match other.strip_prefix("offset:") {
                    Some(o) => ResetTo::Offset(o.parse().with_context(|| format!("--to {other}: not an offset"))?),
                    None => ResetTo::Timestamp(other.parse().map_err(|_| {
                        anyhow!("--to {other:?}: say earliest, latest, a time in ms since the epoch, or offset:N")
                    })?),
                },
            };
            let moved = admin.reset_offsets(&consumer_group, &topic, target).await?;
            if as_json {
                let items: Vec<_> = moved
                    .iter()
                    .map(|(q, o)| json!({"group": q.group, "queue_id": q.queue_id, "offset": o}))
                    .collect();
                println!("{}", json!(items));
            } else {
                let rows: Vec<Vec<String>> = moved
                    .iter()
                    .map(|(q, o)| vec![q.group.clone(), q.queue_id.to_string(), o.to_string()])
                    .collect();
                print!("{}", table::render(&["GROUP", "QUEUE", "OFFSET"], &rows));
            }
        }
    }
    Ok(())
}
