//! `/access-control` and `/permissions`: grants of a permission level
//! (none < view < edit < manage) on a resource to an identity. Admins
//! manage them; anyone may read the grants made to themselves.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_domain::access::{AccessControl, Asker, Grant, PERMISSIONS};
use warden_domain::{AccessEntry, DomainError};
use warden_identity::model::User;

use super::{Contenox, ContenoxResult};
use crate::AppState;
use crate::auth::{AdminUser, CurrentUser};
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Body = JsonBody<Contenox>;
type Caller = CurrentUser<Contenox>;
type Admin = AdminUser<Contenox>;

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

fn asker(p: &warden_identity::Principal) -> Asker<'_> {
    Asker {
        user_id: &p.user_id,
        is_admin: p.is_admin(),
    }
}

fn service(state: &AppState) -> AccessControl {
    AccessControl::new(state.store.clone())
}

/// Contenox's words for the core's answers about grants.
fn refused(e: DomainError) -> ApiError<Contenox> {
    match e {
        DomainError::Conflict { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "this identity already has a grant on this resource",
        ),
        DomainError::NotFound { id, .. } => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("access entry {id} not found"),
        ),
        other => other.into(),
    }
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<ListQuery>,
) -> ContenoxResult<Json<Value>> {
    let (limit, from) = super::page_params(q.limit.as_deref(), "from", q.from.as_deref())?;
    let entries = service(&state)
        .list(asker(&p), q.identity.as_deref(), from, limit)
        .map_err(refused)?;
    let expand = q.expand.as_deref() == Some("user");
    Ok(Json(Value::Array(
        entries.iter().map(|e| view(&state, e, expand)).collect(),
    )))
}

/// The body of a grant: shapes only; the core checks what a grant must be.
fn read(body: serde_json::Map<String, Value>) -> ContenoxResult<Grant> {
    let mut f = Fields::new(body);
    let grant = Grant {
        identity: f.string("identity", false),
        resource: f.string_max("resource", false, usize::MAX),
        resource_type: f.string("resourceType", false),
        permission: f.string("permission", false),
    };
    f.drop(&[
        "createdAt",
        "updatedAt",
        "fileDetails",
        "identityDetails",
        "withUserDetails",
    ]);
    f.finish_as::<Contenox>()?;
    Ok(grant)
}

async fn create(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    JsonBody(body, _): Body,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    let entry = service(&state)
        .grant(&p.org_id, read(body)?)
        .await
        .map_err(refused)?;
    Ok((StatusCode::CREATED, Json(view(&state, &entry, false))))
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
    let entry = service(&state).visible(asker(&p), &id).map_err(refused)?;
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
    let grant = read(body)?;
    let entry = service(&state)
        .change(asker(&p), &id, grant)
        .await
        .map_err(refused)?;
    Ok(Json(view(&state, &entry, false)))
}

async fn delete(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    service(&state)
        .revoke(asker(&p), &id)
        .await
        .map_err(refused)?;
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
