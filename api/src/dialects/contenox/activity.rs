//! Contenox's activity views (enterprise routes whose shapes the
//! reference leaves undocumented; WORKFLOWS.md §1): Warden-defined views
//! over the core. `/activity/requests` are the runs requests wait on
//! (`/tasks`, `/openai/{chain}/...`), found by the request's correlation
//! id (`x-correlation-id`), readable after a restart; `/operations` the
//! function runs; `/alerts` what failed.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_actors::execution::{BY_REQUEST, ExecStatus, Execution, REQUESTS, value_scope};
use warden_domain::function::{Invocation, InvocationStatus};

use super::{Contenox, ContenoxResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::iso;
use crate::error::ApiError;
use crate::openapi::Api;
use crate::paging::Window;

type Caller = CurrentUser<Contenox>;

/// A request-bound run.
fn request_view(x: &Execution) -> Value {
    let chain = x.chain.as_ref();
    json!({
        "id": x.request_id(),
        "executionId": x.id,
        "chainId": chain.map(|c| c.chain_id.clone()),
        "status": x.status.as_str(),
        "currentTask": chain.and_then(|c| c.run.current.clone()),
        "error": x.error.as_ref().map(|e| e.message.clone()),
        "createdAt": iso(x.audit.created_at),
        "startedAt": x.started_at.map(iso),
        "completedAt": x.completed_at.map(iso),
    })
}

/// Up to `limit` of an organisation's executions in one scope of an
/// ordered index, newest first.
fn newest(
    state: &AppState,
    index: &str,
    scope: &str,
    limit: usize,
) -> ContenoxResult<Vec<Execution>> {
    let page = Window::cursor(None, limit).read::<Execution>(&state.store, index, scope, true)?;
    Ok(page
        .items
        .into_iter()
        .map(|(_, x)| x)
        .filter(|x| x.audit.deleted_at.is_none())
        .collect())
}

fn invocation_view(i: &Invocation) -> Value {
    json!({
        "id": i.key.replace('\u{1f}', "/"),
        "operation": "function",
        "trigger": i.trigger,
        "function": i.function,
        "eventNid": i.event_nid,
        "eventType": i.event_type,
        "causationDepth": i.depth,
        "attempt": i.attempt,
        "status": i.status.as_str(),
        "error": i.error,
        "result": serde_json::from_str::<Value>(&i.result).unwrap_or(Value::Null),
        "logs": i.logs,
        "emittedEvents": i.emitted,
        "createdAt": iso(i.created_at),
        "finishedAt": i.finished_at.map(iso),
        "durationMs": i.duration_ms,
    })
}

#[derive(serde::Deserialize)]
pub(super) struct ActivityQuery {
    limit: Option<String>,
}

fn invocations(state: &AppState, org: &str, limit: usize) -> ContenoxResult<Vec<Invocation>> {
    Ok(state.runtime.automation.invocations(org, limit)?)
}

/// Function runs, newest first: each trigger firing on an event, with
/// its status, error, result, log and the events it sent.
async fn operations(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<ActivityQuery>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let (limit, _) = super::page_params(q.limit.as_deref(), "cursor", None)?;
    let items = invocations(&state, &p.org_id, limit)?;
    Ok(Json(items.iter().map(invocation_view).collect()))
}

/// The runs of one function (`/activity/operations/function/{name}`) or
/// of one trigger (`.../trigger/{name}`), newest first.
async fn operations_of(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path((op, subject)): Path<(String, String)>,
    Query(q): Query<ActivityQuery>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let keep = |i: &Invocation| match op.as_str() {
        "function" => i.function == subject,
        "trigger" => i.trigger == subject,
        _ => false,
    };
    if !matches!(op.as_str(), "function" | "trigger") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("operation {op} is not one Warden records (function, trigger)"),
        ));
    }
    let (limit, _) = super::page_params(q.limit.as_deref(), "cursor", None)?;
    let items = invocations(&state, &p.org_id, limit)?;
    Ok(Json(
        items
            .iter()
            .filter(|i| keep(i))
            .map(invocation_view)
            .collect(),
    ))
}

async fn requests(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<ActivityQuery>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let (limit, _) = super::page_params(q.limit.as_deref(), "cursor", None)?;
    let runs = newest(&state, REQUESTS, &p.org_id, limit)?;
    Ok(Json(runs.iter().map(request_view).collect()))
}

/// The latest run of a request, by its correlation id.
fn request_run(state: &AppState, org: &str, id: &str) -> ContenoxResult<Execution> {
    newest(state, BY_REQUEST, &value_scope(Some(org), id), 1)?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no request {id}")))
}

async fn request(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    Ok(Json(request_view(&request_run(&state, &p.org_id, &id)?)))
}

/// A request's run as `/tasks` answers it (`{output, outputType, state}`),
/// whether it is still going, ended, or resumed after a restart.
async fn request_state(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    let x = request_run(&state, &p.org_id, &id)?;
    let Some(chain) = &x.chain else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("request {id} ran no chain"),
        ));
    };
    let done = x.status == ExecStatus::Completed;
    Ok(Json(json!({
        "id": id,
        "executionId": x.id,
        "status": x.status.as_str(),
        "error": x.error.as_ref().map(|e| e.message.clone()),
        "output": done.then(|| chain.run.output.json()),
        "outputType": done.then(|| chain.run.output.kind.clone()),
        "state": chain.run.state.iter().map(|u| u.view()).collect::<Vec<_>>(),
    })))
}

/// Request-bound runs that have not ended, newest first.
async fn stateful(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<ActivityQuery>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let (limit, _) = super::page_params(q.limit.as_deref(), "cursor", None)?;
    let runs = newest(&state, REQUESTS, &p.org_id, 1000)?;
    Ok(Json(
        runs.iter()
            .filter(|x| !x.status.is_terminal())
            .take(limit)
            .map(request_view)
            .collect(),
    ))
}

/// What failed lately, newest first: request runs and function runs.
async fn alerts(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<ActivityQuery>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let (limit, _) = super::page_params(q.limit.as_deref(), "cursor", None)?;
    let mut out: Vec<(i64, Value)> = newest(&state, REQUESTS, &p.org_id, 1000)?
        .iter()
        .filter(|x| matches!(x.status, ExecStatus::Failed | ExecStatus::Timeout))
        .map(|x| {
            (
                x.completed_at.unwrap_or(x.audit.updated_at),
                json!({"kind": "request", "subject": x.request_id(), "executionId": x.id,
                    "message": x.error.as_ref().map(|e| e.message.clone()),
                    "at": iso(x.completed_at.unwrap_or(x.audit.updated_at))}),
            )
        })
        .collect();
    out.extend(
        invocations(&state, &p.org_id, 1000)?
            .iter()
            .filter(|i| i.status == InvocationStatus::Failed)
            .map(|i| {
                let at = i.finished_at.unwrap_or(i.created_at);
                (
                    at,
                    json!({"kind": "function", "subject": i.function, "trigger": i.trigger,
                        "eventNid": i.event_nid, "message": i.error, "at": iso(at)}),
                )
            }),
    );
    out.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    Ok(Json(out.into_iter().take(limit).map(|(_, v)| v).collect()))
}

pub(super) fn routes() -> Api {
    let t = "contenox: activity";
    Api::new()
        .get(
            "/activity/requests",
            t,
            "Runs requests waited on (/tasks, /openai/...), newest first (limit)",
            requests,
        )
        .get(
            "/activity/requests/{id}",
            t,
            "The run of a request, by its correlation id",
            request,
        )
        .get(
            "/activity/requests/{id}/state",
            t,
            "A request's run as /tasks answers it: output, outputType, state units",
            request_state,
        )
        .get(
            "/activity/stateful-requests",
            t,
            "Request runs that have not ended (limit)",
            stateful,
        )
        .get(
            "/activity/alerts",
            t,
            "What failed lately: request runs and function runs (limit)",
            alerts,
        )
        .get(
            "/activity/operations",
            t,
            "Function runs, newest first (limit)",
            operations,
        )
        .get(
            "/activity/operations/{op}/{subject}",
            t,
            "The runs of one function or trigger (op: function | trigger)",
            operations_of,
        )
}
