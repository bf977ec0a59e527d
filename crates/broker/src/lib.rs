//! A raftmq broker node: one member of a broker group, which is one Raft group.
//!
//! The group's Raft leader is its master and takes writes; followers are read-only slaves. A
//! write is acknowledged only after its entry is committed (synced on a majority); reads serve
//! only applied, hence committed, entries.

pub mod append_link;
pub mod config;
pub mod consumers;
pub mod convert;
pub mod election;
pub mod error;
pub mod guard;
pub mod heartbeat;
pub mod metrics;
pub mod network;
pub mod node;
pub mod ops;
pub mod proposer;
pub mod raft_service;
pub mod retention;
pub mod rocketmq;
pub mod service;
pub mod state;
pub mod wire;

pub use config::BrokerConfig;
pub use network::Faults;
pub use node::Broker;
