//! `/api/nodes` (AIWM §1). Writes go to the node's actor; reads to the store.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_actors::node::{GpuDevice, Node, NodeCommand, NodeStatus};
use warden_actors::node::{NewCommand, NewNode, NodePatch};
use warden_domain::Audit;
use warden_storage::series::Range;

use super::{
    AiwmBody, AiwmResult, Fields, Resource, deleted_body, find_visible, iso, owner_of,
    require_write, view_of,
};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::openapi::Api;

type User = CurrentUser<super::Aiwm>;

const STATUSES: [&str; 3] = ["online", "offline", "maintenance"];

impl Resource for Node {
    fn indexed_filter(
        field: &str,
        value: &str,
        org: Option<&str>,
    ) -> Option<(&'static str, String)> {
        (field == "status").then(|| {
            (
                warden_actors::node::STATUS_CREATED,
                warden_actors::node::status_scope(org, value),
            )
        })
    }
    const NAME: &'static str = "Node";
    const KEY: &'static str = "nodeId";

    fn view(&self) -> Value {
        let mut fields = json!({
            "_id": self.id,
            "nodeId": self.node_id,
            "name": self.name,
            "role": self.role,
            "status": self.status.as_str(),
            "isLocal": self.is_local,
            "websocketConnected": self.websocket_connected,
            "lastHeartbeat": self.last_heartbeat.map(iso),
            "cpuCores": self.cpu_cores,
            "ramTotal": self.ram_total,
            "ramFree": self.ram_free,
            "gpuDevices": self.gpu_devices.iter().map(|g| json!({
                "deviceId": g.device_id,
                "model": g.model,
                "memoryTotal": g.memory_total,
                "memoryFree": g.memory_free,
                "utilization": g.utilization,
                "temperature": g.temperature,
            })).collect::<Vec<_>>(),
        });
        if let Some(ip) = &self.vpn_ip {
            fields["vpnIp"] = json!(ip);
        }
        let h = &self.host;
        let facts = [
            ("hostname", h.hostname.as_ref().map(|v| json!(v))),
            ("ipAddress", h.ip_address.as_ref().map(|v| json!(v))),
            (
                "publicIpAddress",
                h.public_ip_address.as_ref().map(|v| json!(v)),
            ),
            (
                "os",
                h.os.as_ref()
                    .map(|v| serde_json::from_str(v).unwrap_or_else(|_| json!(v))),
            ),
            ("cpuModel", h.cpu_model.as_ref().map(|v| json!(v))),
            ("diskTotal", h.disk_total.map(|v| json!(v))),
            ("daemonVersion", h.daemon_version.as_ref().map(|v| json!(v))),
            (
                "containerRuntime",
                h.container_runtime
                    .as_ref()
                    .map(|v| serde_json::from_str(v).unwrap_or_else(|_| json!(v))),
            ),
            ("uptimeSeconds", h.uptime_seconds.map(|v| json!(v))),
            ("cpuUsage", h.cpu_usage.map(|v| json!(v))),
            ("ramUsage", h.ram_usage.map(|v| json!(v))),
            ("daemonStatus", h.daemon_status.as_ref().map(|v| json!(v))),
            ("registeredAt", h.registered_at.map(|v| json!(iso(v)))),
        ];
        for (key, value) in facts {
            if let Some(v) = value {
                fields[key] = v;
            }
        }
        if let Some(reason) = &self.failure {
            fields["failureReason"] = json!(reason);
        }
        view_of(&self.extra, fields, &self.owner, &self.audit)
    }

    fn audit(&self) -> &Audit {
        &self.audit
    }
}

fn gpu(f: &mut Fields) -> Option<GpuDevice> {
    let device_id = f.string("deviceId", true);
    let model = f.string("model", true);
    let memory_total = f.count("memoryTotal", false);
    let memory_free = f.count("memoryFree", false);
    let utilization = f.number("utilization", false);
    let temperature = f.number("temperature", false);
    Some(GpuDevice {
        device_id: device_id?,
        model: model?,
        memory_total: memory_total.unwrap_or(0),
        memory_free: memory_free.unwrap_or(0),
        utilization: utilization.unwrap_or(0.0),
        temperature: temperature.unwrap_or(0.0),
    })
}

/// Reads a node body; `create` makes `nodeId`, `name` and `cpuCores` required.
fn parse(body: serde_json::Map<String, Value>, create: bool) -> AiwmResult<NodePatch> {
    let mut f = Fields::new(body);
    let node_id = f.key("nodeId", create);
    let name = f.string("name", create);
    let role = f.strings("role", false);
    let status = f
        .one_of("status", &STATUSES, false)
        .and_then(|s| NodeStatus::parse(&s));
    let is_local = f.boolean("isLocal", false);
    let vpn_ip = f.string("vpnIp", false);
    let cpu_cores = f.count("cpuCores", create);
    let ram_total = f.count("ramTotal", false);
    let ram_free = f.count("ramFree", false);
    let gpu_devices = f.objects("gpuDevices", gpu);
    // Liveness is Warden's verdict, never a client's.
    f.drop(&[
        "websocketConnected",
        "lastHeartbeat",
        "failureReason",
        "hostname",
        "ipAddress",
        "publicIpAddress",
        "os",
        "cpuModel",
        "diskTotal",
        "daemonVersion",
        "containerRuntime",
        "uptimeSeconds",
        "cpuUsage",
        "ramUsage",
        "daemonStatus",
        "registeredAt",
    ]);
    let extra = f.finish()?;
    Ok(NodePatch {
        node_id,
        name,
        role,
        status,
        is_local,
        vpn_ip: vpn_ip.map(Some),
        cpu_cores,
        ram_total,
        ram_free,
        gpu_devices,
        extra: (!extra.is_empty()).then_some(extra),
    })
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<(StatusCode, Json<Value>)> {
    require_write(&p, "create")?;
    let patch = parse(body, true)?;
    let new = NewNode {
        node_id: patch.node_id.unwrap_or_default(),
        name: patch.name.unwrap_or_default(),
        role: patch.role.unwrap_or_default(),
        status: patch.status,
        is_local: patch.is_local.unwrap_or(false),
        vpn_ip: patch.vpn_ip.flatten(),
        cpu_cores: patch.cpu_cores.unwrap_or(0),
        ram_total: patch.ram_total.unwrap_or(0),
        ram_free: patch.ram_free.unwrap_or(0),
        gpu_devices: patch.gpu_devices.unwrap_or_default(),
        extra: patch.extra.unwrap_or_default(),
    };
    let node = state
        .runtime
        .nodes
        .create(new, owner_of(&p), &p.user_id)
        .await?;
    Ok((StatusCode::CREATED, Json(node.view())))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "update")?;
    let node: Node = find_visible(&state, &p, &id)?;
    let patch = parse(body, false)?;
    let node = state
        .runtime
        .nodes
        .update(&node.id, patch, &p.user_id)
        .await?;
    Ok(Json(node.view()))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "delete")?;
    let node: Node = find_visible(&state, &p, &id)?;
    let node = state.runtime.nodes.delete(&node.id, &p.user_id).await?;
    Ok(deleted_body("Node", &node.audit))
}

/// `expiresIn`: seconds, or a number with `s`, `m`, `h` or `d` (`"30d"`).
/// `expiresIn`: seconds, or `"60m"`, `"12h"`, `"30d"`; `None` when absent
/// (the configured default lifetime). Bounds are identity's policy.
fn parse_expiry(v: Option<&Value>) -> Result<Option<i64>, String> {
    const FORMAT: &str = "expiresIn must look like 3600, \"60m\", \"12h\" or \"30d\"";
    Ok(Some(match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or("expiresIn must be a whole number of seconds")?,
        Some(Value::String(s)) => {
            let s = s.trim();
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: i64 = num.parse().map_err(|_| FORMAT)?;
            let mult = match unit {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86400,
                _ => return Err(FORMAT.into()),
            };
            n.saturating_mul(mult)
        }
        Some(_) => return Err("expiresIn must be a number or a string".into()),
    }))
}

fn node_token_view(t: &warden_identity::model::NodeToken) -> Value {
    json!({
        "id": t.id,
        "nodeId": t.node_id,
        "createdBy": t.created_by,
        "createdAt": iso(t.created_at),
        "expiresAt": iso(t.expires_at),
        "revokedAt": t.revoked_at.map(iso),
        "status": if t.revoked_at.is_some() {
            "revoked"
        } else if t.expires_at <= warden_storage::now_millis() {
            "expired"
        } else {
            "active"
        },
    })
}

/// `GET /api/nodes/{id}/tokens`: the node's tokens (never the tokens
/// themselves: ids, lifetimes and status).
async fn list_tokens(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
) -> AiwmResult<Json<Value>> {
    let node: Node = find_visible(&state, &p, &id)?;
    let tokens = state.identity.node_tokens(&node.id)?;
    Ok(Json(json!({
        "data": tokens.iter().map(node_token_view).collect::<Vec<_>>(),
    })))
}

/// `DELETE /api/nodes/{id}/tokens/{tokenId}`: revokes a node token; the
/// node's daemon is disconnected and comes back only with a valid credential.
async fn revoke_token(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path((id, token_id)): Path<(String, String)>,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "revoke node tokens")?;
    let node: Node = find_visible(&state, &p, &id)?;
    let token = state
        .identity
        .revoke_node_token(&node.id, &token_id)
        .await?;
    state
        .runtime
        .nodes
        .disconnect(&node.id, "a node token was revoked")
        .await?;
    tracing::info!(node = %node.id, token = %token.id, by = %p.username, "node token revoked");
    Ok(Json(node_token_view(&token)))
}

/// `POST /api/nodes/{id}/token`: a node-scoped token for a daemon.
async fn token(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "create node tokens")?;
    let node: Node = find_visible(&state, &p, &id)?;
    let ttl = parse_expiry(body.get("expiresIn"))
        .map_err(|e| crate::error::ApiError::validation(vec![e]))?;
    let (issued, record) = state
        .identity
        .issue_node_token(&node.id, &node.owner.org_id, ttl, &p.user_id)
        .await?;
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:8080");
    let install = format!(
        "#!/bin/sh\n# Starts the Warden node daemon for node {nid}.\nexec warden node --server 'http://{host}' --token '{token}' --node-id '{nid}'\n",
        nid = node.node_id,
        token = issued.token,
    );
    tracing::info!(node = %node.id, by = %p.username, "node token minted");
    Ok(Json(json!({
        "id": record.id,
        "token": issued.token,
        "expiresAt": iso(record.expires_at),
        "installScript": install,
    })))
}

const COMMAND_TYPES: [&str; 5] = [
    "model.download",
    "deployment.create",
    "deployment.start",
    "deployment.stop",
    "system.healthCheck",
];

fn command_view(c: &NodeCommand) -> Value {
    let parse = |t: &str| serde_json::from_str::<Value>(t).unwrap_or(Value::Null);
    json!({
        "messageId": c.id,
        "nodeId": c.node_id,
        "type": c.kind,
        "resource": {"type": c.resource_type, "id": c.resource_id},
        "data": parse(&c.data),
        "metadata": parse(&c.metadata),
        "status": c.status.as_str(),
        "result": c.result.as_deref().map(parse),
        "error": c.error.as_deref().map(parse),
        "createdBy": c.created_by,
        "createdAt": iso(c.created_at),
        "sentAt": c.sent_at.map(iso),
        "acknowledgedAt": c.acknowledged_at.map(iso),
        "completedAt": c.completed_at.map(iso),
    })
}

/// The `Idempotency-Key` header: a retried request with the same key
/// makes nothing new. 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &axum::http::HeaderMap) -> AiwmResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k.to_owned()))
        }
        _ => Err(crate::error::ApiError::validation(vec![
            "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        ])),
    }
}

/// `POST /api/nodes/{id}/commands`: queue a command; sent at once to a
/// connected node, on its next registration otherwise. With an
/// `Idempotency-Key`, a retry answers the command the first request made.
async fn send_command(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<(StatusCode, Json<Value>)> {
    require_write(&p, "send commands")?;
    let node: Node = find_visible(&state, &p, &id)?;
    let mut f = Fields::new(body);
    let kind = f.one_of("type", &COMMAND_TYPES, true);
    let resource = f.objects_one("resource");
    let data = f.json("data", true);
    let metadata = f.json("metadata", true);
    f.finish()?;
    let resource = resource.unwrap_or_default();
    let text = |k: &str| {
        resource
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let command = NewCommand {
        id: None,
        origin: None,
        kind: kind.unwrap_or_default(),
        resource_type: text("type"),
        resource_id: text("id"),
        data: data
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or(json!({})),
        metadata: metadata
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or(json!({})),
        created_by: p.user_id.clone(),
        idempotency_key: idempotency_key(&headers)?,
    };
    let cmd = state.runtime.nodes.enqueue(&node.id, command).await?;
    Ok((StatusCode::ACCEPTED, Json(command_view(&cmd))))
}

async fn list_commands(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
    q: super::AiwmQuery,
) -> AiwmResult<Json<Value>> {
    let node: Node = find_visible(&state, &p, &id)?;
    let mut commands = state.store.by_index::<NodeCommand>("node", &node.id)?;
    commands.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    Ok(Json(q.page_of(commands.iter().map(command_view).collect())))
}

async fn get_command(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path((id, command_id)): Path<(String, String)>,
) -> AiwmResult<Json<Value>> {
    let node: Node = find_visible(&state, &p, &id)?;
    let cmd = state
        .store
        .get::<NodeCommand>(&command_id)?
        .filter(|c| c.node_id == node.id)
        .ok_or_else(|| crate::error::ApiError::not_found("Command", &command_id))?;
    Ok(Json(command_view(&cmd)))
}

fn parse_time(key: &str, v: Option<&String>) -> Result<Option<i64>, String> {
    match v {
        None => Ok(None),
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis()))
            .or_else(|_| s.parse::<i64>().map(Some))
            .map_err(|_| format!("{key} must be an ISO 8601 date or epoch milliseconds")),
    }
}

/// `GET /api/nodes/{id}/metrics?from&to&page&limit`: newest first.
async fn metrics(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> AiwmResult<Json<Value>> {
    let node: Node = find_visible(&state, &p, &id)?;
    let raw = raw.unwrap_or_default();
    let params: std::collections::HashMap<String, String> = form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect();
    let q = super::paging::parse(&raw)?;
    let mut errors = Vec::new();
    let from = parse_time("from", params.get("from")).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let to = parse_time("to", params.get("to")).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    if !errors.is_empty() {
        return Err(crate::error::ApiError::validation(errors));
    }
    let range = Range {
        from: from.unwrap_or(i64::MIN),
        to: to.unwrap_or(i64::MAX),
        limit: usize::MAX,
        skip: 0,
        newest_first: true,
    };
    let series = warden_actors::node::series_name(&node.id, "metrics");
    let points = state.store.points(&series, range)?;
    let total = points.len();
    let data: Vec<Value> = points
        .iter()
        .skip((q.page - 1) * q.limit)
        .take(q.limit)
        .map(|pt| {
            let stored: Value = serde_json::from_slice(&pt.value).unwrap_or(Value::Null);
            let mut out = match stored.get("data") {
                Some(Value::Object(m)) => Value::Object(m.clone()),
                _ => json!({}),
            };
            out["messageId"] = json!(pt.id);
            out["timestamp"] = json!(iso(pt.at));
            out
        })
        .collect();
    Ok(Json(
        json!({"data": data, "pagination": {"page": q.page, "limit": q.limit, "total": total}}),
    ))
}

pub(super) fn routes() -> Api {
    Api::new()
        .post(
            "/api/nodes/{id}/token",
            "aiwm: nodes",
            "Mint a node token {expiresIn} -> {id, token, expiresAt, installScript}",
            token,
        )
        .get(
            "/api/nodes/{id}/tokens",
            "aiwm: nodes",
            "A node's tokens: ids, lifetimes, status (never the tokens)",
            list_tokens,
        )
        .delete(
            "/api/nodes/{id}/tokens/{tokenId}",
            "aiwm: nodes",
            "Revoke a node token (its daemon is disconnected)",
            revoke_token,
        )
        .post(
            "/api/nodes/{id}/commands",
            "aiwm: nodes",
            "Queue a command for the node (sent at most once)",
            send_command,
        )
        .get(
            "/api/nodes/{id}/commands",
            "aiwm: nodes",
            "The node's commands and their status",
            list_commands,
        )
        .get(
            "/api/nodes/{id}/commands/{commandId}",
            "aiwm: nodes",
            "One command",
            get_command,
        )
        .get(
            "/api/nodes/{id}/metrics",
            "aiwm: nodes",
            "The node's metrics, newest first (from, to, page, limit)",
            metrics,
        )
        .post("/api/nodes", "aiwm: nodes", "Register a node", create)
        .get(
            "/api/nodes",
            "aiwm: nodes",
            "List nodes (page, limit, filter[field], sort)",
            super::list_handler::<Node>,
        )
        .get(
            "/api/nodes/{id}",
            "aiwm: nodes",
            "Get a node by _id or nodeId",
            super::get_handler::<Node>,
        )
        .put("/api/nodes/{id}", "aiwm: nodes", "Update a node", update)
        .delete(
            "/api/nodes/{id}",
            "aiwm: nodes",
            "Soft-delete a node",
            delete,
        )
}
