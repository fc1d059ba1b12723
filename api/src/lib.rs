//! The HTTP layer: one router per dialect plus Warden's own admin routes,
//! auth extractors, per-dialect error bodies and paging, request context
//! (correlation id), metrics and the OpenAPI document. No business logic:
//! handlers extract, call the core, and map the answer.

mod admin;
mod auth;
mod context;
mod dialects;
mod error;
mod health;
mod metrics;
mod openapi;
mod ws;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use warden_identity::Identity;
use warden_storage::Store;
use warden_supervisors::Runtime;

pub use metrics::Metrics;

/// Settings the HTTP layer needs.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub enable_fault_injection: bool,
    pub max_body_bytes: usize,
    pub version: &'static str,
}

/// Everything a handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub identity: Identity,
    pub runtime: Runtime,
    pub metrics: Arc<Metrics>,
    pub config: Arc<ApiConfig>,
    pub started: Instant,
}

/// The whole application router: every dialect on one port.
pub fn router(state: AppState) -> Router {
    let api = openapi::Api::new()
        .merge(health::routes())
        .merge(dialects::aiwm::routes())
        .merge(ws::routes())
        .merge(admin::routes(state.config.enable_fault_injection));
    let (router, docs) = api.finish();
    let docs = Arc::new(docs);
    router
        .merge(openapi::routes(docs))
        .fallback(error::unmatched)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            context::middleware,
        ))
        .with_state(state)
}
