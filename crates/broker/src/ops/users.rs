//! Users and their rights: created, changed and deleted on the master through the Raft log, so
//! every node of the group checks requests against the same users (see `crate::guard`).

use raftmq_common::auth::User;
use raftmq_common::{Error, ErrorCode};
use raftmq_store::types::Command;

use crate::state::BrokerState;

/// Creates a user or replaces its secret key and rights; returns once committed.
pub async fn put(state: &BrokerState, user: User) -> Result<(), Error> {
    user.validate().map_err(|e| ErrorCode::InvalidArgument.err(e))?;
    if state
        .guard
        .security()
        .admin
        .as_ref()
        .is_some_and(|a| a.access_key == user.access_key)
    {
        return Err(ErrorCode::InvalidArgument.err(format!(
            "access key {:?} is the bootstrap admin of the node configs; choose another",
            user.access_key
        )));
    }
    state.require_master()?;
    state.commit(Command::PutUser(user), 0).await?;
    Ok(())
}

/// Deletes a user; returns once committed.
pub async fn delete(state: &BrokerState, access_key: String) -> Result<(), Error> {
    raftmq_common::auth::check_access_key(&access_key)
        .map_err(|e| ErrorCode::InvalidArgument.err(format!("field `access_key`: {e}")))?;
    state.require_master()?;
    state.commit(Command::DeleteUser { access_key }, 0).await?;
    Ok(())
}

/// The users this node has applied.
pub fn list(state: &BrokerState) -> Vec<User> {
    state.reader.users()
}
