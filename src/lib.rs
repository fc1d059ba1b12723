//! The `warden` binary's library half: configuration and wiring. Tests and
//! benches start the same server the binary runs.

pub mod cli;
pub mod config;
pub mod node;
pub mod server;
