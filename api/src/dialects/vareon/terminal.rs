//! Arcana's terminal routes (`/api/arcana/terminal/sessions/*`): the
//! caller's own sessions, their command history, and a close that really
//! ends the shell (the original flipped a row and left it running).

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use warden_actors::terminal::{TerminalSession, codes};

use super::{Vareon, VareonResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::iso;
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Vareon>;

fn view(s: &TerminalSession) -> Value {
    json!({
        "id": s.client_id,
        "user_id": s.owner.user_id,
        "status": s.status.as_str(),
        "last_command": s.last_command,
        "started_at": iso(s.started_at),
        "ended_at": s.ended_at.map(iso),
        "cols": s.cols,
        "rows": s.rows,
        "close_reason": s.close_reason,
    })
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> VareonResult<Json<Vec<Value>>> {
    let all = state.runtime.terminals.sessions(&p.user_id)?;
    Ok(Json(all.iter().map(view).collect()))
}

fn mine(state: &AppState, user: &str, id: &str) -> VareonResult<TerminalSession> {
    state
        .runtime
        .terminals
        .session(user, id)?
        .ok_or_else(|| ApiError::not_found("Terminal session", id))
}

async fn history(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Vec<Value>>> {
    let s = mine(&state, &p.user_id, &id)?;
    Ok(Json(
        s.history
            .iter()
            .map(|h| {
                json!({
                    "id": h.id,
                    "session_id": s.client_id,
                    "command": h.command,
                    "output": h.output,
                    "timestamp": iso(h.at),
                })
            })
            .collect(),
    ))
}

async fn close(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    mine(&state, &p.user_id, &id)?;
    let closed = state
        .runtime
        .terminals
        .close(&p.user_id, &id, "closed by its user", codes::CLOSED)
        .await?
        .ok_or_else(|| ApiError::not_found("Terminal session", &id))?;
    Ok(Json(json!({
        "message": format!("Terminal session {id} closed"),
        "status": closed.status.as_str(),
        "ended_at": closed.ended_at.map(iso),
    })))
}

pub(super) fn routes() -> Api {
    let t = "vareon: arcana terminal";
    Api::new()
        .get(
            "/api/arcana/terminal/sessions",
            t,
            "The caller's terminal sessions, newest first",
            list,
        )
        .get(
            "/api/arcana/terminal/sessions/{session_id}/history",
            t,
            "A session's command lines and the output that followed each",
            history,
        )
        .post(
            "/api/arcana/terminal/sessions/{session_id}/close",
            t,
            "End a session: its shell and background jobs are killed",
            close,
        )
}
