//! Vareon's cognisys (seeds/vareon-api.md §6): LLM providers (the core
//! LLM backends: the same records contenox's `/backends` shows), LLM
//! models (the core model registry, with their provider and cost) and a
//! user's routing rules, which choose the model of that user's chat
//! requests (`actors/src/llm/rules.rs` defines their conditions).
//! `test-connection` really asks the provider what it serves.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_actors::llm::{Backend, BackendInput, RoutingRule, RuleInput};
use warden_domain::Model;
use warden_supervisors::LlmModelInput;

use super::{SkipLimit, Vareon, VareonBody, VareonResult};
use crate::AppState;
use crate::auth::{AdminUser, CurrentUser};
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Vareon>;
type Admin = AdminUser<Vareon>;

fn provider_view(b: &Backend) -> Value {
    json!({
        "id": b.id,
        "name": b.name,
        "base_url": b.base_url,
        "type": b.kind,
        "created_at": iso(b.audit.created_at),
        "updated_at": iso(b.audit.updated_at),
    })
}

pub(super) fn model_view(state: &AppState, org: &str, m: &Model) -> Value {
    let p = m.llm_profile();
    let provider = p
        .backend_id
        .as_deref()
        .and_then(|id| state.runtime.llm.backend(org, id).ok());
    json!({
        "id": m.id,
        "model_name": m.name,
        "provider_id": p.backend_id,
        "max_tokens": p.context_length,
        "cost_per_token": p.cost_per_token,
        "created_at": iso(m.audit.created_at),
        "updated_at": iso(m.audit.updated_at),
        "provider": provider.as_ref().map(provider_view),
    })
}

fn rule_view(r: &RoutingRule) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "condition": r.condition,
        "target_model": r.target_model,
        "priority": r.priority,
        "owner_id": r.owner_id,
    })
}

fn page<T>(items: Vec<T>, q: &SkipLimit) -> VareonResult<Vec<T>> {
    let (skip, limit) = q.parse()?;
    Ok(items.into_iter().skip(skip).take(limit).collect())
}

/// A provider's body; its type is OpenAI's protocol unless it says.
fn read_provider(body: serde_json::Map<String, Value>, create: bool) -> VareonResult<BackendInput> {
    let mut f = Fields::new(body);
    let input = BackendInput {
        name: f.string("name", create),
        base_url: f.string_max("base_url", create, 2048),
        api_key: f.string_max("api_key", false, 4096),
        kind: f
            .one_of("type", &warden_actors::llm::BACKEND_TYPES, false)
            .or(create.then(|| "openai".to_owned())),
    };
    f.drop(&["id", "created_at", "updated_at"]);
    f.finish_as::<Vareon>()?;
    Ok(input)
}

async fn create_provider(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    JsonBody(body, _): VareonBody,
) -> VareonResult<(StatusCode, Json<Value>)> {
    let input = read_provider(body, true)?;
    let b = state
        .runtime
        .llm
        .create_backend(input, crate::dialects::aiwm::owner_of(&p), &p.user_id)
        .await?;
    Ok((StatusCode::CREATED, Json(provider_view(&b))))
}

async fn list_providers(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<SkipLimit>,
) -> VareonResult<Json<Value>> {
    let mut all = state.runtime.llm.backends(&p.org_id, None, usize::MAX)?;
    all.reverse();
    Ok(Json(page(all, &q)?.iter().map(provider_view).collect()))
}

async fn get_provider(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    Ok(Json(provider_view(
        &state.runtime.llm.backend(&p.org_id, &id)?,
    )))
}

async fn update_provider(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    let input = read_provider(body, false)?;
    let b = state
        .runtime
        .llm
        .update_backend(&p.org_id, &id, input, &p.user_id)
        .await?;
    Ok(Json(provider_view(&b)))
}

async fn delete_provider(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
) -> VareonResult<StatusCode> {
    state.runtime.llm.delete_backend(&p.org_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Asks the provider what it serves, now.
async fn test_connection(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    let llm = &state.runtime.llm;
    let b = llm.backend(&p.org_id, &id)?;
    Ok(Json(match llm.test(&b).await? {
        Ok((models, ms)) => json!({
            "status": "success",
            "message": format!("{} answered in {ms} ms and serves {} model(s)", b.name, models.len()),
            "latency_ms": ms,
            "models": models,
        }),
        Err(e) => json!({"status": "failure", "message": e}),
    }))
}

fn read_model(body: serde_json::Map<String, Value>, create: bool) -> VareonResult<LlmModelInput> {
    let mut f = Fields::new(body);
    let input = LlmModelInput {
        name: f.string("model_name", create),
        backend_id: f.string("provider_id", create).map(Some),
        context_length: f.count("max_tokens", false),
        cost_per_token: f.number("cost_per_token", false),
        ..LlmModelInput::default()
    };
    f.drop(&["id", "created_at", "updated_at", "provider"]);
    f.finish_as::<Vareon>()?;
    Ok(input)
}

/// A model named by its core id, in the caller's organisation (or the
/// server's own).
fn model_by_id(state: &AppState, org: &str, id: &str) -> VareonResult<Model> {
    state
        .store
        .get::<Model>(id)?
        .filter(|m| {
            m.audit.deleted_at.is_none()
                && (m.owner.org_id == org || m.owner.org_id == warden_actors::llm::SYSTEM_ORG)
                && m.is_llm()
        })
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "LLM Model not found"))
}

async fn create_model(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    JsonBody(body, _): VareonBody,
) -> VareonResult<(StatusCode, Json<Value>)> {
    let input = read_model(body, true)?;
    let m = state
        .runtime
        .llm
        .declare_model(crate::dialects::aiwm::owner_of(&p), &p.user_id, input)
        .await?;
    Ok((StatusCode::CREATED, Json(model_view(&state, &p.org_id, &m))))
}

async fn list_models(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<SkipLimit>,
) -> VareonResult<Json<Value>> {
    let mut all = state.runtime.llm.llm_models(&p.org_id, None, usize::MAX)?;
    all.reverse();
    Ok(Json(
        page(all, &q)?
            .iter()
            .map(|m| model_view(&state, &p.org_id, m))
            .collect(),
    ))
}

async fn get_model(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    let m = model_by_id(&state, &p.org_id, &id)?;
    Ok(Json(model_view(&state, &p.org_id, &m)))
}

async fn update_model(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    let m = model_by_id(&state, &p.org_id, &id)?;
    let input = read_model(body, false)?;
    let m = state
        .runtime
        .llm
        .update_model(&p.org_id, &m.name, &p.user_id, input)
        .await?;
    Ok(Json(model_view(&state, &p.org_id, &m)))
}

async fn delete_model(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
) -> VareonResult<StatusCode> {
    let m = model_by_id(&state, &p.org_id, &id)?;
    state
        .runtime
        .llm
        .delete_model(&p.org_id, &m.name, &p.user_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn read_rule(body: serde_json::Map<String, Value>, create: bool) -> VareonResult<RuleInput> {
    let mut f = Fields::new(body);
    let priority = f.number("priority", false);
    if priority.is_some_and(|p| p.fract() != 0.0 || p.abs() > 1e15) {
        f.error("priority must be an integer".into());
    }
    let input = RuleInput {
        name: f.string("name", create),
        condition: f.string_max("condition", create, 2000),
        target_model: f.string("target_model", create),
        priority: priority.map(|p| p as i64),
    };
    f.drop(&["id", "owner_id"]);
    f.finish_as::<Vareon>()?;
    Ok(input)
}

async fn create_rule(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): VareonBody,
) -> VareonResult<(StatusCode, Json<Value>)> {
    let r = state
        .runtime
        .llm
        .create_rule(&p.org_id, &p.user_id, read_rule(body, true)?)
        .await?;
    Ok((StatusCode::CREATED, Json(rule_view(&r))))
}

async fn list_rules(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<SkipLimit>,
) -> VareonResult<Json<Value>> {
    let all = state.runtime.llm.rules(&p.org_id, &p.user_id)?;
    Ok(Json(page(all, &q)?.iter().map(rule_view).collect()))
}

async fn get_rule(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    Ok(Json(rule_view(
        &state.runtime.llm.rule(&p.org_id, &p.user_id, &id)?,
    )))
}

async fn update_rule(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    let r = state
        .runtime
        .llm
        .update_rule(&p.org_id, &p.user_id, &id, read_rule(body, false)?)
        .await?;
    Ok(Json(rule_view(&r)))
}

async fn delete_rule(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<StatusCode> {
    state
        .runtime
        .llm
        .delete_rule(&p.org_id, &p.user_id, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> Api {
    let (pr, m, r) = (
        "vareon: cognisys providers",
        "vareon: cognisys models",
        "vareon: cognisys routing",
    );
    let mut api = Api::new();
    for base in ["/api/cognisys/providers/", "/api/cognisys/providers"] {
        api = api
            .post(
                base,
                pr,
                "Add an LLM provider (admin_access); the same record as a contenox backend",
                create_provider,
            )
            .get(base, pr, "LLM providers (skip, limit)", list_providers);
    }
    for base in ["/api/cognisys/models/", "/api/cognisys/models"] {
        api = api
            .post(
                base,
                m,
                "Declare an LLM model served by a provider (admin_access)",
                create_model,
            )
            .get(base, m, "LLM models (skip, limit)", list_models);
    }
    api.get(
        "/api/cognisys/providers/{provider_id}",
        pr,
        "An LLM provider",
        get_provider,
    )
    .put(
        "/api/cognisys/providers/{provider_id}",
        pr,
        "Change an LLM provider (admin_access); the key is write-only",
        update_provider,
    )
    .delete(
        "/api/cognisys/providers/{provider_id}",
        pr,
        "Delete an LLM provider (admin_access)",
        delete_provider,
    )
    .post(
        "/api/cognisys/providers/{provider_id}/test-connection",
        pr,
        "Ask the provider what it serves, now",
        test_connection,
    )
    .get(
        "/api/cognisys/models/{model_id}",
        m,
        "An LLM model",
        get_model,
    )
    .put(
        "/api/cognisys/models/{model_id}",
        m,
        "Change an LLM model (admin_access)",
        update_model,
    )
    .delete(
        "/api/cognisys/models/{model_id}",
        m,
        "Delete an LLM model (admin_access)",
        delete_model,
    )
    .post(
        "/api/cognisys/routing-rules",
        r,
        "Create one of the caller's routing rules",
        create_rule,
    )
    .get(
        "/api/cognisys/routing-rules",
        r,
        "The caller's routing rules, highest priority first",
        list_rules,
    )
    .get(
        "/api/cognisys/routing-rules/{rule_id}",
        r,
        "One of the caller's routing rules",
        get_rule,
    )
    .put(
        "/api/cognisys/routing-rules/{rule_id}",
        r,
        "Change one of the caller's routing rules",
        update_rule,
    )
    .delete(
        "/api/cognisys/routing-rules/{rule_id}",
        r,
        "Delete one of the caller's routing rules",
        delete_rule,
    )
}
