//! Contenox's model download queue: `/queue` (what the organisation's
//! Ollama backends are pulling and will pull), `/queue/inProgress`
//! (progress as server-sent events), `/queue/cancel` and
//! `/queue/{model}`. The pulls themselves are the backend actors' (see
//! `actors/src/llm/pull.rs`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use warden_actors::llm::pull::Pull;

use super::{Contenox, ContenoxResult};
use crate::AppState;
use crate::auth::{AdminUser, CurrentUser};
use crate::dialects::iso;
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Contenox>;
type Admin = AdminUser<Contenox>;

/// `downloadservice.Job`, with where the pull stands.
fn job_view(p: &Pull) -> Value {
    json!({
        "id": format!("{}:{}", p.backend_id, p.model),
        "taskType": "model_download",
        "modelJob": {"model": p.model, "url": p.base_url},
        "scheduledFor": p.queued_at / 1000,
        "validUntil": p.queued_at / 1000 + 3600,
        "createdAt": iso(p.queued_at),
        "status": p.status,
        "total": p.total,
        "completed": p.completed,
    })
}

async fn queue(State(state): State<AppState>, CurrentUser(p, _): Caller) -> Json<Value> {
    Json(
        state
            .runtime
            .llm
            .pulls(&p.org_id)
            .iter()
            .map(job_view)
            .collect(),
    )
}

fn event(p: &Pull) -> Bytes {
    crate::sse::frame(p.event())
}

/// Progress as it happens: first where each pull stands, then every
/// change, as `data:` events.
async fn in_progress(State(state): State<AppState>, CurrentUser(p, _): Caller) -> Response {
    let llm = &state.runtime.llm;
    let rx = llm.pull_events();
    let now: Vec<Bytes> = llm.pulls(&p.org_id).iter().map(event).collect();
    let org = p.org_id.clone();
    let live = futures_util::stream::unfold((rx, org), |(mut rx, org)| async move {
        loop {
            match rx.recv().await {
                Ok(x) if x.org_id == org => return Some((event(&x), (rx, org))),
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    crate::sse::response(
        &state.lifecycle,
        futures_util::StreamExt::chain(futures_util::stream::iter(now), live),
    )
}

#[derive(serde::Deserialize)]
struct CancelQuery {
    url: Option<String>,
    model: Option<String>,
}

/// Cancels the pulls on one backend (`url`) or of one model (`model`).
async fn cancel(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Query(q): Query<CancelQuery>,
) -> ContenoxResult<Json<Value>> {
    let url = q.url.filter(|u| !u.is_empty());
    let model = q.model.filter(|m| !m.is_empty());
    if url.is_none() && model.is_none() {
        return Err(ApiError::validation(vec![
            "url or model is required (the query parameter of the backend or of the model to cancel)".into(),
        ]));
    }
    let model = if url.is_some() { None } else { model };
    state
        .runtime
        .llm
        .cancel_pulls(&p.org_id, url.as_deref(), model.as_deref())
        .await?;
    Ok(Json(json!("Model download cancellation initiated")))
}

async fn remove(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(model): Path<String>,
) -> ContenoxResult<Json<Value>> {
    let n = state
        .runtime
        .llm
        .cancel_pulls(&p.org_id, None, Some(&model))
        .await?;
    if n == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{model} is not in the download queue"),
        ));
    }
    Ok(Json(json!("Model removed from queue")))
}

pub(super) fn routes() -> Api {
    let q = "contenox: queue";
    Api::new()
        .get(
            "/queue",
            q,
            "Model pulls running and queued on the Ollama backends",
            queue,
        )
        .get(
            "/queue/inProgress",
            q,
            "Pull progress as server-sent events",
            in_progress,
        )
        .delete(
            "/queue/cancel",
            q,
            "Cancel the pulls on a backend (url) or of a model (model) (admin)",
            cancel,
        )
        .delete(
            "/queue/{model}",
            q,
            "Take a model out of the queue, cancelling its pull (admin)",
            remove,
        )
}
