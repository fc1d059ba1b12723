//! Vareon myntrix scheduled tasks (`/api/myntrix/tasks/*`): the core's
//! schedules (`warden_domain::schedule`), fired by the scheduler
//! (`warden_supervisors::Scheduler`). `schedule` is a five-field cron
//! expression (UTC); `action` `{type: "workflow", workflow_id, input?}`
//! runs a stored workflow. `run` (a placeholder in the original) starts
//! the action now; `history` lists the runs, newest first.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use warden_actors::execution::{ExecStatus, Execution};
use warden_domain::catalog;
use warden_domain::schedule::{Cron, Schedule};
use warden_identity::Principal;
use warden_storage::{new_uuid, now_millis};

use super::{SkipLimit, Vareon, VareonBody, VareonResult, writer};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Vareon>;

fn view(s: &Schedule) -> Value {
    json!({
        "name": s.name,
        "schedule": s.cron,
        "action": s.action_json(),
        "enabled": s.enabled,
        "created_at": iso(s.audit.created_at),
        "updated_at": iso(s.audit.updated_at),
        "id": s.id,
        "owner_id": s.owner.user_id,
    })
}

/// `TaskRunResponse`: one run of a schedule.
fn run_view(schedule: &str, x: &Execution) -> Value {
    let status = match x.status {
        ExecStatus::Failed | ExecStatus::Timeout => "failed",
        other => other.as_str(),
    };
    json!({
        "task_id": schedule,
        "start_time": x.started_at.map(iso),
        "end_time": x.completed_at.map(iso),
        "status": status,
        "logs": x.error.as_ref().map(|e| e.message.clone()),
        "id": x.id,
    })
}

fn unprocessable(message: String) -> ApiError<Vareon> {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

/// What a body sets; `None` leaves a field as it is.
#[derive(Clone)]
struct Input {
    name: Option<String>,
    cron: Option<String>,
    action: Option<Value>,
    enabled: Option<bool>,
}

fn read(body: &Map<String, Value>, create: bool) -> VareonResult<Input> {
    let mut problems = Vec::new();
    let name = match body.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        None | Some(Value::Null) if !create => None,
        _ => {
            problems.push("name: a non-empty string is required".to_owned());
            None
        }
    };
    let cron = match body.get("schedule") {
        Some(Value::String(s)) => match Cron::parse(s) {
            Ok(_) => Some(s.trim().to_owned()),
            Err(e) => {
                problems.push(format!("schedule: {e}"));
                None
            }
        },
        None | Some(Value::Null) if !create => None,
        _ => {
            problems.push("schedule: a cron expression (five fields) is required".to_owned());
            None
        }
    };
    let action = match body.get("action") {
        Some(v @ Value::Object(_)) => Some(v.clone()),
        None | Some(Value::Null) if !create => None,
        None | Some(Value::Null) => Some(json!({})),
        Some(_) => {
            problems.push("action: an object is required".to_owned());
            None
        }
    };
    let enabled = match body.get("enabled") {
        Some(Value::Bool(b)) => Some(*b),
        None | Some(Value::Null) => create.then_some(true),
        Some(_) => {
            problems.push("enabled: a boolean is required".to_owned());
            None
        }
    };
    if !problems.is_empty() {
        return Err(unprocessable(problems.join("; ")));
    }
    Ok(Input {
        name,
        cron,
        action,
        enabled,
    })
}

fn apply(s: &mut Schedule, input: Input) -> Result<(), warden_domain::DomainError> {
    if let Some(n) = input.name {
        s.name = n;
    }
    if let Some(a) = input.action {
        s.action = a.to_string();
    }
    let enabling = input.enabled == Some(true) && !s.enabled;
    if let Some(e) = input.enabled {
        s.enabled = e;
    }
    match input.cron {
        Some(c) => s.set_cron(&c, now_millis()),
        // Occurrences passed while disabled are not owed: from now on.
        None if enabling => {
            s.rearm(now_millis());
            Ok(())
        }
        None => Ok(()),
    }
}

fn find(state: &AppState, p: &Principal, id: &str) -> VareonResult<Schedule> {
    Ok(warden_domain::find_in_org(
        &state.store,
        &p.org_id,
        id,
        "",
        "Scheduled Task",
    )?)
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): VareonBody,
) -> VareonResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let input = read(&body, true)?;
    let mut s = Schedule {
        id: new_uuid(),
        name: String::new(),
        cron: String::new(),
        action: "{}".into(),
        enabled: true,
        next_fire: None,
        last_fire: None,
        runs: Vec::new(),
        owner: p.owner(),
        audit: warden_domain::Audit::new(&p.user_id),
    };
    apply(&mut s, input)?;
    let s = catalog::create(&state.store, s).await?;
    state.runtime.scheduler.changed();
    Ok((StatusCode::CREATED, Json(view(&s))))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<SkipLimit>,
) -> VareonResult<Json<Vec<Value>>> {
    let (skip, limit) = q.parse()?;
    let page = crate::paging::Window::skip(skip, limit).read::<Schedule>(
        &state.store,
        warden_domain::CREATED,
        &warden_domain::org_scope(Some(&p.org_id)),
        false,
    )?;
    Ok(Json(page.items.iter().map(|(_, s)| view(s)).collect()))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    Ok(Json(view(&find(&state, &p, &id)?)))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    writer(&p)?;
    let s = find(&state, &p, &id)?;
    let input = read(&body, false)?;
    let s =
        catalog::update::<Schedule>(&state.store, &s.id, &p.user_id, |s| apply(s, input.clone()))
            .await?;
    state.runtime.scheduler.changed();
    Ok(Json(view(&s)))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<StatusCode> {
    writer(&p)?;
    let s = find(&state, &p, &id)?;
    catalog::soft_delete::<Schedule>(&state.store, &s.id, &p.user_id).await?;
    state.runtime.scheduler.changed();
    Ok(StatusCode::NO_CONTENT)
}

/// Runs the action now (a placeholder in the original): the run at once.
async fn run(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    writer(&p)?;
    let s = find(&state, &p, &id)?;
    let x = state.runtime.scheduler.run_now(&s).await?;
    Ok(Json(run_view(&s.id, &x)))
}

async fn history(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    Query(q): Query<SkipLimit>,
) -> VareonResult<Json<Vec<Value>>> {
    let (skip, limit) = q.parse()?;
    let s = find(&state, &p, &id)?;
    let mut runs = Vec::new();
    for run in s.runs.iter().rev().skip(skip).take(limit) {
        if let Some(x) = state.store.get::<Execution>(run)? {
            runs.push(run_view(&s.id, &x));
        }
    }
    Ok(Json(runs))
}

pub(super) fn routes() -> Api {
    let t = "vareon: myntrix scheduled tasks";
    Api::new()
        .post(
            "/api/myntrix/tasks/",
            t,
            "Create a scheduled task {name, schedule (cron, UTC), action: {type: workflow, workflow_id}, enabled}",
            create,
        )
        .get(
            "/api/myntrix/tasks/",
            t,
            "The organisation's scheduled tasks (skip, limit)",
            list,
        )
        .get(
            "/api/myntrix/tasks/history/{task_id}",
            t,
            "A scheduled task's runs, newest first (skip, limit)",
            history,
        )
        .get("/api/myntrix/tasks/{task_id}", t, "A scheduled task", get)
        .put(
            "/api/myntrix/tasks/{task_id}",
            t,
            "Change a scheduled task",
            update,
        )
        .delete(
            "/api/myntrix/tasks/{task_id}",
            t,
            "Delete a scheduled task",
            delete,
        )
        .post(
            "/api/myntrix/tasks/{task_id}/run",
            t,
            "Run a scheduled task's action now",
            run,
        )
}
