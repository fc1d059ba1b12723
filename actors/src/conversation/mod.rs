//! Conversations: one chat core behind AIWM conversations and messages,
//! vareon chat, contenox chats and forge's agent chat. Each conversation
//! has a `ConversationActor` (the one writer of it and its messages);
//! reads go to the store.

mod actor;
pub mod prompt;
mod record;

pub use actor::{
    Ask, Completion, ConvArgs, ConvHandle, ConvMsg, ConvState, ConversationActor, FALLBACK_MODEL,
    Gateway, HISTORY_HELD, Turn, TurnResult, load_history,
};
pub use record::{BY_CONVERSATION, BY_USER, Conversation, Message, MessageUsage, Participant};

use warden_domain::rules::{Checks, MAX_SHORT};
use warden_domain::{Audit, Owner, merge_json_objects, set};
use warden_storage::{new_object_id, new_uuid};

use crate::DomainError;

/// The roles a stored message may have (AIWM's three, and OpenAI's `tool`).
pub const MESSAGE_ROLES: [&str; 4] = ["user", "assistant", "system", "tool"];
pub const CONVERSATION_TYPES: [&str; 3] = ["chat", "task", "analysis"];
pub const CONVERSATION_STATUSES: [&str; 3] = ["active", "paused", "completed"];

const MAX_DESCRIPTION: usize = 4096;
const MAX_JSON: usize = 256 * 1024;

/// Re-indexes the conversation records once when their indexes changed.
pub async fn ensure_indexes(
    store: &warden_storage::Store,
) -> Result<(), warden_storage::StorageError> {
    store.ensure_indexes::<Conversation>().await?;
    store.ensure_indexes::<Message>().await?;
    Ok(())
}

/// What a client may set on a conversation; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ConversationInput {
    pub conversation_id: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    /// The agent's `_id` (the service resolves keys and checks it exists).
    pub agent_id: Option<Option<String>>,
    pub model_id: Option<String>,
    pub conversation_type: Option<String>,
    pub status: Option<String>,
    pub tags: Option<Vec<String>>,
    pub is_active: Option<bool>,
    pub participants: Option<Vec<Participant>>,
    pub extra: String,
}

/// A new conversation, checked; `origin` is the dialect that made it.
pub fn create(
    input: ConversationInput,
    owner: Owner,
    by: &str,
    origin: &str,
) -> Result<Conversation, DomainError> {
    let audit = Audit::new(by);
    let mut c = Conversation {
        id: new_object_id(),
        conversation_id: new_uuid(),
        title: String::new(),
        description: String::new(),
        agent_id: None,
        model_id: String::new(),
        conversation_type: "chat".into(),
        status: "active".into(),
        total_tokens: 0,
        total_messages: 0,
        tags: Vec::new(),
        is_active: true,
        participants: vec![Participant {
            user_id: owner.user_id.clone(),
            role: "owner".into(),
            joined_at: audit.created_at,
            left_at: None,
        }],
        turns: 0,
        response_ms_total: 0,
        last_message_at: None,
        next_seq: 0,
        origin: origin.into(),
        extra: String::new(),
        owner,
        audit,
    };
    apply(&mut c, input, true)?;
    Ok(c)
}

/// Applies a checked input to a conversation.
pub fn apply(
    c: &mut Conversation,
    input: ConversationInput,
    _create: bool,
) -> Result<(), DomainError> {
    let mut k = Checks::new();
    k.key("conversationId", &input.conversation_id, false);
    k.text("title", &input.title, false, MAX_SHORT);
    k.text("description", &input.description, false, MAX_DESCRIPTION);
    k.text("modelId", &input.model_id, false, MAX_SHORT);
    k.one_of(
        "conversationType",
        &input.conversation_type,
        &CONVERSATION_TYPES,
        false,
    );
    k.one_of("status", &input.status, &CONVERSATION_STATUSES, false);
    k.texts("tags", &input.tags, MAX_SHORT);
    if let Some(ps) = &input.participants {
        if ps.iter().any(|p| p.user_id.trim().is_empty()) {
            k.fail("each participant needs a userId".into());
        }
        if ps.len() > 1000 {
            k.fail("participants must contain no more than 1000 elements".into());
        }
    }
    k.finish()?;
    set(&mut c.conversation_id, input.conversation_id);
    set(&mut c.title, input.title);
    set(&mut c.description, input.description);
    set(&mut c.agent_id, input.agent_id);
    set(&mut c.model_id, input.model_id);
    set(&mut c.conversation_type, input.conversation_type);
    set(&mut c.status, input.status);
    set(&mut c.tags, input.tags);
    set(&mut c.is_active, input.is_active);
    set(&mut c.participants, input.participants);
    if !input.extra.is_empty() {
        c.extra = merge_json_objects(&c.extra, &input.extra);
    }
    Ok(())
}

/// What a client may set on a message (AIWM `/api/messages`); JSON parts
/// are texts whose shape the dialect checked.
#[derive(Debug, Clone, Default)]
pub struct MessageInput {
    pub agent_id: Option<String>,
    pub role: Option<String>,
    pub content: Option<String>,
    pub name: Option<String>,
    pub function_call: Option<String>,
    pub tool_calls: Option<String>,
    pub tool_results: Option<String>,
    pub usage: Option<MessageUsage>,
    pub latency: Option<u64>,
    pub response_time: Option<u64>,
    pub error: Option<String>,
    pub is_active: Option<bool>,
    pub extra: String,
}

/// A user's text for a turn: not blank, at most [`prompt::MAX_MESSAGE_CHARS`].
pub fn check_text(text: &str) -> Result<(), DomainError> {
    let mut k = Checks::new();
    k.text(
        "message",
        &Some(text.to_owned()),
        true,
        prompt::MAX_MESSAGE_CHARS,
    );
    k.finish()
}

/// A stored message's input: role and content required on create.
pub fn check_message(input: &MessageInput, create: bool) -> Result<(), DomainError> {
    let mut k = Checks::new();
    k.one_of("role", &input.role, &MESSAGE_ROLES, create);
    match &input.content {
        None if create => k.fail("content must be a string".into()),
        Some(c) if c.chars().count() > prompt::MAX_MESSAGE_CHARS => k.fail(format!(
            "content must be shorter than or equal to {} characters",
            prompt::MAX_MESSAGE_CHARS
        )),
        _ => {}
    }
    k.text("name", &input.name, false, MAX_SHORT);
    k.text("agentId", &input.agent_id, false, MAX_SHORT);
    k.text("error", &input.error, false, MAX_DESCRIPTION);
    for (name, v) in [
        ("functionCall", &input.function_call),
        ("toolCalls", &input.tool_calls),
        ("toolResults", &input.tool_results),
    ] {
        if v.as_ref().is_some_and(|v| v.len() > MAX_JSON) {
            k.fail(format!("{name} is larger than {MAX_JSON} bytes"));
        }
    }
    k.finish()
}

pub(crate) fn apply_message(m: &mut Message, input: MessageInput) {
    set(&mut m.agent_id, input.agent_id.map(Some));
    set(&mut m.role, input.role);
    set(&mut m.content, input.content);
    set(&mut m.name, input.name.map(Some));
    set(&mut m.function_call, input.function_call);
    set(&mut m.tool_calls, input.tool_calls);
    set(&mut m.tool_results, input.tool_results);
    set(&mut m.usage, input.usage.map(Some));
    set(&mut m.latency, input.latency.map(Some));
    set(&mut m.response_time, input.response_time.map(Some));
    set(&mut m.error, input.error.map(Some));
    set(&mut m.is_active, input.is_active);
    if !input.extra.is_empty() {
        m.extra = merge_json_objects(&m.extra, &input.extra);
    }
}
