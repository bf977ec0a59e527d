//! Transactional messages: the half message, its commit or rollback, and the master's loop that
//! asks producers about transactions left open. Storage and the exactly-once rule are the
//! store's (`raftmq_store::txns`): the pending set and its check schedule are replicated, so a
//! new master goes on checking where the old one stopped, and an end applies only while its
//! transaction is pending, so a commit repeated after a failover is stored once.
//!
//! Producers that can answer checks register here while they are connected to this node (a
//! raftmq producer's check stream, a RocketMQ 5 producer's telemetry stream): registrations are
//! local and not replicated; after a failover producers connect to the new master.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_common::shutdown::Stopping;
use raftmq_common::time::now_ms;
use raftmq_common::{Error, ErrorCode};
use raftmq_store::reader::message_id;
use raftmq_store::txns::{Half, Outcome, Txn, CHECK_MAX_TOPIC};
use raftmq_store::types::{Command, CommandResult, MessageIn};
use tokio::sync::mpsc;

use super::send::{admit, Batch};
use crate::state::BrokerState;

/// Marks a half message (RocketMQ's `TRAN_MSG`); a committed message keeps it.
pub const PROP_TRANSACTION: &str = "TRAN_MSG";
/// The producer group of a half message (RocketMQ's `PGROUP`).
pub const PROP_PRODUCER_GROUP: &str = "PGROUP";
/// Seconds before the first check of this message (RocketMQ's).
pub const PROP_CHECK_IMMUNITY: &str = "CHECK_IMMUNITY_TIME_IN_SECONDS";
/// The checks asked before a message was given up, on its copy in `TRANS_CHECK_MAX_TIME_TOPIC`.
pub const PROP_CHECK_TIMES: &str = "TRANSACTION_CHECK_TIMES";

/// How often the master looks for transactions to check.
const TICK: Duration = Duration::from_millis(200);
/// Most checks or abandons the master has proposed and not yet seen committed.
const MAX_IN_FLIGHT: usize = 1024;

/// A stored half message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub queue_id: u32,
    /// The half message's id (the committed message gets its own when it is appended).
    pub msg_id: String,
    /// What the producer names to end it: the broker group, then the transaction.
    pub transaction_id: String,
}

/// How a producer ends a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Commit,
    Rollback,
}

/// A check a producer is asked: the half message, as it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub transaction_id: String,
    pub msg_id: String,
    pub topic: String,
    pub queue_id: u32,
    pub producer_group: String,
    pub message: MessageIn,
    /// Checks asked before this one.
    pub checks: u32,
}

/// The transaction id a producer gets.
pub fn transaction_id(group: &str, txn: &Txn) -> String {
    format!("{group}@{}", txn.handle())
}

/// Parses a [`transaction_id`] of this broker group.
pub fn parse_transaction_id(state: &BrokerState, id: &str) -> Result<Txn, Error> {
    let handle = super::own_handle(state, "transaction_id", id)?;
    Txn::parse_handle(handle).ok_or_else(|| {
        ErrorCode::InvalidArgument.err(format!("field `transaction_id`: {id:?} is not a transaction id"))
    })
}

/// Stores a half message on a majority of the group: invisible to consumers until it is
/// committed. The same rules as a send apply ([`super::send::send`]); a half message cannot also
/// be delayed. The first check is due after the message's `CHECK_IMMUNITY_TIME_IN_SECONDS`,
/// else the broker's `transaction-check-after-ms`.
pub async fn prepare(state: &BrokerState, batch: Batch, producer_group: &str) -> Result<Prepared, Error> {
    if batch.messages.len() != 1 {
        return Err(ErrorCode::InvalidArgument.err(format!(
            "a transaction holds one message; this request has {}",
            batch.messages.len()
        )));
    }
    if !producer_group.is_empty() {
        raftmq_common::validate::name("producer group", producer_group)?;
    }
    let (queue_id, bytes) = admit(state, &batch).await?;
    let mut message = batch.messages.into_iter().next().expect("one message");
    if super::delay::due_ms(&message, now_ms())?.is_some() {
        return Err(ErrorCode::InvalidArgument.err("a transactional message cannot also be delayed"));
    }
    let check_after_ms = match property(&message, PROP_CHECK_IMMUNITY) {
        Some(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|s| (0..=raftmq_store::txns::MAX_CHECK_AFTER_MS / 1000).contains(s))
            .map(|s| s * 1000)
            .ok_or_else(|| {
                ErrorCode::InvalidArgument.err(format!(
                    "property {PROP_CHECK_IMMUNITY}: {v:?} is not a whole number of seconds up to {}",
                    raftmq_store::txns::MAX_CHECK_AFTER_MS / 1000
                ))
            })?,
        None => state.config.transaction_check_after_ms as i64,
    };
    set_property(&mut message, PROP_TRANSACTION, "true");
    if !producer_group.is_empty() {
        set_property(&mut message, PROP_PRODUCER_GROUP, producer_group);
    }
    let command = Command::Prepare {
        topic: batch.topic,
        queue_id,
        producer_group: producer_group.to_owned(),
        check_after_ms,
        message,
    };
    let (log_index, result) = state.commit(command, bytes).await?;
    let CommandResult::Prepared { position } = result else {
        return Err(ErrorCode::Internal.err(format!("a half message applied as {result:?}")));
    };
    let txn = Txn { log_index, position };
    Ok(Prepared {
        queue_id,
        msg_id: message_id(state.reader.id_prefix(), log_index, position),
        transaction_id: transaction_id(&state.config.group, &txn),
    })
}

/// Ends a transaction. A commit appends the half message to its queue (answering the stored
/// message's id); a rollback discards it. Ending it the same way again is done (nothing stored
/// twice); the other way, `TRANSACTION_ENDED`; an unknown id, `MESSAGE_NOT_FOUND`. Only the
/// master ends transactions (`NOT_MASTER` names it).
pub async fn end(state: &BrokerState, id: &str, resolution: Resolution) -> Result<Option<String>, Error> {
    let txn = parse_transaction_id(state, id)?;
    state.require_master()?;
    let mut half = state.reader.pending_txn(&txn).map_err(read_error)?;
    if half.is_none() {
        // A master elected since the prepare may not have applied it yet: read once more after
        // applying everything committed before this moment.
        state
            .raft
            .ensure_linearizable()
            .await
            .map_err(|_| Error::not_master(state.leader_client_addr()))?;
        half = state.reader.pending_txn(&txn).map_err(read_error)?;
    }
    let (outcome, target, message) = match (resolution, half) {
        (Resolution::Commit, Some(half)) => (Outcome::Commit, (half.topic, half.queue_id), Some(half.message)),
        (Resolution::Commit, None) => (Outcome::Commit, (String::new(), 0), None),
        (Resolution::Rollback, _) => (Outcome::Rollback, (String::new(), 0), None),
    };
    let bytes = message.as_ref().map_or(64, |m| m.size());
    let command = Command::EndTxn {
        txn,
        outcome,
        topic: target.0,
        queue_id: target.1,
        message,
    };
    match state.commit(command, bytes).await? {
        (log_index, CommandResult::Sent { first_position, .. }) => {
            Ok(Some(message_id(state.reader.id_prefix(), log_index, first_position)))
        }
        (_, CommandResult::Done) => Ok(None),
        (_, other) => Err(ErrorCode::Internal.err(format!("an end of transaction applied as {other:?}"))),
    }
}

/// Pending transactions of this group, oldest first (for operators).
/// The topic of a pending transaction's half message, as this node has applied it (`None` for
/// an id that is not ours, or a transaction ended or not applied here yet).
pub fn topic_of(state: &BrokerState, id: &str) -> Option<String> {
    let txn = parse_transaction_id(state, id).ok()?;
    state.reader.pending_txn(&txn).ok().flatten().map(|half| half.topic)
}

pub fn pending(state: &BrokerState, limit: usize) -> Result<Vec<(String, Half)>, Error> {
    Ok(state
        .reader
        .list_txns(limit)
        .map_err(read_error)?
        .into_iter()
        .map(|(txn, half)| (transaction_id(&state.config.group, &txn), half))
        .collect())
}

fn read_error(e: raftmq_store::reader::ReadError) -> Error {
    ErrorCode::StorageError.err(e.to_string())
}

fn property<'a>(message: &'a MessageIn, name: &str) -> Option<&'a str> {
    message
        .properties
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn set_property(message: &mut MessageIn, name: &str, value: &str) {
    message.properties.retain(|(k, _)| k != name);
    message.properties.push((name.to_owned(), value.to_owned()));
}

/// Producers connected to this node that can answer checks.
#[derive(Debug, Default)]
pub struct Producers {
    registered: Mutex<Vec<Registered>>,
    next_id: AtomicU64,
    turn: AtomicUsize,
}

#[derive(Debug)]
struct Registered {
    id: u64,
    client_id: String,
    group: String,
    topics: BTreeSet<String>,
    checks: mpsc::Sender<Check>,
}

/// A producer's registration, removed when dropped.
pub struct Registration {
    producers: Arc<Producers>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.producers
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r| r.id != self.id);
    }
}

impl Producers {
    /// Registers a producer of `group` (may be empty) publishing `topics` (may be empty: any
    /// topic of its group), whose checks go to `checks`, until the registration is dropped.
    pub fn register(
        self: &Arc<Self>,
        client_id: &str,
        group: &str,
        topics: impl IntoIterator<Item = String>,
        checks: mpsc::Sender<Check>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut registered = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        // A producer that opens its stream again (after a failover, or because the old one went
        // quiet) replaces its old registration: checks sent there could be lost.
        if !client_id.is_empty() {
            registered.retain(|r| !(r.client_id == client_id && r.group == group));
        }
        registered.push(Registered {
            id,
            client_id: client_id.to_owned(),
            group: group.to_owned(),
            topics: topics.into_iter().collect(),
            checks,
        });
        drop(registered);
        tracing::debug!(client_id, group, "transaction checks: producer registered");
        Registration {
            producers: self.clone(),
            id,
        }
    }

    /// Producers registered now.
    pub fn count(&self) -> usize {
        self.registered.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Hands a check to one live producer, in turn: one of the half message's producer group,
    /// else (a half message sent without a group, or no member of it here) one publishing its
    /// topic with no group of its own. Returns the client id asked.
    pub fn ask(&self, check: Check) -> Option<String> {
        let registered = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        let live = |r: &&Registered| !r.checks.is_closed();
        let mut candidates: Vec<&Registered> = registered
            .iter()
            .filter(live)
            .filter(|r| !check.producer_group.is_empty() && r.group == check.producer_group)
            .collect();
        if candidates.is_empty() {
            candidates = registered
                .iter()
                .filter(live)
                .filter(|r| r.group.is_empty() && r.topics.contains(&check.topic))
                .collect();
        }
        if candidates.is_empty() {
            return None;
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        for i in 0..candidates.len() {
            let r = candidates[(start + i) % candidates.len()];
            if r.checks.try_send(check.clone()).is_ok() {
                return Some(r.client_id.clone());
            }
        }
        None
    }
}

/// The master's check loop: every [`TICK`], each transaction whose check is due gets one more
/// check recorded in the log and is asked of a live producer; one checked
/// `transaction-max-checks` times is given up to [`CHECK_MAX_TOPIC`]. Runs on every node and
/// works only while the node is master.
pub async fn run(state: Arc<BrokerState>, mut stop: Stopping) {
    let in_flight: Arc<Mutex<HashSet<Txn>>> = Arc::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.wait() => return,
        }
        if !state.is_master() {
            continue;
        }
        let room = MAX_IN_FLIGHT.saturating_sub(in_flight.lock().unwrap_or_else(|p| p.into_inner()).len());
        if room == 0 {
            continue;
        }
        let due = match state.reader.due_txn_checks(now_ms(), room) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!("cannot read the pending transactions: {e}");
                continue;
            }
        };
        for (txn, half) in due {
            if !in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(txn) {
                continue;
            }
            let (state, in_flight) = (state.clone(), in_flight.clone());
            tokio::spawn(async move {
                check_one(&state, txn, half).await;
                in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&txn);
            });
        }
    }
}

async fn check_one(state: &BrokerState, txn: Txn, half: Half) {
    let id = transaction_id(&state.config.group, &txn);
    if half.checks >= state.config.transaction_max_checks {
        let mut message = half.message;
        set_property(&mut message, PROP_CHECK_TIMES, &half.checks.to_string());
        let bytes = message.size();
        let command = Command::EndTxn {
            txn,
            outcome: Outcome::Abandon,
            topic: CHECK_MAX_TOPIC.to_owned(),
            queue_id: 0,
            message: Some(message),
        };
        match state.commit(command, bytes).await {
            Ok(_) => tracing::info!(
                transaction = %id,
                topic = %half.topic,
                checks = half.checks,
                "a transaction was given up after its checks; its half message is in {CHECK_MAX_TOPIC}"
            ),
            Err(e) => tracing::debug!(transaction = %id, "giving up a transaction not committed, retried: {e}"),
        }
        return;
    }
    let command = Command::TxnChecked {
        txn,
        next_after_ms: state.config.transaction_check_interval_ms as i64,
    };
    if let Err(e) = state.commit(command, 64).await {
        tracing::debug!(transaction = %id, "check not recorded, retried: {e}");
        return;
    }
    let check = Check {
        transaction_id: id.clone(),
        msg_id: message_id(state.reader.id_prefix(), txn.log_index, txn.position),
        topic: half.topic,
        queue_id: half.queue_id,
        producer_group: half.producer_group,
        message: half.message,
        checks: half.checks,
    };
    match state.txn_producers.ask(check) {
        Some(client) => tracing::debug!(transaction = %id, client, "transaction check asked"),
        None => tracing::debug!(transaction = %id, "no producer to ask about the transaction"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(group: &str, topic: &str) -> Check {
        Check {
            transaction_id: "g@1-0".into(),
            msg_id: "m".into(),
            topic: topic.into(),
            queue_id: 0,
            producer_group: group.into(),
            message: MessageIn {
                tags: String::new(),
                keys: String::new(),
                properties: vec![],
                body: bytes::Bytes::new(),
                born_timestamp_ms: 0,
                body_crc: 0,
            },
            checks: 0,
        }
    }

    #[tokio::test]
    async fn a_check_goes_to_the_group_else_to_a_publisher_of_the_topic() {
        let producers = Arc::new(Producers::default());
        let (tx_a, mut rx_a) = mpsc::channel(4);
        let (tx_t, mut rx_t) = mpsc::channel(4);
        let _a = producers.register("a", "G", [], tx_a);
        let t = producers.register("t", "", ["T".to_owned()], tx_t);
        assert_eq!(producers.ask(check("G", "T")), Some("a".into()));
        assert!(rx_a.try_recv().is_ok());
        assert_eq!(producers.ask(check("", "T")), Some("t".into()));
        assert!(rx_t.try_recv().is_ok());
        assert_eq!(
            producers.ask(check("Other", "T")),
            Some("t".into()),
            "a topic's publisher"
        );
        assert_eq!(producers.ask(check("Other", "U")), None);
        drop(t);
        assert_eq!(producers.ask(check("", "T")), None, "a dropped registration is gone");
        assert_eq!(producers.count(), 1);
    }
}
