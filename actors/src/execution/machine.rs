//! An execution's transitions: pure functions of (state, event, now) →
//! (state, effects). The actor persists the new state, and only then
//! carries out the effects; nothing here does I/O, so every rule is
//! unit-tested without a runtime.
//!
//! Rules:
//! - Steps form a DAG by `dependsOn`. A pending step whose dependencies
//!   are all satisfied (completed, or skipped) starts; independent steps
//!   run at once. A step without a command completes as it starts.
//! - A step that fails (an error result, or its `timeoutSeconds` passing)
//!   is skipped when `optional`; otherwise the execution ends `failed`
//!   (`timeout` for a timeout) and its other running commands are revoked.
//! - The execution's own `timeoutSeconds` counts from its start; past it
//!   the execution ends `timeout`.
//! - Each start of a step is an attempt with its own command id, derived
//!   from (execution, step, attempt) and recorded before the command
//!   leaves: sending it again after a crash names the same command, which
//!   the node's queue holds once.
//! - `progress` is the mean of the steps' (completed and skipped count 100).

use warden_storage::Millis;

use super::record::{ExecError, ExecStatus, Execution, Step, StepStatus};
use super::{chain, dag};

/// Whether a node's reply acknowledges or completes a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyPhase {
    Ack,
    Result,
}

/// A node's reply to one step's command.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReply {
    /// The command's id (the reply's `originalMessageId`).
    pub command_id: String,
    /// The reply's own `messageId`, when it had one.
    pub reply_id: Option<String>,
    pub phase: ReplyPhase,
    pub success: bool,
    pub progress: Option<f64>,
    /// JSON text.
    pub result: Option<String>,
    pub error: Option<ExecError>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start {
        force: bool,
    },
    Cancel {
        reason: Option<String>,
    },
    Retry {
        reset_steps: bool,
    },
    Reply(StepReply),
    /// Time passed: deadlines are checked.
    Tick,
    /// A chain task's outside call answered (or failed).
    ChainResult {
        task: String,
        attempt: u32,
        outcome: chain::Outcome,
        duration_ns: u64,
    },
    AddChild(String),
    /// The run's actor started again (after a crash or a restart) with
    /// attempts in flight: they are marked `resumed` and made again under
    /// the same attempt (commands under their recorded ids).
    Resume,
}

/// What the actor does once the new state is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Queue the step's command (its id is the step's `sent_message_id`).
    Send { index: u32 },
    /// Make the chain's pending call (recorded in `chain.call`).
    Call { task: String, attempt: u32 },
    /// Tell the step's node to drop or stop a command it may hold.
    Revoke {
        node: String,
        command_id: String,
        reason: String,
    },
}

/// The id of a step's command for one attempt: a UUID (version 8) from
/// the SHA-256 of the execution's `_id`, the step and the attempt.
pub fn command_id(execution: &str, index: u32, attempt: u32) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"step\0")
        .chain_update(execution.as_bytes())
        .chain_update(index.to_be_bytes())
        .chain_update(attempt.to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Applies one event. `Err` carries the message for a refused request
/// (the state is then unchanged).
pub fn apply(x: &mut Execution, event: Event, now: Millis) -> Result<Vec<Effect>, String> {
    let mut effects = Vec::new();
    match event {
        Event::Start { force } => {
            match (x.status, force) {
                (ExecStatus::Pending, _) => {}
                (ExecStatus::Running, false) => {
                    return Err("Execution is already running; use force to restart it".into());
                }
                (status, false) => {
                    return Err(format!(
                        "Execution is {}; start it with force, or retry it",
                        status.as_str()
                    ));
                }
                (_, true) => {
                    revoke_running(x, "the execution was restarted", &mut effects);
                    for step in &mut x.steps {
                        reset_step(step);
                    }
                }
            }
            begin(x, now);
        }
        Event::Cancel { reason } => {
            if x.status.is_terminal() {
                return Err(format!("Execution is already {}", x.status.as_str()));
            }
            let message = reason
                .filter(|r| !r.trim().is_empty())
                .unwrap_or_else(|| "Execution cancelled by user".into());
            revoke_running(x, &message, &mut effects);
            for step in &mut x.steps {
                if step.status == StepStatus::Running {
                    step.status = StepStatus::Failed;
                    step.error = Some(ExecError::new("USER_CANCELLED", message.clone()));
                    step.completed_at = Some(now);
                }
            }
            finish(
                x,
                ExecStatus::Cancelled,
                Some(ExecError::new("USER_CANCELLED", message)),
                now,
            );
        }
        Event::Retry { reset_steps } => {
            if !matches!(x.status, ExecStatus::Failed | ExecStatus::Timeout) {
                return Err(format!(
                    "Only a failed or timed-out execution can be retried; this one is {}",
                    x.status.as_str()
                ));
            }
            if x.retry_count >= x.max_retries {
                return Err(format!(
                    "Execution has reached its maximum of {} retries",
                    x.max_retries
                ));
            }
            x.retry_count += 1;
            x.retry_attempts.push(now);
            revoke_running(x, "the execution was retried", &mut effects);
            for step in &mut x.steps {
                if reset_steps || !step.status.satisfies() {
                    reset_step(step);
                }
            }
            begin(x, now);
        }
        Event::Reply(reply) => on_reply(x, reply, now, &mut effects),
        Event::Tick => on_tick(x, now, &mut effects),
        Event::ChainResult {
            task,
            attempt,
            outcome,
            ..
        } if x.dag.is_some() => on_step_result(x, &task, attempt, outcome, now, &mut effects),
        Event::ChainResult {
            task,
            attempt,
            outcome,
            duration_ns,
        } => {
            let Some(part) = x.chain.as_mut() else {
                return Ok(effects);
            };
            let expected = part
                .call
                .as_ref()
                .is_some_and(|c| c.task == task && c.attempt == attempt);
            if x.status != ExecStatus::Running || !expected {
                // Late: a cancelled run, or an attempt made again.
                return Ok(effects);
            }
            let resumed = part.call.take().is_some_and(|c| c.resumed);
            let definition: serde_json::Value =
                serde_json::from_str(&part.definition).unwrap_or(serde_json::Value::Null);
            if let Ok(parsed) = chain::parse(&part.chain_id, &definition) {
                let before = part.run.state.len();
                chain::Runner {
                    chain: &parsed,
                    run: &mut part.run,
                }
                .effect_done(outcome, duration_ns);
                for unit in part.run.state.iter_mut().skip(before) {
                    unit.resumed = resumed;
                }
            }
        }
        Event::Resume => {
            mark_resumed(x);
            effects.extend(in_flight(x).into_iter().map(|index| Effect::Send { index }));
            effects.extend(pending_calls(x));
        }
        Event::AddChild(child) => {
            if !x.child_execution_ids.contains(&child) {
                x.child_execution_ids.push(child);
            }
        }
    }
    advance(x, now, &mut effects);
    x.progress = progress(x);
    forget_calls(x);
    Ok(effects)
}

/// The earliest time something is due: a running step's or the
/// execution's timeout.
pub fn next_deadline(x: &Execution) -> Option<Millis> {
    if x.status != ExecStatus::Running {
        return None;
    }
    x.steps
        .iter()
        .filter(|s| s.status == StepStatus::Running)
        .filter_map(step_deadline)
        .chain(x.timeout_at)
        .min()
}

/// Steps whose command is out (or about to be) and not answered: after a
/// restart the actor sends each again, which names the same command.
pub fn in_flight(x: &Execution) -> Vec<u32> {
    if x.status != ExecStatus::Running {
        return Vec::new();
    }
    x.steps
        .iter()
        .filter(|s| s.status == StepStatus::Running && s.sent_message_id.is_some())
        .map(|s| s.index)
        .collect()
}

/// The node a step's command goes to: its own, or the execution's.
pub fn step_node<'a>(x: &'a Execution, step: &'a Step) -> Option<&'a str> {
    step.node_id.as_deref().or(x.node_id.as_deref())
}

fn step_deadline(s: &Step) -> Option<Millis> {
    let t = s.timeout_seconds?;
    Some(s.started_at? + (t as i64).saturating_mul(1000))
}

fn begin(x: &mut Execution, now: Millis) {
    if x.started_at.is_some() {
        reset_chain(x);
    }
    if let Some(part) = x.dag.as_mut() {
        part.calls.clear();
    }
    x.status = ExecStatus::Running;
    x.started_at = Some(now);
    x.completed_at = None;
    x.error = None;
    x.result = None;
    x.timeout_at =
        (x.timeout_seconds > 0).then(|| now + (x.timeout_seconds as i64).saturating_mul(1000));
}

fn reset_step(step: &mut Step) {
    step.status = StepStatus::Pending;
    step.progress = 0;
    step.started_at = None;
    step.completed_at = None;
    step.result = None;
    step.error = None;
    step.sent_message_id = None;
    step.received_message_id = None;
    step.resumed = false;
}

fn finish(x: &mut Execution, status: ExecStatus, error: Option<ExecError>, now: Millis) {
    x.status = status;
    x.error = error;
    x.completed_at = Some(now);
    x.timeout_at = None;
}

/// Revokes the commands of every running step (the node may hold them).
fn revoke_running(x: &Execution, reason: &str, effects: &mut Vec<Effect>) {
    for step in x.steps.iter().filter(|s| s.status == StepStatus::Running) {
        if let (Some(node), Some(id)) = (step_node(x, step), &step.sent_message_id) {
            effects.push(Effect::Revoke {
                node: node.to_owned(),
                command_id: id.clone(),
                reason: reason.to_owned(),
            });
        }
    }
}

/// A step gave up (an error result or its timeout): skipped when
/// optional, else the end of the execution with `status`.
fn step_failed(
    x: &mut Execution,
    i: usize,
    error: ExecError,
    status: ExecStatus,
    now: Millis,
    effects: &mut Vec<Effect>,
) {
    let node = step_node(x, &x.steps[i]).map(str::to_owned);
    let step = &mut x.steps[i];
    step.completed_at = Some(now);
    step.error = Some(error.clone());
    if step.optional {
        step.status = StepStatus::Skipped;
        return;
    }
    step.status = StepStatus::Failed;
    let index = step.index;
    let why = "another step of the execution failed";
    revoke_running(x, why, effects);
    for other in &mut x.steps {
        if other.status == StepStatus::Running {
            other.status = StepStatus::Failed;
            other.error = Some(ExecError::new("REVOKED", why));
            other.completed_at = Some(now);
        }
    }
    let error = ExecError {
        node_id: node,
        step_index: Some(index),
        ..error
    };
    finish(x, status, Some(error), now);
}

fn on_reply(x: &mut Execution, reply: StepReply, now: Millis, effects: &mut Vec<Effect>) {
    if x.status != ExecStatus::Running {
        return; // ended: a late answer changes nothing
    }
    let Some(i) = x.steps.iter().position(|s| {
        s.status == StepStatus::Running && s.sent_message_id.as_ref() == Some(&reply.command_id)
    }) else {
        return; // an earlier attempt's, or the execution ended: nothing to do
    };
    if let Some(id) = &reply.reply_id {
        if !x.received_message_ids.contains(id) {
            x.received_message_ids.push(id.clone());
        }
        x.steps[i].received_message_id = Some(id.clone());
    }
    let reported = reply.progress.map(|p| p.clamp(0.0, 100.0).round() as u32);
    match reply.phase {
        ReplyPhase::Ack => {
            let step = &mut x.steps[i];
            step.progress = step.progress.max(reported.unwrap_or(0));
        }
        ReplyPhase::Result if reply.success => {
            let step = &mut x.steps[i];
            step.status = StepStatus::Completed;
            step.progress = 100;
            step.result = reply.result;
            step.completed_at = Some(now);
        }
        ReplyPhase::Result => {
            if let Some(p) = reported {
                x.steps[i].progress = p;
            }
            let error = reply
                .error
                .unwrap_or_else(|| ExecError::new("STEP_FAILED", "the node reported an error"));
            x.steps[i].result = reply.result;
            step_failed(x, i, error, ExecStatus::Failed, now, effects);
        }
    }
}

fn on_tick(x: &mut Execution, now: Millis, effects: &mut Vec<Effect>) {
    if x.status != ExecStatus::Running {
        return;
    }
    if x.timeout_at.is_some_and(|t| now >= t) {
        revoke_running(x, "the execution timed out", effects);
        let message = format!("Execution exceeded its timeout of {} s", x.timeout_seconds);
        for step in &mut x.steps {
            if step.status == StepStatus::Running {
                step.status = StepStatus::Failed;
                step.error = Some(ExecError::new("EXECUTION_TIMEOUT", message.clone()));
                step.completed_at = Some(now);
            }
        }
        finish(
            x,
            ExecStatus::Timeout,
            Some(ExecError::new("EXECUTION_TIMEOUT", message)),
            now,
        );
        return;
    }
    for i in 0..x.steps.len() {
        let step = &x.steps[i];
        if x.status != ExecStatus::Running || step.status != StepStatus::Running {
            continue;
        }
        if step_deadline(step).is_some_and(|t| now >= t) {
            let message = format!(
                "Step '{}' exceeded its timeout of {} s",
                step.name,
                step.timeout_seconds.unwrap_or_default()
            );
            if let (Some(node), Some(id)) = (step_node(x, step), &step.sent_message_id) {
                effects.push(Effect::Revoke {
                    node: node.to_owned(),
                    command_id: id.clone(),
                    reason: message.clone(),
                });
            }
            let error = ExecError::new("STEP_TIMEOUT", message);
            step_failed(x, i, error, ExecStatus::Timeout, now, effects);
        }
    }
}

/// The pending steps whose dependencies are all satisfied.
fn ready(x: &Execution) -> Vec<usize> {
    (0..x.steps.len())
        .filter(|&i| {
            let s = &x.steps[i];
            s.status == StepStatus::Pending
                && s.depends_on.iter().all(|d| {
                    x.steps
                        .iter()
                        .find(|o| o.index == *d)
                        .is_some_and(|o| o.status.satisfies())
                })
        })
        .collect()
}

/// Marks a step's new attempt started.
fn start_step(step: &mut Step, now: Millis) {
    step.status = StepStatus::Running;
    step.started_at = Some(now);
    step.completed_at = None;
    step.attempts += 1;
    step.error = None;
    step.result = None;
}

fn complete_step(step: &mut Step, result: Option<String>, now: Millis) {
    step.status = StepStatus::Completed;
    step.progress = 100;
    step.result = result;
    step.completed_at = Some(now);
}

/// Starts every step that may start; completes the execution when every
/// step is done.
fn advance(x: &mut Execution, now: Millis, effects: &mut Vec<Effect>) {
    if x.status != ExecStatus::Running {
        return;
    }
    if x.chain.is_some() {
        advance_chain(x, now, effects);
        return;
    }
    if x.dag.is_some() {
        advance_dag(x, now, effects);
        return;
    }
    loop {
        let ready = ready(x);
        if ready.is_empty() {
            break;
        }
        for i in ready {
            let exec_id = x.id.clone();
            let step = &mut x.steps[i];
            start_step(step, now);
            if step.command.is_some() {
                let id = command_id(&exec_id, step.index, step.attempts);
                step.sent_message_id = Some(id.clone());
                effects.push(Effect::Send { index: step.index });
                x.sent_message_ids.push(id);
            } else {
                complete_step(step, None, now);
            }
        }
    }
    if x.steps.iter().all(|s| s.status.satisfies()) {
        let results: Vec<serde_json::Value> = x
            .steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "index": s.index,
                    "status": s.status.as_str(),
                    "result": s.result.as_deref().and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok()),
                })
            })
            .collect();
        x.result = Some(serde_json::json!({ "steps": results }).to_string());
        finish(x, ExecStatus::Completed, None, now);
    }
}

/// Runs a DAG workflow's ready steps (`dag`): each resolves its input's
/// templates (an unresolved one fails the step), then a pure kind runs
/// here and any other is recorded as a call (`dag.calls`) and asked for
/// as an effect; independent steps are called at once.
fn advance_dag(x: &mut Execution, now: Millis, effects: &mut Vec<Effect>) {
    let defs = dag::steps_of(x);
    if defs.len() != x.steps.len() {
        let e = ExecError::new("PROGRAM_INVALID", "the workflow's steps no longer read");
        finish(x, ExecStatus::Failed, Some(e), now);
        return;
    }
    loop {
        let ready = ready(x);
        if ready.is_empty() {
            break;
        }
        for i in ready {
            if x.status != ExecStatus::Running {
                return;
            }
            let def = &defs[i];
            start_step(&mut x.steps[i], now);
            let prepared = dag::resolve(&def.input_data, &dag::scope(x))
                .and_then(|input| dag::task_of(def, &input));
            let (task, input) = match prepared {
                Ok(t) => t,
                Err(e) => {
                    let e = ExecError::new("STEP_FAILED", format!("step {}: {e}", def.id));
                    step_failed(x, i, e, ExecStatus::Failed, now, effects);
                    continue;
                }
            };
            if chain::PURE.contains(&task.handler.as_str()) {
                match chain::pure(&task.handler, &input) {
                    Ok((out, _)) => {
                        let result = dag::result_of(&def.task_type, &out).to_string();
                        complete_step(&mut x.steps[i], Some(result), now);
                    }
                    Err(e) => {
                        let e = ExecError::new("STEP_FAILED", format!("step {}: {e}", def.id));
                        step_failed(x, i, e, ExecStatus::Failed, now, effects);
                    }
                }
                continue;
            }
            let attempt = x.steps[i].attempts;
            if let Some(part) = x.dag.as_mut() {
                part.calls.push(super::record::PendingCall {
                    task: def.id.clone(),
                    attempt,
                    started_at: now,
                    resumed: false,
                });
            }
            effects.push(Effect::Call {
                task: def.id.clone(),
                attempt,
            });
        }
    }
    if x.status == ExecStatus::Running && x.steps.iter().all(|s| s.status.satisfies()) {
        x.result = Some(dag::run_result(x).to_string());
        finish(x, ExecStatus::Completed, None, now);
    }
}

/// A DAG step's call answered: its result completes it; a failure runs
/// it again while it has retries left (a new attempt), else fails it.
fn on_step_result(
    x: &mut Execution,
    task: &str,
    attempt: u32,
    outcome: chain::Outcome,
    now: Millis,
    effects: &mut Vec<Effect>,
) {
    let expected = x.dag.as_ref().is_some_and(|p| {
        p.calls
            .iter()
            .any(|c| c.task == task && c.attempt == attempt)
    });
    if x.status != ExecStatus::Running || !expected {
        return; // late: a cancelled run, or an attempt made again
    }
    let defs = dag::steps_of(x);
    let Some(i) = defs.iter().position(|d| d.id == task) else {
        return;
    };
    if x.steps[i].status != StepStatus::Running || x.steps[i].attempts != attempt {
        return;
    }
    match outcome {
        Ok((out, _)) => {
            let result = dag::result_of(&defs[i].task_type, &out).to_string();
            complete_step(&mut x.steps[i], Some(result), now);
        }
        Err(e) if x.steps[i].attempts <= defs[i].retries => {
            let step = &mut x.steps[i];
            step.status = StepStatus::Pending;
            step.error = Some(ExecError::new("STEP_FAILED", format!("step {task}: {e}")));
        }
        Err(e) => {
            let e = ExecError::new("STEP_FAILED", format!("step {task}: {e}"));
            step_failed(x, i, e, ExecStatus::Failed, now, effects);
        }
    }
}

/// Drops the recorded calls of DAG steps no longer waiting for them (the
/// step ended, failed, or the run did): their answers change nothing.
fn forget_calls(x: &mut Execution) {
    let Some(part) = x.dag.as_mut() else {
        return;
    };
    let defs: Vec<serde_json::Value> = serde_json::from_str(&part.definition).unwrap_or_default();
    part.calls.retain(|c| {
        defs.iter()
            .position(|d| d["id"] == c.task.as_str())
            .and_then(|i| x.steps.get(i))
            .is_some_and(|s| s.status == StepStatus::Running && s.attempts == c.attempt)
    });
}

/// Runs a chain execution (`chain::Runner`) until it ends or a task
/// needs an outside answer (an LLM's, an embedding, a hook's): that call
/// is recorded (`chain.call`) and asked for as an effect. A task that
/// executes tool calls fails the run with why: the routes that start
/// chains refuse those before anything is created.
fn advance_chain(x: &mut Execution, now: Millis, effects: &mut Vec<Effect>) {
    let Some(part) = x.chain.as_mut() else {
        return;
    };
    if part.call.is_some() {
        return;
    }
    let definition: serde_json::Value =
        serde_json::from_str(&part.definition).unwrap_or(serde_json::Value::Null);
    let parsed = match chain::parse(&part.chain_id, &definition) {
        Ok(c) => c,
        Err(problems) => {
            let e = ExecError::new("CHAIN_INVALID", problems.join("; "));
            finish(x, ExecStatus::Failed, Some(e), now);
            return;
        }
    };
    let next = chain::Runner {
        chain: &parsed,
        run: &mut part.run,
    }
    .advance();
    match next {
        chain::Next::Done(output) => {
            x.result = Some(
                serde_json::json!({"output": output.json(), "outputType": output.kind}).to_string(),
            );
            finish(x, ExecStatus::Completed, None, now);
        }
        chain::Next::Failed(e) => finish(
            x,
            ExecStatus::Failed,
            Some(ExecError::new("CHAIN_FAILED", e)),
            now,
        ),
        chain::Next::Call { task, .. } => {
            let handler = parsed
                .tasks
                .iter()
                .find(|t| t.id == task)
                .map(|t| t.handler.clone())
                .unwrap_or_default();
            if chain::is_called(&handler) {
                let attempt = part.run.transitions;
                part.call = Some(super::record::PendingCall {
                    task: task.clone(),
                    attempt,
                    started_at: now,
                    resumed: false,
                });
                effects.push(Effect::Call { task, attempt });
            } else {
                let e = ExecError::new(
                    "HANDLER_UNAVAILABLE",
                    format!("task {task}: handler {handler} is not one a run can call"),
                );
                finish(x, ExecStatus::Failed, Some(e), now);
            }
        }
    }
}

/// Whether a restarted actor has attempts to make again.
pub fn needs_resume(x: &Execution) -> bool {
    !in_flight(x).is_empty() || !pending_calls(x).is_empty()
}

/// Marks every attempt in flight as resumed: the chain's pending call,
/// the DAG steps' calls and their steps, and steps whose command was
/// sent but not answered.
fn mark_resumed(x: &mut Execution) {
    if x.status != ExecStatus::Running {
        return;
    }
    if let Some(call) = x.chain.as_mut().and_then(|c| c.call.as_mut()) {
        call.resumed = true;
    }
    let defs = dag::steps_of(x);
    if let Some(part) = x.dag.as_mut() {
        for call in &mut part.calls {
            call.resumed = true;
            if let Some(step) = defs
                .iter()
                .position(|d| d.id == call.task)
                .and_then(|i| x.steps.get_mut(i))
            {
                step.resumed = true;
            }
        }
    }
    for step in &mut x.steps {
        if step.status == StepStatus::Running && step.sent_message_id.is_some() {
            step.resumed = true;
        }
    }
}

/// The calls a restarted actor makes again: the chain's pending call, or
/// every DAG step's in flight.
pub fn pending_calls(x: &Execution) -> Vec<Effect> {
    if x.status != ExecStatus::Running {
        return Vec::new();
    }
    let chain = x.chain.as_ref().and_then(|c| c.call.as_ref());
    let dag = x.dag.iter().flat_map(|d| d.calls.iter());
    chain
        .into_iter()
        .chain(dag)
        .map(|c| Effect::Call {
            task: c.task.clone(),
            attempt: c.attempt,
        })
        .collect()
}

/// A chain execution starts its run again from its first task.
fn reset_chain(x: &mut Execution) {
    if let Some(part) = x.chain.as_mut() {
        let definition: serde_json::Value =
            serde_json::from_str(&part.definition).unwrap_or(serde_json::Value::Null);
        if let Ok(c) = chain::parse(&part.chain_id, &definition) {
            let mut run = chain::ChainRun::new(&c, part.input.clone());
            run.seed = std::mem::take(&mut part.run.seed);
            run.started_secs = part.run.started_secs;
            part.run = run;
        }
        part.call = None;
    }
}

fn progress(x: &Execution) -> u32 {
    if x.steps.is_empty() {
        return if x.status == ExecStatus::Completed {
            100
        } else {
            0
        };
    }
    let sum: u32 = x
        .steps
        .iter()
        .map(|s| {
            if s.status.satisfies() {
                100
            } else {
                s.progress.min(100)
            }
        })
        .sum();
    (f64::from(sum) / x.steps.len() as f64).round() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execution::record::StepCommand;

    fn step(index: u32, depends_on: &[u32], optional: bool) -> Step {
        Step {
            index,
            name: format!("step {index}"),
            description: None,
            status: StepStatus::Pending,
            progress: 0,
            command: Some(StepCommand {
                kind: "system.healthCheck".into(),
                resource_type: "node".into(),
                resource_id: "n".into(),
                data: "{}".into(),
            }),
            node_id: Some("n".into()),
            started_at: None,
            completed_at: None,
            timeout_seconds: Some(10),
            result: None,
            error: None,
            sent_message_id: None,
            received_message_id: None,
            depends_on: depends_on.to_vec(),
            optional,
            attempts: 0,
            extra: String::new(),
            resumed: false,
        }
    }

    fn exec(steps: Vec<Step>) -> Execution {
        Execution {
            id: "x".into(),
            execution_id: "x".into(),
            name: "x".into(),
            description: None,
            category: "maintenance".into(),
            kind: "check".into(),
            status: ExecStatus::Pending,
            progress: 0,
            parent_execution_id: None,
            child_execution_ids: vec![],
            steps,
            resource_type: None,
            resource_id: None,
            node_id: None,
            involved_node_ids: vec![],
            started_at: None,
            completed_at: None,
            timeout_seconds: 100,
            timeout_at: None,
            result: None,
            error: None,
            sent_message_ids: vec![],
            received_message_ids: vec![],
            retry_count: 0,
            max_retries: 1,
            retry_attempts: vec![],
            extra: String::new(),
            owner: Default::default(),
            audit: Default::default(),
            chain: None,
            dag: None,
        }
    }

    /// A DAG workflow's run as the executions service makes it.
    fn dag_run(steps: serde_json::Value, vars: serde_json::Value) -> Execution {
        let defs = dag::parse(&steps).unwrap();
        let new = crate::execution::NewExecution {
            name: Some("w".into()),
            category: Some("orchestration".into()),
            kind: Some("workflow".into()),
            steps: dag::new_steps(&defs),
            dag: Some(crate::execution::DagPart {
                workflow_id: "w".into(),
                definition: steps.to_string(),
                vars: vars.to_string(),
                calls: vec![],
            }),
            ..Default::default()
        };
        crate::execution::create(new, Default::default(), "u").unwrap()
    }

    fn calls(effects: &[Effect]) -> Vec<(String, u32)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Call { task, attempt } => Some((task.clone(), *attempt)),
                _ => None,
            })
            .collect()
    }

    fn answer(task: &str, attempt: u32, outcome: chain::Outcome) -> Event {
        Event::ChainResult {
            task: task.into(),
            attempt,
            outcome,
            duration_ns: 1,
        }
    }

    fn text(s: &str) -> chain::Outcome {
        Ok((
            chain::Data::new("string", &serde_json::json!(s)),
            "ok".into(),
        ))
    }

    /// A restarted actor resumes what was in flight, under the same
    /// attempts, and the step records say so; nothing else is marked.
    #[test]
    fn a_resume_makes_the_calls_in_flight_again_and_marks_them() {
        use serde_json::json;
        let hook = json!({"name": "h", "tool_name": "t"});
        let mut x = dag_run(
            json!([
                {"id": "A", "task_type": "hook", "hook": hook},
                {"id": "B", "task_type": "echo"},
                {"id": "C", "task_type": "hook", "hook": hook, "depends_on": ["A"]}
            ]),
            json!({}),
        );
        apply(&mut x, Event::Start { force: false }, 1).unwrap();
        assert!(needs_resume(&x));
        let e = apply(&mut x, Event::Resume, 2).unwrap();
        assert_eq!(calls(&e), [("A".to_owned(), 1)], "the same attempt");
        let marked: Vec<bool> = x.steps.iter().map(|s| s.resumed).collect();
        assert_eq!(marked, [true, false, false]);
        assert!(x.dag.as_ref().unwrap().calls[0].resumed);
        // The next step's call is a fresh one.
        let e = apply(&mut x, answer("A", 1, text("a")), 3).unwrap();
        assert_eq!(calls(&e), [("C".to_owned(), 1)]);
        assert!(!x.dag.as_ref().unwrap().calls[0].resumed);
        apply(&mut x, answer("C", 1, text("c")), 4).unwrap();
        assert_eq!(x.status, ExecStatus::Completed);
        assert!(x.steps[0].resumed && !x.steps[2].resumed);
        assert!(!needs_resume(&x));
        // A node command sent but unanswered is sent again, marked.
        let mut x = exec(vec![step(0, &[], false)]);
        apply(&mut x, Event::Start { force: false }, 1).unwrap();
        let e = apply(&mut x, Event::Resume, 2).unwrap();
        assert_eq!(sends(&e), [0]);
        assert!(x.steps[0].resumed);
        // A retry of the execution starts its steps afresh.
        apply(&mut x, Event::Cancel { reason: None }, 3).unwrap();
        apply(&mut x, Event::Start { force: true }, 4).unwrap();
        assert!(!x.steps[0].resumed);
    }

    /// A chain's state unit of the attempt resumed says so.
    #[test]
    fn a_resumed_chain_call_marks_its_state_unit() {
        use serde_json::json;
        let definition = json!({"id": "c", "tasks": [
            {"id": "greet", "handler": "noop",
             "transition": {"branches": [{"operator": "default", "goto": "ask"}]}},
            {"id": "ask", "handler": "raw_string", "execute_config": {"model": "m"},
             "transition": {"branches": [{"operator": "default", "goto": "end"}]}}]});
        let parsed = chain::parse("c", &definition).unwrap();
        let input = chain::Data::new("string", &json!("hi"));
        let new = crate::execution::NewExecution {
            name: Some("c".into()),
            category: Some("chain".into()),
            kind: Some("task-chain".into()),
            chain: Some(crate::execution::ChainPart {
                chain_id: "c".into(),
                definition: definition.to_string(),
                input: input.clone(),
                run: chain::ChainRun::new(&parsed, input),
                call: None,
            }),
            ..Default::default()
        };
        let mut x = crate::execution::create(new, Default::default(), "u").unwrap();
        let e = apply(&mut x, Event::Start { force: false }, 1).unwrap();
        let (task, attempt) = calls(&e).remove(0);
        assert_eq!(task, "ask");
        let e = apply(&mut x, Event::Resume, 2).unwrap();
        assert_eq!(calls(&e), [(task.clone(), attempt)]);
        apply(&mut x, answer(&task, attempt, text("hello")), 3).unwrap();
        assert_eq!(x.status, ExecStatus::Completed);
        let state = &x.chain.as_ref().unwrap().run.state;
        let marked: Vec<(&str, bool)> = state
            .iter()
            .map(|u| (u.task_id.as_str(), u.resumed))
            .collect();
        assert_eq!(marked, [("greet", false), ("ask", true)]);
        assert_eq!(state[1].view()["resumed"], true);
        assert!(state[0].view().get("resumed").is_none());
    }

    #[test]
    fn a_dag_workflow_fans_out_and_in_with_templates() {
        use serde_json::json;
        let hook = json!({"name": "h", "tool_name": "t"});
        let mut x = dag_run(
            json!([
                {"id": "A", "task_type": "hook", "hook": hook, "input_data": {"q": "${topic}"}},
                {"id": "B", "task_type": "hook", "hook": hook, "retry_on_failure": 1},
                {"id": "E", "task_type": "echo", "input_data": {"t": "${topic}"}},
                {"id": "C", "task_type": "echo", "depends_on": ["A", "B", "E"],
                 "input_data": {"both": "${A.result} and ${B.result}", "e": "${E.result.t}"}}
            ]),
            json!({"topic": "owls"}),
        );
        let e = apply(&mut x, Event::Start { force: false }, 1).unwrap();
        // A and B are called at once; E (pure) is done already.
        assert_eq!(calls(&e), [("A".to_owned(), 1), ("B".to_owned(), 1)]);
        assert_eq!(x.steps[2].status, StepStatus::Completed);
        assert_eq!(x.dag.as_ref().unwrap().calls.len(), 2);
        assert_eq!(pending_calls(&x).len(), 2);
        // B fails once: it is called again (attempt 2).
        let e = apply(&mut x, answer("B", 1, Err("500".into())), 2).unwrap();
        assert_eq!(calls(&e), [("B".to_owned(), 2)]);
        // A stale answer of attempt 1 changes nothing.
        apply(&mut x, answer("B", 1, text("stale")), 3).unwrap();
        assert_eq!(x.steps[1].status, StepStatus::Running);
        apply(&mut x, answer("A", 1, text("alpha")), 4).unwrap();
        apply(&mut x, answer("B", 2, text("beta")), 5).unwrap();
        assert_eq!(x.status, ExecStatus::Completed);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(x.result.as_deref().unwrap()).unwrap(),
            json!({"both": "alpha and beta", "e": "owls"})
        );
        assert!(x.dag.as_ref().unwrap().calls.is_empty());
        assert_eq!(x.progress, 100);
    }

    #[test]
    fn a_dag_step_fails_on_an_unresolved_template_and_cancels_its_siblings() {
        use serde_json::json;
        let hook = json!({"name": "h", "tool_name": "t"});
        let mut x = dag_run(
            json!([
                {"id": "A", "task_type": "hook", "hook": hook},
                {"id": "C", "task_type": "echo", "input_data": {"x": "${nope}"}}
            ]),
            json!({}),
        );
        apply(&mut x, Event::Start { force: false }, 1).unwrap();
        assert_eq!(x.status, ExecStatus::Failed);
        let error = x.error.clone().unwrap();
        assert_eq!(error.message, "step C: unresolved ${nope}");
        assert_eq!(error.step_index, Some(1));
        // A's call is no longer waited for.
        assert!(x.dag.as_ref().unwrap().calls.is_empty());
        assert!(pending_calls(&x).is_empty());

        let mut x = dag_run(
            json!([{"id": "A", "task_type": "research"}, {"id": "B", "task_type": "hook", "hook": hook, "optional": true}]),
            json!({}),
        );
        apply(&mut x, Event::Start { force: false }, 1).unwrap();
        assert_eq!(
            x.error.unwrap().message,
            "step A: unsupported task_type research"
        );
        // An optional step's failure skips it.
        let mut x = dag_run(
            json!([{"id": "B", "task_type": "hook", "hook": hook, "optional": true},
                   {"id": "C", "task_type": "noop", "depends_on": ["B"]}]),
            json!({}),
        );
        apply(&mut x, Event::Start { force: false }, 1).unwrap();
        apply(&mut x, answer("B", 1, Err("down".into())), 2).unwrap();
        assert_eq!(x.steps[0].status, StepStatus::Skipped);
        assert_eq!(x.status, ExecStatus::Completed);
        // Cancel forgets the calls in flight.
        let mut x = dag_run(
            json!([{"id": "A", "task_type": "hook", "hook": hook}]),
            json!({}),
        );
        apply(&mut x, Event::Start { force: false }, 1).unwrap();
        apply(&mut x, Event::Cancel { reason: None }, 2).unwrap();
        assert_eq!(x.status, ExecStatus::Cancelled);
        assert!(x.dag.as_ref().unwrap().calls.is_empty());
    }

    fn sent(x: &Execution, i: usize) -> String {
        x.steps[i].sent_message_id.clone().expect("a command id")
    }

    fn result(x: &Execution, i: usize, success: bool) -> Event {
        Event::Reply(StepReply {
            command_id: sent(x, i),
            reply_id: Some(format!("r{i}")),
            phase: ReplyPhase::Result,
            success,
            progress: None,
            result: success.then(|| r#"{"ok":true}"#.into()),
            error: (!success).then(|| ExecError::new("BOOM", "it broke")),
        })
    }

    fn sends(effects: &[Effect]) -> Vec<u32> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { index } => Some(*index),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_dag_runs_independent_steps_together_and_completes() {
        let mut x = exec(vec![
            step(0, &[], false),
            step(1, &[], false),
            step(2, &[0, 1], false),
        ]);
        let fx = apply(&mut x, Event::Start { force: false }, 1_000).unwrap();
        assert_eq!(sends(&fx), vec![0, 1]);
        assert_eq!(x.status, ExecStatus::Running);
        assert_eq!(x.sent_message_ids.len(), 2);
        let ack = Event::Reply(StepReply {
            command_id: sent(&x, 0),
            reply_id: Some("a0".into()),
            phase: ReplyPhase::Ack,
            success: true,
            progress: Some(10.0),
            result: None,
            error: None,
        });
        assert!(apply(&mut x, ack, 1_100).unwrap().is_empty());
        assert_eq!(x.steps[0].progress, 10);
        let fx = {
            let e = result(&x, 0, true);
            apply(&mut x, e, 1_200)
        }
        .unwrap();
        assert!(fx.is_empty(), "step 2 still waits for step 1");
        assert_eq!(x.progress, 33);
        let fx = {
            let e = result(&x, 1, true);
            apply(&mut x, e, 1_300)
        }
        .unwrap();
        assert_eq!(sends(&fx), vec![2]);
        {
            let e = result(&x, 2, true);
            apply(&mut x, e, 1_400)
        }
        .unwrap();
        assert_eq!((x.status, x.progress), (ExecStatus::Completed, 100));
        assert_eq!(x.received_message_ids, vec!["a0", "r0", "r1", "r2"]);
        assert!(x.result.as_deref().unwrap().contains(r#""ok":true"#));
        assert_eq!(next_deadline(&x), None);
    }

    #[test]
    fn an_optional_failure_is_skipped_and_a_required_one_fails_the_run() {
        let mut x = exec(vec![
            step(0, &[], true),
            step(1, &[0], false),
            step(2, &[], false),
        ]);
        apply(&mut x, Event::Start { force: false }, 0).unwrap();
        let fx = {
            let e = result(&x, 0, false);
            apply(&mut x, e, 5)
        }
        .unwrap();
        assert_eq!(
            sends(&fx),
            vec![1],
            "a skipped step satisfies its dependants"
        );
        assert_eq!(x.steps[0].status, StepStatus::Skipped);
        let fx = {
            let e = result(&x, 1, false);
            apply(&mut x, e, 6)
        }
        .unwrap();
        assert_eq!(x.status, ExecStatus::Failed);
        let e = x.error.clone().unwrap();
        assert_eq!((e.code.as_str(), e.step_index), ("BOOM", Some(1)));
        assert_eq!(e.node_id.as_deref(), Some("n"));
        assert!(
            matches!(&fx[..], [Effect::Revoke { command_id, .. }] if *command_id == sent(&x, 2)),
            "the other running command is revoked: {fx:?}"
        );
        // A late result of the revoked step changes nothing.
        let before = x.clone();
        let e = result(&before, 2, true);
        apply(&mut x, e, 7).unwrap();
        assert_eq!(x, before);
    }

    #[test]
    fn timeouts_end_in_timeout() {
        let mut x = exec(vec![step(0, &[], false)]);
        apply(&mut x, Event::Start { force: false }, 0).unwrap();
        assert_eq!(next_deadline(&x), Some(10_000));
        assert!(apply(&mut x, Event::Tick, 9_999).unwrap().is_empty());
        let fx = apply(&mut x, Event::Tick, 10_000).unwrap();
        assert_eq!(x.status, ExecStatus::Timeout);
        assert_eq!(x.error.as_ref().unwrap().code, "STEP_TIMEOUT");
        assert!(matches!(&fx[..], [Effect::Revoke { .. }]));

        let mut y = exec(vec![step(0, &[], true), step(1, &[], false)]);
        y.steps[1].timeout_seconds = None;
        y.timeout_seconds = 20;
        apply(&mut y, Event::Start { force: false }, 0).unwrap();
        apply(&mut y, Event::Tick, 10_000).unwrap();
        assert_eq!(
            (y.status, y.steps[0].status),
            (ExecStatus::Running, StepStatus::Skipped),
            "an optional step's timeout skips it"
        );
        apply(&mut y, Event::Tick, 20_000).unwrap();
        assert_eq!(y.status, ExecStatus::Timeout);
        assert_eq!(y.error.as_ref().unwrap().code, "EXECUTION_TIMEOUT");
    }

    #[test]
    fn cancel_retry_and_force() {
        let mut x = exec(vec![step(0, &[], false), step(1, &[0], false)]);
        assert!(apply(&mut x, Event::Cancel { reason: None }, 0).is_ok());
        assert_eq!(x.status, ExecStatus::Cancelled);
        assert!(apply(&mut x, Event::Cancel { reason: None }, 0).is_err());
        assert!(apply(&mut x, Event::Start { force: false }, 0).is_err());
        let fx = apply(&mut x, Event::Start { force: true }, 10).unwrap();
        assert_eq!(sends(&fx), vec![0]);
        let first = sent(&x, 0);
        assert!(apply(&mut x, Event::Start { force: false }, 10).is_err());
        let fx = apply(
            &mut x,
            Event::Cancel {
                reason: Some("stop it".into()),
            },
            20,
        )
        .unwrap();
        assert!(matches!(&fx[..], [Effect::Revoke { command_id, .. }] if *command_id == first));
        assert_eq!(x.error.as_ref().unwrap().code, "USER_CANCELLED");
        assert_eq!(x.error.as_ref().unwrap().message, "stop it");
        assert!(
            apply(&mut x, Event::Retry { reset_steps: true }, 30).is_err(),
            "a cancelled run is restarted with force, not retried"
        );

        let mut y = exec(vec![step(0, &[], false), step(1, &[0], false)]);
        apply(&mut y, Event::Start { force: false }, 0).unwrap();
        {
            let e = result(&y, 0, true);
            apply(&mut y, e, 1)
        }
        .unwrap();
        {
            let e = result(&y, 1, false);
            apply(&mut y, e, 2)
        }
        .unwrap();
        assert_eq!(y.status, ExecStatus::Failed);
        let failed_cmd = sent(&y, 1);
        let fx = apply(&mut y, Event::Retry { reset_steps: false }, 3).unwrap();
        assert_eq!(sends(&fx), vec![1], "only the unfinished step runs again");
        assert_ne!(sent(&y, 1), failed_cmd, "a retry is a new command");
        assert_eq!((y.retry_count, y.retry_attempts.clone()), (1, vec![3]));
        {
            let e = result(&y, 1, false);
            apply(&mut y, e, 4)
        }
        .unwrap();
        assert!(
            apply(&mut y, Event::Retry { reset_steps: true }, 5)
                .unwrap_err()
                .contains("maximum of 1")
        );
    }

    #[test]
    fn command_ids_are_stable_per_attempt() {
        assert_eq!(command_id("x", 0, 1), command_id("x", 0, 1));
        assert_ne!(command_id("x", 0, 1), command_id("x", 0, 2));
        assert_ne!(command_id("x", 0, 1), command_id("x", 1, 1));
        let mut x = exec(vec![step(0, &[], false)]);
        x.steps[0].command = None;
        apply(&mut x, Event::Start { force: false }, 0).unwrap();
        assert_eq!(
            x.status,
            ExecStatus::Completed,
            "a step without a command completes"
        );
        assert!(in_flight(&x).is_empty());
    }
}
