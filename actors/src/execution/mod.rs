//! An execution: a durable program of steps run on the fleet. Its
//! `ExecutionActor` is the only writer of its record once it runs; the
//! first version is written by the executions service at creation.
//! The transitions are in [`machine`], pure and unit-tested.

mod actor;
pub mod chain;
pub mod dag;
mod hook_call;
mod layouts;
pub mod machine;
mod record;

pub use actor::{
    BoxFuture, ChildRun, Children, Dispatch, ExecArgs, ExecHandle, ExecMsg, ExecutionActor,
    ExecutionListener, FunctionCall, Functions, Parking, error_of,
};
pub use record::{
    BY_REQUEST, CATEGORY_CREATED, ChainPart, DagPart, ExecError, ExecStatus, Execution,
    PendingCall, REQUESTS, STATUS_CREATED, Step, StepCommand, StepStatus, value_scope,
};

use warden_domain::rules::{Checks, MAX_SHORT};
use warden_domain::{Audit, Owner};
use warden_storage::new_object_id;

use crate::DomainError;

/// At most this many steps in one execution.
pub const MAX_STEPS: usize = 256;

/// The fields a client supplies for one step.
#[derive(Debug, Clone, Default)]
pub struct NewStep {
    pub index: Option<u32>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub command: Option<StepCommand>,
    pub node_id: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub depends_on: Vec<u32>,
    pub optional: bool,
    pub extra: String,
}

/// The fields a client supplies to create an execution.
#[derive(Debug, Clone, Default)]
pub struct NewExecution {
    pub execution_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub kind: Option<String>,
    pub parent_execution_id: Option<String>,
    pub steps: Vec<NewStep>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub node_id: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub max_retries: Option<u32>,
    pub extra: String,
    /// A chain to run instead of steps (contenox `/tasks`).
    pub chain: Option<ChainPart>,
    /// A DAG workflow whose steps these are (neuronest, vareon).
    pub dag: Option<DagPart>,
}

/// Re-indexes the execution records once when their indexes changed.
pub async fn ensure_indexes(
    store: &warden_storage::Store,
) -> Result<(), warden_storage::StorageError> {
    store.ensure_indexes::<Execution>().await?;
    Ok(())
}

/// Builds the first version of an execution: `pending`, every step
/// `pending`, the step graph checked (indexes distinct, dependencies
/// named and acyclic, every command with a node).
pub fn create(new: NewExecution, owner: Owner, by: &str) -> Result<Execution, DomainError> {
    let mut c = Checks::new();
    c.key("executionId", &new.execution_id, false);
    c.text("name", &new.name, true, MAX_SHORT);
    c.text("category", &new.category, true, MAX_SHORT);
    c.text("type", &new.kind, true, MAX_SHORT);
    c.text("description", &new.description, false, 4096);
    c.text("resourceType", &new.resource_type, false, MAX_SHORT);
    c.text("resourceId", &new.resource_id, false, MAX_SHORT);
    c.text("nodeId", &new.node_id, false, MAX_SHORT);
    if new.steps.len() > MAX_STEPS {
        c.fail(format!(
            "steps must contain no more than {MAX_STEPS} elements"
        ));
    }
    if new.max_retries.is_some_and(|m| m > 100) {
        c.fail("maxRetries must not be greater than 100".into());
    }
    let mut steps = Vec::with_capacity(new.steps.len());
    for (pos, s) in new.steps.into_iter().enumerate() {
        let index = s.index.unwrap_or(pos as u32);
        c.text(&format!("steps.{pos}.name"), &s.name, true, MAX_SHORT);
        if let Some(cmd) = &s.command {
            if cmd.kind.trim().is_empty() {
                c.fail(format!("steps.{pos}.command.type should not be empty"));
            }
            if s.node_id.is_none() && new.node_id.is_none() {
                c.fail(format!(
                    "steps.{pos}.nodeId is required for a step with a command (or give the execution a nodeId)"
                ));
            }
        }
        steps.push(Step {
            index,
            name: s.name.unwrap_or_default(),
            description: s.description,
            status: StepStatus::Pending,
            progress: 0,
            command: s.command,
            node_id: s.node_id,
            started_at: None,
            completed_at: None,
            timeout_seconds: s.timeout_seconds.filter(|t| *t > 0),
            result: None,
            error: None,
            sent_message_id: None,
            received_message_id: None,
            depends_on: s.depends_on,
            optional: s.optional,
            attempts: 0,
            extra: s.extra,
            resumed: false,
        });
    }
    check_graph(&steps, &mut c);
    c.finish()?;
    let mut involved: Vec<String> = Vec::new();
    for node in new
        .node_id
        .iter()
        .chain(steps.iter().filter_map(|s| s.node_id.as_ref()))
    {
        if !involved.contains(node) {
            involved.push(node.clone());
        }
    }
    let id = new_object_id();
    Ok(Execution {
        execution_id: new.execution_id.unwrap_or_else(warden_storage::new_uuid),
        id,
        name: new.name.unwrap_or_default(),
        description: new.description,
        category: new.category.unwrap_or_default(),
        kind: new.kind.unwrap_or_default(),
        status: ExecStatus::Pending,
        progress: 0,
        parent_execution_id: new.parent_execution_id,
        child_execution_ids: Vec::new(),
        steps,
        resource_type: new.resource_type,
        resource_id: new.resource_id,
        node_id: new.node_id,
        involved_node_ids: involved,
        started_at: None,
        completed_at: None,
        timeout_seconds: new.timeout_seconds.unwrap_or(3600),
        timeout_at: None,
        result: None,
        error: None,
        sent_message_ids: Vec::new(),
        received_message_ids: Vec::new(),
        retry_count: 0,
        max_retries: new.max_retries.unwrap_or(3),
        retry_attempts: Vec::new(),
        extra: new.extra,
        owner,
        audit: Audit::new(by),
        chain: new.chain,
        dag: new.dag,
    })
}

/// Indexes distinct; each dependency names another step; no cycle.
fn check_graph(steps: &[Step], c: &mut Checks) {
    let mut seen = std::collections::HashSet::new();
    for s in steps {
        if !seen.insert(s.index) {
            c.fail(format!("steps: index {} is used twice", s.index));
        }
    }
    let mut ok = true;
    for s in steps {
        for d in &s.depends_on {
            if *d == s.index {
                c.fail(format!("steps: step {} depends on itself", s.index));
                ok = false;
            } else if !seen.contains(d) {
                c.fail(format!(
                    "steps: step {} depends on step {d}, which does not exist",
                    s.index
                ));
                ok = false;
            }
        }
    }
    if !ok {
        return;
    }
    // Kahn's algorithm: whatever never becomes ready is on a cycle.
    let mut done: std::collections::HashSet<u32> = std::collections::HashSet::new();
    loop {
        let ready: Vec<u32> = steps
            .iter()
            .filter(|s| !done.contains(&s.index) && s.depends_on.iter().all(|d| done.contains(d)))
            .map(|s| s.index)
            .collect();
        if ready.is_empty() {
            break;
        }
        done.extend(ready);
    }
    if done.len() < seen.len() {
        let mut cyclic: Vec<u32> = seen.difference(&done).copied().collect();
        cyclic.sort_unstable();
        c.fail(format!(
            "steps: the dependencies of steps {cyclic:?} form a cycle"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(steps: Vec<NewStep>) -> NewExecution {
        NewExecution {
            name: Some("n".into()),
            category: Some("maintenance".into()),
            kind: Some("check".into()),
            node_id: Some("node-1".into()),
            steps,
            ..Default::default()
        }
    }

    fn step(deps: &[u32]) -> NewStep {
        NewStep {
            name: Some("s".into()),
            depends_on: deps.to_vec(),
            command: Some(StepCommand {
                kind: "system.healthCheck".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn errors(r: Result<Execution, DomainError>) -> Vec<String> {
        match r {
            Err(DomainError::Invalid(e)) => e,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_graph_checks() {
        let x = create(new(vec![step(&[]), step(&[0])]), Owner::default(), "u").unwrap();
        assert_eq!((x.timeout_seconds, x.max_retries), (3600, 3));
        assert_eq!(x.steps[1].index, 1);
        assert_eq!(x.involved_node_ids, vec!["node-1"]);
        assert!(
            errors(create(
                new(vec![step(&[1]), step(&[0])]),
                Owner::default(),
                "u"
            ))[0]
                .contains("cycle")
        );
        assert!(
            errors(create(new(vec![step(&[7])]), Owner::default(), "u"))[0]
                .contains("does not exist")
        );
        assert!(errors(create(new(vec![step(&[0])]), Owner::default(), "u"))[0].contains("itself"));
        let mut no_node = new(vec![step(&[])]);
        no_node.node_id = None;
        assert!(errors(create(no_node, Owner::default(), "u"))[0].contains("nodeId is required"));
        let blank = NewExecution::default();
        assert_eq!(
            errors(create(blank, Owner::default(), "u")),
            [
                "name must be a string",
                "category must be a string",
                "type must be a string"
            ]
        );
    }
}
