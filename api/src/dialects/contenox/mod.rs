//! Contenox (seeds/contenox-runtime-api.md): camelCase, `limit`/`cursor`
//! (RFC 3339) paging into bare arrays, `{"error": {code, message, param,
//! type}}` errors; credentials by `X-API-Key`, Bearer JWT or the UI's
//! HTTP-only cookie. This module: users, login/register/refresh (also the
//! cookie flavour under `/ui/`), access control, API keys, and the LLM
//! gateway's backends, groups and provider keys.

mod access;
mod activity;
mod backends;
mod chat;
mod chats;
mod events;
mod functions;
mod hooks;
mod jobs;
mod models;
mod queue;
mod system;
mod taskchains;
mod telegram;
mod users;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::dialects::Dialect;
use crate::error::ApiError;
use crate::openapi::Api;

#[derive(Debug)]
pub(crate) struct Contenox;

/// The UI's cookie: HTTP-only, Secure, SameSite=Strict.
pub(crate) const COOKIE: &str = "auth_token";

impl Dialect for Contenox {
    const ACCEPTS_COOKIE: Option<&'static str> = Some(COOKIE);

    fn error(status: StatusCode, message: String, errors: Vec<String>) -> Response {
        let (code, kind) = match status.as_u16() {
            400 => ("bad_request", "invalid_request_error"),
            401 => ("unauthorized", "authentication_error"),
            403 => ("forbidden", "permission_error"),
            404 => ("not_found", "invalid_request_error"),
            409 => ("conflict", "invalid_request_error"),
            413 => ("payload_too_large", "invalid_request_error"),
            422 => ("unprocessable_entity", "invalid_request_error"),
            429 => ("rate_limited", "rate_limit_error"),
            502 => ("bad_gateway", "api_error"),
            503 => ("service_unavailable", "api_error"),
            _ => ("internal_error", "api_error"),
        };
        let (message, param) = match errors.first() {
            Some(first) => (
                errors.join("; "),
                first.split_whitespace().next().unwrap_or("").to_owned(),
            ),
            None => (message, String::new()),
        };
        (
            status,
            Json(
                json!({"error": {"code": code, "message": message, "param": param, "type": kind}}),
            ),
        )
            .into_response()
    }
}

pub(crate) type ContenoxError = ApiError<Contenox>;
pub(crate) type ContenoxResult<T> = Result<T, ContenoxError>;

/// Contenox answers what fails validation of its workflow and event
/// records with 422 (WORKFLOWS.md §4 D-H), not the 400 of its other routes.
pub(crate) fn unprocessable(e: warden_domain::DomainError) -> ContenoxError {
    match e {
        warden_domain::DomainError::Invalid(problems) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, problems.join("; "))
        }
        other => other.into(),
    }
}

/// Viewers may look, not change: 403 before any lookup.
pub(crate) fn writer(p: &warden_identity::Principal) -> ContenoxResult<()> {
    if p.can_write() {
        Ok(())
    } else {
        Err(ApiError::forbidden("viewers cannot change this"))
    }
}

/// Contenox paging: `limit` (default 100, at most 1000) and an RFC 3339
/// cursor (named `cursor` or `from`): items created before it.
pub(crate) fn page_params(
    limit: Option<&str>,
    cursor_name: &str,
    cursor: Option<&str>,
) -> ContenoxResult<(usize, Option<i64>)> {
    let limit =
        match limit {
            None => 100,
            Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::validation(vec!["limit must be a positive integer".into()])
            })?,
        };
    let cursor = match cursor {
        None => None,
        Some(c) => Some(
            chrono::DateTime::parse_from_rfc3339(c)
                .map(|t| t.timestamp_millis())
                .map_err(|_| {
                    ApiError::validation(vec![format!(
                        "{cursor_name} must be an RFC 3339 timestamp"
                    )])
                })?,
        ),
    };
    Ok((limit.min(1000), cursor))
}

pub(crate) fn routes() -> Api {
    users::routes()
        .merge(access::routes())
        .merge(backends::routes())
        .merge(models::routes())
        .merge(chat::routes())
        .merge(chats::routes())
        .merge(telegram::routes())
        .merge(system::routes())
        .merge(queue::routes())
        .merge(taskchains::routes())
        .merge(hooks::routes())
        .merge(events::routes())
        .merge(functions::routes())
        .merge(jobs::routes())
        .merge(activity::routes())
}
