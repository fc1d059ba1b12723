//! Vareon myntrix devices (`/api/myntrix/devices/*`, VAREON-NEURONEST.md
//! §2 and §3C). Every node of the caller's organisation is a device
//! (`connection_string` `node://<nodeId>`): its name is the node's, its
//! status is the node's liveness while vareon's control is attached
//! (`connect`/`disconnect`), and commands go to its daemon as one-step
//! executions through the node actor (durable, sent once, visible as a
//! job). Devices with any other connection string are plain records:
//! Warden has no driver for serial ports or LAN addresses (a generic one
//! would be SSRF into the LAN), so it stores them and refuses to connect.

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};
use warden_actors::execution::{ExecStatus, Execution, NewExecution, NewStep, StepCommand};
use warden_actors::node::{Node, NodePatch, NodeStatus};
use warden_domain::device::{
    self, DEVICE_STATUSES, Device, DeviceFile, DeviceInput, NODE_SCHEME, Target,
};
use warden_domain::{CREATED, catalog, dataset, org_scope};
use warden_identity::Principal;

use super::{SkipLimit, Vareon, VareonBody, VareonError, VareonResult, writer};
use crate::AppState;
use crate::auth::{CurrentUser, OrgMember};
use crate::dialects::{Fields, JsonBody, iso, upload};
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Vareon>;

/// The daemon commands a device command may name: those a daemon runs
/// without arguments (the others need data only their own routes build).
pub(super) const COMMANDS: [&str; 1] = ["system.healthCheck"];

/// The node facts shown in a node device's `configuration`: read-only,
/// never stored from a client's body.
const NODE_FACTS: [&str; 4] = ["cpuCores", "ramTotal", "gpuDevices", "os"];

/// A device of the caller's organisation.
pub(super) enum Found {
    /// A node, with vareon's fields of it when a client set any.
    Node(Box<Node>, Option<Device>),
    Plain(Device),
}

fn configuration(text: &str) -> Map<String, Value> {
    serde_json::from_str(text).unwrap_or_default()
}

/// A node device's status: the node's liveness while attached.
fn node_status(n: &Node, facts: Option<&Device>) -> &'static str {
    let attached = facts.is_none_or(|d| d.attached);
    match n.status {
        NodeStatus::Maintenance => "maintenance",
        NodeStatus::Online if attached => "connected",
        _ => "disconnected",
    }
}

fn node_view(n: &Node, facts: Option<&Device>) -> Value {
    let mut config = facts
        .map(|d| configuration(&d.configuration))
        .unwrap_or_default();
    config.insert("cpuCores".into(), json!(n.cpu_cores));
    config.insert("ramTotal".into(), json!(n.ram_total));
    config.insert(
        "gpuDevices".into(),
        json!(
            n.gpu_devices
                .iter()
                .map(|g| json!({"deviceId": g.device_id, "model": g.model}))
                .collect::<Vec<_>>()
        ),
    );
    if let Some(os) = &n.host.os {
        config.insert(
            "os".into(),
            serde_json::from_str(os).unwrap_or_else(|_| json!(os)),
        );
    }
    json!({
        "id": n.id,
        "owner_id": n.owner.user_id,
        "name": n.name,
        "type": facts.map_or(device::NODE_DEVICE_TYPE, |d| d.kind.as_str()),
        "connection_string": format!("{NODE_SCHEME}{}", n.node_id),
        "status": node_status(n, facts),
        "last_seen": n.last_heartbeat.map(iso),
        "firmware_version": n.host.daemon_version,
        "configuration": config,
    })
}

fn plain_view(d: &Device) -> Value {
    json!({
        "id": d.id,
        "owner_id": d.owner.user_id,
        "name": d.name,
        "type": d.kind,
        "connection_string": d.connection_string,
        "status": d.status,
        "last_seen": d.last_seen.map(iso),
        "firmware_version": d.firmware_version,
        "configuration": configuration(&d.configuration),
    })
}

impl Found {
    pub(super) fn view(&self) -> Value {
        match self {
            Found::Node(n, facts) => node_view(n, facts.as_ref()),
            Found::Plain(d) => plain_view(d),
        }
    }

    /// The device's `type`.
    pub(super) fn kind(&self) -> &str {
        match self {
            Found::Node(_, facts) => facts
                .as_ref()
                .map_or(device::NODE_DEVICE_TYPE, |d| d.kind.as_str()),
            Found::Plain(d) => &d.kind,
        }
    }

    pub(super) fn name(&self) -> &str {
        match self {
            Found::Node(n, _) => &n.name,
            Found::Plain(d) => &d.name,
        }
    }

    /// Whether it is a node whose control is attached and which is online.
    pub(super) fn is_connected(&self) -> bool {
        matches!(self, Found::Node(n, facts) if node_status(n, facts.as_ref()) == "connected")
    }

    fn created_at(&self) -> i64 {
        match self {
            Found::Node(n, _) => n.audit.created_at,
            Found::Plain(d) => d.audit.created_at,
        }
    }
}

/// The caller's organisation's devices: its nodes and its plain devices,
/// oldest first.
pub(super) fn all(state: &AppState, org: &str) -> VareonResult<Vec<Found>> {
    let scope = org_scope(Some(org));
    let records = state.store.in_scope::<Device>(CREATED, &scope)?;
    let (mut facts, plain): (Vec<Device>, Vec<Device>) = records
        .into_iter()
        .filter(|d| d.audit.deleted_at.is_none())
        .partition(|d| d.node);
    let mut out: Vec<Found> = state
        .store
        .in_scope::<Node>(CREATED, &scope)?
        .into_iter()
        .filter(|n| n.audit.deleted_at.is_none())
        .map(|n| {
            let mine = facts
                .iter()
                .position(|d| d.id == n.id)
                .map(|i| facts.swap_remove(i));
            Found::Node(Box::new(n), mine)
        })
        .collect();
    out.extend(plain.into_iter().map(Found::Plain));
    out.sort_by_key(Found::created_at);
    Ok(out)
}

/// A device of the caller's organisation by id (a node also by its
/// `nodeId`); any other organisation's is not found.
pub(super) fn find(state: &AppState, p: &Principal, id: &str) -> VareonResult<Found> {
    if let Ok(n) = state.runtime.nodes.resolve(&p.org_id, id)
        && n.owner.org_id == p.org_id
    {
        let facts = state
            .store
            .get::<Device>(&n.id)?
            .filter(|d| d.node && d.audit.deleted_at.is_none());
        return Ok(Found::Node(Box::new(n), facts));
    }
    state
        .store
        .get::<Device>(id)?
        .filter(|d| !d.node && d.audit.deleted_at.is_none() && d.owner.org_id == p.org_id)
        .map(Found::Plain)
        .ok_or_else(|| ApiError::not_found("Device", id))
}

/// Reads a device body (FastAPI's field names).
fn read(body: Map<String, Value>, create: bool) -> VareonResult<DeviceInput> {
    let mut f = Fields::new(body);
    let name = f.string("name", create);
    let kind = f.string("type", create);
    let connection_string = f.string_max("connection_string", create, 1024);
    let status = f.one_of("status", &DEVICE_STATUSES, false);
    let firmware_version = f.string("firmware_version", false);
    let last_seen = match f.string("last_seen", false) {
        None => None,
        Some(s) => match chrono::DateTime::parse_from_rfc3339(&s)
            .or_else(|_| chrono::DateTime::parse_from_rfc3339(&format!("{s}Z")))
        {
            Ok(t) => Some(Some(t.timestamp_millis())),
            Err(_) => {
                f.error("last_seen must be an ISO 8601 date-time".into());
                None
            }
        },
    };
    let configuration = f.json("configuration", true);
    f.drop(&["id", "owner_id"]);
    f.finish_as::<Vareon>()?;
    Ok(DeviceInput {
        name,
        kind,
        connection_string,
        status,
        last_seen,
        firmware_version: firmware_version.map(Some),
        configuration,
    })
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): VareonBody,
) -> VareonResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let input = read(body, true)?;
    if let Some(Target::Node(node)) = input.connection_string.as_deref().map(device::target) {
        return Err(match state.runtime.nodes.resolve(&p.org_id, &node) {
            Ok(n) if n.owner.org_id == p.org_id => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "node {node} is already a device (id {}): every node of the organisation is one",
                    n.id
                ),
            ),
            _ => ApiError::validation(vec![format!(
                "connection_string: no node {node} in your organisation"
            )]),
        });
    }
    let mut d = Device::plain(p.owner(), &p.user_id);
    d.apply(input, true)?;
    let d = catalog::create(&state.store, d).await?;
    Ok((StatusCode::CREATED, Json(plain_view(&d))))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<SkipLimit>,
) -> VareonResult<Json<Vec<Value>>> {
    let (skip, limit) = q.parse()?;
    let all = all(&state, &p.org_id)?;
    Ok(Json(
        all.iter().skip(skip).take(limit).map(Found::view).collect(),
    ))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    Ok(Json(find(&state, &p, &id)?.view()))
}

/// Changes vareon's fields of a node (its record made on first change).
async fn change_node_facts(
    state: &AppState,
    p: &Principal,
    n: &Node,
    mut change: impl FnMut(&mut Device) -> Result<(), warden_domain::DomainError>,
) -> VareonResult<Device> {
    let updated = catalog::update::<Device>(&state.store, &n.id, &p.user_id, &mut change).await;
    match updated {
        Err(warden_domain::DomainError::NotFound { .. }) => {
            let mut d = Device::of_node(&n.id, n.owner.clone(), &p.user_id);
            change(&mut d)?;
            match catalog::create(&state.store, d).await {
                // Another request made it first: change that one.
                Err(warden_domain::DomainError::Conflict { .. }) => {
                    Ok(catalog::update::<Device>(&state.store, &n.id, &p.user_id, change).await?)
                }
                other => Ok(other?),
            }
        }
        other => Ok(other?),
    }
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    writer(&p)?;
    let found = find(&state, &p, &id)?;
    match found {
        Found::Plain(d) => {
            let input = read(body, false)?;
            let d = catalog::update::<Device>(&state.store, &d.id, &p.user_id, |d| {
                d.apply(input.clone(), false)
            })
            .await?;
            Ok(Json(plain_view(&d)))
        }
        Found::Node(n, _) => {
            let mut body = body;
            // Liveness and the daemon's facts are the node's own.
            for key in ["status", "last_seen", "firmware_version"] {
                body.remove(key);
            }
            let mut input = read(body, false)?;
            let own = format!("{NODE_SCHEME}{}", n.node_id);
            if input.connection_string.as_ref().is_some_and(|c| *c != own) {
                return Err(ApiError::validation(vec![format!(
                    "connection_string of a node device cannot change (it is {own})"
                )]));
            }
            if let Some(config) = &input.configuration {
                let mut m = configuration(config);
                for key in NODE_FACTS {
                    m.remove(key);
                }
                input.configuration = Some(Value::Object(m).to_string());
            }
            if input.kind.is_some() || input.configuration.is_some() {
                change_node_facts(&state, &p, &n, |d| d.apply_to_node(&input)).await?;
            }
            if let Some(name) = input.name.take() {
                let patch = NodePatch {
                    name: Some(name),
                    ..Default::default()
                };
                state.runtime.nodes.update(&n.id, patch, &p.user_id).await?;
            }
            Ok(Json(find(&state, &p, &n.id)?.view()))
        }
    }
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<StatusCode> {
    writer(&p)?;
    match find(&state, &p, &id)? {
        Found::Plain(d) => {
            catalog::soft_delete::<Device>(&state.store, &d.id, &p.user_id).await?;
        }
        Found::Node(n, facts) => {
            // The node goes (AIWM's soft delete, its transport closed);
            // vareon's fields of it with it.
            state.runtime.nodes.delete(&n.id, &p.user_id).await?;
            if facts.is_some() {
                catalog::soft_delete::<Device>(&state.store, &n.id, &p.user_id).await?;
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The refusal for what only node devices can do.
pub(super) fn unsupported(d: &Device) -> VareonError {
    let scheme = match device::target(&d.connection_string) {
        Target::Other(s) => s,
        Target::Node(_) => "node".into(),
    };
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "Device {} cannot be reached: connection scheme '{scheme}' is not supported (only node:// devices are)",
            d.id
        ),
    )
}

async fn attach(state: &AppState, p: &Principal, id: &str, on: bool) -> VareonResult<Json<Value>> {
    writer(p)?;
    match find(state, p, id)? {
        Found::Plain(d) => Err(unsupported(&d)),
        Found::Node(n, _) => {
            change_node_facts(state, p, &n, |d| {
                d.attached = on;
                Ok(())
            })
            .await?;
            Ok(Json(find(state, p, &n.id)?.view()))
        }
    }
}

async fn connect(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    attach(&state, &p, &id, true).await
}

async fn disconnect(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    attach(&state, &p, &id, false).await
}

/// A connected node device, for a command: a plain device, a detached
/// or an offline node is a 409 saying which.
fn reachable(found: Found) -> VareonResult<Box<Node>> {
    match found {
        Found::Plain(d) => Err(unsupported(&d)),
        Found::Node(n, facts) => {
            if facts.as_ref().is_some_and(|d| !d.attached) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "Device {} is disconnected: POST /api/myntrix/devices/{}/connect first",
                        n.id, n.id
                    ),
                ));
            }
            if n.status != NodeStatus::Online || !n.websocket_connected {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "Device {} is {}: its daemon is not connected",
                        n.id,
                        n.status.as_str()
                    ),
                ));
            }
            Ok(n)
        }
    }
}

/// Runs one daemon command on a node as a one-step execution and waits
/// for its answer: the finished execution, or a 504 after
/// the configured wait (30 s; the execution ends by the same timeout).
pub(super) async fn run_on_node(
    state: &AppState,
    p: &Principal,
    n: &Node,
    kind: &str,
    data: Value,
) -> VareonResult<Execution> {
    let limit = state.config.device_command_wait;
    let wait = limit.as_secs().max(1);
    let new = NewExecution {
        name: Some(format!("{kind} on device {}", n.name)),
        category: Some("device".into()),
        kind: Some("command".into()),
        resource_type: Some("device".into()),
        resource_id: Some(n.id.clone()),
        node_id: Some(n.id.clone()),
        timeout_seconds: Some(wait),
        steps: vec![NewStep {
            name: Some(kind.to_owned()),
            node_id: Some(n.id.clone()),
            timeout_seconds: Some(wait),
            command: Some(StepCommand {
                kind: kind.to_owned(),
                resource_type: "device".into(),
                resource_id: n.id.clone(),
                data: data.to_string(),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let executions = &state.runtime.executions;
    let running = executions.begin(new, p.owner(), &p.user_id).await?;
    let x = executions.end_within(running, limit).await?;
    if !x.status.is_terminal() || x.status == ExecStatus::Timeout {
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "device {} did not answer {kind} within {wait} s (execution {})",
                n.id, x.execution_id
            ),
        ));
    }
    if x.status != ExecStatus::Completed {
        let why = x
            .steps
            .first()
            .and_then(|s| s.error.as_ref())
            .or(x.error.as_ref())
            .map_or_else(|| x.status.as_str().to_owned(), |e| e.message.clone());
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("device {} answered {kind} with an error: {why}", n.id),
        ));
    }
    Ok(x)
}

async fn command(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    writer(&p)?;
    let mut f = Fields::new(body);
    let command = f.string("command", true);
    f.finish_as::<Vareon>()?;
    let command = command.unwrap_or_default();
    // Found (404) before judged: a foreign id learns nothing.
    let found = find(&state, &p, &id)?;
    if !COMMANDS.contains(&command.trim()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "command {command:?} is not supported; supported commands: {}",
                COMMANDS.join(", ")
            ),
        ));
    }
    let n = reachable(found)?;
    let x = run_on_node(&state, &p, &n, command.trim(), json!({})).await?;
    let step = x.steps.first();
    Ok(Json(json!({
        "message": step.and_then(|s| s.result.clone()).unwrap_or_else(|| "{}".into()),
        "status": "success",
        "message_id": step.and_then(|s| s.sent_message_id.clone()).unwrap_or_default(),
        "execution_id": x.execution_id,
    })))
}

/// `POST .../upload`: the file goes to a blob, the node's daemon fetches
/// it from the server (`file.download`, its own credential) into its
/// `uploads/<device_id>/` and checks its SHA-256; the answer comes once
/// it has. The blob is let go when the delivery ends, whatever its end.
async fn upload(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    req: Request,
) -> VareonResult<Json<Value>> {
    writer(&p)?;
    // Refused before the body is read: nothing is stored for a device
    // that cannot take it.
    let n = reachable(find(&state, &p, &id)?)?;
    let u = upload::read::<Vareon>(&state, req).await?;
    let Some(blob) = u.file else {
        return Err(ApiError::validation(vec!["file field required".into()]));
    };
    let name = upload::safe_name(u.file_name.as_deref());
    let file = DeviceFile::new(&n.id, name.clone(), blob.clone(), p.owner(), &p.user_id);
    let file = match state.store.insert(file).await {
        Ok(f) => f,
        Err(e) => {
            dataset::discard_blob(&state.store, &blob)?;
            return Err(e.into());
        }
    };
    let data = json!({
        "source": format!("warden:/api/myntrix/devices/{}/files/{}", n.id, file.id),
        "fileName": name,
        "targetPath": n.id,
        "sha256": file.sha256,
        "fileSize": file.size,
    });
    let delivered = run_on_node(&state, &p, &n, FILE_DOWNLOAD, data).await;
    device::release(&state.store, &file.id).await?;
    let x = delivered?;
    let path = x
        .steps
        .first()
        .and_then(|s| s.result.as_deref())
        .and_then(|r| serde_json::from_str::<Value>(r).ok())
        .and_then(|r| r["downloadPath"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(Json(json!({
        "message": format!(
            "File '{name}' uploaded to device {} ({} bytes, sha256 {} verified by the device)",
            n.name, file.size, file.sha256
        ),
        "status": "success",
        "file_id": file.id,
        "path": path,
    })))
}

/// The daemon command that fetches an uploaded file.
const FILE_DOWNLOAD: &str = "file.download";

/// `GET .../files/{file_id}`: an uploaded file, to the node it was sent
/// to (its own node credential) or a user of its organisation, while its
/// delivery runs.
async fn file(
    State(state): State<AppState>,
    OrgMember(org, node, _): OrgMember<Vareon>,
    Path((id, file_id)): Path<(String, String)>,
) -> VareonResult<Response> {
    let missing = || ApiError::not_found("File", &file_id);
    let f = state
        .store
        .get::<DeviceFile>(&file_id)?
        .filter(|f| f.owner.org_id == org && f.device_id == id)
        .ok_or_else(missing)?;
    if node.as_ref().is_some_and(|n| *n != f.device_id) {
        return Err(missing());
    }
    let blob = f.blob.as_ref().ok_or_else(missing)?;
    upload::blob_download::<Vareon>(&state, blob, &f.name)
}

pub(super) fn routes() -> Api {
    let t = "vareon: myntrix devices";
    let mut api = Api::new();
    // FastAPI serves a collection with and without its trailing slash.
    for path in ["/api/myntrix/devices/", "/api/myntrix/devices"] {
        api = api
            .post(
                path,
                t,
                "Add a plain device (node:// devices are the organisation's nodes)",
                create,
            )
            .get(
                path,
                t,
                "The organisation's devices: its nodes and plain devices (skip, limit)",
                list,
            );
    }
    api.get("/api/myntrix/devices/{device_id}", t, "A device", get)
        .put(
            "/api/myntrix/devices/{device_id}",
            t,
            "Change a device (a node's name, type and configuration)",
            update,
        )
        .delete(
            "/api/myntrix/devices/{device_id}",
            t,
            "Delete a device (a node device deletes the node)",
            delete,
        )
        .post(
            "/api/myntrix/devices/{device_id}/connect",
            t,
            "Attach vareon's control of a node device",
            connect,
        )
        .post(
            "/api/myntrix/devices/{device_id}/disconnect",
            t,
            "Detach vareon's control of a node device",
            disconnect,
        )
        .post(
            "/api/myntrix/devices/{device_id}/command",
            t,
            "Run an allowlisted daemon command on a node device and answer its result",
            command,
        )
        .post(
            "/api/myntrix/devices/{device_id}/upload",
            t,
            "Send a file (multipart `file`, 100 MB) to a node device; answered once its daemon has it, checked",
            upload,
        )
        .get(
            "/api/myntrix/devices/{device_id}/files/{file_id}",
            t,
            "An uploaded file, for the node it is sent to (its node credential) while the delivery runs",
            file,
        )
}
