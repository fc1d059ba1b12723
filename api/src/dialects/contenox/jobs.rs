//! Contenox jobs and leases (WORKFLOWS.md §1, §5.11): `/jobs/pending`,
//! `/jobs/in-progress`, `PATCH /jobs/{id}/done|failed`, `POST /leases`.
//! The queue is `warden_domain::job`; chains make jobs with `job` tasks.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_domain::job::{self, FinishError, Job, JobStatus};

use super::backends::PageQuery;
use super::{Contenox, ContenoxResult, writer};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Contenox>;
type JsonIn = JsonBody<Contenox>;

/// `downloadservice.Job`'s shape (the queue's jobs share it), with the
/// lease when there is one.
fn view(j: &Job) -> Value {
    let mut v = json!({
        "id": j.id,
        "taskType": j.task_type,
        "payload": j.payload_json(),
        "scheduledFor": j.scheduled_for / 1000,
        "validUntil": j.valid_until / 1000,
        "retryCount": j.retry_count,
        "createdAt": iso(j.created_at),
        "status": j.status.as_str(),
    });
    if j.status == JobStatus::Leased {
        v["leaserId"] = json!(j.leaser_id);
        v["leaseExpiration"] = json!(iso(j.lease_until));
    }
    v
}

async fn listed(
    state: &AppState,
    org: &str,
    status: JobStatus,
    q: &PageQuery,
) -> ContenoxResult<Json<Vec<Value>>> {
    let (limit, after) = q.read()?;
    let jobs = job::list(&state.store, org, status, after, limit).await?;
    Ok(Json(jobs.iter().map(view).collect()))
}

async fn pending(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<PageQuery>,
) -> ContenoxResult<Json<Vec<Value>>> {
    listed(&state, &p.org_id, JobStatus::Pending, &q).await
}

async fn in_progress(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<PageQuery>,
) -> ContenoxResult<Json<Vec<Value>>> {
    listed(&state, &p.org_id, JobStatus::Leased, &q).await
}

fn leaser(body: &serde_json::Map<String, Value>) -> ContenoxResult<String> {
    match body.get("leaserId") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "leaserId is required",
        )),
    }
}

async fn finish(
    state: &AppState,
    org: &str,
    id: &str,
    body: &serde_json::Map<String, Value>,
    done: bool,
) -> ContenoxResult<Job> {
    let leaser = leaser(body)?;
    let j = job::finish(&state.store, org, id, &leaser, done)
        .await
        .map_err(|e| match e {
            FinishError::NotFound => ApiError::not_found("Job", id),
            FinishError::NotHolder(why) => ApiError::new(StatusCode::CONFLICT, why),
            FinishError::Domain(e) => e.into(),
        })?;
    // The run that made the job (parked on it) goes on now. The finish is
    // durable already: a run not woken here looks at its job when its
    // wake-up time comes or at the next boot.
    if let Err(e) = state.runtime.executions.wake(&j.origin).await {
        tracing::warn!(job = %j.id, execution = %j.origin, error = %e, "could not wake the job's run");
    }
    Ok(j)
}

async fn done(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): JsonIn,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    finish(&state, &p.org_id, &id, &body, true).await?;
    Ok(Json(json!("job marked as done")))
}

async fn failed(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): JsonIn,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    finish(&state, &p.org_id, &id, &body, false).await?;
    Ok(Json(json!("job marked as failed")))
}

/// Leases the oldest pending job of `jobTypes` to `leaserId` for
/// `leaseDuration` (a Go duration): 201 with the job, 404 when none waits.
async fn lease(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonIn,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let leaser = leaser(&body)?;
    let duration = body
        .get("leaseDuration")
        .and_then(Value::as_str)
        .and_then(warden_actors::execution::chain::go_duration)
        .filter(|d| !d.is_zero() && d.as_secs() <= 7 * 24 * 3600)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "leaseDuration must be a duration such as 30s or 5m (at most a week)",
            )
        })?;
    let types: Vec<String> = match body.get("jobTypes") {
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "jobTypes must be a non-empty array of job types",
            ));
        }
    };
    let leased = job::lease(
        &state.store,
        &p.org_id,
        &leaser,
        &types,
        duration.as_millis() as i64,
    )
    .await?
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no pending job of the types {}", types.join(", ")),
        )
    })?;
    Ok((StatusCode::CREATED, Json(view(&leased))))
}

pub(super) fn routes() -> Api {
    let t = "contenox: jobs";
    Api::new()
        .get(
            "/jobs/pending",
            t,
            "Jobs waiting for a worker, oldest first (limit, cursor)",
            pending,
        )
        .get(
            "/jobs/in-progress",
            t,
            "Leased jobs, oldest first (limit, cursor)",
            in_progress,
        )
        .patch(
            "/jobs/{id}/done",
            t,
            "Mark a leased job done {leaserId} (the lease holder only)",
            done,
        )
        .patch(
            "/jobs/{id}/failed",
            t,
            "Mark a leased job failed {leaserId} (the lease holder only)",
            failed,
        )
        .post(
            "/leases",
            t,
            "Lease the oldest pending job of jobTypes {leaserId, leaseDuration, jobTypes}",
            lease,
        )
}
