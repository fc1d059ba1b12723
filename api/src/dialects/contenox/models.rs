//! Contenox's models: `/models` (the core model registry's LLM models,
//! named by their name), `/model-affinity/*`, `/defaultmodel`, and the
//! OpenAI-style listings `/v1/models` and `/openai/{chainID}/v1/models`
//! (the models in at least one group: the ones requests can reach).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_actors::llm::MemberKind;
use warden_domain::Model;
use warden_supervisors::LlmModelInput;

use super::backends::PageQuery;
use super::{Contenox, ContenoxResult};
use crate::AppState;
use crate::auth::{AdminUser, CurrentUser};
use crate::dialects::{Fields, JsonBody, iso};
use crate::openapi::Api;

type Body = JsonBody<Contenox>;
type Caller = CurrentUser<Contenox>;
type Admin = AdminUser<Contenox>;

/// `runtimetypes.Model`: the id is the model's name.
pub(crate) fn model_view(m: &Model) -> Value {
    let p = m.llm_profile();
    json!({
        "id": m.name,
        "model": m.name,
        "canChat": p.can_chat,
        "canEmbed": p.can_embed,
        "canPrompt": p.can_prompt,
        "canStream": p.can_stream,
        "contextLength": p.context_length,
        "createdAt": iso(m.audit.created_at),
        "updatedAt": iso(m.audit.updated_at),
    })
}

fn read_model(body: serde_json::Map<String, Value>, create: bool) -> ContenoxResult<LlmModelInput> {
    let mut f = Fields::new(body);
    let input = LlmModelInput {
        name: f.string("model", create),
        can_chat: f.boolean("canChat", false),
        can_embed: f.boolean("canEmbed", false),
        can_prompt: f.boolean("canPrompt", false),
        can_stream: f.boolean("canStream", false),
        context_length: f.count("contextLength", false),
        ..LlmModelInput::default()
    };
    f.drop(&["id"]);
    f.finish_as::<Contenox>()?;
    Ok(input)
}

async fn list_models(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<PageQuery>,
) -> ContenoxResult<Json<Value>> {
    let (limit, before) = q.read()?;
    let models = state.runtime.llm.llm_models(&p.org_id, before, limit)?;
    Ok(Json(models.iter().map(model_view).collect()))
}

async fn declare_model(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    JsonBody(body, _): Body,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    let input = read_model(body, true)?;
    let m = state
        .runtime
        .llm
        .declare_model(crate::dialects::aiwm::owner_of(&p), &p.user_id, input)
        .await?;
    Ok((StatusCode::CREATED, Json(model_view(&m))))
}

async fn update_model(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
    JsonBody(body, _): Body,
) -> ContenoxResult<Json<Value>> {
    let mut input = read_model(body, false)?;
    // The model's name is its id: the path's wins, as the reference says.
    input.name = None;
    let m = state
        .runtime
        .llm
        .update_model(&p.org_id, &id, &p.user_id, input)
        .await?;
    Ok(Json(model_view(&m)))
}

async fn delete_model(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    state
        .runtime
        .llm
        .delete_model(&p.org_id, &id, &p.user_id)
        .await?;
    Ok(Json(json!("model removed")))
}

async fn assign_model(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path((group, model)): Path<(String, String)>,
) -> ContenoxResult<Json<Value>> {
    state
        .runtime
        .llm
        .assign(&p.org_id, &group, MemberKind::Model, &model)
        .await?;
    Ok(Json(json!("model assigned")))
}

async fn remove_model(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path((group, model)): Path<(String, String)>,
) -> ContenoxResult<Json<Value>> {
    state
        .runtime
        .llm
        .unassign(&p.org_id, &group, MemberKind::Model, &model)
        .await?;
    Ok(Json(json!("model removed")))
}

async fn group_models(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(group): Path<String>,
) -> ContenoxResult<Json<Value>> {
    let models = state.runtime.llm.group_models(&p.org_id, &group)?;
    Ok(Json(models.iter().map(model_view).collect()))
}

async fn model_groups(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(model): Path<String>,
) -> ContenoxResult<Json<Value>> {
    let groups = state.runtime.llm.model_groups(&p.org_id, &model)?;
    Ok(Json(
        groups.iter().map(super::backends::group_view).collect(),
    ))
}

async fn default_model(State(state): State<AppState>, CurrentUser(_, _): Caller) -> Json<Value> {
    Json(json!({"modelName": state.runtime.llm.defaults().task_model}))
}

/// OpenAI's model list: the models in at least one group.
async fn openai_models(state: &AppState, org: &str, q: &PageQuery) -> ContenoxResult<Json<Value>> {
    let (limit, before) = q.read()?;
    let llm = &state.runtime.llm;
    let data: Vec<Value> = llm
        .llm_models(org, before, usize::MAX)?
        .iter()
        .filter(|m| llm.model_groups(org, &m.name).is_ok_and(|g| !g.is_empty()))
        .take(limit)
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": m.audit.created_at / 1000,
                "owned_by": if m.owner.org_id.is_empty() { "system" } else { "organization" },
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn v1_models(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<PageQuery>,
) -> ContenoxResult<Json<Value>> {
    openai_models(&state, &p.org_id, &q).await
}

/// The chain id is unused, as in the reference.
async fn chain_models(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(_chain): Path<String>,
    Query(q): Query<PageQuery>,
) -> ContenoxResult<Json<Value>> {
    openai_models(&state, &p.org_id, &q).await
}

pub(super) fn routes() -> Api {
    let (m, g, o) = ("contenox: models", "contenox: groups", "contenox: openai");
    Api::new()
        .get(
            "/models",
            m,
            "LLM models (the server's and the organisation's), newest first",
            list_models,
        )
        .post(
            "/models",
            m,
            "Declare a model by name (admin)",
            declare_model,
        )
        .put(
            "/models/{id}",
            m,
            "Change what a model can do (admin; not the server's)",
            update_model,
        )
        .delete(
            "/models/{id}",
            m,
            "Delete a model and its memberships (admin; not the server's)",
            delete_model,
        )
        .get(
            "/defaultmodel",
            m,
            "The task model declared at boot",
            default_model,
        )
        .post(
            "/model-affinity/{id}/models/{modelID}",
            g,
            "Put a model in a group (admin)",
            assign_model,
        )
        .delete(
            "/model-affinity/{id}/models/{modelID}",
            g,
            "Take a model out of a group (admin)",
            remove_model,
        )
        .get(
            "/model-affinity/{id}/models",
            g,
            "The models of a group",
            group_models,
        )
        .get(
            "/model-affinity/{id}/groups",
            g,
            "The groups of a model",
            model_groups,
        )
        .get(
            "/v1/models",
            o,
            "Models requests can reach, in OpenAI's format",
            v1_models,
        )
        .get(
            "/openai/{chainID}/v1/models",
            o,
            "Models requests can reach, in OpenAI's format (the chain is unused)",
            chain_models,
        )
}
