//! `ConversationActor`: the one writer of a conversation and its
//! messages. It holds the recent history, answers turns one at a time
//! through the LLM gateway ([`Gateway`], behind a trait so that this
//! crate does not know the supervisors), and passivates when idle; after
//! a crash or a passivation it comes back with its history from the store.
//!
//! A turn writes nothing until the backend has answered: then the user's
//! message, the answer and the conversation's counters are one commit,
//! durable before the reply. A backend that fails leaves no message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;
use warden_domain::{Agent, Instruction, LlmPreference, Memory, Model, Owner};
use warden_storage::{PageQuery, Record, Store, Write, now_millis};

use super::prompt::{self, System};
use super::record::{BY_CONVERSATION, Conversation, Message, MessageUsage};
use super::{ConversationInput, MessageInput, apply, check_message, check_text};
use crate::DomainError;
use crate::execution::BoxFuture;
use crate::llm::usage::Tokens;

/// The most history an actor holds (the newest messages); prompts are
/// trimmed to the model's window from these.
pub const HISTORY_HELD: usize = 1000;

/// A turn's request to the LLM gateway.
#[derive(Debug, Clone)]
pub struct Ask {
    pub org: String,
    pub user: String,
    /// The speaker's name (routing rules match on it).
    pub username: String,
    pub model: String,
    pub messages: Vec<Value>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u64>,
    /// Tools offered to the model (OpenAI's `tools`; empty: none).
    pub tools: Vec<Value>,
}

/// The gateway's whole answer.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: String,
    /// The answer's `tool_calls` as JSON text ("" when none).
    pub tool_calls: String,
    pub model: String,
    pub tokens: Tokens,
    /// The backend's time to answer (ms).
    pub latency_ms: u64,
}

/// How conversations reach models: the LLM gateway.
pub trait Gateway: Send + Sync + 'static {
    /// The model the server answers with when nothing else chose one.
    fn default_model(&self) -> String;
    /// The context window of a model `org` may use (0: not declared);
    /// an unknown model is an error.
    fn context_length(&self, org: &str, model: &str) -> Result<u64, DomainError>;
    /// Routes, sends and counts one chat completion, whole.
    fn complete(&self, ask: Ask) -> BoxFuture<Result<Completion, DomainError>>;
    /// The embedding of a text by a model (the server's embedding model
    /// when `None`), on a user's behalf, usage counted.
    fn embed(
        &self,
        org: String,
        user: String,
        model: Option<String>,
        text: String,
    ) -> BoxFuture<Result<Vec<f64>, DomainError>>;
}

/// One turn: a user's message and how to answer it.
#[derive(Debug, Clone, Default)]
pub struct Turn {
    /// Who speaks (memory and preferences are theirs).
    pub org: String,
    pub user: String,
    pub username: String,
    pub text: String,
    /// Models to ask, by preference (contenox's `models`); else the
    /// conversation's, the agent's, the user's default, the server's.
    pub models: Vec<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u64>,
    /// Facts the dialect adds to the system prompt (forge: the user's
    /// datasets).
    pub context: Option<String>,
    /// The answer stored when no backend can answer (forge's built-in
    /// analyst), from [`FALLBACK_MODEL`].
    pub fallback: Option<String>,
}

/// The model named on an answer that no LLM gave.
pub const FALLBACK_MODEL: &str = "warden-analyst";

/// What a turn stored.
#[derive(Debug, Clone)]
pub struct TurnResult {
    pub question: Message,
    pub answer: Message,
    pub conversation: Conversation,
}

type Reply<T> = RpcReplyPort<Result<T, DomainError>>;

pub enum ConvMsg {
    Turn(Box<Turn>, Reply<TurnResult>),
    Append(Box<MessageInput>, String, Reply<Message>),
    EditMessage(String, Box<MessageInput>, String, Reply<Message>),
    DeleteMessage(String, String, Reply<Message>),
    Update(Box<ConversationInput>, String, Reply<Conversation>),
    Delete(String, Reply<Conversation>),
    /// Hides every message (vareon's clear); answers how many.
    Clear(String, Reply<u64>),
    /// The kind's period: passivate when idle.
    Tick,
    Crash,
}

pub struct ConvArgs {
    pub store: Store,
    pub id: String,
    pub gateway: Arc<dyn Gateway>,
    /// Idle this long, the actor stops (it is started again on use).
    pub idle: Duration,
}

pub struct ConvState {
    store: Store,
    conv: Conversation,
    version: u64,
    /// The newest live messages, oldest first (at most [`HISTORY_HELD`]).
    history: Vec<Message>,
    gateway: Arc<dyn Gateway>,
    idle: Duration,
    last_used: Instant,
}

#[derive(Default)]
pub struct ConversationActor;

/// The newest live messages of a conversation, oldest first.
pub fn load_history(store: &Store, conv: &str, limit: usize) -> Result<Vec<Message>, DomainError> {
    let page = store.page::<Message>(&PageQuery {
        index: BY_CONVERSATION,
        scope: conv,
        descending: true,
        skip: 0,
        after: None,
        limit,
    })?;
    // Collected into a vector of its own size: reusing the page's (sized
    // for its limit) would keep ~0.5 MiB per actor for a short history.
    let mut out: Vec<Message> = Vec::with_capacity(page.items.len());
    out.extend(page.items.into_iter().rev().map(|(_, m)| m));
    Ok(out)
}

fn as_f64(v: Option<Value>) -> Option<f64> {
    v.and_then(|v| v.as_f64())
}

impl ConvState {
    fn message(&self, seq: u64, role: &str, content: String, by: &str) -> Message {
        let owner = Owner {
            org_id: self.conv.owner.org_id.clone(),
            user_id: by.to_owned(),
            group_id: self.conv.owner.group_id.clone(),
        };
        let mut m = Message::new(&self.conv.id, seq, role, content, owner, by);
        m.agent_id = self.conv.agent_id.clone();
        m
    }

    /// Writes the conversation (at the version held) with its messages
    /// in one commit, then holds them.
    async fn commit(
        &mut self,
        next: Conversation,
        messages: &[Message],
        removed_from_history: &[String],
    ) -> Result<(), DomainError> {
        let mut writes = vec![Write::put(&next, Some(self.version))?];
        for m in messages {
            writes.push(Write::put(m, None)?);
        }
        let versions = self.store.commit(writes).await?;
        self.version = versions[0];
        self.conv = next;
        self.history
            .retain(|m| !removed_from_history.contains(&m.id));
        for m in messages {
            match self.history.iter_mut().find(|h| h.id == m.id) {
                Some(h) if m.audit.deleted_at.is_none() => *h = m.clone(),
                Some(_) => {}
                None if m.audit.deleted_at.is_none() => self.history.push(m.clone()),
                None => {}
            }
        }
        self.history.retain(|m| m.audit.deleted_at.is_none());
        self.history.sort_by_key(|m| m.seq);
        let excess = self.history.len().saturating_sub(HISTORY_HELD);
        self.history.drain(..excess);
        Ok(())
    }

    /// The model a turn asks: the turn's, the conversation's, the
    /// agent's, the user's default, else the server's; a model `_id` is
    /// read as its name.
    fn model_for(
        &self,
        turn: &Turn,
        agent: Option<&Agent>,
        prefs: Option<&LlmPreference>,
    ) -> Result<String, DomainError> {
        let chosen = turn
            .models
            .iter()
            .find(|m| !m.trim().is_empty())
            .cloned()
            .or_else(|| Some(self.conv.model_id.clone()).filter(|m| !m.is_empty()))
            .or_else(|| {
                agent
                    .and_then(|a| a.setting("model"))
                    .and_then(|v| v.as_str().map(str::to_owned))
            })
            .or_else(|| prefs.and_then(|p| p.default_model_id.clone()));
        let Some(chosen) = chosen else {
            return Ok(self.gateway.default_model());
        };
        Ok(match self.store.get::<Model>(&chosen)? {
            Some(m) if !m.is_deleted() && m.owner.org_id == self.conv.owner.org_id => m.name,
            _ => chosen,
        })
    }

    async fn turn(&mut self, turn: Turn) -> Result<TurnResult, DomainError> {
        let started = Instant::now();
        check_text(&turn.text)?;
        let org = self.conv.owner.org_id.clone();
        let agent: Option<Agent> = match &self.conv.agent_id {
            Some(a) => warden_domain::resolve(&self.store, "agentId", &org, a)?,
            None => None,
        };
        let instruction: Option<Instruction> =
            match agent.as_ref().and_then(|a| a.instruction_id.clone()) {
                Some(i) => warden_domain::resolve(&self.store, "instructionId", &org, &i)?
                    .filter(|i: &Instruction| i.is_active),
                None => None,
            };
        let memories: Vec<Memory> = self
            .store
            .in_scope::<Memory>("user", &Memory::scope(&turn.org, &turn.user))?;
        // A user who never set preferences has vareon's defaults.
        let prefs: Option<LlmPreference> = Some(
            self.store
                .get_by_unique::<LlmPreference>(
                    "user",
                    &LlmPreference::unique(&turn.org, &turn.user),
                )?
                .unwrap_or_else(|| LlmPreference::new(&turn.org, &turn.user)),
        );
        let model = self.model_for(&turn, agent.as_ref(), prefs.as_ref())?;
        let setting = |key: &str| agent.as_ref().and_then(|a| a.setting(key));
        let temperature = turn
            .temperature
            .or_else(|| as_f64(setting("temperature")))
            .or(prefs.as_ref().map(|p| p.temperature));
        let top_p = turn
            .top_p
            .or_else(|| as_f64(setting("top_p")))
            .or(prefs.as_ref().map(|p| p.top_p));
        let max_tokens = turn
            .max_tokens
            .or_else(|| setting("max_tokens").and_then(|v| v.as_u64()));
        let context = self.gateway.context_length(&org, &model)?;
        let system = System {
            instruction: instruction
                .as_ref()
                .map(|i| (i.system_prompt.as_str(), i.guidelines.as_slice())),
            memory: memories
                .iter()
                .map(|m| (m.key.as_str(), m.value.as_str()))
                .collect(),
        };
        let mut system = prompt::system_prompt(&system, &self.history);
        if let Some(extra) = turn.context.as_deref().filter(|c| !c.trim().is_empty()) {
            system = Some(match system {
                Some(s) => format!("{s}\n\n{extra}"),
                None => extra.to_owned(),
            });
        }
        let messages = prompt::build(
            system.as_deref(),
            &self.history,
            &turn.text,
            context,
            max_tokens,
        )?;
        let ask = Ask {
            org: org.clone(),
            user: turn.user.clone(),
            username: turn.username.clone(),
            model: model.clone(),
            messages,
            temperature,
            top_p,
            max_tokens,
            tools: Vec::new(),
        };
        let answered = self.gateway.complete(ask).await;
        let elapsed = started.elapsed().as_millis() as u64;
        let c = match (answered, turn.fallback.clone()) {
            (Ok(c), _) => c,
            (Err(DomainError::Unreachable(why)), Some(fallback)) => {
                tracing::debug!(conversation = %self.conv.id, %why, "no backend answered; the fallback does");
                Completion {
                    tokens: Tokens {
                        prompt: 0,
                        completion: crate::llm::usage::estimate(fallback.chars().count()),
                        estimated: true,
                    },
                    content: fallback,
                    tool_calls: String::new(),
                    model: FALLBACK_MODEL.into(),
                    latency_ms: 0,
                }
            }
            (Err(e), _) => {
                if let Some(a) = &agent {
                    self.count_task(&a.id, false, elapsed, elapsed).await;
                }
                return Err(e);
            }
        };
        let seq = self.conv.next_seq;
        let question = self.message(seq, "user", turn.text.clone(), &turn.user);
        let mut answer = self.message(seq + 1, "assistant", c.content.clone(), &turn.user);
        let total = c.tokens.prompt + c.tokens.completion;
        answer.usage = Some(MessageUsage {
            prompt_tokens: c.tokens.prompt,
            completion_tokens: c.tokens.completion,
            total_tokens: total,
        });
        answer.tool_calls = c.tool_calls.clone();
        answer.latency = Some(c.latency_ms);
        answer.response_time = Some(elapsed);
        answer.model = Some(c.model.clone());
        answer.audit.created_by = answer
            .agent_id
            .clone()
            .unwrap_or_else(|| "assistant".into());
        let mut next = self.conv.clone();
        next.next_seq += 2;
        next.total_messages += 2;
        next.total_tokens += total;
        next.turns += 1;
        next.response_ms_total += elapsed;
        next.last_message_at = Some(now_millis());
        next.audit.touch(&turn.user);
        if !next.participants.iter().any(|p| p.user_id == turn.user) {
            next.participants.push(super::record::Participant {
                user_id: turn.user.clone(),
                role: "member".into(),
                joined_at: now_millis(),
                left_at: None,
            });
        }
        self.commit(next, &[question.clone(), answer.clone()], &[])
            .await?;
        if let Some(a) = &agent {
            self.count_task(&a.id, true, elapsed, c.latency_ms).await;
        }
        Ok(TurnResult {
            question,
            answer,
            conversation: self.conv.clone(),
        })
    }

    /// The agent's performance counters (a lost race is retried by the
    /// store; a failure to count is logged, the turn stands).
    async fn count_task(&self, agent: &str, ok: bool, response_ms: u64, latency_ms: u64) {
        let at = now_millis();
        let counted = self
            .store
            .update::<Agent, DomainError>(agent, |a| {
                if a.is_deleted() {
                    return Ok(None);
                }
                a.count_task(ok, response_ms, latency_ms, at);
                Ok(Some(()))
            })
            .await;
        if let Err(e) = counted {
            tracing::warn!(agent, error = %e, "could not count the agent's task");
        }
    }

    async fn append(&mut self, input: MessageInput, by: &str) -> Result<Message, DomainError> {
        check_message(&input, true)?;
        let mut m = self.message(self.conv.next_seq, "user", String::new(), by);
        super::apply_message(&mut m, input);
        let mut next = self.conv.clone();
        next.next_seq += 1;
        next.total_messages += 1;
        if let Some(u) = &m.usage {
            next.total_tokens += u.total_tokens;
        }
        next.last_message_at = Some(now_millis());
        next.audit.touch(by);
        self.commit(next, std::slice::from_ref(&m), &[]).await?;
        Ok(m)
    }

    fn live_message(&self, id: &str) -> Result<Message, DomainError> {
        self.store
            .get::<Message>(id)?
            .filter(|m| !m.is_deleted() && m.conversation_id == self.conv.id)
            .ok_or_else(|| DomainError::NotFound {
                kind: "Message",
                id: id.to_owned(),
            })
    }

    async fn edit(
        &mut self,
        id: &str,
        input: MessageInput,
        by: &str,
    ) -> Result<Message, DomainError> {
        check_message(&input, false)?;
        let mut m = self.live_message(id)?;
        super::apply_message(&mut m, input);
        m.audit.touch(by);
        let mut next = self.conv.clone();
        next.audit.touch(by);
        self.commit(next, std::slice::from_ref(&m), &[]).await?;
        Ok(m)
    }

    async fn delete_message(&mut self, id: &str, by: &str) -> Result<Message, DomainError> {
        let mut m = self.live_message(id)?;
        m.audit.delete(by);
        let mut next = self.conv.clone();
        next.total_messages = next.total_messages.saturating_sub(1);
        next.audit.touch(by);
        self.commit(next, std::slice::from_ref(&m), &[m.id.clone()])
            .await?;
        Ok(m)
    }

    /// Every live message of the conversation, marked deleted (read from
    /// the store: the actor holds only the newest).
    fn all_deleted(&self, by: &str) -> Result<Vec<Message>, DomainError> {
        let mut all = load_history(&self.store, &self.conv.id, usize::MAX)?;
        for m in &mut all {
            m.audit.delete(by);
        }
        Ok(all)
    }

    async fn clear(&mut self, by: &str) -> Result<u64, DomainError> {
        let gone = self.all_deleted(by)?;
        let mut next = self.conv.clone();
        next.total_messages = 0;
        next.total_tokens = 0;
        next.audit.touch(by);
        let ids: Vec<String> = gone.iter().map(|m| m.id.clone()).collect();
        self.commit(next, &gone, &ids).await?;
        Ok(gone.len() as u64)
    }

    async fn delete(&mut self, by: &str) -> Result<Conversation, DomainError> {
        let gone = self.all_deleted(by)?;
        let mut next = self.conv.clone();
        next.audit.delete(by);
        next.is_active = false;
        let ids: Vec<String> = gone.iter().map(|m| m.id.clone()).collect();
        self.commit(next, &gone, &ids).await?;
        Ok(self.conv.clone())
    }

    async fn update(
        &mut self,
        input: ConversationInput,
        by: &str,
    ) -> Result<Conversation, DomainError> {
        let mut next = self.conv.clone();
        apply(&mut next, input, false)?;
        next.audit.touch(by);
        self.commit(next, &[], &[]).await?;
        Ok(self.conv.clone())
    }
}

impl Actor for ConversationActor {
    type Msg = ConvMsg;
    type State = ConvState;
    type Arguments = ConvArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ConvMsg>,
        args: ConvArgs,
    ) -> Result<ConvState, ActorProcessingErr> {
        let (conv, version) = args
            .store
            .get_versioned::<Conversation>(&args.id)?
            .filter(|(c, _)| c.audit.deleted_at.is_none())
            .ok_or_else(|| format!("conversation {} does not exist", args.id))?;
        let history = load_history(&args.store, &conv.id, HISTORY_HELD)?;
        Ok(ConvState {
            store: args.store,
            conv,
            version,
            history,
            gateway: args.gateway,
            idle: args.idle,
            last_used: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ConvMsg>,
        msg: ConvMsg,
        state: &mut ConvState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(msg, ConvMsg::Tick) {
            state.last_used = Instant::now();
        }
        match msg {
            ConvMsg::Turn(turn, reply) => {
                let _ = reply.send(state.turn(*turn).await);
            }
            ConvMsg::Append(input, by, reply) => {
                let _ = reply.send(state.append(*input, &by).await);
            }
            ConvMsg::EditMessage(id, input, by, reply) => {
                let _ = reply.send(state.edit(&id, *input, &by).await);
            }
            ConvMsg::DeleteMessage(id, by, reply) => {
                let _ = reply.send(state.delete_message(&id, &by).await);
            }
            ConvMsg::Update(input, by, reply) => {
                let _ = reply.send(state.update(*input, &by).await);
            }
            ConvMsg::Delete(by, reply) => {
                let deleted = state.delete(&by).await;
                let done = deleted.is_ok();
                let _ = reply.send(deleted);
                if done {
                    myself.stop(Some("deleted".into()));
                }
            }
            ConvMsg::Clear(by, reply) => {
                let _ = reply.send(state.clear(&by).await);
            }
            ConvMsg::Tick => {
                if state.last_used.elapsed() >= state.idle {
                    tracing::debug!(conversation = %state.conv.id, "idle: passivating");
                    myself.stop(Some("passivated".into()));
                }
            }
            ConvMsg::Crash => panic!(
                "fault injection: conversation {} was told to crash",
                state.conv.id
            ),
        }
        Ok(())
    }
}

/// The public API of a running conversation actor.
#[derive(Clone)]
pub struct ConvHandle(pub ActorRef<ConvMsg>);

/// How long a turn may take: the gateway's first-byte timeout and then some.
const TURN_TIMEOUT: Duration = Duration::from_secs(150);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

async fn call<T: Send + 'static>(
    actor: &ActorRef<ConvMsg>,
    timeout: Duration,
    msg: impl FnOnce(Reply<T>) -> ConvMsg,
) -> Result<T, DomainError> {
    crate::ask(actor, timeout, "the conversation's actor", msg).await
}

impl ConvHandle {
    pub async fn turn(&self, turn: Turn) -> Result<TurnResult, DomainError> {
        call(&self.0, TURN_TIMEOUT, |r| ConvMsg::Turn(Box::new(turn), r)).await
    }
    pub async fn append(&self, input: MessageInput, by: &str) -> Result<Message, DomainError> {
        let by = by.to_owned();
        call(&self.0, CALL_TIMEOUT, |r| {
            ConvMsg::Append(Box::new(input), by, r)
        })
        .await
    }
    pub async fn edit(
        &self,
        id: &str,
        input: MessageInput,
        by: &str,
    ) -> Result<Message, DomainError> {
        let (id, by) = (id.to_owned(), by.to_owned());
        call(&self.0, CALL_TIMEOUT, |r| {
            ConvMsg::EditMessage(id, Box::new(input), by, r)
        })
        .await
    }
    pub async fn delete_message(&self, id: &str, by: &str) -> Result<Message, DomainError> {
        let (id, by) = (id.to_owned(), by.to_owned());
        call(&self.0, CALL_TIMEOUT, |r| ConvMsg::DeleteMessage(id, by, r)).await
    }
    pub async fn update(
        &self,
        input: ConversationInput,
        by: &str,
    ) -> Result<Conversation, DomainError> {
        let by = by.to_owned();
        call(&self.0, CALL_TIMEOUT, |r| {
            ConvMsg::Update(Box::new(input), by, r)
        })
        .await
    }
    pub async fn delete(&self, by: &str) -> Result<Conversation, DomainError> {
        let by = by.to_owned();
        call(&self.0, CALL_TIMEOUT, |r| ConvMsg::Delete(by, r)).await
    }
    pub async fn clear(&self, by: &str) -> Result<u64, DomainError> {
        let by = by.to_owned();
        call(&self.0, CALL_TIMEOUT, |r| ConvMsg::Clear(by, r)).await
    }
    pub fn crash(&self) {
        let _ = self.0.cast(ConvMsg::Crash);
    }
}
