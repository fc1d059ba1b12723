//! Contenox's LLM infrastructure: `/backends` (with each backend's live
//! state from its actor), `/state`, affinity `/groups` and
//! `/backend-affinity`, and provider keys (`/providers/*`). Writes are
//! for admins; members of the organisation read. Keys are write-only.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_actors::llm::{
    AffinityGroup, Backend, BackendInput, GroupInput, LiveModel, LiveState, MemberKind,
    PROVIDER_TYPES,
};

use super::{Contenox, ContenoxResult};
use crate::AppState;
use crate::auth::{AdminUser, CurrentUser};
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Body = JsonBody<Contenox>;
type Caller = CurrentUser<Contenox>;
type Admin = AdminUser<Contenox>;

#[derive(serde::Deserialize)]
pub(crate) struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

impl PageQuery {
    pub(super) fn read(&self) -> ContenoxResult<(usize, Option<i64>)> {
        super::page_params(self.limit.as_deref(), "cursor", self.cursor.as_deref())
    }
}

fn backend_view(b: &Backend) -> Value {
    json!({
        "id": b.id,
        "name": b.name,
        "baseUrl": b.base_url,
        "type": b.kind,
        "createdAt": iso(b.audit.created_at),
        "updatedAt": iso(b.audit.updated_at),
    })
}

fn pulled_view(m: &LiveModel) -> Value {
    json!({
        "name": m.name,
        "model": m.model,
        "modifiedAt": m.modified_at,
        "size": m.size,
        "digest": m.digest,
        "details": {
            "format": m.format,
            "family": m.family,
            "families": m.families,
            "parameterSize": m.parameter_size,
            "quantizationLevel": m.quantization_level,
            "parentModel": m.parent_model,
        },
        "contextLength": m.context_length,
        "canChat": m.can_chat,
        "canEmbed": m.can_embed,
        "canPrompt": m.can_chat,
        "canStream": m.can_stream,
    })
}

/// A backend with what its actor last found (`backendSummary`,
/// `backendDetails`), plus Warden's health fields.
fn live_view(b: &Backend, live: &LiveState) -> Value {
    let mut v = backend_view(b);
    v["models"] = live.models.iter().map(|m| m.model.clone()).collect();
    v["pulledModels"] = live.models.iter().map(pulled_view).collect();
    if let Some(e) = &live.error {
        v["error"] = json!(e);
    }
    v["healthy"] = json!(live.healthy);
    v["latencyMs"] = json!(live.latency_ms);
    v["checkedAt"] = json!(live.checked_at.map(iso));
    v
}

pub(super) fn group_view(g: &AffinityGroup) -> Value {
    json!({
        "id": g.id,
        "name": g.name,
        "purposeType": g.purpose_type,
        "createdAt": iso(g.created_at),
        "updatedAt": iso(g.updated_at),
    })
}

fn read_backend(
    body: serde_json::Map<String, Value>,
    create: bool,
) -> ContenoxResult<BackendInput> {
    let mut f = Fields::new(body);
    let input = BackendInput {
        name: f.string("name", create),
        kind: f.one_of("type", &warden_actors::llm::BACKEND_TYPES, create),
        base_url: f.string_max("baseUrl", create, 2048),
        api_key: f.string_max("apiKey", false, 4096),
    };
    f.drop(&[
        "id",
        "models",
        "pulledModels",
        "error",
        "healthy",
        "latencyMs",
        "checkedAt",
    ]);
    f.finish_as::<Contenox>()?;
    Ok(input)
}

fn read_group(body: serde_json::Map<String, Value>, create: bool) -> ContenoxResult<GroupInput> {
    let mut f = Fields::new(body);
    let input = GroupInput {
        name: f.string("name", create),
        purpose_type: f.string("purposeType", create),
    };
    f.drop(&["id"]);
    f.finish_as::<Contenox>()?;
    Ok(input)
}

/// Contenox answers some writes with a bare JSON string.
fn says(status: StatusCode, text: &str) -> (StatusCode, Json<Value>) {
    (status, Json(json!(text)))
}

async fn list_backends(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<PageQuery>,
) -> ContenoxResult<Json<Value>> {
    let (limit, before) = q.read()?;
    let llm = &state.runtime.llm;
    let mut out = Vec::new();
    for b in llm.backends(&p.org_id, before, limit)? {
        out.push(live_view(&b, &llm.live(&b.id)));
    }
    Ok(Json(Value::Array(out)))
}

async fn create_backend(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    JsonBody(body, _): Body,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    let input = read_backend(body, true)?;
    let b = state
        .runtime
        .llm
        .create_backend(input, crate::dialects::aiwm::owner_of(&p), &p.user_id)
        .await?;
    Ok((StatusCode::CREATED, Json(backend_view(&b))))
}

async fn get_backend(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    let llm = &state.runtime.llm;
    let b = llm.backend(&p.org_id, &id)?;
    Ok(Json(live_view(&b, &llm.live(&b.id))))
}

async fn update_backend(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
    JsonBody(body, _): Body,
) -> ContenoxResult<Json<Value>> {
    let input = read_backend(body, false)?;
    let b = state
        .runtime
        .llm
        .update_backend(&p.org_id, &id, input, &p.user_id)
        .await?;
    Ok(Json(backend_view(&b)))
}

async fn delete_backend(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    state.runtime.llm.delete_backend(&p.org_id, &id).await?;
    Ok(says(StatusCode::OK, "backend removed"))
}

/// `/state`: every backend's runtime state (`BackendRuntimeState`).
async fn runtime_state(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ContenoxResult<Json<Value>> {
    let llm = &state.runtime.llm;
    let mut out = Vec::new();
    for b in llm.backends(&p.org_id, None, usize::MAX)? {
        let live = llm.live(&b.id);
        let mut v = live_view(&b, &live);
        let mut entry = json!({"id": b.id, "name": b.name, "backend": backend_view(&b)});
        for key in [
            "models",
            "pulledModels",
            "error",
            "healthy",
            "latencyMs",
            "checkedAt",
        ] {
            if let Some(x) = v.get_mut(key) {
                entry[key] = x.take();
            }
        }
        out.push(entry);
    }
    Ok(Json(Value::Array(out)))
}

async fn list_groups(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ContenoxResult<Json<Value>> {
    let groups = state.runtime.llm.groups(&p.org_id)?;
    Ok(Json(groups.iter().map(group_view).collect()))
}

async fn create_group(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    JsonBody(body, _): Body,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    let g = state
        .runtime
        .llm
        .create_group(&p.org_id, read_group(body, true)?)
        .await?;
    Ok((StatusCode::CREATED, Json(group_view(&g))))
}

async fn get_group(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    Ok(Json(group_view(&state.runtime.llm.group(&p.org_id, &id)?)))
}

async fn update_group(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
    JsonBody(body, _): Body,
) -> ContenoxResult<Json<Value>> {
    let g = state
        .runtime
        .llm
        .update_group(&p.org_id, &id, read_group(body, false)?)
        .await?;
    Ok(Json(group_view(&g)))
}

async fn delete_group(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    state.runtime.llm.delete_group(&p.org_id, &id).await?;
    Ok(says(StatusCode::OK, "deleted"))
}

async fn group_by_name(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(name): Path<String>,
) -> ContenoxResult<Json<Value>> {
    Ok(Json(group_view(
        &state.runtime.llm.group_by_name(&p.org_id, &name)?,
    )))
}

async fn groups_by_purpose(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(purpose): Path<String>,
    Query(q): Query<PageQuery>,
) -> ContenoxResult<Json<Value>> {
    let (limit, before) = q.read()?;
    let groups = state
        .runtime
        .llm
        .groups_by_purpose(&p.org_id, &purpose, before, limit)?;
    Ok(Json(groups.iter().map(group_view).collect()))
}

async fn assign_backend(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path((group, backend)): Path<(String, String)>,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    state
        .runtime
        .llm
        .assign(&p.org_id, &group, MemberKind::Backend, &backend)
        .await?;
    Ok(says(StatusCode::CREATED, "backend assigned"))
}

async fn remove_backend(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path((group, backend)): Path<(String, String)>,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    state
        .runtime
        .llm
        .unassign(&p.org_id, &group, MemberKind::Backend, &backend)
        .await?;
    Ok(says(StatusCode::OK, "backend removed"))
}

async fn group_backends(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(group): Path<String>,
) -> ContenoxResult<Json<Value>> {
    let backends = state.runtime.llm.group_backends(&p.org_id, &group)?;
    Ok(Json(backends.iter().map(backend_view).collect()))
}

async fn backend_groups(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(backend): Path<String>,
) -> ContenoxResult<Json<Value>> {
    let llm = &state.runtime.llm;
    llm.backend(&p.org_id, &backend)?;
    let groups = llm.groups_of(&p.org_id, MemberKind::Backend, &backend)?;
    Ok(Json(groups.iter().map(group_view).collect()))
}

fn provider_type(t: &str) -> ContenoxResult<&str> {
    if PROVIDER_TYPES.contains(&t) {
        Ok(t)
    } else {
        Err(ApiError::validation(vec![format!(
            "providerType must be one of: {}",
            PROVIDER_TYPES.join(", ")
        )]))
    }
}

/// A provider configuration as the reference shapes it, and as the
/// original's status does; the key itself is never shown.
fn provider_view(t: &str, configured: bool) -> Value {
    json!({
        "Type": t,
        "APIKey": "",
        "provider": t,
        "configured": configured,
        "secretSource": if configured { "stored" } else { "none" },
    })
}

async fn configure_provider(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(t): Path<String>,
    JsonBody(body, _): Body,
) -> ContenoxResult<Json<Value>> {
    let t = provider_type(&t)?;
    let mut f = Fields::new(body);
    let key = f.string_max("apiKey", true, 4096);
    let upsert = f.boolean("upsert", false).unwrap_or(false);
    if f.string("apiKeyEnv", false).is_some() {
        f.error("apiKeyEnv is not supported: the server's environment is not for clients to read; send apiKey".into());
    }
    f.drop(&["baseUrl", "defaultModel", "setDefault"]);
    f.finish_as::<Contenox>()?;
    let llm = &state.runtime.llm;
    if !upsert && llm.provider(&p.org_id, t).is_ok() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{t} is already configured: send upsert: true to replace its key"),
        ));
    }
    llm.configure_provider(&p.org_id, t, &key.unwrap_or_default())
        .await?;
    Ok(Json(provider_view(t, true)))
}

async fn provider_status(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(t): Path<String>,
) -> ContenoxResult<Json<Value>> {
    let t = provider_type(&t)?;
    let configured = state.runtime.llm.provider(&p.org_id, t).is_ok();
    Ok(Json(provider_view(t, configured)))
}

async fn provider_config(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(t): Path<String>,
) -> ContenoxResult<Json<Value>> {
    let t = provider_type(&t)?;
    state.runtime.llm.provider(&p.org_id, t)?;
    Ok(Json(provider_view(t, true)))
}

async fn delete_provider(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(t): Path<String>,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    let t = provider_type(&t)?;
    state.runtime.llm.remove_provider(&p.org_id, t).await?;
    Ok(says(StatusCode::OK, "provider config deleted"))
}

async fn provider_configs(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Query(q): Query<PageQuery>,
) -> ContenoxResult<Json<Value>> {
    let (limit, before) = q.read()?;
    let configs = state.runtime.llm.providers(&p.org_id)?;
    Ok(Json(
        configs
            .iter()
            .filter(|c| before.is_none_or(|b| c.created_at < b))
            .take(limit)
            .map(|c| provider_view(&c.provider_type, true))
            .collect(),
    ))
}

pub(super) fn routes() -> Api {
    let (b, g, pr) = (
        "contenox: backends",
        "contenox: groups",
        "contenox: providers",
    );
    Api::new()
        .get(
            "/backends",
            b,
            "Backends with their live state (limit, cursor)",
            list_backends,
        )
        .post(
            "/backends",
            b,
            "Add a backend (admin); its actor starts probing it",
            create_backend,
        )
        .get(
            "/backends/{id}",
            b,
            "A backend with its live state",
            get_backend,
        )
        .put(
            "/backends/{id}",
            b,
            "Change a backend (admin)",
            update_backend,
        )
        .delete(
            "/backends/{id}",
            b,
            "Remove a backend and its group memberships (admin)",
            delete_backend,
        )
        .get(
            "/state",
            b,
            "Every backend's runtime state: models served, last error",
            runtime_state,
        )
        .get(
            "/groups",
            g,
            "Affinity groups (the system groups included)",
            list_groups,
        )
        .post(
            "/groups",
            g,
            "Create an affinity group (admin)",
            create_group,
        )
        .get("/groups/{id}", g, "An affinity group", get_group)
        .put(
            "/groups/{id}",
            g,
            "Change an affinity group (admin; not a system group)",
            update_group,
        )
        .delete(
            "/groups/{id}",
            g,
            "Delete an affinity group and its memberships (admin)",
            delete_group,
        )
        .get(
            "/group-by-name/{name}",
            g,
            "An affinity group by name",
            group_by_name,
        )
        .get(
            "/group-by-purpose/{purpose}",
            g,
            "Affinity groups of a purpose (limit, cursor)",
            groups_by_purpose,
        )
        .post(
            "/backend-affinity/{id}/backends/{backendID}",
            g,
            "Put a backend in a group (admin)",
            assign_backend,
        )
        .delete(
            "/backend-affinity/{id}/backends/{backendID}",
            g,
            "Take a backend out of a group (admin)",
            remove_backend,
        )
        .get(
            "/backend-affinity/{id}/backends",
            g,
            "The backends of a group",
            group_backends,
        )
        .get(
            "/backend-affinity/{id}/groups",
            g,
            "The groups of a backend",
            backend_groups,
        )
        .post(
            "/providers/{providerType}/configure",
            pr,
            "Store a provider's API key (admin; write-only)",
            configure_provider,
        )
        .get(
            "/providers/{providerType}/status",
            pr,
            "Whether a provider has a key (admin)",
            provider_status,
        )
        .get(
            "/providers/{providerType}/config",
            pr,
            "A provider's configuration, without its key (admin)",
            provider_config,
        )
        .delete(
            "/providers/{providerType}/config",
            pr,
            "Remove a provider's key (admin)",
            delete_provider,
        )
        .get(
            "/providers/configs",
            pr,
            "Configured providers, without their keys (admin)",
            provider_configs,
        )
}
