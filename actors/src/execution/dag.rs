//! DAG workflows (WORKFLOWS.md §1, neuronest's and vareon's): steps that
//! name the steps they depend on, run as soon as those are done, and
//! independent ones at once. A step's kind is its `task_type` (rule 6),
//! run by the same handlers as a contenox chain's tasks: a step is turned
//! into a one-task chain task here, and the execution actor makes its
//! call as it makes a chain task's. Nothing here does I/O.
//!
//! Step inputs are templates (rule 4): `${name}` is a run variable (the
//! run's input), `${step.result.field}` a field of an earlier step's
//! result (a step id shadows a variable of the same name). A string that
//! is a single `${...}` becomes the value itself (an object stays an
//! object); inside longer text a value is written as text (strings as
//! they are, anything else as JSON). A reference that does not resolve
//! fails the step, naming it.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value, json};

pub use warden_domain::dag::{DagStep, parse};

use super::chain::{self, Data, Task};
use super::record::{Execution, StepStatus};

/// The execution steps of a DAG's steps: step `i` is definition `i`,
/// named by it, depending on the indexes of the steps it names. A step's
/// `timeout` bounds its call (not the step record), so that a retry has
/// the whole of it again.
pub fn new_steps(steps: &[DagStep]) -> Vec<super::NewStep> {
    let index_of = |id: &str| steps.iter().position(|s| s.id == id).unwrap_or(0) as u32;
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| super::NewStep {
            index: Some(i as u32),
            name: Some(s.name.clone()),
            description: Some(format!("{} ({})", s.id, s.task_type)),
            depends_on: s.depends_on.iter().map(|d| index_of(d)).collect(),
            optional: s.optional,
            ..Default::default()
        })
        .collect()
}

/// The contenox task that runs a step of `task_type` on `input_data`
/// (rule 6), the type of the input it takes and the input:
/// `text_generation` asks the LLM with `input_data.prompt` (a
/// `raw_string` task); `noop` and `echo` hand the input on; `hook`,
/// `function` and `chain` take their target from the step's own field
/// of that name (as a contenox task does); a contenox handler name runs
/// that handler, a prompted one on `input_data.prompt`. `extra` carries
/// the step's own fields (`execute_config`, `hook`, ...).
pub fn step_task(
    task_type: &str,
    input_data: &Value,
    extra: &Map<String, Value>,
) -> Result<(Value, &'static str, Value), String> {
    let handler = match chain::HANDLERS
        .iter()
        .find(|k| **k == warden_domain::dag::handler_of(task_type))
    {
        Some(k) if chain::PURE.contains(k) || chain::is_called(k) => *k,
        _ => return Err(format!("unsupported task_type {task_type}")),
    };
    let (kind, input) = if chain::PROMPTED.contains(&handler) {
        let prompt = match &input_data["prompt"] {
            Value::String(s) => Value::String(s.clone()),
            Value::Null => Value::String(input_data.to_string()),
            other => Value::String(other.to_string()),
        };
        ("string", prompt)
    } else {
        ("json", input_data.clone())
    };
    let mut task = json!({"id": "task", "handler": handler,
        "transition": {"branches": [{"operator": "default", "goto": "end"}]}});
    for k in [
        "execute_config",
        "hook",
        "function",
        "chain",
        "job",
        "system_instruction",
    ] {
        if let Some(v) = extra.get(k).filter(|v| !v.is_null()) {
            task[k] = v.clone();
        }
    }
    Ok((task, kind, input))
}

/// A step's task, checked as a contenox task is, and its typed input.
pub fn task_of(step: &DagStep, input: &Value) -> Result<(Task, Data), String> {
    let (task, kind, input) = step_task(&step.task_type, input, &step.raw)?;
    let mut task = chain::parse(&step.id, &json!({ "tasks": [task] }))
        .map_err(|p| p.join("; "))?
        .tasks
        .remove(0);
    task.id.clone_from(&step.id);
    if let Some(t) = step.timeout_seconds {
        task.timeout = Some(std::time::Duration::from_secs(t));
    }
    Ok((task, Data::new(kind, &input)))
}

/// A step's result from its handler's output: `text_generation` gives
/// `{text}`, any other kind its output as it is.
pub fn result_of(task_type: &str, output: &Data) -> Value {
    if task_type == "text_generation" {
        json!({ "text": output.text() })
    } else {
        output.json()
    }
}

/// What templates see in a run: its variables and, under each step's id,
/// `{status, result}` of that step.
pub fn scope(x: &Execution) -> Value {
    let Some(part) = &x.dag else {
        return Value::Null;
    };
    let mut scope = match serde_json::from_str::<Value>(&part.vars) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let defs: Vec<Value> = serde_json::from_str(&part.definition).unwrap_or_default();
    for (def, step) in defs.iter().zip(&x.steps) {
        let Some(id) = def["id"].as_str() else {
            continue;
        };
        let result = step
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str::<Value>(r).ok())
            .unwrap_or(Value::Null);
        scope.insert(
            id.to_owned(),
            json!({"status": step.status.as_str(), "result": result}),
        );
    }
    Value::Object(scope)
}

fn lookup<'a>(scope: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = scope;
    for part in path.split('.') {
        at = match at {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!at.is_null()).then_some(at)
}

fn render_text(text: &str, scope: &Value) -> Result<Value, String> {
    let trimmed = text.trim();
    if let Some(path) = trimmed
        .strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .filter(|p| !p.contains("${") && !p.contains('}'))
    {
        return lookup(scope, path.trim())
            .cloned()
            .ok_or_else(|| format!("unresolved ${{{}}}", path.trim()));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return Ok(Value::String(out));
        };
        let path = rest[start + 2..start + end].trim();
        match lookup(scope, path) {
            Some(Value::String(s)) => out.push_str(s),
            Some(v) => out.push_str(&v.to_string()),
            None => return Err(format!("unresolved ${{{path}}}")),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// Fills a step's input from the run's scope (see the module's notes).
pub fn resolve(input: &Value, scope: &Value) -> Result<Value, String> {
    Ok(match input {
        Value::String(s) if s.contains("${") => render_text(s, scope)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| resolve(v, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), resolve(v, scope)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// The steps of a run's definition (an empty list if it no longer reads).
pub fn steps_of(x: &Execution) -> Vec<DagStep> {
    x.dag
        .as_ref()
        .and_then(|p| serde_json::from_str::<Value>(&p.definition).ok())
        .and_then(|d| parse(&d).ok())
        .unwrap_or_default()
}

/// A finished run's result: the result of its last step (the one no
/// other step depends on), or, with several such steps, their results
/// by step id.
pub fn run_result(x: &Execution) -> Value {
    let defs = steps_of(x);
    let needed: HashSet<&str> = defs
        .iter()
        .flat_map(|d| d.depends_on.iter().map(String::as_str))
        .collect();
    let mut sinks: BTreeMap<String, Value> = BTreeMap::new();
    for (def, step) in defs.iter().zip(&x.steps) {
        if needed.contains(def.id.as_str()) {
            continue;
        }
        let result = if step.status == StepStatus::Completed {
            step.result
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        sinks.insert(def.id.clone(), result);
    }
    if sinks.len() == 1 {
        sinks.into_values().next().unwrap_or(Value::Null)
    } else {
        Value::Object(sinks.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_resolve_or_name_what_is_missing() {
        let scope = json!({"topic": "owls", "n": 3,
            "A": {"status": "completed", "result": {"text": "alpha", "list": [1, 2]}}});
        let input = json!({"prompt": "About ${topic}: ${A.result.text} (${n})",
            "whole": "${A.result}", "item": "${A.result.list.1}", "plain": 7});
        assert_eq!(
            resolve(&input, &scope).unwrap(),
            json!({"prompt": "About owls: alpha (3)",
                "whole": {"text": "alpha", "list": [1, 2]}, "item": 2, "plain": 7})
        );
        assert_eq!(
            resolve(&json!({"x": ["${nope}"]}), &scope).unwrap_err(),
            "unresolved ${nope}"
        );
        assert_eq!(
            resolve(&json!("say ${A.result.missing}"), &scope).unwrap_err(),
            "unresolved ${A.result.missing}"
        );
        assert_eq!(
            resolve(&json!("no ${ end"), &scope).unwrap(),
            json!("no ${ end")
        );
    }

    #[test]
    fn kinds_become_tasks() {
        let step = |t: &str, extra: Value| DagStep {
            id: "s".into(),
            name: "s".into(),
            task_type: t.into(),
            input_data: json!({"prompt": "hi"}),
            depends_on: vec![],
            timeout_seconds: Some(3),
            optional: false,
            retries: 0,
            raw: extra.as_object().cloned().unwrap_or_default(),
        };
        let (task, input) = task_of(
            &step("text_generation", json!({})),
            &json!({"prompt": "hi"}),
        )
        .unwrap();
        assert_eq!(
            (task.handler.as_str(), input.text()),
            ("raw_string", "hi".into())
        );
        assert_eq!(task.timeout, Some(std::time::Duration::from_secs(3)));
        let (task, input) = task_of(&step("echo", json!({})), &json!({"a": 1})).unwrap();
        assert_eq!(
            (task.handler.as_str(), input.json()),
            ("noop", json!({"a": 1}))
        );
        let (task, _) = task_of(
            &step("hook", json!({"hook": {"name": "h", "tool_name": "t"}})),
            &json!({}),
        )
        .unwrap();
        assert_eq!(task.handler, "hook");
        assert!(
            task_of(&step("hook", json!({})), &json!({}))
                .unwrap_err()
                .contains("hook.name")
        );
        assert_eq!(
            task_of(&step("research", json!({})), &json!({})).unwrap_err(),
            "unsupported task_type research"
        );
        assert_eq!(
            result_of("text_generation", &Data::new("string", &json!("t"))),
            json!({"text": "t"})
        );
    }
}
