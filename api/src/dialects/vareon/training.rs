//! Vareon neosyntis training jobs (`/api/neosyntis/training-jobs/*`):
//! views of the same supervised training runs forge's `/api/v1/training`
//! shows (one id: bare here, `tr_` there), so a run started through forge
//! is a job here. `metrics` carries the run's figures, `logs` a line per
//! finished epoch.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};
use warden_actors::training::TrainingRun;

use super::{SkipLimit, Vareon, VareonResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::iso;
use crate::openapi::Api;
use crate::paging::Window;

type Caller = CurrentUser<Vareon>;

/// A run's log: a line per finished epoch, then its error if any.
pub(super) fn logs(r: &TrainingRun) -> Option<String> {
    let mut logs: Vec<String> = r
        .history
        .iter()
        .map(|e| {
            format!(
                "epoch {}/{}: train_loss={:.6} val_loss={:.6} ({:.1}s)",
                e.epoch, r.total_epochs, e.train_loss, e.val_loss, e.seconds
            )
        })
        .collect();
    logs.extend(r.error.as_ref().map(|e| format!("error: {e}")));
    (!logs.is_empty()).then(|| logs.join("\n"))
}

pub(super) fn view(r: &TrainingRun) -> Value {
    let last = r.history.last();
    json!({
        "model_id": r.model_id,
        "status": r.status.as_str(),
        "start_time": r.started_at.map(iso),
        "end_time": r.completed_at.map(iso),
        "metrics": {
            "architecture": r.architecture,
            "dataset_id": r.dataset_id,
            "current_epoch": r.current_epoch,
            "total_epochs": r.total_epochs,
            "train_loss": last.map(|e| e.train_loss),
            "val_loss": last.map(|e| e.val_loss),
            "best_val_loss": r.best_val_loss,
            "parameters": r.parameters,
        },
        "logs": logs(r),
        "created_at": iso(r.audit.created_at),
        "updated_at": iso(r.audit.updated_at),
        "id": r.id,
        "owner_id": r.owner.user_id,
    })
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<SkipLimit>,
) -> VareonResult<Json<Vec<Value>>> {
    let (skip, limit) = q.parse()?;
    // Newest first, reading only the page (forge's list is the whole set).
    let scope = warden_domain::org_scope(Some(&p.org_id));
    let page = Window::skip(skip, limit).read::<TrainingRun>(
        &state.store,
        warden_domain::CREATED,
        &scope,
        true,
    )?;
    Ok(Json(page.items.iter().map(|(_, r)| view(r)).collect()))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    Ok(Json(view(
        &state.runtime.training.get(&p.org_id, &id).await?,
    )))
}

pub(super) fn routes() -> Api {
    let t = "vareon: neosyntis training jobs";
    Api::new()
        .get(
            "/api/neosyntis/training-jobs/",
            t,
            "The organisation's training runs, newest first (skip, limit)",
            list,
        )
        .get(
            "/api/neosyntis/training-jobs/{job_id}",
            t,
            "A training run: status, times, metrics, a log line per epoch",
            get,
        )
}
