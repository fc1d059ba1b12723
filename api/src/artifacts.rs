//! Trained models' files as they leave the server: Warden's own file or
//! its ONNX export (forge's model download, `GET /artifacts/models/{id}`
//! that node daemons fetch a deployment's model from), and the edge
//! bundle (the ONNX export with a JSON manifest, as a tar archive) of
//! forge's deployments. One place for formats, blocking work and headers.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use warden_domain::{DomainError, FileFormat, Model};

use crate::AppState;
use crate::auth::OrgMember;
use crate::dialects::{Aiwm, iso};
use crate::error::ApiError;
use crate::openapi::Api;

/// Runs blocking work (reading and exporting a model) off the runtime.
pub(crate) async fn blocking<T: Send + 'static, D>(
    f: impl FnOnce() -> Result<T, DomainError> + Send + 'static,
) -> Result<T, ApiError<D>> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??)
}

/// `?format=`: one of [`FileFormat::NAMES`], else a validation error.
pub(crate) fn format<D>(
    asked: Option<&str>,
    default: FileFormat,
) -> Result<FileFormat, ApiError<D>> {
    match asked {
        None => Ok(default),
        Some(f) => FileFormat::parse(f).ok_or_else(|| {
            ApiError::validation(vec![format!(
                "format must be one of {} (got {f})",
                FileFormat::NAMES.join(", ")
            )])
        }),
    }
}

/// A file download: octet-stream, named `name`.
pub(crate) fn attachment(name: &str, bytes: Vec<u8>) -> Response {
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .collect();
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    )
        .into_response()
}

/// A trained model's file in `format`, read and exported off the runtime.
pub(crate) async fn export<D>(
    state: &AppState,
    m: &Model,
    format: FileFormat,
) -> Result<Vec<u8>, ApiError<D>> {
    let t = m
        .trained
        .clone()
        .ok_or_else(|| ApiError::not_found("Model", &m.id))?;
    let store = state.store.clone();
    blocking(move || t.export(&store, format)).await
}

/// The model's file as a download named `mdl_<id>.<extension>`.
pub(crate) async fn download<D>(
    state: &AppState,
    m: &Model,
    format: FileFormat,
) -> Result<Response, ApiError<D>> {
    let bytes = export(state, m, format).await?;
    Ok(attachment(
        &format!("mdl_{}.{}", m.id, format.extension()),
        bytes,
    ))
}

/// The manifest of an edge bundle: what the model is, what it takes and
/// gives, how it is scored, and the file's hash.
pub(crate) fn manifest(m: &Model, onnx: &[u8], extra: Value) -> Value {
    use sha2::Digest;
    let t = m.trained.as_ref();
    let h: Value = t
        .and_then(|t| serde_json::from_str(&t.hyperparameters).ok())
        .unwrap_or(Value::Null);
    let mut v = json!({
        "format": "warden-edge-bundle/1",
        "model_id": format!("mdl_{}", m.id),
        "name": m.name,
        "version": m.version,
        "architecture": t.map(|t| t.architecture.clone()),
        "file": "model.onnx",
        "file_size_bytes": onnx.len(),
        "sha256": hex::encode(sha2::Sha256::digest(onnx)),
        "onnx": {"opset": 17, "inputs": {"x": ["batch", h["sequence_length"], t.map(|t| t.input_features.len())]},
                 "outputs": {"score": ["batch"], "anomaly": ["batch"]}},
        "features": t.map(|t| t.input_features.clone()),
        "threshold": t.map(|t| t.threshold),
        "runtime": "warden serve-model --model model.onnx (or any ONNX Runtime)",
        "created_at": iso(m.audit.created_at),
    });
    if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
        v.extend(extra);
    }
    v
}

/// A POSIX (ustar) archive of `files`, in order.
pub(crate) fn tar(files: &[(&str, &[u8])], mtime_secs: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in files {
        let mut h = [0u8; 512];
        let octal = |field: &mut [u8], n: u64| {
            let s = format!("{:0width$o}\0", n, width = field.len() - 1);
            field.copy_from_slice(s.as_bytes());
        };
        h[..name.len().min(100)].copy_from_slice(&name.as_bytes()[..name.len().min(100)]);
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], bytes.len() as u64);
        octal(&mut h[136..148], mtime_secs);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(bytes);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// The edge bundle of a trained model: `model.onnx` (float32) and
/// `manifest.json`, as a tar archive.
pub(crate) async fn bundle<D>(
    state: &AppState,
    m: &Model,
    extra: Value,
) -> Result<Vec<u8>, ApiError<D>> {
    let onnx = export(state, m, FileFormat::Onnx).await?;
    let manifest = serde_json::to_vec_pretty(&manifest(m, &onnx, extra)).unwrap_or_default();
    let mtime = (m.audit.updated_at.max(0) / 1000) as u64;
    Ok(tar(
        &[("manifest.json", &manifest), ("model.onnx", &onnx)],
        mtime,
    ))
}

#[derive(serde::Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

/// `GET /artifacts/models/{id}?format=`: a trained model's file for a
/// user or a node daemon of its organisation (deployments fetch the
/// ONNX export from here). ONNX by default.
async fn model_file(
    State(state): State<AppState>,
    OrgMember(org, _, _): OrgMember<Aiwm>,
    Path(id): Path<String>,
    Query(q): Query<FormatQuery>,
) -> Result<Response, ApiError<Aiwm>> {
    let format = format(q.format.as_deref(), FileFormat::Onnx)?;
    let m: Model = warden_domain::find_in_org(&state.store, &org, &id, "mdl_", "Model")?;
    download(&state, &m, format).await
}

pub(crate) fn routes() -> Api {
    Api::new().get(
        "/artifacts/models/{model_id}",
        "warden: artifacts",
        "A trained model's file (?format=onnx|onnx-int8|wardenml), for users and node daemons of its organisation",
        model_file,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive reads back with a standard reader's rules: headers
    /// with valid checksums, sizes and contents at 512-byte blocks.
    #[test]
    fn tar_is_ustar() {
        let a = tar(&[("manifest.json", b"{}"), ("model.onnx", &[7u8; 600])], 1);
        assert_eq!(a.len(), 512 + 512 + 512 + 1024 + 1024);
        let h = &a[..512];
        assert_eq!(&h[..13], b"manifest.json");
        assert_eq!(&h[257..262], b"ustar");
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut blank = h.to_vec();
        blank[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, blank.iter().map(|&b| b as u64).sum::<u64>());
        assert_eq!(&a[512..514], b"{}");
        let h2 = &a[1024..1536];
        assert_eq!(&h2[..10], b"model.onnx");
        assert_eq!(
            u64::from_str_radix(std::str::from_utf8(&h2[124..135]).unwrap(), 8).unwrap(),
            600
        );
        assert!(a[1536..2136].iter().all(|&b| b == 7));
    }
}
