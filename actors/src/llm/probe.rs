//! What a backend really serves, asked of it in its own protocol:
//! Ollama's `GET /api/tags`, OpenAI's (and vLLM's, llama.cpp's)
//! `GET /v1/models`, Gemini's `GET /v1beta/models`. Errors say what
//! failed without the key (see [`scrub`]).

use std::time::{Duration, Instant};

use serde_json::Value;
use warden_storage::Millis;

/// How long one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most of a backend's error body quoted in an error.
const QUOTED: usize = 200;

/// A model a backend serves, as contenox's `ModelPullStatus` describes it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LiveModel {
    /// The name requests use (`mistral:instruct`, `gpt-4o`).
    pub model: String,
    pub name: String,
    pub digest: String,
    pub size: u64,
    pub modified_at: Option<String>,
    pub family: String,
    pub families: Vec<String>,
    pub format: String,
    pub parameter_size: String,
    pub parent_model: String,
    pub quantization_level: String,
    pub context_length: u64,
    pub can_chat: bool,
    pub can_embed: bool,
    pub can_stream: bool,
}

/// A backend's live state: what its last probe found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LiveState {
    pub models: Vec<LiveModel>,
    /// The last probe's error; `None` when it answered.
    pub error: Option<String>,
    /// Whether the last probe answered (false before the first).
    pub healthy: bool,
    /// How long the last probe took.
    pub latency_ms: Option<u64>,
    pub checked_at: Option<Millis>,
}

/// Who to ask and how.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: String,
    pub base_url: String,
    pub api_key: Option<String>,
}

/// Removes a key from a text that may quote it.
pub fn scrub(text: &str, key: Option<&str>) -> String {
    match key {
        Some(k) if k.len() >= 4 => text.replace(k, "***"),
        _ => text.to_owned(),
    }
}

/// `{base}/v1/{path}` for OpenAI-style servers, whose base URL may or
/// may not already end in `/v1`.
pub fn openai_url(base: &str, path: &str) -> String {
    if base.ends_with("/v1") {
        format!("{base}/{path}")
    } else {
        format!("{base}/v1/{path}")
    }
}

/// Adds the target's credentials in its protocol's header.
pub fn authorize(req: reqwest::RequestBuilder, target: &Target) -> reqwest::RequestBuilder {
    match (&target.api_key, target.kind.as_str()) {
        (Some(key), "gemini") => req.header("x-goog-api-key", key),
        (Some(key), _) => req.bearer_auth(key),
        (None, _) => req,
    }
}

/// Describes a transport error without its URL (which is the
/// operator's, but keeps errors short) and never with the key.
pub fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused or unreachable".into()
    } else if e.is_decode() || e.is_body() {
        "the answer could not be read".into()
    } else {
        let mut text = e.to_string();
        if let Some(url) = e.url() {
            text = text.replace(url.as_str(), "");
        }
        text
    }
}

/// Asks the backend what it serves; `Err` is a key-free description.
pub async fn probe(
    client: &reqwest::Client,
    target: &Target,
) -> (Result<Vec<LiveModel>, String>, Duration) {
    let started = Instant::now();
    let result = ask(client, target)
        .await
        .map_err(|e| scrub(&e, target.api_key.as_deref()));
    (result, started.elapsed())
}

async fn ask(client: &reqwest::Client, target: &Target) -> Result<Vec<LiveModel>, String> {
    let (path, url) = match target.kind.as_str() {
        "ollama" => ("GET /api/tags", format!("{}/api/tags", target.base_url)),
        "gemini" => (
            "GET /v1beta/models",
            format!("{}/v1beta/models", target.base_url),
        ),
        _ => ("GET /v1/models", openai_url(&target.base_url, "models")),
    };
    let resp = authorize(client.get(&url), target)
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{path}: {}", transport_error(&e)))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("{path}: {}", transport_error(&e)))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let quoted: String = text.chars().take(QUOTED).collect();
        return Err(format!(
            "{path}: HTTP {}: {}",
            status.as_u16(),
            quoted.trim()
        ));
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{path}: the answer is not JSON: {e}"))?;
    let models = match target.kind.as_str() {
        "ollama" => ollama_models(&v),
        "gemini" => gemini_models(&v),
        _ => openai_models(&v),
    };
    models.ok_or_else(|| format!("{path}: the answer does not list models"))
}

/// Embedding models cannot chat; Ollama's tag list does not say which
/// are which, so the name does (`nomic-embed-text`, `mxbai-embed-large`).
fn is_embedding(name: &str) -> bool {
    name.contains("embed")
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

fn ollama_models(v: &Value) -> Option<Vec<LiveModel>> {
    let list = v["models"].as_array()?;
    Some(
        list.iter()
            .filter_map(|m| {
                let model = m["model"].as_str().or(m["name"].as_str())?.to_owned();
                let d = &m["details"];
                let embed = is_embedding(&model);
                Some(LiveModel {
                    name: m["name"].as_str().unwrap_or(&model).to_owned(),
                    digest: text(m, "digest"),
                    size: m["size"].as_u64().unwrap_or(0),
                    modified_at: m["modified_at"].as_str().map(str::to_owned),
                    family: text(d, "family"),
                    families: d["families"]
                        .as_array()
                        .map(|f| {
                            f.iter()
                                .filter_map(|x| x.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                    format: text(d, "format"),
                    parameter_size: text(d, "parameter_size"),
                    parent_model: text(d, "parent_model"),
                    quantization_level: text(d, "quantization_level"),
                    context_length: 0,
                    can_chat: !embed,
                    can_embed: embed,
                    can_stream: !embed,
                    model,
                })
            })
            .collect(),
    )
}

fn openai_models(v: &Value) -> Option<Vec<LiveModel>> {
    let list = v["data"].as_array()?;
    Some(
        list.iter()
            .filter_map(|m| {
                let model = m["id"].as_str()?.to_owned();
                let embed = is_embedding(&model);
                Some(LiveModel {
                    name: model.clone(),
                    // vLLM says how long a context the model takes.
                    context_length: m["max_model_len"].as_u64().unwrap_or(0),
                    parent_model: text(m, "root"),
                    can_chat: !embed,
                    can_embed: embed,
                    can_stream: !embed,
                    model,
                    ..Default::default()
                })
            })
            .collect(),
    )
}

fn gemini_models(v: &Value) -> Option<Vec<LiveModel>> {
    let list = v["models"].as_array()?;
    Some(
        list.iter()
            .filter_map(|m| {
                let full = m["name"].as_str()?;
                let model = full.strip_prefix("models/").unwrap_or(full).to_owned();
                let methods: Vec<&str> = m["supportedGenerationMethods"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let chat = methods.contains(&"generateContent");
                Some(LiveModel {
                    name: m["displayName"].as_str().unwrap_or(&model).to_owned(),
                    context_length: m["inputTokenLimit"].as_u64().unwrap_or(0),
                    can_chat: chat,
                    can_embed: methods.contains(&"embedContent"),
                    can_stream: chat,
                    model,
                    ..Default::default()
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_protocol_lists_its_models() {
        let o = ollama_models(
            &json!({"models": [{"name": "mistral:instruct", "model": "mistral:instruct",
            "size": 7, "digest": "sha256:1", "modified_at": "2024-01-01T00:00:00Z",
            "details": {"family": "llama", "families": ["llama"], "format": "gguf",
                "parameter_size": "7B", "quantization_level": "Q4_0", "parent_model": ""}},
            {"name": "nomic-embed-text:latest"}]}),
        )
        .unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(
            (o[0].size, o[0].family.as_str(), o[0].can_chat),
            (7, "llama", true)
        );
        assert!(o[1].can_embed && !o[1].can_chat);
        let a = openai_models(
            &json!({"object": "list", "data": [{"id": "gpt-4o", "object": "model"},
            {"id": "served", "max_model_len": 8192}]}),
        )
        .unwrap();
        assert_eq!((a[0].model.as_str(), a[1].context_length), ("gpt-4o", 8192));
        let g = gemini_models(&json!({"models": [{"name": "models/gemini-1.5-flash",
            "inputTokenLimit": 1000, "supportedGenerationMethods": ["generateContent"]}]}))
        .unwrap();
        assert_eq!(
            (g[0].model.as_str(), g[0].can_chat),
            ("gemini-1.5-flash", true)
        );
        assert!(ollama_models(&json!({"error": "x"})).is_none());
    }

    #[test]
    fn keys_are_scrubbed_and_urls_composed() {
        assert_eq!(
            scrub("bad key sk-secret-1", Some("sk-secret-1")),
            "bad key ***"
        );
        assert_eq!(
            openai_url("https://api.openai.com/v1", "models"),
            "https://api.openai.com/v1/models"
        );
        assert_eq!(
            openai_url("http://h:8000", "models"),
            "http://h:8000/v1/models"
        );
    }
}
