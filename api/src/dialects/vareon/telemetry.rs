//! `/api/myntrix/system-metrics` (the server host, via sysinfo) and
//! `/api/neosyntis/telemetry/` (user telemetry in the shared time-series
//! store, series `telemetry/{user id}`).

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_storage::series::Range;

use super::{SkipLimit, Vareon, VareonBody, VareonResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::Fields;
use crate::error::ApiError;
use crate::openapi::Api;

type User = CurrentUser<Vareon>;

/// One sysinfo handle for the process: CPU usage needs two samples apart.
/// `None` where the host cannot be read (the reference answers 500 then).
fn host() -> Option<&'static Mutex<(sysinfo::System, Instant)>> {
    static HOST: OnceLock<Option<Mutex<(sysinfo::System, Instant)>>> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut s = sysinfo::System::new().ok()?;
        s.refresh_cpu_usage();
        s.refresh_memory();
        Some(Mutex::new((s, Instant::now())))
    })
    .as_ref()
}

async fn system_metrics(CurrentUser(_, _): User) -> VareonResult<Json<Value>> {
    let host = host().ok_or_else(|| ApiError::internal("sysinfo cannot read this host"))?;
    let sample = tokio::task::spawn_blocking(move || {
        let mut guard = host.lock().unwrap_or_else(|p| p.into_inner());
        let (system, last) = &mut *guard;
        let since = last.elapsed();
        if since < sysinfo::MINIMUM_CPU_UPDATE_INTERVAL {
            std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL - since);
        }
        system.refresh_cpu_usage();
        system.refresh_memory();
        *last = Instant::now();
        let total = system.total_memory();
        let available = system.available_memory();
        json!({
            "cpu_percent": system.global_cpu_usage(),
            "memory_percent": if total > 0 { (total - available) as f64 * 100.0 / total as f64 } else { 0.0 },
            "memory_total": total,
            "memory_available": available,
            "timestamp": chrono::Utc::now().to_rfc3339(),
        })
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(sample))
}

fn series(user_id: &str) -> String {
    format!("telemetry/{user_id}")
}

/// The ids a point refers to must name the caller's organisation's
/// records (a device's id is a node's `_id` or a plain device's UUID):
/// any other is a 404, never a foreign record's confirmation.
fn check_refs(
    state: &AppState,
    p: &warden_identity::Principal,
    workflow: Option<&str>,
    dataset: Option<&str>,
    device: Option<&str>,
) -> VareonResult<()> {
    if let Some(id) = workflow {
        super::workflows::find(state, p, id)?;
    }
    if let Some(id) = dataset {
        warden_domain::dataset::find(&state.store, &p.org_id, id)?;
    }
    if let Some(id) = device {
        super::devices::find(state, p, id)?;
    }
    Ok(())
}

async fn ingest(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    crate::dialects::JsonBody(body, _): VareonBody,
) -> VareonResult<(StatusCode, Json<Value>)> {
    let mut f = Fields::new(body);
    let metric_name = f.string("metric_name", true);
    let value = f.number("value", true);
    let timestamp = f.string("timestamp", false);
    let workflow_id = f.string("workflow_id", false);
    let dataset_id = f.string("dataset_id", false);
    let device_id = f.string("device_id", false);
    let at = match &timestamp {
        None => Some(warden_storage::now_millis()),
        Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(_) => {
                f.error("timestamp must be an ISO 8601 datetime".into());
                None
            }
        },
    };
    f.finish_as::<Vareon>()?;
    check_refs(
        &state,
        &p,
        workflow_id.as_deref(),
        dataset_id.as_deref(),
        device_id.as_deref(),
    )?;
    let at = at.unwrap_or_default();
    let id = uuid::Uuid::new_v4().to_string();
    let record = json!({
        "timestamp": chrono::DateTime::from_timestamp_millis(at).map(|t| t.to_rfc3339()),
        "metric_name": metric_name,
        "value": value,
        "workflow_id": workflow_id,
        "dataset_id": dataset_id,
        "device_id": device_id,
        "id": id,
        "owner_id": p.user_id,
    });
    state
        .store
        .append_point(
            &series(&p.user_id),
            at,
            &id,
            record.to_string().into_bytes(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(record)))
}

#[derive(serde::Deserialize)]
struct TelemetryQuery {
    metric_name: Option<String>,
    #[serde(flatten)]
    page: SkipLimit,
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): User,
    Query(q): Query<TelemetryQuery>,
) -> VareonResult<Json<Value>> {
    let (skip, limit) = q.page.parse()?;
    let window = crate::paging::Window::skip(skip, limit);
    let decode =
        |pt: &warden_storage::series::Point| serde_json::from_slice::<Value>(&pt.value).ok();
    let items: Vec<Value> = match &q.metric_name {
        // Unfiltered: the series reads only the window.
        None => state
            .store
            .points(&series(&p.user_id), window.range(false))?
            .iter()
            .filter_map(decode)
            .collect(),
        // By metric: the caller's points are filtered, then windowed.
        Some(metric) => {
            let all = state.store.points(
                &series(&p.user_id),
                Range {
                    limit: usize::MAX,
                    newest_first: false,
                    ..Default::default()
                },
            )?;
            window.slice(
                all.iter()
                    .filter_map(decode)
                    .filter(|v| v["metric_name"] == metric.as_str()),
            )
        }
    };
    Ok(Json(Value::Array(items)))
}

pub(super) fn routes() -> Api {
    Api::new()
        .get(
            "/api/myntrix/system-metrics",
            "vareon: myntrix",
            "CPU and memory of the server host",
            system_metrics,
        )
        .post(
            "/api/neosyntis/telemetry/ingest",
            "vareon: neosyntis",
            "Store a telemetry value",
            ingest,
        )
        .get(
            "/api/neosyntis/telemetry/",
            "vareon: neosyntis",
            "The caller's telemetry (metric_name, skip, limit)",
            list,
        )
        .get(
            "/api/neosyntis/telemetry",
            "vareon: neosyntis",
            "The caller's telemetry (without the trailing slash)",
            list,
        )
}
