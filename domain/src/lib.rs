//! The shared vocabulary of the core: tenancy ([`Owner`]), audit stamps,
//! and the plain records without an actor (instructions, tools, access
//! entries). Entity kinds with behaviour own their record types (nodes in
//! `warden-actors`, users and credentials in `warden-identity`). Field
//! names are Warden's own; each dialect renders its view in `api`.
//!
//! `extra` fields hold, as a JSON object text, whatever a client sent that
//! the core does not model, so nothing is lost on a round trip.

pub mod access;
mod agent;
pub mod catalog;
pub mod counter;
pub mod dag;
pub mod dataset;
pub mod device;
mod error;
pub mod evaluation;
pub mod event;
pub mod function;
pub mod hook;
pub mod job;
mod memory;
mod model;
mod plain;
pub mod rules;
pub mod schedule;
pub mod workflow;

pub use agent::{AGENT_STATUSES, Agent, AgentInput};
pub use error::DomainError;
pub use memory::{LlmPreference, MAX_MEMORY_VALUE, Memory};
pub use model::{
    FileFormat, LLM_NAME, LlmProfile, MODEL_STATUSES, MODEL_TYPES, MlProfile, Model, ModelInput,
    ModelV1, ServedFile, Trained, artifact_path,
};
pub use plain::{
    AccessEntry, Instruction, InstructionInput, TOOL_STATUSES, TOOL_TYPES, Tool, ToolInput,
};

use warden_storage::{Millis, now_millis};

/// AIWM's ownership block, used for tenancy by every dialect.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub org_id: String,
    pub user_id: String,
    pub group_id: String,
}

/// Who made and last changed a record, and when; soft-delete marks.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Audit {
    pub created_by: String,
    pub updated_by: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub deleted_at: Option<Millis>,
    pub deleted_by: Option<String>,
}

impl Audit {
    pub fn new(by: &str) -> Audit {
        let now = now_millis();
        Audit {
            created_by: by.into(),
            updated_by: by.into(),
            created_at: now,
            updated_at: now,
            deleted_at: None,
            deleted_by: None,
        }
    }

    pub fn touch(&mut self, by: &str) {
        self.updated_by = by.into();
        self.updated_at = now_millis().max(self.updated_at);
    }

    pub fn delete(&mut self, by: &str) {
        self.touch(by);
        self.deleted_at = Some(self.updated_at);
        self.deleted_by = Some(by.into());
    }
}

/// Merges a JSON object text into another (`extra` fields, preferences):
/// keys in `new` replace those in `old`; anything not an object is
/// ignored; an empty result is the empty string.
pub fn merge_json_objects(old: &str, new: &str) -> String {
    use serde_json::{Map, Value};
    let mut merged: Map<String, Value> = serde_json::from_str(old).unwrap_or_default();
    if let Ok(Value::Object(update)) = serde_json::from_str::<Value>(new) {
        merged.extend(update);
    }
    if merged.is_empty() {
        String::new()
    } else {
        Value::Object(merged).to_string()
    }
}

/// Sets a field when a value was given (partial updates).
pub fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// Re-indexes the plain records once when their indexes changed.
pub async fn ensure_indexes(
    store: &warden_storage::Store,
) -> Result<(), warden_storage::StorageError> {
    store.ensure_indexes::<Instruction>().await?;
    store.ensure_indexes::<Tool>().await?;
    store.ensure_indexes::<Model>().await?;
    store.ensure_indexes::<Agent>().await?;
    store.ensure_indexes::<Memory>().await?;
    store.ensure_indexes::<dataset::Dataset>().await?;
    store.ensure_indexes::<workflow::Workflow>().await?;
    store.ensure_indexes::<hook::Hook>().await?;
    store.ensure_indexes::<device::Device>().await?;
    store.ensure_indexes::<device::DeviceFile>().await?;
    Ok(())
}

/// The ordered index of owned records by creation time (see
/// [`created_order`]); lists read it by [`org_scope`].
pub const CREATED: &str = "created";

/// The scope of an organisation's list in an ordered index: the
/// organisation, or every organisation (`None`: an instance admin).
pub fn org_scope(org_id: Option<&str>) -> String {
    org_id.unwrap_or("*").to_owned()
}

/// The ordered index every owned record has: by creation time within its
/// organisation, and across all.
pub fn created_order(org_id: &str, created_at: Millis) -> Vec<(&'static str, String, Vec<u8>)> {
    let t = warden_storage::time_sort_key(created_at);
    vec![
        (CREATED, org_scope(Some(org_id)), t.clone()),
        (CREATED, org_scope(None), t),
    ]
}

/// Records owned by an organisation: tenancy is checked through this.
pub trait Owned {
    fn owner(&self) -> &Owner;
}

/// A live record of `org` by its id, bare or with the dialect's prefix
/// (forge's `ds_`, `tr_`, `eval_`): other organisations' records are
/// not found.
pub fn find_in_org<T: warden_storage::Record + Owned>(
    store: &warden_storage::Store,
    org: &str,
    id: &str,
    prefix: &str,
    kind: &'static str,
) -> Result<T, DomainError> {
    let bare = id.strip_prefix(prefix).unwrap_or(id);
    store
        .get::<T>(bare)?
        .filter(|r| !r.is_deleted() && r.owner().org_id == org)
        .ok_or_else(|| DomainError::NotFound {
            kind,
            id: id.to_owned(),
        })
}

/// A live record by `_id`, or by its client-chosen key (`key`, unique
/// per organisation) within `org`.
pub fn resolve<T: warden_storage::Record>(
    store: &warden_storage::Store,
    key: &str,
    org: &str,
    id: &str,
) -> Result<Option<T>, DomainError> {
    let found = match store.get::<T>(id)? {
        Some(r) => Some(r),
        None => store.get_by_unique::<T>(key, &format!("{org}/{id}"))?,
    };
    Ok(found.filter(|r| !r.is_deleted()))
}
