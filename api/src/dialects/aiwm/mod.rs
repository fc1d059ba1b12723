//! AIWM (seeds/aiwm-api.md): camelCase bodies with `_id` and `xxxId`,
//! `page/limit/filter[field]/sort` paging, soft delete, audit fields,
//! tenancy by `owner.orgId`, and NestJS-style error bodies.

mod agents;
mod conversations;
mod deployments;
mod executions;
mod instructions;
mod login;
mod models;
mod nodes;
pub(crate) mod paging;
mod tools;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use warden_domain::{Audit, DomainError, Owned, Owner, catalog};
use warden_identity::Principal;
use warden_storage::Record;

use crate::AppState;
use crate::dialects::Dialect;
use crate::error::ApiError;
use crate::openapi::Api;

pub(crate) use crate::dialects::body::{AiwmBody, Fields};
pub(crate) use crate::dialects::iso;
pub(crate) use paging::AiwmQuery;

#[derive(Debug)]
pub(crate) struct Aiwm;

impl Dialect for Aiwm {
    fn error(status: StatusCode, message: String, errors: Vec<String>) -> Response {
        let ctx = crate::context::current();
        let mut body = json!({
            "statusCode": status.as_u16(),
            "message": message,
            "timestamp": iso(warden_storage::now_millis()),
            "path": ctx.path,
            "correlationId": ctx.correlation_id,
        });
        if !errors.is_empty() {
            body["errors"] = json!(errors);
        }
        (status, Json(body)).into_response()
    }
}

pub(crate) type AiwmError = ApiError<Aiwm>;
pub(crate) type AiwmResult<T> = Result<T, AiwmError>;

pub(crate) fn routes() -> Api {
    Api::new()
        .merge(login::routes())
        .merge(nodes::routes())
        .merge(executions::routes())
        .merge(deployments::routes())
        .merge(models::routes())
        .merge(instructions::routes())
        .merge(tools::routes())
        .merge(agents::routes())
        .merge(conversations::routes())
}

/// A record the AIWM routes show: owned, audited, with a JSON view.
pub(crate) trait Resource: Record + Owned {
    /// As in messages: "Node with ID ... not found".
    const NAME: &'static str;
    /// The client-chosen key (`nodeId`, `instructionId`, ...), unique per org.
    const KEY: &'static str;
    /// The ordered index and scope that answer `filter[field]=value` in
    /// creation order for `org` (`None`: all), when one does (`status` for
    /// nodes): such a list reads only its page.
    fn indexed_filter(
        _field: &str,
        _value: &str,
        _org: Option<&str>,
    ) -> Option<(&'static str, String)> {
        None
    }
    fn view(&self) -> Value;
    fn audit(&self) -> &Audit;
}

/// The view every AIWM record shares: extra fields first, then the core
/// fields (which extras can never shadow), then owner and audit.
pub(crate) fn view_of(extra: &str, fields: Value, owner: &Owner, audit: &Audit) -> Value {
    // The record's own fields win over the extra ones a client stored.
    let mut out = match fields {
        Value::Object(fields) => fields,
        _ => Map::new(),
    };
    if extra.len() > 2 {
        let extra: Map<String, Value> = serde_json::from_str(extra).unwrap_or_default();
        for (key, value) in extra {
            out.entry(key).or_insert(value);
        }
    }
    out.insert(
        "owner".into(),
        json!({"orgId": owner.org_id, "userId": owner.user_id, "groupId": owner.group_id}),
    );
    out.insert("createdBy".into(), json!(audit.created_by));
    out.insert("updatedBy".into(), json!(audit.updated_by));
    out.insert("createdAt".into(), json!(iso(audit.created_at)));
    out.insert("updatedAt".into(), json!(iso(audit.updated_at)));
    Value::Object(out)
}

pub(crate) fn owner_of(p: &Principal) -> Owner {
    p.owner()
}

pub(crate) fn require_write(p: &Principal, action: &str) -> AiwmResult<()> {
    if p.can_write() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "You do not have permission to {action}"
        )))
    }
}

/// A live record the caller may see, by `_id` or by its key within the
/// caller's organisation. Anything else is "not found": another org's
/// records are never confirmed to exist.
pub(crate) fn find_visible<R: Resource>(
    state: &AppState,
    p: &Principal,
    id: &str,
) -> AiwmResult<R> {
    let by_id = state.store.get::<R>(id)?;
    let record = match by_id {
        Some(r) => Some(r),
        None => state
            .store
            .get_by_unique::<R>(R::KEY, &format!("{}/{id}", p.org_id))?,
    };
    record
        .filter(|r| !r.is_deleted() && p.sees_org(&r.owner().org_id))
        .ok_or_else(|| ApiError::not_found(R::NAME, id))
}

/// `GET` on a collection: tenant scope, then the dialect's filter, sort
/// and page. Lists in creation order (the default, or `sort=createdAt` /
/// `-createdAt`), unfiltered or filtered by one indexed field, read one
/// page of an ordered index; any other query filters and sorts the
/// tenant's records in memory.
pub(crate) fn list<R: Resource>(
    state: &AppState,
    p: &Principal,
    q: &AiwmQuery,
) -> AiwmResult<Json<Value>> {
    use warden_storage::{ListQuery, Scope};
    let descending = match q.sort.as_slice() {
        [] => Some(false),
        [(field, desc)] if field == "createdAt" => Some(*desc),
        _ => None,
    };
    let org = (!p.is_admin()).then_some(p.org_id.as_str());
    let index = match q.filters.as_slice() {
        [] => Some((warden_domain::CREATED, warden_domain::org_scope(org))),
        [(field, value)] => R::indexed_filter(field, value, org),
        _ => None,
    };
    if let (Some(descending), Some((index, scope))) = (descending, index) {
        let page = q
            .window()
            .read::<R>(&state.store, index, &scope, descending)?;
        let data: Vec<Value> = page.items.iter().map(|(_, r)| r.view()).collect();
        return Ok(Json(
            json!({"data": data, "pagination": {"page": q.page, "limit": q.limit, "total": page.total}}),
        ));
    }
    // Everything the caller may see, through the creation-ordered scope
    // every resource has (its organisation's, or all for an admin).
    let scope_name = warden_domain::org_scope(org);
    let scope = Scope::Ordered(warden_domain::CREATED, &scope_name);
    let records = state.store.list::<R>(&ListQuery {
        scope,
        ..Default::default()
    })?;
    let views: Vec<Value> = records.items.iter().map(Resource::view).collect();
    Ok(Json(q.page_of(views)))
}

/// Soft delete of a record without an actor.
pub(crate) async fn soft_delete<R: PlainResource>(
    state: &AppState,
    p: &Principal,
    id: &str,
) -> AiwmResult<Json<Value>> {
    require_write(p, "delete")?;
    let record: R = find_visible(state, p, id)?;
    let deleted: R = catalog::soft_delete(&state.store, record.id(), &p.user_id)
        .await
        .map_err(|e| not_found_as(e, R::NAME, id))?;
    Ok(deleted_body(R::NAME, Resource::audit(&deleted)))
}

/// The caller named the record by `id` (maybe its key): say so.
fn not_found_as(e: DomainError, name: &str, id: &str) -> AiwmError {
    match e {
        DomainError::NotFound { .. } => ApiError::not_found(name, id),
        other => other.into(),
    }
}

pub(crate) fn deleted_body(name: &str, audit: &Audit) -> Json<Value> {
    Json(json!({
        "message": format!("{name} deleted successfully"),
        "deletedAt": audit.deleted_at.map(iso),
    }))
}

/// A record without an actor: created and changed through the core's
/// catalog (`warden_domain::catalog`), never by the handler itself.
pub(crate) trait PlainResource: Resource + catalog::Plain {
    /// A new record with the core's defaults, owned by the caller.
    fn blank(p: &Principal) -> Self;
    /// Parses a client's body (shapes) and applies it by the core's rules;
    /// `create` makes the required fields required.
    fn apply_body(&mut self, body: Map<String, Value>, create: bool) -> AiwmResult<()>;
}

use crate::auth::CurrentUser;
type AiwmUser = CurrentUser<Aiwm>;
use axum::extract::{Path, State};

/// `GET {base}`: the caller's organisation's records, paged.
pub(crate) async fn list_handler<R: Resource>(
    State(state): State<AppState>,
    CurrentUser(p, _): AiwmUser,
    q: AiwmQuery,
) -> AiwmResult<Json<Value>> {
    list::<R>(&state, &p, &q)
}

/// `GET {base}/{id}`: by `_id` or by the record's key.
pub(crate) async fn get_handler<R: Resource>(
    State(state): State<AppState>,
    CurrentUser(p, _): AiwmUser,
    Path(id): Path<String>,
) -> AiwmResult<Json<Value>> {
    Ok(Json(find_visible::<R>(&state, &p, &id)?.view()))
}

pub(crate) async fn create_handler<R: PlainResource>(
    State(state): State<AppState>,
    CurrentUser(p, _): AiwmUser,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<(StatusCode, Json<Value>)> {
    require_write(&p, "create")?;
    let mut record = R::blank(&p);
    record.apply_body(body, true)?;
    let record = catalog::create(&state.store, record).await?;
    Ok((StatusCode::CREATED, Json(record.view())))
}

pub(crate) async fn update_handler<R: PlainResource>(
    State(state): State<AppState>,
    CurrentUser(p, _): AiwmUser,
    Path(id): Path<String>,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "update")?;
    let found: R = find_visible(&state, &p, &id)?;
    let updated: R = catalog::update(&state.store, found.id(), &p.user_id, |r: &mut R| {
        r.apply_body(body.clone(), false)
            .map_err(|e| DomainError::Invalid(e.errors))
    })
    .await
    .map_err(|e| not_found_as(e, R::NAME, &id))?;
    Ok(Json(updated.view()))
}

pub(crate) async fn delete_handler<R: PlainResource>(
    State(state): State<AppState>,
    CurrentUser(p, _): AiwmUser,
    Path(id): Path<String>,
) -> AiwmResult<Json<Value>> {
    soft_delete::<R>(&state, &p, &id).await
}

/// The five CRUD routes of a plain record.
pub(crate) fn plain_routes<R: PlainResource>(
    base: &'static str,
    item: &'static str,
    tag: &'static str,
) -> Api {
    let name = R::NAME.to_lowercase();
    Api::new()
        .post(base, tag, format!("Create a {name}"), create_handler::<R>)
        .get(
            base,
            tag,
            format!("List {name}s (page, limit, filter[field], sort)"),
            list_handler::<R>,
        )
        .get(
            item,
            tag,
            format!("Get a {name} by _id or {}", R::KEY),
            get_handler::<R>,
        )
        .put(item, tag, format!("Update a {name}"), update_handler::<R>)
        .delete(
            item,
            tag,
            format!("Soft-delete a {name}"),
            delete_handler::<R>,
        )
}
