//! Stable error codes and their one mapping to and from `tonic::Status`.
//!
//! A code is part of the wire protocol: clients branch on it, so a code's name and meaning never
//! change once released. The code travels in the `x-raftmq-code` metadata entry, the master's
//! address (for `NOT_MASTER`) in `x-raftmq-leader`, and the message starts with the code so a
//! human reading a plain gRPC error sees it too.

use std::fmt;

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Metadata key carrying the stable error code.
pub const CODE_KEY: &str = "x-raftmq-code";
/// Metadata key carrying the master's client address on `NOT_MASTER`.
pub const LEADER_KEY: &str = "x-raftmq-leader";

/// Every error a raftmq server can answer with. The name (`as_str`) is the stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A field of the request is malformed; the message names the field.
    InvalidArgument,
    /// No live broker group holds the topic.
    TopicNotFound,
    /// The topic exists but the target group does not allow writes (or reads).
    NoPermission,
    /// The queue id is outside the topic's queue count.
    QueueNotFound,
    /// No message at that (topic, queue, offset).
    MessageNotFound,
    /// This node is not the master; retry at the leader address if one is given.
    NotMaster,
    /// A message body (or batch) exceeds the configured maximum size.
    MessageTooLarge,
    /// The node's disk is over its limit; nothing was stored.
    DiskFull,
    /// The outcome is unknown: the request may or may not have taken effect.
    Timeout,
    /// The node cannot serve right now (starting, shutting down, no quorum); retry later.
    Unavailable,
    /// Stored data failed a checksum or could not be decoded.
    StorageError,
    /// A bug or an unexpected condition on the server.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidArgument,
        ErrorCode::TopicNotFound,
        ErrorCode::NoPermission,
        ErrorCode::QueueNotFound,
        ErrorCode::MessageNotFound,
        ErrorCode::NotMaster,
        ErrorCode::MessageTooLarge,
        ErrorCode::DiskFull,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::StorageError,
        ErrorCode::Internal,
    ];

    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::TopicNotFound => "TOPIC_NOT_FOUND",
            ErrorCode::NoPermission => "NO_PERMISSION",
            ErrorCode::QueueNotFound => "QUEUE_NOT_FOUND",
            ErrorCode::MessageNotFound => "MESSAGE_NOT_FOUND",
            ErrorCode::NotMaster => "NOT_MASTER",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::DiskFull => "DISK_FULL",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::StorageError => "STORAGE_ERROR",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// Parses a wire name; `None` for a code this version does not know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The gRPC status code that best matches, for clients that only look at that.
    pub fn grpc_code(self) -> Code {
        match self {
            ErrorCode::InvalidArgument | ErrorCode::MessageTooLarge => Code::InvalidArgument,
            ErrorCode::TopicNotFound | ErrorCode::QueueNotFound | ErrorCode::MessageNotFound => Code::NotFound,
            ErrorCode::NoPermission => Code::PermissionDenied,
            ErrorCode::NotMaster => Code::FailedPrecondition,
            ErrorCode::DiskFull => Code::ResourceExhausted,
            ErrorCode::Timeout => Code::DeadlineExceeded,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::StorageError => Code::DataLoss,
            ErrorCode::Internal => Code::Internal,
        }
    }

    /// Builds the status for this code.
    pub fn status(self, message: impl fmt::Display) -> Status {
        let mut status = Status::new(self.grpc_code(), format!("{}: {message}", self.as_str()));
        status
            .metadata_mut()
            .insert(CODE_KEY, MetadataValue::from_static(self.as_str()));
        status
    }

    /// `NOT_MASTER` naming the master's client address when this node knows it.
    pub fn not_master(leader: Option<&str>) -> Status {
        let mut status = match leader {
            Some(addr) => ErrorCode::NotMaster.status(format!("not the master; master is {addr}")),
            None => ErrorCode::NotMaster.status("not the master; no master is known"),
        };
        if let Some(value) = leader.and_then(|a| MetadataValue::try_from(a).ok()) {
            status.metadata_mut().insert(LEADER_KEY, value);
        }
        status
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answered by a raftmq server, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// The stable code, `None` when the status did not come from raftmq (a transport error).
    pub code: Option<ErrorCode>,
    /// The master's address, for `NOT_MASTER`.
    pub leader: Option<String>,
    /// The gRPC code.
    pub grpc_code: Code,
    pub message: String,
}

impl RemoteError {
    /// Reads the code and leader back out of a status built by [`ErrorCode::status`].
    pub fn from_status(status: &Status) -> Self {
        let meta = |key: &str| {
            status
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        RemoteError {
            code: meta(CODE_KEY).and_then(|c| ErrorCode::parse(&c)),
            leader: meta(LEADER_KEY),
            grpc_code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            // The message already starts with the code.
            Some(_) => f.write_str(&self.message),
            None => write!(f, "{:?}: {}", self.grpc_code, self.message),
        }
    }
}

impl std::error::Error for RemoteError {}

/// Whether a transport error happened before the request could be sent: the connection was
/// never made. Only then is a write safe to send again; any other transport error leaves its
/// outcome unknown.
pub fn never_sent(status: &Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut text = status.message().to_lowercase();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        text.push_str(&s.to_string().to_lowercase());
        source = s.source();
    }
    text.contains("connect") || text.contains("refused")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_a_status() {
        for code in ErrorCode::ALL {
            let err = RemoteError::from_status(&code.status("boom"));
            assert_eq!(err.code, Some(code));
            assert_eq!(err.grpc_code, code.grpc_code());
            assert_eq!(err.message, format!("{}: boom", code.as_str()));
        }
    }

    #[test]
    fn not_master_carries_the_leader() {
        let err = RemoteError::from_status(&ErrorCode::not_master(Some("127.0.0.1:9000")));
        assert_eq!(err.code, Some(ErrorCode::NotMaster));
        assert_eq!(err.leader.as_deref(), Some("127.0.0.1:9000"));
        let err = RemoteError::from_status(&ErrorCode::not_master(None));
        assert_eq!(err.leader, None);
    }

    #[test]
    fn foreign_status_has_no_code() {
        let err = RemoteError::from_status(&Status::unavailable("connection refused"));
        assert_eq!(err.code, None);
        assert_eq!(err.grpc_code, Code::Unavailable);
    }
}
