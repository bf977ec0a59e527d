//! The broker's operations, one module each, written once for both protocol faces: raftmq's own
//! (`crate::service`, `raftmq.v1`) and RocketMQ 5's (`crate::rocketmq`, `apache.rocketmq.v2`). An
//! operation takes plain Rust values, applies every rule of its kind (validation, permission,
//! disk guard, the Raft command, the result) and answers a plain result or a
//! [`Error`](raftmq_common::Error); a face only converts its protocol's messages to
//! and from these, and the error to its protocol's status.

pub mod delay;
pub mod offsets;
pub mod pop;
pub mod pull;
pub mod retry;
pub mod send;
pub mod topics;
pub mod txn;
