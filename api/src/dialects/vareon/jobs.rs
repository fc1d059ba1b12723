//! Vareon myntrix jobs (`GET /api/myntrix/jobs/`): a read-only view of
//! the caller's work (VAREON-NEURONEST.md): their executions (chain runs,
//! deployments' starts and stops, AIWM executions), training runs,
//! neuronest runtimes and process agents, newest first. The original read
//! a table nothing wrote.

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

/// The last lines of a log series, oldest first, as text.
fn last_lines(state: &AppState, series: &str, n: usize) -> Option<String> {
    let range = warden_storage::series::Range {
        limit: n,
        ..Default::default()
    };
    let mut points = state.store.points(series, range).ok()?;
    points.reverse();
    let lines: Vec<String> = points
        .iter()
        .filter_map(|p| {
            let v: Value = serde_json::from_slice(&p.value).ok()?;
            Some(format!(
                "{}: {}",
                v["type"].as_str().unwrap_or("info"),
                v["message"].as_str().unwrap_or_default()
            ))
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// Progress of work that has no steps: 0 while it runs, 100 once over.
fn done_or_not(status: &str) -> u32 {
    if matches!(
        status,
        "created" | "starting" | "running" | "stopping" | "restarting"
    ) {
        0
    } else {
        100
    }
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
    for d in state.runtime.runtimes.list(&p.owner())? {
        let status = warden_actors::runtime::status_of(&d);
        let def = warden_actors::runtime::RuntimeDef::of(&d).unwrap_or_default();
        jobs.push((
            d.audit.created_at,
            json!({
                "name": d.name,
                "type": "runtime",
                "status": status,
                "progress": done_or_not(&status),
                "created_at": iso(d.audit.created_at),
                "updated_at": iso(d.audit.updated_at),
                "logs": last_lines(&state, &warden_actors::deployment::logs_series(&d.id), 20),
                "details": {"kind": "runtime", "entity_id": d.id, "project_id": def.project_id,
                            "language": def.language, "url": d.endpoint},
                "id": d.id,
                "owner_id": d.owner.user_id,
            }),
        ));
    }
    for a in super::agents::all(&state, &p.org_id)? {
        let is_process = warden_actors::agents::command_of(&a.configuration)
            .ok()
            .flatten()
            .is_some();
        if !is_process || !mine(&a.owner.user_id) {
            continue;
        }
        let view = super::agents::view(&state, &a);
        let status = view["status"].as_str().unwrap_or("stopped").to_owned();
        jobs.push((
            a.audit.created_at,
            json!({
                "name": a.name,
                "type": "agent",
                "status": status,
                "progress": done_or_not(&status),
                "created_at": iso(a.audit.created_at),
                "updated_at": iso(a.audit.updated_at),
                "logs": last_lines(&state, &warden_actors::agents::logs_series(&a.id), 20),
                "details": {"kind": "agent", "entity_id": a.id, "pid": view["pid"],
                            "health": view["health"]},
                "id": a.id,
                "owner_id": a.owner.user_id,
            }),
        ));
    }
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
