//! How a failed call is retried. The error itself is the one wire error,
//! [`raftmq_common::Error`]: a stable code that says what to do (`TIMEOUT` is "outcome
//! unknown", never "failed"), a message, and the master's address on `NOT_MASTER`.

use raftmq_common::{Error, ErrorCode};

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

pub(crate) fn classify(status: &tonic::Status) -> (Retry, Error) {
    let error = Error::from_status(status);
    match error.code {
        _ if !raftmq_common::code::answered(status) => transport(status, error),
        ErrorCode::NotMaster => (Retry::AtLeader(error.leader.clone()), error),
        // The broker refused before proposing anything (shutting down, no quorum yet).
        ErrorCode::Unavailable => (Retry::Unreachable, error),
        ErrorCode::Timeout => (Retry::Unknown, error),
        _ => (Retry::No, error),
    }
}

/// No raftmq code: the transport failed. Only a failed connection proves the request never
/// reached the broker; anything else (a reset, a broken stream) may have come after the broker
/// committed it, so its outcome is unknown.
fn transport(status: &tonic::Status, error: Error) -> (Retry, Error) {
    if raftmq_common::code::never_sent(status) {
        return (Retry::Unreachable, error);
    }
    let unknown = ErrorCode::Timeout.err(format!(
        "outcome unknown: the connection failed during the call ({:?}: {})",
        status.code(),
        status.message()
    ));
    (Retry::Unknown, unknown)
}
