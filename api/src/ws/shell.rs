//! `/ws/shell/{id}` (vareon, VAREON-NEURONEST.md §3A, §4): a client's
//! connection to its terminal session. Everything is checked before the
//! upgrade, so a refused client never gets a shell: the id, the
//! credential (`?token=` or `Authorization: Bearer`, never a cookie: a
//! hostile page could ride one), the policy and the roles, the `Origin`,
//! the session's state and the caps.
//!
//! Two client protocols, chosen by the client's first frame: raw text
//! (keystrokes; a frame that is exactly `{"resize":{"cols","rows"}}` is
//! a resize), or the typed envelope of upstream's later UI
//! (`shell_input`, `shell_resize`, `resize`; output as `shell_output`).
//! Output waits for that first frame up to 500 ms, then goes raw.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use warden_actors::terminal::{MAX_INPUT_FRAME, Out, TermHandle, codes};
use warden_identity::Principal;
use warden_supervisors::OpenRefusal;

use crate::AppState;
use crate::dialects::vareon::Vareon;
use crate::error::ApiError;
use crate::openapi::Api;

type Refusal = ApiError<Vareon>;

/// Whether a client's session id can name a session: 1 to 64 letters,
/// digits, `.`, `_` or `-` (UUIDs and `Date.now()` values), never `.`
/// or `..`.
pub(crate) fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
}

#[derive(serde::Deserialize)]
struct ShellQuery {
    token: Option<String>,
}

/// The caller of a shell route: authenticated by a bearer token or
/// `?token=` only.
fn caller(state: &AppState, token: Option<&str>) -> Result<(Principal, String), Refusal> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    let p = state.identity.verify_token(token).map_err(|e| {
        tracing::debug!(error = %e, "refused a shell credential");
        ApiError::unauthorized()
    })?;
    Ok((p, token.to_owned()))
}

/// Whether a browser's `Origin` may open shells: the server's own, or
/// one the policy lists. Clients that send none (not browsers) may.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if allowed.iter().any(|a| a.trim_end_matches('/') == origin) {
        return true;
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| !host.is_empty() && rest == host)
}

/// Every connection's own number (a session tells its current client
/// from one it replaced).
static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

async fn upgrade(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ShellQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let (p, token) = match admit(&state, &id, q.token, &headers) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(ws) = ws else {
        return ApiError::<Vareon>::new(StatusCode::BAD_REQUEST, "a WebSocket upgrade is required")
            .into_response();
    };
    let handle = match open(&state, &p, &id).await {
        Ok(handle) => handle,
        Err(refusal) => return refusal.into_response(),
    };
    let user = p.user_id;
    ws.max_message_size(MAX_INPUT_FRAME)
        .max_frame_size(MAX_INPUT_FRAME)
        .on_upgrade(move |socket| run(socket, state, handle, Conn { id, user, token }))
}

/// The checks before anything is opened: the id, the credential, the
/// policy, the roles, the origin.
fn admit(
    state: &AppState,
    id: &str,
    query_token: Option<String>,
    headers: &HeaderMap,
) -> Result<(Principal, String), Refusal> {
    if !valid_id(id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a session id is 1 to 64 letters, digits, '.', '_' or '-'",
        ));
    }
    let token = query_token.or_else(|| crate::auth::bearer(headers).map(str::to_owned));
    let (p, token) = caller(state, token.as_deref())?;
    let policy = state.runtime.terminals.policy();
    if !policy.enabled {
        return Err(ApiError::forbidden(
            "interactive shells are disabled on this server ([shell] enabled)",
        ));
    }
    if !p
        .roles
        .iter()
        .any(|r| policy.roles.iter().any(|allowed| allowed == r.as_str()))
    {
        return Err(ApiError::forbidden(format!(
            "a shell needs one of the roles {}",
            policy.roles.join(", ")
        )));
    }
    if !origin_allowed(headers, &policy.origins) {
        return Err(ApiError::forbidden(
            "this origin may not open shells ([shell] origins)",
        ));
    }
    Ok((p, token))
}

/// The caller's session `id`, started when new: refused when closed or
/// over a cap.
async fn open(state: &AppState, p: &Principal, id: &str) -> Result<TermHandle, Refusal> {
    if state.lifecycle.guard().is_none() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    match state.runtime.terminals.open(p.owner(), id, (80, 24)).await {
        Ok(handle) => Ok(handle),
        Err(OpenRefusal::Closed) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "Terminal session is closed",
        )),
        Err(OpenRefusal::TooMany(why)) => Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, why)),
        Err(OpenRefusal::Failed(e)) => Err(e.into()),
    }
}

/// Who a connection is for.
struct Conn {
    id: String,
    user: String,
    token: String,
}

/// How output is framed for the client.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Raw,
    Envelope,
}

impl Mode {
    /// The mode a client's first text frame asks for.
    fn of(text: &str) -> Mode {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) if m.get("type").is_some_and(Value::is_string) => Mode::Envelope,
            _ => Mode::Raw,
        }
    }

    fn frame(self, text: String) -> Message {
        match self {
            Mode::Raw => Message::text(text),
            Mode::Envelope => Message::text(
                json!({"type": "shell_output", "payload": {"data": text}}).to_string(),
            ),
        }
    }
}

/// A window size from a JSON object's `cols` and `rows`.
fn size(v: &Value) -> Option<(u16, u16)> {
    let n = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .map(|n| n.min(u64::from(u16::MAX)) as u16)
    };
    Some((n("cols")?, n("rows")?))
}

/// What a client's text frame asks for.
#[derive(Debug, PartialEq)]
enum Frame {
    Input(Vec<u8>),
    Resize(u16, u16),
    Ignore,
}

/// Reads a text frame. In raw mode only a JSON object of exactly the
/// resize shape is control; anything else is typed (a keystroke `5` is
/// input). In envelope mode, text that is not an envelope is typed too.
fn read_frame(mode: Mode, text: &str) -> Frame {
    let parsed = serde_json::from_str::<Value>(text).ok();
    let object = parsed.as_ref().and_then(Value::as_object);
    match (mode, object) {
        (Mode::Raw, Some(m)) if m.len() == 1 => match m.get("resize").and_then(size) {
            Some((c, r)) => Frame::Resize(c, r),
            None => Frame::Input(text.as_bytes().to_vec()),
        },
        (Mode::Envelope, Some(m)) => {
            let payload = m.get("payload").unwrap_or(&Value::Null);
            match m.get("type").and_then(Value::as_str) {
                Some("shell_input") => payload
                    .get("data")
                    .and_then(Value::as_str)
                    .map_or(Frame::Ignore, |d| Frame::Input(d.as_bytes().to_vec())),
                Some("shell_resize") => {
                    size(payload).map_or(Frame::Ignore, |(c, r)| Frame::Resize(c, r))
                }
                Some("resize") => size(&Value::Object(m.clone()))
                    .map_or(Frame::Ignore, |(c, r)| Frame::Resize(c, r)),
                Some(_) => Frame::Ignore,
                None => Frame::Input(text.as_bytes().to_vec()),
            }
        }
        _ => Frame::Input(text.as_bytes().to_vec()),
    }
}

/// How long output waits for the client's first frame to pick a mode.
const MODE_WAIT: Duration = Duration::from_millis(500);
/// Keeps proxies from dropping an idle socket.
const PING_EVERY: Duration = Duration::from_secs(30);
/// How often the connection's credential is checked again (logout,
/// password change, user deleted: the shell closes with 1008).
const RECHECK_EVERY: Duration = Duration::from_secs(5);
/// How long a close waits for the client's side of the handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

async fn close_with(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.chars().take(120).collect::<String>().into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    // The client's Close completes the handshake.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn run(mut socket: WebSocket, state: AppState, handle: TermHandle, c: Conn) {
    let Some(_alive) = state.lifecycle.guard() else {
        close_with(&mut socket, codes::SHUTDOWN, "the server is shutting down").await;
        return;
    };
    let conn = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Out>(64);
    let mut pending: Vec<String> = match handle.attach(conn, tx).await {
        Ok(scrollback) if scrollback.is_empty() => Vec::new(),
        Ok(scrollback) => vec![scrollback],
        Err(e) => {
            close_with(&mut socket, codes::CLOSED, &e.to_string()).await;
            return;
        }
    };
    let mut mode: Option<Mode> = None;
    let decide = tokio::time::sleep(MODE_WAIT);
    tokio::pin!(decide);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut recheck =
        tokio::time::interval_at(tokio::time::Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
    let lifecycle = state.lifecycle.clone();
    // Whether the session ended (the client must not leave it detached).
    let mut ended = false;
    loop {
        tokio::select! {
            frame = socket.recv() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let m = *mode.get_or_insert_with(|| Mode::of(text.as_str()));
                    for p in pending.drain(..) {
                        if socket.send(m.frame(p)).await.is_err() {
                            break;
                        }
                    }
                    match read_frame(m, text.as_str()) {
                        Frame::Input(bytes) => handle.input(bytes),
                        Frame::Resize(cols, rows) => handle.resize(cols, rows),
                        Frame::Ignore => {}
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    let m = *mode.get_or_insert(Mode::Raw);
                    for p in pending.drain(..) {
                        let _ = socket.send(m.frame(p)).await;
                    }
                    handle.input(bytes.to_vec());
                }
                Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
                Some(Err(e)) if crate::ws::too_big(&e) => {
                    // Over the frame limit: the session ends with the shell.
                    handle.close_now("an input frame was over 64 KiB", codes::TOO_BIG);
                    ended = true;
                    close_with(&mut socket, codes::TOO_BIG, "frame too large").await;
                    break;
                }
                Some(Err(_)) | None => break,
            },
            out = rx.recv() => match out {
                Some(Out::Text(text)) => match mode {
                    Some(m) => {
                        if socket.send(m.frame(text)).await.is_err() {
                            break;
                        }
                    }
                    None => pending.push(text),
                },
                Some(Out::Close(code, reason)) => {
                    ended = code != codes::REPLACED;
                    let m = mode.unwrap_or(Mode::Raw);
                    for p in pending.drain(..) {
                        let _ = socket.send(m.frame(p)).await;
                    }
                    close_with(&mut socket, code, &reason).await;
                    break;
                }
                None => {
                    ended = true;
                    close_with(&mut socket, 1011, "the session ended").await;
                    break;
                }
            },
            _ = &mut decide, if mode.is_none() => {
                let m = *mode.insert(Mode::Raw);
                for p in pending.drain(..) {
                    let _ = socket.send(m.frame(p)).await;
                }
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            _ = recheck.tick() => {
                if state.identity.verify_token(&c.token).is_err() {
                    // The actor's Close (1008) comes through `rx` next.
                    let _ = state
                        .runtime
                        .terminals
                        .close(&c.user, &c.id, "credential revoked", codes::REVOKED)
                        .await;
                }
            }
            _ = lifecycle.stopping() => {
                close_with(&mut socket, codes::SHUTDOWN, "the server is shutting down").await;
                break;
            }
        }
    }
    if !ended {
        // Gone without ending the session: it waits for a reconnection
        // for the detach grace, then ends.
        handle.detach(conn);
    }
}

pub(crate) fn routes() -> Api {
    Api::new().get(
        "/ws/shell/{id}",
        "vareon: arcana terminal",
        "An interactive shell (WebSocket; ?token= or a bearer; off unless [shell] enabled)",
        upgrade,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_names_not_paths() {
        for ok in [
            "1731000000000",
            "3f2b9c1e-8d4a-4b7e-9f1a-2c3d4e5f6a7b",
            "a.b_c-d",
        ] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a\nb", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn only_the_exact_resize_object_is_control_in_raw_mode() {
        assert_eq!(
            read_frame(Mode::Raw, r#"{"resize":{"cols":120,"rows":40}}"#),
            Frame::Resize(120, 40)
        );
        for typed in [
            "5",
            "ls\r",
            r#"{"resize":{"cols":1},"x":2}"#,
            "[1]",
            r#"{"type":"shell_input"}"#,
        ] {
            assert_eq!(
                read_frame(Mode::Raw, typed),
                Frame::Input(typed.as_bytes().to_vec()),
                "{typed}"
            );
        }
    }

    #[test]
    fn envelopes_carry_input_and_sizes() {
        assert_eq!(
            read_frame(
                Mode::Envelope,
                r#"{"type":"shell_input","payload":{"data":"ls\r"}}"#
            ),
            Frame::Input(b"ls\r".to_vec())
        );
        assert_eq!(
            read_frame(
                Mode::Envelope,
                r#"{"type":"shell_resize","payload":{"cols":90,"rows":30}}"#
            ),
            Frame::Resize(90, 30)
        );
        assert_eq!(
            read_frame(Mode::Envelope, r#"{"type":"resize","cols":70,"rows":20}"#),
            Frame::Resize(70, 20)
        );
        assert_eq!(
            read_frame(Mode::Envelope, r#"{"type":"ping"}"#),
            Frame::Ignore
        );
        assert_eq!(
            Mode::of(r#"{"type":"shell_input","payload":{"data":"x"}}"#),
            Mode::Envelope
        );
        assert_eq!(Mode::of("42"), Mode::Raw);
    }
}
