//! Vareon neosyntis workflows (`/api/neosyntis/workflows/*`): the core's
//! workflows (WORKFLOWS.md §1), contenox's task chains among them. `steps`
//! is a JSON string: a list of contenox tasks is a chain; a list of step
//! strings runs as one (`hook:<name>/<tool>`, or a labelled step);
//! anything else is kept as sent, and a trigger of it is a failed run
//! saying why. `trigger` starts a run at once (`running`); `status` and
//! the views show the latest run's status (the written one until then).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_actors::execution::{ExecStatus, Execution};
use warden_domain::catalog;
use warden_domain::workflow::{self, Workflow};
use warden_identity::Principal;
use warden_supervisors::RunLabel;

use super::{SkipLimit, Vareon, VareonBody, VareonResult, writer};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Vareon>;

pub(super) fn status(state: &AppState, w: &Workflow) -> String {
    let latest = w
        .last_execution
        .as_deref()
        .and_then(|id| state.store.get::<Execution>(id).ok().flatten());
    match latest.map(|x| x.status) {
        Some(ExecStatus::Timeout | ExecStatus::Failed) => "failed".into(),
        Some(s) => s.as_str().into(),
        None if w.status.is_empty() => "created".into(),
        None => w.status.clone(),
    }
}

fn view(state: &AppState, w: &Workflow, status_override: Option<&str>) -> Value {
    json!({
        "name": w.name,
        "description": (!w.description.is_empty()).then_some(&w.description),
        "status": status_override.map_or_else(|| status(state, w), str::to_owned),
        "steps": w.steps_text(),
        "created_at": iso(w.audit.created_at),
        "updated_at": iso(w.audit.updated_at),
        "id": w.id,
        "owner_id": w.owner.user_id,
    })
}

/// A workflow of the caller's organisation by its id (or a chain's key).
pub(crate) fn find(state: &AppState, p: &Principal, id: &str) -> VareonResult<Workflow> {
    match warden_domain::find_in_org(&state.store, &p.org_id, id, "", "Workflow") {
        Ok(w) => Ok(w),
        Err(warden_domain::DomainError::NotFound { .. }) => {
            workflow::by_key(&state.store, &p.org_id, id)?
                .ok_or_else(|| ApiError::not_found("Workflow", id))
        }
        Err(e) => Err(e.into()),
    }
}

struct Input {
    name: Option<String>,
    description: Option<String>,
    status: Option<String>,
    steps: Option<String>,
}

fn read(body: serde_json::Map<String, Value>, create: bool) -> VareonResult<Input> {
    let mut f = Fields::new(body);
    f.drop(&["created_at", "updated_at", "owner_id"]);
    let input = Input {
        name: f.string("name", create),
        description: f.string_max("description", false, 4096),
        status: f.string("status", false),
        steps: f.string_max("steps", false, workflow::MAX_PROGRAM_BYTES),
    };
    f.finish_as::<Vareon>()?;
    Ok(input)
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): VareonBody,
) -> VareonResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let input = read(body, true)?;
    let steps = input.steps.unwrap_or_else(|| "[]".into());
    let mut w = Workflow::new(
        String::new(),
        input.description.unwrap_or_default(),
        workflow::program_of_steps(&steps),
        p.owner(),
        &p.user_id,
    );
    // Its id is its key: contenox finds it as the chain of that id.
    w.key.clone_from(&w.id);
    w.name = input.name.unwrap_or_default();
    w.status = input.status.unwrap_or_default();
    let w = catalog::create(&state.store, w).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &w, None))))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<SkipLimit>,
) -> VareonResult<Json<Vec<Value>>> {
    let (skip, limit) = q.parse()?;
    let page = crate::paging::Window::skip(skip, limit).read::<Workflow>(
        &state.store,
        warden_domain::CREATED,
        &warden_domain::org_scope(Some(&p.org_id)),
        true,
    )?;
    Ok(Json(
        page.items
            .iter()
            .map(|(_, w)| view(&state, w, None))
            .collect(),
    ))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    Ok(Json(view(&state, &find(&state, &p, &id)?, None)))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    writer(&p)?;
    let w = find(&state, &p, &id)?;
    let input = read(body, false)?;
    let w = catalog::update::<Workflow>(&state.store, &w.id, &p.user_id, |w| {
        warden_domain::set(&mut w.name, input.name.clone());
        warden_domain::set(&mut w.description, input.description.clone());
        warden_domain::set(&mut w.status, input.status.clone());
        if let Some(steps) = &input.steps {
            w.program = workflow::program_of_steps(steps);
        }
        Ok(())
    })
    .await?;
    Ok(Json(view(&state, &w, None)))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<StatusCode> {
    writer(&p)?;
    let w = find(&state, &p, &id)?;
    catalog::soft_delete::<Workflow>(&state.store, &w.id, &p.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts a run of the workflow at once (a placeholder in the original):
/// `running`; a program that does not run is a failed run saying why.
async fn trigger(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    writer(&p)?;
    let w = find(&state, &p, &id)?;
    let x = state
        .runtime
        .executions
        .start_workflow(p.owner(), &p.user_id, &w, &Value::Null, RunLabel::chain())
        .await?;
    // A program that does not read is a failed run; any other answers
    // `running`, as the original's trigger does.
    let answer = if x
        .error
        .as_ref()
        .is_some_and(|e| e.code == "PROGRAM_INVALID")
    {
        "failed"
    } else {
        "running"
    };
    let w = find(&state, &p, &w.id)?;
    Ok(Json(view(&state, &w, Some(answer))))
}

async fn status_of(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    Ok(Json(view(&state, &find(&state, &p, &id)?, None)))
}

pub(super) fn routes() -> Api {
    let t = "vareon: neosyntis workflows";
    Api::new()
        .post(
            "/api/neosyntis/workflows/",
            t,
            "Create a workflow {name, description, status, steps (a JSON string)}",
            create,
        )
        .get(
            "/api/neosyntis/workflows/",
            t,
            "The organisation's workflows, contenox's chains included (skip, limit)",
            list,
        )
        .get(
            "/api/neosyntis/workflows/{workflow_id}",
            t,
            "A workflow",
            get,
        )
        .put(
            "/api/neosyntis/workflows/{workflow_id}",
            t,
            "Change a workflow",
            update,
        )
        .delete(
            "/api/neosyntis/workflows/{workflow_id}",
            t,
            "Delete a workflow",
            delete,
        )
        .post(
            "/api/neosyntis/workflows/{workflow_id}/trigger",
            t,
            "Start a run of the workflow (at once: running)",
            trigger,
        )
        .get(
            "/api/neosyntis/workflows/{workflow_id}/status",
            t,
            "The workflow with its latest run's status",
            status_of,
        )
}
