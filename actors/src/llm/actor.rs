//! `BackendActor`: one per LLM backend. It keeps the backend's live
//! state (what it serves, whether it answers, how fast, the last error):
//! it probes on each tick of its kind and at once after a change to its
//! configuration. The probe runs in a task and comes back as a message,
//! so the actor answers state queries while a slow backend is asked.
//! The configuration itself is a plain record; the actor re-reads it
//! before each probe and stops when the backend is gone.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use warden_storage::{Store, now_millis};

use super::probe::{self, LiveModel, LiveState, Target};
use super::record::{Backend, ProviderConfig};
use crate::DomainError;

pub enum BackendMsg {
    /// The kind's period: probe again.
    Tick,
    /// The configuration changed (or the backend was deleted).
    Refresh,
    /// A probe's outcome.
    Probed(Box<(Result<Vec<LiveModel>, String>, std::time::Duration)>),
    /// The live state, for `/state` and the backend views.
    State(RpcReplyPort<LiveState>),
    /// Fault injection: panic inside the handler.
    Crash,
}

/// Every backend's live state as its actor last published it: read by
/// routing on each request without a message to each actor (only the
/// actor writes its entry).
pub type LiveBoard = Arc<RwLock<HashMap<String, LiveState>>>;

pub struct BackendArgs {
    pub store: Store,
    pub id: String,
    pub client: reqwest::Client,
    pub board: LiveBoard,
}

pub struct BackendState {
    store: Store,
    id: String,
    client: reqwest::Client,
    board: LiveBoard,
    live: LiveState,
    probing: bool,
    /// A change arrived during a probe: probe again after it.
    again: bool,
}

#[derive(Default)]
pub struct BackendActor;

/// The key a backend uses: its own, else its organisation's provider
/// configuration for its type (`openai`, `gemini` only: an OpenAI key is
/// never sent to a vLLM or Ollama server someone else runs).
pub fn key_for(store: &Store, b: &Backend) -> Result<Option<String>, DomainError> {
    if let Some(k) = &b.api_key {
        return Ok(Some(k.clone()));
    }
    if !super::record::PROVIDER_TYPES.contains(&b.kind.as_str()) {
        return Ok(None);
    }
    Ok(store
        .get::<ProviderConfig>(&ProviderConfig::key(&b.owner.org_id, &b.kind))?
        .map(|c| c.api_key))
}

/// Where to reach a backend, with its key.
pub fn target_of(store: &Store, b: &Backend) -> Result<Target, DomainError> {
    Ok(Target {
        kind: b.kind.clone(),
        base_url: b.base_url.clone(),
        api_key: key_for(store, b)?,
    })
}

impl BackendState {
    /// Starts a probe unless one is running; stops the actor when its
    /// backend is gone.
    fn probe(&mut self, myself: &ActorRef<BackendMsg>) -> Result<(), ActorProcessingErr> {
        if self.probing {
            self.again = true;
            return Ok(());
        }
        let Some(backend) = self
            .store
            .get::<Backend>(&self.id)?
            .filter(|b| !warden_storage::Record::is_deleted(b))
        else {
            myself.stop(Some("the backend was deleted".into()));
            return Ok(());
        };
        let target = target_of(&self.store, &backend)?;
        let client = self.client.clone();
        let me = myself.clone();
        self.probing = true;
        tokio::spawn(async move {
            let outcome = probe::probe(&client, &target).await;
            let _ = me.cast(BackendMsg::Probed(Box::new(outcome)));
        });
        Ok(())
    }
}

impl Actor for BackendActor {
    type Msg = BackendMsg;
    type State = BackendState;
    type Arguments = BackendArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<BackendMsg>,
        args: BackendArgs,
    ) -> Result<BackendState, ActorProcessingErr> {
        Ok(BackendState {
            store: args.store,
            id: args.id,
            client: args.client,
            board: args.board,
            live: LiveState::default(),
            probing: false,
            again: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<BackendMsg>,
        state: &mut BackendState,
    ) -> Result<(), ActorProcessingErr> {
        state.probe(&myself)
    }

    /// A deleted backend leaves the board (a crash does not: its
    /// restarted actor probes again at once).
    async fn post_stop(
        &self,
        _myself: ActorRef<BackendMsg>,
        state: &mut BackendState,
    ) -> Result<(), ActorProcessingErr> {
        state
            .board
            .write()
            .expect("the live board is never poisoned")
            .remove(&state.id);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<BackendMsg>,
        msg: BackendMsg,
        state: &mut BackendState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BackendMsg::Tick | BackendMsg::Refresh => state.probe(&myself)?,
            BackendMsg::Probed(outcome) => {
                let (result, took) = *outcome;
                state.probing = false;
                state.live.latency_ms = Some(took.as_millis() as u64);
                state.live.checked_at = Some(now_millis());
                match result {
                    Ok(models) => {
                        state.live.models = models;
                        state.live.error = None;
                        state.live.healthy = true;
                    }
                    Err(e) => {
                        if state.live.error.as_deref() != Some(e.as_str()) {
                            tracing::warn!(backend = %state.id, error = %e, "an LLM backend does not answer");
                        }
                        state.live.error = Some(e);
                        state.live.healthy = false;
                    }
                }
                state
                    .board
                    .write()
                    .expect("the live board is never poisoned")
                    .insert(state.id.clone(), state.live.clone());
                if std::mem::take(&mut state.again) {
                    state.probe(&myself)?;
                }
            }
            BackendMsg::State(reply) => {
                let _ = reply.send(state.live.clone());
            }
            BackendMsg::Crash => panic!("fault injection: backend actor {} crashed", state.id),
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct BackendHandle(pub ActorRef<BackendMsg>);

impl BackendHandle {
    pub async fn state(&self) -> Result<LiveState, DomainError> {
        match self
            .0
            .call(BackendMsg::State, Some(std::time::Duration::from_secs(5)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(s)) => Ok(s),
            _ => Err(DomainError::Unavailable(
                "the backend's actor did not answer".into(),
            )),
        }
    }

    pub fn refresh(&self) {
        let _ = self.0.cast(BackendMsg::Refresh);
    }

    pub fn crash(&self) {
        let _ = self.0.cast(BackendMsg::Crash);
    }
}
