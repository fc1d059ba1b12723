//! Forge datasets (`/api/v1/datasets`): CSV uploads (`dialects/upload.rs`:
//! multipart, 100 MB, streamed to a blob, profiled in one pass), listed,
//! previewed a page at a time, downloaded, deleted, and given
//! architecture recommendations by the analyst. Vareon's neosyntis
//! datasets are the same records.

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use warden_domain::dataset::{self, Advice, Dataset, DatasetInput, Origin};
use warden_identity::Principal;
use warden_import::{ImportError, SOURCE_TYPES, Source};

use super::{Forge, ForgeResult, writer};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{JsonBody, iso, upload};
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Forge>;

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
        "file_size_bytes": d.size,
        "is_validated": d.validated,
        "locked": d.locked,
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
/// A dataset that was read as a CSV (what previews, recommendations and
/// training need).
pub(crate) fn find_csv(state: &AppState, p: &Principal, id: &str) -> ForgeResult<Dataset> {
    let d = find(state, p, id)?;
    if d.profiled {
        Ok(d)
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("dataset {id} is a {} file, not a CSV", d.format),
        ))
    }
}

pub(crate) fn find(state: &AppState, p: &Principal, id: &str) -> ForgeResult<Dataset> {
    Ok(dataset::find(&state.store, &p.org_id, id)?)
}

async fn upload(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    req: Request,
) -> ForgeResult<(StatusCode, Json<Value>)> {
    writer(&p, "upload datasets")?;
    let mut u = upload::read::<Forge>(&state, req).await?;
    let mut field = |k: &str| u.fields.remove(k);
    let input = DatasetInput {
        name: field("name"),
        equipment_type: field("equipment_type"),
        location: field("location"),
        unit: field("unit"),
        description: field("description"),
        format: None,
    };
    let d = upload::store::<Forge>(&state, &p, input, Origin::Forge, u.file).await?;
    Ok((StatusCode::CREATED, Json(detail(&d))))
}

fn import_error(e: ImportError) -> ApiError<Forge> {
    let status = match &e {
        ImportError::Config(problems) => return ApiError::validation(problems.clone()),
        ImportError::Query(_) | ImportError::Empty => StatusCode::BAD_REQUEST,
        ImportError::Unreachable(_) => StatusCode::BAD_GATEWAY,
        ImportError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        ImportError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
    };
    ApiError::new(status, e.to_string())
}

/// Imports a table from an outside source (`source_type`, default
/// `aegis_bridge`; see warden-import for each one's protocol) as a new
/// dataset: its rows are written as the dataset's CSV and profiled like
/// an upload. The dataset's fields are checked before the source is
/// asked; a failed import leaves nothing behind.
async fn connect(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonBody<Forge>,
) -> ForgeResult<(StatusCode, Json<Value>)> {
    writer(&p, "import datasets")?;
    let asked = match body.get("source_type") {
        None | Some(Value::Null) => "aegis_bridge",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(ApiError::validation(vec![
                "source_type must be a string".into(),
            ]));
        }
    };
    let source_type = SOURCE_TYPES
        .iter()
        .copied()
        .find(|t| *t == asked)
        .ok_or_else(|| {
            ApiError::validation(vec![format!(
                "Unsupported source_type {asked:?}: one of {}",
                SOURCE_TYPES.join(", ")
            )])
        })?;
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    let input = DatasetInput {
        name: text("name"),
        equipment_type: text("equipment_type"),
        location: text("location"),
        unit: text("unit"),
        description: text("description"),
        format: None,
    };
    let origin = Origin::Imported(source_type);
    dataset::check_new(&input, origin)?;
    let source = Source::parse(source_type, &body).map_err(import_error)?;
    let table = warden_import::import(&source, &state.config.import)
        .await
        .map_err(import_error)?;
    let store = state.store.clone();
    let blob = crate::artifacts::blocking(move || Ok(store.blobs().put(&table.to_csv())?)).await?;
    let d = upload::store::<Forge>(&state, &p, input, origin, Some(blob)).await?;
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
    sort_col: Option<String>,
    sort_dir: Option<String>,
}

/// One page of the rows (forge's `{headers, rows, total_rows, page,
/// total_pages}`), read from the file as it streams; sorted by a column
/// when asked.
async fn preview(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    Query(q): Query<PreviewQuery>,
) -> ForgeResult<Json<Value>> {
    let d = find_csv(&state, &p, &id)?;
    let page = q.page.unwrap_or(1).max(1);
    let size = q.page_size.unwrap_or(100).clamp(1, 1000);
    let sort = match q.sort_col.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(name) => {
            let column = d
                .profile
                .columns
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| {
                    ApiError::validation(vec![format!("sort_col {name}: no such column")])
                })?;
            let descending = match q.sort_dir.as_deref().unwrap_or("asc") {
                "asc" => false,
                "desc" => true,
                _ => {
                    return Err(ApiError::validation(vec![
                        "sort_dir must be asc or desc".into(),
                    ]));
                }
            };
            Some(dataset::SortBy {
                column,
                descending,
                numeric: d.profile.columns[column].numeric,
            })
        }
    };
    let store = state.store.clone();
    let held = d.clone();
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<String>>, String> {
        let file = dataset::open(&store, &held).map_err(|e| e.to_string())?;
        dataset::page_rows(file, page, size, sort)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(json!({
        "headers": d.profile.columns.iter().map(|c| &c.name).collect::<Vec<_>>(),
        "rows": rows,
        "total_rows": d.profile.rows,
        "page": page,
        "page_size": size,
        "total_pages": d.profile.rows.div_ceil(size as u64),
    })))
}

/// Scans every row; when nothing is wrong, locks the dataset and keeps
/// its file zstd-compressed.
async fn validate(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<Json<Value>> {
    writer(&p, "validate datasets")?;
    let d = find_csv(&state, &p, &id)?;
    let (d, v) = dataset::validate_and_lock(&state.store, &d, &p.username).await?;
    Ok(Json(json!({
        "valid": v.issues.is_empty(),
        "issues": v.issues,
        "columns_checked": v.columns_checked,
        "rows_checked": v.rows_checked,
        "is_validated": d.validated,
        "locked": d.locked,
    })))
}

async fn unlock(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<Json<Value>> {
    writer(&p, "unlock datasets")?;
    let d = find(&state, &p, &id)?;
    let d = dataset::unlock(&state.store, &d, &p.username).await?;
    Ok(Json(json!({
        "message": "Dataset unlocked",
        "is_validated": d.validated,
        "locked": d.locked,
    })))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<StatusCode> {
    writer(&p, "delete datasets")?;
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
            "Sentinel: robust per-column bands (median ± k × MAD of the values and of their steps) learned from the data, no deep model; for short or sparse data",
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
    let d = find_csv(&state, &p, &id)?;
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
        .post(
            "/api/v1/datasets/connect",
            t,
            "Import a dataset from a source: aegis_bridge (default), influxdb, postgresql, tidb, sqlite, mongodb, spacetimedb",
            connect,
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
            "A page of rows (page, page_size, sort_col, sort_dir)",
            preview,
        )
        .post(
            "/api/v1/datasets/{id}/validate",
            t,
            "Check every row; when valid, lock the dataset and compress its file (zstd)",
            validate,
        )
        .post(
            "/api/v1/datasets/{id}/unlock",
            t,
            "Unlock a validated dataset (decompressed again, to be validated again)",
            unlock,
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
