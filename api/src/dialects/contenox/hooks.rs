//! Contenox remote hooks (`/hooks/remote*`, `/hooks/schemas`,
//! `/supported`; WORKFLOWS.md §4 D): tool servers chain tasks call
//! (`hook` tasks, `actors/src/execution/hook_call.rs`). Stored per
//! organisation, unique by name; creating one never contacts it;
//! `/hooks/schemas` fetches each hook's `openapi.json` live and leaves
//! out those that do not answer.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use warden_domain::catalog;
use warden_domain::hook::{self, Hook, HookInput};

use super::backends::PageQuery;
use super::{Contenox, ContenoxResult, unprocessable, writer};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;
use crate::paging::Window;

type Caller = CurrentUser<Contenox>;
type Body = JsonBody<Contenox>;

fn view(h: &Hook) -> Value {
    let mut v = json!({
        "id": h.id,
        "name": h.name,
        "endpointUrl": h.endpoint_url,
        "timeoutMs": h.timeout_ms,
        "createdAt": iso(h.audit.created_at),
        "updatedAt": iso(h.audit.updated_at),
    });
    if let Some(headers) = Hook::json(&h.headers) {
        v["headers"] = headers;
    }
    if let Some(p) = Hook::json(&h.properties) {
        v["properties"] = p;
    }
    v
}

fn find(state: &AppState, org: &str, id: &str) -> ContenoxResult<Hook> {
    Ok(warden_domain::find_in_org(
        &state.store,
        org,
        id,
        "",
        "Remote hook",
    )?)
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let input = HookInput::from_body(&body).map_err(unprocessable)?;
    let h = Hook::new(input, p.owner(), &p.user_id).map_err(unprocessable)?;
    let h = catalog::create(&state.store, h).await?;
    Ok((StatusCode::CREATED, Json(view(&h))))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<PageQuery>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let (limit, before) = q.read()?;
    let scope = warden_domain::org_scope(Some(&p.org_id));
    let page = Window::cursor(before, limit).read::<Hook>(
        &state.store,
        warden_domain::CREATED,
        &scope,
        true,
    )?;
    Ok(Json(page.items.iter().map(|(_, h)| view(h)).collect()))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    Ok(Json(view(&find(&state, &p.org_id, &id)?)))
}

async fn by_name(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(name): Path<String>,
) -> ContenoxResult<Json<Value>> {
    let h = hook::by_name(&state.store, &p.org_id, &name)?
        .ok_or_else(|| ApiError::not_found("Remote hook", &name))?;
    Ok(Json(view(&h)))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): Body,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    let h = find(&state, &p.org_id, &id)?;
    let input = HookInput::from_body(&body).map_err(unprocessable)?;
    let mut check = h.clone();
    check.apply(input.clone(), false).map_err(unprocessable)?;
    let h = catalog::update::<Hook>(&state.store, &h.id, &p.user_id, |h| {
        h.apply(input.clone(), false)
    })
    .await?;
    Ok(Json(view(&h)))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    let h = find(&state, &p.org_id, &id)?;
    catalog::soft_delete::<Hook>(&state.store, &h.id, &p.user_id).await?;
    Ok(Json(json!("deleted")))
}

fn all(state: &AppState, org: &str) -> ContenoxResult<Vec<Hook>> {
    let scope = warden_domain::org_scope(Some(org));
    Ok(state
        .store
        .in_scope::<Hook>(warden_domain::CREATED, &scope)?
        .into_iter()
        .filter(|h| h.audit.deleted_at.is_none())
        .collect())
}

/// Each hook's served `openapi.json`, by name, fetched at once; a hook
/// that does not answer (within its timeout, at most 5 s) is left out.
async fn schemas(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ContenoxResult<Json<Value>> {
    let hooks = all(&state, &p.org_id)?;
    let egress = state.runtime.egress.clone();
    let fetches = hooks.iter().map(|h| {
        let egress = egress.clone();
        async move {
            let limit = Duration::from_millis(h.timeout_ms.clamp(1, 5000));
            let Ok(url) = reqwest::Url::parse(&format!("{}/openapi.json", h.endpoint_url)) else {
                return (h.name.clone(), None);
            };
            if let Err(e) = egress.check(&url).await {
                tracing::info!(hook = %h.name, error = %e, "hook schema not fetched");
                return (h.name.clone(), None);
            }
            let mut req = egress.client().get(url).timeout(limit);
            for (k, v) in h.header_pairs() {
                req = req.header(k, v);
            }
            let spec = match req.send().await {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                _ => None,
            };
            (h.name.clone(), spec)
        }
    });
    let mut out = Map::new();
    for (name, spec) in futures_util::future::join_all(fetches).await {
        if let Some(spec) = spec {
            out.insert(name, spec);
        }
    }
    Ok(Json(Value::Object(out)))
}

/// The hooks a chain task may name.
async fn supported(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ContenoxResult<Json<Vec<String>>> {
    Ok(Json(
        all(&state, &p.org_id)?
            .into_iter()
            .map(|h| h.name)
            .collect(),
    ))
}

pub(super) fn routes() -> Api {
    let t = "contenox: hooks";
    Api::new()
        .post(
            "/hooks/remote",
            t,
            "Register a remote hook {name, endpointUrl, timeoutMs, headers?, properties?}",
            create,
        )
        .get(
            "/hooks/remote",
            t,
            "Remote hooks, newest first (limit, cursor)",
            list,
        )
        .get(
            "/hooks/remote/by-name/{name}",
            t,
            "A remote hook by name",
            by_name,
        )
        .get("/hooks/remote/{id}", t, "A remote hook", get)
        .put("/hooks/remote/{id}", t, "Change a remote hook", update)
        .delete("/hooks/remote/{id}", t, "Delete a remote hook", delete)
        .get(
            "/hooks/schemas",
            t,
            "Each hook's served OpenAPI document, by name (those that answer)",
            schemas,
        )
        .get(
            "/supported",
            t,
            "The hook names chain tasks may call",
            supported,
        )
}
