//! The users of a broker group and their rights, replicated through the Raft log so that every
//! node of the group authenticates and authorizes the same way. Kept in the groups' column
//! family under their own prefix, so snapshots carry them.
//!
//! Secret keys are stored as given: RocketMQ 5's signature is an HMAC under the secret key, so
//! the server needs the key itself. Protect the data directory as you would the key.

use raftmq_common::auth::User;
use rocksdb::WriteBatch;

use crate::codec;
use crate::db::{Db, CF_GROUPS};
use crate::state::SmState;
use crate::types::{CommandResult, Rejection};

/// The prefix of user records.
pub(crate) const USER_PREFIX: &[u8] = b"\0user\0";

fn key(access_key: &str) -> Vec<u8> {
    let mut k = USER_PREFIX.to_vec();
    k.extend_from_slice(access_key.as_bytes());
    k
}

/// Creates a user or replaces its secret and rights.
pub(crate) fn put(db: &Db, state: &mut SmState, batch: &mut WriteBatch, user: &User) -> CommandResult {
    if let Err(e) = user.validate() {
        return CommandResult::Rejected(Rejection::InvalidArgument, e);
    }
    batch.put_cf(db.cf(CF_GROUPS), key(&user.access_key), codec::encode(user));
    state.users.insert(user.access_key.clone(), user.clone());
    CommandResult::Done
}

/// Deletes a user; deleting one that does not exist is done too (the request may be a retry).
pub(crate) fn delete(db: &Db, state: &mut SmState, batch: &mut WriteBatch, access_key: &str) -> CommandResult {
    batch.delete_cf(db.cf(CF_GROUPS), key(access_key));
    state.users.remove(access_key);
    CommandResult::Done
}
