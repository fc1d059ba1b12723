//! `/api/tools` (AIWM §7): plain records through the store.

use serde_json::{Map, Value, json};
use warden_domain::{Audit, Tool};
use warden_identity::Principal;
use warden_storage::new_object_id;

use super::{
    AiwmResult, Fields, PlainResource, Resource, merge, owner_of, plain_routes, set, view_of,
};
use crate::openapi::Api;

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
}

impl PlainResource for Tool {
    fn blank(p: &Principal) -> Self {
        Tool {
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
            owner: owner_of(p),
            audit: Audit::new(&p.user_id),
        }
    }

    /// `create` requires name, description and type.
    fn apply(&mut self, body: Map<String, Value>, create: bool) -> AiwmResult<()> {
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
        set(&mut self.tool_id, tool_id);
        set(&mut self.name, name);
        set(&mut self.description, description);
        set(&mut self.kind, kind);
        set(&mut self.category, category);
        set(&mut self.provider, provider);
        set(&mut self.endpoint, endpoint);
        set(&mut self.version, version);
        set(&mut self.status, status);
        set(&mut self.parameters, parameters);
        set(&mut self.response_format, response_format);
        set(&mut self.tags, tags);
        set(&mut self.documentation, documentation.map(Some));
        set(&mut self.examples, examples);
        set(&mut self.is_active, is_active);
        merge(&mut self.extra, &extra);
        Ok(())
    }
}

pub(super) fn routes() -> Api {
    plain_routes::<Tool>("/api/tools", "/api/tools/{id}", "aiwm: tools")
}
