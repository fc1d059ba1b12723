//! `model.download`: fetches a model file into the node's models
//! directory, with resume, a size and SHA-256 check, and progress reports.
//!
//! The command's data is read as AIWM's daemon reads it, with the
//! reference's names as alternatives: `source` (or `repository`),
//! `targetPath` (or `downloadPath`), `fileName`, `sha256` (or
//! `checksum`), `fileSize` (or `size`). A source is an `http(s)://` URL,
//! a hub path `org/name` (or `huggingface.co/org/name`: fetched from
//! `{hub}/{org}/{name}/resolve/main/{fileName}`), or a local path
//! (`/...` or `file://...`), copied, or `warden:/path`: a file of the
//! server this daemon is connected to (a trained model's ONNX export),
//! fetched from `{server}/path` with the daemon's own credential, which
//! is never sent anywhere else. The target is a directory when a
//! `fileName` is given (the file goes inside it), else the file itself;
//! relative targets are under the models directory, and no target may
//! leave it (`..`, an absolute path elsewhere, a symlink out).

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What downloads need from the daemon's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub models_dir: PathBuf,
    /// Where files sent to this node's devices go (`file.download`).
    pub uploads_dir: PathBuf,
    /// Base URL of the model hub for `org/name` sources.
    pub hub_url: String,
    pub http: reqwest::Client,
    /// The server's base URL and the daemon's credential, for `warden:`
    /// sources.
    pub server: Option<(String, String)>,
}

/// The scheme of files served by the daemon's own server.
pub const SERVER_SCHEME: &str = "warden:";

impl Settings {
    pub fn new(models_dir: PathBuf, hub_url: String) -> anyhow::Result<Settings> {
        crate::install_tls_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Settings {
            uploads_dir: models_dir.join("uploads"),
            models_dir,
            hub_url: hub_url.trim_end_matches('/').to_owned(),
            http,
            server: None,
        })
    }

    /// Files sent to this node's devices go under `dir`.
    pub fn with_uploads(mut self, dir: PathBuf) -> Settings {
        self.uploads_dir = dir;
        self
    }

    /// Lets `warden:` sources be fetched from `server` with `token`.
    pub fn with_server(mut self, server: &str, token: &str) -> Settings {
        self.server = Some((server.trim_end_matches('/').to_owned(), token.to_owned()));
        self
    }
}

/// A failed command's error body: `{code, message}`.
pub fn failure(code: &str, message: impl Into<String>) -> Value {
    json!({"code": code, "message": message.into()})
}

#[derive(Debug, PartialEq)]
enum Source {
    Http(String),
    /// A path on the daemon's server.
    Server(String),
    Local(PathBuf),
}

fn text<'a>(data: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| data[*k].as_str())
        .filter(|s| !s.is_empty())
}

fn source_of(source: &str, file_name: Option<&str>, hub: &str) -> Result<Source, Value> {
    if let Some(path) = source.strip_prefix(SERVER_SCHEME) {
        if !path.starts_with('/') || path.starts_with("//") {
            return Err(failure(
                "INVALID_SOURCE",
                format!("a {SERVER_SCHEME} source is a path on the server: {source}"),
            ));
        }
        return Ok(Source::Server(path.to_owned()));
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        return Ok(Source::Http(match file_name {
            Some(f) if source.ends_with('/') => format!("{source}{f}"),
            _ => source.to_owned(),
        }));
    }
    if let Some(path) = source.strip_prefix("file://") {
        return Ok(Source::Local(PathBuf::from(path)));
    }
    if source.starts_with('/') {
        return Ok(Source::Local(PathBuf::from(source)));
    }
    let repo = source.strip_prefix("huggingface.co/").unwrap_or(source);
    let parts: Vec<&str> = repo.split('/').collect();
    let valid = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match (parts.as_slice(), file_name) {
        ([org, name], Some(file)) if valid(org) && valid(name) => Ok(Source::Http(format!(
            "{hub}/{org}/{name}/resolve/main/{}",
            form_urlencoded::byte_serialize(file.as_bytes()).collect::<String>()
        ))),
        ([_, _], None) => Err(failure("INVALID_SOURCE", "a hub source needs a fileName")),
        _ => Err(failure(
            "INVALID_SOURCE",
            format!("source must be an http(s) URL, org/name or a local path: {source}"),
        )),
    }
}

/// The file to write, inside the models directory (created if needed).
async fn target_of(
    models_dir: &Path,
    target: Option<&str>,
    file_name: Option<&str>,
    resource_id: &str,
) -> Result<PathBuf, Value> {
    let invalid = |m: String| failure("INVALID_TARGET", m);
    if let Some(f) = file_name
        && (f.contains('/') || f.contains('\\') || f == ".." || f == "." || f.is_empty())
    {
        return Err(invalid(format!("fileName must be a file name: {f}")));
    }
    let relative = match target {
        Some(t) => {
            let path = Path::new(t);
            if path.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(invalid(format!("targetPath may not contain '..': {t}")));
            }
            if path.is_absolute() {
                path.strip_prefix(models_dir)
                    .map_err(|_| {
                        invalid(format!(
                            "targetPath {t} is outside the models directory {}",
                            models_dir.display()
                        ))
                    })?
                    .to_path_buf()
            } else {
                path.to_path_buf()
            }
        }
        None => {
            let id: String = resource_id
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            PathBuf::from(if id.is_empty() || id == "." || id == ".." {
                "model".to_owned()
            } else {
                id
            })
        }
    };
    let file = match file_name {
        Some(f) => models_dir.join(relative).join(f),
        None if target.is_some() => models_dir.join(relative),
        None => models_dir.join(relative).join("model"),
    };
    let parent = file
        .parent()
        .ok_or_else(|| invalid("the target has no directory".into()))?;
    tokio::fs::create_dir_all(parent).await.map_err(|e| {
        failure(
            "DOWNLOAD_FAILED",
            format!("creating {}: {e}", parent.display()),
        )
    })?;
    // A symlink inside the models directory must not lead out of it.
    let root = tokio::fs::canonicalize(models_dir)
        .await
        .map_err(|e| failure("DOWNLOAD_FAILED", format!("models directory: {e}")))?;
    let real_parent = tokio::fs::canonicalize(parent)
        .await
        .map_err(|e| failure("DOWNLOAD_FAILED", e.to_string()))?;
    if !real_parent.starts_with(&root) {
        return Err(invalid(format!(
            "{} leads outside the models directory",
            file.display()
        )));
    }
    Ok(real_parent.join(file.file_name().expect("a file path")))
}

/// A model file named by a deployment (`modelPath`: relative to the
/// models directory, or absolute inside it); it must exist there.
pub async fn inside_models_dir(models_dir: &Path, path: &str) -> Result<PathBuf, Value> {
    let invalid = |m: String| failure("INVALID_MODEL_PATH", m);
    if path.is_empty() {
        return Err(invalid("modelPath is required".into()));
    }
    let p = Path::new(path);
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(invalid(format!("modelPath may not contain '..': {path}")));
    }
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        models_dir.join(p)
    };
    let root = tokio::fs::canonicalize(models_dir)
        .await
        .map_err(|e| invalid(format!("models directory: {e}")))?;
    let real = tokio::fs::canonicalize(&full).await.map_err(|_| {
        failure(
            "MODEL_MISSING",
            format!("{} is not on this node", full.display()),
        )
    })?;
    if !real.starts_with(&root) {
        return Err(invalid(format!(
            "{path} is outside the models directory {}",
            root.display()
        )));
    }
    Ok(real)
}

async fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Fetches `url` into `part`, continuing what is there when the server
/// answers a range; returns the bytes that were already there.
async fn fetch(
    s: &Settings,
    url: &str,
    token: Option<&str>,
    part: &Path,
    progress: &(dyn Fn(f64) + Send + Sync),
) -> Result<u64, Value> {
    let failed = |m: String| failure("DOWNLOAD_FAILED", m);
    let have = tokio::fs::metadata(part)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let mut req = s.http.get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| failed(format!("{url}: {e}")))?;
    let status = resp.status();
    let (mut file, mut done, resumed) = if status == reqwest::StatusCode::PARTIAL_CONTENT {
        let f = tokio::fs::OpenOptions::new()
            .append(true)
            .open(part)
            .await
            .map_err(|e| failed(e.to_string()))?;
        (f, have, have)
    } else if status.is_success() {
        let f = tokio::fs::File::create(part)
            .await
            .map_err(|e| failed(e.to_string()))?;
        (f, 0, 0)
    } else if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
        // What is there is all there is (or more): the checks decide.
        return Ok(have);
    } else {
        return Err(failed(format!("{url} answered {status}")));
    };
    let total = resp.content_length().map(|n| n + done);
    let mut reported = -1.0f64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| failed(format!("{url}: {e}")))?
    {
        file.write_all(&chunk)
            .await
            .map_err(|e| failed(e.to_string()))?;
        done += chunk.len() as u64;
        if let Some(total) = total.filter(|t| *t > 0) {
            let pct = (done as f64 / total as f64 * 100.0).min(99.0);
            if pct - reported >= 5.0 {
                reported = pct;
                progress(pct);
            }
        }
    }
    file.flush().await.map_err(|e| failed(e.to_string()))?;
    file.sync_all().await.map_err(|e| failed(e.to_string()))?;
    Ok(resumed)
}

/// Runs a `model.download` command; `Ok` is the result body.
/// `file.download`: a file the server holds for this node (a vareon
/// device upload), fetched only from the server, into the uploads
/// directory (`targetPath` is the device, `fileName` the file), with the
/// same size and SHA-256 checks as a model.
pub async fn run_file(
    s: &Settings,
    data: &Value,
    progress: &(dyn Fn(f64) + Send + Sync),
) -> Result<Value, Value> {
    let from_server = text(data, &["source"]).is_some_and(|src| src.starts_with(SERVER_SCHEME));
    if !from_server {
        return Err(failure(
            "INVALID_SOURCE",
            format!("file.download fetches only from the server ({SERVER_SCHEME}/...)"),
        ));
    }
    if text(data, &["sha256"]).is_none() {
        return Err(failure("INVALID_SOURCE", "file.download needs data.sha256"));
    }
    tokio::fs::create_dir_all(&s.uploads_dir)
        .await
        .map_err(|e| {
            failure(
                "DOWNLOAD_FAILED",
                format!("{}: {e}", s.uploads_dir.display()),
            )
        })?;
    let files = Settings {
        models_dir: s.uploads_dir.clone(),
        ..s.clone()
    };
    run(&files, data, "", progress).await
}

pub async fn run(
    s: &Settings,
    data: &Value,
    resource_id: &str,
    progress: &(dyn Fn(f64) + Send + Sync),
) -> Result<Value, Value> {
    let file_name = text(data, &["fileName"]);
    let source = text(data, &["source", "repository", "url"])
        .ok_or_else(|| failure("INVALID_SOURCE", "data.source is required"))?;
    let source = source_of(source, file_name, &s.hub_url)?;
    let target = target_of(
        &s.models_dir,
        text(data, &["targetPath", "downloadPath"]),
        file_name,
        resource_id,
    )
    .await?;
    let want_sha = text(data, &["sha256", "checksum"]).map(str::to_ascii_lowercase);
    let want_size = data["fileSize"].as_u64().or(data["size"].as_u64());
    let result = |sha: String, size: u64, resumed: u64, present: bool| {
        json!({
            "downloadPath": target.display().to_string(),
            "fileSize": size,
            "sha256": sha,
            "resumedFrom": resumed,
            "alreadyPresent": present,
        })
    };
    // Already there and proven: nothing to fetch.
    if let (Some(want), Ok(meta)) = (&want_sha, tokio::fs::metadata(&target).await)
        && sha256_of(&target).await.ok().as_ref() == Some(want)
    {
        return Ok(result(want.clone(), meta.len(), 0, true));
    }
    let name = target
        .file_name()
        .expect("a file path")
        .to_string_lossy()
        .into_owned();
    let part = target.with_file_name(format!("{name}.part"));
    let resumed = match &source {
        Source::Http(url) => fetch(s, url, None, &part, progress).await?,
        Source::Server(path) => {
            let (server, token) = s.server.as_ref().ok_or_else(|| {
                failure("INVALID_SOURCE", "this daemon has no server to fetch from")
            })?;
            fetch(s, &format!("{server}{path}"), Some(token), &part, progress).await?
        }
        Source::Local(path) => {
            tokio::fs::copy(path, &part)
                .await
                .map_err(|e| failure("DOWNLOAD_FAILED", format!("{}: {e}", path.display())))?;
            0
        }
    };
    let size = tokio::fs::metadata(&part)
        .await
        .map_err(|e| failure("DOWNLOAD_FAILED", e.to_string()))?
        .len();
    if let Some(want) = want_size.filter(|w| *w != size) {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(failure(
            "SIZE_MISMATCH",
            format!("expected {want} bytes, got {size}"),
        ));
    }
    let sha = sha256_of(&part)
        .await
        .map_err(|e| failure("DOWNLOAD_FAILED", e.to_string()))?;
    if let Some(want) = want_sha.filter(|w| *w != sha) {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(failure(
            "CHECKSUM_MISMATCH",
            format!("expected sha256 {want}, got {sha}"),
        ));
    }
    tokio::fs::rename(&part, &target)
        .await
        .map_err(|e| failure("DOWNLOAD_FAILED", e.to_string()))?;
    if let Some(dir) = target.parent()
        && let Ok(d) = tokio::fs::File::open(dir).await
    {
        let _ = d.sync_all().await;
    }
    Ok(result(sha, size, resumed, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let hub = "http://hub";
        assert_eq!(
            source_of("https://x/m.onnx", None, hub).unwrap(),
            Source::Http("https://x/m.onnx".into())
        );
        assert_eq!(
            source_of("http://x/dir/", Some("m.onnx"), hub).unwrap(),
            Source::Http("http://x/dir/m.onnx".into())
        );
        assert_eq!(
            source_of("huggingface.co/meta/llama", Some("model.safetensors"), hub).unwrap(),
            Source::Http("http://hub/meta/llama/resolve/main/model.safetensors".into())
        );
        assert_eq!(
            source_of("/srv/m.onnx", None, hub).unwrap(),
            Source::Local("/srv/m.onnx".into())
        );
        assert!(source_of("meta/llama", None, hub).is_err());
        assert_eq!(
            source_of(
                "warden:/artifacts/models/m?format=onnx",
                Some("m.onnx"),
                hub
            )
            .unwrap(),
            Source::Server("/artifacts/models/m?format=onnx".into())
        );
        assert!(source_of("warden://evil.example/x", None, hub).is_err());
        assert!(source_of("warden:x", None, hub).is_err());
        assert!(source_of("../x/y", Some("f"), hub).is_err());
        assert!(source_of("a/b/c", Some("f"), hub).is_err());
    }

    #[tokio::test]
    async fn targets_stay_inside_the_models_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = tokio::fs::canonicalize(dir.path()).await.unwrap();
        let t = target_of(&root, Some("llama"), Some("m.bin"), "r")
            .await
            .unwrap();
        assert_eq!(t, root.join("llama/m.bin"));
        let t = target_of(&root, None, None, "my model").await.unwrap();
        assert_eq!(t, root.join("my_model/model"));
        let abs = root.join("a/b.bin");
        let t = target_of(&root, Some(abs.to_str().unwrap()), None, "r")
            .await
            .unwrap();
        assert_eq!(t, abs);
        for bad in ["../escape", "/etc/passwd", "a/../../b"] {
            let e = target_of(&root, Some(bad), None, "r").await.unwrap_err();
            assert_eq!(e["code"], "INVALID_TARGET", "{bad}");
        }
        assert!(target_of(&root, None, Some("../x"), "r").await.is_err());
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        let e = target_of(&root, Some("link/x"), None, "r")
            .await
            .unwrap_err();
        assert_eq!(e["code"], "INVALID_TARGET");
    }
}
