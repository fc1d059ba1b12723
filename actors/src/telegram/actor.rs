//! `TelegramActor`: the one writer of a frontend's record, and the owner
//! of its bot's polling task. The task asks Telegram for updates after
//! the stored offset, answers each text message through [`Chatter`],
//! sends the answer, and has the actor store the new offset (durable
//! before the next poll confirms the batch to Telegram). After a crash
//! or a server restart the bot resumes from the stored offset: an update
//! whose answer was sent but whose offset was not yet stored is answered
//! again (at least once, never lost).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use warden_storage::{Store, Write, now_millis};

use super::bot;
use super::record::{FrontendInput, TelegramFrontend};
use crate::DomainError;
use crate::execution::BoxFuture;

/// How a bot's chats are answered: the conversation core.
pub trait Chatter: Send + Sync + 'static {
    /// The answer to `text`, said by `from` in the bot's chat `chat_id`.
    fn answer(
        &self,
        frontend: TelegramFrontend,
        chat_id: i64,
        from: String,
        text: String,
    ) -> BoxFuture<Result<String, DomainError>>;
}

type Reply<T> = RpcReplyPort<Result<T, DomainError>>;

pub enum TgMsg {
    Update(Box<FrontendInput>, String, Reply<TelegramFrontend>),
    Delete(Reply<()>),
    /// The polling task's progress: the offset after a batch, how many
    /// updates it answered, and what went wrong (`None`: nothing).
    Polled {
        next_offset: Option<i64>,
        handled: u64,
        error: Option<String>,
        reply: RpcReplyPort<()>,
    },
    Crash,
}

pub struct TgArgs {
    pub store: Store,
    pub id: String,
    pub chatter: Arc<dyn Chatter>,
    pub client: reqwest::Client,
    /// The Bot API's base URL (`https://api.telegram.org`).
    pub api_base: String,
}

pub struct TgState {
    store: Store,
    f: TelegramFrontend,
    version: u64,
    chatter: Arc<dyn Chatter>,
    client: reqwest::Client,
    api_base: String,
    poller: Option<Poller>,
    last_written: Instant,
}

/// The polling task, aborted when dropped: with the actor's state, even
/// when the actor fails, so that two polls never run for one bot.
struct Poller(tokio::task::JoinHandle<()>);

impl Drop for Poller {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Default)]
pub struct TelegramActor;

/// A heartbeat alone is stored at most this often.
const HEARTBEAT_WRITE: Duration = Duration::from_secs(10);

impl TgState {
    async fn persist(&mut self, next: TelegramFrontend) -> Result<(), DomainError> {
        let v = self
            .store
            .commit(vec![Write::put(&next, Some(self.version))?])
            .await?;
        self.version = v[0];
        self.f = next;
        self.last_written = Instant::now();
        Ok(())
    }

    fn stop_polling(&mut self) {
        self.poller = None;
    }

    /// (Re)starts the polling task when the frontend is active.
    fn start_polling(&mut self, me: &ActorRef<TgMsg>) {
        self.stop_polling();
        if self.f.status != "active" {
            return;
        }
        let poll = Poll {
            me: me.clone(),
            f: self.f.clone(),
            chatter: self.chatter.clone(),
            client: self.client.clone(),
            base: self.api_base.clone(),
        };
        self.poller = Some(Poller(tokio::spawn(poll.run())));
    }
}

struct Poll {
    me: ActorRef<TgMsg>,
    f: TelegramFrontend,
    chatter: Arc<dyn Chatter>,
    client: reqwest::Client,
    base: String,
}

impl Poll {
    async fn report(&self, next_offset: Option<i64>, handled: u64, error: Option<String>) -> bool {
        let sent = self
            .me
            .call(
                |reply| TgMsg::Polled {
                    next_offset,
                    handled,
                    error,
                    reply,
                },
                Some(Duration::from_secs(30)),
            )
            .await;
        matches!(sent, Ok(ractor::rpc::CallResult::Success(())))
    }

    async fn run(self) {
        let token = self.f.bot_token.clone();
        let mut offset = self.f.last_offset;
        let mut failures = 0u32;
        // A poll waits at least a second, so an idle bot never spins.
        let timeout = self.f.sync_interval.max(1);
        loop {
            match bot::get_updates(&self.client, &self.base, &token, offset, timeout).await {
                Err(e) => {
                    failures += 1;
                    tracing::warn!(frontend = %self.f.id, error = %e, "Telegram poll failed");
                    if !self.report(None, 0, Some(e)).await {
                        return;
                    }
                    let backoff = 2u64.saturating_pow(failures.min(6)).min(60);
                    tokio::time::sleep(Duration::from_secs(backoff)).await;
                }
                Ok(updates) => {
                    failures = 0;
                    let mut error = None;
                    let mut handled = 0;
                    for m in &updates.messages {
                        let answer = self
                            .chatter
                            .answer(self.f.clone(), m.chat_id, m.from.clone(), m.text.clone())
                            .await
                            .unwrap_or_else(|e| format!("Sorry, I could not answer: {e}"));
                        match bot::send_message(
                            &self.client,
                            &self.base,
                            &token,
                            m.chat_id,
                            &answer,
                        )
                        .await
                        {
                            Ok(()) => handled += 1,
                            Err(e) => error = Some(e),
                        }
                    }
                    if let Some(next) = updates.next_offset {
                        offset = next;
                    }
                    if !self.report(updates.next_offset, handled, error).await {
                        return;
                    }
                }
            }
        }
    }
}

impl Actor for TelegramActor {
    type Msg = TgMsg;
    type State = TgState;
    type Arguments = TgArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<TgMsg>,
        args: TgArgs,
    ) -> Result<TgState, ActorProcessingErr> {
        let (f, version) = args
            .store
            .get_versioned::<TelegramFrontend>(&args.id)?
            .ok_or_else(|| format!("telegram frontend {} does not exist", args.id))?;
        Ok(TgState {
            store: args.store,
            f,
            version,
            chatter: args.chatter,
            client: args.client,
            api_base: args.api_base,
            poller: None,
            last_written: Instant::now(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<TgMsg>,
        state: &mut TgState,
    ) -> Result<(), ActorProcessingErr> {
        state.start_polling(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TgMsg>,
        state: &mut TgState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_polling();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<TgMsg>,
        msg: TgMsg,
        state: &mut TgState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TgMsg::Update(input, by, reply) => {
                let mut next = state.f.clone();
                let changed = match next.apply(*input, false) {
                    Ok(()) => {
                        next.audit.touch(&by);
                        state.persist(next).await
                    }
                    Err(e) => Err(e),
                };
                if changed.is_ok() {
                    state.start_polling(&myself);
                }
                let _ = reply.send(changed.map(|()| state.f.clone()));
            }
            TgMsg::Delete(reply) => {
                state.stop_polling();
                let removed = state
                    .store
                    .commit(vec![Write::remove::<TelegramFrontend>(&state.f.id)])
                    .await
                    .map(|_| ())
                    .map_err(DomainError::from);
                let done = removed.is_ok();
                let _ = reply.send(removed);
                if done {
                    myself.stop(Some("deleted".into()));
                }
            }
            TgMsg::Polled {
                next_offset,
                handled,
                error,
                reply,
            } => {
                let mut next = state.f.clone();
                if let Some(o) = next_offset {
                    next.last_offset = o;
                }
                next.handled += handled;
                let error = error.unwrap_or_default();
                let due = state.last_written.elapsed() >= HEARTBEAT_WRITE;
                let changed = next_offset.is_some_and(|o| o != state.f.last_offset)
                    || error != state.f.last_error
                    || handled > 0;
                next.last_error = error;
                next.last_heartbeat = Some(now_millis());
                if changed || due || state.f.last_heartbeat.is_none() {
                    if let Err(e) = state.persist(next).await {
                        // The poll stops; the supervisor restarts the actor.
                        return Err(format!("could not store the bot's progress: {e}").into());
                    }
                } else {
                    state.f = next;
                }
                let _ = reply.send(());
            }
            TgMsg::Crash => panic!(
                "fault injection: telegram frontend {} was told to crash",
                state.f.id
            ),
        }
        Ok(())
    }
}

/// The public API of a running frontend actor.
#[derive(Clone)]
pub struct TgHandle(pub ActorRef<TgMsg>);

async fn call<T: Send + 'static>(
    actor: &ActorRef<TgMsg>,
    msg: impl FnOnce(Reply<T>) -> TgMsg,
) -> Result<T, DomainError> {
    crate::ask(actor, Duration::from_secs(30), "the frontend's actor", msg).await
}

impl TgHandle {
    pub async fn update(
        &self,
        input: FrontendInput,
        by: &str,
    ) -> Result<TelegramFrontend, DomainError> {
        let by = by.to_owned();
        call(&self.0, |r| TgMsg::Update(Box::new(input), by, r)).await
    }
    pub async fn delete(&self) -> Result<(), DomainError> {
        call(&self.0, TgMsg::Delete).await
    }
    pub fn crash(&self) {
        let _ = self.0.cast(TgMsg::Crash);
    }
}
