//! What every raftmq crate shares: error codes and their gRPC form, name and address validation,
//! configuration loading, logging set-up and the shutdown signal.
//!
//! Nothing here knows about Raft or storage; it must stay small enough that every crate can
//! depend on it without pulling in the rest.

pub mod code;
pub mod config;
pub mod runtime;
pub mod validate;

pub use code::{ErrorCode, RemoteError};
