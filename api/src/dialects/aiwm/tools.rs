//! `/api/tools` (AIWM §7): plain records through the store.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_storage::model::{Audit, Tool};
use warden_storage::new_object_id;

use super::{
    AiwmBody, AiwmError, AiwmQuery, AiwmResult, Fields, Resource, find_visible, owner_of,
    require_write, view_of,
};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::openapi::Api;

type User = CurrentUser<super::Aiwm>;

const TYPES: [&str; 3] = ["api", "function", "service"];
const STATUSES: [&str; 3] = ["active", "inactive", "deprecated"];

fn json_text(text: &str, empty: Value) -> Value {
    serde_json::from_str(text).unwrap_or(empty)
}

impl Resource for Tool {
    const NAME: &'static str = "Tool";
    const KEY: &'static str = "toolId";

    fn view(&self) -> Value {
        let mut fields = json!({
            "_id": self.id,
            "toolId": self.tool_id,
            "name": self.name,
            "description": self.description,
            "type": self.kind,
            "category": self.category,
            "provider": self.provider,
            "endpoint": self.endpoint,
            "version": self.version,
            "status": self.status,
            "parameters": json_text(&self.parameters, json!({"type": "object", "properties": {}, "required": []})),
            "responseFormat": json_text(&self.response_format, json!({"type": "object", "schema": {}})),
            "usage": json_text(&self.usage, json!([])),
            "totalUsage": self.total_usage,
            "totalFailures": self.total_failures,
            "averageLatency": self.average_latency,
            "tags": self.tags,
            "examples": json_text(&self.examples, json!([])),
            "isActive": self.is_active,
        });
        if let Some(d) = &self.documentation {
            fields["documentation"] = json!(d);
        }
        view_of(&self.extra, fields, &self.owner, &self.audit)
    }

    fn audit(&self) -> &Audit {
        &self.audit
    }

    fn audit_mut(&mut self) -> &mut Audit {
        &mut self.audit
    }
}

/// Applies a body to a tool; `create` requires name, description and type.
fn apply(t: &mut Tool, body: serde_json::Map<String, Value>, create: bool) -> AiwmResult<()> {
    let mut f = Fields::new(body);
    let tool_id = f.key("toolId", false);
    let name = f.string("name", create);
    let description = f.string_max("description", create, 4096);
    let kind = f.one_of("type", &TYPES, create);
    let category = f.string("category", false);
    let provider = f.string("provider", false);
    let endpoint = f.string_max("endpoint", false, 2048);
    let version = f.string("version", false);
    let status = f.one_of("status", &STATUSES, false);
    let parameters = f.json("parameters", true);
    let response_format = f.json("responseFormat", true);
    let tags = f.strings("tags", false);
    let documentation = f.string_max("documentation", false, 64 * 1024);
    let examples = f.json("examples", false);
    let is_active = f.boolean("isActive", false);
    // Usage statistics are recorded by Warden when agents call the tool.
    f.drop(&["usage", "totalUsage", "totalFailures", "averageLatency"]);
    let extra = f.finish()?;
    if let Some(v) = tool_id {
        t.tool_id = v;
    }
    if let Some(v) = name {
        t.name = v;
    }
    if let Some(v) = description {
        t.description = v;
    }
    if let Some(v) = kind {
        t.kind = v;
    }
    if let Some(v) = category {
        t.category = v;
    }
    if let Some(v) = provider {
        t.provider = v;
    }
    if let Some(v) = endpoint {
        t.endpoint = v;
    }
    if let Some(v) = version {
        t.version = v;
    }
    if let Some(v) = status {
        t.status = v;
    }
    if let Some(v) = parameters {
        t.parameters = v;
    }
    if let Some(v) = response_format {
        t.response_format = v;
    }
    if let Some(v) = tags {
        t.tags = v;
    }
    if let Some(v) = documentation {
        t.documentation = Some(v);
    }
    if let Some(v) = examples {
        t.examples = v;
    }
    if let Some(v) = is_active {
        t.is_active = v;
    }
    if !extra.is_empty() {
        t.extra = warden_actors::merge_extra(&t.extra, &extra);
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<(StatusCode, Json<Value>)> {
    require_write(&p, "create")?;
    let mut tool = Tool {
        id: new_object_id(),
        tool_id: uuid::Uuid::new_v4().to_string(),
        name: String::new(),
        description: String::new(),
        kind: String::new(),
        category: String::new(),
        provider: "internal".into(),
        endpoint: String::new(),
        version: "1.0.0".into(),
        status: "active".into(),
        parameters: String::new(),
        response_format: String::new(),
        usage: String::new(),
        total_usage: 0,
        total_failures: 0,
        average_latency: 0.0,
        tags: Vec::new(),
        documentation: None,
        examples: String::new(),
        is_active: true,
        extra: String::new(),
        owner: owner_of(&p),
        audit: Audit::new(&p.user_id),
    };
    apply(&mut tool, body, true)?;
    let tool = state.store.insert(tool).await?;
    Ok((StatusCode::CREATED, Json(tool.view())))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    q: AiwmQuery,
) -> AiwmResult<Json<Value>> {
    super::list::<Tool>(&state, &p, &q)
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
) -> AiwmResult<Json<Value>> {
    Ok(Json(find_visible::<Tool>(&state, &p, &id)?.view()))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "update")?;
    let found: Tool = find_visible(&state, &p, &id)?;
    let updated = state
        .store
        .update::<Tool, AiwmError>(&found.id, |t| {
            if t.audit.deleted_at.is_some() {
                return Err(ApiError::not_found("Tool", &id));
            }
            apply(t, body.clone(), false)?;
            t.audit.touch(&p.user_id);
            Ok(Some(()))
        })
        .await?
        .ok_or_else(|| ApiError::not_found("Tool", &id))?;
    Ok(Json(updated.view()))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
) -> AiwmResult<Json<Value>> {
    super::soft_delete::<Tool>(&state, &p, &id).await
}

pub(super) fn routes() -> Api {
    Api::new()
        .post("/api/tools", "aiwm: tools", "Create a tool", create)
        .get(
            "/api/tools",
            "aiwm: tools",
            "List tools (page, limit, filter[field], sort)",
            list,
        )
        .get("/api/tools/{id}", "aiwm: tools", "Get a tool", get)
        .put("/api/tools/{id}", "aiwm: tools", "Update a tool", update)
        .delete(
            "/api/tools/{id}",
            "aiwm: tools",
            "Soft-delete a tool",
            delete,
        )
}
