//! `raftmq message`: one message by its queue and offset or by its id; recalling a delayed one.

use clap::Subcommand;
use raftmq_client::{Admin, MessageQueue};

use crate::messaging::{print_message, Read};

#[derive(Debug, Subcommand)]
pub(crate) enum MessageCommand {
    /// One message by topic, broker group, queue and offset, or by its id (`--id`).
    Get {
        #[arg(required_unless_present = "id")]
        topic: Option<String>,
        #[arg(long, required_unless_present = "id")]
        group: Option<String>,
        #[arg(long, required_unless_present = "id")]
        queue: Option<u32>,
        #[arg(long, required_unless_present = "id")]
        offset: Option<u64>,
        /// The message's id, as its send printed it: looked up in every broker group.
        #[arg(long, conflicts_with_all = ["topic", "group", "queue", "offset"])]
        id: Option<String>,
        #[arg(long, value_enum, default_value_t = Read::Master)]
        read: Read,
    },
    /// Cancels a delayed message that is not due yet, by the recall handle its send printed.
    Recall {
        topic: String,
        /// The recall handle (`raftmq send --delay ...` prints it).
        handle: String,
    },
}

pub(crate) async fn run(admin: &Admin, command: MessageCommand, as_json: bool) -> anyhow::Result<()> {
    match command {
        MessageCommand::Get {
            topic,
            group,
            queue,
            offset,
            id,
            read,
        } => {
            let m = match (id, topic, group, queue, offset) {
                (Some(id), ..) => admin.message_by_id(&id).await?,
                (None, Some(topic), Some(group), Some(queue_id), Some(offset)) => {
                    admin
                        .get_message(&topic, &MessageQueue { group, queue_id }, offset, read.preference())
                        .await?
                }
                _ => anyhow::bail!("say --id, or a topic with --group, --queue and --offset"),
            };
            print_message(&m, as_json);
        }
        MessageCommand::Recall { topic, handle } => {
            admin.recall(&topic, &handle).await?;
            if as_json {
                println!("{}", serde_json::json!({"recalled": handle}));
            } else {
                println!("recalled {handle}");
            }
        }
    }
    Ok(())
}
