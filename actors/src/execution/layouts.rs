//! The execution record's older layouts, frozen as they were stored:
//! decoding an older body reads it as its own layout and upgrades it one
//! step at a time to [`Execution`] (see `warden_storage::Versioned`).
//! Nothing but the upgrades uses these types.

use std::collections::BTreeMap;

use warden_domain::{Audit, Owner};
use warden_storage::Millis;

use super::chain::{ChainRun, Data, StateUnit};
use super::record::{
    ChainPart, DagPart, ExecError, ExecStatus, Execution, PendingCall, Step, StepCommand,
    StepStatus,
};

warden_storage::first_layout!(ExecutionV1);

/// A step before `resumed` (execution layouts 1-3).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepV1 {
    pub index: u32,
    pub name: String,
    pub description: Option<String>,
    pub status: StepStatus,
    pub progress: u32,
    pub command: Option<StepCommand>,
    /// The node as the client named it (`_id` or `nodeId`).
    pub node_id: Option<String>,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub timeout_seconds: Option<u64>,
    /// JSON text.
    pub result: Option<String>,
    pub error: Option<ExecError>,
    /// The messageId of the command of the current attempt: recorded
    /// before the command leaves, so a restart never sends a second one.
    pub sent_message_id: Option<String>,
    /// The messageId of the node's last reply to it.
    pub received_message_id: Option<String>,
    pub depends_on: Vec<u32>,
    pub optional: bool,
    /// Times this step was started; each attempt's command has its own id.
    pub attempts: u32,
    /// Whatever else the client sent for the step (JSON object text).
    pub extra: String,
}

/// A chain's state unit before `resumed` (execution layouts 2-3).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StateUnitV1 {
    pub task_id: String,
    pub handler: String,
    pub input_type: String,
    pub output_type: String,
    pub input_var: String,
    pub transition: String,
    pub duration_ns: u64,
    pub error: String,
    /// Only when the chain has `debug` set.
    pub input: Option<String>,
    pub output: Option<String>,
}

/// A chain's run before `resumed` (execution layouts 2-3).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChainRunV1 {
    pub vars: BTreeMap<String, Data>,
    /// The task to run next; `None` once the run ended.
    pub current: Option<String>,
    /// Attempts of the current task that failed.
    pub failures: u32,
    pub transitions: u32,
    pub output: Data,
    pub state: Vec<StateUnitV1>,
    /// Why the run failed, once it did.
    pub error: Option<String>,
    /// Names what the run makes (a chat completion's id), the same when
    /// it is run again.
    pub seed: String,
    /// When the run started (Unix seconds): a chat completion's `created`.
    pub started_secs: i64,
}

/// A chain part before `resumed` (execution layouts 2-3).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChainPartV1 {
    pub chain_id: String,
    /// The definition as the run started with it (JSON object text).
    pub definition: String,
    /// The chain's input, typed.
    pub input: Data,
    pub run: ChainRunV1,
    /// The outside call (an LLM's answer) the current task waits for:
    /// recorded before it is made, so a restart makes it again.
    pub call: Option<PendingCall>,
}

/// [`Execution`]'s third layout (DAG workflows, before `resumed`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExecutionV3 {
    pub id: String,
    pub execution_id: String,
    pub name: String,
    pub description: Option<String>,
    pub category: String,
    /// AIWM's `type` (`deploy-model`, ...).
    pub kind: String,
    pub status: ExecStatus,
    pub progress: u32,
    pub parent_execution_id: Option<String>,
    pub child_execution_ids: Vec<String>,
    pub steps: Vec<StepV1>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub node_id: Option<String>,
    pub involved_node_ids: Vec<String>,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub timeout_seconds: u64,
    pub timeout_at: Option<Millis>,
    /// JSON text.
    pub result: Option<String>,
    pub error: Option<ExecError>,
    pub sent_message_ids: Vec<String>,
    pub received_message_ids: Vec<String>,
    pub retry_count: u32,
    pub max_retries: u32,
    pub retry_attempts: Vec<Millis>,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
    /// Set when the execution runs a contenox chain (layout 2): its
    /// program is the chain, not the steps.
    pub chain: Option<ChainPartV1>,
    /// Set when the execution runs a DAG workflow (layout 3): its steps
    /// are the workflow's, each a call of a step kind.
    pub dag: Option<DagPart>,
}

/// [`Execution`]'s first layout (before chains).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExecutionV1 {
    pub id: String,
    pub execution_id: String,
    pub name: String,
    pub description: Option<String>,
    pub category: String,
    /// AIWM's `type` (`deploy-model`, ...).
    pub kind: String,
    pub status: ExecStatus,
    pub progress: u32,
    pub parent_execution_id: Option<String>,
    pub child_execution_ids: Vec<String>,
    pub steps: Vec<StepV1>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub node_id: Option<String>,
    pub involved_node_ids: Vec<String>,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub timeout_seconds: u64,
    pub timeout_at: Option<Millis>,
    /// JSON text.
    pub result: Option<String>,
    pub error: Option<ExecError>,
    pub sent_message_ids: Vec<String>,
    pub received_message_ids: Vec<String>,
    pub retry_count: u32,
    pub max_retries: u32,
    pub retry_attempts: Vec<Millis>,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
}

/// [`Execution`]'s second layout (chains, before DAG workflows).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExecutionV2 {
    pub id: String,
    pub execution_id: String,
    pub name: String,
    pub description: Option<String>,
    pub category: String,
    /// AIWM's `type` (`deploy-model`, ...).
    pub kind: String,
    pub status: ExecStatus,
    pub progress: u32,
    pub parent_execution_id: Option<String>,
    pub child_execution_ids: Vec<String>,
    pub steps: Vec<StepV1>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub node_id: Option<String>,
    pub involved_node_ids: Vec<String>,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub timeout_seconds: u64,
    pub timeout_at: Option<Millis>,
    /// JSON text.
    pub result: Option<String>,
    pub error: Option<ExecError>,
    pub sent_message_ids: Vec<String>,
    pub received_message_ids: Vec<String>,
    pub retry_count: u32,
    pub max_retries: u32,
    pub retry_attempts: Vec<Millis>,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
    /// Set when the execution runs a contenox chain (layout 2): its
    /// program is the chain, not the steps.
    pub chain: Option<ChainPartV1>,
}

impl warden_storage::Versioned for ExecutionV2 {
    const VERSION: u32 = 2;
    type Previous = ExecutionV1;
    fn upgrade(v: ExecutionV1) -> Self {
        ExecutionV2 {
            id: v.id,
            execution_id: v.execution_id,
            name: v.name,
            description: v.description,
            category: v.category,
            kind: v.kind,
            status: v.status,
            progress: v.progress,
            parent_execution_id: v.parent_execution_id,
            child_execution_ids: v.child_execution_ids,
            steps: v.steps,
            resource_type: v.resource_type,
            resource_id: v.resource_id,
            node_id: v.node_id,
            involved_node_ids: v.involved_node_ids,
            started_at: v.started_at,
            completed_at: v.completed_at,
            timeout_seconds: v.timeout_seconds,
            timeout_at: v.timeout_at,
            result: v.result,
            error: v.error,
            sent_message_ids: v.sent_message_ids,
            received_message_ids: v.received_message_ids,
            retry_count: v.retry_count,
            max_retries: v.max_retries,
            retry_attempts: v.retry_attempts,
            extra: v.extra,
            owner: v.owner,
            audit: v.audit,
            chain: None,
        }
    }
}

impl warden_storage::Versioned for ExecutionV3 {
    const VERSION: u32 = 3;
    type Previous = ExecutionV2;
    fn upgrade(v: ExecutionV2) -> Self {
        ExecutionV3 {
            id: v.id,
            execution_id: v.execution_id,
            name: v.name,
            description: v.description,
            category: v.category,
            kind: v.kind,
            status: v.status,
            progress: v.progress,
            parent_execution_id: v.parent_execution_id,
            child_execution_ids: v.child_execution_ids,
            steps: v.steps,
            resource_type: v.resource_type,
            resource_id: v.resource_id,
            node_id: v.node_id,
            involved_node_ids: v.involved_node_ids,
            started_at: v.started_at,
            completed_at: v.completed_at,
            timeout_seconds: v.timeout_seconds,
            timeout_at: v.timeout_at,
            result: v.result,
            error: v.error,
            sent_message_ids: v.sent_message_ids,
            received_message_ids: v.received_message_ids,
            retry_count: v.retry_count,
            max_retries: v.max_retries,
            retry_attempts: v.retry_attempts,
            extra: v.extra,
            owner: v.owner,
            audit: v.audit,
            chain: v.chain,
            dag: None,
        }
    }
}

impl warden_storage::Versioned for Execution {
    const VERSION: u32 = 4;
    type Previous = ExecutionV3;
    fn upgrade(v: ExecutionV3) -> Self {
        Execution {
            steps: v.steps.into_iter().map(Step::from).collect(),
            chain: v.chain.map(ChainPart::from),
            id: v.id,
            execution_id: v.execution_id,
            name: v.name,
            description: v.description,
            category: v.category,
            kind: v.kind,
            status: v.status,
            progress: v.progress,
            parent_execution_id: v.parent_execution_id,
            child_execution_ids: v.child_execution_ids,
            resource_type: v.resource_type,
            resource_id: v.resource_id,
            node_id: v.node_id,
            involved_node_ids: v.involved_node_ids,
            started_at: v.started_at,
            completed_at: v.completed_at,
            timeout_seconds: v.timeout_seconds,
            timeout_at: v.timeout_at,
            result: v.result,
            error: v.error,
            sent_message_ids: v.sent_message_ids,
            received_message_ids: v.received_message_ids,
            retry_count: v.retry_count,
            max_retries: v.max_retries,
            retry_attempts: v.retry_attempts,
            extra: v.extra,
            owner: v.owner,
            audit: v.audit,
            dag: v.dag,
        }
    }
}

impl From<StepV1> for Step {
    fn from(s: StepV1) -> Step {
        Step {
            index: s.index,
            name: s.name,
            description: s.description,
            status: s.status,
            progress: s.progress,
            command: s.command,
            node_id: s.node_id,
            started_at: s.started_at,
            completed_at: s.completed_at,
            timeout_seconds: s.timeout_seconds,
            result: s.result,
            error: s.error,
            sent_message_id: s.sent_message_id,
            received_message_id: s.received_message_id,
            depends_on: s.depends_on,
            optional: s.optional,
            attempts: s.attempts,
            extra: s.extra,
            resumed: false,
        }
    }
}

impl From<StateUnitV1> for StateUnit {
    fn from(u: StateUnitV1) -> StateUnit {
        StateUnit {
            task_id: u.task_id,
            handler: u.handler,
            input_type: u.input_type,
            output_type: u.output_type,
            input_var: u.input_var,
            transition: u.transition,
            duration_ns: u.duration_ns,
            error: u.error,
            input: u.input,
            output: u.output,
            resumed: false,
        }
    }
}

impl From<ChainPartV1> for ChainPart {
    fn from(p: ChainPartV1) -> ChainPart {
        let r = p.run;
        ChainPart {
            chain_id: p.chain_id,
            definition: p.definition,
            input: p.input,
            run: ChainRun {
                vars: r.vars,
                current: r.current,
                failures: r.failures,
                transitions: r.transitions,
                output: r.output,
                state: r.state.into_iter().map(StateUnit::from).collect(),
                error: r.error,
                seed: r.seed,
                started_secs: r.started_secs,
            },
            call: p.call,
        }
    }
}
