//! Forge (seeds/forge-api.txt, paths in DIALECTS.md): snake_case, ids with
//! prefixes (`usr_`), opaque bearer sessions, `{error, code, details?}`
//! errors, and a per-user API rate limit on `/api/v1/*`.

mod agent;
mod auth;
mod datasets;
mod deployments;
mod training;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::dialects::Dialect;
use crate::error::ApiError;
use crate::openapi::Api;

#[derive(Debug)]
pub(crate) struct Forge;

fn code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BAD_REQUEST",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        409 => "CONFLICT",
        410 => "EXPIRED",
        413 => "PAYLOAD_TOO_LARGE",
        429 => "RATE_LIMITED",
        502 => "BAD_GATEWAY",
        504 => "GATEWAY_TIMEOUT",
        503 => "UNAVAILABLE",
        _ => "INTERNAL_ERROR",
    }
}

impl Dialect for Forge {
    const API_RATE_LIMITED: bool = true;

    fn error(status: StatusCode, message: String, errors: Vec<String>) -> Response {
        let mut body = json!({"error": message, "code": code(status)});
        if !errors.is_empty() {
            body["code"] = json!("VALIDATION_ERROR");
            body["details"] = json!(errors.join("; "));
        }
        (status, Json(body)).into_response()
    }
}

pub(crate) type ForgeError = ApiError<Forge>;
pub(crate) type ForgeResult<T> = Result<T, ForgeError>;

/// Viewers may look, not change: 403 before any lookup.
pub(crate) fn writer(p: &warden_identity::Principal, what: &str) -> ForgeResult<()> {
    if p.can_write() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("viewers cannot {what}")))
    }
}

/// Forge's ids carry a kind prefix.
pub(crate) fn user_id(id: &str) -> String {
    format!("usr_{id}")
}

pub(crate) fn routes() -> Api {
    auth::routes()
        .merge(agent::routes())
        .merge(datasets::routes())
        .merge(training::routes())
        .merge(deployments::routes())
}
