//! `/ws/node` as a raw WebSocket: JSON text frames. The token comes as
//! `?token=` or `Authorization: Bearer`; the node as `?nodeId=`. A bad
//! token is refused with 401 before the upgrade.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
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
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(4096)
        .max_message_size(super::MAX_FRAME_BYTES)
        .max_frame_size(super::MAX_FRAME_BYTES)
        .on_upgrade(move |socket| run(socket, session, rx))
}

/// Bytes read from a daemon's socket at a time, allocated per connection:
/// a heartbeat (~300 B) or a metrics frame (~1.5 KiB) fits in one read;
/// larger frames take more reads.
const READ_BUFFER: usize = 2048;

/// Close codes (RFC 6455 §7.4.1).
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const TOO_BIG: u16 = 1009;

/// How long a closing connection waits for the peer's side of the close
/// handshake before it is dropped.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long the 1009 Close of an oversized frame is left to be read.
const TOO_BIG_LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// One connection. A close is a handshake both ways (RFC 6455 §5.5.1):
/// a peer's Close is answered (tungstenite queues the reply; the writer
/// flushes it) before the server drops the TCP connection; when the
/// server closes (1000 when the node's actor ends the session, 1001 at
/// shutdown, 1009 for an oversized frame) it sends its Close and reads
/// until the peer's Close comes back (or a grace period ends). Never a
/// reset without a Close.
async fn run(socket: WebSocket, mut session: Session, mut rx: mpsc::Receiver<Outbound>) {
    let lifecycle = session.lifecycle();
    let (mut sink, mut stream) = socket.split();
    // `Some(frame)`: send this Close and stop; `None`: flush and stop.
    // Sent at most once (a oneshot: no queue allocated per connection).
    let (close_tx, mut close_rx) = oneshot::channel::<Option<CloseFrame>>();
    let mut close_tx = Some(close_tx);
    let mut close = move |frame: Option<CloseFrame>| {
        if let Some(tx) = close_tx.take() {
            let _ = tx.send(frame);
        }
    };
    let mut writer = tokio::spawn(async move {
        loop {
            let out = tokio::select! {
                out = rx.recv() => out,
                close = &mut close_rx => {
                    if let Ok(Some(frame)) = close {
                        let _ = sink.send(Message::Close(Some(frame))).await;
                    }
                    break;
                }
            };
            let sent = match out {
                Some(Outbound::Event(env)) => sink.send(Message::text(env.to_json())).await,
                Some(Outbound::Close(reason)) => {
                    let frame = CloseFrame {
                        code: NORMAL,
                        reason: reason.into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    break;
                }
                None => break,
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = sink.flush().await;
    });
    let mut writer_done = false;
    // Set once this side has sent its Close: then only the peer's reply matters.
    let mut closing = false;
    // Set again whenever `closing` is first set; bounds the wait for the reply.
    let mut deadline = tokio::time::Instant::now() + CLOSE_GRACE;
    loop {
        if !closing {
            deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        }
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = lifecycle.stopping(), if !closing => {
                closing = true;
                close(Some(CloseFrame {
                    code: GOING_AWAY,
                    reason: "the server is shutting down".into(),
                }));
                continue;
            }
            _ = &mut writer, if !writer_done => {
                // The writer ended: the actor closed the session (deleted,
                // replaced, credential revoked), or the socket broke.
                writer_done = true;
                closing = true;
                continue;
            }
            _ = tokio::time::sleep_until(deadline), if closing => break,
        };
        match frame {
            Some(Ok(Message::Close(_))) => {
                if !closing {
                    // The peer closed: our reply is queued; flush it.
                    close(None);
                }
                break;
            }
            Some(Ok(_)) if closing => {}
            // Boxed: the frame handler's future is large and only lives
            // while a frame is handled; inline, every idle connection's
            // task would carry its size.
            Some(Ok(Message::Text(text))) => Box::pin(session.on_text(text.as_str())).await,
            Some(Ok(Message::Binary(_))) => {
                Box::pin(session.on_text("binary frames are not part of the protocol")).await
            }
            Some(Ok(_)) => {}
            Some(Err(e)) if !closing && too_big(&e) => {
                // An oversized frame is refused from its header, so its
                // payload is still unread and no reply can be parsed after
                // it: send 1009, give the daemon a moment to read it, then
                // drop (the unread payload makes the kernel end with a reset).
                close(Some(CloseFrame {
                    code: TOO_BIG,
                    reason: "frame too large".into(),
                }));
                if tokio::time::timeout(CLOSE_GRACE, &mut writer).await.is_ok() {
                    writer_done = true;
                }
                tokio::time::sleep(TOO_BIG_LINGER).await;
                break;
            }
            Some(Err(_)) | None => break,
        }
    }
    session.close();
    if !writer_done {
        let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
    }
    writer.abort();
}

/// Whether a read failed because a frame or message was over the limit.
pub(crate) fn too_big(e: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    std::error::Error::source(e)
        .and_then(|inner| inner.downcast_ref::<Error>())
        .is_some_and(|inner| matches!(inner, Error::Capacity(_)))
}

pub(crate) fn routes() -> Api {
    Api::new().get(
        "/ws/node",
        "aiwm: node gateway",
        "Node daemons' WebSocket (token in the handshake)",
        upgrade,
    )
}
