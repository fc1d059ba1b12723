//! `/api/nodes` (AIWM §1). Writes go to the node's actor; reads to the store.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_actors::node::{NewNode, NodePatch};
use warden_storage::model::{Audit, GpuDevice, Node, NodeStatus};

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
        if let Some(reason) = &self.failure {
            fields["failureReason"] = json!(reason);
        }
        view_of(&self.extra, fields, &self.owner, &self.audit)
    }

    fn audit(&self) -> &Audit {
        &self.audit
    }

    fn audit_mut(&mut self) -> &mut Audit {
        &mut self.audit
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
    f.drop(&["websocketConnected", "lastHeartbeat", "failureReason"]);
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

pub(super) fn routes() -> Api {
    Api::new()
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
