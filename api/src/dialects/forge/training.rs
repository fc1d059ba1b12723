//! Forge training (`/api/v1/training`), models (`/api/v1/models`) and
//! evaluations (`/api/v1/evaluations`), and the live training WebSocket
//! `/ws/training/{id}`. Runs are supervised actors (warden-actors
//! `training`); models are the core registry's records with a `trained`
//! part, so AIWM's model list shows them too.

use axum::Json;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use warden_actors::training::{RunStatus, TrainingRun};
use warden_domain::evaluation::{self, Evaluation};
use warden_domain::{FileFormat, Model, catalog};
use warden_identity::Principal;
use warden_storage::Record;

use super::{Forge, ForgeResult, writer};
use crate::AppState;
use crate::artifacts;
use crate::auth::CurrentUser;
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Forge>;

fn run_json(r: &TrainingRun) -> Value {
    let last = r.history.last();
    json!({
        "id": format!("tr_{}", r.id),
        "dataset_id": format!("ds_{}", r.dataset_id),
        "model_id": r.model_id.as_ref().map(|m| format!("mdl_{m}")),
        "architecture": r.architecture,
        "hyperparameters": r.hyperparameters,
        "status": r.status.as_str(),
        "current_epoch": r.current_epoch,
        "total_epochs": r.total_epochs,
        "best_val_loss": r.best_val_loss,
        "current_train_loss": last.map(|e| e.train_loss),
        "current_val_loss": last.map(|e| e.val_loss),
        "parameters": r.parameters,
        "training_time_seconds": r.training_seconds().round() as u64,
        "estimated_remaining_seconds": r.remaining_seconds().round() as u64,
        "error": r.error,
        "created_at": iso(r.audit.created_at),
        "started_at": r.started_at.map(iso),
        "completed_at": r.completed_at.map(iso),
    })
}

async fn start(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonBody<Forge>,
) -> ForgeResult<(StatusCode, Json<Value>)> {
    writer(&p, "start training")?;
    let mut body = body;
    let hyper = body.remove("hyperparameters");
    if hyper
        .as_ref()
        .is_some_and(|h| !h.is_object() && !h.is_null())
    {
        return Err(ApiError::validation(vec![
            "hyperparameters must be an object".into(),
        ]));
    }
    let mut f = Fields::new(body);
    let dataset = f.string("dataset_id", true);
    let arch = f.string("architecture", true);
    f.finish_as::<Forge>()?;
    let run = state
        .runtime
        .training
        .start(
            p.owner(),
            &p.user_id,
            &dataset.unwrap_or_default(),
            &arch.unwrap_or_default(),
            hyper,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(run_json(&run))))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ForgeResult<Json<Vec<Value>>> {
    Ok(Json(
        state
            .runtime
            .training
            .list(&p.org_id)?
            .iter()
            .map(run_json)
            .collect(),
    ))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<Json<Value>> {
    Ok(Json(run_json(
        &state.runtime.training.get(&p.org_id, &id).await?,
    )))
}

async fn stop(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<Json<Value>> {
    writer(&p, "stop training")?;
    let r = state
        .runtime
        .training
        .stop(&p.org_id, &id, &p.user_id)
        .await?;
    Ok(Json(run_json(&r)))
}

async fn queue(
    State(state): State<AppState>,
    CurrentUser(_p, _): Caller,
) -> ForgeResult<Json<Value>> {
    let q = state.runtime.training.queue();
    Ok(Json(json!({
        "active_trainings": q.active,
        "max_concurrent": q.max_concurrent,
        "queued": q.queued,
        "capacity_available": q.max_concurrent.saturating_sub(q.active),
    })))
}

fn epoch_update(r: &TrainingRun) -> Value {
    let last = r.history.last();
    json!({
        "type": "epoch_update",
        "current_epoch": r.current_epoch,
        "total_epochs": r.total_epochs,
        "train_loss": last.map(|e| e.train_loss),
        "val_loss": last.map(|e| e.val_loss),
        "best_val_loss": r.best_val_loss,
        "learning_rate": r.hyperparameters.learning_rate,
        "elapsed_seconds": r.training_seconds().round() as u64,
        "estimated_remaining_seconds": r.remaining_seconds().round() as u64,
    })
}

fn training_complete(r: &TrainingRun) -> Value {
    json!({
        "type": "training_complete",
        "status": r.status.as_str(),
        "current_epoch": r.current_epoch,
        "total_epochs": r.total_epochs,
        "best_val_loss": r.best_val_loss,
        "model_id": r.model_id.as_ref().map(|m| format!("mdl_{m}")),
        "error": r.error,
        "final_metrics": r.history.iter().map(|e| json!({"train_loss": e.train_loss, "val_loss": e.val_loss})).collect::<Vec<_>>(),
    })
}

#[derive(serde::Deserialize)]
struct WsQuery {
    token: Option<String>,
}

/// `GET /ws/training/{id}`: credentials (401) and the run (404) are
/// checked before the upgrade.
async fn watch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = q
        .token
        .or_else(|| crate::auth::bearer(&headers).map(str::to_owned));
    let Some(p) = token.and_then(|t| state.identity.verify_token(&t).ok()) else {
        return ApiError::<Forge>::unauthorized().into_response();
    };
    let (run, rx) = match state.runtime.training.watch(&p.org_id, &id).await {
        Ok(x) => x,
        Err(e) => return ApiError::<Forge>::from(e).into_response(),
    };
    ws.on_upgrade(move |socket| stream(socket, run, rx))
}

async fn stream(
    socket: WebSocket,
    run: TrainingRun,
    rx: Option<tokio::sync::broadcast::Receiver<warden_actors::training::Progress>>,
) {
    let (mut sink, mut incoming) = socket.split();
    let send = |v: Value| Message::text(v.to_string());
    let mut last_epoch = run.current_epoch;
    let finished = async {
        if run.status.is_terminal() {
            return sink.send(send(training_complete(&run))).await.is_ok();
        }
        if run.current_epoch > 0 && sink.send(send(epoch_update(&run))).await.is_err() {
            return false;
        }
        let Some(mut rx) = rx else {
            return true;
        };
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Ok(r) => {
                        if r.status.is_terminal() {
                            return sink.send(send(training_complete(&r))).await.is_ok();
                        }
                        if r.current_epoch != last_epoch && r.status == RunStatus::Running {
                            last_epoch = r.current_epoch;
                            if sink.send(send(epoch_update(&r))).await.is_err() {
                                return false;
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return true,
                },
                msg = incoming.next() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
                    _ => {}
                },
            }
        }
    }
    .await;
    if finished {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "training finished".into(),
            })))
            .await;
        // Read until the peer's Close comes back (or briefly).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Some(Ok(m)) = incoming.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

// ---- models ----

/// A trained model of the caller's organisation, by forge's id.
fn find_model(state: &AppState, p: &Principal, id: &str) -> ForgeResult<Model> {
    let m: Model = warden_domain::find_in_org(&state.store, &p.org_id, id, "mdl_", "Model")?;
    if m.trained.is_some() {
        Ok(m)
    } else {
        Err(ApiError::not_found("Model", id))
    }
}

fn model_summary(m: &Model) -> Value {
    let t = m.trained.as_ref().expect("trained models only");
    json!({
        "id": format!("mdl_{}", m.id),
        "name": m.name,
        "architecture": t.architecture,
        "equipment_type": t.equipment_type,
        "parameters": t.parameters,
        "metrics": {"f1": t.f1, "val_loss": t.val_loss, "precision": t.precision, "recall": t.recall},
        "file_size_bytes": m.file_size,
        // Every trained model has an int8 export (`?format=onnx-int8`).
        "quantized": true,
        "status": m.status,
        "created_at": iso(m.audit.created_at),
    })
}

fn model_detail(m: &Model) -> Value {
    let t = m.trained.as_ref().expect("trained models only");
    let h: Value = serde_json::from_str(&t.hyperparameters).unwrap_or(Value::Null);
    let mut v = model_summary(m);
    v["dataset_id"] = json!(format!("ds_{}", t.dataset_id));
    v["training_run_id"] = json!(format!("tr_{}", t.training_run_id));
    v["input_features"] = json!(t.input_features.len());
    v["feature_names"] = json!(t.input_features);
    for k in [
        "hidden_dim",
        "bottleneck_dim",
        "num_layers",
        "sequence_length",
    ] {
        v[k] = h.get(k).cloned().unwrap_or(Value::Null);
    }
    v["hyperparameters"] = h;
    v["metrics"] = json!({
        "reconstruction_error_threshold": t.threshold,
        "val_loss": t.val_loss,
        "precision": t.precision,
        "recall": t.recall,
        "f1": t.f1,
        "accuracy": t.accuracy,
        "auc_roc": t.auc_roc,
    });
    v["file_path"] = json!(m.file_name);
    v
}

fn trained_models(state: &AppState, p: &Principal) -> ForgeResult<Vec<Model>> {
    let scope = warden_domain::org_scope(Some(&p.org_id));
    let mut all = state
        .store
        .in_scope::<Model>(warden_domain::CREATED, &scope)?;
    all.retain(|m| m.trained.is_some());
    all.reverse();
    Ok(all)
}

async fn models(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ForgeResult<Json<Vec<Value>>> {
    Ok(Json(
        trained_models(&state, &p)?
            .iter()
            .map(model_summary)
            .collect(),
    ))
}

async fn model(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<Json<Value>> {
    let m = find_model(&state, &p, &id)?;
    let mut v = model_detail(&m);
    // The int8 export's real size (a model is a few hundred kB at most:
    // exporting it costs about a millisecond).
    let (t, store) = (m.trained.clone().expect("trained"), state.store.clone());
    let int8 = artifacts::blocking(move || t.export(&store, FileFormat::OnnxInt8)).await?;
    v["quantized_size_bytes"] = json!(int8.len());
    Ok(Json(v))
}

/// Runs blocking store or model work off the runtime.
#[derive(serde::Deserialize)]
struct DownloadQuery {
    format: Option<String>,
}

/// The model's file: `?format=wardenml` (the default, Warden's own file),
/// `onnx` or `onnx-int8` (its ONNX export).
async fn download(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
) -> ForgeResult<Response> {
    let format = artifacts::format(q.format.as_deref(), FileFormat::WardenMl)?;
    let m = find_model(&state, &p, &id)?;
    artifacts::download(&state, &m, format).await
}

async fn delete_model(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<StatusCode> {
    writer(&p, "delete models")?;
    let m = find_model(&state, &p, &id)?;
    catalog::soft_delete::<Model>(&state.store, &m.id, &p.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn compare(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): JsonBody<Forge>,
) -> ForgeResult<Json<Value>> {
    let mut f = Fields::new(body);
    let other = f.string("compare_with", true);
    f.finish_as::<Forge>()?;
    let a = find_model(&state, &p, &id)?;
    let b = find_model(&state, &p, &other.unwrap_or_default())?;
    let (ta, tb) = (
        a.trained.as_ref().expect("trained"),
        b.trained.as_ref().expect("trained"),
    );
    // The higher F1 wins; on a tie, the lower validation loss.
    let a_wins = ta.f1 > tb.f1 || (ta.f1 == tb.f1 && ta.val_loss <= tb.val_loss);
    let (w, l) = if a_wins { (ta, tb) } else { (tb, ta) };
    let entry = |m: &Model| {
        let t = m.trained.as_ref().expect("trained");
        json!({
            "id": format!("mdl_{}", m.id),
            "name": m.name,
            "architecture": t.architecture,
            "metrics": {"f1": t.f1, "val_loss": t.val_loss, "precision": t.precision, "recall": t.recall, "auc_roc": t.auc_roc},
        })
    };
    Ok(Json(json!({
        "models": [entry(&a), entry(&b)],
        "winner": format!("mdl_{}", if a_wins { &a.id } else { &b.id }),
        "advantage": {
            "f1": w.f1 - l.f1,
            "val_loss": w.val_loss - l.val_loss,
            "precision": w.precision - l.precision,
            "recall": w.recall - l.recall,
            "auc_roc": w.auc_roc - l.auc_roc,
        },
    })))
}

// ---- evaluations ----

fn evaluation_json(state: &AppState, e: &Evaluation) -> Value {
    let curves = state
        .store
        .get::<Model>(&e.model_id)
        .ok()
        .flatten()
        .and_then(|m| m.trained)
        .map(|t| t.curves)
        .unwrap_or_default();
    let m = &e.metrics;
    json!({
        "id": format!("eval_{}", e.id),
        "model_id": format!("mdl_{}", e.model_id),
        "evaluation_type": e.evaluation_type,
        "status": e.status,
        "method": e.method,
        "metrics": {
            "accuracy": m.accuracy,
            "precision": m.precision,
            "recall": m.recall,
            "f1": m.f1,
            "auc_roc": m.auc_roc,
            "val_loss": e.val_loss,
            "reconstruction_error_threshold": e.threshold,
        },
        "confusion_matrix": {
            "true_positive": m.true_positive,
            "false_positive": m.false_positive,
            "true_negative": m.true_negative,
            "false_negative": m.false_negative,
        },
        "windows": e.windows,
        "positives": e.positives,
        "training_curves": {
            "epochs": (1..=curves.len()).collect::<Vec<_>>(),
            "train_loss": curves.iter().map(|c| c.0).collect::<Vec<_>>(),
            "val_loss": curves.iter().map(|c| c.1).collect::<Vec<_>>(),
        },
        "gradient_evaluation": e.gradient.as_ref().map(|g| json!({
            "status": g.status,
            "started_at": iso(g.started_at),
            "completed_at": g.completed_at.map(iso),
            "metrics": g.metrics,
            "noise_sd": warden_ml::gradient::NOISE_SD,
            "error": g.error,
        })),
        "created_at": iso(e.audit.created_at),
    })
}

async fn evaluations(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ForgeResult<Json<Vec<Value>>> {
    let scope = warden_domain::org_scope(Some(&p.org_id));
    let all = state
        .store
        .in_scope::<Evaluation>(warden_domain::CREATED, &scope)?;
    Ok(Json(
        all.iter()
            .rev()
            .filter(|e| !e.is_deleted())
            .map(|e| evaluation_json(&state, e))
            .collect(),
    ))
}

async fn evaluation(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<Json<Value>> {
    let e = evaluation::find(&state.store, &p.org_id, &id)?;
    Ok(Json(evaluation_json(&state, &e)))
}

/// `POST /api/v1/evaluations {model_id, evaluation_type}`: scores the
/// model again on its dataset's held-out part.
async fn evaluate(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonBody<Forge>,
) -> ForgeResult<(StatusCode, Json<Value>)> {
    writer(&p, "run evaluations")?;
    let mut f = Fields::new(body);
    let model_id = f.string("model_id", true);
    let kind = f.string_max("evaluation_type", false, 64);
    f.finish_as::<Forge>()?;
    let m = find_model(&state, &p, &model_id.unwrap_or_default())?;
    let (store, by) = (state.store.clone(), p.user_id.clone());
    let kind = kind
        .filter(|k| !k.trim().is_empty())
        .unwrap_or_else(|| "standard".into());
    let e = artifacts::blocking(move || evaluation::evaluate_again(&store, &m, &kind, &by)).await?;
    let e = state.store.insert(e).await?;
    Ok((StatusCode::CREATED, Json(evaluation_json(&state, &e))))
}

/// `POST /api/v1/evaluations/{id}/gradient`: starts the gradient
/// evaluation (19 figures, warden-ml `gradient`) in the background; 202,
/// and the evaluation's `gradient_evaluation` says when it is done.
/// Asked again while it runs, it answers the same.
async fn gradient(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ForgeResult<(StatusCode, Json<Value>)> {
    writer(&p, "run evaluations")?;
    let e = evaluation::find(&state.store, &p.org_id, &id)?;
    let (_, started) = evaluation::start_gradient(&state.store, &e.id, &p.user_id).await?;
    if started {
        tokio::spawn(evaluation::run_gradient(state.store.clone(), e.id.clone()));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "running", "message": "Gradient evaluation started"})),
    ))
}

pub(super) fn routes() -> Api {
    let (t, m, e) = ("forge: training", "forge: models", "forge: evaluations");
    Api::new()
        .get("/api/v1/training", t, "The organisation's training runs, newest first", list)
        .post("/api/v1/training/start", t, "Start a run {dataset_id, architecture, hyperparameters}: running, or queued at capacity", start)
        .get("/api/v1/training/queue", t, "Running and queued runs, and the capacity", queue)
        .get("/api/v1/training/{id}", t, "A run with its current metrics", get)
        .post("/api/v1/training/{id}/stop", t, "Stop a run (at once)", stop)
        .get("/ws/training/{id}", t, "Live progress: epoch_update per epoch, then training_complete", watch)
        .get("/api/v1/models", m, "Trained models, newest first", models)
        .get("/api/v1/models/{id}", m, "A model with its hyperparameters and metrics", model)
        .get("/api/v1/models/{id}/download", m, "The model file: ?format=wardenml (default; JSON header + f32 weights), onnx or onnx-int8", download)
        .delete("/api/v1/models/{id}", m, "Delete a model", delete_model)
        .post("/api/v1/models/{id}/compare", m, "Compare with another model {compare_with}: winner and advantages", compare)
        .get("/api/v1/evaluations", e, "Evaluations, newest first", evaluations)
        .post("/api/v1/evaluations", e, "Evaluate a model again {model_id, evaluation_type}", evaluate)
        .get("/api/v1/evaluations/{id}", e, "An evaluation: metrics, confusion matrix, training curves", evaluation)
        .post("/api/v1/evaluations/{id}/gradient", e, "Start the gradient evaluation (19 figures, in the background): 202", gradient)
}
