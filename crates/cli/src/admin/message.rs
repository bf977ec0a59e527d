//! `raftmq message`: one message by its queue and offset; recalling a delayed one.

use clap::Subcommand;
use raftmq_client::{Admin, MessageQueue};

use crate::messaging::{print_message, Read};

#[derive(Debug, Subcommand)]
pub(crate) enum MessageCommand {
    /// One message by topic, broker group, queue and offset.
    Get {
        topic: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        queue: u32,
        #[arg(long)]
        offset: u64,
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
            read,
        } => {
            let m = admin
                .get_message(
                    &topic,
                    &MessageQueue { group, queue_id: queue },
                    offset,
                    read.preference(),
                )
                .await?;
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
