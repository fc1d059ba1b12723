//! The `warden` binary's library half: configuration and wiring. Tests and
//! benches start the same server the binary runs.

pub mod cli;
pub mod config;
pub mod node;
pub mod serve_model;
pub mod server;

/// Installs the process's TLS provider (ring, already built for SMTP) for
/// every HTTPS client: the daemon's downloads, and tests' clients. Safe to
/// call more than once.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
