//! DAG workflows' definitions (WORKFLOWS.md §1, neuronest's and
//! vareon's): steps that name the steps they depend on. Read and checked
//! here for storing and for runs; how a run goes is the execution's
//! (`warden_actors::execution::dag`).

use std::collections::HashSet;

use serde_json::{Map, Value, json};

/// Steps a workflow may have.
pub const MAX_STEPS: usize = 256;

/// The contenox handler a step kind runs as: `text_generation` is a
/// `raw_string` prompt, `noop` and `echo` hand their input on, any other
/// kind is a handler's own name.
pub fn handler_of(task_type: &str) -> &str {
    match task_type {
        "text_generation" => "raw_string",
        "noop" | "echo" => "noop",
        other => other,
    }
}

/// One step of a DAG workflow, as read from its definition.
#[derive(Debug, Clone, PartialEq)]
pub struct DagStep {
    pub id: String,
    pub name: String,
    pub task_type: String,
    pub input_data: Value,
    pub depends_on: Vec<String>,
    /// Seconds an attempt may take (`timeout`).
    pub timeout_seconds: Option<u64>,
    /// A failure skips the step instead of failing the run.
    pub optional: bool,
    /// Attempts after the first (`retry_on_failure`, as contenox names it).
    pub retries: u32,
    /// The step as sent (its kind's own fields: `hook`, `function`, ...).
    pub raw: Map<String, Value>,
}

/// Reads and checks a DAG's steps: a non-empty list of objects with
/// distinct non-empty `id`s and a `task_type`, dependencies that name
/// other steps and form no cycle. Every problem names its step.
pub fn parse(steps: &Value) -> Result<Vec<DagStep>, Vec<String>> {
    let mut problems = Vec::new();
    let Some(items) = steps.as_array() else {
        return Err(vec!["steps must be a list of steps".into()]);
    };
    if items.is_empty() {
        problems.push("steps: a workflow needs at least one step".into());
    }
    if items.len() > MAX_STEPS {
        problems.push(format!("steps: at most {} steps are allowed", MAX_STEPS));
    }
    let mut out = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let Some(raw) = item.as_object() else {
            problems.push(format!("steps[{i}] must be an object"));
            continue;
        };
        let id = match raw.get("id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => {
                problems.push(format!("steps[{i}].id must be a non-empty string"));
                continue;
            }
        };
        let name = format!("step {id}");
        if !seen.insert(id.clone()) {
            problems.push(format!("{name}: the id is used twice"));
        }
        let task_type = match raw.get("task_type") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => {
                problems.push(format!("{name}: task_type must be a non-empty string"));
                String::new()
            }
        };
        let depends_on = match raw.get("depends_on") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(d)) if d.iter().all(Value::is_string) => d
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(_) => {
                problems.push(format!("{name}: depends_on must be a list of step ids"));
                Vec::new()
            }
        };
        let timeout_seconds = match raw.get("timeout") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(t) if t > 0.0 && t <= 86_400.0 => Some(t.ceil() as u64),
                _ => {
                    problems.push(format!(
                        "{name}: timeout must be a number of seconds (at most a day)"
                    ));
                    None
                }
            },
        };
        let optional = match raw.get("optional") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                problems.push(format!("{name}: optional must be a boolean"));
                false
            }
        };
        let retries = match raw.get("retry_on_failure") {
            None | Some(Value::Null) => 0,
            Some(v) => match v.as_u64() {
                Some(n) if n <= 100 => n as u32,
                _ => {
                    problems.push(format!(
                        "{name}: retry_on_failure must be a whole number up to 100"
                    ));
                    0
                }
            },
        };
        out.push(DagStep {
            name: raw
                .get("name")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or(&id)
                .to_owned(),
            id,
            task_type,
            input_data: raw.get("input_data").cloned().unwrap_or_else(|| json!({})),
            depends_on,
            timeout_seconds,
            optional,
            retries,
            raw: raw.clone(),
        });
    }
    for s in &out {
        for d in &s.depends_on {
            if *d == s.id {
                problems.push(format!("step {}: it depends on itself", s.id));
            } else if !seen.contains(d) {
                problems.push(format!(
                    "step {}: depends_on names {d}, which is not a step of the workflow",
                    s.id
                ));
            }
        }
    }
    if problems.is_empty() {
        // Kahn's algorithm: whatever never becomes ready is on a cycle.
        let mut done: HashSet<&str> = HashSet::new();
        loop {
            let ready: Vec<&str> = out
                .iter()
                .filter(|s| {
                    !done.contains(s.id.as_str())
                        && s.depends_on.iter().all(|d| done.contains(d.as_str()))
                })
                .map(|s| s.id.as_str())
                .collect();
            if ready.is_empty() {
                break;
            }
            done.extend(ready);
        }
        if done.len() < out.len() {
            let cyclic: Vec<&str> = out
                .iter()
                .map(|s| s.id.as_str())
                .filter(|id| !done.contains(id))
                .collect();
            problems.push(format!(
                "steps: the dependencies of {} form a cycle",
                cyclic.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Whether a list of steps is a DAG's (objects with `task_type` or
/// `depends_on`), as vareon's `steps` string may be.
pub fn looks_like_dag(steps: &Value) -> bool {
    steps.as_array().is_some_and(|items| {
        !items.is_empty()
            && items.iter().all(|s| {
                s.is_object() && (s.get("task_type").is_some() || s.get("depends_on").is_some())
            })
    })
}

/// A chain's tasks as DAG steps, for the dialects that show steps: each
/// depends on the one before (best effort, WORKFLOWS.md §1 rule 3).
pub fn steps_of_chain(chain: &Value) -> Vec<Value> {
    let tasks = chain["tasks"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::with_capacity(tasks.len());
    let mut previous: Option<String> = None;
    for t in tasks {
        let id = t["id"].as_str().unwrap_or_default().to_owned();
        let mut step = json!({"id": id, "name": t["description"].as_str().filter(|d| !d.is_empty()).unwrap_or(&id),
            "task_type": t["handler"], "input_data": {}});
        if let Some(p) = &previous {
            step["depends_on"] = json!([p]);
        }
        for k in ["hook", "function", "chain", "execute_config"] {
            if let Some(v) = t.get(k) {
                step[k] = v.clone();
            }
        }
        previous = Some(id);
        out.push(step);
    }
    out
}

/// A DAG's steps as a contenox chain, for `/taskchains` (best effort):
/// each step in definition order, chained by `default` branches.
pub fn chain_of_steps(steps: &[DagStep]) -> Value {
    let tasks: Vec<Value> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let next = steps.get(i + 1).map_or("end", |n| n.id.as_str());
            let handler = handler_of(&s.task_type);
            let mut task = json!({"id": s.id, "description": s.name, "handler": handler,
                "transition": {"branches": [{"operator": "default", "goto": next}]}});
            for k in ["hook", "function", "chain", "execute_config"] {
                if let Some(v) = s.raw.get(k) {
                    task[k] = v.clone();
                }
            }
            task
        })
        .collect();
    json!({ "tasks": tasks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(v: Value) -> String {
        parse(&v).unwrap_err().join("; ")
    }

    #[test]
    fn steps_are_checked() {
        let ok = parse(&json!([
            {"id": "a", "task_type": "noop"},
            {"id": "b", "task_type": "hook", "timeout": 1.5, "optional": true},
            {"id": "c", "task_type": "research", "depends_on": ["a", "b"], "retry_on_failure": 2}
        ]))
        .unwrap();
        assert_eq!(ok[1].timeout_seconds, Some(2));
        assert!(ok[1].optional);
        assert_eq!((ok[2].retries, ok[2].depends_on.len()), (2, 2));
        assert_eq!(ok[0].input_data, json!({}));

        assert!(problems(json!([])).contains("at least one step"));
        assert!(problems(json!({"a": 1})).contains("must be a list"));
        assert!(problems(json!([{"task_type": "noop"}])).contains("steps[0].id"));
        assert!(problems(json!([{"id": "a"}])).contains("step a: task_type"));
        assert!(
            problems(json!([{"id": "a", "task_type": "noop"}, {"id": "a", "task_type": "noop"}]))
                .contains("used twice")
        );
        assert!(
            problems(json!([{"id": "a", "task_type": "noop", "depends_on": ["zz"]}]))
                .contains("names zz")
        );
        assert!(
            problems(json!([{"id": "a", "task_type": "noop", "depends_on": ["a"]}]))
                .contains("itself")
        );
        let cycle = problems(json!([
            {"id": "a", "task_type": "noop", "depends_on": ["b"]},
            {"id": "b", "task_type": "noop", "depends_on": ["a"]},
            {"id": "c", "task_type": "noop"}
        ]));
        assert!(cycle.contains("a, b form a cycle"), "{cycle}");
        assert!(
            problems(json!([{"id": "a", "task_type": "noop", "timeout": -1}])).contains("timeout")
        );
    }

    #[test]
    fn chains_and_dags_render_as_each_other() {
        let chain = json!({"tasks": [
            {"id": "a", "handler": "noop"},
            {"id": "b", "handler": "hook", "hook": {"name": "h", "tool_name": "t"}}]});
        let steps = steps_of_chain(&chain);
        assert_eq!(steps[1]["depends_on"], json!(["a"]));
        assert_eq!(steps[1]["hook"]["name"], "h");
        let dag = parse(&json!(steps)).unwrap();
        let back = chain_of_steps(&dag);
        assert_eq!(back["tasks"][0]["transition"]["branches"][0]["goto"], "b");
        assert_eq!(back["tasks"][1]["handler"], "hook");
        assert!(looks_like_dag(&json!(steps)));
        assert!(!looks_like_dag(&json!(["hook:a/b"])));
    }
}
