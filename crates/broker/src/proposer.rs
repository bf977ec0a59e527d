//! Group commit: concurrent writes are batched into one Raft entry before it is proposed.
//!
//! openraft 0.9's leader flushes one entry at a time, so one message per entry caps throughput
//! near one message per fsync. The proposer takes the first waiting command, waits for a free
//! in-flight slot, then drains everything else that queued meanwhile (up to the batch limits)
//! into the same entry: entries grow under load and stay small when idle. Each command's caller
//! is answered only after its entry is committed (synced on a majority) and applied.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use raftmq_common::shutdown::Stopping;
use raftmq_common::time::now_ms;
use raftmq_store::types::{Command, CommandResult, Request};
use raftmq_store::{BrokerNode, NodeId, TypeConfig};
use tokio::sync::{mpsc, oneshot, Semaphore};

use raftmq_common::{Error, ErrorCode};

/// What a committed command produced: its entry's log index and its result.
pub type Committed = Result<(u64, CommandResult), Error>;

struct Proposal {
    command: Command,
    bytes: usize,
    /// Messages it carries (1 for other commands): what `max_messages` counts.
    weight: usize,
    reply: oneshot::Sender<Committed>,
}

/// The sending side, cloned into every request handler.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Proposal>,
    timeout: Duration,
    /// The in-flight slots: all free when nothing proposed is still uncommitted.
    slots: Arc<Semaphore>,
    max_inflight: usize,
}

/// Limits of one batch and of the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages in one entry, at most (a larger single batch still goes alone).
    pub max_messages: usize,
    pub max_bytes: usize,
    pub max_inflight: usize,
    /// How long a caller waits for its commit before the outcome is reported unknown.
    pub timeout: Duration,
}

impl Proposer {
    /// Starts the batching task; it ends when `stop` turns true or every sender is gone. Each
    /// entry's weight (messages, or commands) goes to `entry_sizes`.
    ///
    /// While `handing_over` is set (a master handing its role over), nothing more is proposed:
    /// each batch is answered `NOT_MASTER` instead, so that the log stops growing and the node
    /// asked to take over can have all of it.
    pub fn start(
        raft: Raft<TypeConfig>,
        limits: Limits,
        entry_sizes: raftmq_metrics::prometheus_client::metrics::histogram::Histogram,
        handing_over: Arc<std::sync::atomic::AtomicBool>,
        mut stop: Stopping,
    ) -> (Proposer, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Proposal>(limits.max_messages * limits.max_inflight * 4);
        let slots = Arc::new(Semaphore::new(limits.max_inflight));
        let task_slots = slots.clone();
        let task = tokio::spawn(async move {
            let slots = task_slots;
            let mut last_ts = 0i64;
            // A command that did not fit the previous entry opens the next one.
            let mut carry: Option<Proposal> = None;
            loop {
                let first = match carry.take() {
                    Some(p) => p,
                    None => tokio::select! {
                        p = rx.recv() => match p { Some(p) => p, None => break },
                        _ = stop.wait() => break,
                    },
                };
                let permit = tokio::select! {
                    permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
                    _ = stop.wait() => {
                        let _ = first.reply.send(Err(ErrorCode::Unavailable.err("the broker is shutting down")));
                        break;
                    }
                };
                // Everything that queued while we waited for the slot joins this entry.
                let (mut bytes, mut weight) = (first.bytes, first.weight);
                let mut batch = vec![first];
                while weight < limits.max_messages {
                    match rx.try_recv() {
                        Ok(p) if bytes + p.bytes <= limits.max_bytes && weight + p.weight <= limits.max_messages => {
                            bytes += p.bytes;
                            weight += p.weight;
                            batch.push(p);
                        }
                        Ok(p) => {
                            carry = Some(p);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                // Checked with the slot held: a transfer that finds every slot free finds every
                // later batch refused.
                if handing_over.load(std::sync::atomic::Ordering::Acquire) {
                    for p in batch {
                        let _ = p.reply.send(Err(Error::not_master(None)));
                    }
                    continue;
                }
                entry_sizes.observe(weight as f64);
                propose(&raft, batch, &mut last_ts, permit, limits.timeout).await;
            }
            if let Some(p) = carry {
                let _ = p
                    .reply
                    .send(Err(ErrorCode::Unavailable.err("the broker is shutting down")));
            }
            // Anything still queued is answered, never dropped silently.
            rx.close();
            while let Ok(p) = rx.try_recv() {
                let _ = p
                    .reply
                    .send(Err(ErrorCode::Unavailable.err("the broker is shutting down")));
            }
        });
        (
            Proposer {
                tx,
                timeout: limits.timeout,
                slots,
                max_inflight: limits.max_inflight,
            },
            task,
        )
    }

    /// Whether nothing proposed is still waiting for its commit.
    pub fn idle(&self) -> bool {
        self.slots.available_permits() == self.max_inflight
    }

    /// Proposes one command and waits until it is committed and applied.
    pub async fn submit(&self, command: Command, bytes: usize) -> Committed {
        let (reply, rx) = oneshot::channel();
        let weight = match &command {
            Command::Send { messages, .. } => messages.len().max(1),
            _ => 1,
        };
        self.tx
            .send(Proposal {
                command,
                bytes,
                weight,
                reply,
            })
            .await
            .map_err(|_| ErrorCode::Unavailable.err("the broker is shutting down"))?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ErrorCode::Timeout.err("the write's outcome is unknown: the proposer stopped")),
            Err(_) => Err(ErrorCode::Timeout.err(format!(
                "the write's outcome is unknown: not committed within {:?}",
                self.timeout
            ))),
        }
    }
}

/// Hands one batch to Raft; a task answers every caller when the entry is committed.
async fn propose(
    raft: &Raft<TypeConfig>,
    batch: Vec<Proposal>,
    last_ts: &mut i64,
    permit: tokio::sync::OwnedSemaphorePermit,
    timeout: Duration,
) {
    // Store timestamps never go backwards on one master, so a queue's timestamps are ordered.
    *last_ts = now_ms().max(*last_ts);
    let (commands, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let request = Request::new(*last_ts, commands);
    // `client_write_ff` only queues the entry, in order; the result comes through `pending`.
    let pending = raft.client_write_ff(request).await;
    tokio::spawn(async move {
        // openraft 0.9 may never answer: an entry proposed by a master that was cut off, and
        // then replaced on it by a snapshot from the new master, is neither applied nor
        // truncated. Waiting for it forever kept the in-flight slot, and once every slot was
        // taken this node never proposed again (found by the chaos suite: a master that took
        // no sends). The callers have stopped waiting by then anyway.
        let outcome = match pending {
            Ok(receiver) => match tokio::time::timeout(timeout, receiver).await {
                Ok(answer) => {
                    answer.map_err(|_| ErrorCode::Timeout.err("the write's outcome is unknown: raft dropped it"))
                }
                Err(_) => Err(ErrorCode::Timeout.err(format!(
                    "the write's outcome is unknown: not committed within {timeout:?}"
                ))),
            },
            Err(fatal) => Err(ErrorCode::Unavailable.err(format!("raft stopped: {fatal}"))),
        };
        drop(permit);
        match outcome {
            Ok(Ok(response)) => {
                let log_index = response.data.log_index;
                for (reply, result) in replies.into_iter().zip(response.data.results) {
                    let _ = reply.send(Ok((log_index, result)));
                }
            }
            Ok(Err(e)) => {
                let error = write_error(e);
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    });
}

fn write_error(e: ClientWriteError<NodeId, BrokerNode>) -> Error {
    match e {
        ClientWriteError::ForwardToLeader(f) => Error::not_master(f.leader_node.map(|n| n.client_addr)),
        ClientWriteError::ChangeMembershipError(e) => ErrorCode::Internal.err(e.to_string()),
    }
}

/// Maps a Raft error of a read-barrier or admin call.
pub fn raft_error<E: std::fmt::Display>(e: RaftError<NodeId, E>) -> Error {
    ErrorCode::Unavailable.err(e.to_string())
}
