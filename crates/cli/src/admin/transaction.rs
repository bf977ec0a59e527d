//! `raftmq transaction list|commit|rollback`: the transactions left open in each broker group,
//! and ending one by hand when its producers cannot.

use clap::Subcommand;
use raftmq_client::Admin;
use serde_json::json;

use crate::table;

#[derive(Debug, Subcommand)]
pub(crate) enum TransactionCommand {
    /// Pending transactions (half messages neither committed nor rolled back), oldest first.
    List {
        /// Only these broker groups (comma-separated).
        #[arg(long, value_delimiter = ',')]
        group: Vec<String>,
        /// Most listed per broker group.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Commit a pending transaction: its message is appended to its queue, once.
    Commit { transaction_id: String },
    /// Roll a pending transaction back: its message is discarded.
    Rollback { transaction_id: String },
}

pub(crate) async fn run(admin: &Admin, command: TransactionCommand, as_json: bool) -> anyhow::Result<()> {
    match command {
        TransactionCommand::List { group, limit } => {
            let listed = admin.pending_transactions(&group, limit).await?;
            let pending: u64 = listed.iter().map(|g| g.pending).sum();
            if as_json {
                let items: Vec<_> = listed
                    .iter()
                    .flat_map(|g| {
                        g.transactions.iter().map(move |t| {
                            json!({"group": g.group, "transaction_id": t.transaction_id, "topic": t.topic, "queue_id": t.queue_id, "producer_group": t.producer_group, "prepared_ms": t.prepared_ms, "checks": t.checks, "next_check_ms": t.next_check_ms, "keys": t.keys})
                        })
                    })
                    .collect();
                println!("{}", json!({"pending": pending, "transactions": items}));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = listed
                .iter()
                .flat_map(|g| {
                    g.transactions.iter().map(move |t| {
                        vec![
                            g.group.clone(),
                            t.transaction_id.clone(),
                            t.topic.clone(),
                            t.queue_id.to_string(),
                            t.producer_group.clone(),
                            crate::when::format_time_ms(t.prepared_ms),
                            t.checks.to_string(),
                            crate::when::format_time_ms(t.next_check_ms),
                            t.keys.clone(),
                        ]
                    })
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "GROUP",
                        "TRANSACTION",
                        "TOPIC",
                        "QUEUE",
                        "PRODUCER_GROUP",
                        "PREPARED",
                        "CHECKS",
                        "NEXT_CHECK",
                        "KEYS"
                    ],
                    &rows
                )
            );
            println!("{pending} pending");
        }
        TransactionCommand::Commit { transaction_id } => {
            let stored = admin.end_transaction(&transaction_id, true).await?;
            if as_json {
                println!(
                    "{}",
                    json!({"transaction_id": transaction_id, "committed": true, "msg_id": stored})
                );
            } else {
                match stored {
                    Some(id) => println!("committed {transaction_id}: stored as {id}"),
                    None => println!("committed {transaction_id} (it was committed before)"),
                }
            }
        }
        TransactionCommand::Rollback { transaction_id } => {
            admin.end_transaction(&transaction_id, false).await?;
            if as_json {
                println!("{}", json!({"transaction_id": transaction_id, "rolled_back": true}));
            } else {
                println!("rolled back {transaction_id}");
            }
        }
    }
    Ok(())
}
