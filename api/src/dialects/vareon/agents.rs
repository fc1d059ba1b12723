//! Vareon myntrix agents (`/api/myntrix/agents/*`, VAREON-NEURONEST.md
//! §2, §3B): the core agents (AIWM's `/api/agents`, neuronest's
//! orchestration agents) as myntrix shows them. An agent whose
//! `configuration.command` is an argv array is a process agent: `start`
//! runs it as a supervised, confined process (restarted when it dies, up
//! to the restart limit, then `failed`); any other is a logical (LLM)
//! agent that `start` and `stop` switch active and inactive.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use warden_actors::agents::{command_of, cwd_of};
use warden_domain::{Agent, AgentInput, CREATED, catalog, org_scope};
use warden_identity::Principal;

use super::{SkipLimit, Vareon, VareonBody, VareonResult, writer};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Vareon>;

/// The desired states a body's `status` may name that mean "run it".
const RUNNING: [&str; 4] = ["running", "online", "active", "started"];

/// A logical agent runs while AIWM calls it active (or busy).
fn logical_status(a: &Agent) -> &'static str {
    match a.status.as_str() {
        "active" | "busy" => "running",
        _ => "stopped",
    }
}

/// An agent as myntrix shows it: `type` is its role; status, health and
/// last run are its process's when it has one.
pub(super) fn view(state: &AppState, a: &Agent) -> Value {
    let process = state.runtime.agents.process(&a.id).ok().flatten();
    let is_process = command_of(&a.configuration).ok().flatten().is_some();
    let now = warden_storage::now_millis();
    let (status, health, last_run) = match (&process, is_process) {
        (Some(p), true) => (p.state.as_str(), p.health(now), p.last_run),
        (None, true) => ("stopped", 100, None),
        _ => (logical_status(a), 100, a.last_task),
    };
    let mut v = json!({
        "id": a.id,
        "owner_id": a.owner.user_id,
        "name": a.name,
        "type": a.role,
        "status": status,
        "health": health,
        "last_run": last_run.map(iso),
        "configuration": serde_json::from_str::<Value>(&a.configuration)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({})),
    });
    if let Some(p) = process.filter(|_| is_process) {
        v["pid"] = json!(p.pid);
        if let Some(f) = &p.failure {
            v["failure"] = json!(f);
        }
    }
    v
}

/// The organisation's live agents, oldest first.
pub(super) fn all(state: &AppState, org: &str) -> VareonResult<Vec<Agent>> {
    Ok(state
        .store
        .in_scope::<Agent>(CREATED, &org_scope(Some(org)))?
        .into_iter()
        .filter(|a| a.audit.deleted_at.is_none())
        .collect())
}

fn find(state: &AppState, p: &Principal, id: &str) -> VareonResult<Agent> {
    Ok(warden_domain::find_in_org(
        &state.store,
        &p.org_id,
        id,
        "",
        "Agent",
    )?)
}

/// Reads a myntrix agent body; answers the input and whether it asks
/// for the agent to run.
fn read(body: Map<String, Value>, create: bool) -> VareonResult<(AgentInput, Option<bool>)> {
    let mut f = Fields::new(body);
    let name = f.string("name", create);
    let role = f.string("type", false);
    let status = f.string("status", false);
    let description = f.string_max("description", false, 4096);
    let configuration = f.json("configuration", true);
    f.drop(&["id", "owner_id", "health", "last_run", "pid", "failure"]);
    f.finish_as::<Vareon>()?;
    if let Some(c) = &configuration {
        let mut errors = Vec::new();
        if let Err(e) = command_of(c) {
            errors.push(e);
        }
        if let Err(e) = cwd_of(c) {
            errors.push(e);
        }
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
    }
    let run = status.map(|s| RUNNING.contains(&s.to_ascii_lowercase().as_str()));
    Ok((
        AgentInput {
            name,
            role,
            description,
            configuration,
            ..Default::default()
        },
        run,
    ))
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): VareonBody,
) -> VareonResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let (input, run) = read(body, true)?;
    let mut a = Agent::new(p.owner(), &p.user_id);
    a.apply(
        AgentInput {
            status: Some("inactive".into()),
            ..input
        },
        true,
    )?;
    let mut a = catalog::create(&state.store, a).await?;
    if run == Some(true) {
        a = state.runtime.agents.start(&a, &p.user_id).await?;
    }
    Ok((StatusCode::CREATED, Json(view(&state, &a))))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<SkipLimit>,
) -> VareonResult<Json<Vec<Value>>> {
    let (skip, limit) = q.parse()?;
    let all = all(&state, &p.org_id)?;
    Ok(Json(
        all.iter()
            .skip(skip)
            .take(limit)
            .map(|a| view(&state, a))
            .collect(),
    ))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    Ok(Json(view(&state, &find(&state, &p, &id)?)))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    writer(&p)?;
    let a = find(&state, &p, &id)?;
    let (input, run) = read(body, false)?;
    let a = catalog::update::<Agent>(&state.store, &a.id, &p.user_id, |a| {
        a.apply(input.clone(), false)
    })
    .await?;
    let agents = &state.runtime.agents;
    let a = match run {
        Some(true) => agents.start(&a, &p.user_id).await?,
        Some(false) => agents.stop(&a, &p.user_id).await?,
        None => a,
    };
    Ok(Json(view(&state, &a)))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<StatusCode> {
    writer(&p)?;
    let a = find(&state, &p, &id)?;
    // Its process goes first, then the record.
    state.runtime.agents.stop(&a, &p.user_id).await?;
    catalog::soft_delete::<Agent>(&state.store, &a.id, &p.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn act(state: &AppState, p: &Principal, id: &str, action: &str) -> VareonResult<Json<Value>> {
    writer(p)?;
    let a = find(state, p, id)?;
    let agents = &state.runtime.agents;
    let a = match action {
        "start" => agents.start(&a, &p.user_id).await?,
        "stop" => agents.stop(&a, &p.user_id).await?,
        _ => agents.restart(&a, &p.user_id).await?,
    };
    Ok(Json(view(state, &a)))
}

async fn start(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    act(&state, &p, &id, "start").await
}

async fn stop(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    act(&state, &p, &id, "stop").await
}

async fn restart(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    act(&state, &p, &id, "restart").await
}

pub(super) fn routes() -> Api {
    let t = "vareon: myntrix agents";
    let mut api = Api::new();
    for path in ["/api/myntrix/agents/", "/api/myntrix/agents"] {
        api = api
            .post(
                path,
                t,
                "Create an agent (configuration.command, an argv array, makes it a process agent)",
                create,
            )
            .get(path, t, "The organisation's agents (skip, limit)", list);
    }
    api.get("/api/myntrix/agents/{agent_id}", t, "An agent", get)
        .put(
            "/api/myntrix/agents/{agent_id}",
            t,
            "Change an agent; status running/stopped starts or stops it",
            update,
        )
        .delete(
            "/api/myntrix/agents/{agent_id}",
            t,
            "Delete an agent (its process is stopped first)",
            delete,
        )
        .post(
            "/api/myntrix/agents/{agent_id}/start",
            t,
            "Run the agent: its process under supervision, or a logical agent active",
            start,
        )
        .post(
            "/api/myntrix/agents/{agent_id}/stop",
            t,
            "Stop the agent: its process and every process it started",
            stop,
        )
        .post(
            "/api/myntrix/agents/{agent_id}/restart",
            t,
            "Stop, then start: a new process",
            restart,
        )
}
