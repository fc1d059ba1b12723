//! Forge datasets (`/api/v1/datasets`): CSV uploads streamed to a blob
//! (multipart, 100 MB, never held whole in memory), profiled in one pass
//! (`warden_domain::dataset`), listed, previewed a page at a time,
//! deleted, and given architecture recommendations by the analyst.

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use serde_json::{Map, Value, json};
use warden_domain::DomainError;
use warden_domain::dataset::{self, Advice, Dataset, DatasetInput};
use warden_identity::Principal;
use warden_storage::BlobRef;

use super::{Forge, ForgeResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::iso;
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Forge>;

/// The largest CSV an upload may carry.
pub const MAX_UPLOAD: u64 = 100 * 1024 * 1024;
/// The largest text field of an upload form.
const MAX_FIELD: usize = 4096;

pub(crate) fn forge_id(d: &Dataset) -> String {
    format!("ds_{}", d.id)
}

pub(crate) fn summary(d: &Dataset) -> Value {
    json!({
        "id": forge_id(d),
        "name": d.name,
        "equipment_type": d.equipment_type,
        "location": d.location,
        "unit": d.unit,
        "source": d.source,
        "row_count": d.profile.rows,
        "columns": d.profile.columns.iter().map(|c| &c.name).collect::<Vec<_>>(),
        "file_size_bytes": d.blob.size,
        "created_at": iso(d.audit.created_at),
        "created_by": d.audit.created_by,
    })
}

fn detail(d: &Dataset) -> Value {
    let mut v = summary(d);
    let mut stats = Map::new();
    for c in &d.profile.columns {
        let mut s = json!({"missing": c.missing});
        if c.numeric {
            s["min"] = json!(c.min);
            s["max"] = json!(c.max);
            s["mean"] = json!(c.mean);
            s["std"] = json!(c.std);
        }
        stats.insert(c.name.clone(), s);
    }
    v["column_stats"] = Value::Object(stats);
    v["time_range"] = match (d.profile.time_start, d.profile.time_end) {
        (Some(a), Some(b)) => json!({"start": iso(a), "end": iso(b)}),
        _ => Value::Null,
    };
    v["missing_rate"] = json!(d.profile.missing_rate());
    v["periodicity"] = json!(d.profile.periodicity);
    v
}

/// A dataset of the caller's organisation, by forge's id (or the bare one).
pub(crate) fn find(state: &AppState, p: &Principal, id: &str) -> ForgeResult<Dataset> {
    let bare = id.strip_prefix("ds_").unwrap_or(id);
    state
        .store
        .get::<Dataset>(bare)?
        .filter(|d| d.audit.deleted_at.is_none() && d.owner.org_id == p.org_id)
        .ok_or_else(|| {
            DomainError::NotFound {
                kind: "Dataset",
                id: id.to_owned(),
            }
            .into()
        })
}

fn bad(message: impl Into<String>) -> ApiError<Forge> {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn multipart_error(e: multer::Error) -> ApiError<Forge> {
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

/// Reads the upload form: the file streamed into a blob as it arrives,
/// the text fields kept.
async fn read_form(state: &AppState, req: Request) -> ForgeResult<(DatasetInput, Option<BlobRef>)> {
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
    let mut input = DatasetInput::default();
    let mut blob = None;
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            let mut w = state.store.blobs().writer()?;
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                w.write(&chunk)?;
            }
            if let Some(old) = blob.take() {
                dataset::discard_blob(&state.store, &old)?;
            }
            blob = Some(
                tokio::task::spawn_blocking(move || w.finish())
                    .await
                    .map_err(|e| {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                    })??,
            );
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
        match name.as_str() {
            "name" => input.name = Some(text),
            "equipment_type" => input.equipment_type = Some(text),
            "location" => input.location = Some(text),
            "unit" => input.unit = Some(text),
            "description" => input.description = Some(text),
            _ => {}
        }
    }
    Ok((input, blob))
}

async fn upload(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    req: Request,
) -> ForgeResult<(StatusCode, Json<Value>)> {
    if !p.can_write() {
        return Err(ApiError::forbidden("viewers cannot upload datasets"));
    }
    let (input, blob) = read_form(&state, req).await?;
    let Some(blob) = blob else {
        return Err(ApiError::validation(vec!["file is required".into()]));
    };
    // Profile the blob as it streams from disk.
    let store = state.store.clone();
    let b = blob.clone();
    let profiled = tokio::task::spawn_blocking(move || {
        store
            .blobs()
            .reader(&b)
            .map_err(|e| vec![e.to_string()])
            .and_then(|f| dataset::profile(std::io::BufReader::with_capacity(256 * 1024, f)))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let owner = p.owner();
    let made = match profiled {
        Err(reasons) => Err(ApiError::validation(reasons)),
        Ok(profile) => {
            Dataset::new(input, blob.clone(), profile, owner, &p.username).map_err(ApiError::from)
        }
    };
    let d = match made {
        Ok(d) => d,
        Err(e) => {
            dataset::discard_blob(&state.store, &blob)?;
            return Err(e);
        }
    };
    let d = dataset::create(&state.store, d).await?;
    Ok((StatusCode::CREATED, Json(detail(&d))))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ForgeResult<Json<Vec<Value>>> {
    let scope = warden_domain::org_scope(Some(&p.org_id));
    let all = state
        .store
        .in_scope::<Dataset>(warden_domain::CREATED, &scope)?;
    Ok(Json(all.iter().rev().map(summary).collect()))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<Json<Value>> {
    Ok(Json(detail(&find(&state, &p, &id)?)))
}

#[derive(serde::Deserialize)]
struct PreviewQuery {
    page: Option<usize>,
    page_size: Option<usize>,
}

/// One page of the rows, read from the blob as it streams.
async fn preview(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    Query(q): Query<PreviewQuery>,
) -> ForgeResult<Json<Value>> {
    let d = find(&state, &p, &id)?;
    let page = q.page.unwrap_or(1).max(1);
    let size = q.page_size.unwrap_or(50).clamp(1, 1000);
    let store = state.store.clone();
    let blob = d.blob.clone();
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<String>>, String> {
        let f = store.blobs().reader(&blob).map_err(|e| e.to_string())?;
        let mut r = csv::ReaderBuilder::new().from_reader(std::io::BufReader::new(f));
        let mut out = Vec::new();
        for rec in r.records().skip((page - 1) * size).take(size) {
            let rec = rec.map_err(|e| e.to_string())?;
            out.push(rec.iter().map(str::to_owned).collect());
        }
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(json!({
        "dataset_id": forge_id(&d),
        "columns": d.profile.columns.iter().map(|c| &c.name).collect::<Vec<_>>(),
        "rows": rows,
        "page": page,
        "page_size": size,
        "total_rows": d.profile.rows,
    })))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<StatusCode> {
    if !p.can_write() {
        return Err(ApiError::forbidden("viewers cannot delete datasets"));
    }
    let d = find(&state, &p, &id)?;
    dataset::remove(&state.store, &d).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What each architecture is for, as forge describes them.
fn described(architecture: &str) -> (&'static str, &'static str, &'static str) {
    match architecture {
        "lstm_autoencoder" => (
            "Anomaly Detection",
            "Learns the normal cycles of the sensors and flags windows it cannot reconstruct",
            "Reconstruction error score (0.0-1.0)",
        ),
        "gru_predictor" => (
            "Forecasting",
            "Predicts the next readings from the last window; large prediction errors are anomalies",
            "Predicted next values and the prediction error",
        ),
        _ => (
            "Threshold Monitoring",
            "Sentinel: robust per-column bounds (median ± 4 × MAD) learned from the data, no deep model; for short or sparse data",
            "Per-column out-of-bounds flags",
        ),
    }
}

pub(crate) fn hyperparameters(a: &Advice, architecture: &str) -> Value {
    match architecture {
        "sentinel" => json!({"sequence_length": a.sequence_length, "threshold_mads": 4.0}),
        _ => json!({"hidden_dim": 64, "num_layers": 2, "epochs": 100, "batch_size": 32,
                    "learning_rate": 0.001, "sequence_length": a.sequence_length}),
    }
}

async fn recommend(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<Json<Value>> {
    let d = find(&state, &p, &id)?;
    let a = dataset::advise(&d.profile);
    let numeric = d.profile.numeric().count();
    let recs: Vec<Value> = a
        .scores
        .iter()
        .map(|(arch, score)| {
            let (use_case, description, outputs) = described(arch);
            json!({
                "architecture": arch,
                "match_score": (score * 1000.0).round() / 1000.0,
                "use_case": use_case,
                "description": description,
                "inputs": format!("{numeric} sensor columns, {}-step sequences", a.sequence_length),
                "outputs": outputs,
                "inference_result": "Alerts when the score passes the threshold learned in validation",
                "hyperparameters": hyperparameters(&a, arch),
                "reasons": if *arch == a.architecture { a.reasons.clone() } else { Vec::new() },
            })
        })
        .collect();
    Ok(Json(
        json!({"dataset_id": forge_id(&d), "recommendations": recs}),
    ))
}

pub(super) fn routes() -> Api {
    let t = "forge: datasets";
    Api::new()
        .get(
            "/api/v1/datasets",
            t,
            "The organisation's datasets, newest first",
            list,
        )
        .post(
            "/api/v1/datasets",
            t,
            "Upload a CSV (multipart: file, name, equipment_type, location, unit; 100 MB)",
            upload,
        )
        .get(
            "/api/v1/datasets/{id}",
            t,
            "A dataset with its column statistics and time range",
            get,
        )
        .get(
            "/api/v1/datasets/{id}/preview",
            t,
            "A page of rows (page, page_size)",
            preview,
        )
        .delete(
            "/api/v1/datasets/{id}",
            t,
            "Delete a dataset and its file",
            delete,
        )
        .get(
            "/api/v1/datasets/{id}/recommend",
            t,
            "Architectures ranked for the data, with reasons",
            recommend,
        )
}
