//! `/api/tools` (AIWM §7): plain records through the store.

use serde_json::{Map, Value, json};
use warden_domain::{Audit, Tool, ToolInput};
use warden_identity::Principal;

use super::{AiwmResult, Fields, PlainResource, Resource, owner_of, plain_routes, view_of};
use crate::openapi::Api;

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
        Tool::new(owner_of(p), &p.user_id)
    }

    /// The body's shapes; the core's rules decide the rest.
    fn apply_body(&mut self, body: Map<String, Value>, create: bool) -> AiwmResult<()> {
        let mut f = Fields::new(body);
        let text = |f: &mut Fields, key: &str| f.string_max(key, false, usize::MAX);
        let input = ToolInput {
            tool_id: text(&mut f, "toolId"),
            name: text(&mut f, "name"),
            description: text(&mut f, "description"),
            kind: text(&mut f, "type"),
            category: text(&mut f, "category"),
            provider: text(&mut f, "provider"),
            endpoint: text(&mut f, "endpoint"),
            version: text(&mut f, "version"),
            status: text(&mut f, "status"),
            parameters: f.json("parameters", true),
            response_format: f.json("responseFormat", true),
            tags: f.strings("tags", false),
            documentation: text(&mut f, "documentation"),
            examples: f.json("examples", false),
            is_active: f.boolean("isActive", false),
            extra: String::new(),
        };
        // Usage statistics are recorded by Warden when agents call the tool.
        f.drop(&["usage", "totalUsage", "totalFailures", "averageLatency"]);
        let extra = f.finish()?;
        Ok(Tool::apply(self, ToolInput { extra, ..input }, create)?)
    }
}

pub(super) fn routes() -> Api {
    plain_routes::<Tool>("/api/tools", "/api/tools/{id}", "aiwm: tools")
}
