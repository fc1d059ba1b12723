//! Vareon's overviews over the core (VAREON-NEURONEST.md §1, §2):
//! `GET /api/system/status` (every counter computed from the caller's
//! organisation's records, none invented), `GET /api/search` (a literal,
//! case-insensitive substring search) and `GET /api/myntrix/visualization-data`.

use axum::Json;
use axum::extract::{Query, State};
use serde_json::{Map, Value, json};
use warden_actors::execution::ExecStatus;
use warden_actors::training::{RunStatus, TrainingRun};
use warden_domain::dataset::Dataset;
use warden_domain::workflow::Workflow;
use warden_domain::{CREATED, counter, org_scope};
use warden_identity::Principal;

use super::devices;
use super::{Vareon, VareonResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::iso;
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Vareon>;

/// The counter of the searches a user made.
const SEARCHES: &str = "vareon-search";
/// The most results of one type a search answers.
const PER_TYPE: usize = 50;

fn workflows(state: &AppState, org: &str) -> VareonResult<Vec<Workflow>> {
    Ok(state
        .store
        .in_scope::<Workflow>(CREATED, &org_scope(Some(org)))?
        .into_iter()
        .filter(|w| w.audit.deleted_at.is_none())
        .collect())
}

/// The caller's organisation's counters, by name.
fn counters(state: &AppState, p: &Principal) -> VareonResult<Map<String, Value>> {
    let org = p.org_id.as_str();
    let scope = org_scope(Some(org));
    let chats = state.runtime.conversations.stats(org)?;
    let executions = state.runtime.executions.stats(Some(org))?;
    let completed_runs = executions
        .by_status
        .iter()
        .find(|(s, _)| s == ExecStatus::Completed.as_str())
        .map_or(0, |(_, n)| *n);
    let completed_training = state
        .store
        .in_scope::<TrainingRun>(CREATED, &scope)?
        .iter()
        .filter(|r| r.audit.deleted_at.is_none() && r.status == RunStatus::Completed)
        .count() as u64;
    let devices = devices::all(state, org)?;
    let active_workflows = workflows(state, org)?
        .iter()
        .filter(|w| super::workflows::status(state, w) == "running")
        .count();
    let datasets = state.store.scope_count::<Dataset>(CREATED, &scope)?;
    let routed: u64 = state
        .runtime
        .llm
        .usage(org, None, None)?
        .iter()
        .map(|u| u.requests)
        .sum();
    let models = state.runtime.llm.llm_models(org, None, usize::MAX)?.len();
    let mut c = Map::new();
    let mut put = |k: &str, v: Value| {
        c.insert(k.to_owned(), v);
    };
    put("activeChats", json!(chats.active));
    put("messagesProcessed", json!(chats.messages));
    put(
        "avgResponseTime",
        json!(
            chats
                .avg_response_ms
                .map_or_else(|| "0ms".to_owned(), super::chat::seconds)
        ),
    );
    put(
        "activeAgents",
        json!(
            super::agents::all(state, org)?
                .iter()
                .filter(|a| super::agents::view(state, a)["status"] == "running")
                .count()
        ),
    );
    put("jobsCompleted", json!(completed_runs + completed_training));
    put(
        "devicesConnected",
        json!(devices.iter().filter(|d| d.is_connected()).count()),
    );
    put("activeWorkflows", json!(active_workflows));
    put("datasetsManaged", json!(datasets));
    put(
        "searchQueriesProcessed",
        json!(counter::read(&state.store, SEARCHES, org, &p.user_id)?),
    );
    put("modelsActive", json!(models));
    put(
        "routingRules",
        json!(state.runtime.llm.rules(org, &p.user_id)?.len()),
    );
    put("requestsRouted", json!(routed));
    Ok(c)
}

/// Each block's own counters; a block shows the others as zero (as the
/// original does).
const BLOCKS: [(&str, &[&str]); 4] = [
    (
        "arcana",
        &["activeChats", "messagesProcessed", "avgResponseTime"],
    ),
    (
        "myntrix",
        &["activeAgents", "jobsCompleted", "devicesConnected"],
    ),
    (
        "neosyntis",
        &[
            "activeWorkflows",
            "datasetsManaged",
            "searchQueriesProcessed",
        ],
    ),
    (
        "cognisys",
        &["modelsActive", "routingRules", "requestsRouted"],
    ),
];

async fn status(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> VareonResult<Json<Value>> {
    let counters = counters(&state, &p)?;
    let uptime = super::chat::uptime(&state);
    let mut out = Map::new();
    for (block, own) in BLOCKS {
        let mut b = Map::new();
        b.insert("status".into(), json!("online"));
        b.insert("uptime".into(), json!(uptime));
        for (name, value) in &counters {
            let zero = if name == "avgResponseTime" {
                json!("0ms")
            } else {
                json!(0)
            };
            let v = if own.contains(&name.as_str()) {
                value.clone()
            } else {
                zero
            };
            b.insert(name.clone(), v);
        }
        out.insert(block.into(), Value::Object(b));
    }
    Ok(Json(Value::Object(out)))
}

#[derive(serde::Deserialize)]
struct SearchQuery {
    query: Option<String>,
}

/// Whether `text` holds `needle` (already lower-cased), literally: no
/// character is a wildcard.
fn holds(text: &str, needle: &str) -> bool {
    text.to_lowercase().contains(needle)
}

async fn search(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<SearchQuery>,
) -> VareonResult<Json<Vec<Value>>> {
    let Some(query) = q.query else {
        return Err(ApiError::validation(vec!["query field required".into()]));
    };
    if query.chars().count() > 256 {
        return Err(ApiError::validation(vec![
            "query must be at most 256 characters".into(),
        ]));
    }
    let needle = query.to_lowercase();
    let org = p.org_id.as_str();
    let mut out = Vec::new();
    out.extend(
        workflows(&state, org)?
            .iter()
            .filter(|w| holds(&w.name, &needle))
            .take(PER_TYPE)
            .map(|w| {
                json!({"type": "workflow", "id": w.id, "name": w.name,
                       "status": super::workflows::status(&state, w)})
            }),
    );
    out.extend(
        state
            .store
            .in_scope::<Dataset>(CREATED, &org_scope(Some(org)))?
            .iter()
            .filter(|d| d.audit.deleted_at.is_none() && holds(&d.name, &needle))
            .take(PER_TYPE)
            .map(|d| json!({"type": "dataset", "id": d.id, "name": d.name, "format": d.format})),
    );
    out.extend(
        super::agents::all(&state, org)?
            .iter()
            .filter(|a| holds(&a.name, &needle))
            .take(PER_TYPE)
            .map(|a| {
                json!({"type": "agent", "id": a.id, "name": a.name,
                       "status": super::agents::view(&state, a)["status"]})
            }),
    );
    out.extend(
        devices::all(&state, org)?
            .iter()
            .filter(|d| holds(d.name(), &needle))
            .take(PER_TYPE)
            .map(|d| {
                let v = d.view();
                json!({"type": "hardware_device", "id": v["id"], "name": v["name"],
                       "device_type": d.kind()})
            }),
    );
    out.extend(
        state
            .runtime
            .llm
            .rules(org, &p.user_id)?
            .iter()
            .filter(|r| holds(&r.name, &needle))
            .take(PER_TYPE)
            .map(|r| {
                json!({"type": "routing_rule", "id": r.id, "name": r.name,
                       "target_model": r.target_model})
            }),
    );
    counter::bump(&state.store, SEARCHES, org, &p.user_id).await?;
    Ok(Json(out))
}

async fn visualization(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> VareonResult<Json<Value>> {
    let strip = |mut v: Value| {
        if let Some(m) = v.as_object_mut() {
            m.remove("owner_id");
        }
        v
    };
    Ok(Json(json!({
        "agents": super::agents::all(&state, &p.org_id)?
            .iter()
            .map(|a| strip(super::agents::view(&state, a)))
            .collect::<Vec<_>>(),
        "devices": devices::all(&state, &p.org_id)?.iter().map(|d| strip(d.view())).collect::<Vec<_>>(),
        "timestamp": iso(warden_storage::now_millis()),
    })))
}

pub(super) fn routes() -> Api {
    Api::new()
        .get(
            "/api/system/status",
            "vareon: system",
            "Each module's counters, computed from the organisation's records",
            status,
        )
        .get(
            "/api/search",
            "vareon: system",
            "Literal, case-insensitive name search over workflows, datasets, agents, devices and routing rules (query)",
            search,
        )
        .get(
            "/api/myntrix/visualization-data",
            "vareon: myntrix",
            "The organisation's agents and devices, for a 3D view",
            visualization,
        )
}

#[cfg(test)]
mod tests {
    use super::holds;

    #[test]
    fn search_is_literal_and_ignores_case() {
        assert!(holds("GPU Rig 1", "rig"));
        assert!(!holds("GPU Rig 1", "r%g"));
        assert!(holds("100%_done", "%_d"));
        assert!(!holds("abc", "a.c"));
    }
}
