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
    /// A subscription's tag or SQL expression does not parse; the message gives line, column
    /// and reason.
    IllegalFilterExpression,
    /// The request carries no valid credentials: unsigned, an unknown access key, a wrong
    /// signature, or a signing time outside the allowed clock skew. Nothing was done.
    Unauthenticated,
    /// The caller is known but lacks the right the request needs (publish or subscribe on the
    /// topic, subscribe for the group, or admin); the message names both. Nothing was done.
    Forbidden,
    /// No live broker group holds the topic.
    TopicNotFound,
    /// The topic exists but the target group does not allow writes (or reads).
    NoPermission,
    /// The queue id is outside the topic's queue count.
    QueueNotFound,
    /// No message at that (topic, queue, offset).
    MessageNotFound,
    /// A POP receipt handle that is no longer current (acked, expired or redelivered): give up
    /// on that delivery.
    StaleHandle,
    /// A recall of a delayed message that was delivered already: it cannot be taken back.
    AlreadyDelivered,
    /// A transaction ended the other way already (committing a rolled-back one, or rolling
    /// back a committed one); ending it the same way again succeeds.
    TransactionEnded,
    /// This node is not the master; retry at the leader address if one is given.
    NotMaster,
    /// A membership change that would leave the broker group without a master or a live
    /// majority (removing the master, shrinking below a majority of live voters, adding a node
    /// that cannot be reached); the message says what to do first. Nothing was changed.
    UnsafeMembershipChange,
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
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::InvalidArgument,
        ErrorCode::IllegalFilterExpression,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::TopicNotFound,
        ErrorCode::NoPermission,
        ErrorCode::QueueNotFound,
        ErrorCode::MessageNotFound,
        ErrorCode::StaleHandle,
        ErrorCode::AlreadyDelivered,
        ErrorCode::TransactionEnded,
        ErrorCode::NotMaster,
        ErrorCode::UnsafeMembershipChange,
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
            ErrorCode::IllegalFilterExpression => "ILLEGAL_FILTER_EXPRESSION",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::TopicNotFound => "TOPIC_NOT_FOUND",
            ErrorCode::NoPermission => "NO_PERMISSION",
            ErrorCode::QueueNotFound => "QUEUE_NOT_FOUND",
            ErrorCode::MessageNotFound => "MESSAGE_NOT_FOUND",
            ErrorCode::StaleHandle => "STALE_HANDLE",
            ErrorCode::AlreadyDelivered => "ALREADY_DELIVERED",
            ErrorCode::TransactionEnded => "TRANSACTION_ENDED",
            ErrorCode::NotMaster => "NOT_MASTER",
            ErrorCode::UnsafeMembershipChange => "UNSAFE_MEMBERSHIP_CHANGE",
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
            ErrorCode::InvalidArgument
            | ErrorCode::IllegalFilterExpression
            | ErrorCode::MessageTooLarge
            | ErrorCode::StaleHandle => Code::InvalidArgument,
            ErrorCode::TopicNotFound | ErrorCode::QueueNotFound | ErrorCode::MessageNotFound => Code::NotFound,
            ErrorCode::NoPermission | ErrorCode::Forbidden => Code::PermissionDenied,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::NotMaster
            | ErrorCode::AlreadyDelivered
            | ErrorCode::TransactionEnded
            | ErrorCode::UnsafeMembershipChange => Code::FailedPrecondition,
            ErrorCode::DiskFull => Code::ResourceExhausted,
            ErrorCode::Timeout => Code::DeadlineExceeded,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::StorageError => Code::DataLoss,
            ErrorCode::Internal => Code::Internal,
        }
    }

    /// An [`Error`] with this code.
    pub fn err(self, message: impl Into<String>) -> Error {
        Error::new(self, message)
    }

    /// The status for this code: shorthand for `Status::from(self.err(message))`.
    pub fn status(self, message: impl fmt::Display) -> Status {
        self.err(message.to_string()).into()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one error type that crosses the wire: a stable code, a message for people and, for
/// `NOT_MASTER`, the master's client address. Servers build it and turn it into a status with
/// `Status::from` (the one mapping out); clients read it back with [`Error::from_status`] (the
/// one mapping back). Displayed as `CODE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// The master's client address, for `NOT_MASTER` when the answering node knows it.
    pub leader: Option<String>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            leader: None,
        }
    }

    /// `NOT_MASTER`, naming the master when it is known.
    pub fn not_master(leader: Option<String>) -> Self {
        let message = match &leader {
            Some(addr) => format!("not the master; master is {addr}"),
            None => "not the master; no master is known".to_owned(),
        };
        Error {
            code: ErrorCode::NotMaster,
            message,
            leader,
        }
    }

    /// Reads an error back out of a status. A status that did not come from raftmq (the
    /// transport failed, or a proxy answered) is named by its gRPC code: a deadline or a
    /// cancellation is `TIMEOUT` (the outcome is unknown), an unavailable peer `UNAVAILABLE`,
    /// anything else `INTERNAL`. [`answered`] tells the two kinds apart.
    pub fn from_status(status: &Status) -> Self {
        let meta = |key: &str| {
            status
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let text = status.message();
        match meta(CODE_KEY) {
            Some(name) => {
                let (code, message) = match ErrorCode::parse(&name) {
                    Some(code) => (code, text.strip_prefix(&format!("{name}: ")).unwrap_or(text).to_owned()),
                    // A code a newer server knows and this client does not: keep its words.
                    None => (ErrorCode::Internal, text.to_owned()),
                };
                Error {
                    code,
                    message,
                    leader: meta(LEADER_KEY),
                }
            }
            None => {
                let code = match status.code() {
                    Code::DeadlineExceeded | Code::Cancelled => ErrorCode::Timeout,
                    Code::Unavailable => ErrorCode::Unavailable,
                    _ => ErrorCode::Internal,
                };
                Error::new(code, format!("{:?}: {text}", status.code()))
            }
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let mut status = Status::new(e.code.grpc_code(), e.to_string());
        status
            .metadata_mut()
            .insert(CODE_KEY, MetadataValue::from_static(e.code.as_str()));
        if let Some(value) = e.leader.as_deref().and_then(|a| MetadataValue::try_from(a).ok()) {
            status.metadata_mut().insert(LEADER_KEY, value);
        }
        status
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<crate::validate::InvalidField> for Error {
    fn from(e: crate::validate::InvalidField) -> Self {
        Error::new(ErrorCode::InvalidArgument, e.to_string())
    }
}

/// Whether a raftmq server answered with this status (it carries a stable code), as opposed to
/// the transport failing on the way.
pub fn answered(status: &Status) -> bool {
    status.metadata().contains_key(CODE_KEY)
}

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
            let status = Status::from(code.err("boom"));
            assert_eq!(status.code(), code.grpc_code());
            assert_eq!(status.message(), format!("{}: boom", code.as_str()));
            assert!(answered(&status));
            assert_eq!(Error::from_status(&status), code.err("boom"));
        }
    }

    #[test]
    fn not_master_carries_the_leader() {
        let err = Error::from_status(&Error::not_master(Some("127.0.0.1:9000".into())).into());
        assert_eq!(err.code, ErrorCode::NotMaster);
        assert_eq!(err.leader.as_deref(), Some("127.0.0.1:9000"));
        let err = Error::from_status(&Error::not_master(None).into());
        assert_eq!(err.leader, None);
    }

    #[test]
    fn foreign_status_is_named_by_its_grpc_code() {
        let status = Status::unavailable("connection refused");
        assert!(!answered(&status));
        let err = Error::from_status(&status);
        assert_eq!(err.code, ErrorCode::Unavailable);
        assert_eq!(err.message, "Unavailable: connection refused");
        assert_eq!(
            Error::from_status(&Status::deadline_exceeded("late")).code,
            ErrorCode::Timeout
        );
        assert_eq!(Error::from_status(&Status::unknown("what")).code, ErrorCode::Internal);
    }

    #[test]
    fn an_unknown_code_keeps_its_words() {
        let mut status = Status::invalid_argument("NEWER_CODE: detail");
        status
            .metadata_mut()
            .insert(CODE_KEY, MetadataValue::from_static("NEWER_CODE"));
        let err = Error::from_status(&status);
        assert_eq!(err.code, ErrorCode::Internal);
        assert_eq!(err.message, "NEWER_CODE: detail");
    }
}
