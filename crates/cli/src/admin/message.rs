//! `raftmq message`: one message by its queue and offset or by its id, messages by key, a
//! message's trace, queue offsets by time; recalling a delayed one.

use clap::Subcommand;
use raftmq_client::{Admin, MessageQueue, PullConsumer, ReadPreference};
use serde_json::json;

use crate::table;

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
    /// Where a message is stored (group, queue, offset, store time) and which consumer groups
    /// have consumed past it.
    Trace {
        #[arg(long)]
        id: String,
    },
    /// Per queue of a topic: its first and next offsets and, with --at, the first offset stored
    /// at or after a time (RFC 3339 or ms since the epoch).
    Offsets {
        topic: String,
        #[arg(long)]
        at: Option<String>,
    },
    /// The messages of a topic with a key (`send --keys`), newest first, from every broker
    /// group's key index.
    Query {
        #[arg(long)]
        topic: String,
        /// One key, matched whole.
        #[arg(long)]
        key: String,
        /// Stored at or after this time: RFC 3339 or ms since the epoch.
        #[arg(long)]
        begin: Option<String>,
        /// Stored at or before this time: RFC 3339 or ms since the epoch.
        #[arg(long)]
        end: Option<String>,
        /// Most messages listed (up to 1000).
        #[arg(long, default_value_t = 32)]
        max: u32,
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
        MessageCommand::Trace { id } => {
            let t = admin.trace(&id).await?;
            let m = &t.message;
            if as_json {
                let groups: Vec<_> = t
                    .groups
                    .iter()
                    .map(|(g, o, past)| json!({"consumer_group": g, "offset": o, "consumed": past}))
                    .collect();
                println!(
                    "{}",
                    json!({"msg_id": m.msg_id, "topic": m.topic, "group": m.group, "queue_id": m.queue_id, "queue_offset": m.queue_offset, "store_timestamp_ms": m.store_timestamp_ms, "consumer_groups": groups})
                );
            } else {
                println!(
                    "{} is {}/{}/{} offset {}, stored {}",
                    m.msg_id,
                    m.topic,
                    m.group,
                    m.queue_id,
                    m.queue_offset,
                    crate::when::format_time_ms(m.store_timestamp_ms)
                );
                let rows: Vec<Vec<String>> = t
                    .groups
                    .iter()
                    .map(|(g, o, past)| vec![g.clone(), o.to_string(), if *past { "yes" } else { "no" }.into()])
                    .collect();
                print!("{}", table::render(&["CONSUMER_GROUP", "OFFSET", "CONSUMED"], &rows));
            }
        }
        MessageCommand::Offsets { topic, at } => {
            let at = at
                .map(|s| crate::when::parse_time_ms(&s).map_err(|e| anyhow::anyhow!("--at {s:?}: {e}")))
                .transpose()?;
            let reader = PullConsumer::new(admin.client(), ReadPreference::Master);
            let mut rows = Vec::new();
            for q in reader.queues(&topic).await? {
                let (min, max) = reader.queue_offsets(&topic, &q).await?;
                let found = match at {
                    Some(ms) => Some(reader.search_offset(&topic, &q, ms).await?),
                    None => None,
                };
                rows.push((q, min, max, found));
            }
            if as_json {
                let items: Vec<_> = rows
                    .iter()
                    .map(|(q, min, max, at)| json!({"group": q.group, "queue_id": q.queue_id, "min_offset": min, "max_offset": max, "offset_at": at}))
                    .collect();
                println!("{}", json!(items));
            } else {
                let rows: Vec<Vec<String>> = rows
                    .iter()
                    .map(|(q, min, max, at)| {
                        vec![
                            q.group.clone(),
                            q.queue_id.to_string(),
                            min.to_string(),
                            max.to_string(),
                            at.map_or("-".into(), |o| o.to_string()),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(&["GROUP", "QUEUE", "MIN", "MAX", "OFFSET_AT"], &rows)
                );
            }
        }
        MessageCommand::Query {
            topic,
            key,
            begin,
            end,
            max,
        } => {
            let time = |flag: &str, s: Option<String>| {
                s.map(|s| crate::when::parse_time_ms(&s).map_err(|e| anyhow::anyhow!("--{flag} {s:?}: {e}")))
                    .transpose()
            };
            let (begin, end) = (time("begin", begin)?, time("end", end)?);
            let found = admin.query_by_key(&topic, &key, begin, end, max).await?;
            if as_json {
                let messages: Vec<_> = found.messages.iter().map(crate::messaging::message_json).collect();
                println!("{}", json!({"messages": messages, "truncated": found.truncated}));
            } else {
                for m in &found.messages {
                    print_message(m, false);
                }
                if found.truncated {
                    eprintln!("more messages match: raise --max (up to 1000) or narrow --begin/--end");
                }
            }
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
