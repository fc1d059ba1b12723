//! `/api/agents` (AIWM §4): the core agent record, with
//! `?populate=instruction`. Performance counters are Warden's: the
//! conversations the agent answers move them.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Map, Value, json};
use warden_domain::{AGENT_STATUSES, Agent, AgentInput, Audit, Instruction};
use warden_identity::Principal;

use super::{
    AiwmResult, Fields, PlainResource, Resource, create_handler, delete_handler, find_visible, iso,
    list_handler, owner_of, update_handler, view_of,
};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::openapi::Api;

impl Resource for Agent {
    const NAME: &'static str = "Agent";
    const KEY: &'static str = "agentId";

    fn view(&self) -> Value {
        let mut fields = json!({
            "_id": self.id,
            "agentId": self.agent_id,
            "name": self.name,
            "description": self.description,
            "role": self.role,
            "status": self.status,
            "capabilities": self.capabilities,
            "nodeId": self.node_id,
            "totalTasks": self.total_tasks,
            "completedTasks": self.completed_tasks,
            "failedTasks": self.failed_tasks,
            "averageResponseTime": self.average_response_time,
            "averageLatency": self.average_latency,
            "isActive": self.is_active,
            "permissions": self.permissions,
            "tags": self.tags,
        });
        if let Some(i) = &self.instruction_id {
            fields["instructionId"] = json!(i);
        }
        if let Some(t) = self.last_task {
            fields["lastTask"] = json!(iso(t));
        }
        if let Some(t) = self.last_heartbeat {
            fields["lastHeartbeat"] = json!(iso(t));
        }
        if let Ok(config @ Value::Object(_)) = serde_json::from_str::<Value>(&self.configuration) {
            fields["configuration"] = config;
        }
        view_of(&self.extra, fields, &self.owner, &self.audit)
    }

    fn audit(&self) -> &Audit {
        &self.audit
    }
}

impl PlainResource for Agent {
    fn blank(p: &Principal) -> Self {
        Agent::new(owner_of(p), &p.user_id)
    }

    fn apply_body(&mut self, body: Map<String, Value>, create: bool) -> AiwmResult<()> {
        let mut f = Fields::new(body);
        // Counters are the server's: a client's values are ignored.
        f.drop(&[
            "totalTasks",
            "completedTasks",
            "failedTasks",
            "averageResponseTime",
            "averageLatency",
            "lastTask",
            "lastHeartbeat",
        ]);
        let input = AgentInput {
            agent_id: f.key("agentId", false),
            name: f.string_max("name", false, usize::MAX),
            description: f.string_max("description", false, usize::MAX),
            role: f.string_max("role", false, usize::MAX),
            status: f.one_of("status", &AGENT_STATUSES, false),
            capabilities: f.strings("capabilities", false),
            instruction_id: f.string("instructionId", false).map(Some),
            node_id: f.string_max("nodeId", false, usize::MAX),
            permissions: f.strings("permissions", false),
            tags: f.strings("tags", false),
            is_active: f.boolean("isActive", false),
            configuration: f.json("configuration", true),
            extra: String::new(),
        };
        let extra = f.finish()?;
        Ok(Agent::apply(self, AgentInput { extra, ..input }, create)?)
    }
}

#[derive(serde::Deserialize)]
struct Populate {
    populate: Option<String>,
}

/// `GET /api/agents/{id}`; `populate=instruction` puts the instruction
/// in place of its id, as Mongoose does.
async fn get_agent(
    State(state): State<AppState>,
    CurrentUser(p, _): CurrentUser<super::Aiwm>,
    Path(id): Path<String>,
    Query(q): Query<Populate>,
) -> AiwmResult<Json<Value>> {
    let agent: Agent = find_visible(&state, &p, &id)?;
    let mut view = agent.view();
    let wanted = q.populate.as_deref().is_some_and(|p| {
        p.split(',')
            .any(|f| f.trim() == "instruction" || f.trim() == "instructionId")
    });
    if wanted && let Some(i) = &agent.instruction_id {
        let found = match state.store.get::<Instruction>(i)? {
            Some(x) => Some(x),
            None => state.store.get_by_unique::<Instruction>(
                "instructionId",
                &format!("{}/{i}", agent.owner.org_id),
            )?,
        };
        view["instructionId"] = found
            .filter(|x| x.audit.deleted_at.is_none() && x.owner.org_id == agent.owner.org_id)
            .map_or(Value::Null, |x| x.view());
    }
    Ok(Json(view))
}

pub(super) fn routes() -> Api {
    let tag = "aiwm: agents";
    Api::new()
        .post(
            "/api/agents",
            tag,
            "Create an agent",
            create_handler::<Agent>,
        )
        .get(
            "/api/agents",
            tag,
            "List agents (page, limit, filter[status|nodeId|role], sort)",
            list_handler::<Agent>,
        )
        .get(
            "/api/agents/{id}",
            tag,
            "Get an agent by _id or agentId (populate=instruction)",
            get_agent,
        )
        .put(
            "/api/agents/{id}",
            tag,
            "Update an agent",
            update_handler::<Agent>,
        )
        .delete(
            "/api/agents/{id}",
            tag,
            "Soft-delete an agent",
            delete_handler::<Agent>,
        )
}
