//! NeuroNest orchestration agents (`/api/orchestration/agents`): the core
//! agent records AIWM's `/api/agents` shows, in NeuroNest's snake_case
//! with its `configuration` object (model, temperature, max_tokens: what
//! the agent's conversations use).

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Map, Value, json};
use warden_domain::{Agent, AgentInput, DomainError, catalog};
use warden_identity::Principal;

use super::Neuronest;
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{Fields, JsonBody, iso};
use crate::openapi::Api;

type Caller = CurrentUser<Neuronest>;
type Result<T> = std::result::Result<T, crate::error::ApiError<Neuronest>>;

fn view(a: &Agent) -> Value {
    let configuration: Value = serde_json::from_str(&a.configuration).unwrap_or_else(|_| json!({}));
    json!({
        "id": a.id,
        "user_id": a.owner.user_id,
        "name": a.name,
        "description": a.description,
        "capabilities": a.capabilities,
        "configuration": configuration,
        "created_at": iso(a.audit.created_at),
        "updated_at": iso(a.audit.updated_at),
    })
}

fn read(body: Map<String, Value>, create: bool) -> Result<AgentInput> {
    let mut f = Fields::new(body);
    let input = AgentInput {
        name: f.string("name", create),
        description: f.string_max("description", false, usize::MAX),
        capabilities: f.strings("capabilities", false),
        configuration: f.json("configuration", true),
        ..Default::default()
    };
    f.finish_as::<Neuronest>()?;
    Ok(input)
}

/// A live agent of the caller's organisation, by id.
pub(super) fn find(state: &AppState, p: &Principal, id: &str) -> Result<Agent> {
    state
        .store
        .get::<Agent>(id)?
        .filter(|a| a.audit.deleted_at.is_none() && a.owner.org_id == p.org_id)
        .ok_or_else(|| {
            DomainError::NotFound {
                kind: "Agent",
                id: id.to_owned(),
            }
            .into()
        })
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonBody<Neuronest>,
) -> Result<Json<Value>> {
    let input = read(body, true)?;
    let owner = p.owner();
    let mut agent = Agent::new(owner, &p.user_id);
    agent.apply(input, true)?;
    let agent = catalog::create(&state.store, agent).await?;
    Ok(Json(view(&agent)))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> Result<Json<Vec<Value>>> {
    let scope = warden_domain::org_scope(Some(&p.org_id));
    let all = state
        .store
        .in_scope::<Agent>(warden_domain::CREATED, &scope)?;
    Ok(Json(all.iter().map(view).collect()))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    Ok(Json(view(&find(&state, &p, &id)?)))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): JsonBody<Neuronest>,
) -> Result<Json<Value>> {
    let found = find(&state, &p, &id)?;
    let input = read(body, false)?;
    let agent = catalog::update::<Agent>(&state.store, &found.id, &p.user_id, |a| {
        a.apply(input.clone(), false)
    })
    .await?;
    Ok(Json(view(&agent)))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let found = find(&state, &p, &id)?;
    catalog::soft_delete::<Agent>(&state.store, &found.id, &p.user_id).await?;
    Ok(Json(json!({"message": "Agent deleted successfully"})))
}

pub(super) fn routes() -> Api {
    let t = "neuronest: orchestration agents";
    Api::new()
        .post("/api/orchestration/agents", t, "Create an agent", create)
        .get(
            "/api/orchestration/agents",
            t,
            "The organisation's agents",
            list,
        )
        .get(
            "/api/orchestration/agents/{agent_id}",
            t,
            "Get an agent",
            get,
        )
        .put(
            "/api/orchestration/agents/{agent_id}",
            t,
            "Update an agent",
            update,
        )
        .delete(
            "/api/orchestration/agents/{agent_id}",
            t,
            "Delete an agent",
            delete,
        )
}
