//! `GET /health` (vareon and forge) and `GET /api/health` (aiwm): one
//! union body, so every dialect's client finds its fields.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::openapi::Api;

async fn health(State(state): State<AppState>) -> Json<Value> {
    let db = match state.store.schema_version() {
        Ok(_) => "connected",
        Err(_) => "error",
    };
    Json(json!({
        "status": "ok",
        "version": state.config.version,
        "aegis_db": db,
        "uptime_seconds": state.started.elapsed().as_secs(),
    }))
}

async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let actors = state.runtime.counts().await;
    let restarts = state.runtime.restarts().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state
            .metrics
            .render(&actors, &restarts, &state.store.commit_stats()),
    )
}

pub(crate) fn routes() -> Api {
    Api::new()
        .public_get(
            "/health",
            "health",
            "Liveness and store status (vareon, forge)",
            health,
        )
        .public_get(
            "/api/health",
            "health",
            "Liveness and store status (aiwm)",
            health,
        )
        .public_get("/metrics", "health", "Prometheus metrics", metrics)
}
