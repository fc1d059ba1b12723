//! The agent record (AIWM §4 agents, neuronest orchestration agents, later
//! vareon's myntrix agents): one record seen through several dialects.
//! A plain record written through `catalog.rs`; its performance counters
//! are Warden's own, moved by the conversations it answers
//! ([`Agent::count_task`]), never set by a client.

use warden_storage::{Millis, Record, new_object_id};

use crate::plain::{merge_extra, uuid_like};
use crate::rules::{Checks, MAX_SHORT};
use crate::{Audit, DomainError, Owned, Owner, set};

/// The statuses AIWM documents for an agent.
pub const AGENT_STATUSES: [&str; 3] = ["active", "inactive", "busy"];

const MAX_DESCRIPTION: usize = 4096;
const MAX_CONFIGURATION: usize = 64 * 1024;

/// What a client may set on an agent; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AgentInput {
    pub agent_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub role: Option<String>,
    pub status: Option<String>,
    pub capabilities: Option<Vec<String>>,
    pub instruction_id: Option<Option<String>>,
    pub node_id: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub is_active: Option<bool>,
    /// Neuronest's `configuration` object (model, temperature, ...), as
    /// JSON text the dialect has checked is an object.
    pub configuration: Option<String>,
    pub extra: String,
}

impl Agent {
    /// A new agent with its defaults: active, no tasks yet, a generated key.
    pub fn new(owner: Owner, by: &str) -> Agent {
        Agent {
            id: new_object_id(),
            agent_id: uuid_like(),
            name: String::new(),
            description: String::new(),
            role: "assistant".into(),
            status: "active".into(),
            capabilities: Vec::new(),
            instruction_id: None,
            node_id: String::new(),
            total_tasks: 0,
            completed_tasks: 0,
            failed_tasks: 0,
            average_response_time: 0.0,
            average_latency: 0.0,
            last_task: None,
            last_heartbeat: None,
            is_active: true,
            permissions: Vec::new(),
            tags: Vec::new(),
            configuration: String::new(),
            extra: String::new(),
            owner,
            audit: Audit::new(by),
        }
    }

    /// Applies an input; `create` makes the name required.
    pub fn apply(&mut self, input: AgentInput, create: bool) -> Result<(), DomainError> {
        let mut c = Checks::new();
        c.key("agentId", &input.agent_id, false);
        c.text("name", &input.name, create, MAX_SHORT);
        c.not_blank("name", &input.name);
        c.text("description", &input.description, false, MAX_DESCRIPTION);
        c.text("role", &input.role, false, MAX_SHORT);
        c.one_of("status", &input.status, &AGENT_STATUSES, false);
        c.texts("capabilities", &input.capabilities, MAX_SHORT);
        c.text("nodeId", &input.node_id, false, MAX_SHORT);
        c.texts("permissions", &input.permissions, MAX_SHORT);
        c.texts("tags", &input.tags, MAX_SHORT);
        c.text(
            "configuration",
            &input.configuration,
            false,
            MAX_CONFIGURATION,
        );
        if let Some(Some(i)) = &input.instruction_id {
            c.text("instructionId", &Some(i.clone()), false, MAX_SHORT);
        }
        c.finish()?;
        set(&mut self.agent_id, input.agent_id);
        set(&mut self.name, input.name);
        set(&mut self.description, input.description);
        set(&mut self.role, input.role);
        if let Some(status) = input.status {
            self.is_active = status != "inactive";
            self.status = status;
        }
        set(&mut self.capabilities, input.capabilities);
        set(&mut self.instruction_id, input.instruction_id);
        set(&mut self.node_id, input.node_id);
        set(&mut self.permissions, input.permissions);
        set(&mut self.tags, input.tags);
        set(&mut self.is_active, input.is_active);
        set(&mut self.configuration, input.configuration);
        merge_extra(&mut self.extra, &input.extra);
        Ok(())
    }

    /// Counts one task (a conversation turn) the agent answered or failed,
    /// with how long the answer took end to end and at the backend.
    pub fn count_task(&mut self, ok: bool, response_ms: u64, latency_ms: u64, at: Millis) {
        let done = self.completed_tasks + self.failed_tasks;
        let mean = |old: f64, new: u64| (old * done as f64 + new as f64) / (done + 1) as f64;
        self.average_response_time = mean(self.average_response_time, response_ms);
        self.average_latency = mean(self.average_latency, latency_ms);
        self.total_tasks += 1;
        if ok {
            self.completed_tasks += 1;
        } else {
            self.failed_tasks += 1;
        }
        self.last_task = Some(at);
    }

    /// A value of the agent's configuration object (`model`, `temperature`).
    pub fn setting(&self, key: &str) -> Option<serde_json::Value> {
        let config: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&self.configuration).ok()?;
        config.get(key).filter(|v| !v.is_null()).cloned()
    }
}

warden_storage::first_layout!(Agent);

/// An AI agent (AIWM §4): who it is, what it may do, the instruction it
/// follows, and how it has performed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Agent {
    pub id: String,
    pub agent_id: String,
    pub name: String,
    pub description: String,
    pub role: String,
    pub status: String,
    pub capabilities: Vec<String>,
    pub instruction_id: Option<String>,
    pub node_id: String,
    pub total_tasks: u64,
    pub completed_tasks: u64,
    pub failed_tasks: u64,
    pub average_response_time: f64,
    pub average_latency: f64,
    pub last_task: Option<Millis>,
    pub last_heartbeat: Option<Millis>,
    pub is_active: bool,
    pub permissions: Vec<String>,
    pub tags: Vec<String>,
    /// Neuronest's configuration object as JSON text ("" when none).
    pub configuration: String,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
}

impl Record for Agent {
    const COLLECTION: &'static str = "agents";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("org", self.owner.org_id.clone())]
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![(
            "agentId",
            format!("{}/{}", self.owner.org_id, self.agent_id),
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

impl crate::catalog::Plain for Agent {
    const KIND: &'static str = "Agent";
    fn audit(&self) -> &Audit {
        &self.audit
    }
    fn audit_mut(&mut self) -> &mut Audit {
        &mut self.audit
    }
}

impl Owned for Agent {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_counts_keep_running_means() {
        let mut a = Agent::new(Owner::default(), "u");
        a.count_task(true, 100, 80, 1);
        a.count_task(true, 300, 120, 2);
        a.count_task(false, 200, 100, 3);
        assert_eq!(
            (a.total_tasks, a.completed_tasks, a.failed_tasks),
            (3, 2, 1)
        );
        assert_eq!(a.average_response_time, 200.0);
        assert_eq!(a.average_latency, 100.0);
        assert_eq!(a.last_task, Some(3));
    }

    #[test]
    fn status_decides_whether_it_is_active_and_is_checked() {
        let mut a = Agent::new(Owner::default(), "u");
        let input = AgentInput {
            name: Some("a".into()),
            status: Some("inactive".into()),
            ..Default::default()
        };
        a.apply(input, true).unwrap();
        assert!(!a.is_active);
        let bad = AgentInput {
            status: Some("sleeping".into()),
            ..Default::default()
        };
        assert!(a.apply(bad, false).is_err());
        assert_eq!(a.status, "inactive");
    }
}
