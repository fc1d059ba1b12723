//! Contenox chats (`/chats*`), as the original runtime answers them:
//! `POST /chats {model, subject}` → `201 {id}`; `POST /chats/{id}/chat
//! {message, models}` → `{response}`; `POST /chats/{id}/instruction
//! {instruction}` → `{}` (a system message the next prompts carry);
//! `GET /chats/{id}` → the history as `{role, content, sentAt, isUser,
//! isLatest}`; `GET /chats` → the caller's chats as `{id, startedAt,
//! backendId, lastMessage?}`. Views of the core conversations.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_actors::conversation::{ConversationInput, Message, MessageInput, Turn};

use super::{Contenox, ContenoxResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{Fields, JsonBody, iso};
use crate::openapi::Api;

type Body_ = JsonBody<Contenox>;
type Caller = CurrentUser<Contenox>;

fn message_view(m: &Message, latest: bool) -> Value {
    json!({
        "role": m.role,
        "content": m.content,
        "sentAt": iso(m.audit.created_at),
        "isUser": m.role == "user",
        "isLatest": latest,
    })
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body_,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    let mut f = Fields::new(body);
    let model = f.string("model", false);
    let subject = f.string("subject", false);
    f.finish_as::<Contenox>()?;
    if let Some(m) = model.as_deref().filter(|m| !m.is_empty()) {
        // An unknown model is refused now, not at the first message.
        state.runtime.llm.llm_model(&p.org_id, m)?;
    }
    let input = ConversationInput {
        title: subject,
        model_id: model,
        ..Default::default()
    };
    let owner = p.owner();
    let c = state
        .runtime
        .conversations
        .create(input, owner, &p.user_id, "contenox")
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"id": c.conversation_id}))))
}

async fn chat(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): Body_,
) -> ContenoxResult<Json<Value>> {
    let mut f = Fields::new(body);
    let message = f.string_max("message", true, usize::MAX);
    let models = f.strings("models", false).unwrap_or_default();
    f.finish_as::<Contenox>()?;
    let convs = &state.runtime.conversations;
    let c = convs.of_participant(&p.org_id, &p.user_id, &id)?;
    let turn = Turn {
        org: p.org_id.clone(),
        user: p.user_id.clone(),
        username: p.username.clone(),
        text: message.unwrap_or_default(),
        models,
        ..Default::default()
    };
    let done = convs.turn(&c.id, turn).await?;
    let usage = done.answer.usage.unwrap_or_default();
    Ok(Json(json!({
        "response": done.answer.content,
        "inputTokenCount": usage.prompt_tokens,
        "outputTokenCount": usage.completion_tokens,
        "model": done.answer.model,
    })))
}

async fn instruction(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): Body_,
) -> ContenoxResult<Json<Value>> {
    let mut f = Fields::new(body);
    let text = f.string_max("instruction", true, usize::MAX);
    f.finish_as::<Contenox>()?;
    let convs = &state.runtime.conversations;
    let c = convs.of_participant(&p.org_id, &p.user_id, &id)?;
    let input = MessageInput {
        role: Some("system".into()),
        content: text,
        ..Default::default()
    };
    convs.append(&c.id, input, &p.user_id).await?;
    Ok(Json(json!({})))
}

async fn history(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let convs = &state.runtime.conversations;
    let c = convs.of_participant(&p.org_id, &p.user_id, &id)?;
    let messages = convs.history(&c, usize::MAX)?;
    let last = messages.len().saturating_sub(1);
    Ok(Json(
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| message_view(m, i == last))
            .collect(),
    ))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ContenoxResult<Json<Vec<Value>>> {
    let convs = &state.runtime.conversations;
    let mut out = Vec::new();
    for c in convs.of_user(&p.org_id, &p.user_id, 0, usize::MAX)? {
        let last = convs.history(&c, 1)?;
        let mut v = json!({
            "id": c.conversation_id,
            "startedAt": iso(c.audit.created_at),
            "backendId": c.model_id,
        });
        if let Some(m) = last.first() {
            v["lastMessage"] = message_view(m, true);
        }
        out.push(v);
    }
    Ok(Json(out))
}

pub(super) fn routes() -> Api {
    let t = "contenox: chats";
    Api::new()
        .post("/chats", t, "Start a chat {model, subject}: {id}", create)
        .get("/chats", t, "The caller's chats", list)
        .get("/chats/{id}", t, "A chat's history", history)
        .post(
            "/chats/{id}/chat",
            t,
            "Send a message {message, models}: the model's {response}",
            chat,
        )
        .post(
            "/chats/{id}/instruction",
            t,
            "Add a system instruction to a chat",
            instruction,
        )
}
