use super::{Audit, Owned, Owner};
use crate::{Millis, Record};

/// Liveness of a node as Warden judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NodeStatus {
    Online,
    Offline,
    Maintenance,
    /// Its actor failed past the restart limit; see `Node::failure`.
    Failed,
}

impl NodeStatus {
    pub const ALL: [NodeStatus; 4] = [
        NodeStatus::Online,
        NodeStatus::Offline,
        NodeStatus::Maintenance,
        NodeStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Online => "online",
            NodeStatus::Offline => "offline",
            NodeStatus::Maintenance => "maintenance",
            NodeStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<NodeStatus> {
        NodeStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GpuDevice {
    pub device_id: String,
    pub model: String,
    pub memory_total: u64,
    pub memory_free: u64,
    pub utilization: f64,
    pub temperature: f64,
}

/// A machine that runs workloads. Written only by its `NodeActor`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub id: String,
    pub node_id: String,
    pub name: String,
    pub role: Vec<String>,
    pub status: NodeStatus,
    pub is_local: bool,
    pub vpn_ip: Option<String>,
    pub websocket_connected: bool,
    pub last_heartbeat: Option<Millis>,
    pub cpu_cores: u64,
    pub ram_total: u64,
    pub ram_free: u64,
    pub gpu_devices: Vec<GpuDevice>,
    /// Why the node's actor was given up on, when `status` is `Failed`.
    pub failure: Option<String>,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
}

impl Record for Node {
    const COLLECTION: &'static str = "nodes";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("org", self.owner.org_id.clone()),
            ("status", self.status.as_str().to_owned()),
        ]
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![("nodeId", format!("{}/{}", self.owner.org_id, self.node_id))]
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
}

impl Owned for Node {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}
