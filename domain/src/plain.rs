//! Records without behaviour: their fields, defaults and rules. They are
//! written through `catalog.rs`; dialects parse inputs into the `*Input`
//! types (shapes only) and the rules here decide what is acceptable.

use warden_storage::{Record, new_object_id};

use crate::rules::{Checks, MAX_SHORT};
use crate::{Audit, DomainError, Owned, Owner, merge_json_objects, set};

const MAX_DESCRIPTION: usize = 4096;
const MAX_PROMPT: usize = 64 * 1024;
const MAX_DOCUMENTATION: usize = 64 * 1024;
const MAX_ENDPOINT: usize = 2048;

/// Tool kinds and statuses AIWM knows.
pub const TOOL_TYPES: [&str; 3] = ["api", "function", "service"];
pub const TOOL_STATUSES: [&str; 3] = ["active", "inactive", "deprecated"];

/// Merges the extra fields a client sent into the stored ones.
pub(crate) fn merge_extra(extra: &mut String, sent: &str) {
    if !sent.is_empty() {
        *extra = merge_json_objects(extra, sent);
    }
}

/// What a client may set on an instruction; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct InstructionInput {
    pub instruction_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub system_prompt: Option<String>,
    pub guidelines: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub is_active: Option<bool>,
    /// Fields the core does not model, as a JSON object text (kept).
    pub extra: String,
}

impl Instruction {
    /// A new instruction with its defaults: active, a generated key.
    pub fn new(owner: Owner, by: &str) -> Instruction {
        Instruction {
            id: new_object_id(),
            instruction_id: uuid_like(),
            name: String::new(),
            description: None,
            system_prompt: String::new(),
            guidelines: Vec::new(),
            tags: Vec::new(),
            is_active: true,
            extra: String::new(),
            owner,
            audit: Audit::new(by),
        }
    }

    /// Applies an input; `create` makes name and systemPrompt required.
    pub fn apply(&mut self, input: InstructionInput, create: bool) -> Result<(), DomainError> {
        let mut c = Checks::new();
        c.key("instructionId", &input.instruction_id, false);
        c.text("name", &input.name, create, MAX_SHORT);
        c.text("description", &input.description, false, MAX_DESCRIPTION);
        c.text("systemPrompt", &input.system_prompt, create, MAX_PROMPT);
        c.texts("guidelines", &input.guidelines, MAX_PROMPT);
        c.texts("tags", &input.tags, MAX_SHORT);
        c.finish()?;
        set(&mut self.instruction_id, input.instruction_id);
        set(&mut self.name, input.name);
        set(&mut self.description, input.description.map(Some));
        set(&mut self.system_prompt, input.system_prompt);
        set(&mut self.guidelines, input.guidelines);
        set(&mut self.tags, input.tags);
        set(&mut self.is_active, input.is_active);
        merge_extra(&mut self.extra, &input.extra);
        Ok(())
    }
}

/// What a client may set on a tool; `None` leaves a field as it is. JSON
/// fields are texts whose shape the dialect has checked.
#[derive(Debug, Clone, Default)]
pub struct ToolInput {
    pub tool_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub kind: Option<String>,
    pub category: Option<String>,
    pub provider: Option<String>,
    pub endpoint: Option<String>,
    pub version: Option<String>,
    pub status: Option<String>,
    pub parameters: Option<String>,
    pub response_format: Option<String>,
    pub tags: Option<Vec<String>>,
    pub documentation: Option<String>,
    pub examples: Option<String>,
    pub is_active: Option<bool>,
    pub extra: String,
}

impl Tool {
    /// A new tool with its defaults: internal, 1.0.0, active.
    pub fn new(owner: Owner, by: &str) -> Tool {
        Tool {
            id: new_object_id(),
            tool_id: uuid_like(),
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
            owner,
            audit: Audit::new(by),
        }
    }

    /// Applies an input; `create` makes name, description and type required.
    /// Usage statistics are Warden's own and never set by a client.
    pub fn apply(&mut self, input: ToolInput, create: bool) -> Result<(), DomainError> {
        let mut c = Checks::new();
        c.key("toolId", &input.tool_id, false);
        c.text("name", &input.name, create, MAX_SHORT);
        c.text("description", &input.description, create, MAX_DESCRIPTION);
        c.one_of("type", &input.kind, &TOOL_TYPES, create);
        c.text("category", &input.category, false, MAX_SHORT);
        c.text("provider", &input.provider, false, MAX_SHORT);
        c.text("endpoint", &input.endpoint, false, MAX_ENDPOINT);
        c.text("version", &input.version, false, MAX_SHORT);
        c.one_of("status", &input.status, &TOOL_STATUSES, false);
        c.texts("tags", &input.tags, MAX_SHORT);
        c.text(
            "documentation",
            &input.documentation,
            false,
            MAX_DOCUMENTATION,
        );
        c.finish()?;
        set(&mut self.tool_id, input.tool_id);
        set(&mut self.name, input.name);
        set(&mut self.description, input.description);
        set(&mut self.kind, input.kind);
        set(&mut self.category, input.category);
        set(&mut self.provider, input.provider);
        set(&mut self.endpoint, input.endpoint);
        set(&mut self.version, input.version);
        set(&mut self.status, input.status);
        set(&mut self.parameters, input.parameters);
        set(&mut self.response_format, input.response_format);
        set(&mut self.tags, input.tags);
        set(&mut self.documentation, input.documentation.map(Some));
        set(&mut self.examples, input.examples);
        set(&mut self.is_active, input.is_active);
        merge_extra(&mut self.extra, &input.extra);
        Ok(())
    }
}

/// A random key in UUID form, the default of client-chosen keys.
pub(crate) fn uuid_like() -> String {
    uuid::Uuid::new_v4().to_string()
}

warden_storage::first_layout!(Instruction, Tool, AccessEntry);

/// How an agent behaves: a system prompt and guidelines (AIWM §3).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Instruction {
    pub id: String,
    pub instruction_id: String,
    pub name: String,
    pub description: Option<String>,
    pub system_prompt: String,
    pub guidelines: Vec<String>,
    pub tags: Vec<String>,
    pub is_active: bool,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
}

impl Record for Instruction {
    const COLLECTION: &'static str = "instructions";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("org", self.owner.org_id.clone())]
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![(
            "instructionId",
            format!("{}/{}", self.owner.org_id, self.instruction_id),
        )]
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        crate::created_order(&self.owner.org_id, self.audit.created_at)
    }
    const INDEX_VERSION: u32 = 1;
}

impl crate::catalog::Plain for Instruction {
    const KIND: &'static str = "Instruction";
    fn audit(&self) -> &Audit {
        &self.audit
    }
    fn audit_mut(&mut self) -> &mut Audit {
        &mut self.audit
    }
}

impl Owned for Instruction {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// An external service or function an agent can call (AIWM §7). Schema
/// parts that are free-form JSON are kept as JSON text.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tool {
    pub id: String,
    pub tool_id: String,
    pub name: String,
    pub description: String,
    pub kind: String,
    pub category: String,
    pub provider: String,
    pub endpoint: String,
    pub version: String,
    pub status: String,
    pub parameters: String,
    pub response_format: String,
    pub usage: String,
    pub total_usage: u64,
    pub total_failures: u64,
    pub average_latency: f64,
    pub tags: Vec<String>,
    pub documentation: Option<String>,
    pub examples: String,
    pub is_active: bool,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
}

impl Record for Tool {
    const COLLECTION: &'static str = "tools";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("org", self.owner.org_id.clone())]
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![("toolId", format!("{}/{}", self.owner.org_id, self.tool_id))]
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        crate::created_order(&self.owner.org_id, self.audit.created_at)
    }
    const INDEX_VERSION: u32 = 1;
}

impl crate::catalog::Plain for Tool {
    const KIND: &'static str = "Tool";
    fn audit(&self) -> &Audit {
        &self.audit
    }
    fn audit_mut(&mut self) -> &mut Audit {
        &mut self.audit
    }
}

impl Owned for Tool {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// A grant of a permission level on a resource to an identity (a user or a
/// service), Contenox's access control.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AccessEntry {
    pub id: String,
    pub identity: String,
    pub resource: String,
    pub resource_type: String,
    /// `none`, `view`, `edit` or `manage`.
    pub permission: String,
    pub org_id: String,
    pub created_at: warden_storage::Millis,
    pub updated_at: warden_storage::Millis,
}

impl Record for AccessEntry {
    const COLLECTION: &'static str = "access_entries";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("identity", self.identity.clone()),
            ("org", self.org_id.clone()),
        ]
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![(
            "grant",
            format!("{}/{}/{}", self.identity, self.resource_type, self.resource),
        )]
    }
}
