//! The same node protocol over Socket.IO v4 (namespace `/ws/node`, the
//! default `/socket.io/` path), as AIWM's own daemons speak it: the token
//! in `auth: {token}` (or `?token=` / `Authorization`), the node in the
//! token's `sub`, `auth.nodeId`, `?nodeId=` or `node.register`. Each event
//! is named by the envelope's `type` and carries the envelope.

use std::sync::Arc;

use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{Data, Event, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use warden_actors::node::protocol::Outbound;

use super::session::{Handshake, Refusal, Session, authenticate};
use crate::AppState;

const NAMESPACE: &str = "/ws/node";

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

fn query(s: &SocketRef, key: &str) -> Option<String> {
    let q = s.req_parts().uri.query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The checked handshake and the node id the client asked for.
type Checked = (Handshake, Option<String>);

/// What the connect middleware hands the connect handler (taken once).
#[derive(Clone)]
struct Accepted(Arc<std::sync::Mutex<Option<Checked>>>);

/// Refuses a connection before it joins the namespace: the client gets a
/// `connect_error` and no event is read.
async fn check(
    s: SocketRef,
    State(state): State<AppState>,
    TryData(auth): TryData<Value>,
) -> Result<(), Refusal> {
    let auth = auth.unwrap_or(Value::Null);
    let token = text(auth.get("token"))
        .or_else(|| query(&s, "token"))
        .or_else(|| crate::auth::bearer(&s.req_parts().headers).map(str::to_owned));
    let node_id = text(auth.get("nodeId")).or_else(|| query(&s, "nodeId"));
    let handshake = authenticate(&state, token.as_deref(), node_id.as_deref())?;
    s.extensions
        .insert(Accepted(Arc::new(std::sync::Mutex::new(Some((
            handshake, node_id,
        ))))));
    Ok(())
}

async fn connected(s: SocketRef, State(state): State<AppState>) {
    let taken = s
        .extensions
        .get::<Accepted>()
        .and_then(|a| a.0.lock().ok().and_then(|mut g| g.take()));
    let Some((handshake, requested)) = taken else {
        let _ = s.disconnect();
        return;
    };
    let (mut session, mut rx) = Session::new(state, handshake, requested);
    // The writer: the actor's frames become events named by their type.
    let writer_socket = s.clone();
    tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Outbound::Event(env) => {
                    if writer_socket.emit(env.kind.clone(), &env).is_err() {
                        break;
                    }
                }
                Outbound::Close(reason) => {
                    tracing::info!(%reason, "closing a Socket.IO node connection");
                    let _ = writer_socket.disconnect();
                    break;
                }
            }
        }
    });
    if let Err(e) = session.start().await {
        tracing::warn!(error = %e, "refused a Socket.IO node connection");
        let _ = s.disconnect();
        return;
    }
    // One reader owns the session and handles the events in the order
    // they arrived (socketioxide runs each handler as its own task, so a
    // command.ack could otherwise overtake its command.result). The
    // handler queues synchronously, before any task is spawned; `None`
    // is the disconnect, after which the session (and its shutdown guard)
    // ends.
    let (events, mut queue) = tokio::sync::mpsc::channel::<Option<String>>(EVENT_QUEUE);
    tokio::spawn(async move {
        while let Some(Some(text)) = queue.recv().await {
            session.on_text(&text).await;
        }
        session.close();
    });
    let on_event = events.clone();
    s.on_fallback(
        move |s: SocketRef, Event(event): Event, Data(mut payload): Data<Value>| {
            if let Value::Object(map) = &mut payload {
                map.entry("type").or_insert(Value::String(event));
            } else {
                payload = serde_json::json!({"type": event, "data": payload});
            }
            if on_event.try_send(Some(payload.to_string())).is_err() {
                tracing::warn!("a Socket.IO node sends faster than it is served; disconnecting it");
                let _ = s.disconnect();
            }
            std::future::ready(())
        },
    );
    s.on_disconnect(async move || {
        let _ = events.send(None).await;
    });
}

/// Events of one Socket.IO node waiting to be handled; a client that
/// keeps more waiting is disconnected.
const EVENT_QUEUE: usize = 1024;

/// The Socket.IO layer; at shutdown it closes every transport (a Socket.IO
/// disconnect would make AIWM's daemon give up for good).
pub(crate) fn layer(state: AppState) -> SocketIoLayer {
    let lifecycle = state.lifecycle.clone();
    let (layer, io) = SocketIo::builder()
        .with_state(state)
        .max_payload(super::MAX_FRAME_BYTES as u64)
        .ws_read_buffer_size(4096)
        .build_layer();
    io.ns(NAMESPACE, connected.with(check));
    tokio::spawn(async move {
        lifecycle.stopping().await;
        io.close().await;
    });
    layer
}
