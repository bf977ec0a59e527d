//! What a client call can fail with. The variants say what to do; `code()` gives the stable code.

use raftmq_common::{ErrorCode, RemoteError};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// The request is malformed; fix it.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("topic not found: {0}")]
    TopicNotFound(String),
    #[error("queue not found: {0}")]
    QueueNotFound(String),
    #[error("message not found: {0}")]
    MessageNotFound(String),
    #[error("no permission: {0}")]
    NoPermission(String),
    #[error("message too large: {0}")]
    MessageTooLarge(String),
    #[error("disk full: {0}")]
    DiskFull(String),
    /// The outcome is unknown: the message may or may not have been stored. Never "failed".
    #[error("outcome unknown (timeout): {0}")]
    Timeout(String),
    /// No node could serve the request (no master, nothing reachable); retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The server found damaged data.
    #[error("storage error on the server: {0}")]
    Storage(String),
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    /// The stable code, when the error has one.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            ClientError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            ClientError::TopicNotFound(_) => ErrorCode::TopicNotFound,
            ClientError::QueueNotFound(_) => ErrorCode::QueueNotFound,
            ClientError::MessageNotFound(_) => ErrorCode::MessageNotFound,
            ClientError::NoPermission(_) => ErrorCode::NoPermission,
            ClientError::MessageTooLarge(_) => ErrorCode::MessageTooLarge,
            ClientError::DiskFull(_) => ErrorCode::DiskFull,
            ClientError::Timeout(_) => ErrorCode::Timeout,
            ClientError::Unavailable(_) => ErrorCode::Unavailable,
            ClientError::Storage(_) => ErrorCode::StorageError,
            ClientError::Other(_) => return None,
        })
    }

    /// Maps a server's answer; `NOT_MASTER` is handled by the callers that can retry it and
    /// ends here only when retries ran out.
    pub fn from_remote(e: &RemoteError) -> ClientError {
        let m = e.message.clone();
        match e.code {
            Some(ErrorCode::InvalidArgument) => ClientError::InvalidArgument(m),
            Some(ErrorCode::TopicNotFound) => ClientError::TopicNotFound(m),
            Some(ErrorCode::QueueNotFound) => ClientError::QueueNotFound(m),
            Some(ErrorCode::MessageNotFound) => ClientError::MessageNotFound(m),
            Some(ErrorCode::NoPermission) => ClientError::NoPermission(m),
            Some(ErrorCode::MessageTooLarge) => ClientError::MessageTooLarge(m),
            Some(ErrorCode::DiskFull) => ClientError::DiskFull(m),
            Some(ErrorCode::Timeout) => ClientError::Timeout(m),
            Some(ErrorCode::NotMaster) | Some(ErrorCode::Unavailable) => ClientError::Unavailable(m),
            Some(ErrorCode::StorageError) => ClientError::Storage(m),
            Some(ErrorCode::Internal) => ClientError::Other(m),
            None => match e.grpc_code {
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ClientError::Timeout(m),
                tonic::Code::Unavailable => ClientError::Unavailable(m),
                _ => ClientError::Other(format!("{:?}: {m}", e.grpc_code)),
            },
        }
    }
}

/// How a failed call should be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Another node is master: go there now.
    AtLeader(Option<String>),
    /// The node did not answer: try another.
    Unreachable,
    /// The answer is final.
    No,
    /// The outcome is unknown.
    Unknown,
}

pub(crate) fn classify(status: &tonic::Status) -> (Retry, ClientError) {
    let remote = RemoteError::from_status(status);
    let error = ClientError::from_remote(&remote);
    let retry = match remote.code {
        Some(ErrorCode::NotMaster) => Retry::AtLeader(remote.leader),
        Some(ErrorCode::Unavailable) => Retry::Unreachable,
        Some(ErrorCode::Timeout) => Retry::Unknown,
        Some(_) => Retry::No,
        None => match status.code() {
            // The connection failed before the request went out.
            tonic::Code::Unavailable if !status.message().contains("reset") => Retry::Unreachable,
            _ => Retry::Unknown,
        },
    };
    (retry, error)
}
