//! RocketMQ result codes and how raftmq's errors map onto them.

use raftmq_common::ErrorCode;
use raftmq_proto::rocketmq::{self as v2, Code};

/// A failed operation as the protocol reports it: a RocketMQ code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    pub code: Code,
    pub message: String,
}

impl Fail {
    pub fn new(code: Code, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Fail {
        Fail::new(Code::BadRequest, message)
    }

    pub fn illegal_access_point() -> Fail {
        Fail::new(
            Code::IllegalAccessPoint,
            "this is a NameServer: it answers routes, assignments and heartbeats; send and receive go to the \
             broker endpoints of the route",
        )
    }

    /// Maps a raftmq error code (and its message) to RocketMQ's closest code. The message keeps
    /// raftmq's code in front, so logs on both sides name the same thing.
    pub fn from_raftmq(code: ErrorCode, message: &str) -> Fail {
        let rocketmq = match code {
            ErrorCode::InvalidArgument => Code::BadRequest,
            ErrorCode::IllegalFilterExpression => Code::IllegalFilterExpression,
            ErrorCode::TopicNotFound => Code::TopicNotFound,
            ErrorCode::QueueNotFound => Code::NotFound,
            ErrorCode::MessageNotFound => Code::MessageNotFound,
            ErrorCode::StaleHandle => Code::InvalidReceiptHandle,
            ErrorCode::AlreadyDelivered => Code::BadRequest,
            ErrorCode::TransactionEnded => Code::BadRequest,
            ErrorCode::NoPermission | ErrorCode::Forbidden => Code::Forbidden,
            ErrorCode::Unauthenticated => Code::Unauthorized,
            ErrorCode::MessageTooLarge => Code::MessageBodyTooLarge,
            // Outcome unknown: the write may have been stored.
            ErrorCode::Timeout => Code::ProxyTimeout,
            ErrorCode::NotMaster | ErrorCode::Unavailable => Code::HaNotAvailable,
            _ => Code::InternalServerError,
        };
        Fail::new(rocketmq, format!("{}: {message}", code.as_str()))
    }

    pub fn status(&self) -> v2::Status {
        v2::Status {
            code: self.code as i32,
            message: self.message.clone(),
        }
    }
}

impl From<&raftmq_common::Error> for Fail {
    fn from(e: &raftmq_common::Error) -> Fail {
        Fail::from_raftmq(e.code, &e.message)
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str_name(), self.message)
    }
}

pub fn ok() -> v2::Status {
    v2::Status {
        code: Code::Ok as i32,
        message: "OK".into(),
    }
}

/// The status of a response that carries per-entry results: the entries' code when they all
/// agree, MULTIPLE_RESULTS otherwise.
pub fn summary<'a>(entries: impl IntoIterator<Item = &'a v2::Status>) -> v2::Status {
    let mut first: Option<&v2::Status> = None;
    for s in entries {
        match first {
            None => first = Some(s),
            Some(f) if f.code != s.code => {
                return v2::Status {
                    code: Code::MultipleResults as i32,
                    message: "entries have different results; see each entry".into(),
                }
            }
            Some(_) => {}
        }
    }
    first.cloned().unwrap_or_else(ok)
}
