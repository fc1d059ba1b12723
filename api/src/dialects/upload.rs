//! Dataset uploads, for every dialect that takes them (forge, vareon):
//! the multipart form read as it arrives, its file streamed into a blob
//! (never held whole in memory; 100 MB), then profiled in one pass when
//! it is a CSV, and stored as a core dataset. A refused upload keeps
//! nothing. Errors are written in dialect `D`'s body.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use warden_domain::dataset::{self, Dataset, DatasetInput, Origin};
use warden_identity::Principal;
use warden_storage::BlobRef;

use crate::AppState;
use crate::error::ApiError;

/// The largest file an upload may carry.
pub const MAX_UPLOAD: u64 = 100 * 1024 * 1024;
/// The largest text field of an upload form.
const MAX_FIELD: usize = 4096;

/// What a form carried: its text fields and its file, stored.
pub(crate) struct Upload {
    pub fields: HashMap<String, String>,
    pub file: Option<BlobRef>,
    /// The file's name as the client gave it (unchecked: see [`safe_name`]).
    pub file_name: Option<String>,
}

fn bad<D>(message: impl Into<String>) -> ApiError<D> {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn internal<D>(e: impl std::fmt::Display) -> ApiError<D> {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn multipart_error<D>(e: multer::Error) -> ApiError<D> {
    match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the file is larger than {} MB", MAX_UPLOAD / (1024 * 1024)),
            )
        }
        other => bad(format!("the upload could not be read: {other}")),
    }
}

/// Reads a multipart form; the field `file` goes to a blob as it arrives.
pub(crate) async fn read<D>(state: &AppState, req: Request) -> Result<Upload, ApiError<D>> {
    let boundary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| bad("the upload must be multipart/form-data with a file field"))?;
    let limits = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(MAX_UPLOAD + 64 * 1024)
            .per_field(MAX_UPLOAD),
    );
    let mut form =
        multer::Multipart::with_constraints(req.into_body().into_data_stream(), boundary, limits);
    let mut upload = Upload {
        fields: HashMap::new(),
        file: None,
        file_name: None,
    };
    // A file stored before the form turned out bad is dropped again.
    let result = async {
        while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
            let name = field.name().unwrap_or_default().to_owned();
            if name == "file" {
                upload.file_name = field.file_name().map(str::to_owned);
                let mut w = state.store.blobs().writer()?;
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    w.write(&chunk)?;
                }
                let blob = tokio::task::spawn_blocking(move || w.finish())
                    .await
                    .map_err(internal)??;
                if let Some(old) = upload.file.replace(blob) {
                    dataset::discard_blob(&state.store, &old)?;
                }
                continue;
            }
            let mut text = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                text.extend_from_slice(&chunk);
                if text.len() > MAX_FIELD {
                    return Err(bad(format!("{name} is longer than {MAX_FIELD} bytes")));
                }
            }
            let text = String::from_utf8(text).map_err(|_| bad(format!("{name} is not UTF-8")))?;
            upload.fields.insert(name, text);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        if let Some(blob) = &upload.file {
            dataset::discard_blob(&state.store, blob)?;
        }
        return Err(e);
    }
    Ok(upload)
}

/// Stores an uploaded file as a dataset: profiled first when it is a CSV
/// (a CSV that cannot be read is refused with the reasons). Whatever is
/// refused leaves no blob behind.
pub(crate) async fn store<D>(
    state: &AppState,
    p: &Principal,
    input: DatasetInput,
    origin: Origin,
    file: Option<BlobRef>,
) -> Result<Dataset, ApiError<D>> {
    let Some(blob) = file else {
        return Err(ApiError::validation(vec!["file is required".into()]));
    };
    let made = async {
        let profile = if Dataset::is_csv(input.format.as_deref()) {
            let store = state.store.clone();
            let b = blob.clone();
            let profiled = tokio::task::spawn_blocking(move || {
                store
                    .blobs()
                    .reader(&b)
                    .map_err(|e| vec![e.to_string()])
                    .and_then(|f| {
                        dataset::profile(std::io::BufReader::with_capacity(256 * 1024, f))
                    })
            })
            .await
            .map_err(internal)?;
            Some(profiled.map_err(ApiError::validation)?)
        } else {
            None
        };
        let d = Dataset::new(input, origin, blob.clone(), profile, p.owner(), &p.username)?;
        Ok(dataset::create(&state.store, d).await?)
    }
    .await;
    if made.is_err() {
        dataset::discard_blob(&state.store, &blob)?;
    }
    made
}

/// A dataset's file as a download: the uploaded bytes (decompressed as
/// they go when the dataset is locked), streamed, named safely.
pub(crate) async fn download<D>(state: &AppState, d: &Dataset) -> Result<Response, ApiError<D>> {
    let body = if d.compressed {
        // Decoded on a blocking thread, handed over chunk by chunk.
        let mut file = dataset::open(&state.store, d)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match std::io::Read::read(&mut file, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx
                            .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        break;
                    }
                }
            }
        });
        Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    } else {
        let file = tokio::fs::File::from_std(state.store.blobs().reader(&d.blob)?);
        Body::from_stream(chunks(file))
    };
    let name = d.file_name();
    let name = name.rsplit('/').next().unwrap_or("dataset");
    let kind = if d.format == "csv" {
        "text/csv"
    } else {
        "application/octet-stream"
    };
    Ok(attachment(body, name, kind, d.size))
}

/// A blob as a download named `name`.
pub(crate) fn blob_download<D>(
    state: &AppState,
    blob: &BlobRef,
    name: &str,
) -> Result<Response, ApiError<D>> {
    let file = tokio::fs::File::from_std(state.store.blobs().reader(blob)?);
    Ok(attachment(
        Body::from_stream(chunks(file)),
        name,
        "application/octet-stream",
        blob.size,
    ))
}

/// A body sent as an attachment; the file name in the header keeps only
/// letters, digits and `.-_` (no quotes, CR/LF or slashes to break it).
fn attachment(body: Body, name: &str, content_type: &'static str, size: u64) -> Response {
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || ".-_".contains(*c))
        .collect();
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    response
}

/// A client's file name made safe to keep and to use as a file name: its
/// last path component, without control characters, quotes or
/// backslashes, at most 200 characters; `"upload"` when nothing is left
/// (`../../evil` is `evil`).
pub(crate) fn safe_name(given: Option<&str>) -> String {
    let last = given
        .unwrap_or_default()
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    let kept: String = last
        .chars()
        .filter(|c| !c.is_control() && !"\"'`".contains(*c))
        .take(200)
        .collect();
    let kept = kept.trim().trim_start_matches('.').trim();
    if kept.is_empty() {
        "upload".into()
    } else {
        kept.to_owned()
    }
}

/// A file read as a stream of 256 KiB chunks.
fn chunks(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}
