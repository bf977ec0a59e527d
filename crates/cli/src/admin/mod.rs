//! The admin commands, one module per command group: topics, the cluster, consumer groups,
//! single messages. Each parses nothing itself (clap does, in `main.rs`) and prints a table or,
//! with `--json`, JSON.

pub(crate) mod acl;
pub(crate) mod cluster;
pub(crate) mod dlq;
pub(crate) mod group;
pub(crate) mod members;
pub(crate) mod message;
pub(crate) mod topic;
pub(crate) mod transaction;

use raftmq_proto as pb;

pub(crate) fn role_name(role: i32) -> &'static str {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Master) => "master",
        Ok(pb::Role::Slave) => "slave",
        Ok(pb::Role::Learner) => "learner",
        Ok(pb::Role::Candidate) => "candidate",
        _ => "unknown",
    }
}

pub(crate) fn perm_name(p: i32) -> &'static str {
    match pb::Permission::try_from(p) {
        Ok(pb::Permission::ReadWrite) => "rw",
        Ok(pb::Permission::Read) => "r",
        Ok(pb::Permission::Write) => "w",
        _ => "-",
    }
}
