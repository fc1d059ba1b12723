//! Workflows (WORKFLOWS.md §1): stored programs that executions run. One
//! record behind three dialects: a contenox task chain, a neuronest
//! workflow, a vareon neosyntis workflow. A plain record written through
//! `catalog.rs`; keyed per organisation by its `key` (a contenox chain's
//! client-chosen id, else a Warden-made UUID).
//!
//! A chain is kept as the client sent it (WORKFLOWS.md §4 A: loose tasks
//! and unknown fields round-trip), checked here only for what a later
//! run or another dialect must be able to read: an object whose `tasks`
//! is an array of objects with string ids, and whose branches are arrays.
//! What a run needs beyond that (handlers, targets, operators) is checked
//! when a run starts.

use serde_json::{Map, Value, json};
use warden_storage::{Record, new_uuid};

use crate::rules::MAX_SHORT;
use crate::{Audit, DomainError, Owned, Owner};

warden_storage::first_layout!(Workflow);

/// The largest chain a client may store (its JSON text).
pub const MAX_PROGRAM_BYTES: usize = 512 * 1024;

/// What a workflow runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Program {
    /// A contenox task chain: its definition as JSON object text, without
    /// its `id` (the workflow's key).
    Chain(String),
    /// Vareon's `steps` as sent, when they are not a chain's tasks: run
    /// as a chain when they are a list of step strings (see
    /// [`steps_chain`]), else a trigger fails saying why.
    Steps(String),
    /// A DAG workflow (neuronest's, or vareon's steps with `task_type` or
    /// `depends_on`): its steps as a JSON array's text (`crate::dag`).
    Dag(String),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Workflow {
    pub id: String,
    /// Unique in the organisation: a chain's id (a Warden-made UUID for
    /// workflows made elsewhere).
    pub key: String,
    /// Vareon's and neuronest's name (a chain's is its key).
    pub name: String,
    pub description: String,
    pub program: Program,
    /// The status a vareon client wrote, shown until the first run.
    pub status: String,
    /// The latest run's execution.
    pub last_execution: Option<String>,
    pub owner: Owner,
    pub audit: Audit,
}

/// Vareon's `steps` (a JSON string): a JSON array of contenox tasks (each
/// with a `handler`) is a chain; of objects with `task_type` or
/// `depends_on` a DAG; anything else is kept as sent.
pub fn program_of_steps(steps: &str) -> Program {
    match serde_json::from_str::<Value>(steps) {
        Ok(Value::Array(tasks))
            if !tasks.is_empty() && tasks.iter().all(|t| t.get("handler").is_some()) =>
        {
            Program::Chain(json!({ "tasks": tasks }).to_string())
        }
        Ok(v) if crate::dag::looks_like_dag(&v) => Program::Dag(steps.to_owned()),
        _ => Program::Steps(steps.to_owned()),
    }
}

/// A chain from a list of step strings (WORKFLOWS.md §1 rule 3), run in
/// order: `hook:<name>/<tool>` calls a hook's tool, `chain:<id>` runs a
/// stored chain as a child run, `function:<name>` a stored JavaScript
/// function, any other text is a labelled step that passes its input on.
/// Anything but a list of strings is not a program.
pub fn steps_chain(steps: &str) -> Result<Value, String> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(steps) else {
        return Err("steps is not a JSON list of steps or tasks".into());
    };
    if items.is_empty() {
        return Err("steps is empty".into());
    }
    let mut tasks = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(text) = item.as_str() else {
            return Err(format!("step {i} is not a string"));
        };
        let next = if i + 1 < items.len() {
            format!("step{}", i + 1)
        } else {
            "end".into()
        };
        let mut task = json!({"id": format!("step{i}"), "description": text,
            "transition": {"branches": [{"operator": "default", "goto": next}]}});
        if let Some(target) = text.strip_prefix("hook:") {
            let (name, tool) = target
                .split_once('/')
                .ok_or_else(|| format!("step {i}: hook steps are hook:<name>/<tool>"))?;
            task["handler"] = json!("hook");
            task["hook"] = json!({"name": name, "tool_name": tool});
        } else if let Some(id) = text.strip_prefix("chain:") {
            task["handler"] = json!("chain");
            task["chain"] = json!({ "id": id });
        } else if let Some(name) = text.strip_prefix("function:") {
            task["handler"] = json!("function");
            task["function"] = json!({ "name": name });
        } else {
            task["handler"] = json!("noop");
        }
        tasks.push(task);
    }
    Ok(json!({ "tasks": tasks }))
}

fn invalid(m: String) -> DomainError {
    DomainError::Invalid(vec![m])
}

/// Checks a chain definition for storing (see the module's notes) and
/// returns its key and the program.
pub fn chain_from(mut body: Map<String, Value>) -> Result<(String, String, Program), DomainError> {
    let key = match body.remove("id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(invalid("id is required".into()));
        }
        Some(_) => return Err(invalid("id must be a string".into())),
    };
    let mut problems = Vec::new();
    if key.chars().count() > MAX_SHORT || key.contains('/') || key.chars().any(char::is_control) {
        problems.push(format!(
            "id must be at most {MAX_SHORT} characters, without '/' or control characters"
        ));
    }
    let description = match body.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            problems.push("description must be a string".into());
            String::new()
        }
    };
    if body
        .get("debug")
        .is_some_and(|d| !d.is_boolean() && !d.is_null())
    {
        problems.push("debug must be a boolean".into());
    }
    if body
        .get("token_limit")
        .is_some_and(|t| !t.is_null() && !t.is_i64())
    {
        problems.push("token_limit must be an integer".into());
    }
    match body.get("tasks") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tasks)) => {
            for (i, t) in tasks.iter().enumerate() {
                let Some(t) = t.as_object() else {
                    problems.push(format!("tasks[{i}] must be an object"));
                    continue;
                };
                if t.get("id").is_some_and(|id| !id.is_string()) {
                    problems.push(format!("tasks[{i}].id must be a string"));
                }
                if let Some(tr) = t.get("transition").filter(|v| !v.is_null()) {
                    let branches_ok = tr
                        .get("branches")
                        .is_none_or(|b| b.is_null() || b.is_array());
                    if !tr.is_object() || !branches_ok {
                        problems.push(format!(
                            "tasks[{i}].transition must be an object whose branches are an array"
                        ));
                    }
                }
            }
        }
        Some(_) => problems.push("tasks must be an array".into()),
    }
    if !problems.is_empty() {
        return Err(DomainError::Invalid(problems));
    }
    let text = Value::Object(body).to_string();
    if text.len() > MAX_PROGRAM_BYTES {
        return Err(invalid(format!(
            "the chain is larger than {} KiB",
            MAX_PROGRAM_BYTES / 1024
        )));
    }
    Ok((key, description, Program::Chain(text)))
}

impl Workflow {
    pub fn new(
        key: String,
        description: String,
        program: Program,
        owner: Owner,
        by: &str,
    ) -> Workflow {
        Workflow {
            id: new_uuid(),
            name: key.clone(),
            key,
            description,
            program,
            status: String::new(),
            last_execution: None,
            owner,
            audit: Audit::new(by),
        }
    }

    /// The chain a run of a chain-shaped program takes: a chain's, or one
    /// made of step strings (a DAG runs as itself: see [`Self::dag`]).
    pub fn runnable(&self) -> Result<Value, String> {
        match &self.program {
            Program::Chain(_) => Ok(self.chain_view()),
            Program::Steps(steps) => steps_chain(steps),
            Program::Dag(_) => Err("a DAG workflow does not run as a chain".into()),
        }
    }

    /// A DAG program's steps as stored (`None` for a chain's program).
    pub fn dag(&self) -> Option<Value> {
        match &self.program {
            Program::Dag(steps) => Some(serde_json::from_str(steps).unwrap_or(Value::Null)),
            _ => None,
        }
    }

    /// Vareon's `steps`: a chain's tasks as JSON text, or what was sent.
    pub fn steps_text(&self) -> String {
        match &self.program {
            Program::Chain(_) => self.chain_view()["tasks"].to_string(),
            Program::Steps(s) | Program::Dag(s) => s.clone(),
        }
    }

    /// Neuronest's `steps`: a DAG's as stored; a chain's tasks each
    /// depending on the one before (best effort).
    pub fn dag_steps(&self) -> Value {
        match &self.program {
            Program::Dag(steps) => serde_json::from_str(steps).unwrap_or_else(|_| json!([])),
            _ => Value::Array(crate::dag::steps_of_chain(&self.chain_view())),
        }
    }

    /// The chain as contenox shows it: its definition with its `id`.
    pub fn chain_view(&self) -> Value {
        let mut v: Value = match &self.program {
            Program::Chain(text) => {
                serde_json::from_str(text).unwrap_or_else(|_| Value::Object(Map::new()))
            }
            // Best effort: step strings as the chain they run as.
            Program::Steps(steps) => steps_chain(steps).unwrap_or_else(|_| json!({})),
            // Best effort: a DAG's steps in order, chained by `default`.
            Program::Dag(steps) => serde_json::from_str(steps)
                .ok()
                .and_then(|v| crate::dag::parse(&v).ok())
                .map_or_else(|| json!({}), |s| crate::dag::chain_of_steps(&s)),
        };
        if let Value::Object(m) = &mut v {
            m.insert("id".into(), Value::String(self.key.clone()));
            m.entry("description")
                .or_insert_with(|| Value::String(self.description.clone()));
            m.entry("tasks").or_insert_with(|| Value::Array(Vec::new()));
        }
        v
    }
}

impl Record for Workflow {
    const COLLECTION: &'static str = "workflows";
    fn id(&self) -> &str {
        &self.id
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![("key", format!("{}/{}", self.owner.org_id, self.key))]
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        crate::created_order(&self.owner.org_id, self.audit.created_at)
    }
}

impl crate::catalog::Plain for Workflow {
    const KIND: &'static str = "Task chain";
    fn audit(&self) -> &Audit {
        &self.audit
    }
    fn audit_mut(&mut self) -> &mut Audit {
        &mut self.audit
    }
}

impl Owned for Workflow {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// A live workflow of `org` by its key.
pub fn by_key(
    store: &warden_storage::Store,
    org: &str,
    key: &str,
) -> Result<Option<Workflow>, DomainError> {
    Ok(store
        .get_by_unique::<Workflow>("key", &format!("{org}/{key}"))?
        .filter(|w| !w.is_deleted()))
}

/// Stores a chain: a new workflow, or (same key in the organisation)
/// the replacement of the existing one's program, as the original's
/// key-value put does. Returns the workflow and whether it is new.
pub async fn put_chain(
    store: &warden_storage::Store,
    owner: Owner,
    by: &str,
    key: String,
    description: String,
    program: Program,
) -> Result<(Workflow, bool), DomainError> {
    if let Some(existing) = by_key(store, &owner.org_id, &key)? {
        let w = replace_chain(store, &existing.id, by, &description, &program).await?;
        return Ok((w, false));
    }
    let w = Workflow::new(key, description, program, owner, by);
    match crate::catalog::create(store, w.clone()).await {
        Ok(w) => Ok((w, true)),
        // Another request stored the same key meanwhile: replace it.
        Err(DomainError::Conflict { .. }) => {
            let existing = by_key(store, &w.owner.org_id, &w.key)?.ok_or_else(|| {
                DomainError::Unavailable("the chain changed meanwhile; try again".into())
            })?;
            let w = replace_chain(store, &existing.id, by, &w.description, &w.program).await?;
            Ok((w, false))
        }
        Err(e) => Err(e),
    }
}

/// Replaces a stored workflow's description and program.
pub async fn replace_chain(
    store: &warden_storage::Store,
    id: &str,
    by: &str,
    description: &str,
    program: &Program,
) -> Result<Workflow, DomainError> {
    crate::catalog::update::<Workflow>(store, id, by, |w| {
        description.clone_into(&mut w.description);
        w.program = program.clone();
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(v: Value) -> Result<(String, String, Program), DomainError> {
        chain_from(v.as_object().unwrap().clone())
    }

    #[test]
    fn chains_are_checked_loosely_and_round_trip() {
        let body = json!({"id": "triage", "description": "d", "debug": true, "token_limit": 0,
            "custom": {"x": 1},
            "tasks": [{"id": "a", "handler": "noop", "model": "m", "transition": {"branches": [{"operator": "default", "goto": "end"}]}},
                      {"id": "b"}]});
        let (key, description, program) = chain(body.clone()).unwrap();
        assert_eq!((key.as_str(), description.as_str()), ("triage", "d"));
        let w = Workflow::new(key, description, program, Owner::default(), "u");
        assert_eq!(w.chain_view(), body, "every field comes back");

        for (bad, says) in [
            (json!({"tasks": []}), "id is required"),
            (json!({"id": "a/b"}), "'/'"),
            (
                json!({"id": "x", "tasks": {"id": "t"}}),
                "tasks must be an array",
            ),
            (
                json!({"id": "x", "tasks": [1]}),
                "tasks[0] must be an object",
            ),
            (json!({"id": "x", "tasks": [{"id": 3}]}), "tasks[0].id"),
            (
                json!({"id": "x", "tasks": [{"transition": {"branches": {"goto": "a"}}}]}),
                "branches",
            ),
            (
                json!({"id": "x", "debug": "yes", "token_limit": 1.5}),
                "debug",
            ),
        ] {
            let Err(DomainError::Invalid(p)) = chain(bad.clone()) else {
                panic!("{bad} should be refused")
            };
            assert!(p.join("; ").contains(says), "{bad}: {p:?}");
        }
    }
}
