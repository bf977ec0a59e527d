//! Generated protobuf messages and gRPC stubs for every raftmq service.
//!
//! This crate holds generated code only; behaviour belongs in the crates that use it.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Version 1 of raftmq's wire protocol.
pub mod v1 {
    tonic::include_proto!("raftmq.v1");
}

pub use v1::*;

/// Apache RocketMQ 5's gRPC protocol (`apache.rocketmq.v2`), served for the official clients.
pub mod rocketmq {
    tonic::include_proto!("apache.rocketmq.v2");
}
