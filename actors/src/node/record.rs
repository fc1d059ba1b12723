//! The records the node actor owns: the node and its commands.

use warden_domain::{Audit, Owned, Owner};
use warden_storage::{Millis, Record};

warden_storage::first_layout!(Node, NodeCommandV1);

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

/// Facts a node daemon reports (AIWM `node.register` and heartbeats).
/// `os` and `container_runtime` are JSON text: daemons send objects.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct HostFacts {
    pub hostname: Option<String>,
    pub ip_address: Option<String>,
    pub public_ip_address: Option<String>,
    pub os: Option<String>,
    pub cpu_model: Option<String>,
    pub disk_total: Option<u64>,
    pub daemon_version: Option<String>,
    pub container_runtime: Option<String>,
    pub uptime_seconds: Option<u64>,
    pub cpu_usage: Option<f64>,
    /// Percent of RAM in use, as the daemon's heartbeat says.
    pub ram_usage: Option<f64>,
    /// The daemon's own health verdict (`healthy`), never Warden's status.
    pub daemon_status: Option<String>,
    pub registered_at: Option<Millis>,
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
    /// What the daemon reported about its host at registration and since.
    pub host: HostFacts,
    /// Why the node's actor was given up on, when `status` is `Failed`.
    pub failure: Option<String>,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
}

/// The ordered index of nodes by status, then creation time.
pub const STATUS_CREATED: &str = "status_created";

/// The scope of an organisation's (`None`: every organisation's) nodes
/// in one status, in [`STATUS_CREATED`].
pub fn status_scope(org_id: Option<&str>, status: &str) -> String {
    format!("{}/{status}", warden_domain::org_scope(org_id))
}

impl Record for Node {
    const COLLECTION: &'static str = "nodes";
    fn id(&self) -> &str {
        &self.id
    }
    // No hash indexes: the ordered scopes below answer by organisation and
    // by status (two fewer keys per node write: durable creates were
    // bound by the committer's per-key cost).
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![("nodeId", format!("{}/{}", self.owner.org_id, self.node_id))]
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    /// Lists of an organisation (or of all, for admins) by creation time,
    /// whole or by status.
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        let t = warden_storage::time_sort_key(self.audit.created_at);
        let (org, status) = (&self.owner.org_id, self.status.as_str());
        let mut ordered = warden_domain::created_order(org, self.audit.created_at);
        ordered.push((STATUS_CREATED, status_scope(Some(org), status), t.clone()));
        ordered.push((STATUS_CREATED, status_scope(None, status), t));
        ordered
    }
    const INDEX_VERSION: u32 = 2;
}

impl Owned for Node {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// Where a command sent to a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CommandStatus {
    /// Waiting for the node to be connected.
    Queued,
    /// Written to the node's connection (at most once).
    Sent,
    Acknowledged,
    Succeeded,
    Failed,
    /// Revoked before it completed (its execution ended, or a client
    /// cancelled it); a queued command is then never sent.
    Cancelled,
}

impl CommandStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Sent => "sent",
            CommandStatus::Acknowledged => "acknowledged",
            CommandStatus::Succeeded => "succeeded",
            CommandStatus::Failed => "failed",
            CommandStatus::Cancelled => "cancelled",
        }
    }
}

/// A command for a node (`model.download`, `deployment.create`, ...); its
/// id is the envelope's `messageId`, which the node's replies name.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeCommand {
    pub id: String,
    pub node_id: String,
    pub kind: String,
    pub resource_type: String,
    pub resource_id: String,
    /// JSON text.
    pub data: String,
    /// JSON text.
    pub metadata: String,
    pub status: CommandStatus,
    /// JSON text of the node's `result`, or of its `error`.
    pub result: Option<String>,
    pub error: Option<String>,
    pub owner: Owner,
    pub created_by: String,
    pub created_at: Millis,
    pub sent_at: Option<Millis>,
    pub acknowledged_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    /// The execution step that sent it, told when the node answers.
    pub origin: Option<CommandOrigin>,
}

/// The execution step a command belongs to.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommandOrigin {
    /// The execution's `_id`.
    pub execution: String,
    pub step: u32,
}

impl warden_storage::Versioned for NodeCommand {
    const VERSION: u32 = 2;
    type Previous = NodeCommandV1;
    fn upgrade(v: NodeCommandV1) -> Self {
        NodeCommand {
            id: v.id,
            node_id: v.node_id,
            kind: v.kind,
            resource_type: v.resource_type,
            resource_id: v.resource_id,
            data: v.data,
            metadata: v.metadata,
            status: v.status,
            result: v.result,
            error: v.error,
            owner: v.owner,
            created_by: v.created_by,
            created_at: v.created_at,
            sent_at: v.sent_at,
            acknowledged_at: v.acknowledged_at,
            completed_at: v.completed_at,
            origin: None,
        }
    }
}

/// [`NodeCommand`]'s first layout (before commands knew their origin).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeCommandV1 {
    pub id: String,
    pub node_id: String,
    pub kind: String,
    pub resource_type: String,
    pub resource_id: String,
    /// JSON text.
    pub data: String,
    /// JSON text.
    pub metadata: String,
    pub status: CommandStatus,
    /// JSON text of the node's `result`, or of its `error`.
    pub result: Option<String>,
    pub error: Option<String>,
    pub owner: Owner,
    pub created_by: String,
    pub created_at: Millis,
    pub sent_at: Option<Millis>,
    pub acknowledged_at: Option<Millis>,
    pub completed_at: Option<Millis>,
}

impl Record for NodeCommand {
    const COLLECTION: &'static str = "node_commands";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("node", self.node_id.clone()),
            (
                "node_status",
                format!("{}/{}", self.node_id, self.status.as_str()),
            ),
        ]
    }
}
