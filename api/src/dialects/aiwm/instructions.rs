//! `/api/instructions` (AIWM §3): plain records through the store.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_storage::model::{Audit, Instruction};
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

const MAX_PROMPT: usize = 64 * 1024;

impl Resource for Instruction {
    const NAME: &'static str = "Instruction";
    const KEY: &'static str = "instructionId";

    fn view(&self) -> Value {
        let mut fields = json!({
            "_id": self.id,
            "instructionId": self.instruction_id,
            "name": self.name,
            "systemPrompt": self.system_prompt,
            "guidelines": self.guidelines,
            "tags": self.tags,
            "isActive": self.is_active,
        });
        if let Some(d) = &self.description {
            fields["description"] = json!(d);
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

/// Applies a body to an instruction; `create` requires name and systemPrompt.
fn apply(
    target: &mut Instruction,
    body: serde_json::Map<String, Value>,
    create: bool,
) -> AiwmResult<()> {
    let mut f = Fields::new(body);
    let instruction_id = f.key("instructionId", false);
    let name = f.string("name", create);
    let description = f.string_max("description", false, 4096);
    let system_prompt = f.string_max("systemPrompt", create, MAX_PROMPT);
    let guidelines = f.strings("guidelines", false);
    let tags = f.strings("tags", false);
    let is_active = f.boolean("isActive", false);
    let extra = f.finish()?;
    if let Some(v) = instruction_id {
        target.instruction_id = v;
    }
    if let Some(v) = name {
        target.name = v;
    }
    if let Some(v) = description {
        target.description = Some(v);
    }
    if let Some(v) = system_prompt {
        target.system_prompt = v;
    }
    if let Some(v) = guidelines {
        target.guidelines = v;
    }
    if let Some(v) = tags {
        target.tags = v;
    }
    if let Some(v) = is_active {
        target.is_active = v;
    }
    if !extra.is_empty() {
        target.extra = warden_actors::merge_extra(&target.extra, &extra);
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<(StatusCode, Json<Value>)> {
    require_write(&p, "create")?;
    let mut record = Instruction {
        id: new_object_id(),
        instruction_id: uuid::Uuid::new_v4().to_string(),
        name: String::new(),
        description: None,
        system_prompt: String::new(),
        guidelines: Vec::new(),
        tags: Vec::new(),
        is_active: true,
        extra: String::new(),
        owner: owner_of(&p),
        audit: Audit::new(&p.user_id),
    };
    apply(&mut record, body, true)?;
    let record = state.store.insert(record).await?;
    Ok((StatusCode::CREATED, Json(record.view())))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    q: AiwmQuery,
) -> AiwmResult<Json<Value>> {
    super::list::<Instruction>(&state, &p, &q)
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
) -> AiwmResult<Json<Value>> {
    Ok(Json(find_visible::<Instruction>(&state, &p, &id)?.view()))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "update")?;
    let found: Instruction = find_visible(&state, &p, &id)?;
    let updated = state
        .store
        .update::<Instruction, AiwmError>(&found.id, |r| {
            if r.audit.deleted_at.is_some() {
                return Err(ApiError::not_found("Instruction", &id));
            }
            apply(r, body.clone(), false)?;
            r.audit.touch(&p.user_id);
            Ok(Some(()))
        })
        .await?
        .ok_or_else(|| ApiError::not_found("Instruction", &id))?;
    Ok(Json(updated.view()))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
) -> AiwmResult<Json<Value>> {
    super::soft_delete::<Instruction>(&state, &p, &id).await
}

pub(super) fn routes() -> Api {
    Api::new()
        .post(
            "/api/instructions",
            "aiwm: instructions",
            "Create an instruction",
            create,
        )
        .get(
            "/api/instructions",
            "aiwm: instructions",
            "List instructions (page, limit, filter[field], sort)",
            list,
        )
        .get(
            "/api/instructions/{id}",
            "aiwm: instructions",
            "Get an instruction",
            get,
        )
        .put(
            "/api/instructions/{id}",
            "aiwm: instructions",
            "Update an instruction",
            update,
        )
        .delete(
            "/api/instructions/{id}",
            "aiwm: instructions",
            "Soft-delete an instruction",
            delete,
        )
}
