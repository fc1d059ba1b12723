//! Trained models served on Warden nodes: one path for forge's edge
//! deployments (`/api/v1/deployments`) and vareon's `models/{id}/deploy`.
//! Both are core deployments (AIWM's `/api/deployments` shows them): the
//! deployment actor starts an execution that has the node fetch the
//! model's ONNX export from `/artifacts/models/{id}` and serve it with
//! `warden serve-model`; it is `deployed` once the node's health check
//! of the endpoint passed.

use serde_json::{Value, json};
use warden_actors::deployment::{DeployStatus, Deployment, DeploymentInput};
use warden_actors::node::{Node, NodeStatus};
use warden_domain::{DomainError, Model};
use warden_identity::Principal;
use warden_storage::Millis;

use crate::AppState;

/// The extra field that marks a deployment cancelled by its client.
const CANCELLED: &str = "cancelled";

/// Where an edge deployment stands, in forge's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeStatus {
    /// Created, not started.
    Pending,
    /// Started, its node offline: it starts when the node is back.
    Queued,
    /// The node is fetching and starting the model.
    Deploying,
    /// Served, and the endpoint answered its health check.
    Deployed,
    Failed,
    Cancelled,
}

impl EdgeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeStatus::Pending => "pending",
            EdgeStatus::Queued => "queued",
            EdgeStatus::Deploying => "deploying",
            EdgeStatus::Deployed => "deployed",
            EdgeStatus::Failed => "failed",
            EdgeStatus::Cancelled => "cancelled",
        }
    }
}

/// A deployment's extra fields (the dialects' own), as JSON.
pub(crate) fn extra(d: &Deployment) -> Value {
    serde_json::from_str(&d.extra).unwrap_or(Value::Null)
}

/// A deployment's node (live), if it still exists.
pub(crate) fn node_of(state: &AppState, d: &Deployment) -> Option<Node> {
    state
        .runtime
        .nodes
        .resolve(&d.owner.org_id, &d.node_id)
        .ok()
}

pub(crate) fn is_online(n: &Node) -> bool {
    n.websocket_connected && n.status == NodeStatus::Online
}

pub(crate) fn status(state: &AppState, d: &Deployment) -> EdgeStatus {
    match d.status {
        DeployStatus::Running => EdgeStatus::Deployed,
        DeployStatus::Failed => EdgeStatus::Failed,
        _ if extra(d)[CANCELLED] == true => EdgeStatus::Cancelled,
        DeployStatus::Stopped => EdgeStatus::Cancelled,
        DeployStatus::Pending if d.execution_id.is_none() => EdgeStatus::Pending,
        DeployStatus::Pending => match node_of(state, d) {
            Some(n) if is_online(&n) => EdgeStatus::Deploying,
            _ => EdgeStatus::Queued,
        },
    }
}

/// When the model server started serving, since the last start asked:
/// the node's first `running` report or the start's completion.
pub(crate) fn deployed_at(d: &Deployment) -> Option<Millis> {
    if d.status != DeployStatus::Running {
        return None;
    }
    let since = d
        .events
        .iter()
        .rposition(|e| e.event == "start")
        .map_or(0, |i| i + 1);
    d.events[since..]
        .iter()
        .find(|e| e.event == "running" || e.event == "started")
        .map(|e| e.timestamp)
}

/// The reason of the last failure, if the deployment failed.
pub(crate) fn failure(d: &Deployment) -> Option<String> {
    (d.status == DeployStatus::Failed)
        .then(|| d.events.iter().rev().find(|e| e.severity == "error"))
        .flatten()
        .map(|e| e.message.clone())
}

/// Deploys a trained model on a node: a core deployment named after
/// both, with `extra` (the dialect's own fields), started at once.
pub(crate) async fn deploy(
    state: &AppState,
    p: &Principal,
    m: &Model,
    node: &Node,
    extra: Value,
) -> Result<Deployment, DomainError> {
    if m.trained.is_none() {
        return Err(DomainError::Invalid(vec![format!(
            "model {} has not been trained: train it before deploying it",
            m.id
        )]));
    }
    let input = DeploymentInput {
        name: Some(format!("{} on {}", m.name, node.name)),
        description: Some(format!(
            "The ONNX export of model {} served on {}",
            m.id, node.node_id
        )),
        environment: Some("production".into()),
        model_id: Some(m.id.clone()),
        node_id: Some(node.id.clone()),
        deployment_type: Some("api".into()),
        extra: extra.to_string(),
        ..Default::default()
    };
    let d = state
        .runtime
        .deployments
        .create(input, p.owner(), &p.user_id)
        .await?;
    match state.runtime.deployments.start(&d.id, &p.user_id).await {
        Ok(d) => Ok(d),
        // The failure is recorded on the deployment, which says why.
        Err(DomainError::Invalid(_)) => Ok(state
            .runtime
            .deployments
            .resolve(&d.owner.org_id, &d.id)?
            .unwrap_or(d)),
        Err(e) => Err(e),
    }
}

/// Cancels a deployment: its server is stopped if it runs or is
/// starting, and it stays listed as `cancelled`.
pub(crate) async fn cancel(
    state: &AppState,
    p: &Principal,
    d: &Deployment,
) -> Result<Deployment, DomainError> {
    let active = d.is_running || d.status == DeployStatus::Pending && d.execution_id.is_some();
    if active {
        state.runtime.deployments.stop(&d.id, &p.user_id).await?;
    }
    let input = DeploymentInput {
        extra: json!({ CANCELLED: true }).to_string(),
        ..Default::default()
    };
    state
        .runtime
        .deployments
        .update(&d.id, input, &p.user_id)
        .await
}
