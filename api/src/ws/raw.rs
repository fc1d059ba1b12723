//! `/ws/node` as a raw WebSocket: JSON text frames. The token comes as
//! `?token=` or `Authorization: Bearer`; the node as `?nodeId=`. A bad
//! token is refused with 401 before the upgrade.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use warden_actors::node::protocol::Outbound;

use super::session::{Refusal, Session, authenticate};
use crate::AppState;
use crate::dialects::Aiwm;
use crate::error::ApiError;
use crate::openapi::Api;

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WsQuery {
    token: Option<String>,
    node_id: Option<String>,
}

pub(crate) fn refusal_response(r: Refusal) -> Response {
    let status = match r {
        Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
        Refusal::UnknownNode(_) => StatusCode::NOT_FOUND,
        Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
        Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::<Aiwm>::new(status, r.to_string()).into_response()
}

async fn upgrade(
    State(state): State<AppState>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = q
        .token
        .or_else(|| crate::auth::bearer(&headers).map(str::to_owned));
    let handshake = match authenticate(&state, token.as_deref(), q.node_id.as_deref()) {
        Ok(h) => h,
        Err(r) => return refusal_response(r),
    };
    let (mut session, rx) = Session::new(state, handshake, q.node_id);
    if let Err(r) = session.start().await {
        return refusal_response(r);
    }
    ws.read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(super::MAX_FRAME_BYTES)
        .max_frame_size(super::MAX_FRAME_BYTES)
        .on_upgrade(move |socket| run(socket, session, rx))
}

async fn run(socket: WebSocket, mut session: Session, mut rx: mpsc::Receiver<Outbound>) {
    let lifecycle = session.lifecycle();
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let sent = match out {
                Outbound::Event(env) => sink.send(Message::text(env.to_json())).await,
                Outbound::Close(reason) => {
                    let frame = CloseFrame {
                        code: 1000,
                        reason: reason.into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    break;
                }
            };
            if sent.is_err() {
                break;
            }
        }
    });
    let mut writer = writer;
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = lifecycle.stopping() => {
                // Close the transport (daemons reconnect), never a protocol-level goodbye.
                session.send(Outbound::Close("the server is shutting down".into()));
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), &mut writer).await;
                break;
            }
            _ = &mut writer => break,
        };
        match frame {
            Some(Ok(Message::Text(text))) => session.on_text(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                session
                    .on_text("binary frames are not part of the protocol")
                    .await
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
    session.close();
    writer.abort();
}

pub(crate) fn routes() -> Api {
    Api::new().get(
        "/ws/node",
        "aiwm: node gateway",
        "Node daemons' WebSocket (token in the handshake)",
        upgrade,
    )
}
