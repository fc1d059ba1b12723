//! Vareon myntrix jobs (`GET /api/myntrix/jobs/`): a read-only view of
//! the caller's work (VAREON-NEURONEST.md): their executions (chain runs,
//! deployments' starts and stops, AIWM executions) and their training
//! runs, newest first. The original read a table nothing wrote.

use axum::Json;
use axum::extract::{Query, State};
use serde_json::{Value, json};
use warden_actors::execution::Execution;
use warden_actors::training::TrainingRun;

use super::{SkipLimit, Vareon, VareonResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::iso;
use crate::openapi::Api;

fn execution(x: &Execution) -> Value {
    json!({
        "name": x.name,
        "type": x.kind,
        "status": x.status.as_str(),
        "progress": x.progress,
        "created_at": iso(x.audit.created_at),
        "updated_at": iso(x.audit.updated_at),
        "logs": x.error.as_ref().map(|e| format!("error: {}", e.message)),
        "details": {"category": x.category, "execution_id": x.execution_id,
                    "steps": x.steps.len(), "resource_type": x.resource_type,
                    "resource_id": x.resource_id},
        "id": x.id,
        "owner_id": x.owner.user_id,
    })
}

fn training(r: &TrainingRun) -> Value {
    let progress = (r.current_epoch * 100)
        .checked_div(r.total_epochs)
        .unwrap_or(0)
        .min(100);
    json!({
        "name": format!("{} on dataset {}", r.architecture, r.dataset_id),
        "type": "training",
        "status": r.status.as_str(),
        "progress": progress,
        "created_at": iso(r.audit.created_at),
        "updated_at": iso(r.audit.updated_at),
        "logs": super::training::logs(r),
        "details": {"architecture": r.architecture, "dataset_id": r.dataset_id,
                    "model_id": r.model_id, "current_epoch": r.current_epoch,
                    "total_epochs": r.total_epochs},
        "id": r.id,
        "owner_id": r.owner.user_id,
    })
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): CurrentUser<Vareon>,
    Query(q): Query<SkipLimit>,
) -> VareonResult<Json<Vec<Value>>> {
    let (skip, limit) = q.parse()?;
    let scope = warden_domain::org_scope(Some(&p.org_id));
    let mine = |user: &str| user == p.user_id;
    let mut jobs: Vec<(i64, Value)> = state
        .store
        .in_scope::<Execution>(warden_domain::CREATED, &scope)?
        .iter()
        .filter(|x| mine(&x.owner.user_id) && x.audit.deleted_at.is_none())
        .map(|x| (x.audit.created_at, execution(x)))
        .collect();
    jobs.extend(
        state
            .store
            .in_scope::<TrainingRun>(warden_domain::CREATED, &scope)?
            .iter()
            .filter(|r| mine(&r.owner.user_id) && r.audit.deleted_at.is_none())
            .map(|r| (r.audit.created_at, training(r))),
    );
    jobs.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    Ok(Json(
        jobs.into_iter()
            .skip(skip)
            .take(limit)
            .map(|(_, v)| v)
            .collect(),
    ))
}

pub(super) fn routes() -> Api {
    Api::new().get(
        "/api/myntrix/jobs/",
        "vareon: myntrix",
        "The caller's jobs: their executions and training runs, newest first (skip, limit)",
        list,
    )
}
