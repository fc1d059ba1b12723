//! Forge edge deployments (`/api/v1/deployments`): a trained model
//! served on an edge target. Targets are the organisation's nodes (AIWM's
//! `/api/nodes`; `POST /deployments/targets` registers one for its
//! `warden node` daemon to connect as), and a deployment is a core
//! deployment (see `serving.rs`). `/binary` and `/download` are the edge
//! bundle: the model's ONNX export and its manifest, as a tar archive.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use warden_actors::deployment::{DeployStatus, Deployment};
use warden_actors::node::{NewNode, Node};
use warden_domain::Model;
use warden_identity::Principal;
use warden_storage::Record;

use super::{Forge, ForgeResult, writer};
use crate::auth::CurrentUser;
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;
use crate::{AppState, artifacts, serving};

type Caller = CurrentUser<Forge>;

/// A target's address: the one it was registered with, else the one
/// its daemon reported.
fn ip(n: &Node) -> Option<String> {
    n.vpn_ip.clone().or_else(|| n.host.ip_address.clone())
}

/// A target's architecture: as registered, else as its daemon reported.
fn arch(n: &Node) -> Option<String> {
    let registered: Value = serde_json::from_str(&n.extra).unwrap_or(Value::Null);
    registered["arch"].as_str().map(str::to_owned).or_else(|| {
        let os: Value = serde_json::from_str(n.host.os.as_deref()?).ok()?;
        os["arch"].as_str().map(str::to_owned)
    })
}

fn org_deployments(state: &AppState, org: &str) -> ForgeResult<Vec<Deployment>> {
    let scope = warden_domain::org_scope(Some(org));
    let mut all = state
        .store
        .in_scope::<Deployment>(warden_domain::CREATED, &scope)?;
    all.reverse();
    Ok(all)
}

/// The trained model a deployment serves, if it serves one.
fn trained_model(state: &AppState, d: &Deployment) -> Option<Model> {
    state
        .store
        .get::<Model>(&d.model_id)
        .ok()
        .flatten()
        .filter(|m| m.trained.is_some() && !m.is_deleted())
}

fn target_view(state: &AppState, n: &Node, deployments: &[Deployment]) -> Value {
    let current = deployments
        .iter()
        .filter(|d| {
            d.status == DeployStatus::Running && (d.node_id == n.id || d.node_id == n.node_id)
        })
        .find_map(|d| trained_model(state, d));
    json!({
        "id": n.node_id,
        "ip": ip(n),
        "name": n.name,
        "status": if serving::is_online(n) { "online" } else { "offline" },
        "current_model": current.as_ref().map(|m| format!("mdl_{}", m.id)),
        "current_model_version": current.as_ref().map(|m| m.version.clone()),
        "arch": arch(n),
        "last_seen": n.last_heartbeat.map(iso),
    })
}

fn view(state: &AppState, d: &Deployment) -> Value {
    let x = serving::extra(d);
    let node = serving::node_of(state, d);
    json!({
        "id": format!("dep_{}", d.id),
        "model_id": format!("mdl_{}", d.model_id),
        "target_id": node.as_ref().map(|n| n.node_id.clone()),
        "target_ip": node.as_ref().and_then(ip),
        "target_name": node.as_ref().map(|n| n.name.clone()),
        "target_arch": node.as_ref().and_then(arch),
        "status": serving::status(state, d).as_str(),
        "endpoint": d.endpoint,
        "binary_size_bytes": x["binary_size_bytes"],
        "deployed_at": serving::deployed_at(d).map(iso),
        "deployed_by": x["deployed_by"],
        "error": serving::failure(d),
        "created_at": iso(d.audit.created_at),
    })
}

/// An edge deployment of the caller's organisation: a deployment of a
/// trained model, by forge's id (`dep_`) or the bare one.
fn find(state: &AppState, p: &Principal, id: &str) -> ForgeResult<(Deployment, Model)> {
    let d: Deployment =
        warden_domain::find_in_org(&state.store, &p.org_id, id, "dep_", "Deployment")?;
    let m = trained_model(state, &d).ok_or_else(|| ApiError::not_found("Deployment", id))?;
    Ok((d, m))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ForgeResult<Json<Vec<Value>>> {
    let all = org_deployments(&state, &p.org_id)?;
    Ok(Json(
        all.iter()
            .filter(|d| trained_model(&state, d).is_some())
            .map(|d| view(&state, d))
            .collect(),
    ))
}

/// The target a request names: `target_id` (a node's id), else
/// `target_ip` (the address it was registered with or reported).
fn target(
    state: &AppState,
    p: &Principal,
    id: Option<&str>,
    address: Option<&str>,
) -> ForgeResult<Node> {
    if let Some(id) = id {
        return state
            .runtime
            .nodes
            .resolve(&p.org_id, id)
            .map_err(|_| ApiError::not_found("Target", id));
    }
    let address = address.unwrap_or_default();
    let scope = warden_domain::org_scope(Some(&p.org_id));
    state
        .store
        .in_scope::<Node>(warden_domain::CREATED, &scope)?
        .into_iter()
        .find(|n| ip(n).as_deref() == Some(address))
        .ok_or_else(|| {
            ApiError::validation(vec![format!(
                "no edge target has the address {address}: register it at /api/v1/deployments/targets"
            )])
        })
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonBody<Forge>,
) -> ForgeResult<(StatusCode, Json<Value>)> {
    writer(&p, "deploy models")?;
    let mut f = Fields::new(body);
    let model_id = f.string("model_id", true);
    let target_id = f.string("target_id", false);
    let target_ip = f.string("target_ip", false);
    f.string("target_name", false);
    if target_id.is_none() && target_ip.is_none() {
        f.error("target_id or target_ip is required".into());
    }
    f.finish_as::<Forge>()?;
    let model_id = model_id.unwrap_or_default();
    let m: Model = warden_domain::find_in_org(&state.store, &p.org_id, &model_id, "mdl_", "Model")?;
    if m.trained.is_none() {
        return Err(ApiError::not_found("Model", &model_id));
    }
    let node = target(&state, &p, target_id.as_deref(), target_ip.as_deref())?;
    let size = artifacts::bundle::<Forge>(&state, &m, Value::Null)
        .await?
        .len();
    let extra = json!({"binary_size_bytes": size, "deployed_by": p.username});
    let d = serving::deploy(&state, &p, &m, &node, extra).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &d))))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<Json<Value>> {
    let (d, _) = find(&state, &p, &id)?;
    Ok(Json(view(&state, &d)))
}

/// Cancels the deployment (its server stops); it stays listed.
async fn cancel(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<Json<Value>> {
    writer(&p, "cancel deployments")?;
    let (d, _) = find(&state, &p, &id)?;
    let d = serving::cancel(&state, &p, &d).await?;
    Ok(Json(view(&state, &d)))
}

/// The edge bundle: `manifest.json` (the model, its inputs and outputs,
/// threshold, hash, the deployment and its target) and `model.onnx`.
async fn bundle(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<Response> {
    let (d, m) = find(&state, &p, &id)?;
    let v = view(&state, &d);
    let about = json!({
        "deployment_id": v["id"],
        "target": {"id": v["target_id"], "ip": v["target_ip"], "name": v["target_name"], "arch": v["target_arch"]},
    });
    let bytes = artifacts::bundle::<Forge>(&state, &m, about).await?;
    Ok(artifacts::attachment(&format!("dep_{}.tar", d.id), bytes))
}

async fn targets(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ForgeResult<Json<Vec<Value>>> {
    let scope = warden_domain::org_scope(Some(&p.org_id));
    let nodes = state
        .store
        .in_scope::<Node>(warden_domain::CREATED, &scope)?;
    let deployments = org_deployments(&state, &p.org_id)?;
    Ok(Json(
        nodes
            .iter()
            .filter(|n| !n.is_deleted())
            .map(|n| target_view(&state, n, &deployments))
            .collect(),
    ))
}

/// Registers an edge target (`ip`, `name`, optional `arch` and `node_id`): a
/// node that a `warden node --node-id <id>` daemon connects as.
async fn add_target(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonBody<Forge>,
) -> ForgeResult<(StatusCode, Json<Value>)> {
    writer(&p, "register edge targets")?;
    let mut f = Fields::new(body);
    let address = f.string("ip", true);
    let name = f.string("name", true);
    let arch = f.string("arch", false);
    let id = f.key("node_id", false);
    if let Some(a) = &address
        && a.parse::<std::net::IpAddr>().is_err()
    {
        f.error(format!("ip must be an IP address (got {a})"));
    }
    f.finish_as::<Forge>()?;
    let address = address.unwrap_or_default();
    let new = NewNode {
        node_id: id.unwrap_or_else(|| format!("edge-{}", address.replace([':', '.'], "-"))),
        name: name.unwrap_or_default(),
        role: vec!["edge".into()],
        vpn_ip: Some(address),
        extra: arch
            .map(|a| json!({"arch": a}).to_string())
            .unwrap_or_default(),
        ..Default::default()
    };
    let n = state
        .runtime
        .nodes
        .create(new, p.owner(), &p.user_id)
        .await?;
    Ok((StatusCode::CREATED, Json(target_view(&state, &n, &[]))))
}

pub(super) fn routes() -> Api {
    let t = "forge: deployments";
    Api::new()
        .get(
            "/api/v1/deployments",
            t,
            "Edge deployments of trained models, newest first",
            list,
        )
        .post(
            "/api/v1/deployments",
            t,
            "Deploy a trained model to an edge target {model_id, target_id | target_ip}",
            create,
        )
        .get(
            "/api/v1/deployments/targets",
            t,
            "Edge targets: the organisation's nodes, online or not, with the model each serves",
            targets,
        )
        .post(
            "/api/v1/deployments/targets",
            t,
            "Register an edge target {ip, name, arch?, node_id?} for a warden node daemon",
            add_target,
        )
        .get(
            "/api/v1/deployments/{id}",
            t,
            "An edge deployment: pending, queued, deploying, deployed, failed or cancelled",
            get,
        )
        .delete(
            "/api/v1/deployments/{id}",
            t,
            "Cancel an edge deployment (its model server stops)",
            cancel,
        )
        .get(
            "/api/v1/deployments/{id}/binary",
            t,
            "The edge bundle (tar: manifest.json, model.onnx)",
            bundle,
        )
        .get(
            "/api/v1/deployments/{id}/download",
            t,
            "The edge bundle (same as /binary)",
            bundle,
        )
}
