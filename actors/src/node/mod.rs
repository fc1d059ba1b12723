//! A node: a machine that runs workloads. Its `NodeActor` is the only
//! writer of its record once it exists; creation is done by the nodes
//! supervisor, which writes the first version before any actor runs.

mod actor;
pub mod protocol;
mod record;

pub use record::{
    CommandOrigin, CommandStatus, GpuDevice, HostFacts, Node, NodeCommand, NodeStatus,
    STATUS_CREATED, status_scope,
};

pub use actor::{
    CALL_TIMEOUT, CommandEvent, CommandListener, LiveConnections, NewCommand, NodeActor, NodeArgs,
    NodeHandle, NodeMsg, NodeTiming, ReplyKind, command_id, series_name, store_telemetry,
};

use warden_domain::{Audit, Owner};
use warden_storage::{Millis, new_object_id, now_millis};

use crate::DomainError;
use protocol::{GpuReport, Heartbeat, Registration};

/// Re-indexes the node records once when their indexes changed.
pub async fn ensure_indexes(
    store: &warden_storage::Store,
) -> Result<(), warden_storage::StorageError> {
    store.ensure_indexes::<Node>().await?;
    Ok(())
}

/// The fields a client supplies to register a node.
#[derive(Debug, Clone, Default)]
pub struct NewNode {
    pub node_id: String,
    pub name: String,
    pub role: Vec<String>,
    pub status: Option<NodeStatus>,
    pub is_local: bool,
    pub vpn_ip: Option<String>,
    pub cpu_cores: u64,
    pub ram_total: u64,
    pub ram_free: u64,
    pub gpu_devices: Vec<GpuDevice>,
    pub extra: String,
}

/// A partial update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct NodePatch {
    pub node_id: Option<String>,
    pub name: Option<String>,
    pub role: Option<Vec<String>>,
    pub status: Option<NodeStatus>,
    pub is_local: Option<bool>,
    pub vpn_ip: Option<Option<String>>,
    pub cpu_cores: Option<u64>,
    pub ram_total: Option<u64>,
    pub ram_free: Option<u64>,
    pub gpu_devices: Option<Vec<GpuDevice>>,
    /// Extra fields to merge into the stored ones (JSON object text).
    pub extra: Option<String>,
}

/// Builds the first version of a node record.
pub fn create(new: NewNode, owner: Owner, by: &str) -> Result<Node, DomainError> {
    let status = new.status.unwrap_or(NodeStatus::Offline);
    if status == NodeStatus::Failed {
        return Err(DomainError::Invalid(vec![
            "status must be one of the following values: online, offline, maintenance".into(),
        ]));
    }
    let audit = Audit::new(by);
    Ok(Node {
        id: new_object_id(),
        node_id: new.node_id,
        name: new.name,
        role: new.role,
        status,
        is_local: new.is_local,
        vpn_ip: new.vpn_ip,
        websocket_connected: false,
        last_heartbeat: Some(audit.created_at),
        cpu_cores: new.cpu_cores,
        ram_total: new.ram_total,
        ram_free: new.ram_free,
        gpu_devices: new.gpu_devices,
        host: Default::default(),
        failure: None,
        extra: new.extra,
        owner,
        audit,
    })
}

/// Applies a client's update. A failed node only leaves `failed` through
/// the supervisor's reset, never through an update.
pub fn apply(node: &mut Node, patch: NodePatch, by: &str) -> Result<(), DomainError> {
    if patch.status == Some(NodeStatus::Failed) {
        return Err(DomainError::Invalid(vec![
            "status must be one of the following values: online, offline, maintenance".into(),
        ]));
    }
    let NodePatch {
        node_id,
        name,
        role,
        status,
        is_local,
        vpn_ip,
        cpu_cores,
        ram_total,
        ram_free,
        gpu_devices,
        extra,
    } = patch;
    crate::set(&mut node.node_id, node_id);
    crate::set(&mut node.name, name);
    crate::set(&mut node.role, role);
    crate::set(&mut node.status, status);
    crate::set(&mut node.is_local, is_local);
    crate::set(&mut node.vpn_ip, vpn_ip);
    crate::set(&mut node.cpu_cores, cpu_cores);
    crate::set(&mut node.ram_total, ram_total);
    crate::set(&mut node.ram_free, ram_free);
    crate::set(&mut node.gpu_devices, gpu_devices);
    if let Some(v) = extra {
        node.extra = crate::merge_extra(&node.extra, &v);
    }
    node.audit.touch(by);
    Ok(())
}

/// Marks a node whose actor was given up on.
pub fn fail(node: &mut Node, reason: &str) {
    node.status = NodeStatus::Failed;
    node.failure = Some(reason.to_owned());
    node.websocket_connected = false;
    node.audit.updated_at = now_millis().max(node.audit.updated_at);
}

/// Brings a failed node back to `offline` when an admin resets it.
pub fn reset(node: &mut Node) {
    if node.status == NodeStatus::Failed {
        node.status = NodeStatus::Offline;
    }
    node.failure = None;
    node.audit.updated_at = now_millis().max(node.audit.updated_at);
}

/// A daemon connected: the node is alive.
pub fn connected(node: &mut Node, now: Millis) {
    node.websocket_connected = true;
    node.last_heartbeat = Some(now);
    if node.status == NodeStatus::Offline {
        node.status = NodeStatus::Online;
    }
    node.audit.updated_at = now.max(node.audit.updated_at);
}

/// The daemon's connection closed. Liveness is judged by heartbeats.
pub fn disconnected(node: &mut Node, now: Millis) {
    node.websocket_connected = false;
    node.audit.updated_at = now.max(node.audit.updated_at);
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn merge_gpus(devices: &mut Vec<GpuDevice>, reports: &[GpuReport]) {
    for r in reports {
        let i = match devices.iter().position(|d| d.device_id == r.device_id) {
            Some(i) => i,
            None => {
                devices.push(GpuDevice {
                    device_id: r.device_id.clone(),
                    model: String::new(),
                    memory_total: 0,
                    memory_free: 0,
                    utilization: 0.0,
                    temperature: 0.0,
                });
                devices.len() - 1
            }
        };
        let d = &mut devices[i];
        if !r.model.is_empty() {
            d.model = r.model.clone();
        }
        if let Some(v) = r.memory_total {
            d.memory_total = v;
        }
        match (r.memory_free, r.memory_used) {
            (Some(free), _) => d.memory_free = free,
            (None, Some(used)) => d.memory_free = d.memory_total.saturating_sub(used),
            _ => {}
        }
        if let Some(v) = r.utilization {
            d.utilization = v;
        }
        if let Some(v) = r.temperature {
            d.temperature = v;
        }
    }
}

/// `node.register`: the daemon's facts about its host replace the stored ones.
pub fn register(node: &mut Node, reg: &Registration, now: Millis) {
    connected(node, now);
    let h = &mut node.host;
    h.hostname = reg.hostname.clone().or(h.hostname.take());
    h.ip_address = reg.ip_address.clone().or(h.ip_address.take());
    h.public_ip_address = reg.public_ip_address.clone().or(h.public_ip_address.take());
    h.os = reg.os.as_ref().map(text).or(h.os.take());
    h.cpu_model = reg.cpu_model.clone().or(h.cpu_model.take());
    h.disk_total = reg.disk_total.or(h.disk_total);
    h.daemon_version = reg.daemon_version.clone().or(h.daemon_version.take());
    h.container_runtime = reg
        .container_runtime
        .as_ref()
        .map(text)
        .or(h.container_runtime.take());
    h.uptime_seconds = reg.uptime_seconds.or(h.uptime_seconds);
    h.registered_at = Some(now);
    if let Some(v) = reg.cpu_cores {
        node.cpu_cores = v;
    }
    if let Some(v) = reg.ram_total {
        node.ram_total = v;
    }
    if let Some(v) = reg.ram_free {
        node.ram_free = v;
    }
    merge_gpus(&mut node.gpu_devices, &reg.gpu_devices);
}

/// `telemetry.heartbeat`: the node is alive now.
pub fn heartbeat(node: &mut Node, hb: &Heartbeat, now: Millis) {
    node.last_heartbeat = Some(now);
    if node.status == NodeStatus::Offline {
        node.status = NodeStatus::Online;
    }
    let h = &mut node.host;
    h.daemon_status = hb.status.clone().or(h.daemon_status.take());
    h.uptime_seconds = hb.uptime_seconds.or(h.uptime_seconds);
    h.cpu_usage = hb.cpu_usage.or(h.cpu_usage);
    if let Some(pct) = hb.ram_usage {
        h.ram_usage = Some(pct);
        if node.ram_total > 0 && (0.0..=100.0).contains(&pct) {
            node.ram_free = ((100.0 - pct) / 100.0 * node.ram_total as f64) as u64;
        }
    }
    merge_gpus(&mut node.gpu_devices, &hb.gpu_status);
    node.audit.updated_at = now.max(node.audit.updated_at);
}

/// Whether an online node has been silent for more than three intervals.
pub fn is_silent(node: &Node, now: Millis, heartbeat_interval_ms: Millis) -> bool {
    node.status == NodeStatus::Online
        && node
            .last_heartbeat
            .is_none_or(|t| now - t > 3 * heartbeat_interval_ms)
}

/// An online node whose last heartbeat is older than three intervals is
/// offline. Returns whether anything changed.
pub fn check_liveness(node: &mut Node, now: Millis, heartbeat_interval_ms: Millis) -> bool {
    if is_silent(node, now, heartbeat_interval_ms) {
        node.status = NodeStatus::Offline;
        node.audit.updated_at = now.max(node.audit.updated_at);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_defaults_and_update_rules() {
        let owner = Owner {
            org_id: "o".into(),
            user_id: "u".into(),
            group_id: String::new(),
        };
        let mut node = create(
            NewNode {
                node_id: "n1".into(),
                name: "gpu".into(),
                ..Default::default()
            },
            owner,
            "u",
        )
        .unwrap();
        assert_eq!(node.status, NodeStatus::Offline);
        assert_eq!(node.audit.created_by, "u");
        let patch = NodePatch {
            name: Some("renamed".into()),
            status: Some(NodeStatus::Maintenance),
            ..Default::default()
        };
        apply(&mut node, patch, "v").unwrap();
        assert_eq!(
            (
                node.name.as_str(),
                node.status,
                node.audit.updated_by.as_str()
            ),
            ("renamed", NodeStatus::Maintenance, "v")
        );
        let bad = NodePatch {
            status: Some(NodeStatus::Failed),
            ..Default::default()
        };
        assert!(matches!(
            apply(&mut node, bad, "v"),
            Err(DomainError::Invalid(_))
        ));
        fail(&mut node, "boom");
        assert_eq!(node.status, NodeStatus::Failed);
        reset(&mut node);
        assert_eq!(
            (node.status, node.failure.clone()),
            (NodeStatus::Offline, None)
        );
    }

    #[test]
    fn telemetry_transitions() {
        let owner = Owner {
            org_id: "o".into(),
            user_id: "u".into(),
            group_id: String::new(),
        };
        let mut node = create(
            NewNode {
                node_id: "n".into(),
                name: "n".into(),
                ram_total: 1000,
                ..Default::default()
            },
            owner,
            "u",
        )
        .unwrap();
        let reg = Registration {
            hostname: Some("gpu-1".into()),
            os: Some(serde_json::json!({"platform": "linux"})),
            cpu_cores: Some(8),
            gpu_devices: vec![GpuReport {
                device_id: "GPU-0".into(),
                model: "RTX".into(),
                memory_total: Some(100),
                ..Default::default()
            }],
            ..Default::default()
        };
        register(&mut node, &reg, 1_000);
        assert_eq!(
            (node.status, node.websocket_connected, node.cpu_cores),
            (NodeStatus::Online, true, 8)
        );
        assert_eq!(node.host.os.as_deref(), Some(r#"{"platform":"linux"}"#));
        let hb = Heartbeat {
            status: Some("healthy".into()),
            ram_usage: Some(25.0),
            gpu_status: vec![GpuReport {
                device_id: "GPU-0".into(),
                memory_used: Some(40),
                utilization: Some(80.0),
                ..Default::default()
            }],
            ..Default::default()
        };
        heartbeat(&mut node, &hb, 2_000);
        assert_eq!(
            node.status,
            NodeStatus::Online,
            "the daemon's health never becomes the status"
        );
        assert_eq!(node.ram_free, 750);
        assert_eq!(
            (
                node.gpu_devices[0].memory_free,
                node.gpu_devices[0].utilization
            ),
            (60, 80.0)
        );
        assert!(!check_liveness(&mut node, 4_900, 1_000));
        assert!(check_liveness(&mut node, 5_001, 1_000));
        assert_eq!(node.status, NodeStatus::Offline);
        heartbeat(&mut node, &hb, 6_000);
        assert_eq!(node.status, NodeStatus::Online);
        node.status = NodeStatus::Maintenance;
        assert!(
            !check_liveness(&mut node, 60_000, 1_000),
            "maintenance is an operator's verdict"
        );
    }
}
