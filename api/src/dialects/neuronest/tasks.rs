//! NeuroNest orchestration tasks (`/api/orchestration/tasks*`,
//! WORKFLOWS.md §1 rule 6): one-step runs, each an execution (AIWM's
//! `/api/executions` lists them, category `orchestration`). A task answers
//! `created` at once and runs in the background: `text_generation` asks
//! the LLM (the agent's configured model, else the task model) with
//! `input_data.prompt` (result `{text}`);
//! `noop` and `echo` give back `input_data`; `hook`, `function` and
//! `chain` call the target named in the body's field of that name; a
//! contenox handler name runs that handler on the prompt (or
//! `input_data`). Any other `task_type` is a failed task saying so.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use warden_actors::execution::{CATEGORY_CREATED, ExecStatus, Execution, dag, value_scope};
use warden_identity::Principal;
use warden_supervisors::{ChainRequest, RunLabel};

use super::Neuronest;
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::vareon::writer;
use crate::dialects::{JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Neuronest>;
type Result<T> = std::result::Result<T, ApiError<Neuronest>>;

const CATEGORY: &str = "orchestration";
const KIND: &str = "neuronest-task";

/// How neuronest's runs are filed (its tasks are executions of this
/// category, whatever `kind` started them).
pub(super) fn label(kind: &'static str) -> RunLabel {
    RunLabel {
        category: CATEGORY,
        kind,
        extra: String::new(),
        key: None,
        parent: None,
    }
}

fn status(x: &Execution) -> &'static str {
    match x.status {
        ExecStatus::Pending => "created",
        ExecStatus::Running => "running",
        ExecStatus::Completed => "completed",
        ExecStatus::Failed | ExecStatus::Timeout => "failed",
        ExecStatus::Cancelled => "cancelled",
    }
}

/// A run as a neuronest task: a one-step task's output (`{text}` for
/// `text_generation`), a workflow run's result (a chain's output, a
/// DAG's last step's result).
pub(super) fn view(x: &Execution) -> Value {
    let fields: Value = serde_json::from_str(&x.extra).unwrap_or_else(|_| json!({}));
    let output = x.chain.as_ref().map(|c| &c.run.output);
    let result = match (x.status, output) {
        (ExecStatus::Completed, Some(out)) => {
            dag::result_of(fields["task_type"].as_str().unwrap_or_default(), out)
        }
        (ExecStatus::Completed, None) => x
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or(Value::Null),
        _ => Value::Null,
    };
    json!({
        "id": x.execution_id,
        "user_id": x.owner.user_id,
        "task_type": fields["task_type"],
        "input_data": fields["input_data"],
        "context": fields["context"],
        "tools": fields["tools"],
        "memory_id": fields["memory_id"],
        "agent_id": fields["agent_id"],
        "status": status(x),
        "result": result,
        "error": x.error.as_ref().map(|e| e.message.clone()),
        "created_at": iso(x.audit.created_at),
        "updated_at": iso(x.audit.updated_at),
    })
}

/// The one-task chain a task type runs, and its input (the kinds of
/// workflow steps, with their own fields: `hook`, `function`, `chain`);
/// an LLM task takes the agent's configured model and temperature
/// (`execute_config`).
fn program(
    task_type: &str,
    input_data: &Value,
    extra: &Map<String, Value>,
) -> std::result::Result<(Value, &'static str, Value), String> {
    let (task, kind, input) = dag::step_task(task_type, input_data, extra)?;
    Ok((json!({ "tasks": [task] }), kind, input))
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonBody<Neuronest>,
) -> Result<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let mut problems = Vec::new();
    let task_type = match body.get("task_type") {
        Some(Value::String(t)) if !t.trim().is_empty() => t.clone(),
        _ => {
            problems.push("task_type must be a non-empty string".to_owned());
            String::new()
        }
    };
    let object = |k: &str, problems: &mut Vec<String>| match body.get(k) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            problems.push(format!("{k} must be an object"));
            Value::Null
        }
    };
    let input_data = object("input_data", &mut problems);
    let context = object("context", &mut problems);
    let tools = match body.get("tools") {
        None | Some(Value::Null) => json!([]),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => json!(a),
        Some(_) => {
            problems.push("tools must be a list of strings".into());
            Value::Null
        }
    };
    let id_of = |k: &str, problems: &mut Vec<String>| match body.get(k) {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) => json!(s),
        Some(_) => {
            problems.push(format!("{k} must be a string"));
            Value::Null
        }
    };
    let memory_id = id_of("memory_id", &mut problems);
    let agent_id = id_of("agent_id", &mut problems);
    // The agent's configuration picks the model (else the task model).
    let mut execute_config = json!({});
    if let Some(id) = agent_id.as_str() {
        match super::agents::find(&state, &p, id) {
            Ok(agent) => {
                let c: Value = serde_json::from_str(&agent.configuration).unwrap_or_default();
                for k in ["model", "temperature"] {
                    if !c[k].is_null() {
                        execute_config[k] = c[k].clone();
                    }
                }
            }
            Err(_) => problems.push(format!("agent_id: agent {id} not found")),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    let fields = json!({"task_type": task_type, "input_data": input_data, "context": context,
        "tools": tools, "memory_id": memory_id, "agent_id": agent_id});
    let executions = &state.runtime.executions;
    let mut extra: Map<String, Value> = ["hook", "function", "chain"]
        .into_iter()
        .filter_map(|k| Some((k.to_owned(), body.get(k)?.clone())))
        .collect();
    extra.insert("execute_config".into(), execute_config);
    let x = match program(&task_type, &input_data, &extra) {
        Ok((definition, kind, input)) => {
            executions
                .start_chain(ChainRequest {
                    owner: p.owner(),
                    by: &p.user_id,
                    chain_id: &task_type,
                    definition: &definition,
                    input_type: kind,
                    input: &input,
                    label: RunLabel {
                        extra: fields.to_string(),
                        ..label(KIND)
                    },
                })
                .await?
        }
        Err(reason) => {
            executions
                .failed_run(
                    p.owner(),
                    &p.user_id,
                    &task_type,
                    &reason,
                    RunLabel {
                        extra: fields.to_string(),
                        ..label(KIND)
                    },
                )
                .await?
        }
    };
    let mut v = view(&x);
    // Answered as created: the task runs in the background.
    if x.status == ExecStatus::Running || x.status == ExecStatus::Pending {
        v["status"] = json!("created");
    }
    Ok((StatusCode::CREATED, Json(v)))
}

/// A task of the caller's organisation by its id.
fn find(state: &AppState, p: &Principal, id: &str) -> Result<Execution> {
    state
        .runtime
        .executions
        .resolve(&p.org_id, id)?
        .filter(|x| x.category == CATEGORY)
        .ok_or_else(|| ApiError::not_found("Task", id))
}

#[derive(serde::Deserialize)]
struct Filters {
    task_type: Option<String>,
    status: Option<String>,
    agent_id: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<Filters>,
) -> Result<Json<Vec<Value>>> {
    let scope = value_scope(Some(&p.org_id), CATEGORY);
    let mut all = state
        .store
        .in_scope::<Execution>(CATEGORY_CREATED, &scope)?;
    all.reverse();
    Ok(Json(
        all.iter()
            .filter(|x| x.audit.deleted_at.is_none())
            .map(view)
            .filter(|v| {
                q.task_type
                    .as_ref()
                    .is_none_or(|t| v["task_type"] == t.as_str())
                    && q.status.as_ref().is_none_or(|s| v["status"] == s.as_str())
                    && q.agent_id
                        .as_ref()
                        .is_none_or(|a| v["agent_id"] == a.as_str())
            })
            .collect(),
    ))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    Ok(Json(view(&find(&state, &p, &id)?)))
}

async fn cancel(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    writer(&p)?;
    let x = find(&state, &p, &id)?;
    if x.status.is_terminal() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Task is already {}", status(&x)),
        ));
    }
    state
        .runtime
        .executions
        .cancel(&x.id, Some("cancelled by the user".into()))
        .await?;
    Ok(Json(json!({"message": "Task cancelled successfully"})))
}

/// Cancels the task if it still runs, then deletes it.
async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    writer(&p)?;
    let x = find(&state, &p, &id)?;
    let executions = &state.runtime.executions;
    if !x.status.is_terminal() {
        executions
            .cancel(&x.id, Some("the task was deleted".into()))
            .await?;
    }
    executions.delete(&x.id, &p.user_id).await?;
    Ok(Json(json!({"message": "Task deleted successfully"})))
}

pub(super) fn routes() -> Api {
    let t = "neuronest: orchestration tasks";
    Api::new()
        .post(
            "/api/orchestration/tasks",
            t,
            "Create a task {task_type, input_data, context, tools, memory_id, agent_id}: created, then run",
            create,
        )
        .get(
            "/api/orchestration/tasks",
            t,
            "The organisation's tasks, newest first (task_type, status, agent_id)",
            list,
        )
        .get("/api/orchestration/tasks/{task_id}", t, "A task", get)
        .delete(
            "/api/orchestration/tasks/{task_id}",
            t,
            "Cancel (if running) and delete a task",
            delete,
        )
        .post(
            "/api/orchestration/tasks/{task_id}/cancel",
            t,
            "Cancel a running task",
            cancel,
        )
}
