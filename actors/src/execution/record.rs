//! The record an execution actor owns: a program of steps and where each
//! stands. Generic on purpose: a step is "a command for a node" today; the
//! workflow engine adds step kinds, not a second record.

use warden_domain::{Audit, Owned, Owner};
use warden_storage::{Millis, Record};

/// Where an execution stands (AIWM §6 `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExecStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    Timeout,
}

impl ExecStatus {
    pub const ALL: [ExecStatus; 6] = [
        ExecStatus::Pending,
        ExecStatus::Running,
        ExecStatus::Completed,
        ExecStatus::Failed,
        ExecStatus::Cancelled,
        ExecStatus::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecStatus::Pending => "pending",
            ExecStatus::Running => "running",
            ExecStatus::Completed => "completed",
            ExecStatus::Failed => "failed",
            ExecStatus::Cancelled => "cancelled",
            ExecStatus::Timeout => "timeout",
        }
    }

    pub fn parse(s: &str) -> Option<ExecStatus> {
        ExecStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Nothing more happens to it unless a client starts or retries it.
    pub fn is_terminal(self) -> bool {
        !matches!(self, ExecStatus::Pending | ExecStatus::Running)
    }
}

/// Where one step stands (AIWM §6 `steps[].status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StepStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Skipped,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }

    /// Its dependants may run: completed, or an optional step given up on.
    pub fn satisfies(self) -> bool {
        matches!(self, StepStatus::Completed | StepStatus::Skipped)
    }
}

/// An error as AIWM shows it: `{code, message, details?, nodeId?, stepIndex?}`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ExecError {
    pub code: String,
    pub message: String,
    /// JSON text.
    pub details: Option<String>,
    pub node_id: Option<String>,
    pub step_index: Option<u32>,
}

impl ExecError {
    pub fn new(code: &str, message: impl Into<String>) -> ExecError {
        ExecError {
            code: code.into(),
            message: message.into(),
            ..Default::default()
        }
    }
}

/// What a step asks its node to do: a command envelope's `type`,
/// `resource` and `data`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct StepCommand {
    pub kind: String,
    pub resource_type: String,
    pub resource_id: String,
    /// JSON object text.
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Step {
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
    /// Its attempt was in flight when the run's actor last stopped (a
    /// crash, a restart) and was resumed under the same attempt
    /// (layout 4).
    pub resumed: bool,
}

/// A multi-step piece of work (AIWM §6). Written only by its
/// `ExecutionActor` once it exists.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Execution {
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
    pub steps: Vec<Step>,
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
    pub chain: Option<ChainPart>,
    /// Set when the execution runs a DAG workflow (layout 3): its steps
    /// are the workflow's, each a call of a step kind.
    pub dag: Option<DagPart>,
}

/// A chain an execution runs, and where the run stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChainPart {
    pub chain_id: String,
    /// The definition as the run started with it (JSON object text).
    pub definition: String,
    /// The chain's input, typed.
    pub input: super::chain::Data,
    pub run: super::chain::ChainRun,
    /// The outside call (an LLM's answer) the current task waits for:
    /// recorded before it is made, so a restart makes it again.
    pub call: Option<PendingCall>,
}

/// A chain task's call in flight.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PendingCall {
    pub task: String,
    /// The run's transitions when it was asked: names the attempt.
    pub attempt: u32,
    pub started_at: Millis,
    /// Made again after a restart.
    pub resumed: bool,
}

/// A DAG workflow an execution runs (WORKFLOWS.md §1): the step
/// definitions as the run started with them, the run's variables, and
/// the calls in flight. Step `i` of the execution is definition `i`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DagPart {
    /// The workflow's id (empty for a one-off run).
    pub workflow_id: String,
    /// The steps (a JSON array's text).
    pub definition: String,
    /// The run's variables: its input (a JSON object's text).
    pub vars: String,
    /// The steps' calls in flight, each recorded before it is made, so a
    /// restart makes it again under the same attempt.
    pub calls: Vec<PendingCall>,
}

/// The ordered index of executions by status, then creation time.
pub const STATUS_CREATED: &str = "status_created";
/// The ordered index of executions by category, then creation time.
pub const CATEGORY_CREATED: &str = "category_created";

/// The ordered indexes of request-bound runs (contenox `/tasks`): by the
/// request's correlation id, and all of an organisation's, by creation.
pub const BY_REQUEST: &str = "request";
pub const REQUESTS: &str = "requests";

/// The scope of an organisation's (`None`: every organisation's)
/// executions with one value (a status, a category) of an ordered index.
pub fn value_scope(org_id: Option<&str>, value: &str) -> String {
    format!("{}/{value}", warden_domain::org_scope(org_id))
}

impl Execution {
    /// The correlation id of the request that started the run, for runs
    /// a request waits on (`extra.request_id`).
    pub fn request_id(&self) -> Option<String> {
        if !self.extra.contains("request_id") {
            return None;
        }
        serde_json::from_str::<serde_json::Value>(&self.extra)
            .ok()?
            .get("request_id")?
            .as_str()
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
    }
}

impl Record for Execution {
    const COLLECTION: &'static str = "executions";
    fn id(&self) -> &str {
        &self.id
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![(
            "executionId",
            format!("{}/{}", self.owner.org_id, self.execution_id),
        )]
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    /// By creation, within the organisation and across all; by status and
    /// by category the same way (lists filter by them; the statistics are
    /// the scopes' counts).
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        let t = warden_storage::time_sort_key(self.audit.created_at);
        let org = &self.owner.org_id;
        let mut ordered = warden_domain::created_order(org, self.audit.created_at);
        for (index, value) in [
            (STATUS_CREATED, self.status.as_str()),
            (CATEGORY_CREATED, self.category.as_str()),
        ] {
            ordered.push((index, value_scope(Some(org), value), t.clone()));
            ordered.push((index, value_scope(None, value), t.clone()));
        }
        if let Some(request) = self.request_id() {
            ordered.push((BY_REQUEST, value_scope(Some(org), &request), t.clone()));
            ordered.push((REQUESTS, org.clone(), t));
        }
        ordered
    }
}

impl Owned for Execution {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

#[cfg(test)]
mod tests {
    use super::super::chain::Data;
    use super::super::layouts::{
        ChainPartV1, ChainRunV1, ExecutionV1, ExecutionV2, ExecutionV3, StateUnitV1, StepV1,
    };
    use super::*;
    use warden_storage::Versioned;

    /// The first layout as an older build stored it (same collection).
    impl Record for ExecutionV1 {
        const COLLECTION: &'static str = "executions";
        fn id(&self) -> &str {
            &self.id
        }
    }

    impl Record for ExecutionV3 {
        const COLLECTION: &'static str = "executions";
        fn id(&self) -> &str {
            &self.id
        }
    }

    fn config(dir: &tempfile::TempDir) -> warden_storage::StoreConfig {
        warden_storage::StoreConfig::new(dir.path().to_owned())
    }

    /// An execution stored before chains reads back without one.
    #[tokio::test]
    async fn layout_1_executions_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(&dir);
        let v1 = v1();
        {
            let store = warden_storage::Store::open(&config).unwrap();
            store.insert(v1).await.unwrap();
            store.close();
        }
        let store = warden_storage::Store::open(&config).unwrap();
        let read: Execution = store.get("x1").unwrap().unwrap();
        assert_eq!(read.chain, None);
        assert_eq!(
            (read.status, read.node_id.as_deref()),
            (ExecStatus::Completed, Some("n1"))
        );
    }

    /// A layout-3 execution with a step and a chain's run (written before
    /// `resumed`) reads back with every field, nothing resumed.
    #[tokio::test]
    async fn layout_3_executions_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(&dir);
        let mut v3 = ExecutionV3::upgrade(ExecutionV2::upgrade(v1()));
        v3.steps.push(StepV1 {
            index: 0,
            name: "probe".into(),
            description: None,
            status: StepStatus::Running,
            progress: 10,
            command: None,
            node_id: Some("n1".into()),
            started_at: Some(5),
            completed_at: None,
            timeout_seconds: Some(9),
            result: None,
            error: None,
            sent_message_id: Some("m1".into()),
            received_message_id: None,
            depends_on: vec![],
            optional: true,
            attempts: 2,
            extra: "{}".into(),
        });
        let input = Data::new("string", &serde_json::json!("hi"));
        v3.chain = Some(ChainPartV1 {
            chain_id: "c".into(),
            definition: "{}".into(),
            input: input.clone(),
            run: ChainRunV1 {
                vars: [("input".to_owned(), input.clone())].into(),
                current: Some("ask".into()),
                failures: 1,
                transitions: 3,
                output: input,
                state: vec![StateUnitV1 {
                    task_id: "greet".into(),
                    handler: "noop".into(),
                    input_type: "string".into(),
                    output_type: "string".into(),
                    input_var: "input".into(),
                    transition: "noop".into(),
                    duration_ns: 7,
                    error: String::new(),
                    input: Some("hi".into()),
                    output: None,
                }],
                error: None,
                seed: "s".into(),
                started_secs: 11,
            },
            call: Some(PendingCall {
                task: "ask".into(),
                attempt: 3,
                started_at: 6,
                resumed: false,
            }),
        });
        {
            let store = warden_storage::Store::open(&config).unwrap();
            store.insert(v3).await.unwrap();
            store.close();
        }
        let store = warden_storage::Store::open(&config).unwrap();
        let read: Execution = store.get("x1").unwrap().unwrap();
        let step = &read.steps[0];
        assert_eq!(
            (
                step.name.as_str(),
                step.attempts,
                step.optional,
                step.resumed
            ),
            ("probe", 2, true, false)
        );
        assert_eq!(step.sent_message_id.as_deref(), Some("m1"));
        let chain = read.chain.expect("the chain part");
        assert_eq!(chain.run.transitions, 3);
        assert_eq!(chain.run.seed, "s");
        assert_eq!(chain.run.state[0].task_id, "greet");
        assert_eq!(chain.run.state[0].input.as_deref(), Some("hi"));
        assert!(!chain.run.state[0].resumed);
        assert_eq!(chain.call.map(|c| c.attempt), Some(3));
        assert_eq!(read.dag, None);
    }

    fn v1() -> ExecutionV1 {
        ExecutionV1 {
            id: "x1".into(),
            execution_id: "e".into(),
            name: "n".into(),
            description: None,
            category: "maintenance".into(),
            kind: "check".into(),
            status: ExecStatus::Completed,
            progress: 100,
            parent_execution_id: None,
            child_execution_ids: vec![],
            steps: vec![],
            resource_type: None,
            resource_id: None,
            node_id: Some("n1".into()),
            involved_node_ids: vec!["n1".into()],
            started_at: Some(1),
            completed_at: Some(2),
            timeout_seconds: 60,
            timeout_at: None,
            result: Some("{}".into()),
            error: None,
            sent_message_ids: vec![],
            received_message_ids: vec![],
            retry_count: 0,
            max_retries: 3,
            retry_attempts: vec![],
            extra: String::new(),
            owner: Owner::default(),
            audit: Audit::new("u"),
        }
    }
}
