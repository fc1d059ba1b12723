//! Conversations: the kind definition for the supervisor, the service
//! every dialect's chat routes call, and the LLM gateway as the
//! conversations' [`Gateway`]. Writes go through each conversation's
//! actor; reads go straight to the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use serde_json::{Value, json};
use warden_actors::DomainError;
use warden_actors::conversation::{
    self, Ask, BY_USER, Completion, ConvArgs, ConvHandle, ConvMsg, Conversation, ConversationActor,
    ConversationInput, Gateway, Message, MessageInput, Turn, TurnResult,
};
use warden_actors::execution::BoxFuture;
use warden_actors::llm::chat::{self, Answer};
use warden_actors::llm::usage;
use warden_domain::{Agent, LlmPreference, Memory, Model, Owner};
use warden_storage::{PageQuery, Record, Store, now_millis};

use crate::{Kind, KindRef, Llm};

/// How long a conversation's actor stays without use, by default.
pub const DEFAULT_CONVERSATION_IDLE: Duration = Duration::from_secs(300);

pub struct ConversationKind {
    store: Store,
    gateway: Arc<dyn Gateway>,
    idle: Duration,
}

impl ConversationKind {
    pub(crate) fn new(store: Store, gateway: Arc<dyn Gateway>, idle: Duration) -> Self {
        ConversationKind {
            store,
            gateway,
            idle,
        }
    }
}

impl Kind for ConversationKind {
    type Actor = ConversationActor;
    type Msg = ConvMsg;
    type Args = ConvArgs;
    const KIND: &'static str = "conversation";
    const SUPERVISOR: &'static str = "conversations";

    fn actor(&self) -> ConversationActor {
        ConversationActor
    }

    fn args(&self, id: &str) -> ConvArgs {
        ConvArgs {
            store: self.store.clone(),
            id: id.to_owned(),
            gateway: self.gateway.clone(),
            idle: self.idle,
        }
    }

    fn exists(&self, id: &str) -> Result<bool, DomainError> {
        Ok(self
            .store
            .get::<Conversation>(id)?
            .is_some_and(|c| !c.is_deleted()))
    }

    /// Conversations are activated on use.
    fn boot_ids(&self) -> Vec<String> {
        Vec::new()
    }

    fn failed(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// A conversation has nothing running to mark: its next use starts
    /// a fresh actor from the stored history.
    async fn mark_failed(&self, id: &str, reason: &str) {
        tracing::error!(conversation = id, %reason, "the conversation's actor failed too often");
    }

    async fn clear_failed(&self, _id: &str) {}

    fn crash(actor: &ActorRef<ConvMsg>) {
        ConvHandle(actor.clone()).crash();
    }

    /// Idle actors are looked at twice per idle period.
    fn tick(&self) -> Option<crate::kind::Tick<ConvMsg>> {
        let period = (self.idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(30));
        Some((period, || ConvMsg::Tick))
    }
}

/// The LLM gateway, as conversations use it: whole answers, the
/// caller's routing rules applied, usage counted.
pub(crate) struct LlmGateway(pub(crate) Llm);

impl Gateway for LlmGateway {
    fn default_model(&self) -> String {
        self.0.defaults().task_model.clone()
    }

    fn context_length(&self, org: &str, model: &str) -> Result<u64, DomainError> {
        let m = self.0.llm_model(org, model)?;
        let profile = m.llm_profile();
        if !profile.can_chat {
            return Err(DomainError::Invalid(vec![format!(
                "model {model} cannot chat"
            )]));
        }
        Ok(profile.context_length)
    }

    fn complete(&self, ask: Ask) -> BoxFuture<Result<Completion, DomainError>> {
        let llm = self.0.clone();
        Box::pin(async move { llm.complete(ask).await })
    }

    fn embed(
        &self,
        org: String,
        user: String,
        model: Option<String>,
        text: String,
    ) -> BoxFuture<Result<Vec<f64>, DomainError>> {
        let llm = self.0.clone();
        Box::pin(async move { llm.embed_vector(&org, &user, model.as_deref(), &text).await })
    }
}

impl Llm {
    /// One whole chat completion on a user's behalf: the user's routing
    /// rules applied, routed and failed over, the answer read and its
    /// tokens counted. What conversations and forge's analysis ask.
    pub async fn complete(&self, ask: Ask) -> Result<Completion, DomainError> {
        let llm = self;

        let mut body = json!({"model": ask.model, "messages": ask.messages, "stream": false});
        if let Some(t) = ask.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(t) = ask.top_p {
            body["top_p"] = json!(t);
        }
        if let Some(t) = ask.max_tokens {
            body["max_tokens"] = json!(t);
        }
        if !ask.tools.is_empty() {
            body["tools"] = Value::Array(ask.tools);
        }
        let mut req = chat::check_chat(body.as_object().cloned().unwrap_or_default(), &ask.model)
            .map_err(DomainError::Invalid)?;
        if let Some((model, _)) = llm.choose(
            &ask.org,
            &ask.user,
            &ask.username,
            &req.model,
            &req.last_user_text(),
        )? {
            req.retarget(&model);
        }
        let started = Instant::now();
        let (answer, guard) = llm.chat(&ask.org, &req).await?;
        let latency_ms = started.elapsed().as_millis() as u64;
        let Answer::Whole { status, body } = answer else {
            return Err(DomainError::Unreachable(
                "the backend streamed an answer it was asked for whole".into(),
            ));
        };
        let v: Value = serde_json::from_slice(&body)
            .map_err(|_| DomainError::Unreachable("the backend's answer is not JSON".into()))?;
        if !(200..300).contains(&status) {
            let why = v["error"]["message"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or("no reason given");
            return Err(DomainError::Unreachable(format!(
                "the backend refused the request (HTTP {status}): {why}"
            )));
        }
        let tokens = usage::of_whole(usage::prompt_chars(&req.body), &body);
        llm.record_usage(&ask.org, &ask.user, &req.model, tokens, guard.price);
        let message = &v["choices"][0]["message"];
        let content = message["content"].as_str();
        let tool_calls = match &message["tool_calls"] {
            Value::Array(calls) if !calls.is_empty() => message["tool_calls"].to_string(),
            _ => String::new(),
        };
        if content.is_none() && tool_calls.is_empty() {
            return Err(DomainError::Unreachable(
                "the backend's answer has no message".into(),
            ));
        }
        Ok(Completion {
            content: content.unwrap_or_default().to_owned(),
            tool_calls,
            model: v["model"].as_str().unwrap_or(&req.model).to_owned(),
            tokens,
            latency_ms,
        })
    }
}

/// What the arcana status reports of an organisation's conversations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatStats {
    /// Conversations with a message in the last [`ACTIVE_WINDOW`].
    pub active: u64,
    /// Messages stored (live).
    pub messages: u64,
    /// The mean response time of answered turns (ms), if any.
    pub avg_response_ms: Option<f64>,
}

/// How recent a conversation's last message must be for it to count as active.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Conversation requests.
#[derive(Clone)]
pub struct Conversations {
    kind: KindRef<ConversationKind>,
    store: Store,
    gateway: Llm,
}

impl Conversations {
    pub(crate) fn new(kind: KindRef<ConversationKind>, store: Store, gateway: Llm) -> Self {
        Conversations {
            kind,
            store,
            gateway,
        }
    }

    /// A live conversation of `org` by `_id` or by its key.
    pub fn resolve(&self, org: &str, id: &str) -> Result<Option<Conversation>, DomainError> {
        let found: Option<Conversation> =
            warden_domain::resolve(&self.store, "conversationId", org, id)?;
        Ok(found.filter(|c| c.owner.org_id == org))
    }

    /// A conversation `user` takes part in (its owner or a participant):
    /// what the per-user dialects (vareon, contenox, forge) may touch.
    pub fn of_participant(
        &self,
        org: &str,
        user: &str,
        id: &str,
    ) -> Result<Conversation, DomainError> {
        self.resolve(org, id)?
            .filter(|c| {
                c.owner.user_id == user
                    || c.participants
                        .iter()
                        .any(|p| p.user_id == user && p.left_at.is_none())
            })
            .ok_or_else(|| DomainError::NotFound {
                kind: "Conversation",
                id: id.to_owned(),
            })
    }

    /// A live agent of `org` by `_id` or by its key.
    pub fn agent(&self, org: &str, id: &str) -> Result<Option<Agent>, DomainError> {
        let found: Option<Agent> = warden_domain::resolve(&self.store, "agentId", org, id)?;
        Ok(found.filter(|a| a.owner.org_id == org))
    }

    /// The agent an input names, as its `_id`; an unknown one is refused.
    fn agent_ref(&self, org: &str, input: &mut ConversationInput) -> Result<(), DomainError> {
        if let Some(Some(a)) = &input.agent_id {
            let agent = self
                .agent(org, a)?
                .ok_or_else(|| DomainError::Invalid(vec![format!("agentId {a}: no such agent")]))?;
            input.agent_id = Some(Some(agent.id));
        }
        Ok(())
    }

    /// Writes a new conversation (its actor starts on first use).
    pub async fn create(
        &self,
        mut input: ConversationInput,
        owner: Owner,
        by: &str,
        origin: &str,
    ) -> Result<Conversation, DomainError> {
        self.agent_ref(&owner.org_id, &mut input)?;
        let c = conversation::create(input, owner, by, origin)?;
        Ok(self.store.insert(c).await?)
    }

    /// A user's own conversations, newest first.
    pub fn of_user(
        &self,
        org: &str,
        user: &str,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<Conversation>, DomainError> {
        let scope = Conversation::user_scope(org, user);
        let page = self.store.page::<Conversation>(&PageQuery {
            index: BY_USER,
            scope: &scope,
            descending: true,
            skip,
            after: None,
            limit,
        })?;
        Ok(page.items.into_iter().map(|(_, c)| c).collect())
    }

    /// A conversation's live messages, oldest first (at most `limit`, the newest).
    pub fn history(&self, conv: &Conversation, limit: usize) -> Result<Vec<Message>, DomainError> {
        conversation::load_history(&self.store, &conv.id, limit)
    }

    async fn call<T, F, Fut>(&self, id: &str, f: F) -> Result<T, DomainError>
    where
        F: Fn(ConvHandle) -> Fut,
        Fut: std::future::Future<Output = Result<T, DomainError>>,
    {
        self.kind.with_actor(id, |a| f(ConvHandle(a))).await
    }

    /// A turn: the user's message answered by the model, both stored.
    /// Not retried if the actor goes away mid-turn (the model may have
    /// answered already).
    pub async fn turn(&self, id: &str, turn: Turn) -> Result<TurnResult, DomainError> {
        let actor = self.kind.get_or_activate(id).await?;
        ConvHandle(actor).turn(turn).await
    }

    pub async fn append(
        &self,
        id: &str,
        input: MessageInput,
        by: &str,
    ) -> Result<Message, DomainError> {
        self.call(id, |h| {
            let input = input.clone();
            async move { h.append(input, by).await }
        })
        .await
    }

    pub async fn edit_message(
        &self,
        m: &Message,
        input: MessageInput,
        by: &str,
    ) -> Result<Message, DomainError> {
        self.call(&m.conversation_id, |h| {
            let input = input.clone();
            async move { h.edit(&m.id, input, by).await }
        })
        .await
    }

    pub async fn delete_message(&self, m: &Message, by: &str) -> Result<Message, DomainError> {
        self.call(&m.conversation_id, |h| async move {
            h.delete_message(&m.id, by).await
        })
        .await
    }

    pub async fn update(
        &self,
        conv: &Conversation,
        mut input: ConversationInput,
        by: &str,
    ) -> Result<Conversation, DomainError> {
        self.agent_ref(&conv.owner.org_id, &mut input)?;
        self.call(&conv.id, |h| {
            let input = input.clone();
            async move { h.update(input, by).await }
        })
        .await
    }

    pub async fn delete(&self, id: &str, by: &str) -> Result<Conversation, DomainError> {
        self.call(id, |h| async move { h.delete(by).await }).await
    }

    pub async fn clear(&self, id: &str, by: &str) -> Result<u64, DomainError> {
        self.call(id, |h| async move { h.clear(by).await }).await
    }

    /// A live message of `org`.
    pub fn message(&self, org: &str, id: &str) -> Result<Option<Message>, DomainError> {
        Ok(self
            .store
            .get::<Message>(id)?
            .filter(|m| !m.is_deleted() && m.owner.org_id == org))
    }

    /// The arcana status counters of an organisation, from its
    /// conversations' records.
    pub fn stats(&self, org: &str) -> Result<ChatStats, DomainError> {
        let scope = warden_domain::org_scope(Some(org));
        let since = now_millis() - ACTIVE_WINDOW.as_millis() as i64;
        let mut stats = ChatStats {
            messages: self
                .store
                .scope_count::<Message>(warden_domain::CREATED, &scope)?,
            ..ChatStats::default()
        };
        let (mut turns, mut total_ms) = (0u64, 0u64);
        for c in self
            .store
            .in_scope::<Conversation>(warden_domain::CREATED, &scope)?
        {
            if c.last_message_at.is_some_and(|t| t >= since) {
                stats.active += 1;
            }
            turns += c.turns;
            total_ms += c.response_ms_total;
        }
        if turns > 0 {
            stats.avg_response_ms = Some(total_ms as f64 / turns as f64);
        }
        Ok(stats)
    }

    // A user's context memory and LLM preferences (vareon arcana).

    /// A user's memories, oldest first.
    pub fn memories(&self, org: &str, user: &str) -> Result<Vec<Memory>, DomainError> {
        Ok(self
            .store
            .in_scope::<Memory>("user", &Memory::scope(org, user))?)
    }

    pub fn memory(&self, org: &str, user: &str, key: &str) -> Result<Memory, DomainError> {
        self.store
            .get_by_unique::<Memory>("key", &Memory::unique(org, user, key))?
            .ok_or_else(|| DomainError::NotFound {
                kind: "Context memory",
                id: key.to_owned(),
            })
    }

    /// Creates or replaces a user's memory under `key`.
    pub async fn remember(
        &self,
        org: &str,
        user: &str,
        key: &str,
        value: &str,
    ) -> Result<Memory, DomainError> {
        loop {
            let existing = match self
                .store
                .get_by_unique::<Memory>("key", &Memory::unique(org, user, key))?
            {
                Some(m) => self.store.get_versioned::<Memory>(&m.id)?,
                None => None,
            };
            let version = existing.as_ref().map(|(_, v)| *v);
            let m = Memory::upsert(existing.map(|(m, _)| m), org, user, key, value)?;
            let write = warden_storage::Write::put(&m, Some(version.unwrap_or(0)))?;
            match self.store.commit(vec![write]).await {
                Ok(_) => return Ok(m),
                // A concurrent write of the same key: read it again.
                Err(warden_storage::StorageError::VersionMismatch { .. })
                | Err(warden_storage::StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub async fn forget(&self, org: &str, user: &str, key: &str) -> Result<(), DomainError> {
        let m = self.memory(org, user, key)?;
        Ok(self.store.remove::<Memory>(&m.id).await?)
    }

    /// A user's LLM preferences, stored with the defaults on first read.
    pub async fn preferences(&self, org: &str, user: &str) -> Result<LlmPreference, DomainError> {
        let unique = LlmPreference::unique(org, user);
        if let Some(p) = self.store.get_by_unique::<LlmPreference>("user", &unique)? {
            return Ok(p);
        }
        match self.store.insert(LlmPreference::new(org, user)).await {
            Ok(p) => Ok(p),
            Err(warden_storage::StorageError::Conflict { .. }) => self
                .store
                .get_by_unique::<LlmPreference>("user", &unique)?
                .ok_or_else(|| DomainError::Unavailable("the preferences vanished".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Changes a user's preferences; a default model must be an LLM
    /// model the organisation may use (by `_id`).
    pub async fn set_preferences(
        &self,
        org: &str,
        user: &str,
        default_model_id: Option<Option<String>>,
        temperature: Option<f64>,
        top_p: Option<f64>,
    ) -> Result<LlmPreference, DomainError> {
        if let Some(Some(id)) = &default_model_id {
            self.chat_model(org, id)?;
        }
        let current = self.preferences(org, user).await?;
        let updated = self
            .store
            .update::<LlmPreference, DomainError>(&current.id, |p| {
                p.apply(default_model_id.clone(), temperature, top_p)?;
                Ok(Some(()))
            })
            .await?;
        updated.ok_or_else(|| DomainError::Unavailable("the preferences vanished".into()))
    }

    /// An LLM model `org` may use, by `_id` (vareon's) or by name
    /// (contenox's id).
    pub fn chat_model(&self, org: &str, id: &str) -> Result<Model, DomainError> {
        let by_id = self.store.get::<Model>(id)?.filter(|m| {
            !m.is_deleted()
                && m.is_llm()
                && (m.owner.org_id == org || m.owner.org_id == warden_actors::llm::SYSTEM_ORG)
        });
        match by_id {
            Some(m) => Ok(m),
            None => self
                .gateway
                .llm_model(org, id)
                .map_err(|_| DomainError::NotFound {
                    kind: "Default LLM Model",
                    id: id.to_owned(),
                }),
        }
    }
}
