//! The node gateway: AIWM's node protocol over a raw WebSocket at
//! `/ws/node` (JSON text frames) and over Socket.IO (namespace `/ws/node`). A [`session::Session`] holds what one
//! connection knows and translates frames into node-actor messages; the
//! transport modules only move frames.

mod raw;
pub(crate) mod session;
mod shell;
mod socketio;

pub(crate) use raw::{routes, too_big};
pub(crate) use shell::routes as shell_routes;
pub(crate) use socketio::layer as socketio_layer;

/// Largest frame a node may send; larger ones close the connection.
pub(crate) const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Frames queued for a node before it counts as stalled.
pub(crate) const OUTBOUND_QUEUE: usize = 256;
