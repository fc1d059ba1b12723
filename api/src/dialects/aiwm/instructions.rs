//! `/api/instructions` (AIWM §3): plain records through the store.

use serde_json::{Map, Value, json};
use warden_domain::{Audit, Instruction, InstructionInput};
use warden_identity::Principal;

use super::{AiwmResult, Fields, PlainResource, Resource, owner_of, plain_routes, view_of};
use crate::openapi::Api;

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
        Instruction::new(owner_of(p), &p.user_id)
    }

    /// The body's shapes; the core's rules decide the rest.
    fn apply_body(&mut self, body: Map<String, Value>, create: bool) -> AiwmResult<()> {
        let mut f = Fields::new(body);
        let input = InstructionInput {
            instruction_id: f.string_max("instructionId", false, usize::MAX),
            name: f.string_max("name", false, usize::MAX),
            description: f.string_max("description", false, usize::MAX),
            system_prompt: f.string_max("systemPrompt", false, usize::MAX),
            guidelines: f.strings("guidelines", false),
            tags: f.strings("tags", false),
            is_active: f.boolean("isActive", false),
            extra: String::new(),
        };
        let extra = f.finish()?;
        Ok(Instruction::apply(
            self,
            InstructionInput { extra, ..input },
            create,
        )?)
    }
}

pub(super) fn routes() -> Api {
    plain_routes::<Instruction>(
        "/api/instructions",
        "/api/instructions/{id}",
        "aiwm: instructions",
    )
}
