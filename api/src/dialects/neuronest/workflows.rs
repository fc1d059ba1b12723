//! NeuroNest orchestration workflows (`/api/orchestration/workflows*`):
//! the core's workflows (WORKFLOWS.md §1), DAGs of steps that name the
//! steps they `depends_on`. Every workflow of the organisation is listed,
//! contenox's chains among them (their tasks shown as steps, each
//! depending on the one before). `execute` starts a run at once and
//! answers it as a task (`task_type: "workflow"`, `context.workflow_id`),
//! which `/api/orchestration/tasks/{id}` then follows; `status` and
//! `result` are the latest run's.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use warden_actors::execution::{ExecStatus, Execution};
use warden_domain::workflow::{self, Program, Workflow};
use warden_domain::{catalog, dag};
use warden_supervisors::RunLabel;

use super::{Neuronest, tasks};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::vareon::{SkipLimit, workflows::find, writer};
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Neuronest>;
type Result<T> = std::result::Result<T, ApiError<Neuronest>>;

fn view(state: &AppState, w: &Workflow) -> Value {
    let latest = w
        .last_execution
        .as_deref()
        .and_then(|id| state.store.get::<Execution>(id).ok().flatten())
        .map(|x| tasks::view(&x));
    let (status, result) = match &latest {
        Some(t) => (t["status"].clone(), t["result"].clone()),
        None => (json!("created"), Value::Null),
    };
    json!({
        "id": w.id,
        "user_id": w.owner.user_id,
        "name": w.name,
        "description": (!w.description.is_empty()).then_some(&w.description),
        "steps": w.dag_steps(),
        "status": status,
        "result": result,
        "created_at": iso(w.audit.created_at),
        "updated_at": iso(w.audit.updated_at),
    })
}

struct Input {
    name: Option<String>,
    description: Option<String>,
    /// The steps' JSON text, checked.
    steps: Option<String>,
}

fn read(body: Map<String, Value>, create: bool) -> Result<Input> {
    let mut f = Fields::new(body);
    f.drop(&[
        "id",
        "user_id",
        "status",
        "result",
        "created_at",
        "updated_at",
    ]);
    let name = f.string("name", create);
    let description = f.string_max("description", false, 4096);
    let steps = match f.json("steps", false) {
        None if create => {
            f.error("steps must be a list of steps".into());
            None
        }
        None => None,
        Some(text) if text.len() > workflow::MAX_PROGRAM_BYTES => {
            f.error(format!(
                "steps must be at most {} KiB",
                workflow::MAX_PROGRAM_BYTES / 1024
            ));
            None
        }
        Some(text) => {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            match dag::parse(&v) {
                Ok(_) => Some(text),
                Err(problems) => {
                    for p in problems {
                        f.error(p);
                    }
                    None
                }
            }
        }
    };
    f.finish_as::<Neuronest>()?;
    Ok(Input {
        name,
        description,
        steps,
    })
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonBody<Neuronest>,
) -> Result<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let input = read(body, true)?;
    let mut w = Workflow::new(
        String::new(),
        input.description.unwrap_or_default(),
        Program::Dag(input.steps.unwrap_or_default()),
        p.owner(),
        &p.user_id,
    );
    // Its id is its key: contenox finds it as the chain of that id.
    w.key.clone_from(&w.id);
    w.name = input.name.unwrap_or_default();
    let w = catalog::create(&state.store, w).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &w))))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<SkipLimit>,
) -> Result<Json<Vec<Value>>> {
    let (skip, limit) = q.parse()?;
    let page = crate::paging::Window::skip(skip, limit).read::<Workflow>(
        &state.store,
        warden_domain::CREATED,
        &warden_domain::org_scope(Some(&p.org_id)),
        true,
    )?;
    Ok(Json(
        page.items.iter().map(|(_, w)| view(&state, w)).collect(),
    ))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    Ok(Json(view(&state, &find(&state, &p, &id)?)))
}

/// Changes a workflow's name, description or steps; new steps make it a
/// DAG workflow (a chain's included).
async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): JsonBody<Neuronest>,
) -> Result<Json<Value>> {
    writer(&p)?;
    let w = find(&state, &p, &id)?;
    let input = read(body, false)?;
    let w = catalog::update::<Workflow>(&state.store, &w.id, &p.user_id, |w| {
        warden_domain::set(&mut w.name, input.name.clone());
        warden_domain::set(&mut w.description, input.description.clone());
        if let Some(steps) = &input.steps {
            w.program = Program::Dag(steps.clone());
        }
        Ok(())
    })
    .await?;
    Ok(Json(view(&state, &w)))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    writer(&p)?;
    let w = find(&state, &p, &id)?;
    catalog::soft_delete::<Workflow>(&state.store, &w.id, &p.user_id).await?;
    Ok(Json(json!({"message": "Workflow deleted successfully"})))
}

/// Starts a run with the body as its variables and answers it as a task,
/// `created`; the run goes on in the background.
async fn execute(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(vars, _): JsonBody<Neuronest>,
) -> Result<Json<Value>> {
    writer(&p)?;
    let w = find(&state, &p, &id)?;
    let vars = Value::Object(vars);
    let fields = json!({"task_type": "workflow", "input_data": vars,
        "context": {"workflow_id": w.id}, "tools": null, "memory_id": null, "agent_id": null});
    let label = RunLabel {
        extra: fields.to_string(),
        ..tasks::label("neuronest-workflow")
    };
    let x = state
        .runtime
        .executions
        .start_workflow(p.owner(), &p.user_id, &w, &vars, label)
        .await?;
    let mut v = tasks::view(&x);
    if matches!(x.status, ExecStatus::Running | ExecStatus::Pending) {
        v["status"] = json!("created");
    }
    Ok(Json(v))
}

pub(super) fn routes() -> Api {
    let t = "neuronest: orchestration workflows";
    Api::new()
        .post(
            "/api/orchestration/workflows",
            t,
            "Create a workflow {name, description, steps: [{id, name, task_type, input_data, depends_on}]}",
            create,
        )
        .get(
            "/api/orchestration/workflows",
            t,
            "The organisation's workflows, contenox's chains included (skip, limit)",
            list,
        )
        .get(
            "/api/orchestration/workflows/{workflow_id}",
            t,
            "A workflow with its latest run's status and result",
            get,
        )
        .put(
            "/api/orchestration/workflows/{workflow_id}",
            t,
            "Change a workflow",
            update,
        )
        .delete(
            "/api/orchestration/workflows/{workflow_id}",
            t,
            "Delete a workflow",
            delete,
        )
        .post(
            "/api/orchestration/workflows/{workflow_id}/execute",
            t,
            "Run the workflow with the body as its variables: a task, created at once",
            execute,
        )
}
