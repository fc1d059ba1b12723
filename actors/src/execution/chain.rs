//! The contenox chain language (WORKFLOWS.md §2), as a resumable
//! interpreter: [`Runner::advance`] runs the chain's pure steps until the
//! run ends or a step needs an outside effect (an LLM, a hook), which it
//! hands back as a [`Next::Call`]; the caller records that, performs it
//! and gives the result to [`Runner::effect_done`]. Everything the run
//! knows is in [`ChainRun`], which is plain data: the execution actor
//! stores it between steps and resumes from it after a crash. Nothing
//! here does I/O or reads a clock other than the one it is given.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value, json};

/// A run stops after this many transitions (a chain looping on itself).
pub const MAX_TRANSITIONS: u32 = 1000;

/// The handlers the language has; those this module runs itself are
/// [`PURE`], the rest need an outside effect. `job` is Warden's: it
/// hands the task's input to an outside worker as a job (`/leases`) and
/// waits for the job to be done; so is `chain`, which runs a stored chain
/// (`chain.id`) on the task's input as a child run and waits for its end,
/// and `function`, which runs a stored JavaScript function
/// (`function.name`) on it.
pub const HANDLERS: [&str; 17] = [
    "raw_string",
    "condition_key",
    "parse_number",
    "parse_score",
    "parse_range",
    "parse_transition",
    "parse_key_value",
    "embedding",
    "raise_error",
    "model_execution",
    "execute_tool_calls",
    "convert_to_openai_chat_response",
    "noop",
    "hook",
    "job",
    "chain",
    "function",
];
pub const PURE: [&str; 5] = [
    "noop",
    "parse_transition",
    "parse_key_value",
    "raise_error",
    "convert_to_openai_chat_response",
];
/// The handlers a run can call out for: the prompted ones and `hook`.
pub fn is_called(handler: &str) -> bool {
    PROMPTED.contains(&handler)
        || matches!(
            handler,
            "hook"
                | "model_execution"
                | "execute_tool_calls"
                | "embedding"
                | "job"
                | "chain"
                | "function"
        )
}

/// The handlers that prompt an LLM and read its text answer.
pub const PROMPTED: [&str; 5] = [
    "raw_string",
    "condition_key",
    "parse_number",
    "parse_score",
    "parse_range",
];

pub const TYPES: [&str; 13] = [
    "any",
    "string",
    "bool",
    "int",
    "float",
    "vector",
    "search_results",
    "json",
    "chat_history",
    "openai_chat",
    "openai_chat_response",
    "nil",
    "",
];

const OPERATORS: [&str; 11] = [
    "equals",
    "contains",
    "starts_with",
    "ends_with",
    ">",
    "gt",
    "<",
    "lt",
    "in_range",
    "default",
    "",
];

/// A value with its type name (`inputType`/`outputType`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Data {
    pub kind: String,
    /// JSON text.
    pub value: String,
}

impl Data {
    pub fn new(kind: &str, value: &Value) -> Data {
        Data {
            kind: kind.into(),
            value: value.to_string(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.value).unwrap_or(Value::Null)
    }

    /// The value as text: a string as it is, anything else as JSON.
    pub fn text(&self) -> String {
        match self.json() {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }
}

/// A chain's input, read as its declared type: a `string` given as an
/// object is its `value` (else its JSON text); `bool`, `int` and `float`
/// parse strings.
pub fn typed_input(kind: &str, input: &Value) -> Result<Data, String> {
    let kind = if kind.is_empty() { "any" } else { kind };
    if !TYPES.contains(&kind) {
        return Err(format!(
            "inputType {kind:?} is not one of {}",
            TYPES[..TYPES.len() - 1].join(", ")
        ));
    }
    let bad = || format!("the input is not a valid {kind}");
    let value = match (kind, input) {
        ("string", Value::String(_)) => input.clone(),
        ("string", Value::Object(o)) => match o.get("value") {
            Some(Value::String(s)) => json!(s),
            _ => json!(input.to_string()),
        },
        ("string", other) => json!(other.to_string()),
        ("bool", Value::String(s)) => json!(s.trim().parse::<bool>().map_err(|_| bad())?),
        ("int", Value::String(s)) => json!(s.trim().parse::<i64>().map_err(|_| bad())?),
        ("float", Value::String(s)) => json!(s.trim().parse::<f64>().map_err(|_| bad())?),
        ("bool", v) if v.is_boolean() => v.clone(),
        ("int", v) if v.is_i64() => v.clone(),
        ("float", v) if v.is_number() => v.clone(),
        ("bool" | "int" | "float", _) => return Err(bad()),
        ("chat_history", Value::Object(o)) if o.get("messages").is_some_and(Value::is_array) => {
            input.clone()
        }
        ("chat_history", _) => return Err(bad()),
        _ => input.clone(),
    };
    Ok(Data::new(kind, &value))
}

#[derive(Debug, Clone, PartialEq)]
struct Branch {
    operator: String,
    when: String,
    goto: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub handler: String,
    input_var: Option<String>,
    prompt_template: Option<String>,
    print: Option<String>,
    retry_on_failure: u32,
    pub timeout: Option<Duration>,
    branches: Vec<Branch>,
    on_failure: Option<String>,
    compose: Option<(String, Option<String>)>,
    /// The task as stored, for the handlers that read more of it.
    pub raw: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    pub id: String,
    pub debug: bool,
    /// The most tokens a model execution's history may hold (0: any).
    pub token_limit: u64,
    pub tasks: Vec<Task>,
}

/// A Go duration (`500ms`, `30s`, `2m`, `1h30m`).
pub fn go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[u..];
    }
    Some(Duration::from_secs_f64(total))
}

fn text_of(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Reads and checks a stored chain before a run (WORKFLOWS.md §2): at
/// least one task, ids present and not `end`, known handlers, branch and
/// failure targets that exist, known operators, valid timeouts. Every
/// problem names its task.
pub fn parse(id: &str, chain: &Value) -> Result<Chain, Vec<String>> {
    let mut problems = Vec::new();
    let tasks_json = chain["tasks"].as_array().cloned().unwrap_or_default();
    if tasks_json.is_empty() {
        problems.push("tasks: a chain needs at least one task".to_owned());
    }
    let ids: Vec<String> = tasks_json
        .iter()
        .map(|t| t["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut tasks = Vec::new();
    for (i, t) in tasks_json.iter().enumerate() {
        let raw = t.as_object().cloned().unwrap_or_default();
        let tid = ids[i].clone();
        let name = if tid.is_empty() {
            format!("tasks[{i}]")
        } else {
            format!("task {tid}")
        };
        if tid.is_empty() {
            problems.push(format!("{name}: id is required"));
        } else if tid == "end" {
            problems.push(format!("{name}: id `end` is reserved"));
        }
        let handler = text_of(raw.get("handler")).unwrap_or_default();
        if handler.is_empty() {
            problems.push(format!("{name}: task-type is empty (handler)"));
        } else if !HANDLERS.contains(&handler.as_str()) {
            problems.push(format!("{name}: unsupported handler {handler:?}"));
        }
        if handler == "embedding" {
            let config = raw.get("execute_config").cloned().unwrap_or(Value::Null);
            let models = strings(config.get("model")).len() + strings(config.get("models")).len();
            let providers =
                strings(config.get("provider")).len() + strings(config.get("providers")).len();
            if models > 1 || providers > 1 {
                problems.push(format!(
                    "{name}: an embedding takes at most one model and one provider"
                ));
            }
        }
        if handler == "hook" {
            let h = raw.get("hook").cloned().unwrap_or(Value::Null);
            let named = |k: &str| h[k].as_str().is_some_and(|s| !s.is_empty());
            if !named("name") || !named("tool_name") {
                problems.push(format!("{name}: hook.name and hook.tool_name are required"));
            }
        }
        let chain_id = raw
            .get("chain")
            .and_then(|c| c.get("id"))
            .and_then(Value::as_str);
        if handler == "chain" && chain_id.is_none_or(str::is_empty) {
            problems.push(format!("{name}: chain.id (a stored chain) is required"));
        }
        let function = raw
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str);
        if handler == "function" && function.is_none_or(str::is_empty) {
            problems.push(format!(
                "{name}: function.name (a stored function) is required"
            ));
        }
        if handler == "job" {
            let j = raw.get("job").cloned().unwrap_or(Value::Null);
            if j["type"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{name}: job.type is required"));
            }
            if let Some(v) = j["valid_for"].as_str()
                && go_duration(v).is_none()
            {
                problems.push(format!("{name}: job.valid_for {v:?} is not a duration"));
            }
        }
        let known =
            |target: &str| target.is_empty() || target == "end" || ids.iter().any(|i| i == target);
        let tr = &raw.get("transition").cloned().unwrap_or(Value::Null);
        let mut branches = Vec::new();
        for b in tr["branches"].as_array().cloned().unwrap_or_default() {
            let operator = b["operator"].as_str().unwrap_or_default().to_owned();
            if !OPERATORS.contains(&operator.as_str()) {
                problems.push(format!("{name}: unknown operator {operator:?}"));
            }
            let goto = b["goto"].as_str().unwrap_or_default().to_owned();
            if !known(&goto) {
                problems.push(format!("{name}: goto {goto:?} is not a task of the chain"));
            }
            branches.push(Branch {
                operator,
                when: match &b["when"] {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                },
                goto,
            });
        }
        let on_failure = text_of(tr.get("on_failure"));
        if let Some(f) = &on_failure
            && !known(f)
        {
            problems.push(format!(
                "{name}: on_failure {f:?} is not a task of the chain"
            ));
        }
        let timeout = match text_of(raw.get("timeout")) {
            None => None,
            Some(s) => match go_duration(&s) {
                Some(d) => Some(d),
                None => {
                    problems.push(format!(
                        "{name}: timeout {s:?} is not a duration (like 30s)"
                    ));
                    None
                }
            },
        };
        let compose = raw
            .get("compose")
            .and_then(|c| text_of(c.get("with_var")).map(|v| (v, text_of(c.get("strategy")))));
        tasks.push(Task {
            id: tid,
            handler,
            input_var: text_of(raw.get("input_var")),
            prompt_template: text_of(raw.get("prompt_template")),
            print: text_of(raw.get("print")),
            retry_on_failure: raw
                .get("retry_on_failure")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(100) as u32,
            timeout,
            branches,
            on_failure,
            compose,
            raw,
        });
    }
    if problems.is_empty() {
        Ok(Chain {
            id: id.into(),
            debug: chain["debug"].as_bool().unwrap_or(false),
            token_limit: chain["token_limit"].as_u64().unwrap_or(0),
            tasks,
        })
    } else {
        Err(problems)
    }
}

/// Renders a Go text/template's `{{.name}}` and `{{.name.field}}`
/// actions against the variables (missing → `<no value>`, as Go does);
/// strings as they are, anything else as JSON.
pub fn render(template: &str, vars: &BTreeMap<String, Data>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let action = rest[start + 2..start + end].trim().trim_matches('-').trim();
        let value = action.strip_prefix('.').and_then(|path| {
            let mut parts = path.split('.');
            let head = vars.get(parts.next()?)?;
            let mut v = head.json();
            for p in parts {
                v = v.get(p)?.clone();
            }
            Some(v)
        });
        match value {
            Some(Value::String(s)) => out.push_str(&s),
            Some(Value::Null) | None => out.push_str("<no value>"),
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

/// One attempt of one task, as contenox reports it (`state[]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StateUnit {
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
    /// The attempt was in flight when the run's actor stopped (a crash, a
    /// restart) and was made again under the same attempt (layout 4 of
    /// the execution record).
    pub resumed: bool,
}

impl StateUnit {
    pub fn view(&self) -> Value {
        let mut v = json!({
            "taskID": self.task_id,
            "taskHandler": self.handler,
            "inputType": self.input_type,
            "outputType": self.output_type,
            "inputVar": self.input_var,
            "transition": self.transition,
            "duration": self.duration_ns,
            "error": {"error": self.error},
        });
        if let Some(i) = &self.input {
            v["input"] = json!(i);
        }
        if let Some(o) = &self.output {
            v["output"] = json!(o);
        }
        if self.resumed {
            v["resumed"] = json!(true);
        }
        v
    }
}

/// Everything a run knows: plain data, stored between steps.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChainRun {
    pub vars: BTreeMap<String, Data>,
    /// The task to run next; `None` once the run ended.
    pub current: Option<String>,
    /// Attempts of the current task that failed.
    pub failures: u32,
    pub transitions: u32,
    pub output: Data,
    pub state: Vec<StateUnit>,
    /// Why the run failed, once it did.
    pub error: Option<String>,
    /// Names what the run makes (a chat completion's id), the same when
    /// it is run again.
    pub seed: String,
    /// When the run started (Unix seconds): a chat completion's `created`.
    pub started_secs: i64,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The run ended with this output.
    Done(Data),
    /// The run failed.
    Failed(String),
    /// The current task needs an effect with this input.
    Call { task: String, input: Data },
}

/// The result of one attempt: output and the transition's eval, or why
/// it failed.
pub type Outcome = Result<(Data, String), String>;

impl ChainRun {
    pub fn new(chain: &Chain, input: Data) -> ChainRun {
        let mut vars = BTreeMap::new();
        vars.insert("input".to_owned(), input.clone());
        ChainRun {
            vars,
            current: chain.tasks.first().map(|t| t.id.clone()),
            failures: 0,
            transitions: 0,
            output: input,
            state: Vec::new(),
            error: None,
            seed: String::new(),
            started_secs: 0,
        }
    }
}

pub struct Runner<'a> {
    pub chain: &'a Chain,
    pub run: &'a mut ChainRun,
}

fn kv_value(v: &str) -> Value {
    let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
    if let Ok(n) = v.parse::<i64>() {
        json!(n)
    } else if let Ok(x) = v.parse::<f64>() {
        json!(x)
    } else if let Ok(b) = v.parse::<bool>() {
        json!(b)
    } else {
        json!(v)
    }
}

/// The pure handlers.
pub fn pure(handler: &str, input: &Data) -> Outcome {
    match handler {
        "noop" => Ok((input.clone(), "noop".into())),
        "raise_error" => Err(input.text()),
        "parse_transition" => {
            let text = input.text();
            let t = text.trim();
            match t.strip_prefix('/') {
                None => Ok((input.clone(), "pass".into())),
                Some(cmd) => {
                    let cmd = cmd.split_whitespace().next().unwrap_or_default();
                    if cmd.is_empty() {
                        Err("parse_transition: an empty command (`/`)".into())
                    } else {
                        Ok((input.clone(), cmd.to_owned()))
                    }
                }
            }
        }
        "parse_key_value" => {
            if input.kind == "json" || input.json().is_object() {
                return Ok((Data::new("json", &input.json()), "already_json".into()));
            }
            let text = input.text();
            let mut map = Map::new();
            for part in text.split([';', '\n', ',']) {
                let Some((k, v)) = part.split_once('=').or_else(|| part.split_once(':')) else {
                    continue;
                };
                let k = k.trim().trim_matches(|c| c == '"' || c == '\'');
                if !k.is_empty() {
                    map.insert(k.to_owned(), kv_value(v));
                }
            }
            if map.is_empty() {
                Err(format!("parse_key_value: no key=value pairs in {text:?}"))
            } else {
                Ok((Data::new("json", &Value::Object(map)), "parsed".into()))
            }
        }
        other => Err(format!("{other} is not a pure handler")),
    }
}

/// What an `execute_tool_calls` task does ([`Task::tool_work`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ToolWork {
    /// Nothing to call: the outcome as it is.
    Done((Data, String)),
    /// The calls to make, and the history their answers are appended to.
    Calls { history: Data, calls: Vec<ToolCall> },
}

/// One tool call a model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub hook: String,
    pub tool: String,
    pub arguments: Map<String, Value>,
}

/// The history with a `tool` message per answered call appended:
/// `chat_history` / `tools_executed`.
pub fn tools_done(history: &Data, answers: Vec<(String, Data)>) -> Outcome {
    let mut v = history.json();
    if !v.is_object() {
        v = json!({});
    }
    let mut all = messages(&v);
    for (id, answer) in answers {
        all.push(json!({"role": "tool", "tool_call_id": id, "content": answer.text()}));
    }
    v["messages"] = Value::Array(all);
    Ok((Data::new("chat_history", &v), "tools_executed".into()))
}

/// What a prompted task asks the LLM: the system instruction, the
/// models to try in order (`execute_config.model`, then `models`; empty:
/// the server's task model) and the temperature.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prompt {
    pub system: Option<String>,
    pub models: Vec<String>,
    pub temperature: Option<f64>,
    pub user: String,
}

/// A string field, or a JSON array given as a string (the reference's
/// examples write lists as JSON text).
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) if s.trim_start().starts_with('[') => {
            serde_json::from_str::<Vec<String>>(s).unwrap_or_default()
        }
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        _ => Vec::new(),
    }
}

impl Task {
    /// The prompt of a prompted task for its input: the input's text
    /// (a chat history's last message).
    pub fn prompt(&self, input: &Data) -> Prompt {
        let config = self
            .raw
            .get("execute_config")
            .cloned()
            .unwrap_or(Value::Null);
        let mut models = strings(config.get("model"));
        for m in strings(config.get("models")) {
            if !models.contains(&m) {
                models.push(m);
            }
        }
        let v = input.json();
        let user = match messages(&v).last() {
            Some(m) if input.kind == "chat_history" || input.kind == "openai_chat" => {
                m["content"].as_str().unwrap_or_default().to_owned()
            }
            _ => input.text(),
        };
        Prompt {
            system: text_of(self.raw.get("system_instruction")),
            models,
            temperature: config.get("temperature").and_then(Value::as_f64),
            user,
        }
    }

    /// A model execution's request: the history's messages (a chat
    /// history's, or an OpenAI request's), the task's system instruction
    /// first unless that message is there, the request's fields with
    /// `execute_config` winning; refused over the chain's token limit
    /// (four characters a token).
    pub fn chat_request(
        &self,
        input: &Data,
        token_limit: u64,
    ) -> Result<(Vec<Value>, Prompt), String> {
        let v = input.json();
        if !v.is_object() {
            return Err(format!(
                "task {}: model_execution wants a chat history or an OpenAI request",
                self.id
            ));
        }
        let mut history = messages(&v);
        if let Some(system) = text_of(self.raw.get("system_instruction"))
            && !history
                .iter()
                .any(|m| m["role"] == "system" && m["content"] == system.as_str())
        {
            history.insert(0, json!({"role": "system", "content": system}));
        }
        let chars: usize = history
            .iter()
            .map(|m| m["content"].as_str().map_or(0, str::len))
            .sum();
        let tokens = chars.div_ceil(4) as u64;
        if token_limit > 0 && tokens > token_limit {
            return Err(format!(
                "task {}: the history holds about {tokens} tokens, over the chain's token_limit {token_limit}",
                self.id
            ));
        }
        let mut prompt = self.prompt(input);
        if prompt.models.is_empty()
            && let Some(m) = v["model"].as_str().filter(|m| !m.is_empty())
        {
            prompt.models.push(m.to_owned());
        }
        if prompt.temperature.is_none() {
            prompt.temperature = v["temperature"].as_f64();
        }
        prompt.system = None;
        Ok((history, prompt))
    }

    /// What an `execute_tool_calls` task has to do with its input (a chat
    /// history): nothing for an empty history (`no_op`) or one whose last
    /// message calls no tools (`no_calls_found`), else the calls of its
    /// last message. A call names `<hook>.<tool>`; its arguments are a
    /// JSON object (or its text).
    pub fn tool_work(&self, input: &Data) -> Result<ToolWork, String> {
        let history = input.json();
        let all = messages(&history);
        let Some(last) = all.last() else {
            return Ok(ToolWork::Done((input.clone(), "no_op".into())));
        };
        let mut calls = Vec::new();
        for (i, c) in last["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = c["function"]["name"].as_str().unwrap_or_default();
            let Some((hook, tool)) = name.split_once('.') else {
                continue;
            };
            let arguments = match &c["function"]["arguments"] {
                Value::Object(m) => m.clone(),
                Value::String(s) if s.trim().is_empty() => Map::new(),
                Value::String(s) => serde_json::from_str(s).map_err(|e| {
                    format!(
                        "task {}: the arguments of tool call {name} are not a JSON object: {e}",
                        self.id
                    )
                })?,
                _ => Map::new(),
            };
            calls.push(ToolCall {
                id: c["id"]
                    .as_str()
                    .map_or_else(|| format!("call_{i}"), str::to_owned),
                hook: hook.to_owned(),
                tool: tool.to_owned(),
                arguments,
            });
        }
        if calls.is_empty() {
            return Ok(ToolWork::Done((input.clone(), "no_calls_found".into())));
        }
        Ok(ToolWork::Calls {
            history: Data::new("chat_history", &history),
            calls,
        })
    }

    /// A model execution's result: the history with the answer appended.
    pub fn read_chat(
        &self,
        history: Vec<Value>,
        answer: &str,
        tool_calls: &str,
        model: &str,
        tokens: (u64, u64),
    ) -> Outcome {
        let mut message = json!({"role": "assistant", "content": answer});
        let calls: Value = serde_json::from_str(tool_calls).unwrap_or(Value::Null);
        let eval = if calls.is_array() {
            message["tool_calls"] = calls;
            "tool-call"
        } else {
            "executed"
        };
        let mut all = history;
        all.push(message);
        let out = json!({"messages": all, "model": model,
            "inputTokens": tokens.0, "outputTokens": tokens.1});
        Ok((Data::new("chat_history", &out), eval.into()))
    }

    /// A prompted task's result from the LLM's answer (§2's handlers).
    pub fn read_answer(&self, answer: &str) -> Outcome {
        let text = answer.trim();
        let bare = text.trim_matches(|c: char| c == '"' || c == '\'' || c.is_whitespace());
        let first_number = || {
            let start = text.find(|c: char| c.is_ascii_digit() || c == '-')?;
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || (c == '-')))
                .map_or(text.len(), |e| start + e);
            Some(&text[start..end])
        };
        match self.handler.as_str() {
            "raw_string" => Ok((Data::new("string", &json!(text)), text.to_owned())),
            "condition_key" => {
                let conditions = match self.raw.get("valid_conditions") {
                    Some(Value::Object(o)) => o.clone(),
                    Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_default(),
                    _ => Map::new(),
                };
                match conditions.get(bare) {
                    Some(v) => {
                        let b = v.as_bool().unwrap_or(false);
                        Ok((Data::new("bool", &json!(b)), b.to_string()))
                    }
                    None => Err(format!(
                        "condition_key: the answer {bare:?} is not one of the valid conditions ({})",
                        conditions.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                }
            }
            "parse_number" => {
                let n = bare
                    .parse::<i64>()
                    .ok()
                    .or_else(|| first_number()?.parse::<i64>().ok())
                    .ok_or_else(|| format!("parse_number: no integer in {text:?}"))?;
                Ok((Data::new("int", &json!(n)), n.to_string()))
            }
            "parse_score" => {
                let x = bare
                    .parse::<f64>()
                    .ok()
                    .or_else(|| first_number()?.parse::<f64>().ok())
                    .ok_or_else(|| format!("parse_score: no number in {text:?}"))?;
                Ok((Data::new("float", &json!(x)), format!("{x:.2}")))
            }
            "parse_range" => {
                let range = match bare.split_once('-') {
                    Some((a, b)) if number(a).is_some() && number(b).is_some() => {
                        format!("{}-{}", a.trim(), b.trim())
                    }
                    _ => match number(bare) {
                        Some(_) => format!("{bare}-{bare}"),
                        None => return Err(format!("parse_range: no range in {text:?}")),
                    },
                };
                Ok((Data::new("string", &json!(range)), range))
            }
            other => Err(format!("{other} does not read a text answer")),
        }
    }
}

fn number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok()
}

/// Whether a branch matches the transition's eval.
fn matches(b: &Branch, eval: &str) -> Result<bool, String> {
    Ok(match b.operator.as_str() {
        "equals" => eval == b.when,
        "contains" => eval.contains(&b.when),
        "starts_with" => eval.starts_with(&b.when),
        "ends_with" => eval.ends_with(&b.when),
        ">" | "gt" | "<" | "lt" => {
            let (Some(a), Some(w)) = (number(eval), number(&b.when)) else {
                return Err(format!(
                    "operator {} compares numbers: {eval:?}, {:?}",
                    b.operator, b.when
                ));
            };
            if b.operator == ">" || b.operator == "gt" {
                a > w
            } else {
                a < w
            }
        }
        "in_range" => {
            let (lo, hi) = b
                .when
                .split_once('-')
                .and_then(|(l, h)| Some((number(l)?, number(h)?)))
                .ok_or_else(|| format!("in_range wants min-max, got {:?}", b.when))?;
            let v = number(eval).ok_or_else(|| format!("in_range compares numbers: {eval:?}"))?;
            (lo..=hi).contains(&v)
        }
        other => return Err(format!("unknown operator {other:?}")),
    })
}

/// Deep-merges `right` into `left` (right wins).
fn merge(left: &mut Value, right: &Value) {
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => {
            for (k, v) in r {
                merge(l.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (l, r) => *l = r.clone(),
    }
}

fn messages(v: &Value) -> Vec<Value> {
    v["messages"].as_array().cloned().unwrap_or_default()
}

impl Runner<'_> {
    fn task(&self, id: &str) -> Option<&Task> {
        self.chain.tasks.iter().find(|t| t.id == id)
    }

    fn fail(&mut self, error: String) -> Next {
        self.run.current = None;
        self.run.error = Some(error.clone());
        Next::Failed(error)
    }

    /// The current task's input: its `input_var` or the last output, then
    /// its rendered `prompt_template` in its place.
    pub fn input(&self) -> Result<(Data, String), String> {
        let task = self
            .run
            .current
            .as_deref()
            .and_then(|id| self.task(id))
            .ok_or("no current task")?;
        let (mut data, var) = match &task.input_var {
            Some(v) => (
                self.run
                    .vars
                    .get(v)
                    .cloned()
                    .ok_or_else(|| format!("task {}: input_var {v:?} is not set", task.id))?,
                v.clone(),
            ),
            None => (self.run.output.clone(), task.id.clone()),
        };
        if let Some(t) = &task.prompt_template {
            data = Data::new("string", &json!(render(t, &self.run.vars)));
        }
        Ok((data, var))
    }

    /// Runs pure tasks until the run ends or a task needs an effect.
    pub fn advance(&mut self) -> Next {
        loop {
            let Some(id) = self.run.current.clone() else {
                return match &self.run.error {
                    Some(e) => Next::Failed(e.clone()),
                    None => Next::Done(self.run.output.clone()),
                };
            };
            if self.run.transitions >= MAX_TRANSITIONS {
                return self.fail(format!(
                    "the chain made {MAX_TRANSITIONS} transitions: stopped (a loop?)"
                ));
            }
            let Some(task) = self.task(&id).cloned() else {
                return self.fail(format!("task {id} is not in the chain"));
            };
            let (input, _) = match self.input() {
                Ok(i) => i,
                Err(e) => return self.fail(e),
            };
            if let Some(p) = &task.print {
                tracing::info!(chain = %self.chain.id, task = %task.id, "{}", render(p, &self.run.vars));
            }
            if !PURE.contains(&task.handler.as_str()) {
                return Next::Call { task: id, input };
            }
            let outcome = if task.handler == "convert_to_openai_chat_response" {
                self.convert(&input)
            } else {
                pure(&task.handler, &input)
            };
            self.finish_attempt(&task, &input, outcome, 0);
        }
    }

    /// The result of the current task's effect; then call [`advance`].
    pub fn effect_done(&mut self, outcome: Outcome, duration_ns: u64) {
        let Some(task) = self
            .run
            .current
            .clone()
            .and_then(|id| self.task(&id).cloned())
        else {
            return;
        };
        let input = match self.input() {
            Ok((i, _)) => i,
            Err(e) => {
                self.fail(e);
                return;
            }
        };
        self.finish_attempt(&task, &input, outcome, duration_ns);
    }

    fn finish_attempt(&mut self, task: &Task, input: &Data, outcome: Outcome, duration_ns: u64) {
        self.run.transitions += 1;
        let debug = self.chain.debug;
        let var = task.input_var.clone().unwrap_or_else(|| task.id.clone());
        let mut unit = StateUnit {
            task_id: task.id.clone(),
            handler: task.handler.clone(),
            input_type: input.kind.clone(),
            output_type: String::new(),
            input_var: var,
            transition: String::new(),
            duration_ns,
            error: String::new(),
            input: debug.then(|| input.text()),
            output: None,
            resumed: false,
        };
        match outcome {
            Err(e) => {
                unit.error = e.clone();
                self.run.state.push(unit);
                self.run.failures += 1;
                if self.run.failures <= task.retry_on_failure {
                    return;
                }
                self.run.failures = 0;
                match &task.on_failure {
                    Some(target) if target != "end" => self.run.current = Some(target.clone()),
                    Some(_) => self.run.current = None,
                    None => {
                        self.fail(format!(
                            "task {} failed after {} retries: {e}",
                            task.id, task.retry_on_failure
                        ));
                    }
                }
            }
            Ok((mut output, eval)) => {
                self.run.failures = 0;
                if let Some((with_var, strategy)) = &task.compose {
                    match self.compose(with_var, strategy.as_deref(), &output) {
                        Ok(composed) => {
                            self.run
                                .vars
                                .insert(format!("{}_composed", task.id), composed.clone());
                            output = composed;
                        }
                        Err(e) => {
                            unit.error = e.clone();
                            self.run.state.push(unit);
                            self.fail(format!("task {}: {e}", task.id));
                            return;
                        }
                    }
                }
                unit.output_type = output.kind.clone();
                unit.transition = eval.clone();
                unit.output = debug.then(|| output.json().to_string());
                self.run.state.push(unit);
                self.run.vars.insert(task.id.clone(), output.clone());
                self.run
                    .vars
                    .insert("previous_output".into(), output.clone());
                self.run.output = output;
                match self.next_task(task, &eval) {
                    Ok(next) => self.run.current = next,
                    Err(e) => {
                        self.fail(format!("task {}: {e}", task.id));
                    }
                }
            }
        }
    }

    /// A chat history as OpenAI's `chat.completion` (its last message the
    /// choice; its token counts the usage).
    fn convert(&self, input: &Data) -> Outcome {
        let v = input.json();
        let messages = messages(&v);
        let last = messages
            .last()
            .cloned()
            .ok_or("convert_to_openai_chat_response: the chat history is empty")?;
        let (prompt, completion) = (
            v["inputTokens"].as_u64().unwrap_or(0),
            v["outputTokens"].as_u64().unwrap_or(0),
        );
        let finish = if last["tool_calls"].is_array() {
            "tool_calls"
        } else {
            "stop"
        };
        let response = json!({
            "id": format!("chatcmpl-{}", self.run.seed),
            "object": "chat.completion",
            "created": self.run.started_secs,
            "model": v["model"].as_str().unwrap_or_default(),
            "choices": [{"index": 0, "message": last, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        });
        Ok((
            Data::new("openai_chat_response", &response),
            "converted".into(),
        ))
    }

    fn compose(
        &self,
        with_var: &str,
        strategy: Option<&str>,
        output: &Data,
    ) -> Result<Data, String> {
        let other = self
            .run
            .vars
            .get(with_var)
            .ok_or_else(|| format!("compose.with_var {with_var:?} is not set"))?;
        let input_kind = self.run.vars.get("input").map(|d| d.kind.as_str());
        let strategy = strategy.unwrap_or(
            if input_kind == Some("chat_history") && other.kind == "chat_history" {
                "merge_chat_histories"
            } else {
                "override"
            },
        );
        let (left, right) = (other.json(), output.json());
        match strategy {
            "override" => {
                if !left.is_object() || !right.is_object() {
                    return Err("compose override needs two objects".into());
                }
                let mut merged = left;
                merge(&mut merged, &right);
                Ok(Data::new(&output.kind, &merged))
            }
            "merge_chat_histories" => {
                let mut history = if right.is_object() {
                    right.clone()
                } else {
                    json!({})
                };
                let mut all = messages(&left);
                all.extend(messages(&right));
                history["messages"] = json!(all);
                Ok(Data::new("chat_history", &history))
            }
            "append_string_to_chat_history" => {
                let (text, mut history) = if left.is_string() {
                    (left.clone(), right.clone())
                } else {
                    (right.clone(), left.clone())
                };
                if !history.is_object() {
                    return Err("append_string_to_chat_history needs a chat history".into());
                }
                let mut all = vec![json!({"role": "system", "content": text})];
                all.extend(messages(&history));
                history["messages"] = json!(all);
                Ok(Data::new("chat_history", &history))
            }
            other => Err(format!("unknown compose strategy {other:?}")),
        }
    }

    /// The branch the eval takes: the first matching non-default one,
    /// else the first default; `end` or an empty goto ends the run.
    fn next_task(&self, task: &Task, eval: &str) -> Result<Option<String>, String> {
        let mut chosen = None;
        for b in task.branches.iter().filter(|b| b.operator != "default") {
            if matches(b, eval)? {
                chosen = Some(b);
                break;
            }
        }
        let chosen = chosen
            .or_else(|| task.branches.iter().find(|b| b.operator == "default"))
            .ok_or_else(|| format!("no matching transition for {eval:?}"))?;
        Ok(match chosen.goto.as_str() {
            "" | "end" => None,
            other => Some(other.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chain: Value, input: Value, kind: &str) -> (Next, ChainRun) {
        let c = parse("c", &chain).expect("a valid chain");
        let mut run = ChainRun::new(&c, typed_input(kind, &input).unwrap());
        let next = Runner {
            chain: &c,
            run: &mut run,
        }
        .advance();
        (next, run)
    }

    fn to_end() -> Value {
        json!({"branches": [{"operator": "default", "goto": "end"}]})
    }

    #[test]
    fn templates_branches_and_variables() {
        let chain = json!({"debug": true, "tasks": [
            {"id": "greet", "handler": "noop", "prompt_template": "hello {{.input}} {{ .missing }}",
             "transition": {"branches": [{"operator": "default", "goto": "route"}]}},
            {"id": "route", "handler": "parse_transition", "input_var": "input",
             "transition": {"branches": [
                 {"operator": "equals", "when": "deploy", "goto": "kv"},
                 {"operator": "default", "goto": "end"}]}},
            {"id": "kv", "handler": "parse_key_value", "prompt_template": "a=1; b=two, c:true",
             "transition": to_end()}
        ]});
        let (next, run) = run(chain.clone(), json!("/deploy now"), "string");
        assert_eq!(
            next,
            Next::Done(Data::new("json", &json!({"a": 1, "b": "two", "c": true})))
        );
        assert_eq!(run.vars["greet"].text(), "hello /deploy now <no value>");
        let evals: Vec<&str> = run.state.iter().map(|u| u.transition.as_str()).collect();
        assert_eq!(evals, ["noop", "deploy", "parsed"]);
        assert_eq!(
            run.state[0].input.as_deref(),
            Some("hello /deploy now <no value>")
        );
        assert_eq!(
            run.state[1].input.as_deref(),
            Some("/deploy now"),
            "input_var: the chain input"
        );
        let (next, _) = super::tests::run(chain, json!("no command"), "string");
        assert_eq!(next, Next::Done(Data::new("string", &json!("no command"))));
    }

    #[test]
    fn retries_failure_targets_and_errors() {
        let chain = |on_failure: Value| {
            json!({"tasks": [
                {"id": "boom", "handler": "raise_error", "retry_on_failure": 2,
                 "transition": {"on_failure": on_failure, "branches": [{"operator": "default", "goto": "end"}]}},
                {"id": "fallback", "handler": "noop", "prompt_template": "recovered", "transition": to_end()}
            ]})
        };
        let (next, run) = run(chain(json!("fallback")), json!("bad input"), "string");
        assert_eq!(next, Next::Done(Data::new("string", &json!("recovered"))));
        assert_eq!(
            run.state.len(),
            4,
            "three failed attempts, then the fallback"
        );
        assert!(run.state[..3].iter().all(|u| u.error == "bad input"));
        assert!(
            !run.vars.contains_key("boom"),
            "a failed task sets no variable"
        );
        let (next, _) = super::tests::run(chain(Value::Null), json!("bad input"), "string");
        assert_eq!(
            next,
            Next::Failed("task boom failed after 2 retries: bad input".into())
        );
    }

    #[test]
    fn loops_stop_and_effects_are_handed_back() {
        let looping = json!({"tasks": [{"id": "again", "handler": "noop",
            "transition": {"branches": [{"operator": "default", "goto": "again"}]}}]});
        let (next, run) = run(looping, json!(1), "int");
        assert!(matches!(next, Next::Failed(e) if e.contains("1000 transitions")));
        assert_eq!(run.transitions, MAX_TRANSITIONS);

        let c = parse("c", &json!({"tasks": [
            {"id": "ask", "handler": "raw_string", "prompt_template": "Q: {{.input}}",
             "transition": {"branches": [{"operator": ">", "when": "5", "goto": "end"},
                                         {"operator": "in_range", "when": "1-5", "goto": "low"}]}},
            {"id": "low", "handler": "noop", "transition": to_end()}
        ]}))
        .unwrap();
        let mut r = ChainRun::new(&c, typed_input("string", &json!("x")).unwrap());
        let mut runner = Runner {
            chain: &c,
            run: &mut r,
        };
        assert_eq!(
            runner.advance(),
            Next::Call {
                task: "ask".into(),
                input: Data::new("string", &json!("Q: x"))
            }
        );
        runner.effect_done(Ok((Data::new("string", &json!("3")), "3".into())), 1000);
        assert_eq!(
            runner.advance(),
            Next::Done(Data::new("string", &json!("3")))
        );
        assert_eq!(
            r.state
                .iter()
                .map(|u| u.task_id.as_str())
                .collect::<Vec<_>>(),
            ["ask", "low"]
        );
    }

    #[test]
    fn prompted_handlers_read_answers() {
        let c = parse("c", &json!({"tasks": [
            {"id": "k", "handler": "condition_key", "valid_conditions": "{\"yes\": true, \"no\": false}",
             "system_instruction": "answer yes or no",
             "execute_config": {"model": "m1", "models": "[\"m2\", \"m1\"]", "temperature": 0.2}},
            {"id": "n", "handler": "parse_number"},
            {"id": "s", "handler": "parse_score"},
            {"id": "r", "handler": "parse_range"}
        ]}))
        .unwrap();
        let t = |i: usize| &c.tasks[i];
        let p = t(0).prompt(&Data::new("string", &json!("is it?")));
        assert_eq!(p.models, ["m1", "m2"]);
        assert_eq!(
            (p.system.as_deref(), p.temperature, p.user.as_str()),
            (Some("answer yes or no"), Some(0.2), "is it?")
        );
        assert_eq!(
            t(0).read_answer(" \"yes\"\n").unwrap(),
            (Data::new("bool", &json!(true)), "true".into())
        );
        assert!(
            t(0).read_answer("maybe")
                .unwrap_err()
                .contains("valid conditions")
        );
        assert_eq!(t(1).read_answer("about 42 items").unwrap().1, "42");
        assert!(t(1).read_answer("none").is_err());
        assert_eq!(t(2).read_answer("0.8").unwrap().1, "0.80");
        assert_eq!(t(3).read_answer("3-5").unwrap().1, "3-5");
        assert_eq!(t(3).read_answer("4").unwrap().1, "4-4");
    }

    #[test]
    fn compose_strategies() {
        let chain = json!({"tasks": [
            {"id": "a", "handler": "parse_key_value", "transition": {"branches": [{"operator": "default", "goto": "b"}]}},
            {"id": "b", "handler": "parse_key_value", "prompt_template": "y=2; z=3",
             "compose": {"with_var": "a"}, "transition": to_end()}
        ]});
        let (next, run) = run(chain, json!("x=1; y=1"), "string");
        assert_eq!(
            next,
            Next::Done(Data::new("json", &json!({"x": 1, "y": 2, "z": 3})))
        );
        assert!(run.vars.contains_key("b_composed"));
    }

    #[test]
    fn bad_chains_name_their_tasks() {
        let bad = json!({"tasks": [
            {"id": "end", "handler": "noop"},
            {"id": "x", "handler": "teleport", "timeout": "soon",
             "transition": {"on_failure": "nowhere", "branches": [{"operator": "almost", "goto": "ghost"}]}},
            {"handler": ""}
        ]});
        let problems = parse("c", &bad).unwrap_err();
        let all = problems.join("\n");
        for says in [
            "task end: id `end` is reserved",
            "task x: unsupported handler",
            "task x: timeout",
            "task x: on_failure",
            "task x: unknown operator",
            "task x: goto \"ghost\"",
            "tasks[2]: id is required",
            "tasks[2]: task-type is empty",
        ] {
            assert!(all.contains(says), "{says}: {all}");
        }
        assert!(parse("c", &json!({"tasks": []})).is_err());
        assert_eq!(go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert!(
            typed_input("int", &json!("12")).is_ok() && typed_input("int", &json!("x")).is_err()
        );
        assert_eq!(
            typed_input("string", &json!({"value": "v"}))
                .unwrap()
                .text(),
            "v"
        );
        assert!(typed_input("yaml", &json!(1)).is_err());
    }
}
