//! Vareon chat (`/api/chat*`) and arcana (status, start-chat, context
//! memory, LLM preferences): views of the core conversations. A chat
//! turn goes through the conversation's actor to the LLM gateway; the
//! user's context memory and preferences shape its prompt. Each user
//! sees only the conversations they take part in.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};
use warden_actors::conversation::{Conversation, ConversationInput, Message, Turn};
use warden_domain::{LlmPreference, Memory};

use super::{SkipLimit, Vareon, VareonBody, VareonResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{Fields, JsonBody, iso};
use crate::openapi::Api;

type Caller = CurrentUser<Vareon>;

pub(crate) fn conversation_view(c: &Conversation) -> Value {
    json!({
        "title": (!c.title.is_empty()).then_some(&c.title),
        "id": c.conversation_id,
        "user_id": c.owner.user_id,
        "created_at": iso(c.audit.created_at),
        "updated_at": iso(c.audit.updated_at),
    })
}

fn message_view(c: &Conversation, m: &Message) -> Value {
    let sender = match m.role.as_str() {
        "assistant" => "llm",
        other => other,
    };
    json!({
        "id": m.id,
        "conversation_id": c.conversation_id,
        "user_id": m.owner.user_id,
        "sender": sender,
        "message_content": m.content,
        "timestamp": iso(m.audit.created_at),
    })
}

/// A title from a first message: its first line, at most 60 characters.
fn title_from(text: &str) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut title: String = line.trim().chars().take(60).collect();
    if line.trim().chars().count() > 60 {
        title.push('…');
    }
    title
}

async fn chat(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    let mut f = Fields::new(body);
    let message = f.string_max("message", true, usize::MAX);
    let conversation = f.string("conversation_id", false);
    f.finish_as::<Vareon>()?;
    let message = message.unwrap_or_default();
    warden_actors::conversation::check_text(&message)?;
    let convs = &state.runtime.conversations;
    let c = match conversation {
        Some(id) => convs.of_participant(&p.org_id, &p.user_id, &id)?,
        None => {
            let input = ConversationInput {
                title: Some(title_from(&message)),
                ..Default::default()
            };
            convs.create(input, p.owner(), &p.user_id, "vareon").await?
        }
    };
    let turn = Turn {
        org: p.org_id.clone(),
        user: p.user_id.clone(),
        username: p.username.clone(),
        text: message,
        ..Default::default()
    };
    let done = convs.turn(&c.id, turn).await?;
    Ok(Json(json!({
        "response": done.answer.content,
        "conversation_id": c.conversation_id,
        "message_id": done.answer.id,
    })))
}

async fn history(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Vec<Value>>> {
    let convs = &state.runtime.conversations;
    let c = convs.of_participant(&p.org_id, &p.user_id, &id)?;
    let messages = convs.history(&c, usize::MAX)?;
    Ok(Json(messages.iter().map(|m| message_view(&c, m)).collect()))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<SkipLimit>,
) -> VareonResult<Json<Vec<Value>>> {
    let (skip, limit) = q.parse()?;
    let found = state
        .runtime
        .conversations
        .of_user(&p.org_id, &p.user_id, skip, limit)?;
    Ok(Json(found.iter().map(conversation_view).collect()))
}

fn read_title(body: serde_json::Map<String, Value>) -> VareonResult<Option<String>> {
    let mut f = Fields::new(body);
    let title = f.string("title", false);
    f.finish_as::<Vareon>()?;
    Ok(title)
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    let input = ConversationInput {
        title: read_title(body)?,
        ..Default::default()
    };
    let c = state
        .runtime
        .conversations
        .create(input, p.owner(), &p.user_id, "vareon")
        .await?;
    Ok(Json(conversation_view(&c)))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    let convs = &state.runtime.conversations;
    let c = convs.of_participant(&p.org_id, &p.user_id, &id)?;
    let input = ConversationInput {
        title: Some(read_title(body)?.unwrap_or_default()),
        ..Default::default()
    };
    let c = convs.update(&c, input, &p.user_id).await?;
    Ok(Json(conversation_view(&c)))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    let convs = &state.runtime.conversations;
    let c = convs.of_participant(&p.org_id, &p.user_id, &id)?;
    convs.delete(&c.id, &p.user_id).await?;
    Ok(Json(
        json!({"message": "Conversation deleted successfully"}),
    ))
}

#[derive(serde::Deserialize)]
struct ClearQuery {
    conversation_id: Option<String>,
}

/// Clears one conversation's history, or every one of the user's.
async fn clear(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<ClearQuery>,
) -> VareonResult<Json<Value>> {
    let convs = &state.runtime.conversations;
    let targets = match q.conversation_id.filter(|c| !c.is_empty()) {
        Some(id) => vec![convs.of_participant(&p.org_id, &p.user_id, &id)?],
        None => convs.of_user(&p.org_id, &p.user_id, 0, usize::MAX)?,
    };
    let mut cleared = 0;
    for c in &targets {
        cleared += convs.clear(&c.id, &p.user_id).await?;
    }
    Ok(Json(json!({
        "message": format!("Chat history cleared ({cleared} messages in {} conversations)", targets.len())
    })))
}

// Arcana.

/// A duration as vareon shows it: "1.2s", or "120ms" under a second.
pub(super) fn seconds(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{}ms", ms.round() as u64)
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

pub(super) fn uptime(state: &AppState) -> String {
    let s = state.started.elapsed().as_secs();
    format!(
        "{}d {}h {}m {}s",
        s / 86400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

/// Counters from the caller's organisation's conversations: active =
/// with a message in the last 15 minutes; messages = stored messages;
/// response time = the mean of answered turns, measured end to end.
async fn status(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> VareonResult<Json<Value>> {
    let stats = state.runtime.conversations.stats(&p.org_id)?;
    Ok(Json(json!({
        "status": "online",
        "uptime": uptime(&state),
        "activeChats": stats.active,
        "messagesProcessed": stats.messages,
        "avgResponseTime": stats.avg_response_ms.map_or_else(|| "0ms".to_owned(), seconds),
    })))
}

/// Starts a new conversation for the caller (the original's placeholder,
/// made real): its id comes back beside the documented message.
async fn start_chat(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> VareonResult<Json<Value>> {
    let input = ConversationInput {
        title: Some("Arcana Chat".into()),
        ..Default::default()
    };
    let c = state
        .runtime
        .conversations
        .create(input, p.owner(), &p.user_id, "vareon")
        .await?;
    Ok(Json(json!({
        "message": "Arcana Chat started successfully!",
        "conversation_id": c.conversation_id,
    })))
}

fn memory_view(m: &Memory) -> Value {
    json!({
        "key": m.key,
        "value": m.value,
        "id": m.id,
        "user_id": m.user_id,
        "last_accessed": iso(m.last_accessed),
        "created_at": iso(m.created_at),
        "updated_at": iso(m.updated_at),
    })
}

async fn memories(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> VareonResult<Json<Vec<Value>>> {
    let all = state
        .runtime
        .conversations
        .memories(&p.org_id, &p.user_id)?;
    Ok(Json(all.iter().map(memory_view).collect()))
}

async fn memory(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(key): Path<String>,
) -> VareonResult<Json<Value>> {
    let m = state
        .runtime
        .conversations
        .memory(&p.org_id, &p.user_id, &key)?;
    Ok(Json(memory_view(&m)))
}

/// The value is text; a JSON value other than a string is kept as its JSON text.
async fn remember(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(mut body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    let value = match body.remove("value") {
        Some(Value::String(s)) => Some(s),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let mut f = Fields::new(body);
    let key = f.string("key", true);
    if value.is_none() {
        f.error("value must be a string".into());
    }
    f.finish_as::<Vareon>()?;
    let m = state
        .runtime
        .conversations
        .remember(
            &p.org_id,
            &p.user_id,
            &key.unwrap_or_default(),
            &value.unwrap_or_default(),
        )
        .await?;
    Ok(Json(memory_view(&m)))
}

async fn forget(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(key): Path<String>,
) -> VareonResult<Json<Value>> {
    state
        .runtime
        .conversations
        .forget(&p.org_id, &p.user_id, &key)
        .await?;
    Ok(Json(
        json!({"message": "Context memory deleted successfully"}),
    ))
}

fn preference_view(state: &AppState, org: &str, p: &LlmPreference) -> Value {
    let model = p
        .default_model_id
        .as_deref()
        .and_then(|id| state.runtime.conversations.chat_model(org, id).ok());
    json!({
        "default_model_id": p.default_model_id,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "id": p.id,
        "user_id": p.user_id,
        "created_at": iso(p.created_at),
        "updated_at": iso(p.updated_at),
        "default_model": model.map(|m| super::cognisys::model_view(state, org, &m)),
    })
}

async fn preferences(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> VareonResult<Json<Value>> {
    let prefs = state
        .runtime
        .conversations
        .preferences(&p.org_id, &p.user_id)
        .await?;
    Ok(Json(preference_view(&state, &p.org_id, &prefs)))
}

async fn set_preferences(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    // `default_model_id: null` clears it; absent leaves it.
    let model = match body.get("default_model_id") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(_) => None,
    };
    let mut f = Fields::new(body);
    let chosen = f.string("default_model_id", false);
    let temperature = f.number("temperature", false);
    let top_p = f.number("top_p", false);
    f.finish_as::<Vareon>()?;
    let model = chosen.map(Some).or(model);
    let prefs = state
        .runtime
        .conversations
        .set_preferences(&p.org_id, &p.user_id, model, temperature, top_p)
        .await?;
    Ok(Json(preference_view(&state, &p.org_id, &prefs)))
}

pub(super) fn routes() -> Api {
    let (c, a) = ("vareon: chat", "vareon: arcana");
    Api::new()
        .post(
            "/api/chat",
            c,
            "Send a message (a new conversation without conversation_id); the model's answer",
            chat,
        )
        .get(
            "/api/chat/history/{conversation_id}",
            c,
            "A conversation's messages, oldest first",
            history,
        )
        .get(
            "/api/chat/conversations",
            c,
            "The caller's conversations, newest first",
            list,
        )
        .post(
            "/api/chat/conversations",
            c,
            "Create a conversation",
            create,
        )
        .put(
            "/api/chat/conversations/{conversation_id}",
            c,
            "Rename a conversation",
            update,
        )
        .delete(
            "/api/chat/conversations/{conversation_id}",
            c,
            "Delete a conversation and its messages",
            delete,
        )
        .post(
            "/api/chat/clear",
            c,
            "Clear one conversation's history, or all of the caller's",
            clear,
        )
        .get(
            "/api/arcana/status",
            a,
            "Chat counters of the organisation, measured",
            status,
        )
        .post(
            "/api/arcana/start-chat",
            a,
            "Start a new conversation",
            start_chat,
        )
        .get(
            "/api/arcana/context-memory",
            a,
            "The caller's context memories",
            memories,
        )
        .get(
            "/api/arcana/context-memory/{key}",
            a,
            "One context memory",
            memory,
        )
        .post(
            "/api/arcana/context-memory",
            a,
            "Create or replace a context memory",
            remember,
        )
        .delete(
            "/api/arcana/context-memory/{key}",
            a,
            "Delete a context memory",
            forget,
        )
        .get(
            "/api/arcana/llm/preferences",
            a,
            "The caller's LLM preferences (created with defaults)",
            preferences,
        )
        .put(
            "/api/arcana/llm/preferences",
            a,
            "Change the caller's LLM preferences",
            set_preferences,
        )
}
