//! One node connection, independent of its transport.
//!
//! Authentication happens before the session exists (the handshake). A
//! node token names its node; a user token may name one in the handshake
//! (`nodeId`) or in `node.register`, and a node the server does not know
//! yet is then created, owned by the user and their organisation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::json;
use tokio::sync::mpsc;
use warden_actors::DomainError;
use warden_actors::node::Node;
use warden_actors::node::protocol::{
    CommandReply, Connection, Envelope, Heartbeat, Outbound, RawFrame, Registration, kinds,
};
use warden_actors::node::{NewNode, NodeHandle, ReplyKind};
use warden_identity::{Credential, Principal};
use warden_storage::Record;

use crate::AppState;

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// Why a handshake was refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    Unauthorized,
    UnknownNode(String),
    Forbidden(String),
    Unavailable(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unauthorized => write!(f, "Unauthorized"),
            Refusal::UnknownNode(id) => write!(f, "Node with ID {id} not found"),
            Refusal::Forbidden(m) | Refusal::Unavailable(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Refusal {}

impl From<DomainError> for Refusal {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::NotFound { id, .. } => Refusal::UnknownNode(id),
            other => Refusal::Unavailable(other.to_string()),
        }
    }
}

/// Who connected, checked at the handshake.
#[derive(Clone)]
pub(crate) struct Handshake {
    credential: Credential,
    /// The node the credential names, when it names one it may use
    /// (boxed: a session keeps the field for its whole life).
    node: Option<Box<Node>>,
}

/// A live node of `org_id` by `_id` or `nodeId`; other organisations'
/// nodes are invisible (`any_org` for instance admins).
fn visible_node(
    state: &AppState,
    org_id: &str,
    any_org: bool,
    id: &str,
) -> Result<Option<Node>, DomainError> {
    let by_id = state
        .store
        .get::<Node>(id)?
        .filter(|n| any_org || n.owner.org_id == org_id);
    let node = match by_id {
        Some(n) => Some(n),
        None => state
            .store
            .get_by_unique::<Node>("nodeId", &format!("{org_id}/{id}"))?,
    };
    Ok(node.filter(|n| !n.is_deleted()))
}

fn may_run(p: &Principal, node: &Node) -> bool {
    p.can_write() && p.sees_org(&node.owner.org_id)
}

/// Checks a handshake's token and the node it names.
pub(crate) fn authenticate(
    state: &AppState,
    token: Option<&str>,
    node_id: Option<&str>,
) -> Result<Handshake, Refusal> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::Unauthorized)?;
    let credential = state
        .identity
        .verify_credential(token)
        .map_err(|_| Refusal::Unauthorized)?;
    let node = match &credential {
        Credential::Node {
            node_id: sub,
            org_id,
        } => {
            let node = visible_node(state, org_id, false, sub)?
                .ok_or_else(|| Refusal::UnknownNode(sub.clone()))?;
            if node.owner.org_id != *org_id {
                return Err(Refusal::Unauthorized);
            }
            Some(node)
        }
        Credential::User(p) => match node_id.filter(|n| !n.is_empty()) {
            None => None,
            Some(id) => match visible_node(state, &p.org_id, p.is_admin(), id)? {
                Some(node) if may_run(p, &node) => Some(node),
                Some(_) => return Err(Refusal::Forbidden(format!("You may not run node {id}"))),
                None if p.can_write() => None, // created at registration
                None => {
                    return Err(Refusal::Forbidden(
                        "You do not have permission to create nodes".into(),
                    ));
                }
            },
        },
    };
    Ok(Handshake {
        credential,
        node: node.map(Box::new),
    })
}

/// Frames stored as time-series points.
const TELEMETRY: [&str; 3] = [
    kinds::METRICS,
    kinds::DEPLOYMENT_STATUS,
    kinds::DEPLOYMENT_LOGS,
];

pub(crate) struct Session {
    state: AppState,
    credential: Credential,
    conn: Connection,
    /// The node this connection speaks for, once known.
    node: Option<(String, NodeHandle)>,
    pending_node: Option<Box<Node>>,
    requested: Option<String>,
    /// Held while the session lives, so shutdown can wait for it.
    alive: Option<tokio::sync::mpsc::Sender<()>>,
}

impl Session {
    /// A session for an authenticated handshake, and the receiving end of
    /// its outbound queue.
    pub fn new(
        state: AppState,
        handshake: Handshake,
        requested: Option<String>,
    ) -> (Session, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(super::OUTBOUND_QUEUE);
        let conn = Connection {
            id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
            tx,
        };
        let alive = state.lifecycle.guard();
        let session = Session {
            alive,
            state,
            credential: handshake.credential,
            conn,
            node: None,
            pending_node: handshake.node,
            requested,
        };
        (session, rx)
    }

    /// Attaches to the node named at the handshake, then queues `connection.ack`.
    pub async fn start(&mut self) -> Result<(), Refusal> {
        if self.alive.is_none() {
            return Err(Refusal::Unavailable("the server is shutting down".into()));
        }
        if let Some(node) = self.pending_node.take() {
            self.bind(&node.id).await?;
        }
        let node_id = self.node.as_ref().map(|(id, _)| id.clone());
        let mut ack = Envelope::new(
            kinds::CONNECTION_ACK,
            json!({"status": "success", "nodeId": node_id, "controllerId": "warden", "serverVersion": self.state.config.version}),
        );
        ack.extra.insert("status".into(), json!("success"));
        ack.extra.insert("nodeId".into(), json!(node_id));
        ack.extra.insert("controllerId".into(), json!("warden"));
        ack.extra
            .insert("serverVersion".into(), json!(self.state.config.version));
        self.conn.send(Outbound::Event(Box::new(ack)));
        Ok(())
    }

    async fn bind(&mut self, id: &str) -> Result<(), DomainError> {
        let (handle, node) = self
            .state
            .runtime
            .nodes
            .attach(id, self.conn.clone())
            .await?;
        tracing::info!(node = %node.id, node_id = %node.node_id, connection = self.conn.id, "node connected");
        self.node = Some((node.id, handle));
        Ok(())
    }

    /// The `_id` of the node this connection registered as.
    fn bound_id(&self) -> Result<&str, DomainError> {
        self.node
            .as_ref()
            .map(|(id, _)| id.as_str())
            .ok_or_else(|| DomainError::Invalid(vec!["send node.register first".into()]))
    }

    /// The node's actor, re-attached if it was restarted since.
    async fn handle(&mut self) -> Result<NodeHandle, DomainError> {
        let id = self.bound_id()?.to_owned();
        if let Some((_, handle)) = &self.node
            && handle.is_alive()
        {
            return Ok(handle.clone());
        }
        self.bind(&id).await?;
        Ok(self.node.as_ref().expect("bind sets the node").1.clone())
    }

    /// Finds or creates the node a user-token connection registers as.
    async fn resolve_for_registration(&mut self, reg: &Registration) -> Result<(), DomainError> {
        if self.node.is_some() {
            return Ok(());
        }
        let Credential::User(p) = &self.credential else {
            return Err(DomainError::Invalid(vec![
                "this connection has no node".into(),
            ]));
        };
        let wanted = self
            .requested
            .clone()
            .or_else(|| reg.node_id.clone())
            .filter(|s| !s.is_empty());
        let wanted = wanted.ok_or_else(|| {
            DomainError::Invalid(vec![
                "nodeId must be given in the handshake or in node.register".into(),
            ])
        })?;
        if let Some(node) = visible_node(&self.state, &p.org_id, p.is_admin(), &wanted)? {
            if !may_run(p, &node) {
                return Err(DomainError::Invalid(vec![format!(
                    "you may not run node {wanted}"
                )]));
            }
            return self.bind(&node.id).await;
        }
        if !p.can_write() || wanted.len() > 128 {
            return Err(DomainError::Invalid(vec![
                "you may not create this node".into(),
            ]));
        }
        let name = reg
            .name
            .clone()
            .or_else(|| reg.hostname.clone())
            .unwrap_or_else(|| wanted.clone());
        let owner = p.owner();
        let new = NewNode {
            node_id: wanted.clone(),
            name,
            role: vec!["worker".into()],
            ..Default::default()
        };
        let node = match self
            .state
            .runtime
            .nodes
            .create(new, owner, &p.user_id)
            .await
        {
            Ok(node) => node,
            // Another connection created it a moment ago.
            Err(DomainError::Conflict { .. }) => {
                visible_node(&self.state, &p.org_id, false, &wanted)?.ok_or_else(|| {
                    DomainError::Unavailable("the node vanished while registering".into())
                })?
            }
            Err(e) => return Err(e),
        };
        tracing::info!(node = %node.id, node_id = %wanted, "node created on registration");
        self.bind(&node.id).await
    }

    /// Handles one text frame. Errors are answered on the connection.
    pub async fn on_text(&mut self, text: &str) {
        let started = Instant::now();
        let frame = RawFrame::read(text);
        let (kind, outcome) = match frame {
            // Most of the traffic, handled without a JSON tree.
            Some(f) if f.kind == kinds::HEARTBEAT => {
                let outcome = match f.payload::<Heartbeat>() {
                    Ok(hb) => self.heartbeat(hb).await,
                    Err(e) => Err(DomainError::Invalid(vec![e])),
                };
                (std::borrow::Cow::Borrowed(kinds::HEARTBEAT), outcome)
            }
            Some(f) if TELEMETRY.contains(&f.kind.as_ref()) => {
                let outcome = self.telemetry(&f);
                (std::borrow::Cow::Owned(f.kind.into_owned()), outcome)
            }
            _ => {
                let envelope = match serde_json::from_str::<Envelope>(text) {
                    Ok(e) => e,
                    Err(e) => {
                        self.reply_error(
                            "BAD_MESSAGE",
                            &format!("not a message envelope: {e}"),
                            None,
                        );
                        return;
                    }
                };
                let kind = envelope.kind.clone();
                (std::borrow::Cow::Owned(kind), self.dispatch(envelope).await)
            }
        };
        if let Err(e) = outcome {
            let message = match e {
                DomainError::Invalid(errors) => errors.join("; "),
                other => other.to_string(),
            };
            self.reply_error("REJECTED", &message, Some(&kind));
        }
        let route = match kind.as_ref() {
            kinds::REGISTER => "/ws/node node.register",
            kinds::HEARTBEAT => "/ws/node telemetry.heartbeat",
            kinds::METRICS => "/ws/node telemetry.metrics",
            kinds::COMMAND_ACK => "/ws/node command.ack",
            kinds::COMMAND_RESULT => "/ws/node command.result",
            kinds::DEPLOYMENT_STATUS => "/ws/node deployment.status",
            kinds::DEPLOYMENT_LOGS => "/ws/node deployment.logs",
            _ => "/ws/node other",
        };
        self.state
            .metrics
            .observe("WS", route, 200, started.elapsed());
    }

    /// Metrics and deployment events: points the gateway writes itself.
    fn telemetry(&self, frame: &RawFrame<'_>) -> Result<(), DomainError> {
        let series = if frame.kind == kinds::METRICS {
            "metrics"
        } else {
            "deployments"
        };
        let id = self.bound_id()?;
        warden_actors::node::store_telemetry(&self.state.store, id, series, frame)
            .map_err(|e| DomainError::Unavailable(format!("telemetry not stored: {e}")))?;
        if frame.kind == kinds::METRICS {
            return Ok(());
        }
        // Deployment reports (rare): also to the deployment they name.
        let data: serde_json::Value = serde_json::from_str(frame.data_json())
            .map_err(|e| DomainError::Invalid(vec![format!("data: {e}")]))?;
        let deployments = self.state.runtime.deployments.clone();
        if frame.kind == kinds::DEPLOYMENT_LOGS {
            deployments
                .node_logs(id, &data)
                .map_err(|e| DomainError::Unavailable(format!("logs not stored: {e}")))
        } else {
            let node = id.to_owned();
            tokio::spawn(async move { deployments.node_report(&node, data).await });
            Ok(())
        }
    }

    /// A heartbeat goes to the node's actor without an answer; re-sent
    /// once to a restarted actor if the first had stopped.
    async fn heartbeat(&mut self, hb: Heartbeat) -> Result<(), DomainError> {
        if let Err(hb) = self.handle().await?.heartbeat(hb) {
            let _ = self.handle().await?.heartbeat(hb);
        }
        Ok(())
    }

    /// Every other frame (heartbeats and telemetry are handled from the
    /// raw frame in `on_text`).
    async fn dispatch(&mut self, envelope: Envelope) -> Result<(), DomainError> {
        let invalid = |e: String| DomainError::Invalid(vec![e]);
        match envelope.kind.as_str() {
            kinds::REGISTER => {
                let reg: Registration = envelope.payload().map_err(invalid)?;
                self.resolve_for_registration(&reg).await?;
                let handle = self.handle().await?;
                handle.register(self.conn.id, reg).await?;
            }
            kinds::COMMAND_ACK | kinds::COMMAND_RESULT => {
                let mut reply: CommandReply = envelope.payload().map_err(invalid)?;
                reply.message_id = envelope.message_id.clone();
                if reply.original_message_id.is_empty() {
                    return Err(invalid("data.originalMessageId is required".into()));
                }
                let kind = if envelope.kind == kinds::COMMAND_ACK {
                    ReplyKind::Ack
                } else {
                    ReplyKind::Result
                };
                let id = self.bound_id()?;
                self.state
                    .runtime
                    .nodes
                    .command_reply(id, kind, reply)
                    .await?;
            }
            other => return Err(invalid(format!("unknown message type '{other}'"))),
        }
        Ok(())
    }

    fn reply_error(&self, code: &str, message: &str, original: Option<&str>) {
        let env = Envelope::new(
            kinds::ERROR,
            json!({"code": code, "message": message, "originalType": original}),
        );
        self.conn.send(Outbound::Event(Box::new(env)));
    }

    pub fn lifecycle(&self) -> crate::Lifecycle {
        self.state.lifecycle.clone()
    }

    /// The transport closed: the node's actor forgets this connection.
    pub fn close(&self) {
        if let Some((id, handle)) = &self.node {
            tracing::info!(node = %id, connection = self.conn.id, "node disconnected");
            handle.detach(self.conn.id);
        }
    }
}
