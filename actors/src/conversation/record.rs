//! The stored shapes of a conversation and its messages. A conversation
//! is one record; each message is a record of its own, ordered within its
//! conversation by `seq` (the conversation's counter, written in the same
//! commit as the message, so two messages never share a place).

use warden_domain::{Audit, Owned, Owner};
use warden_storage::{Millis, Record};

warden_storage::first_layout!(Conversation, Message);

/// Someone taking part in a conversation (AIWM `participants`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Participant {
    pub user_id: String,
    pub role: String,
    pub joined_at: Millis,
    pub left_at: Option<Millis>,
}

/// A multi-turn conversation (AIWM §8; vareon chat conversations,
/// contenox chats and forge's agent conversations are views of it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conversation {
    pub id: String,
    /// The client-chosen key (AIWM `conversationId`); the id the other
    /// dialects show.
    pub conversation_id: String,
    pub title: String,
    pub description: String,
    /// The agent answering (its `_id`), if any.
    pub agent_id: Option<String>,
    /// The model asked, by name or `_id` ("" : the agent's, the user's
    /// preference, or the server's task model).
    pub model_id: String,
    pub conversation_type: String,
    pub status: String,
    pub total_tokens: u64,
    pub total_messages: u64,
    pub tags: Vec<String>,
    pub is_active: bool,
    pub participants: Vec<Participant>,
    /// Answered turns, and their summed response times: the measured
    /// average response time (vareon's arcana status).
    pub turns: u64,
    pub response_ms_total: u64,
    pub last_message_at: Option<Millis>,
    /// The `seq` the next message gets.
    pub next_seq: u64,
    /// Which dialect created it (`aiwm`, `vareon`, `contenox`, `forge`).
    pub origin: String,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
}

/// The ordered index of a user's own conversations (vareon, contenox and
/// forge list only the caller's).
pub const BY_USER: &str = "user";
/// The ordered index of a conversation's messages, by `seq`.
pub const BY_CONVERSATION: &str = "conversation";

impl Conversation {
    pub fn user_scope(org: &str, user: &str) -> String {
        format!("{org}/{user}")
    }
}

impl Record for Conversation {
    const COLLECTION: &'static str = "conversations";
    fn id(&self) -> &str {
        &self.id
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![(
            "conversationId",
            format!("{}/{}", self.owner.org_id, self.conversation_id),
        )]
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        let mut out = warden_domain::created_order(&self.owner.org_id, self.audit.created_at);
        out.push((
            BY_USER,
            Conversation::user_scope(&self.owner.org_id, &self.owner.user_id),
            warden_storage::time_sort_key(self.audit.created_at),
        ));
        out
    }
    const INDEX_VERSION: u32 = 1;
}

impl Owned for Conversation {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// Tokens of one answered message (AIWM `usage`).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct MessageUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// One message of a conversation (AIWM §9). JSON parts (`functionCall`,
/// `toolCalls`, `toolResults`) are kept as JSON text ("" when absent).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub id: String,
    /// The conversation's `_id`.
    pub conversation_id: String,
    pub seq: u64,
    pub agent_id: Option<String>,
    pub role: String,
    pub content: String,
    pub name: Option<String>,
    pub function_call: String,
    pub tool_calls: String,
    pub tool_results: String,
    pub usage: Option<MessageUsage>,
    /// The backend's time to answer (ms).
    pub latency: Option<u64>,
    /// The whole turn's time, prompt building and storing included (ms).
    pub response_time: Option<u64>,
    pub error: Option<String>,
    /// The model that answered (assistant messages).
    pub model: Option<String>,
    pub is_active: bool,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
}

impl Message {
    /// A live message with nothing but its place, role and text.
    pub fn new(
        conversation: &str,
        seq: u64,
        role: &str,
        content: String,
        owner: Owner,
        by: &str,
    ) -> Message {
        Message {
            id: warden_storage::new_object_id(),
            conversation_id: conversation.to_owned(),
            seq,
            agent_id: None,
            role: role.into(),
            content,
            name: None,
            function_call: String::new(),
            tool_calls: String::new(),
            tool_results: String::new(),
            usage: None,
            latency: None,
            response_time: None,
            error: None,
            model: None,
            is_active: true,
            extra: String::new(),
            owner,
            audit: Audit::new(by),
        }
    }
}

impl Record for Message {
    const COLLECTION: &'static str = "messages";
    fn id(&self) -> &str {
        &self.id
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        let mut out = warden_domain::created_order(&self.owner.org_id, self.audit.created_at);
        out.push((
            BY_CONVERSATION,
            self.conversation_id.clone(),
            self.seq.to_be_bytes().to_vec(),
        ));
        out
    }
    const INDEX_VERSION: u32 = 1;
}

impl Owned for Message {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}
