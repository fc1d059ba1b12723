//! Vareon neosyntis ML models (`/api/neosyntis/models/*`): the core
//! model registry's ML models (one id: bare here, `mdl_` in forge), so a
//! model forge trained is listed here as `trained`, and one created here
//! is AIWM's `classifier` too. Vareon's own fields live in the model's
//! [`MlProfile`]. `train` starts a supervised training run on the
//! model's `training_dataset_id` that fills this model in when it ends
//! (its job is in `/training-jobs/`); `deploy` serves the model's ONNX
//! export on a Warden node (see `serving.rs`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use warden_actors::deployment::Deployment;
use warden_actors::node::Node;
use warden_domain::{MlProfile, Model, catalog, dataset};
use warden_identity::Principal;

use super::{SkipLimit, Vareon, VareonBody, VareonResult, writer};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;
use crate::serving::{self, EdgeStatus};

type Caller = CurrentUser<Vareon>;

/// What `train` trains when the request names no architecture.
const DEFAULT_ARCHITECTURE: &str = "lstm_autoencoder";

pub(super) fn view(state: &AppState, m: &Model) -> Value {
    let ml = m.ml.clone().unwrap_or_default();
    let mut status = match (ml.status.as_str(), &m.trained) {
        ("", Some(_)) => "trained",
        ("", None) => "registered",
        (s, _) => s,
    };
    let mut deployed_at = ml.deployed_at;
    // Once deploy was asked, the deployment says where it stands.
    let deployment = ml
        .deployment_id
        .as_deref()
        .and_then(|id| state.store.get::<Deployment>(id).ok().flatten());
    if let Some(d) = &deployment {
        status = match serving::status(state, d) {
            EdgeStatus::Deployed => "deployed",
            EdgeStatus::Failed => "failed",
            EdgeStatus::Cancelled => "trained",
            _ => "deploying",
        };
        deployed_at = serving::deployed_at(d).or(deployed_at);
    }
    // A trained model's artifact is its ONNX export, served by Warden.
    let artifact = match &m.trained {
        Some(_) => Some(format!("/api/v1/models/mdl_{}/download?format=onnx", m.id)),
        None => ml.path_to_artifact.clone(),
    };
    json!({
        "name": m.name,
        "version": m.version,
        "status": status,
        "path_to_artifact": artifact,
        "training_dataset_id": m.training_dataset(),
        "deployed_at": deployed_at.map(iso),
        "created_at": iso(m.audit.created_at),
        "updated_at": iso(m.audit.updated_at),
        "id": m.id,
        "owner_id": m.owner.user_id,
    })
}

/// An ML model of the caller's organisation (its bare id or forge's).
pub(super) fn find(state: &AppState, p: &Principal, id: &str) -> VareonResult<Model> {
    let m: Model = warden_domain::find_in_org(&state.store, &p.org_id, id, "mdl_", "ML Model")?;
    if m.is_ml() {
        Ok(m)
    } else {
        Err(ApiError::not_found("ML Model", id))
    }
}

/// A field that may be set, cleared (`null`) or left out.
enum Change<T> {
    Keep,
    Clear,
    Set(T),
}

impl<T> Change<T> {
    /// `value` as read, or a clear when the body had `key: null`.
    fn of(key: &str, value: Option<T>, nulls: &[String]) -> Change<T> {
        match value {
            Some(v) => Change::Set(v),
            None if nulls.iter().any(|n| n == key) => Change::Clear,
            None => Change::Keep,
        }
    }

    fn apply(self, field: &mut Option<T>) {
        match self {
            Change::Keep => {}
            Change::Clear => *field = None,
            Change::Set(v) => *field = Some(v),
        }
    }
}

/// The vareon fields of a create or update, checked: `name` and
/// `version` (with `name` required on create), `status`,
/// `path_to_artifact`, `training_dataset_id` (a dataset of the caller's
/// organisation) and `deployed_at` (an ISO 8601 time).
struct Input {
    name: Option<String>,
    version: Option<String>,
    status: Option<String>,
    path_to_artifact: Change<String>,
    training_dataset_id: Change<String>,
    deployed_at: Change<i64>,
}

fn read_input(
    state: &AppState,
    p: &Principal,
    body: Map<String, Value>,
    create: bool,
) -> VareonResult<Input> {
    let nulls: Vec<String> = body
        .iter()
        .filter(|(_, v)| v.is_null())
        .map(|(k, _)| k.clone())
        .collect();
    let mut f = Fields::new(body);
    f.drop(&["created_at", "updated_at", "owner_id"]);
    let name = f.string("name", create);
    let version = f.string("version", false);
    let status = f.string("status", false);
    let artifact = f.string_max("path_to_artifact", false, 4096);
    let dataset_id = f.string("training_dataset_id", false);
    let deployed_at = f.string("deployed_at", false);
    let deployed_at = deployed_at.and_then(|t| match dataset::parse_time(&t) {
        Some(at) => Some(at),
        None => {
            f.error(format!("deployed_at is not a date and time: {t}"));
            None
        }
    });
    let dataset_id = dataset_id.and_then(|id| match dataset::find(&state.store, &p.org_id, &id) {
        Ok(d) => Some(d.id),
        Err(_) => {
            f.error(format!("training_dataset_id: dataset {id} not found"));
            None
        }
    });
    if status.as_deref().is_some_and(|s| s.trim().is_empty()) {
        f.error("status should not be empty".into());
    }
    f.finish_as::<Vareon>()?;
    Ok(Input {
        name,
        version,
        status,
        path_to_artifact: Change::of("path_to_artifact", artifact, &nulls),
        training_dataset_id: Change::of("training_dataset_id", dataset_id, &nulls),
        deployed_at: Change::of("deployed_at", deployed_at, &nulls),
    })
}

impl Input {
    fn apply(self, m: &mut Model) {
        warden_domain::set(&mut m.name, self.name);
        warden_domain::set(&mut m.version, self.version);
        let ml = m.ml.get_or_insert_default();
        warden_domain::set(&mut ml.status, self.status);
        self.path_to_artifact.apply(&mut ml.path_to_artifact);
        self.training_dataset_id.apply(&mut ml.training_dataset_id);
        self.deployed_at.apply(&mut ml.deployed_at);
    }
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): VareonBody,
) -> VareonResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let input = read_input(&state, &p, body, true)?;
    let mut m = Model::new(p.owner(), &p.user_id);
    // Served as its ONNX export once trained; no file until then.
    m.kind = "classifier".into();
    m.framework = "onnx".into();
    m.tags = vec!["anomaly-detection".into()];
    m.ml = Some(MlProfile {
        status: "registered".into(),
        ..Default::default()
    });
    input.apply(&mut m);
    let m = catalog::create(&state.store, m).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &m))))
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
        .in_scope::<Model>(warden_domain::CREATED, &scope)?;
    Ok(Json(
        all.iter()
            .filter(|m| m.is_ml())
            .skip(skip)
            .take(limit)
            .map(|m| view(&state, m))
            .collect(),
    ))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<Json<Value>> {
    Ok(Json(view(&state, &find(&state, &p, &id)?)))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    writer(&p)?;
    let m = find(&state, &p, &id)?;
    let input = read_input(&state, &p, body, false)?;
    let mut input = Some(input);
    let m = catalog::update::<Model>(&state.store, &m.id, &p.user_id, |m| {
        if let Some(input) = input.take() {
            input.apply(m);
        }
        Ok(())
    })
    .await?;
    Ok(Json(view(&state, &m)))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> VareonResult<StatusCode> {
    writer(&p)?;
    let m = find(&state, &p, &id)?;
    catalog::soft_delete::<Model>(&state.store, &m.id, &p.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A body the original does not take but Warden reads when given: none
/// (empty), or a JSON object.
fn optional_object(body: &Bytes) -> VareonResult<Option<Map<String, Value>>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        _ => Err(ApiError::validation(vec![
            "body must be a JSON object".into(),
        ])),
    }
}

/// `train`'s optional body: `architecture` (default `lstm_autoencoder`)
/// and `hyperparameters` (forge's names and defaults). The original takes
/// no body, so an empty one is the defaults.
fn train_options(body: &Bytes) -> VareonResult<(String, Option<Value>)> {
    let Some(mut map) = optional_object(body)? else {
        return Ok((DEFAULT_ARCHITECTURE.into(), None));
    };
    let hyper = map.remove("hyperparameters");
    if hyper
        .as_ref()
        .is_some_and(|h| !h.is_object() && !h.is_null())
    {
        return Err(ApiError::validation(vec![
            "hyperparameters must be an object".into(),
        ]));
    }
    let mut f = Fields::new(map);
    let arch = f.string("architecture", false);
    f.finish_as::<Vareon>()?;
    Ok((arch.unwrap_or_else(|| DEFAULT_ARCHITECTURE.into()), hyper))
}

async fn train(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> VareonResult<Json<Value>> {
    writer(&p)?;
    let (architecture, hyper) = train_options(&body)?;
    let run = state
        .runtime
        .training
        .start_into(&p.org_id, &p.user_id, &id, &architecture, hyper)
        .await?;
    Ok(Json(super::training::view(&run)))
}

/// `deploy`'s optional body: `node_id`, else the organisation's first
/// online node.
fn deploy_node(state: &AppState, p: &Principal, body: &Bytes) -> VareonResult<Node> {
    let asked = match optional_object(body)? {
        None => None,
        Some(map) => {
            let mut f = Fields::new(map);
            let id = f.string("node_id", false);
            f.finish_as::<Vareon>()?;
            id
        }
    };
    if let Some(id) = asked {
        return state
            .runtime
            .nodes
            .resolve(&p.org_id, &id)
            .map_err(|_| ApiError::validation(vec![format!("node_id: node {id} not found")]));
    }
    let scope = warden_domain::org_scope(Some(&p.org_id));
    state
        .store
        .in_scope::<Node>(warden_domain::CREATED, &scope)?
        .into_iter()
        .find(serving::is_online)
        .ok_or_else(|| {
            ApiError::validation(vec![
                "node_id: no Warden node of the organisation is online to serve the model (start `warden node`)".into(),
            ])
        })
}

/// Serves the trained model's ONNX export on a node (a core
/// deployment); `deploying` until the node's health check passes, then
/// `deployed` with `deployed_at`. Asked again while it is deploying or
/// deployed, it answers the model as it stands.
async fn deploy(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> VareonResult<Json<Value>> {
    writer(&p)?;
    let m = find(&state, &p, &id)?;
    let current =
        m.ml.as_ref()
            .and_then(|ml| ml.deployment_id.as_deref())
            .and_then(|d| state.store.get::<Deployment>(d).ok().flatten());
    if let Some(d) = current
        && !matches!(
            serving::status(&state, &d),
            EdgeStatus::Failed | EdgeStatus::Cancelled
        )
    {
        return Ok(Json(view(&state, &m)));
    }
    if m.trained.is_none() {
        return Err(ApiError::validation(vec![format!(
            "model {id} has not been trained: POST /api/neosyntis/models/{id}/train first"
        )]));
    }
    let node = deploy_node(&state, &p, &body)?;
    let d = serving::deploy(&state, &p, &m, &node, json!({})).await?;
    let m = catalog::update::<Model>(&state.store, &m.id, &p.user_id, |m| {
        let ml = m.ml.get_or_insert_default();
        ml.deployment_id = Some(d.id.clone());
        Ok(())
    })
    .await?;
    Ok(Json(view(&state, &m)))
}

pub(super) fn routes() -> Api {
    let t = "vareon: neosyntis models";
    Api::new()
        .post(
            "/api/neosyntis/models/",
            t,
            "Register an ML model (name, version, status, training_dataset_id, ...)",
            create,
        )
        .get(
            "/api/neosyntis/models/",
            t,
            "The organisation's ML models, forge's trained ones included (skip, limit)",
            list,
        )
        .get("/api/neosyntis/models/{model_id}", t, "An ML model", get)
        .put(
            "/api/neosyntis/models/{model_id}",
            t,
            "Update an ML model's fields (null clears an optional one)",
            update,
        )
        .delete(
            "/api/neosyntis/models/{model_id}",
            t,
            "Delete an ML model",
            delete,
        )
        .post(
            "/api/neosyntis/models/{model_id}/train",
            t,
            "Train the model on its training dataset (optional body: architecture, hyperparameters); the job is a training run",
            train,
        )
        .post(
            "/api/neosyntis/models/{model_id}/deploy",
            t,
            "Serve the trained model's ONNX export on a Warden node (optional body: node_id); deployed once health-checked",
            deploy,
        )
}
