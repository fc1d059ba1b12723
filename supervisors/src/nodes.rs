//! Nodes: the kind definition for the supervisor and the service the API calls.

use ractor::ActorRef;
use warden_actors::DomainError;
use warden_actors::node::NodeCommand;
use warden_actors::node::protocol::{CommandReply, Connection};
use warden_actors::node::{
    self, CommandListener, LiveConnections, NewCommand, NewNode, NodeActor, NodeArgs, NodeHandle,
    NodeMsg, NodePatch, NodeTiming, ReplyKind,
};
use warden_actors::node::{Node, NodeStatus};
use warden_domain::Owner;
use warden_storage::{Record, Store};

use crate::{Kind, KindRef};

pub struct NodeKind {
    store: Store,
    timing: NodeTiming,
    live: LiveConnections,
    listener: Option<CommandListener>,
}

impl NodeKind {
    pub(crate) fn new(store: Store, timing: NodeTiming, listener: Option<CommandListener>) -> Self {
        NodeKind {
            store,
            timing,
            live: LiveConnections::default(),
            listener,
        }
    }
}

impl Kind for NodeKind {
    type Actor = NodeActor;
    type Msg = NodeMsg;
    type Args = NodeArgs;
    const KIND: &'static str = "node";
    const SUPERVISOR: &'static str = "nodes";

    fn actor(&self) -> NodeActor {
        NodeActor
    }

    fn args(&self, id: &str) -> NodeArgs {
        NodeArgs {
            store: self.store.clone(),
            id: id.to_owned(),
            timing: self.timing,
            live: self.live.clone(),
            listener: self.listener.clone(),
        }
    }

    fn exists(&self, id: &str) -> Result<bool, DomainError> {
        Ok(self.store.get::<Node>(id)?.is_some_and(|n| !n.is_deleted()))
    }

    /// Nodes that were online when the server stopped: their actors come
    /// back to watch for the daemon's return.
    fn boot_ids(&self) -> Vec<String> {
        let online = node::status_scope(None, NodeStatus::Online.as_str());
        self.store
            .ids_in_scope::<Node>(node::STATUS_CREATED, &online)
            .unwrap_or_default()
    }

    fn failed(&self) -> Vec<(String, String)> {
        let failed = node::status_scope(None, NodeStatus::Failed.as_str());
        self.store
            .in_scope::<Node>(node::STATUS_CREATED, &failed)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| !n.is_deleted())
            .map(|n| (n.id, n.failure.unwrap_or_default()))
            .collect()
    }

    async fn mark_failed(&self, id: &str, reason: &str) {
        let result = self
            .store
            .update::<Node, DomainError>(id, |n| {
                node::fail(n, reason);
                Ok(Some(()))
            })
            .await;
        if let Err(e) = result {
            tracing::error!(node = id, error = %e, "could not record the node's failure");
        }
    }

    async fn clear_failed(&self, id: &str) {
        let result = self
            .store
            .update::<Node, DomainError>(id, |n| {
                node::reset(n);
                Ok(Some(()))
            })
            .await;
        if let Err(e) = result {
            tracing::error!(node = id, error = %e, "could not clear the node's failure");
        }
    }

    fn crash(actor: &ActorRef<NodeMsg>) {
        NodeHandle(actor.clone()).crash();
    }

    /// Liveness: every node actor checks its heartbeat once an interval.
    fn tick(&self) -> Option<crate::kind::Tick<NodeMsg>> {
        Some((self.timing.heartbeat, || NodeMsg::Tick))
    }
}

/// Node commands. Reads go straight to the store.
#[derive(Clone)]
pub struct Nodes {
    kind: KindRef<NodeKind>,
    store: Store,
}

impl Nodes {
    pub(crate) fn new(kind: KindRef<NodeKind>, store: Store) -> Self {
        Nodes { kind, store }
    }

    /// Writes the first version of a node; its actor starts on first use.
    pub async fn create(&self, new: NewNode, owner: Owner, by: &str) -> Result<Node, DomainError> {
        let node = node::create(new, owner, by)?;
        Ok(self.store.insert(node).await?)
    }

    pub async fn update(&self, id: &str, patch: NodePatch, by: &str) -> Result<Node, DomainError> {
        self.kind
            .with_actor(id, |a| {
                let patch = patch.clone();
                async move { NodeHandle(a).update(patch, by).await }
            })
            .await
    }

    /// The running actor of a node, started if needed: for the gateway,
    /// which sends telemetry to it directly.
    pub async fn handle(&self, id: &str) -> Result<NodeHandle, DomainError> {
        Ok(NodeHandle(self.kind.get_or_activate(id).await?))
    }

    /// Hands a daemon's connection to its node's actor.
    pub async fn attach(
        &self,
        id: &str,
        conn: Connection,
    ) -> Result<(NodeHandle, Node), DomainError> {
        let mut result = None;
        let node = self
            .kind
            .with_actor(id, |a| {
                let conn = conn.clone();
                result = Some(NodeHandle(a.clone()));
                async move { NodeHandle(a).attach(conn).await }
            })
            .await?;
        Ok((
            result.expect("with_actor ran the closure at least once"),
            node,
        ))
    }

    /// Queues a command for a node; sent at once when it is connected.
    /// Retries (here, when the actor died mid-call, or a client's retry
    /// with the same key) carry one idempotency key: one command at most.
    pub async fn enqueue(
        &self,
        id: &str,
        mut command: NewCommand,
    ) -> Result<NodeCommand, DomainError> {
        command
            .idempotency_key
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string());
        self.kind
            .with_actor(id, |a| {
                let command = command.clone();
                async move { NodeHandle(a).enqueue(command).await }
            })
            .await
    }

    /// Records a node's reply to a command; retried against a restarted
    /// actor, so a reply is never lost to a crash.
    pub async fn command_reply(
        &self,
        id: &str,
        kind: ReplyKind,
        reply: CommandReply,
    ) -> Result<(), DomainError> {
        self.kind
            .with_actor(id, |a| {
                let reply = reply.clone();
                async move { NodeHandle(a).command_reply(kind, reply).await }
            })
            .await
    }

    /// Drops a queued command, or tells its node to stop it.
    pub async fn revoke(
        &self,
        id: &str,
        command_id: &str,
        reason: &str,
    ) -> Result<(), DomainError> {
        self.kind
            .with_actor(id, |a| async move {
                NodeHandle(a).revoke(command_id, reason).await
            })
            .await
    }

    /// A live node by `_id`, or by `nodeId` within `org`.
    pub fn resolve(&self, org: &str, id: &str) -> Result<Node, DomainError> {
        let found = match self.store.get::<Node>(id)? {
            Some(n) => Some(n),
            None => self
                .store
                .get_by_unique::<Node>("nodeId", &format!("{org}/{id}"))?,
        };
        found
            .filter(|n| !n.is_deleted())
            .ok_or_else(|| DomainError::NotFound {
                kind: "Node",
                id: id.to_owned(),
            })
    }

    /// Closes a node's live connection, if it has one.
    pub async fn disconnect(&self, id: &str, reason: &str) -> Result<(), DomainError> {
        self.kind
            .with_actor(
                id,
                |a| async move { NodeHandle(a).disconnect(reason).await },
            )
            .await
    }

    pub fn timing(&self) -> NodeTiming {
        self.kind.kind().timing
    }

    /// Soft-deletes a node. A failed node is reset first, so that its own
    /// actor (the one writer) performs the delete.
    pub async fn delete(&self, id: &str, by: &str) -> Result<Node, DomainError> {
        let delete = || {
            self.kind
                .with_actor(id, |a| async move { NodeHandle(a).delete(by).await })
        };
        match delete().await {
            Err(DomainError::Failed { .. }) => {
                self.kind.reset(id).await?;
                delete().await
            }
            other => other,
        }
    }
}

/// Execution steps reach their nodes through the nodes service.
impl warden_actors::execution::Dispatch for Nodes {
    fn send(
        &self,
        org: &str,
        node: &str,
        command: NewCommand,
    ) -> warden_actors::execution::BoxFuture<Result<NodeCommand, DomainError>> {
        let (nodes, org, node) = (self.clone(), org.to_owned(), node.to_owned());
        Box::pin(async move {
            let id = nodes.resolve(&org, &node)?.id;
            nodes.enqueue(&id, command).await
        })
    }

    fn revoke(
        &self,
        org: &str,
        node: &str,
        command_id: &str,
        reason: &str,
    ) -> warden_actors::execution::BoxFuture<Result<(), DomainError>> {
        let (nodes, org, node) = (self.clone(), org.to_owned(), node.to_owned());
        let (command_id, reason) = (command_id.to_owned(), reason.to_owned());
        Box::pin(async move {
            let id = nodes.resolve(&org, &node)?.id;
            nodes.revoke(&id, &command_id, &reason).await
        })
    }
}
