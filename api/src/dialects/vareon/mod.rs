//! Vareon (seeds/vareon-api.md): FastAPI conventions — snake_case bodies,
//! `skip`/`limit` paging into bare arrays, `{"detail": ...}` errors, 422
//! for validation with FastAPI's detail list.

mod agents;
mod chat;
mod cognisys;
mod datasets;
mod devices;
mod jobs;
mod models;
mod schedules;
mod system;
mod telemetry;
mod terminal;
mod training;
mod users;
pub(crate) mod workflows;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::dialects::Dialect;
use crate::error::ApiError;
use crate::openapi::Api;

#[derive(Debug)]
pub(crate) struct Vareon;

impl Dialect for Vareon {
    fn error(status: StatusCode, message: String, errors: Vec<String>) -> Response {
        if status == StatusCode::BAD_REQUEST && !errors.is_empty() {
            let detail: Vec<Value> = errors
                .iter()
                .map(|e| {
                    let field = e.split_whitespace().next().unwrap_or("body");
                    json!({"loc": ["body", field], "msg": e, "type": "value_error"})
                })
                .collect();
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"detail": detail})),
            )
                .into_response();
        }
        let message = if status == StatusCode::UNAUTHORIZED && message == "Unauthorized" {
            "Not authenticated".to_owned()
        } else {
            message
        };
        let mut response = (status, Json(json!({"detail": message}))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

pub(crate) type VareonBody = crate::dialects::JsonBody<Vareon>;

pub(crate) type VareonError = ApiError<Vareon>;
pub(crate) type VareonResult<T> = Result<T, VareonError>;

/// Viewers may look, not change: 403 (FastAPI's words) before any lookup.
pub(crate) fn writer(p: &warden_identity::Principal) -> VareonResult<()> {
    if p.can_write() {
        Ok(())
    } else {
        Err(ApiError::forbidden("Not enough permissions"))
    }
}

/// `skip` and `limit` (FastAPI's defaults 0 and 100).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct SkipLimit {
    pub skip: Option<String>,
    pub limit: Option<String>,
}

impl SkipLimit {
    pub fn parse(&self) -> VareonResult<(usize, usize)> {
        let mut errors = Vec::new();
        let mut read = |name: &str, v: &Option<String>, default: usize| match v {
            None => default,
            Some(s) => s.parse::<usize>().unwrap_or_else(|_| {
                errors.push(format!("{name} must be a non-negative integer"));
                default
            }),
        };
        let skip = read("skip", &self.skip, 0);
        let limit = read("limit", &self.limit, 100);
        if errors.is_empty() {
            Ok((skip, limit.min(1000)))
        } else {
            Err(ApiError::validation(errors))
        }
    }
}

pub(crate) fn routes() -> Api {
    telemetry::routes()
        .merge(users::routes())
        .merge(cognisys::routes())
        .merge(chat::routes())
        .merge(datasets::routes())
        .merge(training::routes())
        .merge(models::routes())
        .merge(workflows::routes())
        .merge(jobs::routes())
        .merge(schedules::routes())
        .merge(devices::routes())
        .merge(system::routes())
        .merge(terminal::routes())
        .merge(agents::routes())
}
