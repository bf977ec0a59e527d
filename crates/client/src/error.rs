//! What a client call can fail with. The variants say what to do; `code()` gives the stable code.

use raftmq_common::{ErrorCode, RemoteError};

/// Displayed as `CODE: detail`, the code being the stable one (`TOPIC_NOT_FOUND`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The request is malformed; fix it.
    InvalidArgument(String),
    TopicNotFound(String),
    QueueNotFound(String),
    MessageNotFound(String),
    NoPermission(String),
    MessageTooLarge(String),
    DiskFull(String),
    /// The outcome is unknown: the message may or may not have been stored. Never "failed".
    Timeout(String),
    /// No node could serve the request (no master, nothing reachable); retry later.
    Unavailable(String),
    /// The server found damaged data.
    Storage(String),
    Other(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let detail = match self {
            ClientError::InvalidArgument(m)
            | ClientError::TopicNotFound(m)
            | ClientError::QueueNotFound(m)
            | ClientError::MessageNotFound(m)
            | ClientError::NoPermission(m)
            | ClientError::MessageTooLarge(m)
            | ClientError::DiskFull(m)
            | ClientError::Timeout(m)
            | ClientError::Unavailable(m)
            | ClientError::Storage(m)
            | ClientError::Other(m) => m,
        };
        match self.code() {
            Some(code) => {
                // Server messages already start with their code.
                let detail = detail.strip_prefix(&format!("{}: ", code.as_str())).unwrap_or(detail);
                write!(f, "{}: {detail}", code.as_str())
            }
            None => f.write_str(detail),
        }
    }
}

impl std::error::Error for ClientError {}

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
    match remote.code {
        Some(ErrorCode::NotMaster) => (Retry::AtLeader(remote.leader), error),
        // The broker refused before proposing anything (shutting down, no quorum yet).
        Some(ErrorCode::Unavailable) => (Retry::Unreachable, error),
        Some(ErrorCode::Timeout) => (Retry::Unknown, error),
        Some(_) => (Retry::No, error),
        // No raftmq code: the transport failed. Only a failed connection proves the request
        // never reached the broker; anything else (a reset, a broken stream) may have come after
        // the broker committed it, so its outcome is unknown.
        None if raftmq_common::code::never_sent(status) => (Retry::Unreachable, error),
        None => (
            Retry::Unknown,
            ClientError::Timeout(format!(
                "outcome unknown: the connection failed during the call ({:?}: {})",
                status.code(),
                status.message()
            )),
        ),
    }
}
