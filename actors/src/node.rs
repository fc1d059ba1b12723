//! A node: a machine that runs workloads. Its `NodeActor` is the only
//! writer of its record once it exists; creation is done by the nodes
//! supervisor, which writes the first version before any actor runs.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use warden_storage::model::{Audit, GpuDevice, Node, NodeStatus, Owner};
use warden_storage::{Store, new_object_id, now_millis};

use crate::DomainError;

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
    if let Some(v) = node_id {
        node.node_id = v;
    }
    if let Some(v) = name {
        node.name = v;
    }
    if let Some(v) = role {
        node.role = v;
    }
    if let Some(v) = status {
        node.status = v;
    }
    if let Some(v) = is_local {
        node.is_local = v;
    }
    if let Some(v) = vpn_ip {
        node.vpn_ip = v;
    }
    if let Some(v) = cpu_cores {
        node.cpu_cores = v;
    }
    if let Some(v) = ram_total {
        node.ram_total = v;
    }
    if let Some(v) = ram_free {
        node.ram_free = v;
    }
    if let Some(v) = gpu_devices {
        node.gpu_devices = v;
    }
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

pub enum NodeMsg {
    Update {
        patch: NodePatch,
        by: String,
        reply: RpcReplyPort<Result<Node, DomainError>>,
    },
    Delete {
        by: String,
        reply: RpcReplyPort<Result<Node, DomainError>>,
    },
    /// Fault injection: panic inside the handler.
    Crash,
}

pub struct NodeArgs {
    pub store: Store,
    pub id: String,
}

pub struct NodeState {
    store: Store,
    node: Node,
}

#[derive(Default)]
pub struct NodeActor;

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<NodeMsg>,
        args: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        let node = args
            .store
            .get::<Node>(&args.id)?
            .filter(|n| n.audit.deleted_at.is_none())
            .ok_or_else(|| format!("node {} does not exist", args.id))?;
        Ok(NodeState {
            store: args.store,
            node,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Update { patch, by, reply } => {
                let mut next = state.node.clone();
                let result = match apply(&mut next, patch, &by) {
                    Ok(()) => state
                        .store
                        .put(&next)
                        .await
                        .map(|_| next)
                        .map_err(DomainError::from),
                    Err(e) => Err(e),
                };
                if let Ok(node) = &result {
                    state.node = node.clone();
                }
                let _ = reply.send(result);
            }
            NodeMsg::Delete { by, reply } => {
                let mut next = state.node.clone();
                next.audit.delete(&by);
                match state.store.put(&next).await {
                    Ok(_) => {
                        state.node = next.clone();
                        let _ = reply.send(Ok(next));
                        myself.stop(Some("deleted".into()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            NodeMsg::Crash => panic!("fault injection: node {} was told to crash", state.node.id),
        }
        Ok(())
    }
}

/// The public API of a running node actor.
#[derive(Clone)]
pub struct NodeHandle(pub ActorRef<NodeMsg>);

impl NodeHandle {
    pub async fn update(&self, patch: NodePatch, by: &str) -> Result<Node, DomainError> {
        let by = by.to_owned();
        call(&self.0, |reply| NodeMsg::Update { patch, by, reply }).await
    }

    pub async fn delete(&self, by: &str) -> Result<Node, DomainError> {
        let by = by.to_owned();
        call(&self.0, |reply| NodeMsg::Delete { by, reply }).await
    }

    pub fn crash(&self) {
        let _ = self.0.cast(NodeMsg::Crash);
    }
}

async fn call<T: Send + 'static>(
    actor: &ActorRef<NodeMsg>,
    msg: impl FnOnce(RpcReplyPort<Result<T, DomainError>>) -> NodeMsg,
) -> Result<T, DomainError> {
    match actor.call(msg, None).await {
        Ok(ractor::rpc::CallResult::Success(result)) => result,
        Ok(_) | Err(_) => Err(DomainError::Unavailable(
            "the node's actor stopped while handling the request".into(),
        )),
    }
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
}
