//! The record a deployment actor owns (AIWM §5).

use warden_domain::{Audit, Owned, Owner};
use warden_storage::{Millis, Record};

warden_storage::first_layout!(Deployment);

/// Where a deployment stands (AIWM §5 `status`). `Pending` also covers a
/// start in progress (the model downloading, the process starting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeployStatus {
    Pending,
    Running,
    Stopped,
    Failed,
}

impl DeployStatus {
    pub const ALL: [DeployStatus; 4] = [
        DeployStatus::Pending,
        DeployStatus::Running,
        DeployStatus::Stopped,
        DeployStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::Pending => "pending",
            DeployStatus::Running => "running",
            DeployStatus::Stopped => "stopped",
            DeployStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeployStatus> {
        DeployStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One entry of a deployment's event log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeployEvent {
    pub timestamp: Millis,
    pub event: String,
    pub message: String,
    /// `info`, `warning` or `error`.
    pub severity: String,
}

/// The events a deployment keeps (the oldest go first).
pub const MAX_EVENTS: usize = 200;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Deployment {
    pub id: String,
    pub deployment_id: String,
    pub name: String,
    pub description: String,
    pub environment: String,
    pub status: DeployStatus,
    /// The model as the client named it (`_id` or `modelId`).
    pub model_id: String,
    /// The node as the client named it (`_id` or `nodeId`).
    pub node_id: String,
    pub deployment_type: String,
    pub replicas: u32,
    pub hardware_profile: String,
    pub is_running: bool,
    pub container_name: Option<String>,
    pub container_port: Option<u32>,
    pub endpoint: Option<String>,
    pub total_inferences: u64,
    pub average_latency: f64,
    /// Seconds the served process has been up, as the node last said.
    pub uptime: u64,
    pub last_health_check: Option<Millis>,
    pub events: Vec<DeployEvent>,
    /// The execution of the last start or stop.
    pub execution_id: Option<String>,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
}

impl Deployment {
    /// Appends to the event log, keeping the newest [`MAX_EVENTS`].
    pub fn log(&mut self, at: Millis, event: &str, message: impl Into<String>, severity: &str) {
        self.events.push(DeployEvent {
            timestamp: at,
            event: event.into(),
            message: message.into(),
            severity: severity.into(),
        });
        if self.events.len() > MAX_EVENTS {
            let extra = self.events.len() - MAX_EVENTS;
            self.events.drain(..extra);
        }
    }
}

impl Record for Deployment {
    const COLLECTION: &'static str = "deployments";
    fn id(&self) -> &str {
        &self.id
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![(
            "deploymentId",
            format!("{}/{}", self.owner.org_id, self.deployment_id),
        )]
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        warden_domain::created_order(&self.owner.org_id, self.audit.created_at)
    }
}

impl Owned for Deployment {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}
