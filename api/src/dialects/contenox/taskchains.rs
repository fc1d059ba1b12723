//! Contenox task chains (`/taskchains`): the core's workflows whose
//! program is a chain (WORKFLOWS.md §1, §4 A). A chain is stored as sent
//! (unknown fields round-trip); `POST` with an id that exists replaces
//! it, as the original's key-value put does; the list pages newest first
//! by `limit` and an RFC 3339 `cursor` (chains created before it).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_domain::catalog;
use warden_domain::workflow::{self, Workflow};

use super::backends::PageQuery;
use super::{Contenox, ContenoxResult, writer};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::JsonBody;
use crate::error::ApiError;
use crate::openapi::Api;
use crate::paging::Window;
use warden_supervisors::{ChainRequest, RunLabel};

type Caller = CurrentUser<Contenox>;
type Body = JsonBody<Contenox>;

fn find(state: &AppState, org: &str, id: &str) -> ContenoxResult<Workflow> {
    workflow::by_key(&state.store, org, id)?.ok_or_else(|| ApiError::not_found("Task chain", id))
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    writer(&p)?;
    let (key, description, program) = workflow::chain_from(body)?;
    let (w, _) = workflow::put_chain(
        &state.store,
        p.owner(),
        &p.user_id,
        key,
        description,
        program,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(w.chain_view())))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<PageQuery>,
) -> ContenoxResult<Json<Vec<Value>>> {
    let (limit, before) = q.read()?;
    let scope = warden_domain::org_scope(Some(&p.org_id));
    let page = Window::cursor(before, limit).read::<Workflow>(
        &state.store,
        warden_domain::CREATED,
        &scope,
        true,
    )?;
    Ok(Json(
        page.items.iter().map(|(_, w)| w.chain_view()).collect(),
    ))
}

async fn get(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    Ok(Json(find(&state, &p.org_id, &id)?.chain_view()))
}

/// Replaces the chain at `id` (the body's own `id`, if any, must agree).
async fn replace(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(mut body, _): Body,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    let existing = find(&state, &p.org_id, &id)?;
    match body.get("id") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if *s == id => {}
        Some(_) => {
            return Err(ApiError::validation(vec![format!(
                "id in the body must be {id}, the chain's id"
            )]));
        }
    }
    body.insert("id".into(), json!(id));
    let (_, description, program) = workflow::chain_from(body)?;
    let w = workflow::replace_chain(
        &state.store,
        &existing.id,
        &p.user_id,
        &description,
        &program,
    )
    .await?;
    Ok(Json(w.chain_view()))
}

async fn delete(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    let w = find(&state, &p.org_id, &id)?;
    catalog::soft_delete::<Workflow>(&state.store, &w.id, &p.user_id).await?;
    Ok(Json(json!("deleted")))
}

/// Runs a chain a request waits on, filed under the request's
/// correlation id, and answers it once it ended. When the server starts
/// stopping first: 503 (the run is durable and goes on after the restart;
/// `/activity/requests/{id}` shows it), so that no request holds a
/// shutdown open. A client that goes away first cancels the run
/// (`client_disconnected`), as the original does.
async fn request_run(
    state: &AppState,
    p: &warden_identity::Principal,
    chain_id: &str,
    definition: &Value,
    input_type: &str,
    input: &Value,
) -> ContenoxResult<warden_actors::execution::Execution> {
    let executions = &state.runtime.executions;
    let label = RunLabel::request(&crate::context::current().correlation_id);
    let running = executions
        .begin_chain(ChainRequest {
            owner: p.owner(),
            by: &p.user_id,
            chain_id,
            definition,
            input_type,
            input,
            label,
        })
        .await?;
    let mut guard = CancelOnDrop {
        executions: executions.clone(),
        id: Some(running.execution.id.clone()),
    };
    let answer = tokio::select! {
        x = executions.end_of(running) => x.map_err(ApiError::from),
        () = state.lifecycle.stopping() => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is stopping; the run goes on when it is back (see /api/executions)",
        )),
    };
    guard.id = None;
    answer
}

/// Cancels a request's run if the request is dropped before its end
/// (the client went away).
struct CancelOnDrop {
    executions: warden_supervisors::Executions,
    id: Option<String>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let executions = self.executions.clone();
            tokio::spawn(async move {
                let reason = Some("client_disconnected".to_owned());
                if let Err(e) = executions.cancel(&id, reason).await {
                    tracing::warn!(execution = %id, error = %e, "could not cancel a run its client left");
                }
            });
        }
    }
}

/// A synchronous run's chain part once it completed; a run that did not
/// is a 500 with its error.
fn completed(
    x: &warden_actors::execution::Execution,
) -> ContenoxResult<&warden_actors::execution::ChainPart> {
    if x.status != warden_actors::execution::ExecStatus::Completed {
        let why = x.error.as_ref().map_or_else(
            || format!("the run ended {}", x.status.as_str()),
            |e| e.message.clone(),
        );
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, why));
    }
    x.chain
        .as_ref()
        .ok_or_else(|| ApiError::internal("the run lost its chain"))
}

/// `POST /tasks {chain, input, inputType}`: runs the chain (as sent) on
/// the input as an execution (AIWM's `/api/executions` shows it) and
/// answers `{output, outputType, state[]}`; a bad chain or input is a
/// 400 naming the problem, a failed run a 500 with its error.
async fn run(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body,
) -> ContenoxResult<Json<Value>> {
    writer(&p)?;
    let Some(chain) = body.get("chain").filter(|c| c.is_object()) else {
        return Err(ApiError::validation(vec![
            "chain must be a task chain object".into(),
        ]));
    };
    let chain_id = chain["id"].as_str().unwrap_or_default().to_owned();
    let input_type = match body.get("inputType") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(ApiError::validation(vec![
                "inputType must be a string".into(),
            ]));
        }
    };
    let input = body.get("input").cloned().unwrap_or(Value::Null);
    let x = request_run(&state, &p, &chain_id, chain, input_type, &input).await?;
    let part = completed(&x)?;
    let out = &part.run.output;
    Ok(Json(json!({
        "output": out.json(),
        "outputType": out.kind,
        "state": part.run.state.iter().map(|u| u.view()).collect::<Vec<_>>(),
    })))
}

/// `POST /openai/{chainID}/v1/chat/completions`: the stored chain run on
/// the OpenAI request (`openai_chat` input); its output, an
/// `openai_chat_response`, is the answer; `stream: true` gets it as SSE
/// chunks (the whole message in one delta) and `data: [DONE]`.
async fn chain_chat(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(chain_id): Path<String>,
    JsonBody(body, _): Body,
) -> ContenoxResult<axum::response::Response> {
    use axum::response::IntoResponse;
    writer(&p)?;
    let w = find(&state, &p.org_id, &chain_id)?;
    if !body.get("messages").is_some_and(Value::is_array) {
        return Err(ApiError::validation(vec![
            "messages must be an array".into(),
        ]));
    }
    let stream = body.get("stream") == Some(&Value::Bool(true));
    let x = request_run(
        &state,
        &p,
        &chain_id,
        &w.chain_view(),
        "openai_chat",
        &Value::Object(body),
    )
    .await?;
    let out = &completed(&x)?.run.output;
    if out.kind != "openai_chat_response" {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "chain {chain_id} ended with a {} output, not a chat completion (end it with convert_to_openai_chat_response)",
                out.kind
            ),
        ));
    }
    let response = out.json();
    if !stream {
        return Ok(Json(response).into_response());
    }
    let choice = &response["choices"][0];
    let chunk = |delta: Value, finish: Value| {
        json!({"id": response["id"], "object": "chat.completion.chunk", "created": response["created"],
            "model": response["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let events = [
        chunk(
            json!({"role": "assistant", "content": choice["message"]["content"]}),
            Value::Null,
        ),
        chunk(json!({}), choice["finish_reason"].clone()),
    ];
    let mut text: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    text.push_str("data: [DONE]\n\n");
    Ok((
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        text,
    )
        .into_response())
}

pub(super) fn routes() -> Api {
    let t = "contenox: task chains";
    Api::new()
        .post(
            "/taskchains",
            t,
            "Store a task chain {id, description, debug, token_limit, tasks[]} (an existing id is replaced)",
            create,
        )
        .get(
            "/taskchains",
            t,
            "The organisation's task chains, newest first (limit, cursor)",
            list,
        )
        .get("/taskchains/{id}", t, "A task chain", get)
        .put("/taskchains/{id}", t, "Replace a task chain", replace)
        .delete("/taskchains/{id}", t, "Delete a task chain", delete)
        .post(
            "/tasks",
            t,
            "Run a chain {chain, input, inputType} to its end: {output, outputType, state[]}",
            run,
        )
        .post(
            "/openai/{chainID}/v1/chat/completions",
            t,
            "OpenAI's chat completions through a stored chain (whole, or SSE with stream)",
            chain_chat,
        )
}
