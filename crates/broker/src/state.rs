//! What every operation of a broker node shares: its config, its Raft node, the store's reader,
//! the proposer, and the master's rules (is this node the master, commit a command). The topic
//! rules of reads and sends are in `ops::topics`.

use std::sync::Arc;

use openraft::{Raft, ServerState};
use raftmq_common::shutdown::Stopping;
use raftmq_store::types::{Command, CommandResult, Rejection};
use raftmq_store::{StoreReader, TypeConfig};
use tokio::sync::watch;

use crate::config::BrokerConfig;
use crate::consumers::Consumers;
use crate::proposer::Proposer;
use raftmq_common::{Error, ErrorCode};

/// State every handler needs.
pub struct BrokerState {
    pub config: BrokerConfig,
    pub metrics: Arc<crate::metrics::BrokerMetrics>,
    pub raft: Raft<TypeConfig>,
    pub reader: StoreReader,
    pub proposer: Proposer,
    pub consumers: Consumers,
    pub disk: crate::retention::DiskGuard,
    pub faults: std::sync::Arc<crate::network::Faults>,
    pub stop: Stopping,
    /// Set while a master hands leadership over (a clean stop, or a transfer): it takes no new
    /// writes, and its proposer proposes nothing more.
    pub handing_over: Arc<std::sync::atomic::AtomicBool>,
    /// The election state: whether this master hears from a majority.
    pub contact: Arc<crate::election::LeaderContact>,
    /// This node's Raft links (a master transfer uses them).
    pub network: crate::network::Network,
    /// Held by the one membership change or master transfer this master runs at a time.
    pub membership_busy: tokio::sync::Mutex<()>,
    /// The topic-table generation the last finished heartbeat round carried to the NameServers.
    pub announced_topics: watch::Sender<u64>,
    /// The write queue a send that leaves the choice to the broker goes to next.
    pub next_queue: std::sync::atomic::AtomicU32,
    /// The queues a POP receive on this node is proposing for.
    pub pop_busy: crate::ops::pop::Busy,
    /// Producers connected here that answer transaction checks.
    pub txn_producers: Arc<crate::ops::txn::Producers>,
    /// Authentication and rights of requests.
    pub guard: Arc<crate::guard::Guard>,
}

impl BrokerState {
    /// The master's client address, when this node knows who the master is.
    pub fn leader_client_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.client_addr.clone())
    }

    /// Whether this node takes writes: it leads, is not handing leadership over, and hears from
    /// a majority.
    pub fn is_master(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
            && !self.handing_over.load(std::sync::atomic::Ordering::Acquire)
            && !self.contact.quorum_lost()
    }

    /// Stepping down: handing over, or without a majority. The next master is not known yet.
    fn stepping_down(&self) -> bool {
        self.handing_over.load(std::sync::atomic::Ordering::Acquire) || self.contact.quorum_lost()
    }

    pub(crate) fn require_master(&self) -> Result<(), Error> {
        if self.is_master() {
            Ok(())
        } else {
            Err(Error::not_master(
                // While handing over, the next master is not known yet: the client backs off
                // briefly and asks the NameServers, instead of bouncing between the two.
                self.leader_client_addr().filter(|_| !self.stepping_down()),
            ))
        }
    }

    /// Proposes a command and maps a refusal by the state machine to its error.
    pub(crate) async fn commit(&self, command: Command, bytes: usize) -> Result<(u64, CommandResult), Error> {
        let (index, result) = self.proposer.submit(command, bytes).await?;
        match result {
            CommandResult::Rejected(why, message) => Err(match why {
                Rejection::TopicNotFound => ErrorCode::TopicNotFound,
                Rejection::QueueNotFound => ErrorCode::QueueNotFound,
                Rejection::NoPermission => ErrorCode::NoPermission,
                Rejection::InvalidArgument => ErrorCode::InvalidArgument,
                Rejection::StaleLease => ErrorCode::StaleHandle,
                Rejection::AlreadyDelivered => ErrorCode::AlreadyDelivered,
                Rejection::AlreadyEnded => ErrorCode::TransactionEnded,
                Rejection::MessageNotFound => ErrorCode::MessageNotFound,
            }
            .err(message)),
            ok => Ok((index, ok)),
        }
    }
}
