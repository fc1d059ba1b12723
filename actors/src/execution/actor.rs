//! `ExecutionActor`: the one writer of an execution's record. Each event
//! goes through [`machine::apply`]; the new state is durable before the
//! caller hears of it and before any effect (a command to a node) leaves.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Value, json};
use warden_storage::{Millis, Store, Write, now_millis};

use super::chain;
use super::machine::{self, Effect, Event, ReplyPhase, StepReply};
use super::record::{ExecError, Execution};
use crate::DomainError;
use crate::conversation::{Ask, Gateway};
use crate::node::{CommandOrigin, CommandStatus, NewCommand, NodeCommand};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A stored chain run as a child of an execution (a `chain` task).
#[derive(Debug, Clone)]
pub struct ChildRun {
    /// The parent execution's `_id`.
    pub parent: String,
    pub owner: warden_domain::Owner,
    pub by: String,
    /// The stored chain's key.
    pub chain: String,
    pub input: chain::Data,
    /// The child's `executionId`: the parent's task attempt, so a parent
    /// resumed after a crash waits for the child it started.
    pub key: String,
}

/// How a `chain` task starts its child run and waits for its end: the
/// executions service behind a trait, as [`Dispatch`] is the nodes'.
pub trait Children: Send + Sync + 'static {
    fn run_child(&self, child: ChildRun) -> BoxFuture<chain::Outcome>;
}

/// A JavaScript function run as a chain task (`function`).
#[derive(Debug, Clone)]
pub struct FunctionCall {
    pub owner: warden_domain::Owner,
    pub function: String,
    pub input: chain::Data,
    /// Names the events the run sends: the task attempt, so a run made
    /// again after a crash sends none twice.
    pub key: String,
}

/// How a `function` task runs its function: the script engine behind a
/// trait (it lives with the event dispatcher).
pub trait Functions: Send + Sync + 'static {
    fn run_function(&self, call: FunctionCall) -> BoxFuture<chain::Outcome>;
}

/// How an execution reaches nodes: the nodes service behind a trait, so
/// that this crate does not know the supervisors.
pub trait Dispatch: Send + Sync + 'static {
    /// Queues a command on a node (named by `_id`, or by `nodeId` within
    /// `org`). The command's id is chosen by the caller: queuing the same
    /// id again answers the command as it stands, never a second one.
    fn send(
        &self,
        org: &str,
        node: &str,
        command: NewCommand,
    ) -> BoxFuture<Result<NodeCommand, DomainError>>;
    /// Drops a command from a node's queue, or tells the node to stop it.
    fn revoke(
        &self,
        org: &str,
        node: &str,
        command_id: &str,
        reason: &str,
    ) -> BoxFuture<Result<(), DomainError>>;
}

/// Who hears of executions that ended (a deployment hears of its start
/// and stop): called once the ending is durable.
pub type ExecutionListener = Arc<dyn Fn(&Execution) + Send + Sync>;

/// How long a caller waits for an execution actor's answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A chain task's call without its own `timeout` is given up after this.
pub const CHAIN_CALL_LIMIT: Duration = Duration::from_secs(300);

pub enum ExecMsg {
    /// A client's request (start, cancel, retry) or a child's link.
    Apply {
        event: Box<Event>,
        reply: RpcReplyPort<Result<Execution, DomainError>>,
    },
    /// A node's reply to a step's command (already durable on the command).
    /// Boxed: a mailbox slot is as large as the largest message.
    Reply(Box<StepReply>),
    /// A deadline may have passed; sends that failed are tried again.
    Tick,
    /// The answer to a chain task's call (an `Event::ChainResult`).
    Chain(Box<Event>),
    /// A `job` task's job is not finished yet: the call ends and the run
    /// waits for its job without a task (parked) until
    /// [`Parking::park`]'s wake-up; with nothing else in flight the actor
    /// passivates.
    Parked {
        task: String,
        attempt: u32,
        /// When the job stops being valid.
        valid_until: Millis,
    },
    /// Look at the parked calls' jobs again (one was finished, or a
    /// wake-up time came).
    Wake,
    /// Fault injection: panic inside the handler.
    Crash,
}

/// Where runs that wait only for jobs are parked: the executions service
/// wakes a parked run (activating its actor again) when one of its jobs
/// is finished and at `wake_at` (its earliest deadline or job expiry).
pub trait Parking: Send + Sync {
    fn park(&self, execution: &str, wake_at: Millis);
}

pub struct ExecArgs {
    pub store: Store,
    pub id: String,
    pub dispatch: Arc<dyn Dispatch>,
    pub on_end: Option<ExecutionListener>,
    /// How chain tasks ask an LLM (none: such tasks fail, saying so).
    pub gateway: Option<Arc<dyn Gateway>>,
    /// Where hook calls may go, and the client that keeps to it.
    pub egress: Arc<crate::egress::Egress>,
    /// How `chain` tasks run their child chains (none: they fail, saying so).
    pub children: Option<Arc<dyn Children>>,
    /// How `function` tasks run JavaScript (none: they fail, saying so).
    pub functions: Option<Arc<dyn Functions>>,
    /// Where runs waiting only for jobs park.
    pub parking: Arc<dyn Parking>,
    /// The actor is activated to look at its parked jobs (not after a
    /// crash or a restart): its calls are made again without being
    /// marked `resumed`.
    pub woken: bool,
}

pub struct ExecState {
    store: Store,
    exec: Execution,
    version: u64,
    dispatch: Arc<dyn Dispatch>,
    on_end: Option<ExecutionListener>,
    /// Steps whose command could not be queued yet (the node's actor was
    /// unavailable): tried again on each tick, under the same id.
    unsent: BTreeSet<u32>,
    /// The deadline a timer is armed for.
    armed: Option<Millis>,
    functions: Option<Arc<dyn Functions>>,
    children: Option<Arc<dyn Children>>,
    egress: Arc<crate::egress::Egress>,
    gateway: Option<Arc<dyn Gateway>>,
    /// The calls in flight by task (a chain's one, a DAG's steps'): each
    /// is aborted when the run no longer waits for it, and when the actor
    /// goes (stopped or failed) with its state.
    calls: HashMap<String, InFlightCall>,
    parking: Arc<dyn Parking>,
    /// Parked calls (task → its job's expiry): waiting for a job, with no
    /// task of their own.
    parked: HashMap<String, Millis>,
    /// Activated to look at parked jobs (see [`ExecArgs::woken`]).
    woken: bool,
}

/// A spawned call that is aborted when dropped.
struct InFlightCall(tokio::task::JoinHandle<()>);

impl Drop for InFlightCall {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Default)]
pub struct ExecutionActor;

impl ExecState {
    /// Runs one event: the new state is durable before this returns,
    /// except an ack's (progress and a received id, which promise nothing
    /// and leave nothing to do): it is queued without waiting.
    async fn run(&mut self, event: Event) -> Result<Vec<Effect>, DomainError> {
        let now = now_millis();
        let mut next = self.exec.clone();
        let ack = matches!(&event, Event::Reply(r) if r.phase == ReplyPhase::Ack);
        let effects =
            machine::apply(&mut next, event, now).map_err(|m| DomainError::Invalid(vec![m]))?;
        if next != self.exec {
            next.audit.updated_at = now.max(next.audit.updated_at);
            let queued = ack
                && effects.is_empty()
                && Write::put(&next, Some(self.version))
                    .ok()
                    .is_some_and(|w| self.store.commit_nowait(vec![w]).is_ok());
            let version = if queued {
                self.version + 1
            } else {
                self.commit(&next).await?
            };
            self.version = version;
            let ended = next.status.is_terminal() && !self.exec.status.is_terminal();
            self.exec = next;
            if ended && let Some(on_end) = &self.on_end {
                on_end(&self.exec);
            }
        }
        Ok(effects)
    }

    /// A durable write with the version this actor expects; when an
    /// earlier unacknowledged write was dropped (queue full), the stored
    /// version is re-read (this actor is the only writer).
    async fn commit(&self, next: &Execution) -> Result<u64, DomainError> {
        match self
            .store
            .commit(vec![Write::put(next, Some(self.version))?])
            .await
        {
            Ok(v) => Ok(v[0]),
            Err(warden_storage::StorageError::VersionMismatch { .. }) => {
                let (_, stored) = self
                    .store
                    .get_versioned::<Execution>(&next.id)?
                    .ok_or_else(|| DomainError::NotFound {
                        kind: "Execution",
                        id: next.id.clone(),
                    })?;
                Ok(self
                    .store
                    .commit(vec![Write::put(next, Some(stored))?])
                    .await?[0])
            }
            Err(e) => Err(e.into()),
        }
    }

    fn command_for(&self, index: u32) -> Option<(String, NewCommand)> {
        let x = &self.exec;
        let step = x.steps.iter().find(|s| s.index == index)?;
        let cmd = step.command.as_ref()?;
        let node = machine::step_node(x, step)?.to_owned();
        let mut metadata = json!({
            "executionId": x.execution_id,
            "stepIndex": index,
            "priority": "normal",
        });
        if let Some(t) = step.timeout_seconds {
            metadata["timeout"] = json!(t);
        }
        Some((
            node,
            NewCommand {
                id: step.sent_message_id.clone(),
                kind: cmd.kind.clone(),
                resource_type: cmd.resource_type.clone(),
                resource_id: cmd.resource_id.clone(),
                data: serde_json::from_str(&cmd.data).unwrap_or_else(|_| json!({})),
                metadata,
                created_by: x.audit.created_by.clone(),
                idempotency_key: None,
                origin: Some(CommandOrigin {
                    execution: x.id.clone(),
                    step: index,
                }),
            },
        ))
    }

    /// Carries out effects once the state that asked for them is durable.
    /// A command that a node already answered (sent before a restart)
    /// comes back as its reply.
    async fn perform(&mut self, myself: &ActorRef<ExecMsg>, effects: Vec<Effect>) {
        let org = self.exec.owner.org_id.clone();
        for effect in effects {
            match effect {
                Effect::Send { index } => {
                    let Some((node, command)) = self.command_for(index) else {
                        continue;
                    };
                    let id = command.id.clone().unwrap_or_default();
                    match self.dispatch.send(&org, &node, command).await {
                        Ok(cmd) => {
                            self.unsent.remove(&index);
                            if let Some(reply) = reply_of(&cmd) {
                                let _ = myself.cast(ExecMsg::Reply(Box::new(reply)));
                            }
                        }
                        Err(DomainError::NotFound { .. }) | Err(DomainError::Failed { .. }) => {
                            self.unsent.remove(&index);
                            let _ = myself.cast(ExecMsg::Reply(Box::new(StepReply {
                                command_id: id,
                                reply_id: None,
                                phase: ReplyPhase::Result,
                                success: false,
                                progress: None,
                                result: None,
                                error: Some(ExecError {
                                    node_id: Some(node.clone()),
                                    ..ExecError::new(
                                        "NODE_UNAVAILABLE",
                                        format!("node {node} does not exist or has failed"),
                                    )
                                }),
                            })));
                        }
                        Err(e) => {
                            tracing::warn!(execution = %self.exec.id, step = index, error = %e, "could not queue a step's command; will try again");
                            self.unsent.insert(index);
                        }
                    }
                }
                Effect::Call { task, attempt } => self.call(myself, task, attempt),
                Effect::Revoke {
                    node,
                    command_id,
                    reason,
                } => {
                    if let Err(e) = self
                        .dispatch
                        .revoke(&org, &node, &command_id, &reason)
                        .await
                    {
                        tracing::warn!(execution = %self.exec.id, command = %command_id, error = %e, "could not revoke a command");
                    }
                }
            }
        }
    }

    /// Asks the LLM for a chain task's answer, off the actor: each model
    /// in the task's order (else the server's task model) until one
    /// answers, within the task's `timeout`. The result comes back as a
    /// message; a run cancelled meanwhile drops the call.
    fn call(&mut self, myself: &ActorRef<ExecMsg>, task_id: String, attempt: u32) {
        let result = |outcome: chain::Outcome, duration_ns: u64| {
            ExecMsg::Chain(Box::new(Event::ChainResult {
                task: task_id.clone(),
                attempt,
                outcome,
                duration_ns,
            }))
        };
        let (task, input, token_limit) = match self.task_for(&task_id) {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                let _ = myself.cast(result(Err(e), 0));
                return;
            }
        };
        let me = myself.clone();
        if task.handler == "hook" {
            let hook = super::hook_call::target(&task).and_then(|(name, _, _)| {
                warden_domain::hook::by_name(&self.store, &self.exec.owner.org_id, &name)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("hook {name} is not registered (POST /hooks/remote)"))
            });
            let hook = match hook {
                Ok(h) => h,
                Err(e) => {
                    let _ = myself.cast(result(Err(e), 0));
                    return;
                }
            };
            let key = format!("{}:{}:{}", self.exec.id, task.id, attempt);
            // The hook's own timeoutMs bounds the call too.
            let timeout = task.timeout;
            let egress = self.egress.clone();
            self.spawn_call(me, task_id, attempt, timeout, async move {
                super::hook_call::call(&egress, &hook, &task, &input, &key).await
            });
            return;
        }
        if task.handler == "chain" {
            let Some(children) = self.children.clone() else {
                let _ = myself.cast(result(Err("this server cannot run child chains".into()), 0));
                return;
            };
            let child = ChildRun {
                parent: self.exec.id.clone(),
                owner: self.exec.owner.clone(),
                by: self.exec.audit.created_by.clone(),
                chain: task
                    .raw
                    .get("chain")
                    .and_then(|c| c.get("id"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                input: input.clone(),
                key: format!("{}:{}:{}", self.exec.id, task.id, attempt),
            };
            let timeout = task.timeout;
            self.spawn_call(me, task_id, attempt, timeout, children.run_child(child));
            return;
        }
        if task.handler == "function" {
            let Some(functions) = self.functions.clone() else {
                let _ = myself.cast(result(Err("this server cannot run functions".into()), 0));
                return;
            };
            let call = FunctionCall {
                owner: self.exec.owner.clone(),
                function: task
                    .raw
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                input: input.clone(),
                key: format!("{}:{}:{}", self.exec.id, task.id, attempt),
            };
            let timeout = task.timeout;
            self.spawn_call(me, task_id, attempt, timeout, functions.run_function(call));
            return;
        }
        if task.handler == "job" {
            let spec = task.raw.get("job").cloned().unwrap_or(Value::Null);
            // The task waits no longer than its `timeout`: nor is its job
            // valid longer (a parked run wakes at its job's expiry).
            let valid_for = spec["valid_for"]
                .as_str()
                .and_then(chain::go_duration)
                .unwrap_or(JOB_VALID_FOR);
            let valid_for = task.timeout.map_or(valid_for, |t| t.min(valid_for));
            let job = warden_domain::job::Job::new(
                &self.exec.owner.org_id,
                &format!("{}:{}:{}", self.exec.id, task.id, attempt),
                spec["type"].as_str().unwrap_or_default(),
                &input.json(),
                valid_for.as_millis() as i64,
                &self.exec.id,
            );
            let store = self.store.clone();
            let timeout = Some(task.timeout.unwrap_or(valid_for));
            self.parked.remove(&task_id);
            // Looks once: a job not finished parks the call.
            let task = task_id.clone();
            self.spawn_call(me.clone(), task_id, attempt, timeout, async move {
                match look_at_job(&store, job).await {
                    JobLook::Ended(outcome) => outcome,
                    JobLook::Waiting(valid_until) => {
                        let _ = me.cast(ExecMsg::Parked {
                            task,
                            attempt,
                            valid_until,
                        });
                        std::future::pending().await
                    }
                }
            });
            return;
        }
        if task.handler == "execute_tool_calls" {
            self.call_tools(me, task, attempt, &input);
            return;
        }
        let Some(gateway) = self.gateway.clone() else {
            let _ = myself.cast(result(
                Err("this server has no LLM gateway for chain tasks".into()),
                0,
            ));
            return;
        };
        let (org, user) = (
            self.exec.owner.org_id.clone(),
            self.exec.audit.created_by.clone(),
        );
        if task.handler == "embedding" {
            let model = task.prompt(&input).models.into_iter().next();
            let text = input.text();
            self.spawn_call(me, task_id, attempt, task.timeout, async move {
                let v = gateway
                    .embed(org, user, model, text)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((chain::Data::new("vector", &json!(v)), "ok".to_owned()))
            });
            return;
        }
        // What to send, and how the answer becomes the task's outcome.
        type Read = Box<dyn Fn(&crate::conversation::Completion) -> chain::Outcome + Send + Sync>;
        let (messages, prompt, read): (Vec<Value>, chain::Prompt, Read) =
            if task.handler == "model_execution" {
                match task.chat_request(&input, token_limit) {
                    Ok((history, prompt)) => {
                        let (t, h) = (task.clone(), history.clone());
                        let read: Read = Box::new(move |c| {
                            t.read_chat(
                                h.clone(),
                                &c.content,
                                &c.tool_calls,
                                &c.model,
                                (c.tokens.prompt, c.tokens.completion),
                            )
                        });
                        (history, prompt, read)
                    }
                    Err(e) => {
                        let _ = myself.cast(result(Err(e), 0));
                        return;
                    }
                }
            } else {
                let prompt = task.prompt(&input);
                let mut messages = Vec::new();
                if let Some(system) = &prompt.system {
                    messages.push(json!({"role": "system", "content": system}));
                }
                messages.push(json!({"role": "user", "content": prompt.user}));
                let t = task.clone();
                let read: Read = Box::new(move |c| t.read_answer(&c.content));
                (messages, prompt, read)
            };
        let models = if prompt.models.is_empty() {
            vec![gateway.default_model()]
        } else {
            prompt.models.clone()
        };
        let temperature = prompt.temperature;
        let timeout = task.timeout;
        let offer = if task.handler == "model_execution" {
            match self.tools_offered(&task, &input) {
                Ok(o) => Some(o),
                Err(e) => {
                    let _ = myself.cast(result(Err(e), 0));
                    return;
                }
            }
        } else {
            None
        };
        let egress = self.egress.clone();
        self.spawn_call(me, task_id, attempt, timeout, async move {
            let mut tools = Vec::new();
            if let Some((client, hooks)) = offer {
                tools = client;
                for hook in &hooks {
                    tools.extend(super::hook_call::offered_tools(&egress, hook).await?);
                }
            }
            let mut failures = Vec::new();
            for model in models {
                let ask = Ask {
                    org: org.clone(),
                    user: user.clone(),
                    username: user.clone(),
                    model: model.clone(),
                    messages: messages.clone(),
                    temperature,
                    top_p: None,
                    max_tokens: None,
                    tools: tools.clone(),
                };
                match gateway.complete(ask).await {
                    Ok(c) => return read(&c),
                    Err(e) => failures.push(format!("{model}: {e}")),
                }
            }
            Err(format!("no model answered: {}", failures.join("; ")))
        });
    }

    /// The tools a model execution offers (§2): the client's (an OpenAI
    /// request's `tools`) when `execute_config.pass_clients_tools`, less
    /// those `execute_config.hide_tools` names, and the hooks
    /// `execute_config.hooks` names (their tools are read when called).
    fn tools_offered(
        &self,
        task: &chain::Task,
        input: &chain::Data,
    ) -> Result<(Vec<Value>, Vec<warden_domain::hook::Hook>), String> {
        let config = task.raw.get("execute_config").cloned().unwrap_or_default();
        let names = |v: &Value| -> Vec<String> {
            match v {
                Value::String(s) if !s.is_empty() => vec![s.clone()],
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let hidden = names(&config["hide_tools"]);
        let client: Vec<Value> = if config["pass_clients_tools"] == true {
            input.json()["tools"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| {
                    let name = t["function"]["name"].as_str().unwrap_or_default();
                    !hidden.iter().any(|h| h == name)
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let mut hooks = Vec::new();
        for name in names(&config["hooks"]) {
            let hook = warden_domain::hook::by_name(&self.store, &self.exec.owner.org_id, &name)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "task {}: hook {name} is not registered (POST /hooks/remote)",
                        task.id
                    )
                })?;
            hooks.push(hook);
        }
        Ok((client, hooks))
    }

    /// An `execute_tool_calls` task: the tool calls of the history's last
    /// message that name a registered hook's tool are made in order (each
    /// with its own idempotency key), and their answers appended as `tool`
    /// messages; calls of other tools are left alone.
    fn call_tools(
        &mut self,
        me: ActorRef<ExecMsg>,
        task: chain::Task,
        attempt: u32,
        input: &chain::Data,
    ) {
        let task_id = task.id.clone();
        let done = |outcome: chain::Outcome| {
            let _ = me.cast(ExecMsg::Chain(Box::new(Event::ChainResult {
                task: task_id.clone(),
                attempt,
                outcome,
                duration_ns: 0,
            })));
        };
        let (history, calls) = match task.tool_work(input) {
            Ok(chain::ToolWork::Done(outcome)) => return done(Ok(outcome)),
            Ok(chain::ToolWork::Calls { history, calls }) => (history, calls),
            Err(e) => return done(Err(e)),
        };
        let mut known = Vec::new();
        for c in calls {
            match warden_domain::hook::by_name(&self.store, &self.exec.owner.org_id, &c.hook) {
                Ok(Some(hook)) => known.push((c, hook)),
                Ok(None) => {}
                Err(e) => return done(Err(e.to_string())),
            }
        }
        if known.is_empty() {
            return done(Ok((input.clone(), "no_calls_found".into())));
        }
        let key = format!("{}:{}:{}", self.exec.id, task.id, attempt);
        let egress = self.egress.clone();
        self.spawn_call(
            me.clone(),
            task.id.clone(),
            attempt,
            task.timeout,
            async move {
                let mut answers = Vec::new();
                for (c, hook) in known {
                    let key = format!("{key}:{}", c.id);
                    let answer =
                        super::hook_call::call_tool(&egress, &hook, &c.tool, c.arguments, &key)
                            .await?;
                    answers.push((c.id, answer));
                }
                chain::tools_done(&history, answers)
            },
        );
    }

    /// The task a call runs, its input and the chain's token limit: the
    /// chain's current task, or a DAG step as its kind's task with its
    /// input's templates filled. `None`: no such task (nothing to call).
    fn task_for(&self, task_id: &str) -> Result<Option<(chain::Task, chain::Data, u64)>, String> {
        if self.exec.dag.is_some() {
            let steps = super::dag::steps_of(&self.exec);
            let Some(step) = steps.iter().find(|s| s.id == task_id) else {
                return Ok(None);
            };
            let input = super::dag::resolve(&step.input_data, &super::dag::scope(&self.exec))?;
            let (task, input) = super::dag::task_of(step, &input)?;
            return Ok(Some((task, input, 0)));
        }
        let Some(part) = &self.exec.chain else {
            return Ok(None);
        };
        let definition: Value = serde_json::from_str(&part.definition).unwrap_or(Value::Null);
        let parsed = chain::parse(&part.chain_id, &definition)
            .map_err(|_| "the chain no longer reads".to_owned())?;
        let Some(task) = parsed.tasks.iter().find(|t| t.id == task_id).cloned() else {
            return Ok(None);
        };
        let mut run = part.run.clone();
        let (input, _) = chain::Runner {
            chain: &parsed,
            run: &mut run,
        }
        .input()?;
        Ok(Some((task, input, parsed.token_limit)))
    }

    /// Runs a chain task's call off the actor, within `timeout` (else
    /// [`CHAIN_CALL_LIMIT`]); its outcome and duration come back as an
    /// `Event::ChainResult`. The call is aborted if the run ends first.
    fn spawn_call(
        &mut self,
        me: ActorRef<ExecMsg>,
        task: String,
        attempt: u32,
        timeout: Option<Duration>,
        work: impl Future<Output = chain::Outcome> + Send + 'static,
    ) {
        let limit = timeout.unwrap_or(CHAIN_CALL_LIMIT);
        let key = task.clone();
        let handle = InFlightCall(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let outcome = match tokio::time::timeout(limit, work).await {
                Ok(o) => o,
                Err(_) => Err(format!("task {task} timed out after {limit:?}")),
            };
            let duration_ns = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            let _ = me.cast(ExecMsg::Chain(Box::new(Event::ChainResult {
                task,
                attempt,
                outcome,
                duration_ns,
            })));
        }));
        self.calls.insert(key, handle);
    }

    /// Tells the parking when to wake this run (its parked jobs' expiry
    /// or its next deadline, whichever is first); with nothing but parked
    /// jobs to wait for, the actor passivates until then.
    fn park(&mut self, myself: &ActorRef<ExecMsg>) {
        let Some(wake_at) = self
            .parked
            .values()
            .copied()
            .chain(machine::next_deadline(&self.exec))
            .min()
        else {
            return;
        };
        self.parking.park(&self.exec.id, wake_at);
        let idle = self.exec.status == super::record::ExecStatus::Running
            && self.calls.is_empty()
            && self.unsent.is_empty()
            && machine::in_flight(&self.exec).is_empty();
        if idle {
            myself.stop(Some("parked: waiting for jobs".into()));
        }
    }

    /// Arms a timer for the next deadline (one at a time; a stale timer
    /// only re-checks). Sends to retry want a tick soon too.
    fn arm(&mut self, myself: &ActorRef<ExecMsg>) {
        let now = now_millis();
        let retry = (!self.unsent.is_empty()).then_some(now + 1000);
        let Some(due) = machine::next_deadline(&self.exec)
            .into_iter()
            .chain(retry)
            .min()
        else {
            return;
        };
        if self.armed.is_some_and(|a| a <= due && a > now) {
            return;
        }
        self.armed = Some(due);
        let wait = Duration::from_millis((due - now).max(0) as u64 + 1);
        myself.send_after(wait, || ExecMsg::Tick);
    }
}

/// How long a `job` task's job stays valid unless the task says.
const JOB_VALID_FOR: Duration = Duration::from_secs(3600);
/// Where a `job` task's job stands.
enum JobLook {
    /// Done (the task's outcome), failed, expired or gone.
    Ended(chain::Outcome),
    /// Not finished; valid until then.
    Waiting(Millis),
}

/// Makes the job (or finds the one an earlier run of this attempt made)
/// and says where it stands.
async fn look_at_job(store: &Store, job: warden_domain::job::Job) -> JobLook {
    use warden_domain::job::{self, JobStatus};
    let now = match job::ensure(store, job).await {
        Ok(j) => j,
        Err(e) => return JobLook::Ended(Err(e.to_string())),
    };
    JobLook::Ended(match now.status {
        JobStatus::Done => {
            let out = json!({"jobId": now.id, "taskType": now.task_type,
                "payload": now.payload_json(), "leaserId": now.leaser_id,
                "retryCount": now.retry_count});
            Ok((chain::Data::new("json", &out), "done".to_owned()))
        }
        JobStatus::Failed => Err(format!(
            "job {} was marked failed by {}",
            now.id, now.leaser_id
        )),
        _ if now.valid_until <= now_millis() => {
            Err(format!("job {} was not done before it expired", now.id))
        }
        _ => return JobLook::Waiting(now.valid_until),
    })
}

/// What a stored command says about its step, once the node answered.
fn reply_of(cmd: &NodeCommand) -> Option<StepReply> {
    let success = match cmd.status {
        CommandStatus::Succeeded => true,
        CommandStatus::Failed | CommandStatus::Cancelled => false,
        _ => return None,
    };
    Some(StepReply {
        command_id: cmd.id.clone(),
        reply_id: None,
        phase: ReplyPhase::Result,
        success,
        progress: None,
        result: cmd.result.clone(),
        error: cmd.error.as_deref().map(error_of),
    })
}

/// A node's error (`{code, message, details}` JSON, or any JSON) as a step error.
pub fn error_of(text: &str) -> ExecError {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::String(text.to_owned()));
    match &v {
        Value::Object(m) => ExecError {
            code: m
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("STEP_FAILED")
                .to_owned(),
            message: m
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the node reported an error")
                .to_owned(),
            details: m
                .get("details")
                .filter(|d| !d.is_null())
                .map(Value::to_string),
            ..Default::default()
        },
        Value::String(s) => ExecError::new("STEP_FAILED", s.clone()),
        other => ExecError::new("STEP_FAILED", other.to_string()),
    }
}

impl Actor for ExecutionActor {
    type Msg = ExecMsg;
    type State = ExecState;
    type Arguments = ExecArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ExecMsg>,
        args: ExecArgs,
    ) -> Result<ExecState, ActorProcessingErr> {
        let (exec, version) = args
            .store
            .get_versioned::<Execution>(&args.id)?
            .filter(|(x, _)| x.audit.deleted_at.is_none())
            .ok_or_else(|| format!("execution {} does not exist", args.id))?;
        Ok(ExecState {
            store: args.store,
            exec,
            version,
            dispatch: args.dispatch,
            on_end: args.on_end,
            unsent: BTreeSet::new(),
            armed: None,
            gateway: args.gateway,
            egress: args.egress,
            children: args.children,
            functions: args.functions,
            calls: HashMap::new(),
            parking: args.parking,
            parked: HashMap::new(),
            woken: args.woken,
        })
    }

    /// After a restart: the attempts in flight are marked `resumed` (one
    /// write), every unanswered command is queued again under its recorded
    /// id (a node holds it once; one already answered comes back as its
    /// reply), every pending call is made again under its attempt, and
    /// deadlines that passed meanwhile are applied.
    async fn post_start(
        &self,
        myself: ActorRef<ExecMsg>,
        state: &mut ExecState,
    ) -> Result<(), ActorProcessingErr> {
        if state.woken {
            // Activated to look at its parked jobs: the same calls, made
            // again, nothing resumed.
            let again = machine::pending_calls(&state.exec);
            state.perform(&myself, again).await;
        } else if machine::needs_resume(&state.exec) {
            let resend = state.run(Event::Resume).await?;
            state.perform(&myself, resend).await;
        }
        if machine::next_deadline(&state.exec).is_some() {
            let _ = myself.cast(ExecMsg::Tick);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ExecMsg>,
        msg: ExecMsg,
        state: &mut ExecState,
    ) -> Result<(), ActorProcessingErr> {
        Box::pin(handle_message(myself, msg, state)).await
    }
}

async fn handle_message(
    myself: ActorRef<ExecMsg>,
    msg: ExecMsg,
    state: &mut ExecState,
) -> Result<(), ActorProcessingErr> {
    let effects = match msg {
        ExecMsg::Apply { event, reply } => match state.run(*event).await {
            Ok(effects) => {
                let _ = reply.send(Ok(state.exec.clone()));
                effects
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                Vec::new()
            }
        },
        ExecMsg::Reply(step_reply) => state.run(Event::Reply(*step_reply)).await?,
        ExecMsg::Chain(event) => state.run(*event).await?,
        ExecMsg::Tick => {
            state.armed = None;
            let mut effects: Vec<Effect> = std::mem::take(&mut state.unsent)
                .into_iter()
                .map(|index| Effect::Send { index })
                .collect();
            effects.extend(state.run(Event::Tick).await?);
            effects
        }
        ExecMsg::Parked {
            task,
            attempt,
            valid_until,
        } => {
            if machine::pending_calls(&state.exec).contains(&Effect::Call {
                task: task.clone(),
                attempt,
            }) {
                // Its call ended (waiting, it never would): the job's
                // finish or expiry wakes the run.
                state.calls.remove(&task);
                state.parked.insert(task, valid_until);
                state.park(&myself);
            }
            Vec::new()
        }
        ExecMsg::Wake => machine::pending_calls(&state.exec)
            .into_iter()
            .filter(|e| matches!(e, Effect::Call { task, .. } if state.parked.contains_key(task)))
            .collect(),
        ExecMsg::Crash => panic!(
            "fault injection: execution {} was told to crash",
            state.exec.id
        ),
    };
    state.perform(&myself, effects).await;
    // Calls the run no longer waits for (it ended, the step failed or
    // timed out) are aborted.
    let waiting: Vec<String> = machine::pending_calls(&state.exec)
        .into_iter()
        .filter_map(|e| match e {
            Effect::Call { task, .. } => Some(task),
            _ => None,
        })
        .collect();
    state.calls.retain(|task, _| waiting.contains(task));
    state.parked.retain(|task, _| waiting.contains(task));
    state.arm(&myself);
    // Finished: nothing left to wait for, so the actor passivates (a late
    // reply or a client's request activates it again).
    if state.exec.status.is_terminal() && state.unsent.is_empty() {
        myself.stop(Some("finished".into()));
    }
    Ok(())
}

/// The public API of a running execution actor.
#[derive(Clone)]
pub struct ExecHandle(pub ActorRef<ExecMsg>);

impl ExecHandle {
    pub async fn apply(&self, event: Event) -> Result<Execution, DomainError> {
        crate::ask(&self.0, CALL_TIMEOUT, "the execution's actor", |reply| {
            ExecMsg::Apply {
                event: Box::new(event),
                reply,
            }
        })
        .await
    }

    /// False when the actor is gone (re-resolve it).
    pub fn reply(&self, reply: StepReply) -> bool {
        self.0.cast(ExecMsg::Reply(Box::new(reply))).is_ok()
    }

    pub fn crash(&self) {
        let _ = self.0.cast(ExecMsg::Crash);
    }
}
