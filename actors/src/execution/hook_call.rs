//! A chain task's call of a remote hook's tool (WORKFLOWS.md §4 C): the
//! hook's `<endpointUrl>/openapi.json` names the tool's operation (by
//! `operationId`, then `x-tool-name`, then `<last path segment>_<method>`);
//! the arguments are `{"input": <task input>}` overlaid by the task's
//! `args`; parameters the operation declares in the path, query or
//! headers are taken out of them, the hook's `properties` add one value,
//! and what is left is the JSON body of a POST, PUT or PATCH with a
//! request body. The hook's headers and an `Idempotency-Key` (the same
//! for a call made again after a restart) go with it; `timeoutMs` bounds
//! the whole call. A document is read at most every 10 s per URL and
//! headers, and at once when it lacks the tool asked for.

use std::time::Duration;

use serde_json::{Map, Value, json};
use warden_domain::hook::Hook;

use super::chain::{Data, Outcome, Task, render};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The operation a tool names: its path, method and definition.
fn operation<'a>(spec: &'a Value, tool: &str) -> Option<(String, &'static str, &'a Value)> {
    let paths = spec["paths"].as_object()?;
    let all = || {
        paths.iter().flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter_map(move |m| item.get(*m).map(|op| (path, *m, op)))
        })
    };
    let by = |pick: &dyn Fn(&String, &str, &Value) -> bool| {
        all()
            .find(|(p, m, op)| pick(p, m, op))
            .map(|(p, m, op)| (p.clone(), m, op))
    };
    by(&|_, _, op| op["operationId"] == tool)
        .or_else(|| by(&|_, _, op| op["x-tool-name"] == tool))
        .or_else(|| {
            by(&|p, m, _| {
                let last = p
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or_default();
                format!("{last}_{m}") == tool
            })
        })
}

/// The task's `hook`: name, tool and arguments (an object, or its JSON
/// text as the reference writes it).
pub fn target(task: &Task) -> Result<(String, String, Map<String, Value>), String> {
    let h = task.raw.get("hook").cloned().unwrap_or(Value::Null);
    let name = h["name"].as_str().filter(|s| !s.is_empty());
    let tool = h["tool_name"].as_str().filter(|s| !s.is_empty());
    let (Some(name), Some(tool)) = (name, tool) else {
        return Err(format!(
            "task {}: hook.name and hook.tool_name are required",
            task.id
        ));
    };
    let args = match &h["args"] {
        Value::Object(m) => m.clone(),
        Value::String(s) if !s.trim().is_empty() => serde_json::from_str(s)
            .map_err(|e| format!("task {}: hook.args is not a JSON object: {e}", task.id))?,
        _ => Map::new(),
    };
    Ok((name.to_owned(), tool.to_owned(), args))
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A hook's OpenAPI document, read at most every
/// [`crate::egress::SCHEMA_TTL`]; one that lacks the tool asked for is
/// read again at once (the tool server may have just gained it).
async fn document(
    egress: &crate::egress::Egress,
    hook: &Hook,
    tool: Option<&str>,
) -> Result<std::sync::Arc<Value>, String> {
    let key = format!("{}\n{:?}", hook.endpoint_url, hook.header_pairs());
    if let Some(spec) = egress.cached_schema(&key)
        && tool.is_none_or(|t| operation(&spec, t).is_some())
    {
        return Ok(spec);
    }
    let spec = std::sync::Arc::new(schema(egress, hook).await?);
    egress.keep_schema(key, spec.clone());
    Ok(spec)
}

/// Reads a hook's OpenAPI document (`<endpointUrl>/openapi.json`).
async fn schema(egress: &crate::egress::Egress, hook: &Hook) -> Result<Value, String> {
    let spec_url = reqwest::Url::parse(&format!("{}/openapi.json", hook.endpoint_url))
        .map_err(|e| format!("hook {}: {e}", hook.name))?;
    egress
        .check(&spec_url)
        .await
        .map_err(|e| format!("hook {}: {e}", hook.name))?;
    let mut req = egress.client().get(spec_url);
    for (k, v) in hook.header_pairs() {
        req = req.header(k, v);
    }
    req.send()
        .await
        .map_err(|e| format!("hook {}: its schema could not be read: {e}", hook.name))?
        .json()
        .await
        .map_err(|e| format!("hook {}: its schema is not JSON: {e}", hook.name))
}

/// Calls a tool of the hook (found in its document) with arguments: the
/// parameters the operation declares in its path, query or headers are
/// taken out of them, the hook's `properties` add one value, and the rest
/// is the JSON body (for a POST, PUT or PATCH with a request body).
async fn invoke(
    egress: &crate::egress::Egress,
    hook: &Hook,
    spec: &Value,
    tool: &str,
    mut arguments: Map<String, Value>,
    idempotency_key: &str,
) -> Result<Data, String> {
    let (path, method, op) =
        operation(spec, tool).ok_or_else(|| format!("hook {} has no tool {tool}", hook.name))?;
    let mut path = path;
    let mut query: Vec<(String, String)> = Vec::new();
    let mut headers = hook.header_pairs();
    let params = op["parameters"].as_array().cloned().unwrap_or_default();
    for p in params {
        let (Some(name), Some(place)) = (p["name"].as_str(), p["in"].as_str()) else {
            continue;
        };
        let Some(v) = arguments.remove(name) else {
            continue;
        };
        match place {
            "path" => path = path.replace(&format!("{{{name}}}"), &text_of(&v)),
            "query" => query.push((name.to_owned(), text_of(&v))),
            "header" => headers.push((name.to_owned(), text_of(&v))),
            _ => {}
        }
    }
    if let Some(p) = Hook::json(&hook.properties) {
        let (name, value) = (p["name"].as_str().unwrap_or_default(), &p["value"]);
        match p["in"].as_str() {
            Some("body") => {
                arguments.insert(name.to_owned(), value.clone());
            }
            Some("query") => query.push((name.to_owned(), text_of(value))),
            Some("path") => path = path.replace(&format!("{{{name}}}"), &text_of(value)),
            Some("header") => headers.push((name.to_owned(), text_of(value))),
            _ => {}
        }
    }
    let mut url = reqwest::Url::parse(&format!("{}{path}", hook.endpoint_url))
        .map_err(|e| format!("hook {} tool {tool}: {e}", hook.name))?;
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(&query);
    }
    egress
        .check(&url)
        .await
        .map_err(|e| format!("hook {} tool {tool}: {e}", hook.name))?;
    let mut req = egress
        .client()
        .request(
            method
                .to_ascii_uppercase()
                .parse()
                .unwrap_or(reqwest::Method::POST),
            url,
        )
        .header("Idempotency-Key", idempotency_key);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    if op.get("requestBody").is_some() && matches!(method, "post" | "put" | "patch") {
        req = req.json(&Value::Object(arguments));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("hook {} tool {tool}: {e}", hook.name))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("hook {} tool {tool}: {e}", hook.name))?;
    if !status.is_success() {
        let text: String = String::from_utf8_lossy(&body).chars().take(500).collect();
        return Err(format!(
            "hook {} tool {tool} answered {status}: {text}",
            hook.name
        ));
    }
    Ok(if body.is_empty() {
        Data::new("nil", &Value::Null)
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => Data::new("json", &v),
            Err(_) => Data::new("string", &json!(String::from_utf8_lossy(&body))),
        }
    })
}

/// Bounds a hook's work by its `timeoutMs`.
async fn within<T>(
    hook: &Hook,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let limit = Duration::from_millis(hook.timeout_ms.max(1));
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| format!("hook {} timed out after {} ms", hook.name, hook.timeout_ms))?
}

/// Calls the tool; the outcome as the task's (output, eval).
pub async fn call(
    egress: &crate::egress::Egress,
    hook: &Hook,
    task: &Task,
    input: &Data,
    idempotency_key: &str,
) -> Outcome {
    let (_, tool, args) = target(task)?;
    let mut arguments = Map::new();
    arguments.insert("input".into(), input.json());
    arguments.extend(args);
    let output = within(hook, async {
        let spec = document(egress, hook, Some(&tool)).await?;
        invoke(egress, hook, &spec, &tool, arguments, idempotency_key).await
    })
    .await?;
    match task.raw.get("output_template").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => {
            let vars = match output.json() {
                Value::Object(m) => m
                    .into_iter()
                    .map(|(k, v)| (k, Data::new("any", &v)))
                    .collect(),
                other => [("output".to_owned(), Data::new("any", &other))]
                    .into_iter()
                    .collect(),
            };
            let text = render(t, &vars);
            Ok((Data::new("string", &json!(text)), text))
        }
        _ => Ok((output, "ok".into())),
    }
}

/// A model's tool call of `<hook>.<tool>`: the tool called with the
/// call's arguments as they are.
pub async fn call_tool(
    egress: &crate::egress::Egress,
    hook: &Hook,
    tool: &str,
    arguments: Map<String, Value>,
    idempotency_key: &str,
) -> Result<Data, String> {
    within(hook, async {
        let spec = document(egress, hook, Some(tool)).await?;
        invoke(egress, hook, &spec, tool, arguments, idempotency_key).await
    })
    .await
}

/// The name a tool goes by: the operation's `operationId`, else its
/// `x-tool-name`, else `<last path segment>_<method>`.
fn tool_name(path: &str, method: &str, op: &Value) -> String {
    op["operationId"]
        .as_str()
        .or(op["x-tool-name"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let last = path
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default();
            format!("{last}_{method}")
        })
}

/// A schema with a local `$ref` (`#/components/schemas/X`) looked up.
fn resolved<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/")) {
        Some(pointer) => spec.pointer(&format!("/{pointer}")).unwrap_or(&Value::Null),
        None => schema,
    }
}

/// The hook's tools as a model is offered them (OpenAI's `tools`): one
/// function per operation, named `<hook>.<tool>`, whose parameters are
/// the operation's path, query and header parameters and the fields of
/// its JSON request body.
pub async fn offered_tools(
    egress: &crate::egress::Egress,
    hook: &Hook,
) -> Result<Vec<Value>, String> {
    let spec = within(hook, document(egress, hook, None)).await?;
    let mut tools = Vec::new();
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            let Some(op) = item.get(method) else {
                continue;
            };
            let mut properties = Map::new();
            let mut required = Vec::new();
            for p in op["parameters"].as_array().into_iter().flatten() {
                let p = resolved(&spec, p);
                let Some(name) = p["name"].as_str() else {
                    continue;
                };
                let schema = resolved(&spec, &p["schema"]);
                properties.insert(
                    name.to_owned(),
                    if schema.is_object() {
                        schema.clone()
                    } else {
                        json!({"type": "string"})
                    },
                );
                if p["required"] == true || p["in"] == "path" {
                    required.push(json!(name));
                }
            }
            let body = resolved(
                &spec,
                &op["requestBody"]["content"]["application/json"]["schema"],
            );
            for (k, v) in body["properties"].as_object().into_iter().flatten() {
                properties.insert(k.clone(), resolved(&spec, v).clone());
            }
            required.extend(body["required"].as_array().into_iter().flatten().cloned());
            let description = op["summary"]
                .as_str()
                .or(op["description"].as_str())
                .map_or_else(
                    || format!("{} {path}", method.to_uppercase()),
                    str::to_owned,
                );
            tools.push(json!({"type": "function", "function": {
                "name": format!("{}.{}", hook.name, tool_name(path, method, op)),
                "description": description,
                "parameters": {"type": "object", "properties": properties, "required": required},
            }}));
        }
    }
    Ok(tools)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_found_by_id_extension_or_path() {
        let spec = json!({"paths": {
            "/mail/send": {"post": {"operationId": "send_mail"}},
            "/tickets/{id}": {"get": {"x-tool-name": "ticket"}},
            "/status": {"get": {}}
        }});
        assert_eq!(
            operation(&spec, "send_mail").map(|o| (o.0, o.1)),
            Some(("/mail/send".into(), "post"))
        );
        assert_eq!(operation(&spec, "ticket").map(|o| o.1), Some("get"));
        assert_eq!(
            operation(&spec, "status_get").map(|o| o.0),
            Some("/status".into())
        );
        assert!(operation(&spec, "nope").is_none());
    }
}
