//! `raftmq group settings|update|dlq`: a consumer group's retry settings, and its dead letters
//! (list, show one, resend one or all to the topic they came from).

use anyhow::{anyhow, bail};
use clap::Subcommand;
use raftmq_client::message::{PROP_DLQ_ORIGIN_MESSAGE_ID, PROP_DLQ_ORIGIN_TOPIC, PROP_RECONSUME_TIME};
use raftmq_client::{Admin, ReceivedMessage};
use raftmq_proto as pb;
use serde_json::json;

use crate::messaging::message_json;
use crate::table;
use crate::when::parse_duration;

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// The group's dead letters not resent yet (with --all, every one stored), oldest first.
    List {
        consumer_group: String,
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One dead letter, by its id or the id it had before it was dead-lettered.
    Show { consumer_group: String, id: String },
    /// Send dead letters again to the topic they came from: one by id, or --all not resent yet.
    Resend {
        consumer_group: String,
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

/// Prints a group's settings in every broker group.
pub(crate) async fn settings(admin: &Admin, consumer_group: &str, as_json: bool) -> anyhow::Result<()> {
    let configs = admin.group_config(consumer_group).await?;
    let backoff = |c: &pb::GroupConfig| match &c.exponential {
        Some(e) => format!("exponential {}ms x{} up to {}ms", e.initial_ms, e.multiplier, e.max_ms),
        None if c.backoff_ms.is_empty() => "default (10s 30s 1m 2m ... 2h)".to_owned(),
        None => c
            .backoff_ms
            .iter()
            .map(|ms| format!("{ms}ms"))
            .collect::<Vec<_>>()
            .join(" "),
    };
    if as_json {
        let items: Vec<_> = configs
            .iter()
            .map(|(g, c)| json!({"group": g, "max_reconsume_times": c.effective_max_reconsume_times, "own_max_reconsume_times": (c.max_reconsume_times >= 0).then_some(c.max_reconsume_times), "backoff_ms": c.backoff_ms, "exponential": c.exponential.as_ref().map(|e| json!({"initial_ms": e.initial_ms, "max_ms": e.max_ms, "multiplier": e.multiplier})), "fifo": c.fifo.unwrap_or(false)}))
            .collect();
        println!("{}", json!(items));
    } else {
        let rows: Vec<Vec<String>> = configs
            .iter()
            .map(|(g, c)| {
                let own = if c.max_reconsume_times < 0 { " (default)" } else { "" };
                vec![
                    g.clone(),
                    format!("{}{own}", c.effective_max_reconsume_times),
                    backoff(c),
                    if c.fifo.unwrap_or(false) { "yes" } else { "no" }.to_owned(),
                ]
            })
            .collect();
        print!(
            "{}",
            table::render(&["GROUP", "MAX_RECONSUME_TIMES", "BACKOFF", "FIFO"], &rows)
        );
    }
    Ok(())
}

/// Builds the settings `raftmq group update` stores: `max` is a count or `default`; `backoff`
/// is `default`, a list of delays (`10s,1m,5m`) or `exp:INITIAL,MAX,MULTIPLIER`.
pub(crate) fn update_request(consumer_group: &str, max: &str, backoff: &str) -> anyhow::Result<pb::GroupConfig> {
    let max_reconsume_times = match max {
        "default" => -1,
        n => n
            .parse::<u32>()
            .ok()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| anyhow!("--max-reconsume-times {n:?}: say a count or `default`"))?,
    };
    let ms = |s: &str| -> anyhow::Result<u64> {
        Ok(parse_duration(s.trim())
            .map_err(|e| anyhow!("--backoff: {e}"))?
            .as_millis() as u64)
    };
    let mut config = pb::GroupConfig {
        consumer_group: consumer_group.to_owned(),
        max_reconsume_times,
        ..Default::default()
    };
    if let Some(exp) = backoff.strip_prefix("exp:") {
        let parts: Vec<&str> = exp.split(',').collect();
        let [initial, max, multiplier] = parts[..] else {
            bail!("--backoff exp:{exp}: say exp:INITIAL,MAX,MULTIPLIER (exp:1s,10m,2)");
        };
        config.exponential = Some(pb::ExponentialBackoff {
            initial_ms: ms(initial)?,
            max_ms: ms(max)?,
            multiplier: multiplier
                .trim()
                .parse()
                .map_err(|_| anyhow!("--backoff: multiplier {multiplier:?} is not a whole number"))?,
        });
    } else if backoff != "default" {
        config.backoff_ms = backoff.split(',').map(ms).collect::<anyhow::Result<_>>()?;
    }
    Ok(config)
}

pub(crate) async fn run(admin: &Admin, command: DlqCommand, as_json: bool) -> anyhow::Result<()> {
    match command {
        DlqCommand::List {
            consumer_group,
            all,
            limit,
        } => {
            let letters = admin.dead_letters(&consumer_group, !all, limit).await?;
            if as_json {
                println!("{}", json!(letters.iter().map(message_json).collect::<Vec<_>>()));
            } else {
                let prop = |m: &ReceivedMessage, k: &str| m.properties.get(k).cloned().unwrap_or_default();
                let rows: Vec<Vec<String>> = letters
                    .iter()
                    .map(|m| {
                        vec![
                            m.msg_id.clone(),
                            prop(m, PROP_DLQ_ORIGIN_TOPIC),
                            prop(m, PROP_DLQ_ORIGIN_MESSAGE_ID),
                            prop(m, PROP_RECONSUME_TIME),
                            crate::when::format_time_ms(m.store_timestamp_ms),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(&["ID", "TOPIC", "ORIGIN_ID", "RECONSUMED", "DEAD_SINCE"], &rows)
                );
            }
        }
        DlqCommand::Show { consumer_group, id } => {
            let m = find(admin, &consumer_group, &id).await?;
            println!(
                "{}",
                if as_json {
                    message_json(&m).to_string()
                } else {
                    pretty(&m)
                }
            );
        }
        DlqCommand::Resend {
            consumer_group,
            id,
            all,
        } => {
            let resent = match (id, all) {
                (Some(id), false) => {
                    let m = find(admin, &consumer_group, &id).await?;
                    let sent = admin.resend_dead_letter(&m).await?;
                    if !as_json {
                        println!("resent {} as {}", m.msg_id, sent.msg_id);
                    }
                    1
                }
                (None, true) => admin.resend_dead_letters(&consumer_group).await?,
                _ => bail!("say one dead letter's id, or --all"),
            };
            if as_json {
                println!("{}", json!({"resent": resent}));
            } else {
                println!("{resent} dead letter(s) resent");
            }
        }
    }
    Ok(())
}

async fn find(admin: &Admin, consumer_group: &str, id: &str) -> anyhow::Result<ReceivedMessage> {
    admin
        .dead_letters(consumer_group, false, usize::MAX)
        .await?
        .into_iter()
        .find(|m| m.msg_id == id || m.properties.get(PROP_DLQ_ORIGIN_MESSAGE_ID).is_some_and(|o| o == id))
        .ok_or_else(|| anyhow!("group {consumer_group} has no dead letter {id}"))
}

fn pretty(m: &ReceivedMessage) -> String {
    serde_json::to_string_pretty(&message_json(m)).unwrap_or_default()
}
