//! What every raftmq crate shares: error codes and their gRPC form, request signatures and
//! rights, name and address validation, configuration loading, logging set-up and the shutdown
//! signal.
//!
//! Nothing here knows about Raft or storage; it must stay small enough that every crate can
//! depend on it without pulling in the rest.

pub mod auth;
pub mod code;
pub mod config;
pub mod logging;
pub mod runtime;
pub mod security;
pub mod shutdown;
pub mod time;
pub mod tls;
pub mod validate;

pub use code::{Error, ErrorCode};

/// FNV-1a: a hash that is the same in every process and version, unlike std's. Messages with
/// the same sharding key (RocketMQ 5's message group) go to the queue it picks.
pub fn stable_hash(key: &str) -> u64 {
    key.bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// File in a broker's RocksDB directory naming its newest WAL file and how many of its bytes are
/// synced (`000012.log 4096`), kept only with `fault-injection = true`: the chaos suite's
/// torn-tail fault cuts a killed node's WAL back to somewhere between this mark and its end,
/// which is what a power loss may do, and never further.
pub const SYNCED_WAL_MARK: &str = "SYNCED-WAL";
