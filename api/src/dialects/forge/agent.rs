//! Forge's agent (`/api/v1/agent/chat`, `/api/v1/agent/history`): the
//! core conversations in forge's shape. Conversation ids carry forge's
//! `conv_` prefix; roles are `user` and `agent`. Limited to 20 requests
//! a minute per user (forge's agent limit), beside the API limit.

use axum::Json;
use axum::extract::{Query, State};
use serde_json::{Value, json};
use warden_actors::conversation::{Conversation, ConversationInput, Message, Turn};
use warden_domain::Owner;
use warden_identity::Principal;

use super::{Forge, ForgeResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Forge>;

/// Forge's id of a conversation.
fn forge_id(c: &Conversation) -> String {
    format!("conv_{}", c.conversation_id)
}

fn role(m: &Message) -> &str {
    match m.role.as_str() {
        "assistant" => "agent",
        other => other,
    }
}

/// Forge's agent limit, per user.
fn limited(state: &AppState, p: &Principal) -> ForgeResult<()> {
    match state.limits.agent.hit(&p.user_id) {
        Some(wait) => Err(ApiError::too_many(wait)),
        None => Ok(()),
    }
}

/// A conversation of the caller by forge's id (or the bare key).
fn find(state: &AppState, p: &Principal, id: &str) -> ForgeResult<Conversation> {
    let convs = &state.runtime.conversations;
    let key = id.strip_prefix("conv_").unwrap_or(id);
    Ok(convs.of_participant(&p.org_id, &p.user_id, key)?)
}

async fn chat(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonBody<Forge>,
) -> ForgeResult<Json<Value>> {
    limited(&state, &p)?;
    let mut f = Fields::new(body);
    let message = f.string_max("message", true, usize::MAX);
    let conversation = f.string("conversation_id", false);
    f.finish_as::<Forge>()?;
    let message = message.unwrap_or_default();
    warden_actors::conversation::check_text(&message)?;
    let convs = &state.runtime.conversations;
    let c = match conversation {
        Some(id) => find(&state, &p, &id)?,
        None => {
            let owner = Owner {
                org_id: p.org_id.clone(),
                user_id: p.user_id.clone(),
                group_id: String::new(),
            };
            let input = ConversationInput {
                title: Some(message.chars().take(60).collect()),
                conversation_type: Some("analysis".into()),
                ..Default::default()
            };
            convs.create(input, owner, &p.user_id, "forge").await?
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
        "conversation_id": forge_id(&c),
        "training_plan": null,
    })))
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    conversation_id: Option<String>,
}

/// The caller's agent history as one flat list, oldest first: `{role,
/// content, timestamp, conversation_id}` (`conversation_id=` narrows it
/// to one conversation).
async fn history(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<HistoryQuery>,
) -> ForgeResult<Json<Vec<Value>>> {
    limited(&state, &p)?;
    let convs = &state.runtime.conversations;
    let mut chosen = match q.conversation_id.filter(|c| !c.is_empty()) {
        Some(id) => vec![find(&state, &p, &id)?],
        None => convs
            .of_user(&p.org_id, &p.user_id, 0, usize::MAX)?
            .into_iter()
            .filter(|c| c.origin == "forge")
            .collect(),
    };
    chosen.sort_by_key(|c| c.audit.created_at);
    let mut out = Vec::new();
    for c in &chosen {
        for m in convs.history(c, usize::MAX)? {
            if m.role == "user" || m.role == "assistant" {
                out.push(json!({
                    "role": role(&m),
                    "content": m.content,
                    "timestamp": iso(m.audit.created_at),
                    "conversation_id": forge_id(c),
                }));
            }
        }
    }
    Ok(Json(out))
}

pub(super) fn routes() -> Api {
    let t = "forge: agent";
    Api::new()
        .post(
            "/api/v1/agent/chat",
            t,
            "Chat with the agent (a new conversation without conversation_id); 20/min per user",
            chat,
        )
        .get(
            "/api/v1/agent/history",
            t,
            "The caller's agent messages, one flat list (conversation_id= narrows it)",
            history,
        )
}
