//! The raftmq NameServer: collects broker heartbeats and serves topic routes.
//!
//! NameServers are independent: they never talk to each other and keep nothing on disk. Every
//! broker node heartbeats every NameServer, so each one converges on the same routes by itself.

pub mod config;
pub mod metrics;
pub mod route;
pub mod server;
pub mod service;

pub use config::NamesrvConfig;
pub use server::NameServer;
