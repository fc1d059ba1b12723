//! Records without behaviour, written through the store's repository calls.

use warden_storage::Record;

use crate::{Audit, Owned, Owner};

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
        crate::created_order(&self.owner, &self.audit)
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
        crate::created_order(&self.owner, &self.audit)
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
