//! `/api/conversations` and `/api/messages` (AIWM §8, §9): the core
//! conversations, written through each conversation's actor. Messages
//! posted here are stored as given (AIWM's CRUD); the chat routes of the
//! other dialects are what ask a model.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use warden_actors::conversation::{
    BY_CONVERSATION, CONVERSATION_STATUSES, CONVERSATION_TYPES, Conversation, ConversationInput,
    MESSAGE_ROLES, Message, MessageInput, MessageUsage, Participant,
};
use warden_domain::Audit;

use super::{
    Aiwm, AiwmBody, AiwmQuery, AiwmResult, Fields, Resource, deleted_body, find_visible, iso, list,
    owner_of, require_write, view_of,
};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Aiwm>;

impl Resource for Conversation {
    const NAME: &'static str = "Conversation";
    const KEY: &'static str = "conversationId";

    fn view(&self) -> Value {
        let participants: Vec<Value> = self
            .participants
            .iter()
            .map(|p| {
                let mut v =
                    json!({"userId": p.user_id, "role": p.role, "joinedAt": iso(p.joined_at)});
                if let Some(t) = p.left_at {
                    v["leftAt"] = json!(iso(t));
                }
                v
            })
            .collect();
        let fields = json!({
            "_id": self.id,
            "conversationId": self.conversation_id,
            "title": self.title,
            "description": self.description,
            "agentId": self.agent_id,
            "modelId": self.model_id,
            "conversationType": self.conversation_type,
            "status": self.status,
            "totalTokens": self.total_tokens,
            "totalMessages": self.total_messages,
            "tags": self.tags,
            "isActive": self.is_active,
            "participants": participants,
        });
        view_of(&self.extra, fields, &self.owner, &self.audit)
    }

    fn audit(&self) -> &Audit {
        &self.audit
    }
}

impl Resource for Message {
    const NAME: &'static str = "Message";
    const KEY: &'static str = "messageId";

    fn view(&self) -> Value {
        let mut fields = json!({
            "_id": self.id,
            "conversationId": self.conversation_id,
            "agentId": self.agent_id,
            "role": self.role,
            "content": self.content,
            "isActive": self.is_active,
        });
        let json_of = |t: &str| serde_json::from_str::<Value>(t).ok();
        if let Some(n) = &self.name {
            fields["name"] = json!(n);
        }
        for (key, text) in [
            ("functionCall", &self.function_call),
            ("toolCalls", &self.tool_calls),
            ("toolResults", &self.tool_results),
        ] {
            if let Some(v) = json_of(text) {
                fields[key] = v;
            }
        }
        if let Some(u) = &self.usage {
            fields["usage"] = json!({
                "promptTokens": u.prompt_tokens,
                "completionTokens": u.completion_tokens,
                "totalTokens": u.total_tokens,
            });
        }
        if let Some(l) = self.latency {
            fields["latency"] = json!(l);
        }
        if let Some(r) = self.response_time {
            fields["responseTime"] = json!(r);
        }
        if let Some(e) = &self.error {
            fields["error"] = json!(e);
        }
        if let Some(m) = &self.model {
            fields["model"] = json!(m);
        }
        view_of(&self.extra, fields, &self.owner, &self.audit)
    }

    fn audit(&self) -> &Audit {
        &self.audit
    }
}

fn read_conversation(body: Map<String, Value>) -> AiwmResult<ConversationInput> {
    let mut f = Fields::new(body);
    f.drop(&["totalTokens", "totalMessages"]);
    let input = ConversationInput {
        conversation_id: f.key("conversationId", false),
        title: f.string("title", false),
        description: f.string_max("description", false, usize::MAX),
        agent_id: f.string("agentId", false).map(Some),
        model_id: f.string("modelId", false),
        conversation_type: f.one_of("conversationType", &CONVERSATION_TYPES, false),
        status: f.one_of("status", &CONVERSATION_STATUSES, false),
        tags: f.strings("tags", false),
        is_active: f.boolean("isActive", false),
        participants: f.objects("participants", |p| {
            let user_id = p.string("userId", true)?;
            Some(Participant {
                user_id,
                role: p.string("role", false).unwrap_or_else(|| "member".into()),
                joined_at: p
                    .string("joinedAt", false)
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .map_or_else(warden_storage::now_millis, |t| t.timestamp_millis()),
                left_at: p
                    .string("leftAt", false)
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| t.timestamp_millis()),
            })
        }),
        extra: String::new(),
    };
    let extra = f.finish()?;
    Ok(ConversationInput { extra, ..input })
}

/// A message body; `conversationId` is read by the caller.
fn read_message(f: &mut Fields) -> MessageInput {
    let usage = f.objects_one("usage").map(|u| {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (prompt, completion) = (n("promptTokens"), n("completionTokens"));
        MessageUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: u
                .get("totalTokens")
                .and_then(Value::as_u64)
                .unwrap_or(prompt + completion),
        }
    });
    MessageInput {
        agent_id: f.string("agentId", false),
        role: f.one_of("role", &MESSAGE_ROLES, false),
        content: f.string_max("content", false, usize::MAX),
        name: f.string("name", false),
        function_call: f.json("functionCall", true),
        tool_calls: f.json("toolCalls", false),
        tool_results: f.json("toolResults", false),
        usage,
        latency: f.count("latency", false),
        response_time: f.count("responseTime", false),
        error: f.string_max("error", false, usize::MAX),
        is_active: f.boolean("isActive", false),
        extra: String::new(),
    }
}

async fn create_conversation(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<(StatusCode, Json<Value>)> {
    require_write(&p, "create")?;
    let input = read_conversation(body)?;
    let c = state
        .runtime
        .conversations
        .create(input, owner_of(&p), &p.user_id, "aiwm")
        .await?;
    Ok((StatusCode::CREATED, Json(c.view())))
}

async fn update_conversation(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "update")?;
    let c: Conversation = find_visible(&state, &p, &id)?;
    let input = read_conversation(body)?;
    let c = state
        .runtime
        .conversations
        .update(&c, input, &p.user_id)
        .await?;
    Ok(Json(c.view()))
}

async fn delete_conversation(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "delete")?;
    let c: Conversation = find_visible(&state, &p, &id)?;
    let c = state
        .runtime
        .conversations
        .delete(&c.id, &p.user_id)
        .await?;
    Ok(deleted_body("Conversation", &c.audit))
}

async fn create_message(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<(StatusCode, Json<Value>)> {
    require_write(&p, "create")?;
    let mut f = Fields::new(body);
    let conversation = f.string("conversationId", true);
    let input = read_message(&mut f);
    let extra = f.finish()?;
    let conversation = conversation.unwrap_or_default();
    let c: Conversation = find_visible(&state, &p, &conversation).map_err(|_| {
        ApiError::validation(vec![format!(
            "conversationId {conversation}: no such conversation"
        )])
    })?;
    let m = state
        .runtime
        .conversations
        .append(&c.id, MessageInput { extra, ..input }, &p.user_id)
        .await?;
    Ok((StatusCode::CREATED, Json(m.view())))
}

/// `GET /api/messages`: `filter[conversationId]` alone (by `_id` or key)
/// reads that conversation's messages in order, one page; anything else
/// filters and sorts the organisation's messages.
async fn list_messages(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    q: AiwmQuery,
) -> AiwmResult<Json<Value>> {
    if let ([(field, value)], true) = (q.filters.as_slice(), q.sort.is_empty())
        && field == "conversationId"
    {
        let Ok(c) = find_visible::<Conversation>(&state, &p, value) else {
            return Ok(Json(
                json!({"data": [], "pagination": {"page": q.page, "limit": q.limit, "total": 0}}),
            ));
        };
        let page = q
            .window()
            .read::<Message>(&state.store, BY_CONVERSATION, &c.id, false)?;
        let data: Vec<Value> = page.items.iter().map(|(_, m)| m.view()).collect();
        return Ok(Json(
            json!({"data": data, "pagination": {"page": q.page, "limit": q.limit, "total": page.total}}),
        ));
    }
    list::<Message>(&state, &p, &q)
}

async fn update_message(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "update")?;
    let m: Message = find_visible(&state, &p, &id)?;
    let mut f = Fields::new(body);
    // A message stays in its conversation.
    f.drop(&["conversationId"]);
    let input = read_message(&mut f);
    let extra = f.finish()?;
    let m = state
        .runtime
        .conversations
        .edit_message(&m, MessageInput { extra, ..input }, &p.user_id)
        .await?;
    Ok(Json(m.view()))
}

async fn delete_message(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "delete")?;
    let m: Message = find_visible(&state, &p, &id)?;
    let m = state
        .runtime
        .conversations
        .delete_message(&m, &p.user_id)
        .await?;
    Ok(deleted_body("Message", &m.audit))
}

pub(super) fn routes() -> Api {
    let (c, m) = ("aiwm: conversations", "aiwm: messages");
    Api::new()
        .post(
            "/api/conversations",
            c,
            "Create a conversation",
            create_conversation,
        )
        .get(
            "/api/conversations",
            c,
            "List conversations (page, limit, filter[field], sort)",
            super::list_handler::<Conversation>,
        )
        .get(
            "/api/conversations/{id}",
            c,
            "Get a conversation by _id or conversationId",
            super::get_handler::<Conversation>,
        )
        .put(
            "/api/conversations/{id}",
            c,
            "Update a conversation",
            update_conversation,
        )
        .delete(
            "/api/conversations/{id}",
            c,
            "Soft-delete a conversation with its messages",
            delete_conversation,
        )
        .post(
            "/api/messages",
            m,
            "Add a message to a conversation (stored as given)",
            create_message,
        )
        .get(
            "/api/messages",
            m,
            "List messages (filter[conversationId] reads one conversation in order)",
            list_messages,
        )
        .get(
            "/api/messages/{id}",
            m,
            "Get a message",
            super::get_handler::<Message>,
        )
        .put("/api/messages/{id}", m, "Update a message", update_message)
        .delete(
            "/api/messages/{id}",
            m,
            "Soft-delete a message",
            delete_message,
        )
}
