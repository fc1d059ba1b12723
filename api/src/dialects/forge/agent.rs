//! Forge's agent (`/api/v1/agent/chat`, `/analyze`, `/history`): the core
//! conversations in forge's shape. Conversation ids carry forge's `conv_`
//! prefix; roles are `user` and `agent`. The facts of the user's datasets
//! go into the model's context; without any LLM backend, Warden's
//! built-in analyst (`warden_domain::dataset::advise`) answers instead.
//! Limited to 20 requests a minute per user (forge's agent limit),
//! beside the API limit.

use axum::Json;
use axum::extract::{Query, State};
use serde_json::{Value, json};
use warden_actors::conversation::{Conversation, ConversationInput, Message, Turn};
use warden_domain::dataset::{self, Dataset};
use warden_identity::Principal;

use super::{Forge, ForgeResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Forge>;

/// Forge's id of a conversation.
fn forge_id(c: &Conversation) -> String {
    format!("conv_{}", c.conversation_id)
}

fn role(m: &Message) -> &str {
    match m.role.as_str() {
        "assistant" => "agent",
        other => other,
    }
}

/// Forge's agent limit, per user.
fn limited(state: &AppState, p: &Principal) -> ForgeResult<()> {
    match state.limits.agent.hit(&p.user_id) {
        Some(wait) => Err(ApiError::too_many(wait)),
        None => Ok(()),
    }
}

/// A conversation of the caller by forge's id (or the bare key).
fn find(state: &AppState, p: &Principal, id: &str) -> ForgeResult<Conversation> {
    let convs = &state.runtime.conversations;
    let key = id.strip_prefix("conv_").unwrap_or(id);
    Ok(convs.of_participant(&p.org_id, &p.user_id, key)?)
}

async fn chat(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonBody<Forge>,
) -> ForgeResult<Json<Value>> {
    limited(&state, &p)?;
    let mut f = Fields::new(body);
    let message = f.string_max("message", true, usize::MAX);
    let conversation = f.string("conversation_id", false);
    f.finish_as::<Forge>()?;
    let message = message.unwrap_or_default();
    warden_actors::conversation::check_text(&message)?;
    let convs = &state.runtime.conversations;
    let c = match conversation {
        Some(id) => find(&state, &p, &id)?,
        None => {
            let owner = p.owner();
            let input = ConversationInput {
                title: Some(message.chars().take(60).collect()),
                conversation_type: Some("analysis".into()),
                ..Default::default()
            };
            convs.create(input, owner, &p.user_id, "forge").await?
        }
    };
    let (context, fallback) = analyst_notes(&state, &p, &message)?;
    let turn = Turn {
        org: p.org_id.clone(),
        user: p.user_id.clone(),
        username: p.username.clone(),
        text: message,
        context,
        fallback: Some(fallback),
        ..Default::default()
    };
    let done = convs.turn(&c.id, turn).await?;
    Ok(Json(json!({
        "response": done.answer.content,
        "conversation_id": forge_id(&c),
        "training_plan": null,
    })))
}

/// The organisation's datasets, newest first.
fn datasets_of(state: &AppState, p: &Principal) -> ForgeResult<Vec<Dataset>> {
    let scope = warden_domain::org_scope(Some(&p.org_id));
    let mut all = state
        .store
        .in_scope::<Dataset>(warden_domain::CREATED, &scope)?;
    all.retain(|d| d.profiled);
    all.reverse();
    Ok(all)
}

/// What the model is told of the user's datasets (those the message
/// names by name or id, else the newest three), and what the analyst
/// answers when no model can.
fn analyst_notes(
    state: &AppState,
    p: &Principal,
    message: &str,
) -> ForgeResult<(Option<String>, String)> {
    let all = datasets_of(state, p)?;
    let lower = message.to_lowercase();
    let named: Vec<&Dataset> = all
        .iter()
        .filter(|d| {
            lower.contains(&d.name.to_lowercase()) || lower.contains(&format!("ds_{}", d.id))
        })
        .collect();
    let chosen: Vec<&Dataset> = if named.is_empty() {
        all.iter().take(3).collect()
    } else {
        named
    };
    let Some(first) = chosen.first() else {
        return Ok((
            None,
            "You have no datasets yet. Upload a sensor CSV (POST /api/v1/datasets) and I will profile it and recommend an architecture. (Warden's built-in analyst: no LLM backend answered.)".into(),
        ));
    };
    let facts: Vec<String> = chosen.iter().map(|d| dataset::facts(d)).collect();
    let context = format!(
        "You are Forge's assistant for building-equipment sensor data. The user's datasets:\n{}",
        facts.join("\n\n")
    );
    let advice = dataset::advise(&first.profile);
    let answer = format!(
        "{} (Warden's built-in analyst: no LLM backend answered.)",
        dataset::explain(first, &advice)
    );
    Ok((Some(context), answer))
}

/// `POST /api/v1/agent/analyze {dataset_id, question}`: the analyst's
/// reading of one dataset (a second pass counts the readings beyond 4
/// standard deviations), a training plan, and the answer in words: the
/// model's, with the facts in its context, else the analyst's.
async fn analyze(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): JsonBody<Forge>,
) -> ForgeResult<Json<Value>> {
    limited(&state, &p)?;
    let mut f = Fields::new(body);
    let id = f.string("dataset_id", true);
    let question = f.string_max("question", false, 4096);
    f.finish_as::<Forge>()?;
    let d = super::datasets::find_csv(&state, &p, &id.unwrap_or_default())?;
    let advice = dataset::advise(&d.profile);
    let store = state.store.clone();
    let held = d.clone();
    let anomalies = tokio::task::spawn_blocking(move || {
        dataset::open(&store, &held)
            .map_err(|e| e.to_string())
            .and_then(|f| dataset::count_outliers(f, &held.profile))
    })
    .await
    .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let hyper = super::datasets::hyperparameters(&advice, advice.architecture);
    let analyst = dataset::explain(&d, &advice);
    let question = question
        .filter(|q| !q.trim().is_empty())
        .unwrap_or_else(|| "Analyze this dataset and recommend a model architecture.".into());
    let response = ask_model(&state, &p, &d, &question)
        .await
        .unwrap_or(analyst);
    Ok(Json(json!({
        "response": response,
        "confidence": (advice.confidence * 1000.0).round() / 1000.0,
        "analysis": {
            "data_quality": advice.data_quality,
            "seasonality": advice.seasonality,
            "anomalies_detected": anomalies,
            "recommended_architecture": advice.architecture,
            "recommended_hyperparameters": hyper,
            "reasons": advice.reasons,
        },
        "training_plan": {
            "architecture": advice.architecture,
            "dataset_id": super::datasets::forge_id(&d),
            "hyperparameters": hyper,
        },
    })))
}

/// The model's answer to a question about one dataset, or `None` when no
/// backend answers (the analyst's words stand then).
async fn ask_model(state: &AppState, p: &Principal, d: &Dataset, question: &str) -> Option<String> {
    let llm = &state.runtime.llm;
    let ask = warden_actors::conversation::Ask {
        org: p.org_id.clone(),
        user: p.user_id.clone(),
        username: p.username.clone(),
        model: llm.defaults().task_model.clone(),
        messages: vec![
            json!({"role": "system", "content": format!("You are Forge's assistant for building-equipment sensor data.\n{}", dataset::facts(d))}),
            json!({"role": "user", "content": question}),
        ],
        temperature: None,
        top_p: None,
        max_tokens: None,
        tools: Vec::new(),
    };
    llm.complete(ask).await.ok().map(|c| c.content)
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    conversation_id: Option<String>,
}

/// The caller's agent history as one flat list, oldest first: `{role,
/// content, timestamp, conversation_id}` (`conversation_id=` narrows it
/// to one conversation).
async fn history(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<HistoryQuery>,
) -> ForgeResult<Json<Vec<Value>>> {
    limited(&state, &p)?;
    let convs = &state.runtime.conversations;
    let mut chosen = match q.conversation_id.filter(|c| !c.is_empty()) {
        Some(id) => vec![find(&state, &p, &id)?],
        None => convs
            .of_user(&p.org_id, &p.user_id, 0, usize::MAX)?
            .into_iter()
            .filter(|c| c.origin == "forge")
            .collect(),
    };
    chosen.sort_by_key(|c| c.audit.created_at);
    let mut out = Vec::new();
    for c in &chosen {
        for m in convs.history(c, usize::MAX)? {
            if m.role == "user" || m.role == "assistant" {
                out.push(json!({
                    "role": role(&m),
                    "content": m.content,
                    "timestamp": iso(m.audit.created_at),
                    "conversation_id": forge_id(c),
                }));
            }
        }
    }
    Ok(Json(out))
}

pub(super) fn routes() -> Api {
    let t = "forge: agent";
    Api::new()
        .post(
            "/api/v1/agent/chat",
            t,
            "Chat with the agent (a new conversation without conversation_id); 20/min per user",
            chat,
        )
        .get(
            "/api/v1/agent/history",
            t,
            "The caller's agent messages, one flat list (conversation_id= narrows it)",
            history,
        )
        .post(
            "/api/v1/agent/analyze",
            t,
            "Analyze a dataset: quality, seasonality, anomalies, the recommended architecture and a training plan",
            analyze,
        )
}
