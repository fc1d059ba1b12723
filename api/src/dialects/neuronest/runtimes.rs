//! Neuronest runtimes (`/api/runtimes`, VAREON-NEURONEST.md §3B) and the
//! project files they run (`/api/projects/{id}/files`, a Warden extension
//! mirroring NeuroNest's own code: its runtimes need files to run, and
//! the reference has no route for them).
//!
//! A runtime is a core deployment of type `runtime` (AIWM's
//! `/api/deployments` lists it): `id` is its `_id`, `container_id` the
//! process (`proc-<pid>`), `port` and `url` its port and address,
//! `status` neuronest's. Runtimes are their users' own: anyone else's is
//! not found.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Map, Value, json};
use warden_actors::deployment::Deployment;
use warden_actors::runtime::{RuntimeDef, inside, is_name, status_of};
use warden_identity::Principal;
use warden_storage::series::Range;

use super::{Body, Caller, Neuronest, Result};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

fn view(d: &Deployment) -> Value {
    let def = RuntimeDef::of(d).unwrap_or_default();
    json!({
        "id": d.id,
        "project_id": def.project_id,
        "user_id": d.owner.user_id,
        "language": def.language,
        "status": status_of(d),
        "environment_vars": def.environment_vars,
        "entry_point": def.entry_point,
        "container_id": d.container_name,
        "port": d.container_port,
        "url": d.endpoint,
        "timeout": def.timeout,
        "created_at": iso(d.audit.created_at),
        "updated_at": iso(d.audit.updated_at),
    })
}

fn invalid(errors: Vec<String>) -> ApiError<Neuronest> {
    ApiError::validation(errors)
}

/// Reads a runtime body over `base` (a create starts from nothing; an
/// update from the stored definition). `environment_vars` is replaced
/// whole.
fn read(
    state: &AppState,
    body: Map<String, Value>,
    base: RuntimeDef,
    create: bool,
) -> Result<RuntimeDef> {
    let mut errors = Vec::new();
    let mut def = base;
    let text = |key: &str, required: bool, errors: &mut Vec<String>| -> Option<String> {
        match body.get(key) {
            None | Some(Value::Null) if required => {
                errors.push(format!("{key} field required"));
                None
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.push(format!("{key} must be a string"));
                None
            }
        }
    };
    if create {
        if let Some(p) = text("project_id", true, &mut errors) {
            def.project_id = p;
        }
        if let Some(l) = text("language", true, &mut errors) {
            def.language = l;
        }
    } else {
        for fixed in ["project_id", "language"] {
            if body.get(fixed).is_some_and(|v| !v.is_null()) {
                errors.push(format!("{fixed} cannot change: create another runtime"));
            }
        }
    }
    if let Some(e) = text("entry_point", create, &mut errors) {
        def.entry_point = e;
    }
    match body.get("environment_vars") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            let mut vars = BTreeMap::new();
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        vars.insert(k.clone(), s.clone());
                    }
                    _ => errors.push(format!("environment_vars: {k} must be a string")),
                }
            }
            def.environment_vars = vars;
        }
        Some(_) => errors.push("environment_vars must be an object".into()),
    }
    match body.get("timeout") {
        None | Some(Value::Null) if create => def.timeout = 300,
        None | Some(Value::Null) => {}
        Some(v) => match v.as_i64() {
            Some(t) if t > 0 => def.timeout = t as u64,
            Some(_) => def.timeout = 0,
            None => errors.push("timeout must be an integer".into()),
        },
    }
    let max = state.runtime.runtimes.policy().max_timeout;
    if errors.is_empty() {
        errors = def.problems(max);
    }
    if errors.is_empty() {
        Ok(def)
    } else {
        Err(invalid(errors))
    }
}

fn not_found() -> ApiError<Neuronest> {
    ApiError::new(axum::http::StatusCode::NOT_FOUND, "Runtime not found")
}

fn mine(state: &AppState, p: &Principal, id: &str) -> Result<Deployment> {
    state
        .runtime
        .runtimes
        .get(&p.user_id, id)
        .map_err(|_| not_found())
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body,
) -> Result<Json<Value>> {
    crate::dialects::vareon::writer(&p)?;
    let def = read(&state, body, RuntimeDef::default(), true)?;
    let d = state
        .runtime
        .runtimes
        .create(p.owner(), def, &p.user_id)
        .await?;
    Ok(Json(view(&d)))
}

#[derive(serde::Deserialize)]
struct ListQuery {
    project_id: Option<String>,
    status: Option<String>,
    language: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Value>>> {
    let all = state.runtime.runtimes.list(&p.owner())?;
    Ok(Json(
        all.iter()
            .map(view)
            .filter(|v| {
                q.project_id
                    .as_ref()
                    .is_none_or(|x| v["project_id"] == x.as_str())
                    && q.status.as_ref().is_none_or(|x| v["status"] == x.as_str())
                    && q.language
                        .as_ref()
                        .is_none_or(|x| v["language"] == x.as_str())
            })
            .collect(),
    ))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    Ok(Json(view(&mine(&state, &p, &id)?)))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): Body,
) -> Result<Json<Value>> {
    crate::dialects::vareon::writer(&p)?;
    let d = mine(&state, &p, &id)?;
    let base = RuntimeDef::of(&d).unwrap_or_default();
    let def = read(&state, body, base, false)?;
    let d = state.runtime.runtimes.update(&d, def, &p.user_id).await?;
    Ok(Json(view(&d)))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    crate::dialects::vareon::writer(&p)?;
    let d = mine(&state, &p, &id)?;
    state.runtime.runtimes.delete(&d, &p.user_id).await?;
    Ok(Json(json!({"message": "Runtime deleted successfully"})))
}

async fn start(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    crate::dialects::vareon::writer(&p)?;
    let d = mine(&state, &p, &id)?;
    state.runtime.runtimes.start(&d).await?;
    Ok(Json(json!({"message": "Runtime starting"})))
}

async fn stop(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    crate::dialects::vareon::writer(&p)?;
    let d = mine(&state, &p, &id)?;
    state.runtime.runtimes.stop(&d).await?;
    Ok(Json(json!({"message": "Runtime stopped"})))
}

async fn restart(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    crate::dialects::vareon::writer(&p)?;
    let d = mine(&state, &p, &id)?;
    state.runtime.runtimes.restart(&d).await?;
    Ok(Json(json!({"message": "Runtime restarting"})))
}

#[derive(serde::Deserialize)]
struct LogsQuery {
    limit: Option<String>,
}

async fn logs(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<Vec<Value>>> {
    let d = mine(&state, &p, &id)?;
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=10_000).contains(&n) => n,
        Some(_) => {
            return Err(invalid(vec![
                "limit must be an integer from 1 to 10000".into(),
            ]));
        }
    };
    let range = Range {
        limit,
        newest_first: true,
        ..Range::default()
    };
    let mut points = state
        .store
        .points(&warden_actors::deployment::logs_series(&d.id), range)?;
    points.reverse();
    Ok(Json(
        points
            .iter()
            .map(|pt| {
                let line: Value = serde_json::from_slice(&pt.value).unwrap_or(Value::Null);
                json!({
                    "id": pt.id,
                    "runtime_id": d.id,
                    "user_id": d.owner.user_id,
                    "type": line["type"].as_str().unwrap_or("info"),
                    "message": line["message"].as_str().unwrap_or_default(),
                    "timestamp": iso(pt.at),
                })
            })
            .collect(),
    ))
}

// Project files.

/// The most a project file may hold.
const MAX_FILE: usize = 1024 * 1024;

fn project_path(
    state: &AppState,
    p: &Principal,
    project: &str,
    path: Option<&str>,
) -> Result<std::path::PathBuf> {
    if !is_name(project) {
        return Err(invalid(vec![
            "project_id must be 1 to 128 letters, digits, '.', '_' or '-'".into(),
        ]));
    }
    let dir = state
        .runtime
        .runtimes
        .policy()
        .project_dir(&p.org_id, project);
    match path {
        None => Ok(dir),
        Some(path) if inside(path) => Ok(dir.join(path)),
        Some(_) => Err(invalid(vec![
            "path must be a relative path inside the project (no '..', not absolute)".into(),
        ])),
    }
}

async fn write_file(
    state: &AppState,
    p: &Principal,
    project: &str,
    path: &str,
    content: &str,
) -> Result<Json<Value>> {
    crate::dialects::vareon::writer(p)?;
    if content.len() > MAX_FILE {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "a project file holds at most 1 MiB",
        ));
    }
    let target = project_path(state, p, project, Some(path))?;
    let dir = target
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let (target2, content) = (target.clone(), content.to_owned());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        // Written beside, then renamed: a reader never sees half a file.
        let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
        std::fs::write(&tmp, content.as_bytes())?;
        std::fs::rename(&tmp, &target2)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(Json(
        json!({"project_id": project, "path": path, "size": target.metadata().map(|m| m.len()).unwrap_or(0)}),
    ))
}

async fn create_file(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(project): Path<String>,
    JsonBody(body, _): Body,
) -> Result<Json<Value>> {
    let path = body.get("path").and_then(Value::as_str);
    let content = body.get("content").and_then(Value::as_str);
    let (Some(path), Some(content)) = (path, content) else {
        return Err(invalid(vec![
            "path and content (strings) are required".into(),
        ]));
    };
    write_file(&state, &p, &project, path, content).await
}

async fn put_file(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path((project, path)): Path<(String, String)>,
    JsonBody(body, _): Body,
) -> Result<Json<Value>> {
    let Some(content) = body.get("content").and_then(Value::as_str) else {
        return Err(invalid(vec!["content (a string) is required".into()]));
    };
    write_file(&state, &p, &project, &path, content).await
}

async fn delete_file(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path((project, path)): Path<(String, String)>,
) -> Result<Json<Value>> {
    crate::dialects::vareon::writer(&p)?;
    let target = project_path(&state, &p, &project, Some(&path))?;
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_file() => {
            std::fs::remove_file(&target).map_err(ApiError::internal)?;
            Ok(Json(json!({"message": "File deleted successfully"})))
        }
        _ => Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "File not found",
        )),
    }
}

async fn list_files(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(project): Path<String>,
) -> Result<Json<Vec<Value>>> {
    let dir = project_path(&state, &p, &project, None)?;
    if !dir.is_dir() {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "Project not found",
        ));
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).map_err(ApiError::internal)? {
            let entry = entry.map_err(ApiError::internal)?;
            let kind = entry.file_type().map_err(ApiError::internal)?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(&dir)
                    .map(|r| r.display().to_string())
                    .unwrap_or_default();
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(json!({"path": rel, "size": size}));
            }
        }
    }
    out.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    Ok(Json(out))
}

pub(super) fn routes() -> Api {
    let t = "neuronest: runtimes";
    let f = "neuronest: project files";
    Api::new()
        .post("/api/runtimes", t, "Create a runtime (its project's entry point, run by the language's interpreter)", create)
        .get("/api/runtimes", t, "The caller's runtimes (project_id, status, language)", list)
        .get("/api/runtimes/{runtime_id}", t, "A runtime", get)
        .put("/api/runtimes/{runtime_id}", t, "Change entry_point, environment_vars (replaced whole), timeout: used by the next start", update)
        .delete("/api/runtimes/{runtime_id}", t, "Stop and delete a runtime and its files", delete)
        .post("/api/runtimes/{runtime_id}/start", t, "Start a run (answers at once)", start)
        .post("/api/runtimes/{runtime_id}/stop", t, "Stop the run (answers once its processes are gone)", stop)
        .post("/api/runtimes/{runtime_id}/restart", t, "Stop, then start", restart)
        .get("/api/runtimes/{runtime_id}/logs", t, "The last `limit` (100) log lines, oldest first", logs)
        .post("/api/projects/{project_id}/files", f, "Write a project file {path, content}", create_file)
        .get("/api/projects/{project_id}/files", f, "A project's files", list_files)
        .put("/api/projects/{project_id}/files/{*path}", f, "Write a project file {content}", put_file)
        .delete("/api/projects/{project_id}/files/{*path}", f, "Delete a project file", delete_file)
}
