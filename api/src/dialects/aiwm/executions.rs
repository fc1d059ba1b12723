//! `/api/executions` (AIWM §6). Requests go to the execution's actor
//! through `runtime.executions`; reads to the store.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use warden_actors::execution::{
    CATEGORY_CREATED, ExecError, Execution, NewExecution, NewStep, STATUS_CREATED, Step,
    StepCommand, value_scope,
};
use warden_domain::Audit;

use super::{AiwmBody, AiwmResult, Fields, Resource, find_visible, iso, owner_of, require_write};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::openapi::Api;

type User = CurrentUser<super::Aiwm>;

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn error_view(e: &ExecError) -> Value {
    let mut out = json!({"code": e.code, "message": e.message});
    if let Some(d) = &e.details {
        out["details"] = parse_json(d);
    }
    if let Some(n) = &e.node_id {
        out["nodeId"] = json!(n);
    }
    if let Some(i) = e.step_index {
        out["stepIndex"] = json!(i);
    }
    out
}

/// Sets the optional fields that have a value (AIWM omits the others).
fn set_some(out: &mut Value, fields: Vec<(&str, Option<Value>)>) {
    for (key, value) in fields {
        if let Some(v) = value {
            out[key] = v;
        }
    }
}

fn step_view(s: &Step) -> Value {
    let mut out = json!({
        "index": s.index,
        "name": s.name,
        "status": s.status.as_str(),
        "progress": s.progress,
        "dependsOn": s.depends_on,
        "optional": s.optional,
    });
    set_some(
        &mut out,
        vec![
            ("description", s.description.as_ref().map(|v| json!(v))),
            (
                "command",
                s.command.as_ref().map(|c| {
                    json!({
                        "type": c.kind,
                        "resource": {"type": c.resource_type, "id": c.resource_id},
                        "data": parse_json(&c.data),
                    })
                }),
            ),
            ("nodeId", s.node_id.as_ref().map(|v| json!(v))),
            ("startedAt", s.started_at.map(|t| json!(iso(t)))),
            ("completedAt", s.completed_at.map(|t| json!(iso(t)))),
            ("timeoutSeconds", s.timeout_seconds.map(|v| json!(v))),
            ("result", s.result.as_deref().map(parse_json)),
            ("error", s.error.as_ref().map(error_view)),
            (
                "sentMessageId",
                s.sent_message_id.as_ref().map(|v| json!(v)),
            ),
            (
                "receivedMessageId",
                s.received_message_id.as_ref().map(|v| json!(v)),
            ),
            // Only on a step whose attempt outlived its actor (a crash, a
            // restart) and was made again under the same attempt.
            ("resumed", s.resumed.then_some(json!(true))),
        ],
    );
    if s.extra.len() > 2 {
        let extra: Map<String, Value> = serde_json::from_str(&s.extra).unwrap_or_default();
        for (k, v) in extra {
            if out.get(&k).is_none() {
                out[k.as_str()] = v;
            }
        }
    }
    out
}

impl Resource for Execution {
    const NAME: &'static str = "Execution";
    const KEY: &'static str = "executionId";

    fn indexed_filter(
        field: &str,
        value: &str,
        org: Option<&str>,
    ) -> Option<(&'static str, String)> {
        match field {
            "status" => Some((STATUS_CREATED, value_scope(org, value))),
            "category" => Some((CATEGORY_CREATED, value_scope(org, value))),
            _ => None,
        }
    }

    fn view(&self) -> Value {
        let mut fields = json!({
            "_id": self.id,
            "executionId": self.execution_id,
            "name": self.name,
            "category": self.category,
            "type": self.kind,
            "status": self.status.as_str(),
            "progress": self.progress,
            "childExecutionIds": self.child_execution_ids,
            "steps": self.steps.iter().map(step_view).collect::<Vec<_>>(),
            "involvedNodeIds": self.involved_node_ids,
            "timeoutSeconds": self.timeout_seconds,
            "sentMessageIds": self.sent_message_ids,
            "receivedMessageIds": self.received_message_ids,
            "retryCount": self.retry_count,
            "maxRetries": self.max_retries,
            "retryAttempts": self.retry_attempts.iter().map(|t| iso(*t)).collect::<Vec<_>>(),
        });
        set_some(
            &mut fields,
            vec![
                ("description", self.description.as_ref().map(|v| json!(v))),
                (
                    "parentExecutionId",
                    self.parent_execution_id.as_ref().map(|v| json!(v)),
                ),
                (
                    "resourceType",
                    self.resource_type.as_ref().map(|v| json!(v)),
                ),
                ("resourceId", self.resource_id.as_ref().map(|v| json!(v))),
                ("nodeId", self.node_id.as_ref().map(|v| json!(v))),
                ("startedAt", self.started_at.map(|t| json!(iso(t)))),
                ("completedAt", self.completed_at.map(|t| json!(iso(t)))),
                ("timeoutAt", self.timeout_at.map(|t| json!(iso(t)))),
                ("result", self.result.as_deref().map(parse_json)),
                ("error", self.error.as_ref().map(error_view)),
            ],
        );
        super::view_of(&self.extra, fields, &self.owner, &self.audit)
    }

    fn audit(&self) -> &Audit {
        &self.audit
    }
}

fn step_of(f: &mut Fields) -> Option<NewStep> {
    let index = f.count("index", false);
    let name = f.string("name", true);
    let description = f.string_max("description", false, 4096);
    let command = f.objects_one("command");
    let node_id = f.string("nodeId", false);
    let timeout_seconds = f.count("timeoutSeconds", false);
    let depends_on = f.counts("dependsOn");
    let optional = f.boolean("optional", false);
    // What the server tracks is the server's; a client's copy is dropped.
    f.drop(&[
        "status",
        "progress",
        "startedAt",
        "completedAt",
        "result",
        "error",
        "sentMessageId",
        "receivedMessageId",
        "resumed",
    ]);
    let command = match command {
        Some(mut c) => {
            let mut cf = Fields::new(std::mem::take(&mut c));
            let kind = cf.string("type", true);
            let resource = cf.objects_one("resource").unwrap_or_default();
            let data = cf.json("data", true);
            let errors = cf.finish().err().map(|e| e.errors).unwrap_or_default();
            for e in errors {
                f.error(format!("command.{e}"));
            }
            let text = |k: &str| {
                resource
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            Some(StepCommand {
                kind: kind.unwrap_or_default(),
                resource_type: text("type"),
                resource_id: text("id"),
                data: data.unwrap_or_else(|| "{}".into()),
            })
        }
        None => None,
    };
    let too_big = |v: u64| u32::try_from(v).ok();
    Some(NewStep {
        index: index.and_then(too_big),
        name,
        description,
        command,
        node_id,
        timeout_seconds,
        depends_on: depends_on
            .unwrap_or_default()
            .into_iter()
            .filter_map(too_big)
            .collect(),
        optional: optional.unwrap_or(false),
        extra: f.rest(),
    })
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<(StatusCode, Json<Value>)> {
    require_write(&p, "create")?;
    let mut f = Fields::new(body);
    let execution_id = f.key("executionId", false);
    let name = f.string("name", false);
    let description = f.string_max("description", false, 4096);
    let category = f.string("category", false);
    let kind = f.string("type", false);
    let parent_execution_id = f.string("parentExecutionId", false);
    let steps = f.objects("steps", step_of);
    let resource_type = f.string("resourceType", false);
    let resource_id = f.string("resourceId", false);
    let node_id = f.string("nodeId", false);
    let timeout_seconds = f.count("timeoutSeconds", false);
    let max_retries = f.count("maxRetries", false);
    f.drop(&[
        "status",
        "progress",
        "childExecutionIds",
        "involvedNodeIds",
        "startedAt",
        "completedAt",
        "timeoutAt",
        "result",
        "error",
        "sentMessageIds",
        "receivedMessageIds",
        "retryCount",
        "retryAttempts",
    ]);
    let extra = f.finish()?;
    let new = NewExecution {
        execution_id,
        name,
        description,
        category,
        kind,
        parent_execution_id,
        steps: steps.unwrap_or_default(),
        resource_type,
        resource_id,
        node_id,
        timeout_seconds,
        max_retries: max_retries.map(|m| u32::try_from(m).unwrap_or(u32::MAX)),
        extra,
        chain: None,
        dag: None,
    };
    let x = state
        .runtime
        .executions
        .create(new, owner_of(&p), &p.user_id)
        .await?;
    Ok((StatusCode::CREATED, Json(x.view())))
}

/// The documented plain filters, as `filter[field]` on the view
/// (`nodeId` matches any node the execution involves).
const PLAIN_FILTERS: [(&str, &str); 6] = [
    ("status", "status"),
    ("category", "category"),
    ("type", "type"),
    ("resourceType", "resourceType"),
    ("resourceId", "resourceId"),
    ("nodeId", "involvedNodeIds"),
];

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    RawQuery(raw): RawQuery,
) -> AiwmResult<Json<Value>> {
    let raw = raw.unwrap_or_default();
    let mut q = super::paging::parse(&raw)?;
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        if let Some((_, field)) = PLAIN_FILTERS.iter().find(|(k, _)| *k == key) {
            q.filters.push(((*field).to_owned(), value.into_owned()));
        }
    }
    super::list::<Execution>(&state, &p, &q)
}

async fn statistics(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
) -> AiwmResult<Json<Value>> {
    let org = (!p.is_admin()).then_some(p.org_id.as_str());
    let stats = state.runtime.executions.stats(org)?;
    let mut by_status: Map<String, Value> = warden_actors::execution::ExecStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), json!(0)))
        .collect();
    for (status, n) in stats.by_status {
        by_status.insert(status, json!(n));
    }
    let by_category: Map<String, Value> = stats
        .by_category
        .into_iter()
        .map(|(c, n)| (c, json!(n)))
        .collect();
    Ok(Json(json!({
        "total": stats.total,
        "byStatus": by_status,
        "byCategory": by_category,
    })))
}

async fn start(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "start executions")?;
    let x: Execution = find_visible(&state, &p, &id)?;
    let mut f = Fields::new(body);
    let force = f.boolean("force", false).unwrap_or(false);
    f.finish()?;
    let x = state.runtime.executions.start(&x.id, force).await?;
    Ok(Json(x.view()))
}

async fn cancel(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "cancel executions")?;
    let x: Execution = find_visible(&state, &p, &id)?;
    let mut f = Fields::new(body);
    let reason = f.string_max("reason", false, 1024);
    f.finish()?;
    let x = state.runtime.executions.cancel(&x.id, reason).await?;
    Ok(Json(x.view()))
}

async fn retry(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "retry executions")?;
    let x: Execution = find_visible(&state, &p, &id)?;
    let mut f = Fields::new(body);
    let reset_steps = f.boolean("resetSteps", false).unwrap_or(false);
    f.finish()?;
    let x = state.runtime.executions.retry(&x.id, reset_steps).await?;
    Ok(Json(x.view()))
}

pub(super) fn routes() -> Api {
    const TAG: &str = "aiwm: executions";
    Api::new()
        .post("/api/executions", TAG, "Create an execution (pending)", create)
        .get(
            "/api/executions",
            TAG,
            "List executions (status, category, type, resourceType, resourceId, nodeId, page, limit, sort)",
            list,
        )
        .get(
            "/api/executions/_statistics/summary",
            TAG,
            "Counts by status and by category",
            statistics,
        )
        .get(
            "/api/executions/{id}",
            TAG,
            "Get an execution by _id or executionId",
            super::get_handler::<Execution>,
        )
        .post(
            "/api/executions/{id}/start",
            TAG,
            "Start a pending execution {force}",
            start,
        )
        .post(
            "/api/executions/{id}/cancel",
            TAG,
            "Cancel an execution {reason}; its running commands are revoked",
            cancel,
        )
        .post(
            "/api/executions/{id}/retry",
            TAG,
            "Retry a failed or timed-out execution {resetSteps}",
            retry,
        )
}
