//! The broker answers with the one wire error, [`raftmq_common::Error`]; this module holds only
//! the mappings from the store's own errors to it, which cannot live in either crate alone.

use raftmq_common::{Error, ErrorCode};

/// A read of stored data failed: damaged data must be loud, so it is logged here, where it is
/// handled, and answered as `STORAGE_ERROR`.
pub fn storage(e: raftmq_store::ReadError) -> Error {
    tracing::error!("storage error while reading: {e}");
    ErrorCode::StorageError.err(e.to_string())
}
