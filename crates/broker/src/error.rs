//! What a broker can answer instead of a result, and its one mapping to `tonic::Status`.

use raftmq_common::ErrorCode;
use tonic::Status;

/// Broker errors; each variant says what the caller should do.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BrokerError {
    /// Retry at `leader` (a client address) when given, else after a short wait.
    #[error("not the master")]
    NotMaster { leader: Option<String> },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    TopicNotFound(String),
    #[error("{0}")]
    QueueNotFound(String),
    #[error("{0}")]
    NoPermission(String),
    #[error("{0}")]
    MessageNotFound(String),
    #[error("{0}")]
    MessageTooLarge(String),
    /// A POP receipt handle that is no longer current: give up on that delivery.
    #[error("{0}")]
    StaleHandle(String),
    #[error("{0}")]
    DiskFull(String),
    /// The outcome is unknown: the write may or may not have been committed.
    #[error("{0}")]
    Timeout(String),
    /// Shutting down or no quorum; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Stored data is damaged.
    #[error("{0}")]
    Storage(String),
    #[error("{0}")]
    Internal(String),
}

impl BrokerError {
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::NotMaster { .. } => ErrorCode::NotMaster,
            BrokerError::InvalidArgument(_) | BrokerError::StaleHandle(_) => ErrorCode::InvalidArgument,
            BrokerError::TopicNotFound(_) => ErrorCode::TopicNotFound,
            BrokerError::QueueNotFound(_) => ErrorCode::QueueNotFound,
            BrokerError::NoPermission(_) => ErrorCode::NoPermission,
            BrokerError::MessageNotFound(_) => ErrorCode::MessageNotFound,
            BrokerError::MessageTooLarge(_) => ErrorCode::MessageTooLarge,
            BrokerError::DiskFull(_) => ErrorCode::DiskFull,
            BrokerError::Timeout(_) => ErrorCode::Timeout,
            BrokerError::Unavailable(_) => ErrorCode::Unavailable,
            BrokerError::Storage(_) => ErrorCode::StorageError,
            BrokerError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Status {
        match &e {
            BrokerError::NotMaster { leader } => ErrorCode::not_master(leader.as_deref()),
            other => other.code().status(other),
        }
    }
}

impl From<raftmq_common::validate::InvalidField> for BrokerError {
    fn from(e: raftmq_common::validate::InvalidField) -> Self {
        BrokerError::InvalidArgument(e.to_string())
    }
}

impl From<raftmq_store::ReadError> for BrokerError {
    fn from(e: raftmq_store::ReadError) -> Self {
        // Logged here, where it is handled: damaged data must be loud.
        tracing::error!("storage error while reading: {e}");
        BrokerError::Storage(e.to_string())
    }
}
