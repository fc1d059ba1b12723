//! `/api/deployments` (AIWM §5). Writes go to the deployment's actor
//! through `runtime.deployments`; reads to the store.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use warden_actors::deployment::{Deployment, DeploymentInput};
use warden_domain::Audit;
use warden_storage::series::Range;

use super::{
    AiwmBody, AiwmResult, Fields, Resource, deleted_body, find_visible, iso, owner_of,
    require_write, view_of,
};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::openapi::Api;

type User = CurrentUser<super::Aiwm>;

impl Resource for Deployment {
    const NAME: &'static str = "Deployment";
    const KEY: &'static str = "deploymentId";

    fn view(&self) -> Value {
        let mut fields = json!({
            "_id": self.id,
            "deploymentId": self.deployment_id,
            "name": self.name,
            "description": self.description,
            "environment": self.environment,
            "status": self.status.as_str(),
            "modelId": self.model_id,
            "nodeId": self.node_id,
            "deploymentType": self.deployment_type,
            "replicas": self.replicas,
            "hardwareProfile": self.hardware_profile,
            "isRunning": self.is_running,
            "totalInferences": self.total_inferences,
            "averageLatency": self.average_latency,
            "uptime": self.uptime,
            "events": self.events.iter().map(|e| json!({
                "timestamp": iso(e.timestamp),
                "event": e.event,
                "message": e.message,
                "severity": e.severity,
            })).collect::<Vec<_>>(),
        });
        let optional = [
            (
                "containerName",
                self.container_name.as_ref().map(|v| json!(v)),
            ),
            ("containerPort", self.container_port.map(|v| json!(v))),
            ("endpoint", self.endpoint.as_ref().map(|v| json!(v))),
            (
                "lastHealthCheck",
                self.last_health_check.map(|t| json!(iso(t))),
            ),
            ("executionId", self.execution_id.as_ref().map(|v| json!(v))),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                fields[key] = v;
            }
        }
        view_of(&self.extra, fields, &self.owner, &self.audit)
    }

    fn audit(&self) -> &Audit {
        &self.audit
    }
}

fn parse(body: Map<String, Value>) -> AiwmResult<DeploymentInput> {
    let mut f = Fields::new(body);
    let text = |f: &mut Fields, key: &str| f.string_max(key, false, usize::MAX);
    let input = DeploymentInput {
        deployment_id: text(&mut f, "deploymentId"),
        name: text(&mut f, "name"),
        description: text(&mut f, "description"),
        environment: text(&mut f, "environment"),
        model_id: text(&mut f, "modelId"),
        node_id: text(&mut f, "nodeId"),
        deployment_type: text(&mut f, "deploymentType"),
        replicas: f.count("replicas", false),
        hardware_profile: text(&mut f, "hardwareProfile"),
        container_name: text(&mut f, "containerName"),
        container_port: f.count("containerPort", false),
        extra: String::new(),
    };
    // What the node reports is the node's: status moves by start and stop.
    f.drop(&[
        "status",
        "isRunning",
        "endpoint",
        "totalInferences",
        "averageLatency",
        "uptime",
        "lastHealthCheck",
        "events",
        "executionId",
        "model",
        "node",
    ]);
    let extra = f.finish()?;
    Ok(DeploymentInput { extra, ..input })
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<(StatusCode, Json<Value>)> {
    require_write(&p, "create")?;
    let input = parse(body)?;
    let d = state
        .runtime
        .deployments
        .create(input, owner_of(&p), &p.user_id)
        .await?;
    Ok((StatusCode::CREATED, Json(d.view())))
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "update")?;
    let d: Deployment = find_visible(&state, &p, &id)?;
    if is_runtime(&d) {
        return Err(crate::error::ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!(
                "deployment {} is a neuronest runtime: change it with PUT /api/runtimes/{}",
                d.id, d.id
            ),
        ));
    }
    let input = parse(body)?;
    let d = state
        .runtime
        .deployments
        .update(&d.id, input, &p.user_id)
        .await?;
    Ok(Json(d.view()))
}

/// A neuronest runtime: run by its own actor, not a node's deployment.
fn is_runtime(d: &Deployment) -> bool {
    d.deployment_type == warden_actors::runtime::KIND
}

async fn start(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "start deployments")?;
    let d: Deployment = find_visible(&state, &p, &id)?;
    let d = if is_runtime(&d) {
        state.runtime.runtimes.start(&d).await?;
        find_visible(&state, &p, &d.id)?
    } else {
        state.runtime.deployments.start(&d.id, &p.user_id).await?
    };
    Ok(Json(
        json!({"message": "Deployment started successfully", "deployment": d.view()}),
    ))
}

async fn stop(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "stop deployments")?;
    let d: Deployment = find_visible(&state, &p, &id)?;
    let d = if is_runtime(&d) {
        state.runtime.runtimes.stop(&d).await?;
        find_visible(&state, &p, &d.id)?
    } else {
        state.runtime.deployments.stop(&d.id, &p.user_id).await?
    };
    Ok(Json(
        json!({"message": "Deployment stopped successfully", "deployment": d.view()}),
    ))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
) -> AiwmResult<Json<Value>> {
    require_write(&p, "delete")?;
    let d: Deployment = find_visible(&state, &p, &id)?;
    let d = if is_runtime(&d) {
        state.runtime.runtimes.delete(&d, &p.user_id).await?;
        state
            .store
            .get::<Deployment>(&d.id)?
            .ok_or_else(|| crate::error::ApiError::not_found("Deployment", &d.id))?
    } else {
        state.runtime.deployments.delete(&d.id, &p.user_id).await?
    };
    Ok(deleted_body("Deployment", &d.audit))
}

/// `GET /api/deployments/{id}/logs?page&limit`: the lines the node
/// reported (`deployment.logs`), newest first.
async fn logs(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> AiwmResult<Json<Value>> {
    let d: Deployment = find_visible(&state, &p, &id)?;
    let q = super::paging::parse(&raw.unwrap_or_default())?;
    let range = Range {
        from: i64::MIN,
        to: i64::MAX,
        limit: q.limit,
        skip: (q.page - 1) * q.limit,
        newest_first: true,
    };
    let series = warden_supervisors::logs_series(&d.id);
    let points = state.store.points(&series, range)?;
    let data: Vec<Value> = points
        .iter()
        .map(|pt| serde_json::from_slice(&pt.value).unwrap_or(Value::Null))
        .collect();
    Ok(Json(
        json!({"data": data, "pagination": {"page": q.page, "limit": q.limit}}),
    ))
}

pub(super) fn routes() -> Api {
    const TAG: &str = "aiwm: deployments";
    Api::new()
        .post(
            "/api/deployments",
            TAG,
            "Create a deployment (pending)",
            create,
        )
        .get(
            "/api/deployments",
            TAG,
            "List deployments (page, limit, filter[field], sort)",
            super::list_handler::<Deployment>,
        )
        .get(
            "/api/deployments/{id}",
            TAG,
            "Get a deployment by _id or deploymentId",
            super::get_handler::<Deployment>,
        )
        .put("/api/deployments/{id}", TAG, "Update a deployment", update)
        .delete(
            "/api/deployments/{id}",
            TAG,
            "Soft-delete a deployment (a running one is stopped)",
            delete,
        )
        .post(
            "/api/deployments/{id}/start",
            TAG,
            "Start: download the model on the node if needed, then serve it",
            start,
        )
        .post(
            "/api/deployments/{id}/stop",
            TAG,
            "Stop: the node stops the model server gracefully",
            stop,
        )
        .get(
            "/api/deployments/{id}/logs",
            TAG,
            "The deployment's log lines, newest first (page, limit)",
            logs,
        )
}
