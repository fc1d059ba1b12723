//! The model registry's record (AIWM §2 models; later the ML models of
//! vareon and forge): what a model is, where its file comes from, and
//! where its download stands on its node. A plain record: written through
//! `catalog.rs`, by clients (`PUT`) and by the downloads that fill it.

use warden_storage::{Record, new_object_id};

use crate::plain::{merge_extra, uuid_like};
use crate::rules::{Checks, MAX_SHORT};
use crate::{Audit, DomainError, Owned, Owner, set};

/// The unique constraint of gateway-declared models' names.
pub const LLM_NAME: &str = "llmName";

/// Model kinds and download statuses AIWM knows.
pub const MODEL_TYPES: [&str; 4] = ["llm", "diffusion", "embedding", "classifier"];
pub const MODEL_STATUSES: [&str; 4] = ["queued", "downloading", "ready", "error"];

/// How an LLM gateway serves a model (contenox's model fields, vareon's
/// LLM models): what it can do and how long a context it takes. Models
/// declared through the gateway have one; a model registered as a file
/// (AIWM) has none, and its kind decides what it can do.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct LlmProfile {
    pub can_chat: bool,
    pub can_embed: bool,
    pub can_prompt: bool,
    pub can_stream: bool,
    pub context_length: u64,
    /// Declared by the server at boot (contenox's default models): it
    /// cannot be deleted.
    pub system: bool,
    /// The backend that serves it first (vareon's `provider_id`), besides
    /// those sharing a group with it.
    pub backend_id: Option<String>,
    /// What a token costs (vareon's `cost_per_token`), for usage costs.
    pub cost_per_token: f64,
}

impl Model {
    /// The model's LLM profile, or the one its kind implies.
    pub fn llm_profile(&self) -> LlmProfile {
        self.llm.clone().unwrap_or_else(|| {
            let embed = self.kind == "embedding";
            LlmProfile {
                can_chat: !embed,
                can_embed: embed,
                can_prompt: !embed,
                can_stream: !embed,
                context_length: 0,
                system: false,
                backend_id: None,
                cost_per_token: 0.0,
            }
        })
    }

    /// Whether it is an ML model (vareon's neosyntis models): created
    /// there, or trained by Warden.
    pub fn is_ml(&self) -> bool {
        self.ml.is_some() || self.trained.is_some()
    }

    /// The dataset `train` trains on: the one a client named, else the
    /// one it was last trained on.
    pub fn training_dataset(&self) -> Option<String> {
        self.ml
            .as_ref()
            .and_then(|ml| ml.training_dataset_id.clone())
            .or_else(|| self.trained.as_ref().map(|t| t.dataset_id.clone()))
    }

    /// Whether an LLM gateway may serve it.
    pub fn is_llm(&self) -> bool {
        self.llm.is_some() || self.kind == "llm" || self.kind == "embedding"
    }
}

impl warden_storage::Versioned for ModelV2 {
    const VERSION: u32 = 2;
    type Previous = ModelV1;
    fn upgrade(v: ModelV1) -> Self {
        ModelV2 {
            id: v.id,
            model_id: v.model_id,
            name: v.name,
            description: v.description,
            version: v.version,
            kind: v.kind,
            framework: v.framework,
            repository: v.repository,
            file_name: v.file_name,
            file_size: v.file_size,
            sha256: v.sha256,
            is_downloaded: v.is_downloaded,
            download_path: v.download_path,
            download_progress: v.download_progress,
            status: v.status,
            node_id: v.node_id,
            total_inference: v.total_inference,
            total_tokens: v.total_tokens,
            total_processing_time: v.total_processing_time,
            tags: v.tags,
            is_active: v.is_active,
            extra: v.extra,
            owner: v.owner,
            audit: v.audit,
            llm: None,
        }
    }
}

impl warden_storage::Versioned for ModelV3 {
    const VERSION: u32 = 3;
    type Previous = ModelV2;
    fn upgrade(v: ModelV2) -> Self {
        ModelV3 {
            id: v.id,
            model_id: v.model_id,
            name: v.name,
            description: v.description,
            version: v.version,
            kind: v.kind,
            framework: v.framework,
            repository: v.repository,
            file_name: v.file_name,
            file_size: v.file_size,
            sha256: v.sha256,
            is_downloaded: v.is_downloaded,
            download_path: v.download_path,
            download_progress: v.download_progress,
            status: v.status,
            node_id: v.node_id,
            total_inference: v.total_inference,
            total_tokens: v.total_tokens,
            total_processing_time: v.total_processing_time,
            tags: v.tags,
            is_active: v.is_active,
            extra: v.extra,
            owner: v.owner,
            audit: v.audit,
            llm: v.llm,
            trained: None,
        }
    }
}

impl warden_storage::Versioned for Model {
    const VERSION: u32 = 4;
    type Previous = ModelV3;
    fn upgrade(v: ModelV3) -> Self {
        Model {
            id: v.id,
            model_id: v.model_id,
            name: v.name,
            description: v.description,
            version: v.version,
            kind: v.kind,
            framework: v.framework,
            repository: v.repository,
            file_name: v.file_name,
            file_size: v.file_size,
            sha256: v.sha256,
            is_downloaded: v.is_downloaded,
            download_path: v.download_path,
            download_progress: v.download_progress,
            status: v.status,
            node_id: v.node_id,
            total_inference: v.total_inference,
            total_tokens: v.total_tokens,
            total_processing_time: v.total_processing_time,
            tags: v.tags,
            is_active: v.is_active,
            extra: v.extra,
            owner: v.owner,
            audit: v.audit,
            llm: v.llm,
            trained: v.trained,
            ml: None,
        }
    }
}

/// [`Model`]'s first layout (before models had an LLM profile).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelV1 {
    pub id: String,
    pub model_id: String,
    pub name: String,
    pub description: String,
    pub version: String,
    pub kind: String,
    pub framework: String,
    pub repository: String,
    pub file_name: String,
    pub file_size: u64,
    pub sha256: Option<String>,
    pub is_downloaded: bool,
    pub download_path: Option<String>,
    pub download_progress: u32,
    pub status: String,
    pub node_id: String,
    pub total_inference: u64,
    pub total_tokens: u64,
    pub total_processing_time: u64,
    pub tags: Vec<String>,
    pub is_active: bool,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
}

warden_storage::first_layout!(ModelV1);

/// [`Model`]'s second layout (before trained models).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelV2 {
    pub id: String,
    pub model_id: String,
    pub name: String,
    pub description: String,
    pub version: String,
    /// AIWM's `type`.
    pub kind: String,
    pub framework: String,
    /// Where the file comes from: an `http(s)://` URL, an `org/name` hub
    /// path (resolved against the node's configured hub), or a local path.
    pub repository: String,
    pub file_name: String,
    pub file_size: u64,
    /// The file's SHA-256 (hex), checked after a download when given.
    pub sha256: Option<String>,
    pub is_downloaded: bool,
    pub download_path: Option<String>,
    pub download_progress: u32,
    pub status: String,
    /// The node that holds (or is to hold) the file, as the client named it.
    pub node_id: String,
    pub total_inference: u64,
    pub total_tokens: u64,
    pub total_processing_time: u64,
    pub tags: Vec<String>,
    pub is_active: bool,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
    /// Set for models declared through an LLM gateway (layout 2).
    pub llm: Option<LlmProfile>,
}

/// [`Model`]'s third layout (before vareon's ML model fields).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelV3 {
    pub id: String,
    pub model_id: String,
    pub name: String,
    pub description: String,
    pub version: String,
    /// AIWM's `type`.
    pub kind: String,
    pub framework: String,
    /// Where the file comes from: an `http(s)://` URL, an `org/name` hub
    /// path (resolved against the node's configured hub), or a local path.
    pub repository: String,
    pub file_name: String,
    pub file_size: u64,
    /// The file's SHA-256 (hex), checked after a download when given.
    pub sha256: Option<String>,
    pub is_downloaded: bool,
    pub download_path: Option<String>,
    pub download_progress: u32,
    pub status: String,
    /// The node that holds (or is to hold) the file, as the client named it.
    pub node_id: String,
    pub total_inference: u64,
    pub total_tokens: u64,
    pub total_processing_time: u64,
    pub tags: Vec<String>,
    pub is_active: bool,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
    /// Set for models declared through an LLM gateway (layout 2).
    pub llm: Option<LlmProfile>,
    /// Set for models Warden trained (forge's and vareon's ML models;
    /// layout 3).
    pub trained: Option<Trained>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Model {
    pub id: String,
    pub model_id: String,
    pub name: String,
    pub description: String,
    pub version: String,
    /// AIWM's `type`.
    pub kind: String,
    pub framework: String,
    /// Where the file comes from: an `http(s)://` URL, an `org/name` hub
    /// path (resolved against the node's configured hub), or a local path.
    pub repository: String,
    pub file_name: String,
    pub file_size: u64,
    /// The file's SHA-256 (hex), checked after a download when given.
    pub sha256: Option<String>,
    pub is_downloaded: bool,
    pub download_path: Option<String>,
    pub download_progress: u32,
    pub status: String,
    /// The node that holds (or is to hold) the file, as the client named it.
    pub node_id: String,
    pub total_inference: u64,
    pub total_tokens: u64,
    pub total_processing_time: u64,
    pub tags: Vec<String>,
    pub is_active: bool,
    pub extra: String,
    pub owner: Owner,
    pub audit: Audit,
    /// Set for models declared through an LLM gateway (layout 2).
    pub llm: Option<LlmProfile>,
    /// Set for models Warden trained (forge's and vareon's ML models;
    /// layout 3).
    pub trained: Option<Trained>,
    /// Set for models created or trained through vareon's neosyntis
    /// (layout 4).
    pub ml: Option<MlProfile>,
}

/// Vareon's ML model fields (neosyntis `MLModelResponse`) that the
/// registry's own fields do not hold. A model Warden trained without
/// them (through forge) is seen there as `trained`, its dataset and
/// artifact taken from its trained part.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct MlProfile {
    /// Vareon's free-form status: `registered` when created, then
    /// `training`, `trained`, `failed` or `stopped` as runs train it, and
    /// `deploying`, `deployed` as it is served.
    pub status: String,
    /// Metadata a client may set; Warden never reads a file from it. A
    /// trained model's is its ONNX download path.
    pub path_to_artifact: Option<String>,
    /// The dataset `train` trains on (a dataset of the same organisation).
    pub training_dataset_id: Option<String>,
    pub deployed_at: Option<warden_storage::Millis>,
    /// The deployment serving it, once `deploy` was asked.
    pub deployment_id: Option<String>,
}

/// What a model trained by Warden carries besides the registry's fields:
/// its run, its figures and its file (a `WARDENML` file, see warden-ml).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Trained {
    pub architecture: String,
    pub dataset_id: String,
    pub training_run_id: String,
    pub equipment_type: String,
    pub parameters: u64,
    pub input_features: Vec<String>,
    /// The run's hyperparameters, as JSON.
    pub hyperparameters: String,
    pub threshold: f64,
    pub val_loss: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub accuracy: f64,
    pub auc_roc: f64,
    /// (train_loss, val_loss) per epoch.
    pub curves: Vec<(f64, f64)>,
    pub blob: warden_storage::BlobRef,
}

/// The forms a trained model's file is served in: Warden's own file
/// (`WARDENML`, what is stored) and its ONNX export in float32 or with
/// int8 weights (warden-ml `onnx`), derived from it on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    WardenMl,
    Onnx,
    OnnxInt8,
}

impl FileFormat {
    pub const NAMES: [&'static str; 3] = ["wardenml", "onnx", "onnx-int8"];

    pub fn parse(s: &str) -> Option<FileFormat> {
        match s {
            "wardenml" => Some(FileFormat::WardenMl),
            "onnx" => Some(FileFormat::Onnx),
            "onnx-int8" => Some(FileFormat::OnnxInt8),
            _ => None,
        }
    }

    /// The file name's extension.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::WardenMl => "wardenml",
            FileFormat::Onnx => "onnx",
            FileFormat::OnnxInt8 => "int8.onnx",
        }
    }
}

impl Trained {
    /// The model's stored file, read. Blocking.
    pub fn file(&self, store: &warden_storage::Store) -> Result<warden_ml::Model, DomainError> {
        warden_ml::Model::from_bytes(&store.blobs().get(&self.blob)?)
            .map_err(|e| DomainError::Unavailable(format!("the model's file cannot be read: {e}")))
    }

    /// The model's file in `format`. Blocking.
    pub fn export(
        &self,
        store: &warden_storage::Store,
        format: FileFormat,
    ) -> Result<Vec<u8>, DomainError> {
        use warden_ml::onnx::{Precision, export};
        Ok(match format {
            FileFormat::WardenMl => store.blobs().get(&self.blob)?,
            FileFormat::Onnx => export(&self.file(store)?, Precision::F32),
            FileFormat::OnnxInt8 => export(&self.file(store)?, Precision::Int8),
        })
    }
}

/// The path of a trained model's exports on Warden's own routes, which
/// nodes (with their node credential) and users of the organisation may
/// read: `?format=` one of [`FileFormat::NAMES`].
pub fn artifact_path(model_id: &str, format: FileFormat) -> String {
    let name = match format {
        FileFormat::WardenMl => "wardenml",
        FileFormat::Onnx => "onnx",
        FileFormat::OnnxInt8 => "onnx-int8",
    };
    format!("/artifacts/models/{model_id}?format={name}")
}

/// The file a node fetches to serve a model, and how it is served.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedFile {
    /// A `model.download` source: a URL, hub path, local path, or
    /// `warden:/path` on the node's own server.
    pub source: String,
    pub file_name: String,
    pub sha256: Option<String>,
    pub size: u64,
    pub framework: String,
}

impl Model {
    /// What a node serves of this model: a trained model's float32 ONNX
    /// export (framework `onnx`, served by `warden serve-model`), fetched
    /// from the server and checked by its hash; any other model's own
    /// file. Blocking for a trained model (it reads and exports its file).
    pub fn served_file(&self, store: &warden_storage::Store) -> Result<ServedFile, DomainError> {
        let Some(t) = &self.trained else {
            return Ok(ServedFile {
                source: self.repository.clone(),
                file_name: self.file_name.clone(),
                sha256: self.sha256.clone(),
                size: self.file_size,
                framework: self.framework.clone(),
            });
        };
        let bytes = t.export(store, FileFormat::Onnx)?;
        use sha2::Digest;
        Ok(ServedFile {
            source: format!("warden:{}", artifact_path(&self.id, FileFormat::Onnx)),
            file_name: format!("{}.onnx", self.id),
            sha256: Some(hex::encode(sha2::Sha256::digest(&bytes))),
            size: bytes.len() as u64,
            framework: "onnx".into(),
        })
    }
}

/// What a client may set on a model; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ModelInput {
    pub model_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub version: Option<String>,
    pub kind: Option<String>,
    pub framework: Option<String>,
    pub repository: Option<String>,
    pub file_name: Option<String>,
    pub file_size: Option<u64>,
    pub sha256: Option<String>,
    pub is_downloaded: Option<bool>,
    pub download_path: Option<String>,
    pub download_progress: Option<u64>,
    pub status: Option<String>,
    pub node_id: Option<String>,
    pub tags: Option<Vec<String>>,
    pub is_active: Option<bool>,
    pub extra: String,
}

impl Model {
    /// A new model: queued, not downloaded, active, version 1.0.0.
    pub fn new(owner: Owner, by: &str) -> Model {
        Model {
            id: new_object_id(),
            model_id: uuid_like(),
            name: String::new(),
            description: String::new(),
            version: "1.0.0".into(),
            kind: String::new(),
            framework: String::new(),
            repository: String::new(),
            file_name: String::new(),
            file_size: 0,
            sha256: None,
            is_downloaded: false,
            download_path: None,
            download_progress: 0,
            status: "queued".into(),
            node_id: String::new(),
            total_inference: 0,
            total_tokens: 0,
            total_processing_time: 0,
            tags: Vec::new(),
            is_active: true,
            extra: String::new(),
            owner,
            audit: Audit::new(by),
            llm: None,
            trained: None,
            ml: None,
        }
    }

    /// Applies an input; `create` makes name, type and framework required.
    /// Usage counters are Warden's own and never set by a client.
    pub fn apply(&mut self, input: ModelInput, create: bool) -> Result<(), DomainError> {
        let mut c = Checks::new();
        c.key("modelId", &input.model_id, false);
        c.text("name", &input.name, create, MAX_SHORT);
        c.text("description", &input.description, false, 4096);
        c.text("version", &input.version, false, MAX_SHORT);
        c.one_of("type", &input.kind, &MODEL_TYPES, create);
        c.text("framework", &input.framework, create, MAX_SHORT);
        c.text("repository", &input.repository, false, 2048);
        c.text("fileName", &input.file_name, false, MAX_SHORT);
        c.text("downloadPath", &input.download_path, false, 4096);
        c.one_of("status", &input.status, &MODEL_STATUSES, false);
        c.text("nodeId", &input.node_id, false, MAX_SHORT);
        c.texts("tags", &input.tags, MAX_SHORT);
        if input.download_progress.is_some_and(|p| p > 100) {
            c.fail("downloadProgress must not be greater than 100".into());
        }
        if let Some(sum) = &input.sha256
            && !(sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            c.fail("sha256 must be 64 hexadecimal characters".into());
        }
        if let Some(name) = &input.file_name
            && (name.contains('/') || name.contains('\\') || name == ".." || name == ".")
        {
            c.fail("fileName must be a file name, not a path".into());
        }
        c.finish()?;
        set(&mut self.model_id, input.model_id);
        set(&mut self.name, input.name);
        set(&mut self.description, input.description);
        set(&mut self.version, input.version);
        set(&mut self.kind, input.kind);
        set(&mut self.framework, input.framework);
        set(&mut self.repository, input.repository);
        set(&mut self.file_name, input.file_name);
        set(&mut self.file_size, input.file_size);
        set(
            &mut self.sha256,
            input.sha256.map(|s| Some(s.to_ascii_lowercase())),
        );
        set(&mut self.is_downloaded, input.is_downloaded);
        set(&mut self.download_path, input.download_path.map(Some));
        set(
            &mut self.download_progress,
            input.download_progress.map(|p| p as u32),
        );
        set(&mut self.status, input.status);
        set(&mut self.node_id, input.node_id);
        set(&mut self.tags, input.tags);
        set(&mut self.is_active, input.is_active);
        merge_extra(&mut self.extra, &input.extra);
        Ok(())
    }
}

impl Record for Model {
    const COLLECTION: &'static str = "models";
    fn id(&self) -> &str {
        &self.id
    }
    /// Models declared through an LLM gateway are named by their name
    /// there (contenox's model id): unique in their organisation.
    fn uniques(&self) -> Vec<(&'static str, String)> {
        let mut u = vec![(
            "modelId",
            format!("{}/{}", self.owner.org_id, self.model_id),
        )];
        if self.llm.is_some() {
            u.push((LLM_NAME, format!("{}/{}", self.owner.org_id, self.name)));
        }
        u
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        crate::created_order(&self.owner.org_id, self.audit.created_at)
    }
}

impl crate::catalog::Plain for Model {
    const KIND: &'static str = "Model";
    fn audit(&self) -> &Audit {
        &self.audit
    }
    fn audit_mut(&mut self) -> &mut Audit {
        &mut self.audit
    }
}

impl Owned for Model {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_rules() {
        let mut m = Model::new(Owner::default(), "u");
        assert_eq!((m.status.as_str(), m.version.as_str()), ("queued", "1.0.0"));
        let bad = ModelInput {
            kind: Some("robot".into()),
            download_progress: Some(101),
            sha256: Some("xyz".into()),
            file_name: Some("../etc/passwd".into()),
            ..Default::default()
        };
        let Err(DomainError::Invalid(errors)) = m.apply(bad, true) else {
            panic!("expected errors")
        };
        assert_eq!(errors.len(), 6, "{errors:?}");
        let ok = ModelInput {
            name: Some("m".into()),
            kind: Some("llm".into()),
            framework: Some("onnx".into()),
            sha256: Some("AB".repeat(32)),
            ..Default::default()
        };
        m.apply(ok, true).unwrap();
        assert_eq!(m.sha256.as_deref(), Some("ab".repeat(32).as_str()));
    }

    /// The first layout as an older build stored it (same collection).
    impl Record for ModelV1 {
        const COLLECTION: &'static str = "models";
        fn id(&self) -> &str {
            &self.id
        }
    }

    /// A store written before models had an LLM profile reads back: the
    /// model has none, and its kind says what it can do.
    #[tokio::test]
    async fn layout_1_models_read_back_without_a_profile() {
        let dir = tempfile::tempdir().unwrap();
        let config = warden_storage::StoreConfig::new(dir.path().to_owned());
        let mut m = Model::new(Owner::default(), "u");
        m.name = "nomic-embed-text".into();
        m.kind = "embedding".into();
        let v1 = ModelV1 {
            id: m.id.clone(),
            model_id: m.model_id.clone(),
            name: m.name.clone(),
            description: m.description.clone(),
            version: m.version.clone(),
            kind: m.kind.clone(),
            framework: m.framework.clone(),
            repository: m.repository.clone(),
            file_name: m.file_name.clone(),
            file_size: m.file_size,
            sha256: m.sha256.clone(),
            is_downloaded: m.is_downloaded,
            download_path: m.download_path.clone(),
            download_progress: m.download_progress,
            status: m.status.clone(),
            node_id: m.node_id.clone(),
            total_inference: m.total_inference,
            total_tokens: m.total_tokens,
            total_processing_time: m.total_processing_time,
            tags: m.tags.clone(),
            is_active: m.is_active,
            extra: m.extra.clone(),
            owner: m.owner.clone(),
            audit: m.audit.clone(),
        };
        {
            let store = warden_storage::Store::open(&config).unwrap();
            store.insert(v1).await.unwrap();
            store.close();
        }
        let store = warden_storage::Store::open(&config).unwrap();
        let read: Model = store.get(&m.id).unwrap().unwrap();
        assert_eq!(read, m);
        assert!(read.is_llm());
        let p = read.llm_profile();
        assert!(p.can_embed && !p.can_chat && !p.system);
    }
}
