//! Event triggers run JavaScript functions (WORKFLOWS.md §3): the
//! dispatcher tails the event log and the script engine runs what it finds.
//!
//! Invariants (beyond the original, which ran functions inline in
//! `POST /events` and lost them in a crash):
//! - Durable dispatch: an event's invocations are written in the event's
//!   own commit (`EventLog::append`) and run once it is durable. So a
//!   crash right after an event's `201` still runs each matching
//!   function, and exactly one invocation per (trigger, event) exists.
//!   Stores of older builds, which wrote invocations behind a cursor,
//!   are caught up once at boot.
//! - An invocation unfinished at boot runs again under the same key; the
//!   events it emits have deterministic ids (`func-gen-<trigger>-<nid>-
//!   <seq>`) and a second append of an id is a no-op, so a re-run emits
//!   nothing twice.
//! - A cascade (a function's event triggering a function) stops at depth
//!   [`MAX_DEPTH`], counted in the events' `causation_depth` metadata.
//! - A failed invocation is a record, never a server fault; scripts run
//!   on the engine's own threads under its deadline, heap and stack caps.
//! - No caches: a committed function or trigger is seen by the next event.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use warden_domain::event::{Append, Event, EventLog};
use warden_domain::function::{Function, Invocation, InvocationStatus, Trigger, UNFINISHED};
use warden_domain::{DomainError, Owner};
use warden_jsrt::{Host, Limits, Pool};
use warden_storage::{Store, Write, now_millis};

use crate::{Executions, RunLabel};

/// How many events deep a cascade of functions may go.
pub const MAX_DEPTH: u32 = 8;
/// How long one built-in call (an LLM task, a chain run) may take.
const BUILTIN_WAIT: Duration = Duration::from_secs(30);
/// Where older builds' dispatcher kept its cursor.
const CURSOR: &str = "automation/dispatch_cursor";
/// Set once the events older builds left undispatched were dispatched:
/// from then on every event's invocations are stored with it.
const INLINE: &str = "automation/invocations_inline";
/// What a built-in answers once the server is stopping.
const STOPPING: &str = "the server is stopping";
/// Events read per step of the tail.
const BATCH: usize = 256;

/// The automation side of the runtime: the dispatcher and the engine.
#[derive(Clone)]
pub struct Automation {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    log: EventLog,
    executions: Executions,
    pool: Pool,
    /// Invocations running at once (queued on the engine's threads).
    running: Semaphore,
    /// The dispatcher and the invocations in flight: stopped with the
    /// runtime (what they leave pending runs again at the next boot).
    tasks: Mutex<tokio::task::JoinSet<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Automation {
    /// Starts the engine's threads and the dispatcher.
    pub fn start(
        store: Store,
        log: EventLog,
        executions: Executions,
        workers: usize,
        limits: Limits,
    ) -> Result<Automation, DomainError> {
        let pool = Pool::new(workers, limits)
            .map_err(|e| DomainError::Unavailable(format!("the script engine: {e}")))?;
        let running = Semaphore::new(pool.workers() * 4);
        let a = Automation {
            inner: Arc::new(Inner {
                store,
                log,
                executions,
                pool,
                running,
                tasks: Mutex::new(tokio::task::JoinSet::new()),
                stop: tokio::sync::watch::channel(false).0,
            }),
        };
        let committed = a.inner.log.take_invocations().ok_or_else(|| {
            DomainError::Unavailable("the event log's invocations are taken already".into())
        })?;
        let inner = a.inner.clone();
        a.inner
            .spawn(async move { inner.dispatch(committed).await });
        Ok(a)
    }

    /// An organisation's invocations, newest first.
    pub fn invocations(&self, org: &str, limit: usize) -> Result<Vec<Invocation>, DomainError> {
        let page = self
            .inner
            .store
            .page::<Invocation>(&warden_storage::PageQuery {
                index: warden_domain::function::BY_ORG,
                scope: org,
                descending: true,
                skip: 0,
                after: None,
                limit,
            })?;
        Ok(page.items.into_iter().map(|(_, i)| i).collect())
    }

    /// Stops the dispatcher and the invocations in flight (they run
    /// again at the next boot) and lets the engine's threads end, so that
    /// nothing holds the store after the runtime stopped.
    pub async fn stop(&self) {
        let _ = self.inner.stop.send(true);
        let mut tasks = std::mem::take(&mut *self.inner.tasks.lock().expect("never poisoned"));
        tasks.shutdown().await;
        self.inner.pool.close();
    }
}

impl Inner {
    fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        if *self.stop.borrow() {
            return;
        }
        let mut tasks = self.tasks.lock().expect("never poisoned");
        while tasks.try_join_next().is_some() {}
        tasks.spawn(work);
    }

    fn cursor(&self) -> Result<Option<u64>, DomainError> {
        Ok(self
            .store
            .meta(CURSOR)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    /// Runs the invocations a restart interrupted, dispatches what an
    /// older build left undispatched, then runs each committed event's
    /// invocations as the log hands them over.
    async fn dispatch(
        self: Arc<Self>,
        mut committed: tokio::sync::mpsc::UnboundedReceiver<Vec<Invocation>>,
    ) {
        let mut stop = self.stop.subscribe();
        match self.store.in_scope::<Invocation>(UNFINISHED, "") {
            Ok(left) => {
                if !left.is_empty() {
                    tracing::info!(
                        invocations = left.len(),
                        "re-running invocations a restart interrupted"
                    );
                }
                for inv in left {
                    self.clone().spawn_run(inv);
                }
            }
            Err(e) => tracing::error!(error = %e, "could not read unfinished invocations"),
        }
        if let Err(e) = self.catch_up().await {
            tracing::error!(error = %e, "could not dispatch the events an older build left; their functions will not run");
        }
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                batch = committed.recv() => match batch {
                    Some(invocations) => {
                        for inv in invocations {
                            self.clone().spawn_run(inv);
                        }
                    }
                    None => return,
                },
            }
        }
    }

    /// Builds before this one stored an event's invocations in a second
    /// commit, behind a cursor: the events between that cursor and the
    /// log's end at this boot get theirs now, once (the flag
    /// [`INLINE`] says it was done).
    async fn catch_up(self: &Arc<Self>) -> Result<(), DomainError> {
        if self.store.meta(INLINE)?.is_some_and(|v| !v.is_empty()) {
            return Ok(());
        }
        let end = self.log.published();
        // A store that never dispatched starts at the log's end: events
        // from before functions existed run nothing.
        let mut cursor = self.cursor()?.unwrap_or(end);
        while cursor < end {
            match self.step(cursor, end).await {
                Ok(Some(next)) => cursor = next,
                Ok(None) => break,
                Err(e) => {
                    if *self.stop.borrow() {
                        return Ok(());
                    }
                    tracing::warn!(error = %e, "dispatch step failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        self.store
            .commit(vec![Write::Meta {
                name: INLINE.into(),
                value: vec![1],
            }])
            .await?;
        Ok(())
    }

    /// Reads the events after `cursor` (up to `end`), writes the
    /// invocations they lack with the new cursor, starts them. `None`
    /// when there was nothing to read.
    async fn step(self: &Arc<Self>, cursor: u64, end: u64) -> Result<Option<u64>, DomainError> {
        let events: Vec<Event> = self
            .log
            .after(cursor, BATCH)?
            .into_iter()
            .filter(|e| e.nid <= end)
            .collect();
        let Some(last) = events.last().map(|e| e.nid) else {
            return Ok(None);
        };
        let mut invocations = Vec::new();
        for e in &events {
            for t in Trigger::listening(&self.store, &e.org_id, &e.event_type)? {
                let inv = Invocation::new(&t, e);
                // Stored with its event by this build (a boot that
                // crashed mid catch-up): it runs from there.
                if self.store.get::<Invocation>(&inv.key)?.is_none() {
                    invocations.push(inv);
                }
            }
        }
        let mut writes = Vec::with_capacity(invocations.len() + 1);
        for inv in &invocations {
            writes.push(Write::insert(inv)?);
        }
        writes.push(Write::Meta {
            name: CURSOR.into(),
            value: last.to_be_bytes().to_vec(),
        });
        self.store.commit(writes).await?;
        for inv in invocations {
            self.clone().spawn_run(inv);
        }
        Ok(Some(last))
    }

    fn spawn_run(self: Arc<Self>, inv: Invocation) {
        let me = self.clone();
        me.spawn(async move {
            let Ok(_permit) = self.running.acquire().await else {
                return;
            };
            let key = inv.key.clone();
            if let Err(e) = self.run(inv).await {
                tracing::error!(invocation = %key, error = %e, "could not record an invocation");
            }
        });
    }

    async fn run(self: &Arc<Self>, mut inv: Invocation) -> Result<(), DomainError> {
        inv.attempt += 1;
        let started = std::time::Instant::now();
        let outcome = self.invoke(&inv).await;
        inv.duration_ms = started.elapsed().as_millis() as u64;
        inv.finished_at = Some(now_millis());
        match outcome {
            Ok((result, logs, emitted)) => {
                inv.logs = logs;
                inv.emitted = emitted;
                match result {
                    Ok(v) => {
                        inv.status = InvocationStatus::Completed;
                        inv.result = v.to_string();
                    }
                    Err(e) => {
                        inv.status = InvocationStatus::Failed;
                        inv.error = e;
                    }
                }
            }
            Err(e) => {
                inv.status = InvocationStatus::Failed;
                inv.error = e;
            }
        }
        if inv.status == InvocationStatus::Failed {
            tracing::info!(trigger = %inv.trigger, function = %inv.function, nid = inv.event_nid, error = %inv.error, "function failed");
        }
        self.store.put(&inv).await?;
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    async fn invoke(
        self: &Arc<Self>,
        inv: &Invocation,
    ) -> Result<(Result<Value, String>, Vec<String>, Vec<String>), String> {
        let f = Function::get(&self.store, &inv.org_id, &inv.function)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("function {} not found", inv.function))?;
        let event = self
            .store
            .get::<Event>(&format!("{:020}", inv.event_nid))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "event {} was deleted before its function ran",
                    inv.event_nid
                )
            })?;
        let ids = format!("func-gen-{}-{}", inv.trigger, inv.event_nid);
        Ok(self
            .run_script(&f, ids, inv.depth, script_event(&event))
            .await)
    }

    /// Runs a function on one argument: its result, log and the ids of the
    /// events it sent (`<ids>-<n>`).
    async fn run_script(
        self: &Arc<Self>,
        f: &Function,
        ids: String,
        depth: u32,
        argument: Value,
    ) -> (Result<Value, String>, Vec<String>, Vec<String>) {
        let host = Arc::new(InvocationHost {
            inner: Arc::downgrade(self),
            handle: tokio::runtime::Handle::current(),
            owner: f.owner.clone(),
            ids,
            depth,
            seq: AtomicU32::new(0),
            emitted: Mutex::new(Vec::new()),
        });
        let outcome = self
            .pool
            .run(
                warden_jsrt::Invocation {
                    name: f.name.clone(),
                    script: f.script.clone(),
                    event: argument,
                },
                host.clone(),
            )
            .await;
        let emitted = std::mem::take(&mut *host.emitted.lock().expect("never poisoned"));
        (outcome.result, outcome.logs, emitted)
    }
}

/// Runs `function` chain tasks on the engine, which exists only after the
/// executions do: reached through a late, weak route (the automation holds
/// the executions).
#[derive(Default)]
pub(crate) struct FunctionRoute(std::sync::OnceLock<std::sync::Weak<Inner>>);

impl FunctionRoute {
    pub fn set(&self, a: &Automation) {
        let _ = self.0.set(Arc::downgrade(&a.inner));
    }
}

impl warden_actors::execution::Functions for FunctionRoute {
    fn run_function(
        &self,
        call: warden_actors::execution::FunctionCall,
    ) -> warden_actors::execution::BoxFuture<warden_actors::execution::chain::Outcome> {
        let inner = self.0.get().and_then(std::sync::Weak::upgrade);
        Box::pin(async move {
            let inner = inner.ok_or("the script engine has stopped")?;
            let f = Function::get(&inner.store, &call.owner.org_id, &call.function)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("function {} not found", call.function))?;
            let ids = format!("func-gen-{}", call.key);
            let (result, _logs, _) = inner.run_script(&f, ids, 0, call.input.json()).await;
            let v = result.map_err(|e| format!("function {}: {e}", call.function))?;
            Ok((
                warden_actors::execution::chain::Data::new("json", &v),
                "ok".to_owned(),
            ))
        })
    }
}

/// The event as a script sees it (camelCase; data and metadata parsed).
pub fn script_event(e: &Event) -> Value {
    json!({
        "id": e.id,
        "nid": e.nid,
        "createdAt": warden_storage::iso_millis(e.created_at),
        "eventType": e.event_type,
        "eventSource": e.event_source,
        "aggregateID": e.aggregate_id,
        "aggregateType": e.aggregate_type,
        "version": e.version,
        "data": e.data_json(),
        "metadata": e.metadata_json(),
    })
}

/// What one invocation's built-ins reach.
struct InvocationHost {
    /// Weak: a script still running when the runtime stops must not keep
    /// the store open.
    inner: std::sync::Weak<Inner>,
    handle: tokio::runtime::Handle,
    /// The function's owner: its runs and events are that organisation's.
    owner: Owner,
    /// What the ids of the events it sends start with.
    ids: String,
    depth: u32,
    /// The next emitted event's number within the invocation.
    seq: AtomicU32,
    emitted: Mutex<Vec<String>>,
}

fn failure(error: impl std::fmt::Display) -> Value {
    json!({"success": false, "error": error.to_string()})
}

fn arg_text(args: &[Value], i: usize) -> String {
    match args.get(i) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

impl InvocationHost {
    /// Runs a future of the server's on its runtime, bounded.
    fn wait<T>(&self, f: impl std::future::Future<Output = T>) -> Option<T> {
        self.handle
            .block_on(async { tokio::time::timeout(BUILTIN_WAIT, f).await.ok() })
    }

    fn send_event(&self, args: &[Value]) -> Value {
        let event_type = arg_text(args, 0);
        if event_type.is_empty() || event_type.chars().any(char::is_control) {
            return failure("sendEvent(type, data): type must be a non-empty string");
        }
        if self.depth + 1 > MAX_DEPTH {
            return failure(format!(
                "cascade depth limit of {MAX_DEPTH} reached: the event was not sent"
            ));
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{seq}", self.ids);
        let event = Event {
            key: String::new(),
            nid: 0,
            id: id.clone(),
            org_id: self.owner.org_id.clone(),
            event_type,
            event_source: "function_execution".into(),
            aggregate_id: "function".into(),
            aggregate_type: "function".into(),
            version: 1,
            data: args.get(1).cloned().unwrap_or(Value::Null).to_string(),
            metadata: json!({"source": "function_execution", "causation_depth": self.depth + 1})
                .to_string(),
            created_at: now_millis(),
        };
        let Some(inner) = self.inner.upgrade() else {
            return failure(STOPPING);
        };
        let appended = self.wait(inner.log.append(Append {
            events: vec![event],
            ..Default::default()
        }));
        match appended {
            // A conflict: an earlier run of this invocation sent it.
            Some(Ok(_)) | Some(Err(DomainError::Conflict { .. })) => {
                self.emitted
                    .lock()
                    .expect("never poisoned")
                    .push(id.clone());
                json!({"success": true, "event_id": id})
            }
            Some(Err(e)) => failure(e),
            None => failure("sendEvent timed out"),
        }
    }

    /// Runs a chain definition on an input as an execution of the
    /// function's owner and waits for its end.
    fn run_chain(
        &self,
        chain_id: &str,
        definition: &Value,
        input_type: &str,
        input: &Value,
    ) -> Result<(String, Value, Value), String> {
        let inner = self.inner.upgrade().ok_or(STOPPING)?;
        let x = self
            .wait(inner.executions.run_chain(crate::ChainRequest {
                owner: self.owner.clone(),
                by: &self.owner.user_id,
                chain_id,
                definition,
                input_type,
                input,
                label: RunLabel::chain(),
            }))
            .ok_or("the run did not end within 30 s")?
            .map_err(|e| e.to_string())?;
        let part = x.chain.as_ref().ok_or("the run lost its chain")?;
        if x.status != warden_actors::execution::ExecStatus::Completed {
            return Err(x.error.as_ref().map_or_else(
                || format!("the run ended {}", x.status.as_str()),
                |e| e.message.clone(),
            ));
        }
        let history: Vec<Value> = part.run.state.iter().map(|u| u.view()).collect();
        Ok((x.id.clone(), part.run.output.json(), Value::Array(history)))
    }

    fn execute_task(&self, args: &[Value]) -> Value {
        let prompt = arg_text(args, 0);
        if prompt.is_empty() {
            return failure("executeTask(prompt, modelName, modelProvider): prompt is required");
        }
        let mut task = json!({"id": "execute", "handler": "raw_string"});
        let model = arg_text(args, 1);
        if !model.is_empty() {
            task["execute_config"] = json!({"model": model});
        }
        let definition = json!({"id": "execute", "tasks": [task]});
        match self.run_chain("execute", &definition, "string", &Value::String(prompt)) {
            Ok((id, output, _)) => json!({"success": true, "task_id": id, "response": output}),
            Err(e) => failure(e),
        }
    }

    fn stored_chain(&self, chain_id: &str) -> Result<warden_domain::workflow::Workflow, String> {
        let inner = self.inner.upgrade().ok_or(STOPPING)?;
        warden_domain::workflow::by_key(&inner.store, &self.owner.org_id, chain_id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("task chain {chain_id} not found"))
    }

    fn execute_task_chain(&self, args: &[Value]) -> Value {
        let chain_id = arg_text(args, 0);
        let w = match self.stored_chain(&chain_id) {
            Ok(w) => w,
            Err(e) => return failure(e),
        };
        let input = args.get(1).cloned().unwrap_or(Value::Null);
        match self.run_chain(&chain_id, &w.chain_view(), "json", &input) {
            Ok((_, result, history)) => {
                json!({"success": true, "chain_id": chain_id, "result": result, "history": history})
            }
            Err(e) => failure(e),
        }
    }
}

impl Host for InvocationHost {
    fn call(&self, name: &str, args: Vec<Value>) -> Value {
        match name {
            "sendEvent" => self.send_event(&args),
            "executeTask" => self.execute_task(&args),
            "executeTaskChain" => self.execute_task_chain(&args),
            "callTaskChain" => {
                let chain_id = arg_text(&args, 0);
                match self.stored_chain(&chain_id) {
                    Ok(_) => json!({"success": true, "chain_id": chain_id}),
                    Err(e) => failure(e),
                }
            }
            other => failure(format!("{other} is not a built-in")),
        }
    }
}
