//! `/api/models` (AIWM §2): the model registry, plain records through the
//! store; downloads on nodes move `status`, `downloadProgress`,
//! `isDownloaded` and `downloadPath`.

use serde_json::{Map, Value, json};
use warden_domain::{Audit, Model, ModelInput};
use warden_identity::Principal;

use super::{AiwmResult, Fields, PlainResource, Resource, owner_of, plain_routes, view_of};
use crate::openapi::Api;

impl Resource for Model {
    const NAME: &'static str = "Model";
    const KEY: &'static str = "modelId";

    fn view(&self) -> Value {
        let mut fields = json!({
            "_id": self.id,
            "modelId": self.model_id,
            "name": self.name,
            "description": self.description,
            "version": self.version,
            "type": self.kind,
            "framework": self.framework,
            "repository": self.repository,
            "fileName": self.file_name,
            "fileSize": self.file_size,
            "isDownloaded": self.is_downloaded,
            "downloadProgress": self.download_progress,
            "status": self.status,
            "nodeId": self.node_id,
            "totalInference": self.total_inference,
            "totalTokens": self.total_tokens,
            "totalProcessingTime": self.total_processing_time,
            "tags": self.tags,
            "isActive": self.is_active,
        });
        if let Some(p) = &self.download_path {
            fields["downloadPath"] = json!(p);
        }
        if let Some(s) = &self.sha256 {
            fields["sha256"] = json!(s);
        }
        view_of(&self.extra, fields, &self.owner, &self.audit)
    }

    fn audit(&self) -> &Audit {
        &self.audit
    }
}

impl PlainResource for Model {
    fn blank(p: &Principal) -> Self {
        Model::new(owner_of(p), &p.user_id)
    }

    /// The body's shapes; the core's rules decide the rest.
    fn apply_body(&mut self, body: Map<String, Value>, create: bool) -> AiwmResult<()> {
        let mut f = Fields::new(body);
        let text = |f: &mut Fields, key: &str| f.string_max(key, false, usize::MAX);
        let input = ModelInput {
            model_id: text(&mut f, "modelId"),
            name: text(&mut f, "name"),
            description: text(&mut f, "description"),
            version: text(&mut f, "version"),
            kind: text(&mut f, "type"),
            framework: text(&mut f, "framework"),
            repository: text(&mut f, "repository"),
            file_name: text(&mut f, "fileName"),
            file_size: f.count("fileSize", false),
            sha256: text(&mut f, "sha256"),
            is_downloaded: f.boolean("isDownloaded", false),
            download_path: text(&mut f, "downloadPath"),
            download_progress: f.count("downloadProgress", false),
            status: text(&mut f, "status"),
            node_id: text(&mut f, "nodeId"),
            tags: f.strings("tags", false),
            is_active: f.boolean("isActive", false),
            extra: String::new(),
        };
        // Usage statistics are recorded by Warden from real inferences.
        f.drop(&["totalInference", "totalTokens", "totalProcessingTime"]);
        let extra = f.finish()?;
        Ok(Model::apply(self, ModelInput { extra, ..input }, create)?)
    }
}

pub(super) fn routes() -> Api {
    plain_routes::<Model>("/api/models", "/api/models/{id}", "aiwm: models")
}
