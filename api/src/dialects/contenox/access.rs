//! `/access-control` and `/permissions`: grants of a permission level
//! (none < view < edit < manage) on a resource to an identity. Admins
//! manage them; anyone may read the grants made to themselves.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_domain::AccessEntry;
use warden_identity::model::User;
use warden_storage::{new_object_id, now_millis};

use super::{Contenox, ContenoxResult};
use crate::AppState;
use crate::auth::{AdminUser, CurrentUser};
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Body = JsonBody<Contenox>;
type Caller = CurrentUser<Contenox>;
type Admin = AdminUser<Contenox>;

pub(crate) const PERMISSIONS: [&str; 4] = ["none", "view", "edit", "manage"];

fn view(state: &AppState, e: &AccessEntry, expand_user: bool) -> Value {
    let mut v = json!({
        "id": e.id,
        "identity": e.identity,
        "resource": e.resource,
        "resourceType": e.resource_type,
        "permission": e.permission,
        "createdAt": iso(e.created_at),
        "updatedAt": iso(e.updated_at),
    });
    if expand_user && let Ok(Some(u)) = state.store.get::<User>(&e.identity) {
        v["identityDetails"] = super::users::user_view(&u);
    }
    v
}

#[derive(serde::Deserialize)]
struct ListQuery {
    identity: Option<String>,
    expand: Option<String>,
    from: Option<String>,
    limit: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<ListQuery>,
) -> ContenoxResult<Json<Value>> {
    let identity = if p.is_admin() {
        q.identity.clone()
    } else {
        Some(p.user_id.clone())
    };
    let mut entries: Vec<AccessEntry> = match &identity {
        Some(id) => state.store.by_index::<AccessEntry>("identity", id)?,
        None => state.store.all::<AccessEntry>()?,
    };
    entries.retain(|e| p.sees_org(&e.org_id) || e.identity == p.user_id);
    let (limit, from) = super::page_params(q.limit.as_deref(), "from", q.from.as_deref())?;
    entries.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    let expand = q.expand.as_deref() == Some("user");
    let page: Vec<Value> = entries
        .iter()
        .filter(|e| from.is_none_or(|f| e.created_at < f))
        .take(limit)
        .map(|e| view(&state, e, expand))
        .collect();
    Ok(Json(Value::Array(page)))
}

fn read(
    body: serde_json::Map<String, Value>,
    target: &mut AccessEntry,
    create: bool,
) -> ContenoxResult<()> {
    let mut f = Fields::new(body);
    let identity = f.key("identity", create);
    let resource = f.string_max("resource", create, 1024);
    let resource_type = f.key("resourceType", create);
    let permission = f.one_of("permission", &PERMISSIONS, create);
    f.drop(&[
        "createdAt",
        "updatedAt",
        "fileDetails",
        "identityDetails",
        "withUserDetails",
    ]);
    f.finish_as::<Contenox>()?;
    crate::dialects::set(&mut target.identity, identity);
    crate::dialects::set(&mut target.resource, resource);
    crate::dialects::set(&mut target.resource_type, resource_type);
    crate::dialects::set(&mut target.permission, permission);
    target.updated_at = now_millis();
    Ok(())
}

fn conflict(e: warden_storage::StorageError) -> ApiError<Contenox> {
    match e {
        warden_storage::StorageError::Conflict { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "this identity already has a grant on this resource",
        ),
        other => other.into(),
    }
}

async fn create(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    JsonBody(body, _): Body,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    let now = now_millis();
    let mut entry = AccessEntry {
        id: new_object_id(),
        identity: String::new(),
        resource: String::new(),
        resource_type: String::new(),
        permission: String::new(),
        org_id: p.org_id.clone(),
        created_at: now,
        updated_at: now,
    };
    read(body, &mut entry, true)?;
    let entry = state.store.insert(entry).await.map_err(conflict)?;
    Ok((StatusCode::CREATED, Json(view(&state, &entry, false))))
}

fn visible(
    state: &AppState,
    p: &warden_identity::Principal,
    id: &str,
) -> ContenoxResult<AccessEntry> {
    state
        .store
        .get::<AccessEntry>(id)?
        .filter(|e| e.identity == p.user_id || p.sees_org(&e.org_id) && p.is_admin())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("access entry {id} not found"),
            )
        })
}

#[derive(serde::Deserialize)]
struct Expand {
    expand: Option<String>,
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    Query(q): Query<Expand>,
) -> ContenoxResult<Json<Value>> {
    let entry = visible(&state, &p, &id)?;
    Ok(Json(view(
        &state,
        &entry,
        q.expand.as_deref() == Some("user"),
    )))
}

async fn update(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
    JsonBody(body, _): Body,
) -> ContenoxResult<Json<Value>> {
    visible(&state, &p, &id)?;
    let mut outcome = Ok(());
    let updated = state
        .store
        .update::<AccessEntry, ApiError<Contenox>>(&id, |e| {
            outcome = read(body.clone(), e, false);
            Ok(outcome.is_ok().then_some(()))
        })
        .await?;
    outcome?;
    let entry = updated.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("access entry {id} not found"),
        )
    })?;
    Ok(Json(view(&state, &entry, false)))
}

async fn delete(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    visible(&state, &p, &id)?;
    state.store.remove::<AccessEntry>(&id).await?;
    Ok(Json(json!("access entry deleted")))
}

async fn permissions(CurrentUser(_, _): Caller) -> Json<Value> {
    Json(json!(PERMISSIONS))
}

pub(super) fn routes() -> Api {
    let tag = "contenox: access control";
    Api::new()
        .get(
            "/access-control",
            tag,
            "Grants (identity, expand=user, from, limit)",
            list,
        )
        .post("/access-control", tag, "Grant a permission (admin)", create)
        .get("/access-control/{id}", tag, "A grant", get)
        .put(
            "/access-control/{id}",
            tag,
            "Change a grant (admin)",
            update,
        )
        .delete(
            "/access-control/{id}",
            tag,
            "Revoke a grant (admin)",
            delete,
        )
        .get(
            "/permissions",
            tag,
            "The permission levels, lowest first",
            permissions,
        )
}
