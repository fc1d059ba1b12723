//! One module per dialect. Each knows its wire shapes, paging and error
//! body; all of them call the same core.

pub(crate) mod aiwm;
pub(crate) mod body;
pub(crate) mod contenox;
pub(crate) mod forge;
pub(crate) mod neuronest;
pub(crate) mod upload;
pub(crate) mod vareon;

use axum::http::StatusCode;
use axum::response::Response;

/// What differs between dialects at the edge.
pub(crate) trait Dialect: Send + Sync + 'static {
    /// The dialect's documented error body.
    fn error(status: StatusCode, message: String, errors: Vec<String>) -> Response;

    /// Whether the per-user API limit applies to this dialect's routes
    /// (Forge documents one; the others none).
    const API_RATE_LIMITED: bool = false;

    /// The cookie this dialect also accepts a credential from, if any
    /// (Contenox's UI). Never used for WebSocket upgrades.
    const ACCEPTS_COOKIE: Option<&'static str> = None;
}

pub(crate) use aiwm::Aiwm;

pub(crate) use body::{Fields, JsonBody};

/// Timestamps on the wire: ISO 8601 with milliseconds, UTC.
pub(crate) use warden_storage::iso_millis as iso;
