//! Contenox functions and event triggers (WORKFLOWS.md §3, §4 H):
//! `/functions`, `/event-triggers`, `/executor/sync`. The records are
//! `warden_domain::function`; the dispatcher that runs them on events is
//! `warden_supervisors::Automation`. Unknown fields round-trip; lists are
//! oldest first, paged by `limit` and an RFC 3339 `cursor`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use warden_domain::function::{Function, Trigger};
use warden_storage::{Record, Write};

use super::backends::PageQuery as PageParams;
use super::{Contenox, ContenoxResult, unprocessable, writer};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;
use crate::paging::Window;

type Caller = CurrentUser<Contenox>;
type JsonIn = JsonBody<Contenox>;

/// A record's modelled fields over its extras (JSON object text).
fn with_extras(extras: &str, fields: Value) -> Value {
    let mut out: Map<String, Value> = serde_json::from_str(extras).unwrap_or_default();
    if let Value::Object(f) = fields {
        out.extend(f);
    }
    Value::Object(out)
}

fn function_view(f: &Function) -> Value {
    with_extras(
        &f.extras,
        json!({
            "name": f.name,
            "description": f.description,
            "scriptType": f.script_type,
            "script": f.script,
            "createdAt": iso(f.created_at),
            "updatedAt": iso(f.updated_at),
        }),
    )
}

fn trigger_view(t: &Trigger) -> Value {
    with_extras(
        &t.extras,
        json!({
            "name": t.name,
            "description": t.description,
            "type": t.kind,
            "listenFor": {"type": t.listen_for},
            "function": t.function,
            "createdAt": iso(t.created_at),
            "updatedAt": iso(t.updated_at),
        }),
    )
}

/// One page of an organisation's records, oldest first, created after
/// the cursor.
fn page<T: Record>(state: &AppState, org: &str, q: &PageParams) -> ContenoxResult<Vec<T>> {
    let (limit, after) = q.read()?;
    let page =
        Window::cursor(after, limit).read::<T>(&state.store, warden_domain::CREATED, org, false)?;
    Ok(page.items.into_iter().map(|(_, r)| r).collect())
}

/// Stores a new record whose id is its organisation and name: 409 when
/// the name is taken.
async fn create_named<T: Record>(state: &AppState, record: T, name: &str) -> ContenoxResult<T> {
    if state.store.get::<T>(record.id())?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("name '{name}' already exists"),
        ));
    }
    match state.store.commit(vec![Write::insert(&record)?]).await {
        Ok(_) => Ok(record),
        Err(warden_storage::StorageError::VersionMismatch { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("name '{name}' already exists"),
        )),
        Err(e) => Err(e.into()),
    }
}

fn missing(kind: &str, name: &str) -> ApiError<Contenox> {
    ApiError::new(StatusCode::NOT_FOUND, format!("{kind} '{name}' not found"))
}

async fn function_create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonIn,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let f = Function::from_body(&body, None, p.owner()).map_err(unprocessable)?;
    let name = f.name.clone();
    let f = create_named(&state, f, &name).await?;
    Ok((StatusCode::CREATED, Json(function_view(&f))))
}

async fn function_list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<PageParams>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let items = page::<Function>(&state, &p.org_id, &q)?;
    Ok(Json(items.iter().map(function_view).collect()))
}

fn find_function(state: &AppState, org: &str, name: &str) -> ContenoxResult<Function> {
    Function::get(&state.store, org, name)?.ok_or_else(|| missing("function", name))
}

async fn function_get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(name): Path<String>,
) -> ContenoxResult<Json<Value>> {
    Ok(Json(function_view(&find_function(
        &state, &p.org_id, &name,
    )?)))
}

async fn function_update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(name): Path<String>,
    JsonBody(body, _): JsonIn,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    let old = find_function(&state, &p.org_id, &name)?;
    let mut f =
        Function::from_body(&body, Some(&name), old.owner.clone()).map_err(unprocessable)?;
    f.created_at = old.created_at;
    state.store.put(&f).await?;
    Ok(Json(function_view(&f)))
}

async fn function_delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(name): Path<String>,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    let f = find_function(&state, &p.org_id, &name)?;
    state.store.remove::<Function>(f.id()).await?;
    Ok(Json(json!("function removed")))
}

async fn trigger_create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonIn,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let t = Trigger::from_body(&body, None, p.owner()).map_err(unprocessable)?;
    let name = t.name.clone();
    let t = create_named(&state, t, &name).await?;
    Ok((StatusCode::CREATED, Json(trigger_view(&t))))
}

async fn trigger_list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<PageParams>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let items = page::<Trigger>(&state, &p.org_id, &q)?;
    Ok(Json(items.iter().map(trigger_view).collect()))
}

async fn triggers_for_type(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(event_type): Path<String>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let items = Trigger::listening(&state.store, &p.org_id, &event_type)?;
    Ok(Json(items.iter().map(trigger_view).collect()))
}

async fn triggers_for_function(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(function): Path<String>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let items = Trigger::of_function(&state.store, &p.org_id, &function)?;
    Ok(Json(items.iter().map(trigger_view).collect()))
}

fn find_trigger(state: &AppState, org: &str, name: &str) -> ContenoxResult<Trigger> {
    Trigger::get(&state.store, org, name)?.ok_or_else(|| missing("event trigger", name))
}

async fn trigger_get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(name): Path<String>,
) -> ContenoxResult<Json<Value>> {
    Ok(Json(trigger_view(&find_trigger(&state, &p.org_id, &name)?)))
}

async fn trigger_update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(name): Path<String>,
    JsonBody(body, _): JsonIn,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    let old = find_trigger(&state, &p.org_id, &name)?;
    let mut t = Trigger::from_body(&body, Some(&name), old.owner.clone()).map_err(unprocessable)?;
    t.created_at = old.created_at;
    state.store.put(&t).await?;
    Ok(Json(trigger_view(&t)))
}

async fn trigger_delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(name): Path<String>,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    let t = find_trigger(&state, &p.org_id, &name)?;
    state.store.remove::<Trigger>(t.id()).await?;
    Ok(Json(json!("event trigger removed")))
}

/// Warden keeps no trigger or script cache: what is committed is what the
/// next event runs. The barrier answers as the original's does.
async fn executor_sync(CurrentUser(_p, _): Caller) -> Json<Value> {
    Json(json!("sync triggered"))
}

pub(super) fn routes() -> Api {
    let f = "contenox: functions";
    Api::new()
        .post(
            "/functions",
            f,
            "Store a function {name, description, scriptType, script}",
            function_create,
        )
        .get(
            "/functions",
            f,
            "Functions, oldest first (limit, cursor)",
            function_list,
        )
        .get("/functions/{name}", f, "A function", function_get)
        .put(
            "/functions/{name}",
            f,
            "Replace a function",
            function_update,
        )
        .delete("/functions/{name}", f, "Delete a function", function_delete)
        .post(
            "/event-triggers",
            f,
            "Store a trigger {name, description, type: function, listenFor: {type}, function}",
            trigger_create,
        )
        .get(
            "/event-triggers",
            f,
            "Event triggers, oldest first (limit, cursor)",
            trigger_list,
        )
        .get(
            "/event-triggers/event-type/{eventType}",
            f,
            "The triggers listening for an event type",
            triggers_for_type,
        )
        .get(
            "/event-triggers/function/{functionName}",
            f,
            "The triggers that run a function",
            triggers_for_function,
        )
        .get("/event-triggers/{name}", f, "An event trigger", trigger_get)
        .put(
            "/event-triggers/{name}",
            f,
            "Replace an event trigger",
            trigger_update,
        )
        .delete(
            "/event-triggers/{name}",
            f,
            "Delete an event trigger",
            trigger_delete,
        )
        .post(
            "/executor/sync",
            f,
            "Barrier: functions and triggers committed before it are in use",
            executor_sync,
        )
}
