//! The generic per-kind supervisor and its handle.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use warden_actors::DomainError;
use warden_storage::{Millis, now_millis};

use crate::{ActorInfo, BoxFuture, FailureInfo, RestartPolicy, rfc3339};

/// What a supervisor needs to know about the entities of one kind.
pub trait Kind: Send + Sync + 'static {
    type Actor: Actor<Msg = Self::Msg, Arguments = Self::Args>;
    type Msg: ractor::Message;
    type Args: ractor::State;

    /// Entity kind, as in actor names (`node:{id}`).
    const KIND: &'static str;
    /// The supervisor's name in the tree (`nodes`).
    const SUPERVISOR: &'static str;

    fn actor(&self) -> Self::Actor;
    fn args(&self, id: &str) -> Self::Args;
    /// Whether a live (not deleted) entity with this id is stored.
    fn exists(&self, id: &str) -> Result<bool, DomainError>;
    /// Entities to activate when the supervisor starts.
    fn boot_ids(&self) -> Vec<String>;
    /// Entities stored as failed, with their reasons: they stay failed across restarts.
    fn failed(&self) -> Vec<(String, String)>;
    fn mark_failed(&self, id: &str, reason: &str) -> impl Future<Output = ()> + Send;
    fn clear_failed(&self, id: &str) -> impl Future<Output = ()> + Send;
    /// Fault injection: make the actor panic inside its handler.
    fn crash(actor: &ActorRef<Self::Msg>);
    /// A message every live actor of the kind gets each period (node
    /// liveness checks): one timer in the supervisor for the whole kind,
    /// not a timer task per actor.
    fn tick(&self) -> Option<Tick<Self::Msg>> {
        None
    }
    /// The kind's own configuration, shown in the actor tree.
    fn config(&self) -> Option<serde_json::Value> {
        None
    }
    /// More about one entity for the actor tree (a process's pid).
    fn detail(&self, _id: &str) -> Option<serde_json::Value> {
        None
    }
}

/// A kind's period and the message each of its actors gets then.
pub type Tick<M> = (Duration, fn() -> M);

fn is_live<M>(actor: &ActorRef<M>) -> bool {
    matches!(
        actor.get_status(),
        ractor::ActorStatus::Running
            | ractor::ActorStatus::Starting
            | ractor::ActorStatus::Upgrading
    )
}

/// How many entities boot re-activation starts at once; the supervisor
/// answers other messages between two such chunks.
const BOOT_CHUNK: usize = 256;

pub(crate) enum SupMsg<M> {
    GetOrActivate(String, RpcReplyPort<Result<ActorRef<M>, DomainError>>),
    /// Boot re-activation still to do.
    Boot(Vec<String>),
    Restart(String),
    Crash(String, RpcReplyPort<bool>),
    Reset(String, RpcReplyPort<bool>),
    Snapshot(RpcReplyPort<Vec<ActorInfo>>),
    /// The kind's period (see [`Kind::tick`]): passed on to every live actor.
    Tick,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Running,
    Restarting,
    Failed,
}

struct Child<M> {
    actor: Option<ActorRef<M>>,
    status: Status,
    started_at: Option<Millis>,
    restarts: u32,
    recent: VecDeque<Instant>,
    last_failure: Option<(String, Millis)>,
    waiting: Vec<RpcReplyPort<Result<ActorRef<M>, DomainError>>>,
}

impl<M> Child<M> {
    fn new() -> Self {
        Child {
            actor: None,
            status: Status::Running,
            started_at: None,
            restarts: 0,
            recent: VecDeque::new(),
            last_failure: None,
            waiting: Vec::new(),
        }
    }
}

pub(crate) struct KindSupervisor<K: Kind> {
    kind: Arc<K>,
    policy: RestartPolicy,
}

pub(crate) struct SupState<M> {
    children: HashMap<String, Child<M>>,
    by_actor: HashMap<ActorId, String>,
}

impl<K: Kind> KindSupervisor<K> {
    async fn spawn_child(
        &self,
        myself: &ActorRef<SupMsg<K::Msg>>,
        state: &mut SupState<K::Msg>,
        id: &str,
    ) -> Result<ActorRef<K::Msg>, DomainError> {
        let (actor, _) = K::Actor::spawn_linked(
            None,
            self.kind.actor(),
            self.kind.args(id),
            myself.get_cell(),
        )
        .await
        .map_err(|e| DomainError::Unavailable(format!("{}:{id} could not start: {e}", K::KIND)))?;
        Self::adopt(state, id, actor.clone());
        Ok(actor)
    }

    /// Records a newly started actor as the entity's current one.
    fn adopt(state: &mut SupState<K::Msg>, id: &str, actor: ActorRef<K::Msg>) {
        state.by_actor.insert(actor.get_id(), id.to_owned());
        let child = state
            .children
            .entry(id.to_owned())
            .or_insert_with(Child::new);
        child.actor = Some(actor);
        child.status = Status::Running;
        child.started_at = Some(now_millis());
    }

    /// Starts up to [`BOOT_CHUNK`] of `ids` concurrently (those not started
    /// meanwhile by a caller), then queues the rest as a new message, so
    /// the supervisor keeps answering while thousands of entities come back.
    async fn boot(
        &self,
        myself: &ActorRef<SupMsg<K::Msg>>,
        state: &mut SupState<K::Msg>,
        mut ids: Vec<String>,
    ) {
        let rest = ids.split_off(ids.len().min(BOOT_CHUNK));
        let mut starting = tokio::task::JoinSet::new();
        for id in ids {
            if state.children.contains_key(&id) {
                continue;
            }
            let (actor, args, cell) = (self.kind.actor(), self.kind.args(&id), myself.get_cell());
            starting
                .spawn(async move { (K::Actor::spawn_linked(None, actor, args, cell).await, id) });
        }
        while let Some(started) = starting.join_next().await {
            match started {
                Ok((Ok((actor, _)), id)) => Self::adopt(state, &id, actor),
                Ok((Err(e), id)) => {
                    tracing::warn!(kind = K::KIND, entity = %id, error = %e, "could not re-activate at boot")
                }
                Err(e) => tracing::warn!(kind = K::KIND, error = %e, "a boot activation panicked"),
            }
        }
        if !rest.is_empty() {
            let _ = myself.cast(SupMsg::Boot(rest));
        }
    }

    /// Starts a restarting child again and hands it to everyone waiting.
    async fn restart(
        &self,
        myself: &ActorRef<SupMsg<K::Msg>>,
        state: &mut SupState<K::Msg>,
        id: &str,
    ) {
        if !state
            .children
            .get(id)
            .is_some_and(|c| c.status == Status::Restarting)
        {
            return;
        }
        match self.kind.exists(id) {
            Ok(true) => match self.spawn_child(myself, state, id).await {
                Ok(actor) => {
                    let child = state
                        .children
                        .get_mut(id)
                        .expect("spawn_child inserts the child");
                    child.restarts += 1;
                    tracing::info!(kind = K::KIND, entity = %id, restarts = child.restarts, "restarted");
                    for waiter in child.waiting.drain(..) {
                        let _ = waiter.send(Ok(actor.clone()));
                    }
                }
                Err(e) => self.give_up(state, id, e.to_string()).await,
            },
            _ => {
                if let Some(mut child) = state.children.remove(id) {
                    for waiter in child.waiting.drain(..) {
                        let _ = waiter.send(Err(DomainError::NotFound {
                            kind: K::KIND,
                            id: id.to_owned(),
                        }));
                    }
                }
            }
        }
    }

    async fn give_up(&self, state: &mut SupState<K::Msg>, id: &str, reason: String) {
        tracing::error!(kind = K::KIND, entity = id, %reason, "restart limit reached; entity marked failed");
        self.kind.mark_failed(id, &reason).await;
        if let Some(child) = state.children.get_mut(id) {
            child.status = Status::Failed;
            child.actor = None;
            for waiter in child.waiting.drain(..) {
                let _ = waiter.send(Err(DomainError::Failed {
                    kind: K::KIND,
                    id: id.to_owned(),
                    reason: reason.clone(),
                }));
            }
        }
    }
}

impl<K: Kind> Actor for KindSupervisor<K> {
    type Msg = SupMsg<K::Msg>;
    type State = SupState<K::Msg>;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut children = HashMap::new();
        for (id, reason) in self.kind.failed() {
            let mut child = Child::new();
            child.status = Status::Failed;
            child.last_failure = Some((reason, now_millis()));
            children.insert(id, child);
        }
        Ok(SupState {
            children,
            by_actor: HashMap::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state;
        if let Some((period, _)) = self.kind.tick() {
            myself.send_interval(period, || SupMsg::Tick);
        }
        let ids = self.kind.boot_ids();
        if !ids.is_empty() {
            tracing::info!(
                kind = K::KIND,
                entities = ids.len(),
                "re-activating at boot"
            );
            myself.cast(SupMsg::Boot(ids))?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupMsg::GetOrActivate(id, reply) => match state.children.get_mut(&id) {
                Some(child) if child.status == Status::Restarting => child.waiting.push(reply),
                Some(child) if child.status == Status::Failed => {
                    let reason = child
                        .last_failure
                        .as_ref()
                        .map(|(r, _)| r.clone())
                        .unwrap_or_default();
                    let _ = reply.send(Err(DomainError::Failed {
                        kind: K::KIND,
                        id,
                        reason,
                    }));
                }
                // A live actor; one that is stopping (passivating) is replaced.
                Some(Child {
                    actor: Some(actor), ..
                }) if is_live(actor) => {
                    let _ = reply.send(Ok(actor.clone()));
                }
                _ => {
                    let answer = match self.kind.exists(&id) {
                        Ok(true) => self.spawn_child(&myself, state, &id).await,
                        Ok(false) => Err(DomainError::NotFound { kind: K::KIND, id }),
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(answer);
                }
            },
            SupMsg::Restart(id) => self.restart(&myself, state, &id).await,
            SupMsg::Tick => {
                if let Some((_, message)) = self.kind.tick() {
                    for child in state.children.values() {
                        if let Some(actor) = child.actor.as_ref().filter(|a| is_live(a)) {
                            let _ = actor.cast(message());
                        }
                    }
                }
            }
            SupMsg::Boot(ids) => self.boot(&myself, state, ids).await,
            SupMsg::Crash(id, reply) => {
                let actor = state.children.get(&id).and_then(|c| c.actor.clone());
                if let Some(actor) = &actor {
                    K::crash(actor);
                }
                let _ = reply.send(actor.is_some());
            }
            SupMsg::Reset(id, reply) => {
                let failed = state
                    .children
                    .get(&id)
                    .is_some_and(|c| c.status == Status::Failed);
                if failed {
                    self.kind.clear_failed(&id).await;
                    state.children.remove(&id);
                }
                let _ = reply.send(failed);
            }
            SupMsg::Snapshot(reply) => {
                let mut out: Vec<ActorInfo> = state
                    .children
                    .iter()
                    .map(|(id, c)| ActorInfo {
                        name: format!("{}:{id}", K::KIND),
                        kind: K::KIND.into(),
                        entity_id: Some(id.clone()),
                        status: match c.status {
                            Status::Running => "running",
                            Status::Restarting => "restarting",
                            Status::Failed => "failed",
                        }
                        .into(),
                        started_at: c.started_at.map(rfc3339),
                        restart_count: c.restarts,
                        last_failure: c.last_failure.as_ref().map(|(reason, at)| FailureInfo {
                            reason: reason.clone(),
                            at: rfc3339(*at),
                        }),
                        policy: None,
                        config: None,
                        detail: self.kind.detail(id),
                        children: Vec::new(),
                    })
                    .collect();
                out.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = reply.send(out);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(id) = state.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let Some(child) = state.children.get_mut(&id) else {
                    return Ok(());
                };
                if child
                    .actor
                    .as_ref()
                    .is_some_and(|a| a.get_id() != cell.get_id())
                {
                    return Ok(()); // an older actor of the entity; a newer one runs
                }
                let reason = err.to_string();
                tracing::warn!(kind = K::KIND, entity = %id, %reason, "actor failed");
                child.actor = None;
                child.last_failure = Some((reason.clone(), now_millis()));
                let now = Instant::now();
                while child
                    .recent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.policy.within)
                {
                    child.recent.pop_front();
                }
                if (child.recent.len() as u32) < self.policy.max_restarts {
                    child.recent.push_back(now);
                    child.status = Status::Restarting;
                    let delay: Duration = self.policy.delay(child.recent.len() as u32);
                    if delay.is_zero() {
                        // Restart in this very turn: callers that arrive
                        // meanwhile queue behind it and meet the new actor.
                        self.restart(&myself, state, &id).await;
                    } else {
                        let target = id.clone();
                        myself.send_after(delay, move || SupMsg::Restart(target));
                    }
                } else {
                    self.give_up(state, &id, reason).await;
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(id) = state.by_actor.remove(&cell.get_id()) {
                    tracing::debug!(kind = K::KIND, entity = %id, ?reason, "actor stopped");
                    // Only if no newer actor of the entity was started meanwhile.
                    let current = state
                        .children
                        .get(&id)
                        .and_then(|c| c.actor.as_ref())
                        .map(|a| a.get_id());
                    if current.is_none_or(|a| a == cell.get_id()) {
                        state.children.remove(&id);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Where the root puts the current supervisor of a kind after each (re)start.
type Slot<M> = Arc<SlotCell<M>>;
type SlotCell<M> = RwLock<Option<ActorRef<SupMsg<M>>>>;

/// Calls into one kind's supervisor; survives the supervisor's restarts.
pub struct KindRef<K: Kind> {
    pub(crate) kind: Arc<K>,
    pub(crate) policy: RestartPolicy,
    pub(crate) slot: Slot<K::Msg>,
}

impl<K: Kind> Clone for KindRef<K> {
    fn clone(&self) -> Self {
        KindRef {
            kind: self.kind.clone(),
            policy: self.policy,
            slot: self.slot.clone(),
        }
    }
}

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A [`KindRef`] that does not keep its kind alive: for kinds that call
/// each other (nodes tell executions of answers, executions send through
/// nodes), so that the two never hold each other's store forever.
pub struct WeakKindRef<K: Kind> {
    kind: std::sync::Weak<K>,
    policy: RestartPolicy,
    slot: std::sync::Weak<SlotCell<K::Msg>>,
}

impl<K: Kind> WeakKindRef<K> {
    /// The kind, while the runtime that owns it is alive.
    pub fn upgrade(&self) -> Option<KindRef<K>> {
        Some(KindRef {
            kind: self.kind.upgrade()?,
            policy: self.policy,
            slot: self.slot.upgrade()?,
        })
    }
}

impl<K: Kind> KindRef<K> {
    pub(crate) fn new(kind: K, policy: RestartPolicy) -> Self {
        KindRef {
            kind: Arc::new(kind),
            policy,
            slot: Arc::new(RwLock::new(None)),
        }
    }

    fn supervisor(&self) -> Result<ActorRef<SupMsg<K::Msg>>, DomainError> {
        self.slot
            .read()
            .expect("the supervisor slot is never poisoned")
            .clone()
            .ok_or_else(|| {
                DomainError::Unavailable(format!("the {} supervisor is not running", K::SUPERVISOR))
            })
    }

    async fn ask<T: Send + 'static>(
        &self,
        msg: impl FnOnce(RpcReplyPort<T>) -> SupMsg<K::Msg>,
    ) -> Result<T, DomainError> {
        match self.supervisor()?.call(msg, Some(CALL_TIMEOUT)).await {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            Ok(ractor::rpc::CallResult::Timeout) => Err(DomainError::TimedOut(format!(
                "the {} supervisor did not answer in time",
                K::SUPERVISOR
            ))),
            _ => Err(DomainError::Unavailable(format!(
                "the {} supervisor did not answer",
                K::SUPERVISOR
            ))),
        }
    }

    pub fn downgrade(&self) -> WeakKindRef<K> {
        WeakKindRef {
            kind: Arc::downgrade(&self.kind),
            policy: self.policy,
            slot: Arc::downgrade(&self.slot),
        }
    }

    /// The running actor of an entity, started from storage if needed.
    pub async fn get_or_activate(&self, id: &str) -> Result<ActorRef<K::Msg>, DomainError> {
        let id = id.to_owned();
        self.ask(|reply| SupMsg::GetOrActivate(id, reply)).await?
    }

    /// Runs `f` against the entity's actor, retrying when the actor went
    /// away mid-call (it is then restarted or re-activated first).
    pub async fn with_actor<T, F, Fut>(&self, id: &str, mut f: F) -> Result<T, DomainError>
    where
        F: FnMut(ActorRef<K::Msg>) -> Fut,
        Fut: Future<Output = Result<T, DomainError>>,
    {
        let mut attempt = 0;
        loop {
            let actor = self.get_or_activate(id).await?;
            match f(actor).await {
                Err(DomainError::Unavailable(_)) if attempt < 3 => attempt += 1,
                other => return other,
            }
        }
    }

    pub(crate) async fn crash(&self, id: &str) -> Result<bool, DomainError> {
        let id = id.to_owned();
        self.ask(|reply| SupMsg::Crash(id, reply)).await
    }

    pub(crate) async fn reset(&self, id: &str) -> Result<bool, DomainError> {
        let id = id.to_owned();
        self.ask(|reply| SupMsg::Reset(id, reply)).await
    }

    pub(crate) async fn children(&self) -> Result<Vec<ActorInfo>, DomainError> {
        self.ask(SupMsg::Snapshot).await
    }

    pub fn kind(&self) -> &K {
        &self.kind
    }
}

/// The root's view of a kind supervisor, independent of its message type.
pub(crate) trait KindControl: Send + Sync {
    fn name(&self) -> &'static str;
    fn entity_kind(&self) -> &'static str;
    fn policy(&self) -> RestartPolicy;
    fn config(&self) -> Option<serde_json::Value>;
    fn spawn(&self, root: ActorCell) -> BoxFuture<'_, Result<ActorCell, ractor::SpawnErr>>;
    fn cell(&self) -> Option<ActorCell>;
    fn clear(&self);
    fn children(&self) -> BoxFuture<'_, Result<Vec<ActorInfo>, DomainError>>;
    fn crash(&self, id: String) -> BoxFuture<'_, Result<bool, DomainError>>;
    fn reset(&self, id: String) -> BoxFuture<'_, Result<bool, DomainError>>;
}

impl<K: Kind> KindControl for KindRef<K> {
    fn name(&self) -> &'static str {
        K::SUPERVISOR
    }
    fn entity_kind(&self) -> &'static str {
        K::KIND
    }
    fn policy(&self) -> RestartPolicy {
        self.policy
    }
    fn config(&self) -> Option<serde_json::Value> {
        self.kind.config()
    }
    fn spawn(&self, root: ActorCell) -> BoxFuture<'_, Result<ActorCell, ractor::SpawnErr>> {
        Box::pin(async move {
            let sup = KindSupervisor {
                kind: self.kind.clone(),
                policy: self.policy,
            };
            let (actor, _) = Actor::spawn_linked(None, sup, (), root).await?;
            let cell = actor.get_cell();
            *self
                .slot
                .write()
                .expect("the supervisor slot is never poisoned") = Some(actor);
            Ok(cell)
        })
    }
    fn cell(&self) -> Option<ActorCell> {
        self.slot
            .read()
            .expect("the supervisor slot is never poisoned")
            .as_ref()
            .map(|a| a.get_cell())
    }
    fn clear(&self) {
        *self
            .slot
            .write()
            .expect("the supervisor slot is never poisoned") = None;
    }
    fn children(&self) -> BoxFuture<'_, Result<Vec<ActorInfo>, DomainError>> {
        Box::pin(KindRef::children(self))
    }
    fn crash(&self, id: String) -> BoxFuture<'_, Result<bool, DomainError>> {
        Box::pin(async move { KindRef::crash(self, &id).await })
    }
    fn reset(&self, id: String) -> BoxFuture<'_, Result<bool, DomainError>> {
        Box::pin(async move { KindRef::reset(self, &id).await })
    }
}
