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
use super::pull::{self, Pull, PullBoard, PullEvents, PullPlanner, same_model};
use super::record::{Backend, ProviderConfig};
use crate::DomainError;

pub enum BackendMsg {
    /// The kind's period: probe again.
    Tick,
    /// The configuration changed (or the backend was deleted).
    Refresh,
    /// A probe's outcome.
    Probed(Box<(Result<Vec<LiveModel>, String>, std::time::Duration)>),
    /// A line of a running pull's progress.
    PullLine(Box<(String, serde_json::Value)>),
    /// A pull ended.
    PullDone(Box<(String, Result<(), String>)>),
    /// Cancels the pulls of a model (every pull when `None`); answers how
    /// many were queued or running.
    CancelPulls(Option<String>, RpcReplyPort<usize>),
    /// Fault injection: panic inside the handler.
    Crash,
}

/// Every backend's live state as its actor last published it: read by
/// routing on each request without a message to each actor (only the
/// actor writes its entry).
pub type LiveBoard = Arc<RwLock<HashMap<String, LiveState>>>;

/// What a backend actor shares with the rest of the gateway.
#[derive(Clone)]
pub struct Shared {
    pub board: LiveBoard,
    pub pulls: PullBoard,
    pub pull_events: PullEvents,
    pub planner: Arc<dyn PullPlanner>,
}

pub struct BackendArgs {
    pub store: Store,
    pub id: String,
    pub client: reqwest::Client,
    pub shared: Shared,
}

pub struct BackendState {
    store: Store,
    id: String,
    client: reqwest::Client,
    shared: Shared,
    live: LiveState,
    probing: bool,
    /// A change arrived during a probe: probe again after it.
    again: bool,
    /// Pulls waiting, and the one running (with what stops it).
    queue: Vec<Pull>,
    running: Option<(Pull, tokio::task::AbortHandle)>,
    /// Models cancelled here (not pulled again until they leave the
    /// backend's groups) or failed (tried again after `RETRY_PULL`).
    held: HashMap<String, Option<std::time::Instant>>,
}

#[derive(Default)]
pub struct BackendActor;

/// How long a failed pull waits before it is tried again.
pub const RETRY_PULL: std::time::Duration = std::time::Duration::from_secs(300);

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

impl BackendState {
    /// Queues the models the backend's groups want and it does not serve
    /// (Ollama backends only: others cannot pull).
    fn plan_pulls(&mut self, myself: &ActorRef<BackendMsg>) -> Result<(), ActorProcessingErr> {
        let Some(backend) = self.store.get::<Backend>(&self.id)? else {
            return Ok(());
        };
        if backend.kind != "ollama" {
            return Ok(());
        }
        let wanted = self.shared.planner.wanted(&backend);
        let now_i = std::time::Instant::now();
        self.held.retain(|m, until| {
            wanted.iter().any(|w| same_model(w, m)) && until.is_none_or(|u| u > now_i)
        });
        let now = warden_storage::now_millis();
        for model in wanted {
            let served = self
                .live
                .models
                .iter()
                .any(|m| same_model(&m.model, &model));
            let known = self.held.contains_key(&model)
                || self.queue.iter().any(|p| same_model(&p.model, &model))
                || self
                    .running
                    .as_ref()
                    .is_some_and(|(p, _)| same_model(&p.model, &model));
            if !served && !known {
                let p = Pull {
                    org_id: backend.owner.org_id.clone(),
                    backend_id: backend.id.clone(),
                    base_url: backend.base_url.clone(),
                    model,
                    status: "queued".into(),
                    digest: String::new(),
                    total: 0,
                    completed: 0,
                    queued_at: now,
                };
                let _ = self.shared.pull_events.send(p.clone());
                self.queue.push(p);
            }
        }
        self.publish_pulls();
        self.next_pull(myself)
    }

    /// Starts the next queued pull unless one is running.
    fn next_pull(&mut self, myself: &ActorRef<BackendMsg>) -> Result<(), ActorProcessingErr> {
        if self.running.is_some() || self.queue.is_empty() {
            self.publish_pulls();
            return Ok(());
        }
        let Some(backend) = self.store.get::<Backend>(&self.id)? else {
            return Ok(());
        };
        let target = target_of(&self.store, &backend)?;
        let p = self.queue.remove(0);
        let (client, me, model) = (self.client.clone(), myself.clone(), p.model.clone());
        let task = tokio::spawn(async move {
            let progress_to = me.clone();
            let m = model.clone();
            let result = pull::pull(&client, &target, &model, |line| {
                let _ = progress_to.cast(BackendMsg::PullLine(Box::new((m.clone(), line.clone()))));
            })
            .await;
            let _ = me.cast(BackendMsg::PullDone(Box::new((model, result))));
        });
        self.running = Some((p, task.abort_handle()));
        self.publish_pulls();
        Ok(())
    }

    /// Publishes the queue (the running pull first) for `/queue`.
    fn publish_pulls(&self) {
        let mut all: Vec<Pull> = self.running.iter().map(|(p, _)| p.clone()).collect();
        all.extend(self.queue.iter().cloned());
        let mut board = self
            .shared
            .pulls
            .write()
            .expect("the pull board is never poisoned");
        if all.is_empty() {
            board.remove(&self.id);
        } else {
            board.insert(self.id.clone(), all);
        }
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
            shared: args.shared,
            live: LiveState::default(),
            probing: false,
            again: false,
            queue: Vec::new(),
            running: None,
            held: HashMap::new(),
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
            .shared
            .board
            .write()
            .expect("the live board is never poisoned")
            .remove(&state.id);
        if let Some((_, stop)) = state.running.take() {
            stop.abort();
        }
        state
            .shared
            .pulls
            .write()
            .expect("the pull board is never poisoned")
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
                    .shared
                    .board
                    .write()
                    .expect("the live board is never poisoned")
                    .insert(state.id.clone(), state.live.clone());
                if state.live.healthy {
                    state.plan_pulls(&myself)?;
                }
                if std::mem::take(&mut state.again) {
                    state.probe(&myself)?;
                }
            }
            BackendMsg::PullLine(line) => {
                let (model, v) = *line;
                if let Some((p, _)) = state.running.as_mut().filter(|(p, _)| p.model == model) {
                    if let Some(s) = v["status"].as_str() {
                        p.status = s.to_owned();
                    }
                    if let Some(d) = v["digest"].as_str() {
                        p.digest = d.to_owned();
                    }
                    if let Some(t) = v["total"].as_u64() {
                        p.total = t;
                    }
                    if let Some(c) = v["completed"].as_u64() {
                        p.completed = c;
                    }
                    let p = p.clone();
                    state.publish_pulls();
                    let _ = state.shared.pull_events.send(p);
                }
            }
            BackendMsg::PullDone(done) => {
                let (model, result) = *done;
                if let Some((mut p, _)) = state.running.take_if(|(p, _)| p.model == model) {
                    match result {
                        Ok(()) => p.status = "success".into(),
                        Err(e) => {
                            tracing::warn!(backend = %state.id, model = %model, error = %e, "a model pull failed");
                            p.status = format!("error: {e}");
                            state
                                .held
                                .insert(model, Some(std::time::Instant::now() + RETRY_PULL));
                        }
                    }
                    let _ = state.shared.pull_events.send(p);
                    // What the backend now serves, then the next pull.
                    state.probe(&myself)?;
                }
                state.next_pull(&myself)?;
            }
            BackendMsg::CancelPulls(model, reply) => {
                let hits = |p: &Pull| model.as_deref().is_none_or(|m| same_model(&p.model, m));
                let mut cancelled: Vec<Pull> = Vec::new();
                state.queue.retain(|p| {
                    if hits(p) {
                        cancelled.push(p.clone());
                        false
                    } else {
                        true
                    }
                });
                if let Some((p, stop)) = state.running.take_if(|(p, _)| hits(p)) {
                    stop.abort();
                    cancelled.push(p);
                }
                for mut p in cancelled.iter().cloned() {
                    state.held.insert(p.model.clone(), None);
                    p.status = "cancelled".into();
                    let _ = state.shared.pull_events.send(p);
                }
                state.publish_pulls();
                state.next_pull(&myself)?;
                let _ = reply.send(cancelled.len());
            }
            BackendMsg::Crash => {
                if let Some((_, stop)) = state.running.take() {
                    stop.abort();
                }
                panic!("fault injection: backend actor {} crashed", state.id)
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct BackendHandle(pub ActorRef<BackendMsg>);

impl BackendHandle {
    pub fn refresh(&self) {
        let _ = self.0.cast(BackendMsg::Refresh);
    }

    pub fn crash(&self) {
        let _ = self.0.cast(BackendMsg::Crash);
    }

    /// Cancels the backend's pulls of `model` (all when `None`).
    pub async fn cancel_pulls(&self, model: Option<String>) -> Result<usize, DomainError> {
        match self
            .0
            .call(
                |r| BackendMsg::CancelPulls(model, r),
                Some(std::time::Duration::from_secs(5)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(n)) => Ok(n),
            _ => Err(DomainError::Unavailable(
                "the backend's actor did not answer".into(),
            )),
        }
    }
}
