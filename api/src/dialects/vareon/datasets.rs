//! Vareon neosyntis datasets (`/api/neosyntis/datasets/*`): the core
//! datasets forge's `/api/v1/datasets` shows (one id: bare here, `ds_`
//! there). Uploads (`name`, `format`, `description` in the query, the
//! file in a multipart body) go through `dialects/upload.rs`; a CSV is
//! profiled, any other format is kept as an opaque file. `file_path`,
//! `size_bytes` and `uploaded_at` are the server's: a `PUT` cannot point
//! a dataset at another file (the original's arbitrary-file read).

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use warden_domain::dataset::{self, Dataset, DatasetInput, Origin};
use warden_identity::Principal;

use super::{SkipLimit, Vareon, VareonBody, VareonResult, writer};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{Fields, JsonBody, iso, upload};
use crate::openapi::Api;

type Caller = CurrentUser<Vareon>;

fn view(d: &Dataset) -> Value {
    json!({
        "name": d.name,
        "description": (!d.description.is_empty()).then_some(&d.description),
        "file_path": d.file_name(),
        "size_bytes": d.size,
        "format": d.format,
        "uploaded_at": iso(d.audit.created_at),
        "id": d.id,
        "owner_id": d.owner.user_id,
    })
}

/// A dataset of the caller's organisation (its bare id or forge's).
fn find(state: &AppState, p: &Principal, id: &str) -> VareonResult<Dataset> {
    Ok(dataset::find(&state.store, &p.org_id, id)?)
}

#[derive(serde::Deserialize)]
struct UploadQuery {
    name: Option<String>,
    format: Option<String>,
    description: Option<String>,
}

async fn upload_dataset(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<UploadQuery>,
    req: Request,
) -> VareonResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    // What the query lacks, the form may carry (as browsers' forms do).
    let mut u = upload::read::<Vareon>(&state, req).await?;
    let input = DatasetInput {
        name: q.name.or_else(|| u.fields.remove("name")),
        format: q.format.or_else(|| u.fields.remove("format")),
        description: q.description.or_else(|| u.fields.remove("description")),
        ..Default::default()
    };
    let d = upload::store::<Vareon>(&state, &p, input, Origin::Vareon, u.file).await?;
    Ok((StatusCode::CREATED, Json(view(&d))))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<SkipLimit>,
) -> VareonResult<Json<Vec<Value>>> {
    let (skip, limit) = q.parse()?;
    let scope = warden_domain::org_scope(Some(&p.org_id));
    let all = state
        .store
        .in_scope::<Dataset>(warden_domain::CREATED, &scope)?;
    Ok(Json(all.iter().skip(skip).take(limit).map(view).collect()))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    Ok(Json(view(&find(&state, &p, &id)?)))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    writer(&p)?;
    let d = find(&state, &p, &id)?;
    let mut f = Fields::new(body);
    // The server's own: where the file is, its size, when it came.
    f.drop(&["file_path", "size_bytes", "uploaded_at"]);
    let input = DatasetInput {
        name: f.string("name", false),
        description: f.string_max("description", false, 4096),
        format: f.string("format", false),
        ..Default::default()
    };
    f.finish_as::<Vareon>()?;
    let d = dataset::update(&state.store, &d.id, input, &p.user_id).await?;
    Ok(Json(view(&d)))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<StatusCode> {
    writer(&p)?;
    let d = find(&state, &p, &id)?;
    dataset::remove(&state.store, &d).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn download(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Response> {
    let d = find(&state, &p, &id)?;
    upload::download::<Vareon>(&state, &d).await
}

pub(super) fn routes() -> Api {
    let t = "vareon: neosyntis datasets";
    Api::new()
        .post(
            "/api/neosyntis/datasets/upload",
            t,
            "Upload a dataset (name, format, description in the query; the file multipart; 100 MB)",
            upload_dataset,
        )
        .get(
            "/api/neosyntis/datasets/",
            t,
            "The organisation's datasets (skip, limit)",
            list,
        )
        .get("/api/neosyntis/datasets/{dataset_id}", t, "A dataset", get)
        .put(
            "/api/neosyntis/datasets/{dataset_id}",
            t,
            "Rename or describe a dataset (its file stays)",
            update,
        )
        .delete(
            "/api/neosyntis/datasets/{dataset_id}",
            t,
            "Delete a dataset and its file",
            delete,
        )
        .get(
            "/api/neosyntis/datasets/{dataset_id}/download",
            t,
            "The dataset's file",
            download,
        )
}
