//! The model registry follows real downloads: a `model.download` command
//! whose resource is a model moves that model's `status`,
//! `downloadProgress`, `isDownloaded` and `downloadPath` as the node
//! reports progress and its result (not a trained model's: its file is
//! the server's, and nodes fetch exports of it).

use serde_json::Value;
use warden_actors::node::{CommandEvent, CommandStatus, NodeCommand, ReplyKind};
use warden_domain::{DomainError, Model, catalog};
use warden_storage::Store;

/// Where a download stands, from one node answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Download {
    Progress(u32),
    Done {
        path: Option<String>,
        size: Option<u64>,
    },
    Failed,
}

/// What an answer says about its model's download, if it is one.
pub(crate) fn download_of(event: &CommandEvent) -> Option<Download> {
    let cmd = &event.command;
    if cmd.kind != "model.download" || cmd.resource_type != "model" {
        return None;
    }
    Some(match (event.kind, cmd.status) {
        (ReplyKind::Ack, _) => Download::Progress(
            event
                .progress
                .map(|p| p.clamp(0.0, 99.0).round() as u32)
                .unwrap_or(0),
        ),
        (ReplyKind::Result, CommandStatus::Succeeded) => {
            let result: Value = cmd
                .result
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null);
            Download::Done {
                path: result["downloadPath"].as_str().map(str::to_owned),
                size: result["fileSize"].as_u64(),
            }
        }
        (ReplyKind::Result, _) => Download::Failed,
    })
}

/// Records a download's state on its model (by `_id`, or `modelId` in the
/// command's organisation). A model deleted meanwhile is left alone.
pub(crate) async fn record(store: &Store, cmd: &NodeCommand, download: Download) {
    let model = match store.get::<Model>(&cmd.resource_id) {
        Ok(Some(m)) => m,
        _ => match store.get_by_unique::<Model>(
            "modelId",
            &format!("{}/{}", cmd.owner.org_id, cmd.resource_id),
        ) {
            Ok(Some(m)) => m,
            _ => return,
        },
    };
    // A trained model's file is Warden's; a node's copy of its export
    // says nothing about it.
    if model.trained.is_some() {
        return;
    }
    let id = model.id;
    let result = catalog::update::<Model>(store, &id, &cmd.node_id, |m| {
        match &download {
            Download::Progress(p) => {
                if m.status != "ready" {
                    m.status = "downloading".into();
                    m.download_progress = (*p).max(m.download_progress.min(99));
                }
            }
            Download::Done { path, size } => {
                m.status = "ready".into();
                m.is_downloaded = true;
                m.download_progress = 100;
                if path.is_some() {
                    m.download_path.clone_from(path);
                }
                if let Some(size) = size {
                    m.file_size = *size;
                }
            }
            Download::Failed => {
                m.status = "error".into();
                m.is_downloaded = false;
            }
        }
        Ok(())
    })
    .await;
    match result {
        Ok(_) | Err(DomainError::NotFound { .. }) => {}
        Err(e) => tracing::warn!(model = %id, error = %e, "could not record a download"),
    }
}
