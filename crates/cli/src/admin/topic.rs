//! `raftmq topic`: create, update, delete, list topics and show routes.

use clap::{Args, Subcommand, ValueEnum};
use raftmq_client::Admin;
use raftmq_proto as pb;
use serde_json::json;

use super::perm_name;
use crate::table;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Perm {
    /// read and write
    Rw,
    /// read only
    R,
    /// write only
    W,
}

impl Perm {
    pub(crate) fn proto(self) -> pb::Permission {
        match self {
            Perm::Rw => pb::Permission::ReadWrite,
            Perm::R => pb::Permission::Read,
            Perm::W => pb::Permission::Write,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct TopicSpec {
    pub(crate) topic: String,
    /// Read and write queues per broker group.
    #[arg(long, default_value_t = 4)]
    pub(crate) queues: u32,
    /// Write queues per group (default: --queues).
    #[arg(long)]
    pub(crate) write_queues: Option<u32>,
    /// Read queues per group (default: --queues).
    #[arg(long)]
    pub(crate) read_queues: Option<u32>,
    #[arg(long, value_enum, default_value_t = Perm::Rw)]
    pub(crate) perm: Perm,
    /// Only these broker groups (default: every live group). Repeatable.
    #[arg(long = "group")]
    pub(crate) groups: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic in every broker group (or the named ones).
    Create(TopicSpec),
    /// Change a topic's queue counts or permission.
    Update(TopicSpec),
    /// Delete a topic from every group holding it.
    Delete { topic: String },
    /// List every topic.
    List,
    /// Show a topic's route: per group its queues, master and slaves.
    Route { topic: String },
}

pub(crate) async fn run(admin: &Admin, command: TopicCommand, as_json: bool) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create(spec) | TopicCommand::Update(spec) => {
            let groups = admin
                .upsert_topic(
                    &spec.topic,
                    spec.write_queues.unwrap_or(spec.queues),
                    spec.read_queues.unwrap_or(spec.queues),
                    spec.perm.proto(),
                    &spec.groups,
                )
                .await?;
            if as_json {
                println!("{}", json!({"topic": spec.topic, "groups": groups}));
            } else {
                println!("topic {} set in {}", spec.topic, groups.join(", "));
            }
        }
        TopicCommand::Delete { topic } => {
            let groups = admin.delete_topic(&topic).await?;
            if as_json {
                println!("{}", json!({"topic": topic, "groups": groups}));
            } else {
                println!("topic {topic} deleted from {}", groups.join(", "));
            }
        }
        TopicCommand::List => {
            let topics = admin.topics().await?;
            if as_json {
                println!("{}", json!(topics));
            } else {
                for t in topics {
                    println!("{t}");
                }
            }
        }
        TopicCommand::Route { topic } => {
            let route = admin.route(&topic).await?;
            if as_json {
                let groups: Vec<_> = route
                    .groups
                    .iter()
                    .map(|g| json!({"group": g.group, "write_queues": g.write_queues, "read_queues": g.read_queues, "perm": perm_name(g.permission), "master": g.master, "slaves": g.slaves}))
                    .collect();
                println!("{}", json!({"topic": topic, "groups": groups}));
            } else {
                let rows: Vec<Vec<String>> = route
                    .groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.group.clone(),
                            g.write_queues.to_string(),
                            g.read_queues.to_string(),
                            perm_name(g.permission).into(),
                            g.master.clone().unwrap_or_else(|| "-".into()),
                            g.slaves.join(","),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(&["GROUP", "WRITE", "READ", "PERM", "MASTER", "SLAVES"], &rows)
                );
            }
        }
    }
    Ok(())
}
