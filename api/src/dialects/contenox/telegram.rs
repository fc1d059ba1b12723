//! Contenox `/telegram-frontends`: a Telegram bot per frontend, whose
//! chats are conversations of the frontend's owner (see
//! `actors/src/telegram`). The bot token is write-only: never shown.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use warden_actors::telegram::{FRONTEND_STATUSES, FrontendInput, TelegramFrontend};
use warden_identity::Principal;

use super::{Contenox, ContenoxResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Body_ = JsonBody<Contenox>;
type Caller = CurrentUser<Contenox>;

fn view(f: &TelegramFrontend) -> Value {
    json!({
        "id": f.id,
        "userId": f.owner.user_id,
        "chatChain": f.chat_chain,
        "description": f.description,
        "syncInterval": f.sync_interval,
        "status": f.status,
        "lastOffset": f.last_offset,
        "lastHeartbeat": f.last_heartbeat.map(iso),
        "lastError": f.last_error,
        "createdAt": iso(f.audit.created_at),
        "updatedAt": iso(f.audit.updated_at),
    })
}

fn read(body: Map<String, Value>, create: bool) -> ContenoxResult<FrontendInput> {
    let mut f = Fields::new(body);
    f.drop(&["userId", "lastOffset", "lastHeartbeat", "lastError"]);
    let input = FrontendInput {
        chat_chain: f.string("chatChain", false),
        description: f.string_max("description", false, usize::MAX),
        bot_token: f.string("botToken", create),
        sync_interval: f.count("syncInterval", false),
        status: f.one_of("status", &FRONTEND_STATUSES, false),
    };
    f.finish_as::<Contenox>()?;
    Ok(input)
}

/// A frontend the caller may change: their own, or any of the
/// organisation's for an admin.
fn owned(state: &AppState, p: &Principal, id: &str) -> ContenoxResult<TelegramFrontend> {
    let f = state.runtime.telegram.get(&p.org_id, id)?;
    if f.owner.user_id != p.user_id && !p.is_admin() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Telegram frontend with ID {id} not found"),
        ));
    }
    Ok(f)
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body_,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    let input = read(body, true)?;
    let owner = p.owner();
    let f = state
        .runtime
        .telegram
        .create(input, owner, &p.user_id)
        .await?;
    Ok((StatusCode::CREATED, Json(view(&f))))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ContenoxResult<Json<Vec<Value>>> {
    let user = (!p.is_admin()).then_some(p.user_id.as_str());
    let all = state.runtime.telegram.list(&p.org_id, user)?;
    Ok(Json(all.iter().map(view).collect()))
}

async fn of_user(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(user): Path<String>,
) -> ContenoxResult<Json<Vec<Value>>> {
    if user != p.user_id && !p.is_admin() {
        return Err(ApiError::forbidden(
            "only an admin may list another user's frontends",
        ));
    }
    let all = state.runtime.telegram.list(&p.org_id, Some(&user))?;
    Ok(Json(all.iter().map(view).collect()))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    Ok(Json(view(&owned(&state, &p, &id)?)))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): Body_,
) -> ContenoxResult<Json<Value>> {
    let f = owned(&state, &p, &id)?;
    let input = read(body, false)?;
    let f = state
        .runtime
        .telegram
        .update(&f.id, input, &p.user_id)
        .await?;
    Ok(Json(view(&f)))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    let f = owned(&state, &p, &id)?;
    state.runtime.telegram.delete(&f.id).await?;
    Ok(Json(json!("frontend removed")))
}

pub(super) fn routes() -> Api {
    let t = "contenox: telegram";
    Api::new()
        .post(
            "/telegram-frontends",
            t,
            "Create a Telegram frontend (its bot starts polling)",
            create,
        )
        .get(
            "/telegram-frontends",
            t,
            "The caller's frontends (an admin: the organisation's)",
            list,
        )
        .get(
            "/telegram-frontends/users/{userId}",
            t,
            "A user's frontends",
            of_user,
        )
        .get(
            "/telegram-frontends/{id}",
            t,
            "A frontend (the bot token is never shown)",
            get,
        )
        .put(
            "/telegram-frontends/{id}",
            t,
            "Change a frontend (status inactive stops its bot)",
            update,
        )
        .delete(
            "/telegram-frontends/{id}",
            t,
            "Delete a frontend and stop its bot",
            delete,
        )
}
