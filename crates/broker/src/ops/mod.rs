//! The broker's operations, one module each, written once for both protocol faces: raftmq's own
//! (`crate::service`, `raftmq.v1`) and RocketMQ 5's (`crate::rocketmq`, `apache.rocketmq.v2`). An
//! operation takes plain Rust values, applies every rule of its kind (validation, permission,
//! disk guard, the Raft command, the result) and answers a plain result or a
//! [`Error`](raftmq_common::Error); a face only converts its protocol's messages to
//! and from these, and the error to its protocol's status.

pub mod delay;
pub mod membership;
pub mod offsets;
pub mod pop;
pub mod pull;
pub mod retry;
pub mod send;
pub mod topics;
pub mod txn;
pub mod users;

/// The part after `group@` of a handle this broker group gave out (a recall handle, a
/// transaction id): `INVALID_ARGUMENT` naming `field` when it has no group, or another group's.
pub(crate) fn own_handle<'a>(
    state: &crate::state::BrokerState,
    field: &str,
    handle: &'a str,
) -> Result<&'a str, raftmq_common::Error> {
    use raftmq_common::ErrorCode;
    let (group, rest) = handle
        .split_once('@')
        .ok_or_else(|| ErrorCode::InvalidArgument.err(format!("field `{field}`: {handle:?} names no broker group")))?;
    if group != state.config.group {
        return Err(ErrorCode::InvalidArgument.err(format!(
            "field `{field}`: {handle} belongs to broker group {group}; this is {}",
            state.config.group
        )));
    }
    Ok(rest)
}
