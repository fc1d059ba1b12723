//! Model pulls (contenox's download queue): an Ollama backend pulls the
//! models that share a group with it and that it does not serve yet, one
//! at a time, through Ollama's `POST /api/pull` (newline-delimited JSON
//! progress). What to pull is derived from the groups (the desired
//! state), so the queue is rebuilt by the first probe after a restart
//! and needs no record of its own; a cancelled or failed pull is not
//! tried again until its model leaves the backend's groups.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use serde_json::{Value, json};
use warden_storage::Millis;

use super::probe::{Target, authorize, scrub, transport_error};
use super::record::Backend;

/// Where a pull stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Pull {
    pub org_id: String,
    pub backend_id: String,
    pub base_url: String,
    pub model: String,
    /// `queued`, Ollama's own words while pulling (`pulling manifest`,
    /// `downloading`, ...), `success`, `cancelled`, or `error: ...`.
    pub status: String,
    pub digest: String,
    pub total: u64,
    pub completed: u64,
    pub queued_at: Millis,
}

impl Pull {
    /// The progress event contenox's `/queue/inProgress` sends.
    pub fn event(&self) -> Value {
        json!({
            "status": self.status,
            "digest": self.digest,
            "total": self.total,
            "completed": self.completed,
            "model": self.model,
            "baseUrl": self.base_url,
        })
    }
}

/// Every backend's pulls (queued and running), written by its actor.
pub type PullBoard = Arc<RwLock<HashMap<String, Vec<Pull>>>>;

/// Progress as it happens, for live readers.
pub type PullEvents = tokio::sync::broadcast::Sender<Pull>;

/// Which models a backend should serve (those sharing a group with it).
pub trait PullPlanner: Send + Sync + 'static {
    fn wanted(&self, backend: &Backend) -> Vec<String>;
}

/// Ollama's `name` and `name:latest` are one model.
pub fn same_model(a: &str, b: &str) -> bool {
    a.strip_suffix(":latest").unwrap_or(a) == b.strip_suffix(":latest").unwrap_or(b)
}

/// Pulls `model` onto an Ollama backend, calling `progress` with each
/// line Ollama sends; `Err` is key-free.
pub async fn pull(
    client: &reqwest::Client,
    target: &Target,
    model: &str,
    mut progress: impl FnMut(&Value),
) -> Result<(), String> {
    let key = target.api_key.as_deref();
    let req = authorize(client.post(format!("{}/api/pull", target.base_url)), target)
        .json(&json!({"model": model, "stream": true}));
    let resp = req
        .send()
        .await
        .map_err(|e| scrub(&transport_error(&e), key))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let quoted: String = body.chars().take(200).collect();
        return Err(scrub(
            &format!("HTTP {}: {}", status.as_u16(), quoted.trim()),
            key,
        ));
    }
    let mut lines = resp.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut succeeded = false;
    while let Some(chunk) = lines.next().await {
        let chunk = chunk.map_err(|e| scrub(&transport_error(&e), key))?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if let Some(e) = v["error"].as_str() {
                return Err(scrub(e, key));
            }
            succeeded |= v["status"] == "success";
            progress(&v);
        }
        if pending.len() > 1 << 20 {
            return Err("a progress line longer than 1 MiB".into());
        }
    }
    if succeeded {
        Ok(())
    } else {
        Err("the pull ended before Ollama said success".into())
    }
}
