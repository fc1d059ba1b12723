//! `NodeActor`: the one writer of a node's record, the holder of its live
//! connection, and the keeper of its command queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::node::{CommandOrigin, CommandStatus, Node, NodeCommand};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Value, json};
use warden_storage::{Millis, Record, Store, Write, now_millis};

use super::protocol::{
    CommandReply, Connection, Envelope, Heartbeat, Outbound, Registration, kinds,
};
use crate::DomainError;

/// Telemetry intervals the server gives daemons in `register.ack`.
#[derive(Debug, Clone, Copy)]
pub struct NodeTiming {
    pub heartbeat: Duration,
    pub metrics: Duration,
    /// An actor with no connection and no message for this long stops
    /// (passivates); the supervisor starts it again on the next use.
    pub idle: Duration,
    /// Heartbeats that change nothing but `lastHeartbeat` and the host's
    /// gauges (CPU, RAM, uptime, GPU load) are written at most this often;
    /// a crash loses at most this much of them, never a status change.
    pub heartbeat_write: Duration,
}

impl Default for NodeTiming {
    /// AIWM's own defaults.
    fn default() -> Self {
        NodeTiming {
            heartbeat: Duration::from_secs(30),
            metrics: Duration::from_secs(60),
            idle: Duration::from_secs(300),
            heartbeat_write: Duration::from_secs(15),
        }
    }
}

/// How long a caller waits for a node actor's answer. A handler does at
/// most a few durable writes; far beyond them is a stuck actor.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The live connections of nodes, kept outside their actors so that an
/// actor restarted after a crash takes its node's connection back at once.
pub type LiveConnections = Arc<Mutex<HashMap<String, Connection>>>;

/// A command to queue for a node.
#[derive(Debug, Clone)]
pub struct NewCommand {
    /// The command's id (its envelope's `messageId`) when the caller
    /// derives it (execution steps): queuing it again answers the
    /// command as it stands.
    pub id: Option<String>,
    pub kind: String,
    pub resource_type: String,
    pub resource_id: String,
    pub data: Value,
    pub metadata: Value,
    pub created_by: String,
    /// The same key always names the same command: a retried enqueue
    /// returns the command the first attempt made, never a second one.
    pub idempotency_key: Option<String>,
    pub origin: Option<CommandOrigin>,
}

/// A node answered a command (an ack, a progress report, a result): what
/// the node actor tells, once the answer is durable on the command.
#[derive(Debug, Clone)]
pub struct CommandEvent {
    pub command: NodeCommand,
    pub kind: ReplyKind,
    /// The reply's own `messageId`.
    pub reply_id: String,
    /// The progress the reply reported.
    pub progress: Option<f64>,
}

/// Who hears of answered commands (the executions that sent them, the
/// records a command changes: models for downloads).
pub type CommandListener = Arc<dyn Fn(CommandEvent) + Send + Sync>;

/// The id of the command an idempotency key names on a node: a UUID
/// (version 8) from the SHA-256 of both, so it is the envelope's messageId.
pub fn command_id(node_id: &str, key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(node_id.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Whether a node's reply acknowledges or completes a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Ack,
    Result,
}

pub enum NodeMsg {
    Update {
        patch: super::NodePatch,
        by: String,
        reply: RpcReplyPort<Result<Node, DomainError>>,
    },
    Delete {
        by: String,
        reply: RpcReplyPort<Result<Node, DomainError>>,
    },
    /// A daemon's connection; replaces any earlier one.
    Attach {
        conn: Connection,
        reply: RpcReplyPort<Result<Node, DomainError>>,
    },
    Detach {
        conn_id: u64,
    },
    /// Closes the live connection (a credential was revoked).
    Disconnect {
        reason: String,
        reply: RpcReplyPort<Result<(), DomainError>>,
    },
    Register {
        conn_id: u64,
        reg: Box<Registration>,
        reply: RpcReplyPort<Result<Node, DomainError>>,
    },
    Heartbeat(Box<Heartbeat>),
    /// A node's `command.ack` / `command.result`: answered once recorded,
    /// so a reply that meets a dying actor is retried, never lost.
    CommandReply {
        kind: ReplyKind,
        reply: Box<CommandReply>,
        done: RpcReplyPort<Result<(), DomainError>>,
    },
    Enqueue {
        command: Box<NewCommand>,
        reply: RpcReplyPort<Result<NodeCommand, DomainError>>,
    },
    /// A write of this command failed: forget what was remembered of it.
    Forget(String),
    /// A command stored as sent whose frame could not leave.
    Requeue(Box<NodeCommand>),
    /// Drops a queued command, or tells the node to stop a sent one.
    Revoke {
        command_id: String,
        reason: String,
        reply: RpcReplyPort<Result<(), DomainError>>,
    },
    /// Liveness check, every heartbeat interval.
    Tick,
    /// Fault injection: panic inside the handler.
    Crash,
}

pub struct NodeArgs {
    pub store: Store,
    pub id: String,
    pub timing: NodeTiming,
    pub live: LiveConnections,
    pub listener: Option<CommandListener>,
}

pub struct NodeState {
    store: Store,
    node: Node,
    /// The stored version of `node` once every write asked for lands: the
    /// actor writes with expected versions, so a write of a stale actor
    /// (or one racing the supervisor's failure mark) is refused, not applied.
    version: u64,
    conn: Option<Connection>,
    live: LiveConnections,
    listener: Option<CommandListener>,
    timing: NodeTiming,
    /// When the last message other than a tick arrived.
    last_used: std::time::Instant,
    /// When the record was last queued for writing, and whether the node
    /// has changed since (heartbeat gauges waiting for the next write).
    last_written: std::time::Instant,
    dirty: bool,
    /// Commands this actor wrote lately, with their stored versions:
    /// answers to them are recorded without reading the store.
    commands: HashMap<String, (NodeCommand, u64)>,
    /// The end of the chain of actions waiting for their writes' flush.
    tail: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// Commands a node actor remembers (see `NodeState::commands`).
const MAX_REMEMBERED: usize = 4096;

/// Applies a node's ack or result to a command; false when it changes
/// nothing (an answer recorded already, an ack after the end).
fn record_reply(cmd: &mut NodeCommand, kind: ReplyKind, reply: &CommandReply, now: Millis) -> bool {
    match kind {
        ReplyKind::Ack => {
            if matches!(
                cmd.status,
                CommandStatus::Succeeded | CommandStatus::Failed | CommandStatus::Cancelled
            ) {
                return false;
            }
            cmd.status = CommandStatus::Acknowledged;
            cmd.acknowledged_at = Some(now);
        }
        ReplyKind::Result => {
            if matches!(cmd.status, CommandStatus::Succeeded | CommandStatus::Failed) {
                return false;
            }
            // A revoked command keeps its status; what the node did anyway
            // is still recorded.
            if cmd.status != CommandStatus::Cancelled {
                cmd.status = if reply.status == "success" {
                    CommandStatus::Succeeded
                } else {
                    CommandStatus::Failed
                };
            }
            cmd.result = reply
                .result
                .as_ref()
                .filter(|v| !v.is_null())
                .map(Value::to_string);
            cmd.error = reply
                .error
                .as_ref()
                .filter(|v| !v.is_null())
                .map(Value::to_string);
            cmd.completed_at = Some(now);
            cmd.acknowledged_at.get_or_insert(now);
        }
    }
    true
}

#[derive(Default)]
pub struct NodeActor;

/// The series a node's points go to.
pub fn series_name(node_id: &str, series: &str) -> String {
    format!("node/{node_id}/{series}")
}

/// Stores a node's `telemetry.metrics` or deployment event as a point of
/// its series (`metrics`, `deployments`), without waiting for the flush.
/// Points are append-only and keyed by the envelope's `messageId`, so the
/// gateway writes them itself: none can be lost in the mailbox of an actor
/// that is restarting, and a re-sent point is stored once. When the
/// store's queue of unacknowledged writes is full the point is refused
/// (and counted), never buffered without bound.
pub fn store_telemetry(
    store: &Store,
    node_id: &str,
    series: &str,
    frame: &super::protocol::RawFrame<'_>,
) -> Result<(), warden_storage::StorageError> {
    let now = now_millis();
    let id = if frame.message_id.is_empty() {
        warden_storage::new_uuid()
    } else {
        frame.message_id.to_string()
    };
    let at: Millis = chrono::DateTime::parse_from_rfc3339(&frame.timestamp)
        .map(|t| t.timestamp_millis())
        .unwrap_or(now);
    let quoted = |s: &str| serde_json::to_string(s).expect("a string always serialises");
    // The data is stored as the daemon sent it, never parsed into a tree.
    let value = format!(
        r#"{{"messageId":{},"timestamp":{},"receivedAt":{},"data":{}}}"#,
        quoted(&id),
        quoted(&frame.timestamp),
        quoted(&super::protocol::iso_now()),
        frame.data_json(),
    );
    store.append_point_nowait(&series_name(node_id, series), at, &id, value.into_bytes())
}

fn envelope_of(cmd: &NodeCommand) -> Envelope {
    Envelope {
        kind: cmd.kind.clone(),
        message_id: cmd.id.clone(),
        timestamp: super::protocol::iso_now(),
        data: serde_json::from_str(&cmd.data).ok(),
        resource: Some(json!({"type": cmd.resource_type, "id": cmd.resource_id})),
        metadata: serde_json::from_str(&cmd.metadata).ok(),
        extra: Default::default(),
    }
}

impl NodeState {
    /// Persists and waits for the flush: for changes a caller is told about.
    /// A version mismatch means an earlier unacknowledged write was lost
    /// (dropped under back-pressure) or someone else wrote: re-read, and
    /// write again only if the node was not marked failed meanwhile.
    async fn persist(&mut self, next: Node) -> Result<Node, DomainError> {
        let first = self
            .store
            .commit(vec![Write::put(&next, Some(self.version))?])
            .await;
        let version = match first {
            Ok(v) => v[0],
            Err(warden_storage::StorageError::VersionMismatch { .. }) => {
                let (stored, version) = self
                    .store
                    .get_versioned::<Node>(&self.node.id)?
                    .ok_or_else(|| DomainError::NotFound {
                        kind: "node",
                        id: self.node.id.clone(),
                    })?;
                if stored.status == crate::node::NodeStatus::Failed {
                    return Err(DomainError::Failed {
                        kind: "node",
                        id: stored.id,
                        reason: stored.failure.unwrap_or_default(),
                    });
                }
                self.store
                    .commit(vec![Write::put(&next, Some(version))?])
                    .await?[0]
            }
            Err(e) => return Err(e.into()),
        };
        self.version = version;
        self.node = next.clone();
        self.last_written = std::time::Instant::now();
        self.dirty = false;
        Ok(next)
    }

    /// Writes the gauges a heartbeat left behind once `heartbeat_write` has
    /// passed since the last write.
    fn persist_if_due(&mut self) {
        if self.dirty && self.last_written.elapsed() >= self.timing.heartbeat_write {
            self.persist_soon();
        }
    }

    /// Persists without waiting: telemetry-driven changes nobody awaits.
    fn persist_soon(&mut self) {
        match Write::put(&self.node, Some(self.version)) {
            Ok(w) => match self.store.commit_nowait(vec![w]) {
                Ok(()) => {
                    self.version += 1;
                    self.last_written = std::time::Instant::now();
                    self.dirty = false;
                }
                Err(e) => {
                    tracing::warn!(node = %self.node.id, error = %e, "could not queue a node write")
                }
            },
            Err(e) => tracing::warn!(node = %self.node.id, error = %e, "could not encode a node"),
        }
    }

    /// Sets (or clears) the live connection, here and in the shared map.
    fn set_conn(&mut self, conn: Option<Connection>) -> Option<Connection> {
        let mut live = self
            .live
            .lock()
            .expect("the connection map is never poisoned");
        match &conn {
            Some(c) => {
                live.insert(self.node.id.clone(), c.clone());
            }
            None => {
                live.remove(&self.node.id);
            }
        }
        drop(live);
        std::mem::replace(&mut self.conn, conn)
    }

    fn send(&mut self, out: Outbound) -> bool {
        match &self.conn {
            Some(conn) => conn.send(out),
            None => false,
        }
    }

    /// Writes a command to the connection at most once: marked `sent`
    /// durably first; put back in the queue only if it never left.
    async fn deliver(&mut self, mut cmd: NodeCommand) -> Result<NodeCommand, DomainError> {
        if self.conn.is_none() {
            return Ok(cmd);
        }
        self.commands.remove(&cmd.id);
        cmd.status = CommandStatus::Sent;
        cmd.sent_at = Some(now_millis());
        self.store.put(&cmd).await?;
        self.send_or_requeue(cmd).await
    }

    /// Writes a command stored as sent to the connection; one that could
    /// not leave goes back to the queue.
    async fn send_or_requeue(&mut self, mut cmd: NodeCommand) -> Result<NodeCommand, DomainError> {
        if !self.send(Outbound::Event(Box::new(envelope_of(&cmd)))) {
            self.commands.remove(&cmd.id);
            cmd.status = CommandStatus::Queued;
            cmd.sent_at = None;
            self.store.put(&cmd).await?;
        }
        Ok(cmd)
    }

    async fn deliver_queued(&mut self) -> Result<(), DomainError> {
        let key = format!("{}/{}", self.node.id, CommandStatus::Queued.as_str());
        let mut queued = self.store.by_index::<NodeCommand>("node_status", &key)?;
        queued.sort_by_key(|c| c.created_at);
        for cmd in queued {
            self.deliver(cmd).await?;
        }
        Ok(())
    }

    /// Sends `register.ack` (with the intervals and the queued commands'
    /// ids), then the queued commands themselves, in order.
    async fn acknowledge_registration(&mut self) -> Result<(), DomainError> {
        let key = format!("{}/{}", self.node.id, CommandStatus::Queued.as_str());
        let pending = self
            .store
            .ids_by_index::<NodeCommand>("node_status", &key)?;
        let mut ack = Envelope::new(
            kinds::REGISTER_ACK,
            json!({
                "status": "success",
                "nodeId": self.node.node_id,
                "_id": self.node.id,
                "registeredAt": super::protocol::iso_now(),
                "controllerInfo": {
                    "controllerId": "warden",
                    "heartbeatInterval": self.timing.heartbeat.as_millis() as u64,
                    "metricsInterval": self.timing.metrics.as_millis() as u64,
                    "timezone": "UTC",
                },
                "pendingCommands": pending,
            }),
        );
        ack.extra.insert("status".into(), json!("success"));
        self.send(Outbound::Event(Box::new(ack)));
        self.deliver_queued().await
    }

    /// Chains `then` after `durable` and after every action chained
    /// before it: the actor goes on with its next message while the flush
    /// happens, and frames and notifications still leave in order.
    fn after_durable<F>(
        &mut self,
        durable: impl std::future::Future<Output = Result<Vec<u64>, warden_storage::StorageError>>
        + Send
        + 'static,
        then: F,
    ) where
        F: FnOnce(Result<Vec<u64>, warden_storage::StorageError>) + Send + 'static,
    {
        let before = self.tail.take();
        let (done, after) = tokio::sync::oneshot::channel();
        self.tail = Some(after);
        tokio::spawn(async move {
            let outcome = durable.await;
            if let Some(before) = before {
                let _ = before.await;
            }
            then(outcome);
            let _ = done.send(());
        });
    }

    /// A command and its stored version: from the commands this actor
    /// wrote lately (no read, which would wait for a flush in progress),
    /// else from the store.
    fn command(&self, id: &str) -> Result<Option<(NodeCommand, u64)>, DomainError> {
        if let Some(c) = self.commands.get(id) {
            return Ok(Some(c.clone()));
        }
        Ok(self.store.get_versioned::<NodeCommand>(id)?)
    }

    /// Records a node's ack or result; `done` is answered (and the
    /// listener told) once it is durable, in the order answers came.
    fn command_reply(
        &mut self,
        myself: &ActorRef<NodeMsg>,
        kind: ReplyKind,
        reply: CommandReply,
        done: RpcReplyPort<Result<(), DomainError>>,
    ) {
        let id = reply.original_message_id.clone();
        let found = match self.command(&id) {
            Ok(found) => found,
            Err(e) => {
                let _ = done.send(Err(e));
                return;
            }
        };
        // A node may only answer its own commands; an answer recorded
        // already is recorded once.
        let Some((mut cmd, version)) = found.filter(|(c, _)| c.node_id == self.node.id) else {
            let _ = done.send(Ok(()));
            return;
        };
        if !record_reply(&mut cmd, kind, &reply, now_millis()) {
            let _ = done.send(Ok(()));
            return;
        }
        let durable = match Write::put(&cmd, Some(version)).and_then(|w| self.store.submit(vec![w]))
        {
            Ok(durable) => durable,
            Err(e) => {
                self.commands.remove(&id);
                let _ = done.send(Err(e.into()));
                return;
            }
        };
        if matches!(
            cmd.status,
            CommandStatus::Succeeded | CommandStatus::Failed | CommandStatus::Cancelled
        ) {
            self.commands.remove(&id);
        } else {
            self.remember(cmd.clone(), version + 1);
        }
        let listener = self.listener.clone();
        let me = myself.clone();
        self.after_durable(durable, move |outcome| match outcome {
            Ok(_) => {
                if let Some(listener) = listener {
                    listener(CommandEvent {
                        command: cmd,
                        kind,
                        reply_id: reply.message_id,
                        progress: reply.progress,
                    });
                }
                let _ = done.send(Ok(()));
            }
            Err(e) => {
                let _ = me.cast(NodeMsg::Forget(id));
                let _ = done.send(Err(e.into()));
            }
        });
    }

    /// Keeps a command this actor wrote (bounded: the oldest go first).
    fn remember(&mut self, cmd: NodeCommand, version: u64) {
        if self.commands.len() >= MAX_REMEMBERED && !self.commands.contains_key(&cmd.id) {
            self.commands.clear();
        }
        self.commands.insert(cmd.id.clone(), (cmd, version));
    }

    /// A queued command is dropped (never sent); a sent one is marked
    /// cancelled and the node is told with `command.cancel`.
    async fn revoke(&mut self, command_id: &str, reason: &str) -> Result<(), DomainError> {
        self.commands.remove(command_id);
        let node_id = self.node.id.clone();
        let now = now_millis();
        let mut was = None;
        self.store
            .update::<NodeCommand, DomainError>(command_id, |cmd| {
                if cmd.node_id != node_id
                    || !matches!(
                        cmd.status,
                        CommandStatus::Queued | CommandStatus::Sent | CommandStatus::Acknowledged
                    )
                {
                    return Ok(None);
                }
                was = Some(cmd.status);
                cmd.status = CommandStatus::Cancelled;
                cmd.error = Some(json!({"code": "CANCELLED", "message": reason}).to_string());
                cmd.completed_at = Some(now);
                Ok(Some(()))
            })
            .await?;
        if matches!(was, Some(CommandStatus::Sent | CommandStatus::Acknowledged)) {
            let mut cancel = Envelope::new(
                kinds::COMMAND_CANCEL,
                json!({"originalMessageId": command_id, "reason": reason}),
            );
            cancel.resource = None;
            self.send(Outbound::Event(Box::new(cancel)));
        }
        Ok(())
    }
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<NodeMsg>,
        args: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        let (mut node, version) = args
            .store
            .get_versioned::<Node>(&args.id)?
            .filter(|(n, _)| !n.is_deleted())
            .ok_or_else(|| format!("node {} does not exist", args.id))?;
        // A connection outlives a crashed actor: the restarted one takes it
        // back at once, so the daemon notices nothing and commands flow.
        let conn = args
            .live
            .lock()
            .expect("the connection map is never poisoned")
            .get(&args.id)
            .filter(|c| !c.tx.is_closed())
            .cloned();
        node.websocket_connected = conn.is_some();
        Ok(NodeState {
            store: args.store,
            node,
            version,
            conn,
            live: args.live,
            listener: args.listener,
            timing: args.timing,
            last_used: std::time::Instant::now(),
            last_written: std::time::Instant::now(),
            dirty: false,
            commands: HashMap::new(),
            tail: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<NodeMsg>,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        // Liveness ticks come from the supervisor (`Kind::tick`): one
        // timer for all nodes, not one per actor.
        let _ = myself;
        if state.conn.is_some() {
            // Commands queued while the actor was down go out now.
            if let Err(e) = state.deliver_queued().await {
                tracing::warn!(node = %state.node.id, error = %e, "could not deliver queued commands");
            }
        } else {
            state
                .live
                .lock()
                .expect("the connection map is never poisoned")
                .remove(&state.node.id);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<NodeMsg>,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        let had_conn = state.set_conn(None).is_some();
        if !state.node.is_deleted() && (had_conn || state.dirty) {
            if had_conn {
                state.node.websocket_connected = false;
            }
            state.persist_soon();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: the handler's future (every branch's awaits) is large and
        // lives only while a message is handled; inline, ractor's loop
        // would carry its size in every idle node's task.
        Box::pin(handle_message(myself, msg, state)).await
    }
}

async fn handle_message(
    myself: ActorRef<NodeMsg>,
    msg: NodeMsg,
    state: &mut NodeState,
) -> Result<(), ActorProcessingErr> {
    let now = now_millis();
    if !matches!(msg, NodeMsg::Tick) {
        state.last_used = std::time::Instant::now();
    }
    match msg {
        NodeMsg::Update { patch, by, reply } => {
            let mut next = state.node.clone();
            let result = match super::apply(&mut next, patch, &by) {
                Ok(()) => state.persist(next).await,
                Err(e) => Err(e),
            };
            let _ = reply.send(result);
        }
        NodeMsg::Delete { by, reply } => {
            let mut next = state.node.clone();
            next.audit.delete(&by);
            next.websocket_connected = false;
            match state.persist(next).await {
                Ok(node) => {
                    state.send(Outbound::Close("the node was deleted".into()));
                    state.set_conn(None);
                    let _ = reply.send(Ok(node));
                    myself.stop(Some("deleted".into()));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        NodeMsg::Attach { conn, reply } => {
            let id = conn.id;
            // The same connection again (a session re-binding after
            // this actor took it back from a crashed one) stays open.
            if let Some(old) = state.set_conn(Some(conn)).filter(|old| old.id != id) {
                old.send(Outbound::Close(
                    "replaced by a newer connection of the same node".into(),
                ));
            }
            // Persisted before connection.ack goes out: a client told it is
            // connected reads websocketConnected: true.
            let mut next = state.node.clone();
            super::connected(&mut next, now);
            let _ = reply.send(state.persist(next).await);
        }
        NodeMsg::Detach { conn_id } => {
            if state.conn.as_ref().is_some_and(|c| c.id == conn_id) {
                state.set_conn(None);
                super::disconnected(&mut state.node, now);
                state.persist_soon();
            }
        }
        NodeMsg::Disconnect { reason, reply } => {
            if let Some(conn) = state.set_conn(None) {
                conn.send(Outbound::Close(reason));
                super::disconnected(&mut state.node, now);
                let next = state.node.clone();
                let _ = reply.send(state.persist(next).await.map(|_| ()));
            } else {
                let _ = reply.send(Ok(()));
            }
        }
        NodeMsg::Register {
            conn_id,
            reg,
            reply,
        } => {
            if state.conn.as_ref().is_none_or(|c| c.id != conn_id) {
                let _ = reply.send(Err(DomainError::Unavailable(
                    "this connection was replaced".into(),
                )));
                return Ok(());
            }
            let mut next = state.node.clone();
            super::register(&mut next, &reg, now);
            let result = match state.persist(next).await {
                Ok(node) => state.acknowledge_registration().await.map(|()| node),
                Err(e) => Err(e),
            };
            let _ = reply.send(result);
        }
        NodeMsg::Heartbeat(hb) => {
            if state.node.status == crate::node::NodeStatus::Offline {
                // The node's return: a status change is durable before
                // anything else happens.
                let mut next = state.node.clone();
                super::heartbeat(&mut next, &hb, now);
                if let Err(e) = state.persist(next).await {
                    tracing::warn!(node = %state.node.id, error = %e, "could not record the node's return");
                }
            } else {
                // The common case, changed in place (no copy of the node
                // per beat): only `lastHeartbeat` and host gauges move.
                let gpus = state.node.gpu_devices.len();
                super::heartbeat(&mut state.node, &hb, now);
                let hardware = state.node.gpu_devices.len() != gpus;
                state.dirty = true;
                if hardware {
                    state.persist_soon();
                } else {
                    state.persist_if_due();
                }
            }
        }
        NodeMsg::CommandReply { kind, reply, done } => {
            state.command_reply(&myself, kind, *reply, done);
        }
        NodeMsg::Forget(id) => {
            state.commands.remove(&id);
        }
        NodeMsg::Requeue(cmd) => {
            // Its frame could not leave after all: back to the queue.
            let mut cmd = *cmd;
            state.commands.remove(&cmd.id);
            cmd.status = CommandStatus::Queued;
            cmd.sent_at = None;
            if let Err(e) = state.store.put(&cmd).await {
                tracing::warn!(node = %state.node.id, error = %e, "could not put a command back in the queue");
            }
        }
        NodeMsg::Revoke {
            command_id,
            reason,
            reply,
        } => {
            let _ = reply.send(state.revoke(&command_id, &reason).await);
        }
        NodeMsg::Enqueue { command, reply } => {
            let id = match (&command.id, &command.idempotency_key) {
                (Some(id), _) => id.clone(),
                (None, Some(key)) => command_id(&state.node.id, key),
                (None, None) => uuid::Uuid::new_v4().to_string(),
            };
            // A retry of an enqueue that landed answers what it made.
            match state.store.get::<NodeCommand>(&id) {
                Ok(Some(existing)) if existing.node_id == state.node.id => {
                    let _ = reply.send(Ok(existing));
                    return Ok(());
                }
                Ok(Some(_)) => {
                    let _ = reply.send(Err(DomainError::Conflict {
                        field: "idempotencyKey".into(),
                        value: command.idempotency_key.unwrap_or_default(),
                    }));
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                    return Ok(());
                }
            }
            let cmd = NodeCommand {
                id,
                node_id: state.node.id.clone(),
                kind: command.kind,
                resource_type: command.resource_type,
                resource_id: command.resource_id,
                data: command.data.to_string(),
                metadata: command.metadata.to_string(),
                status: CommandStatus::Queued,
                result: None,
                error: None,
                owner: state.node.owner.clone(),
                created_by: command.created_by,
                created_at: now,
                sent_at: None,
                acknowledged_at: None,
                completed_at: None,
                origin: command.origin,
            };
            // To a connected node: stored as sent (one durable write) and
            // sent once that write is durable, while the actor goes on;
            // put back in the queue only if it never left.
            if let Some(conn) = state.conn.clone() {
                let mut cmd = cmd;
                cmd.status = CommandStatus::Sent;
                cmd.sent_at = Some(now);
                let durable = match Write::insert(&cmd).and_then(|w| state.store.submit(vec![w])) {
                    Ok(durable) => durable,
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        return Ok(());
                    }
                };
                state.remember(cmd.clone(), 1);
                let me = myself.clone();
                state.after_durable(durable, move |outcome| match outcome {
                    Ok(_) => {
                        if !conn.send(Outbound::Event(Box::new(envelope_of(&cmd)))) {
                            let _ = me.cast(NodeMsg::Requeue(Box::new(cmd.clone())));
                        }
                        let _ = reply.send(Ok(cmd));
                    }
                    Err(e) => {
                        let _ = me.cast(NodeMsg::Forget(cmd.id.clone()));
                        let _ = reply.send(Err(e.into()));
                    }
                });
            } else {
                let _ = reply.send(state.store.insert(cmd).await.map_err(DomainError::from));
            }
        }
        NodeMsg::Tick => {
            let interval = state.timing.heartbeat.as_millis() as Millis;
            if super::is_silent(&state.node, now, interval) {
                let mut next = state.node.clone();
                super::check_liveness(&mut next, now, interval);
                tracing::info!(node = %state.node.id, "no heartbeat for three intervals: offline");
                if let Err(e) = state.persist(next).await {
                    tracing::warn!(node = %state.node.id, error = %e, "could not record the node offline");
                }
            } else {
                state.persist_if_due();
            }
            // Idle and unconnected: passivate (an online node keeps its
            // actor, which is what turns it offline when heartbeats stop).
            let idle = state.last_used.elapsed() >= state.timing.idle;
            if idle && state.conn.is_none() && state.node.status != crate::node::NodeStatus::Online
            {
                tracing::debug!(node = %state.node.id, "idle: passivating");
                myself.stop(Some("passivated".into()));
            }
        }
        NodeMsg::Crash => panic!("fault injection: node {} was told to crash", state.node.id),
    }
    Ok(())
}

/// The public API of a running node actor.
#[derive(Clone)]
pub struct NodeHandle(pub ActorRef<NodeMsg>);

async fn call<T: Send + 'static>(
    actor: &ActorRef<NodeMsg>,
    msg: impl FnOnce(RpcReplyPort<Result<T, DomainError>>) -> NodeMsg,
) -> Result<T, DomainError> {
    crate::ask(actor, CALL_TIMEOUT, "the node's actor", msg).await
}

impl NodeHandle {
    pub async fn update(&self, patch: super::NodePatch, by: &str) -> Result<Node, DomainError> {
        let by = by.to_owned();
        call(&self.0, |reply| NodeMsg::Update { patch, by, reply }).await
    }

    pub async fn delete(&self, by: &str) -> Result<Node, DomainError> {
        let by = by.to_owned();
        call(&self.0, |reply| NodeMsg::Delete { by, reply }).await
    }

    pub async fn attach(&self, conn: Connection) -> Result<Node, DomainError> {
        call(&self.0, |reply| NodeMsg::Attach { conn, reply }).await
    }

    pub async fn register(&self, conn_id: u64, reg: Registration) -> Result<Node, DomainError> {
        call(&self.0, |reply| NodeMsg::Register {
            conn_id,
            reg: Box::new(reg),
            reply,
        })
        .await
    }

    pub async fn revoke(&self, command_id: &str, reason: &str) -> Result<(), DomainError> {
        let (command_id, reason) = (command_id.to_owned(), reason.to_owned());
        call(&self.0, |reply| NodeMsg::Revoke {
            command_id,
            reason,
            reply,
        })
        .await
    }

    pub async fn disconnect(&self, reason: &str) -> Result<(), DomainError> {
        let reason = reason.to_owned();
        call(&self.0, |reply| NodeMsg::Disconnect { reason, reply }).await
    }

    pub async fn enqueue(&self, command: NewCommand) -> Result<NodeCommand, DomainError> {
        call(&self.0, |reply| NodeMsg::Enqueue {
            command: Box::new(command),
            reply,
        })
        .await
    }

    /// Fire-and-forget messages: false when the actor is gone (re-resolve it).
    pub fn detach(&self, conn_id: u64) -> bool {
        self.0.cast(NodeMsg::Detach { conn_id }).is_ok()
    }

    /// Casts a heartbeat; gives it back when the actor had stopped, so the
    /// caller can send it to the restarted one without a copy per beat.
    pub fn heartbeat(&self, hb: Heartbeat) -> Result<(), Heartbeat> {
        match self.0.cast(NodeMsg::Heartbeat(Box::new(hb))) {
            Ok(()) => Ok(()),
            Err(ractor::MessagingErr::SendErr(NodeMsg::Heartbeat(hb))) => Err(*hb),
            Err(_) => Ok(()),
        }
    }

    /// Records a node's reply to a command (idempotent: an ack or a result
    /// recorded twice is recorded once).
    pub async fn command_reply(
        &self,
        kind: ReplyKind,
        reply: CommandReply,
    ) -> Result<(), DomainError> {
        call(&self.0, |done| NodeMsg::CommandReply {
            kind,
            reply: Box::new(reply),
            done,
        })
        .await
    }

    pub fn crash(&self) {
        let _ = self.0.cast(NodeMsg::Crash);
    }

    pub fn is_alive(&self) -> bool {
        matches!(
            self.0.get_status(),
            ractor::ActorStatus::Running
                | ractor::ActorStatus::Starting
                | ractor::ActorStatus::Upgrading
        )
    }
}
