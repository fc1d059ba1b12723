//! `/api/instructions` (AIWM §3): plain records through the store.

use serde_json::{Map, Value, json};
use warden_domain::{Audit, Instruction};
use warden_identity::Principal;
use warden_storage::new_object_id;

use super::{
    AiwmResult, Fields, PlainResource, Resource, merge, owner_of, plain_routes, set, view_of,
};
use crate::openapi::Api;

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
}

impl PlainResource for Instruction {
    fn blank(p: &Principal) -> Self {
        Instruction {
            id: new_object_id(),
            instruction_id: uuid::Uuid::new_v4().to_string(),
            name: String::new(),
            description: None,
            system_prompt: String::new(),
            guidelines: Vec::new(),
            tags: Vec::new(),
            is_active: true,
            extra: String::new(),
            owner: owner_of(p),
            audit: Audit::new(&p.user_id),
        }
    }

    /// `create` requires name and systemPrompt.
    fn apply(&mut self, body: Map<String, Value>, create: bool) -> AiwmResult<()> {
        let mut f = Fields::new(body);
        let instruction_id = f.key("instructionId", false);
        let name = f.string("name", create);
        let description = f.string_max("description", false, 4096);
        let system_prompt = f.string_max("systemPrompt", create, MAX_PROMPT);
        let guidelines = f.strings("guidelines", false);
        let tags = f.strings("tags", false);
        let is_active = f.boolean("isActive", false);
        let extra = f.finish()?;
        set(&mut self.instruction_id, instruction_id);
        set(&mut self.name, name);
        set(&mut self.description, description.map(Some));
        set(&mut self.system_prompt, system_prompt);
        set(&mut self.guidelines, guidelines);
        set(&mut self.tags, tags);
        set(&mut self.is_active, is_active);
        merge(&mut self.extra, &extra);
        Ok(())
    }
}

pub(super) fn routes() -> Api {
    plain_routes::<Instruction>(
        "/api/instructions",
        "/api/instructions/{id}",
        "aiwm: instructions",
    )
}
