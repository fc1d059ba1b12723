//! Executions: the kind definition for the supervisor and the service the
//! API calls. Commands reach nodes through [`Nodes`] (as the actors'
//! [`Dispatch`]); nodes' answers come back through [`route_reply`].

use std::sync::{Arc, OnceLock};

use ractor::ActorRef;
use warden_actors::DomainError;
use warden_actors::conversation::Gateway;
use warden_actors::execution::machine::{Event, ReplyPhase, StepReply};
use warden_actors::execution::{
    self, CATEGORY_CREATED, Dispatch, ExecArgs, ExecError, ExecHandle, ExecMsg, ExecStatus,
    Execution, ExecutionActor, ExecutionListener, NewExecution, STATUS_CREATED, value_scope,
};
use warden_actors::node::{CommandEvent, CommandListener, ReplyKind};
use warden_domain::Owner;
use warden_storage::{Record, Store};

use crate::kind::WeakKindRef;
use crate::{Kind, KindRef, Nodes};

pub struct ExecutionKind {
    pub(crate) store: Store,
    pub(crate) dispatch: Arc<dyn Dispatch>,
    pub(crate) on_end: Option<ExecutionListener>,
    pub(crate) gateway: Arc<dyn Gateway>,
    pub(crate) egress: Arc<warden_actors::egress::Egress>,
    pub(crate) children: Arc<dyn execution::Children>,
    pub(crate) functions: Arc<dyn execution::Functions>,
    /// Runs parked on their jobs, and their wake-ups.
    pub(crate) parked: crate::parked::ParkedRuns,
}

/// Child chains nest at most this deep (a chain that calls itself stops).
pub const MAX_CHILD_DEPTH: usize = 8;

/// Runs `chain` tasks' child chains through the executions service, which
/// exists only after this kind does: reached through the same late,
/// weak route as nodes' answers.
pub(crate) struct ChildRunner {
    pub route: ReplyRoute,
    pub store: Store,
    pub nodes: Nodes,
    pub waiters: Waiters,
}

impl execution::Children for ChildRunner {
    fn run_child(
        &self,
        child: execution::ChildRun,
    ) -> warden_actors::execution::BoxFuture<warden_actors::execution::chain::Outcome> {
        let service = self.route.get().and_then(WeakKindRef::upgrade).map(|kind| {
            Executions::new(
                kind,
                self.store.clone(),
                self.nodes.clone(),
                self.waiters.clone(),
            )
        });
        Box::pin(async move {
            let service = service.ok_or("the executions service has stopped")?;
            service.run_child(child).await
        })
    }
}

/// Who waits for executions to end (a synchronous chain run): told by
/// the executions' end listener, once the ending is durable.
#[derive(Clone, Default)]
pub(crate) struct Waiters(
    Arc<
        std::sync::Mutex<
            std::collections::HashMap<String, Vec<tokio::sync::oneshot::Sender<Execution>>>,
        >,
    >,
);

impl Waiters {
    /// The listener that wakes the waiters of an ending execution, then
    /// tells `next`.
    pub(crate) fn listener(&self, next: Option<ExecutionListener>) -> ExecutionListener {
        let waiters = self.clone();
        Arc::new(move |x: &Execution| {
            let woken = waiters.0.lock().map(|mut w| w.remove(&x.id)).ok().flatten();
            for tx in woken.into_iter().flatten() {
                let _ = tx.send(x.clone());
            }
            if let Some(next) = &next {
                next(x);
            }
        })
    }

    fn register(&self, id: &str) -> tokio::sync::oneshot::Receiver<Execution> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut w) = self.0.lock() {
            w.entry(id.to_owned()).or_default().push(tx);
        }
        rx
    }

    fn forget(&self, id: &str) {
        if let Ok(mut w) = self.0.lock() {
            w.remove(id);
        }
    }
}

impl Kind for ExecutionKind {
    type Actor = ExecutionActor;
    type Msg = ExecMsg;
    type Args = ExecArgs;
    const KIND: &'static str = "execution";
    const SUPERVISOR: &'static str = "executions";

    fn actor(&self) -> ExecutionActor {
        ExecutionActor
    }

    fn args(&self, id: &str) -> ExecArgs {
        ExecArgs {
            store: self.store.clone(),
            id: id.to_owned(),
            dispatch: self.dispatch.clone(),
            on_end: self.on_end.clone(),
            gateway: Some(self.gateway.clone()),
            egress: self.egress.clone(),
            children: Some(self.children.clone()),
            functions: Some(self.functions.clone()),
            parking: Arc::new(self.parked.clone()),
            woken: self.parked.take(id),
        }
    }

    fn exists(&self, id: &str) -> Result<bool, DomainError> {
        Ok(self
            .store
            .get::<Execution>(id)?
            .is_some_and(|x| !x.is_deleted()))
    }

    /// Executions that were running: they resume where they stood.
    fn boot_ids(&self) -> Vec<String> {
        let running = value_scope(None, ExecStatus::Running.as_str());
        self.store
            .ids_in_scope::<Execution>(STATUS_CREATED, &running)
            .unwrap_or_default()
    }

    /// An execution whose actor was given up on ends `failed` (a client
    /// may retry it); nothing stays blocked across a restart.
    fn failed(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    async fn mark_failed(&self, id: &str, reason: &str) {
        let now = warden_storage::now_millis();
        let result = self
            .store
            .update::<Execution, DomainError>(id, |x| {
                if x.status.is_terminal() {
                    return Ok(None);
                }
                x.status = ExecStatus::Failed;
                x.completed_at = Some(now);
                x.timeout_at = None;
                x.error = Some(ExecError::new(
                    "ACTOR_FAILED",
                    format!("the execution's actor failed too often: {reason}"),
                ));
                Ok(Some(()))
            })
            .await;
        match result {
            // Who waits for it to end (a synchronous run, a deployment)
            // hears of it as of any other ending.
            Ok(Some(x)) => {
                if let Some(on_end) = &self.on_end {
                    on_end(&x);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(execution = id, error = %e, "could not record the execution's failure")
            }
        }
    }

    async fn clear_failed(&self, _id: &str) {}

    fn crash(actor: &ActorRef<ExecMsg>) {
        ExecHandle(actor.clone()).crash();
    }
}

/// Where nodes' answers go once the executions kind exists (it is built
/// after the nodes, which it needs).
/// Weak: the executions hold the nodes (to send), so the nodes must not
/// hold the executions back.
pub(crate) type ReplyRoute = Arc<OnceLock<WeakKindRef<ExecutionKind>>>;

/// The listener the node actors call when a command is answered (the
/// answer is durable on the command already): a download moves its model;
/// a step's answer wakes its execution (one that misses it reads the
/// command when it next starts). Answers reach executions through one
/// queue, in the order the nodes gave them (an ack before its result),
/// by a task that keeps the actors it found.
pub(crate) fn route_reply(route: ReplyRoute, store: Store) -> CommandListener {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(String, StepReply)>();
    tokio::spawn(deliver_replies(route, rx));
    Arc::new(move |event: CommandEvent| {
        if let Some(download) = crate::models::download_of(&event) {
            let (store, cmd) = (store.clone(), event.command.clone());
            tokio::spawn(async move { crate::models::record(&store, &cmd, download).await });
        }
        let Some(origin) = event.command.origin.clone() else {
            return;
        };
        let reply = StepReply {
            command_id: event.command.id.clone(),
            reply_id: (!event.reply_id.is_empty()).then_some(event.reply_id),
            phase: match event.kind {
                ReplyKind::Ack => ReplyPhase::Ack,
                ReplyKind::Result => ReplyPhase::Result,
            },
            success: event.command.status == warden_actors::node::CommandStatus::Succeeded,
            progress: event.progress,
            result: event.command.result.clone(),
            error: event.command.error.as_deref().map(execution::error_of),
        };
        let _ = tx.send((origin.execution, reply));
    })
}

/// How many execution actors the reply router remembers.
const ROUTER_CACHE: usize = 16_384;

/// Delivers answers in order; ends when the nodes' listener is dropped.
async fn deliver_replies(
    route: ReplyRoute,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, StepReply)>,
) {
    let mut actors: std::collections::HashMap<String, ActorRef<ExecMsg>> = Default::default();
    while let Some((execution, reply)) = rx.recv().await {
        if let Some(actor) = actors.get(&execution)
            && ExecHandle(actor.clone()).reply(reply.clone())
        {
            continue;
        }
        actors.remove(&execution);
        let Some(kind) = route.get().and_then(WeakKindRef::upgrade) else {
            continue;
        };
        let mut found = None;
        let delivered = kind
            .with_actor(&execution, |a| {
                let reply = reply.clone();
                found = Some(a.clone());
                async move {
                    if ExecHandle(a).reply(reply) {
                        Ok(())
                    } else {
                        Err(DomainError::Unavailable(
                            "the execution's actor stopped".into(),
                        ))
                    }
                }
            })
            .await;
        match delivered {
            Ok(()) => {
                if actors.len() >= ROUTER_CACHE {
                    actors.clear();
                }
                actors.extend(found.map(|a| (execution, a)));
            }
            Err(e) => {
                tracing::debug!(%execution, error = %e, "a node's answer found no execution")
            }
        }
    }
}

/// Each workflow's latest run, written to the workflow's record by one
/// writer per workflow at a time: runs started while it writes are folded
/// into its next write (one commit for many instead of one optimistic
/// retry storm on one record), and each caller returns once a write that
/// holds its run, or a later one, is durable, with that write's result
/// (a workflow deleted meanwhile has no latest run to record: its run
/// stands; a store that failed answers 503).
#[derive(Clone, Default)]
struct LatestRuns(Arc<std::sync::Mutex<std::collections::HashMap<String, LatestSlot>>>);

struct LatestSlot {
    /// How many runs were recorded; the next write carries the newest.
    recorded: u64,
    next: Option<(String, String)>,
    /// The last durable write: the count it carried and the store's error,
    /// if any.
    written: tokio::sync::watch::Sender<(u64, Option<String>)>,
}

impl LatestRuns {
    async fn record(
        &self,
        store: &Store,
        workflow: &str,
        execution: &str,
        by: &str,
    ) -> Result<(), DomainError> {
        let (mine, mut written, lead) = {
            let mut slots = self
                .0
                .lock()
                .map_err(|_| DomainError::Unavailable("latest runs lock poisoned".into()))?;
            let lead = !slots.contains_key(workflow);
            let slot = slots
                .entry(workflow.to_owned())
                .or_insert_with(|| LatestSlot {
                    recorded: 0,
                    next: None,
                    written: tokio::sync::watch::Sender::new((0, None)),
                });
            slot.recorded += 1;
            slot.next = Some((execution.to_owned(), by.to_owned()));
            (slot.recorded, slot.written.subscribe(), lead)
        };
        if lead {
            // Its own task: a caller that goes away must not stop the
            // writes the others wait for.
            tokio::spawn(self.clone().write(store.clone(), workflow.to_owned()));
        }
        let outcome = written
            .wait_for(|(n, _)| *n >= mine)
            .await
            .map(|v| v.1.clone())
            .map_err(|_| DomainError::Unavailable("the latest run's writer ended".into()))?;
        outcome.map_or(Ok(()), |e| Err(DomainError::Unavailable(e)))
    }

    /// Writes the slot's newest run until no newer one is waiting, then
    /// frees the slot.
    async fn write(self, store: Store, workflow: String) {
        loop {
            let next = {
                let Ok(mut slots) = self.0.lock() else { return };
                let Some(slot) = slots.get_mut(&workflow) else {
                    return;
                };
                match slot.next.take() {
                    Some(next) => Some((slot.recorded, next, slot.written.clone())),
                    None => {
                        slots.remove(&workflow);
                        None
                    }
                }
            };
            let Some((count, (execution, by), written)) = next else {
                return;
            };
            let result = warden_domain::catalog::update::<warden_domain::workflow::Workflow>(
                &store,
                &workflow,
                &by,
                |w| {
                    w.last_execution = Some(execution.clone());
                    Ok(())
                },
            )
            .await;
            let error = match result {
                Ok(_) | Err(DomainError::NotFound { .. }) => None,
                Err(e) => Some(e.to_string()),
            };
            written.send_replace((count, error));
        }
    }
}

/// Statistics of the executions one caller may see.
#[derive(Debug, Clone, Default)]
pub struct ExecutionStats {
    pub total: u64,
    pub by_status: Vec<(String, u64)>,
    pub by_category: Vec<(String, u64)>,
}

/// Execution requests. Reads go straight to the store.
#[derive(Clone)]
pub struct Executions {
    kind: KindRef<ExecutionKind>,
    store: Store,
    nodes: Nodes,
    waiters: Waiters,
    latest: LatestRuns,
}

/// How a chain run is filed: its category and type (AIWM's), and the
/// starting dialect's own fields (JSON object text).
#[derive(Debug, Clone)]
pub struct RunLabel {
    pub category: &'static str,
    pub kind: &'static str,
    pub extra: String,
    /// The run's `executionId`, when what starts it must start it once
    /// (a schedule's fire); a second start finds the first run.
    pub key: Option<String>,
    /// The execution this run is a child of (a `chain` task's).
    pub parent: Option<String>,
}

impl RunLabel {
    /// A contenox or vareon chain run.
    pub fn chain() -> RunLabel {
        RunLabel {
            category: "workflow",
            kind: "task-chain",
            extra: String::new(),
            key: None,
            parent: None,
        }
    }

    /// A chain run a request waits on (contenox `/tasks`), filed under the
    /// request's correlation id (`/activity/requests/{id}`).
    pub fn request(correlation_id: &str) -> RunLabel {
        RunLabel {
            extra: serde_json::json!({ "request_id": correlation_id }).to_string(),
            ..RunLabel::chain()
        }
    }
}

/// What a chain run starts from: the chain as sent (or stored), its
/// input and its type, who runs it, and how it is filed.
pub struct ChainRequest<'a> {
    pub owner: Owner,
    pub by: &'a str,
    pub chain_id: &'a str,
    pub definition: &'a serde_json::Value,
    pub input_type: &'a str,
    pub input: &'a serde_json::Value,
    pub label: RunLabel,
}

/// What a DAG workflow's run starts from: the workflow, its steps (as
/// stored), the run's variables (a JSON object), who runs it, and how it
/// is filed.
pub struct DagRequest<'a> {
    pub owner: Owner,
    pub by: &'a str,
    pub workflow: &'a warden_domain::workflow::Workflow,
    pub steps: &'a serde_json::Value,
    pub vars: &'a serde_json::Value,
    pub label: RunLabel,
}

/// A chain run a caller waits on: the execution as it started, and its
/// end to come (none when it ended at once).
pub struct ChainRunning {
    pub execution: Execution,
    ended: Option<tokio::sync::oneshot::Receiver<Execution>>,
}

/// How long a synchronous chain run may take before its caller gets the
/// execution as it stands (the run goes on).
pub const CHAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

impl Executions {
    pub(crate) fn new(
        kind: KindRef<ExecutionKind>,
        store: Store,
        nodes: Nodes,
        waiters: Waiters,
    ) -> Self {
        Executions {
            kind,
            store,
            nodes,
            waiters,
            latest: LatestRuns::default(),
        }
    }

    /// A worker finished one of the run's jobs: a run parked on it looks
    /// at its jobs again now (an ended run is left alone).
    pub async fn wake(&self, id: &str) -> Result<(), DomainError> {
        let running = self
            .store
            .get::<Execution>(id)?
            .is_some_and(|x| x.status == ExecStatus::Running);
        if !running {
            return Ok(());
        }
        self.kind.kind().parked.wake(id).await
    }

    /// A live execution by `_id`, or by `executionId` within `org`.
    pub fn resolve(&self, org: &str, id: &str) -> Result<Option<Execution>, DomainError> {
        let found = match self.store.get::<Execution>(id)? {
            Some(x) => Some(x),
            None => self
                .store
                .get_by_unique::<Execution>("executionId", &format!("{org}/{id}"))?,
        };
        Ok(found.filter(|x| !x.is_deleted()))
    }

    /// Writes the first version (`pending`); its actor starts when it is
    /// started. Every node named must exist in the organisation, and so
    /// must the parent, which then lists the new execution as its child.
    pub async fn create(
        &self,
        new: NewExecution,
        owner: Owner,
        by: &str,
    ) -> Result<Execution, DomainError> {
        let x = execution::create(new, owner, by)?;
        let org = x.owner.org_id.clone();
        let mut errors = Vec::new();
        for node in &x.involved_node_ids {
            if let Err(DomainError::NotFound { .. }) = self.nodes.resolve(&org, node) {
                errors.push(format!("nodeId {node}: no such node"));
            }
        }
        let parent = match &x.parent_execution_id {
            Some(p) => match self.resolve(&org, p)? {
                Some(parent) => Some(parent.id),
                None => {
                    errors.push(format!("parentExecutionId {p}: no such execution"));
                    None
                }
            },
            None => None,
        };
        if !errors.is_empty() {
            return Err(DomainError::Invalid(errors));
        }
        let x = self.store.insert(x).await?;
        if let Some(parent) = parent {
            self.apply(&parent, Event::AddChild(x.execution_id.clone()))
                .await?;
        }
        Ok(x)
    }

    /// Runs a client's request through the execution's actor.
    pub async fn apply(&self, id: &str, event: Event) -> Result<Execution, DomainError> {
        self.kind
            .with_actor(id, |a| {
                let event = event.clone();
                async move { ExecHandle(a).apply(event).await }
            })
            .await
    }

    /// Runs a contenox chain (its definition as sent) on an input as a
    /// new execution and answers it once it ended (or after
    /// [`CHAIN_WAIT`], as it stands). The chain is checked first (every
    /// problem names its task), and so is its input's type.
    pub async fn run_chain(&self, run: ChainRequest<'_>) -> Result<Execution, DomainError> {
        let running = self.begin_chain(run).await?;
        self.end_of(running).await
    }

    /// Starts a chain run whose end a caller will wait for
    /// ([`end_of`](Self::end_of)): the run's id is known before it ends,
    /// so a caller can cancel it (a client that went away).
    pub async fn begin_chain(&self, run: ChainRequest<'_>) -> Result<ChainRunning, DomainError> {
        if let Some(key) = &run.label.key
            && let Some(x) = self.resolve(&run.owner.org_id, key)?
        {
            // Made but never started (a crash between the two): start it.
            let x = if x.status == ExecStatus::Pending {
                self.start(&x.id, false).await?
            } else {
                x
            };
            return Ok(self.running(x));
        }
        let new = new_chain_run(&run)?;
        self.begin(new, run.owner, run.by).await
    }

    /// Creates and starts an execution whose end a caller will wait for.
    pub async fn begin(
        &self,
        new: NewExecution,
        owner: Owner,
        by: &str,
    ) -> Result<ChainRunning, DomainError> {
        let x = self.create(new, owner, by).await?;
        let ended = self.waiters.register(&x.id);
        match self.start(&x.id, false).await {
            Ok(x) if !x.status.is_terminal() => Ok(ChainRunning {
                execution: x,
                ended: Some(ended),
            }),
            other => {
                self.waiters.forget(&x.id);
                other.map(|x| ChainRunning {
                    execution: x,
                    ended: None,
                })
            }
        }
    }

    /// A run that exists already (its key was used), to wait on.
    fn running(&self, x: Execution) -> ChainRunning {
        if x.status.is_terminal() {
            return ChainRunning {
                execution: x,
                ended: None,
            };
        }
        let ended = self.waiters.register(&x.id);
        // It may have ended between the read and the registration.
        match self.resolve(&x.owner.org_id, &x.id) {
            Ok(Some(now)) if now.status.is_terminal() => {
                self.waiters.forget(&x.id);
                ChainRunning {
                    execution: now,
                    ended: None,
                }
            }
            _ => ChainRunning {
                execution: x,
                ended: Some(ended),
            },
        }
    }

    /// A `chain` task's child: the stored chain run on the task's input
    /// under the task attempt's key (found again after a crash), linked to
    /// its parent, awaited; its output is the task's.
    async fn run_child(
        &self,
        child: execution::ChildRun,
    ) -> warden_actors::execution::chain::Outcome {
        let mut depth = 0;
        let mut at = Some(child.parent.clone());
        while let Some(id) = at {
            depth += 1;
            if depth > MAX_CHILD_DEPTH {
                return Err(format!(
                    "child chains nest at most {MAX_CHILD_DEPTH} deep: {} not started",
                    child.chain
                ));
            }
            at = self
                .store
                .get::<Execution>(&id)
                .ok()
                .flatten()
                .and_then(|x| x.parent_execution_id);
        }
        let w = warden_domain::workflow::by_key(&self.store, &child.owner.org_id, &child.chain)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("task chain {} not found", child.chain))?;
        let label = RunLabel {
            key: Some(child.key.clone()),
            parent: Some(child.parent.clone()),
            ..RunLabel::chain()
        };
        let input = child.input.json();
        if let Some(steps) = w.dag() {
            let running = self
                .begin_dag(DagRequest {
                    owner: child.owner.clone(),
                    by: &child.by,
                    workflow: &w,
                    steps: &steps,
                    vars: &input,
                    label,
                })
                .await
                .map_err(|e| e.to_string())?;
            let x = self.end_of(running).await.map_err(|e| e.to_string())?;
            if x.status != ExecStatus::Completed {
                return Err(x.error.as_ref().map_or_else(
                    || format!("child workflow {} ended {}", child.chain, x.status.as_str()),
                    |e| format!("child workflow {}: {}", child.chain, e.message),
                ));
            }
            let result: serde_json::Value = x
                .result
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or_default();
            return Ok((
                warden_actors::execution::chain::Data::new("json", &result),
                "ok".to_owned(),
            ));
        }
        let definition = w.runnable()?;
        let running = self
            .begin_chain(ChainRequest {
                owner: child.owner.clone(),
                by: &child.by,
                chain_id: &w.key,
                definition: &definition,
                input_type: &child.input.kind,
                input: &input,
                label,
            })
            .await
            .map_err(|e| e.to_string())?;
        let x = self.end_of(running).await.map_err(|e| e.to_string())?;
        let part = x.chain.as_ref().ok_or("the child run lost its chain")?;
        if x.status != ExecStatus::Completed {
            return Err(x.error.as_ref().map_or_else(
                || format!("child chain {} ended {}", child.chain, x.status.as_str()),
                |e| format!("child chain {}: {}", child.chain, e.message),
            ));
        }
        Ok((part.run.output.clone(), "ok".to_owned()))
    }

    /// The run once it ended (or after [`CHAIN_WAIT`], as it stands).
    pub async fn end_of(&self, running: ChainRunning) -> Result<Execution, DomainError> {
        self.end_within(running, CHAIN_WAIT).await
    }

    /// The run once it ended, or after `limit` as it stands (it goes on).
    pub async fn end_within(
        &self,
        running: ChainRunning,
        limit: std::time::Duration,
    ) -> Result<Execution, DomainError> {
        let x = running.execution;
        let Some(ended) = running.ended else {
            return Ok(x);
        };
        match tokio::time::timeout(limit, ended).await {
            Ok(Ok(done)) => Ok(done),
            _ => {
                self.waiters.forget(&x.id);
                Ok(self.resolve(&x.owner.org_id, &x.id)?.unwrap_or(x))
            }
        }
    }

    /// Starts a chain run and answers at once (vareon's and neuronest's
    /// triggers): the execution as it stands, a run of pure tasks ended.
    pub async fn start_chain(&self, run: ChainRequest<'_>) -> Result<Execution, DomainError> {
        let new = new_chain_run(&run)?;
        let x = self.create(new, run.owner, run.by).await?;
        self.start(&x.id, false).await
    }

    /// Starts a DAG workflow's run and answers at once (neuronest's
    /// execute, vareon's trigger): the execution as it stands.
    pub async fn start_dag(&self, run: DagRequest<'_>) -> Result<Execution, DomainError> {
        let new = new_dag_run(&run)?;
        let x = self.create(new, run.owner, run.by).await?;
        self.start(&x.id, false).await
    }

    /// Starts a DAG workflow's run whose end a caller waits for (a `chain`
    /// task's child); a run its key names already is the one answered.
    pub async fn begin_dag(&self, run: DagRequest<'_>) -> Result<ChainRunning, DomainError> {
        if let Some(key) = &run.label.key
            && let Some(x) = self.resolve(&run.owner.org_id, key)?
        {
            let x = if x.status == ExecStatus::Pending {
                self.start(&x.id, false).await?
            } else {
                x
            };
            return Ok(self.running(x));
        }
        let new = new_dag_run(&run)?;
        self.begin(new, run.owner, run.by).await
    }

    /// Starts a run of a stored workflow (vareon's trigger, a schedule's
    /// fire) and records it as the workflow's latest: a program that does
    /// not read is a failed run saying why. With a `key` already used,
    /// the run it names is answered and nothing starts.
    pub async fn start_workflow(
        &self,
        owner: Owner,
        by: &str,
        workflow: &warden_domain::workflow::Workflow,
        input: &serde_json::Value,
        label: RunLabel,
    ) -> Result<Execution, DomainError> {
        if let Some(key) = &label.key
            && let Some(x) = self.resolve(&owner.org_id, key)?
        {
            return Ok(x);
        }
        let started = match (workflow.dag(), workflow.runnable()) {
            (Some(steps), _) => {
                self.start_dag(DagRequest {
                    owner: owner.clone(),
                    by,
                    workflow,
                    steps: &steps,
                    vars: input,
                    label: label.clone(),
                })
                .await
            }
            (None, Ok(definition)) => {
                self.start_chain(ChainRequest {
                    owner: owner.clone(),
                    by,
                    chain_id: &workflow.key,
                    definition: &definition,
                    input_type: "any",
                    input,
                    label: label.clone(),
                })
                .await
            }
            (None, Err(reason)) => Err(DomainError::Invalid(vec![reason])),
        };
        let x = match started {
            Ok(x) => x,
            Err(DomainError::Invalid(problems)) => {
                self.failed_run(owner, by, &workflow.key, &problems.join("; "), label)
                    .await?
            }
            Err(e) => return Err(e),
        };
        self.latest
            .record(&self.store, &workflow.id, &x.id, by)
            .await?;
        Ok(x)
    }

    /// A run that could not start (a workflow whose program does not
    /// read): recorded as a failed execution saying why, so that the
    /// workflow's status shows it.
    pub async fn failed_run(
        &self,
        owner: Owner,
        by: &str,
        chain_id: &str,
        reason: &str,
        label: RunLabel,
    ) -> Result<Execution, DomainError> {
        let mut x = execution::create(chain_execution(chain_id, label), owner, by)?;
        let now = warden_storage::now_millis();
        x.status = ExecStatus::Failed;
        x.started_at = Some(now);
        x.completed_at = Some(now);
        x.error = Some(ExecError::new("PROGRAM_INVALID", reason));
        Ok(self.store.insert(x).await?)
    }
    pub async fn start(&self, id: &str, force: bool) -> Result<Execution, DomainError> {
        self.apply(id, Event::Start { force }).await
    }

    /// Deletes an execution that ended (hidden from every list; its key
    /// free again). An unfinished one is refused: cancel it first.
    pub async fn delete(&self, id: &str, by: &str) -> Result<(), DomainError> {
        self.store
            .update::<Execution, DomainError>(id, |x| {
                if x.is_deleted() {
                    return Ok(None);
                }
                if !x.status.is_terminal() {
                    return Err(DomainError::Busy(format!(
                        "execution {} is {}: cancel it first",
                        x.execution_id,
                        x.status.as_str()
                    )));
                }
                x.audit.delete(by);
                Ok(Some(()))
            })
            .await?;
        Ok(())
    }

    pub async fn cancel(&self, id: &str, reason: Option<String>) -> Result<Execution, DomainError> {
        self.apply(id, Event::Cancel { reason }).await
    }

    pub async fn retry(&self, id: &str, reset_steps: bool) -> Result<Execution, DomainError> {
        self.apply(id, Event::Retry { reset_steps }).await
    }

    /// Counts by status and category from the ordered indexes' counters:
    /// computed from the stored executions, never kept by hand.
    pub fn stats(&self, org: Option<&str>) -> Result<ExecutionStats, DomainError> {
        let prefix = format!("{}/", warden_domain::org_scope(org));
        let strip = |rows: Vec<(String, u64)>| -> Vec<(String, u64)> {
            rows.into_iter()
                .map(|(scope, n)| (scope[prefix.len()..].to_owned(), n))
                .collect()
        };
        let by_status = strip(
            self.store
                .scope_counts::<Execution>(STATUS_CREATED, &prefix)?,
        );
        let by_category = strip(
            self.store
                .scope_counts::<Execution>(CATEGORY_CREATED, &prefix)?,
        );
        let total = self
            .store
            .scope_count::<Execution>(warden_domain::CREATED, &warden_domain::org_scope(org))?;
        Ok(ExecutionStats {
            total,
            by_status,
            by_category,
        })
    }
}

/// The part every chain execution shares: named after its chain, filed
/// under the label.
fn chain_execution(chain_id: &str, label: RunLabel) -> NewExecution {
    NewExecution {
        name: Some(format!("chain {chain_id}")),
        category: Some(label.category.into()),
        kind: Some(label.kind.into()),
        resource_type: Some("taskchain".into()),
        resource_id: Some(chain_id.to_owned()),
        execution_id: label.key,
        parent_execution_id: label.parent,
        extra: label.extra,
        ..Default::default()
    }
}

/// A DAG run's first version, once its steps read (every problem names
/// its step) and its variables are an object.
fn new_dag_run(request: &DagRequest<'_>) -> Result<NewExecution, DomainError> {
    use warden_actors::execution::dag;
    let steps = dag::parse(request.steps).map_err(DomainError::Invalid)?;
    let vars = match request.vars {
        serde_json::Value::Null => serde_json::json!({}),
        v @ serde_json::Value::Object(_) => v.clone(),
        _ => {
            return Err(DomainError::Invalid(vec![
                "the run's variables must be a JSON object".into(),
            ]));
        }
    };
    let w = request.workflow;
    let label = request.label.clone();
    Ok(NewExecution {
        name: Some(format!("workflow {}", w.name)),
        category: Some(label.category.into()),
        kind: Some(label.kind.into()),
        resource_type: Some("workflow".into()),
        resource_id: Some(w.id.clone()),
        execution_id: label.key,
        parent_execution_id: label.parent,
        extra: label.extra,
        steps: dag::new_steps(&steps),
        dag: Some(warden_actors::execution::DagPart {
            workflow_id: w.id.clone(),
            definition: request.steps.to_string(),
            vars: vars.to_string(),
            calls: Vec::new(),
        }),
        ..Default::default()
    })
}

/// A chain run's first version, once the chain and its input are checked
/// (every problem names its task).
fn new_chain_run(request: &ChainRequest<'_>) -> Result<NewExecution, DomainError> {
    use warden_actors::execution::chain;
    let (chain_id, definition) = (request.chain_id, request.definition);
    let parsed = chain::parse(chain_id, definition).map_err(DomainError::Invalid)?;
    let input = chain::typed_input(request.input_type, request.input)
        .map_err(|e| DomainError::Invalid(vec![e]))?;
    let mut run = chain::ChainRun::new(&parsed, input.clone());
    run.seed = warden_storage::new_uuid().replace('-', "");
    run.started_secs = warden_storage::now_millis() / 1000;
    let new = NewExecution {
        chain: Some(warden_actors::execution::ChainPart {
            chain_id: chain_id.to_owned(),
            definition: definition.to_string(),
            input,
            run,
            call: None,
        }),
        ..chain_execution(chain_id, request.label.clone())
    };
    Ok(new)
}
