//! Contenox's OpenAI-compatible chat (`POST /v1/chat/completions`, whole
//! and streamed as OpenAI clients parse it), `/execute` (a prompt to the
//! task model) and `/embed` (the embedding model). Requests are checked
//! here, routed and failed over by the gateway (`Llm::chat`), and the
//! backend's answer is passed on as it gave it.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use warden_actors::llm::chat::{self, Answer};
use warden_actors::llm::usage;

use super::{Contenox, ContenoxResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::dialects::{Fields, JsonBody};
use crate::error::ApiError;
use crate::openapi::Api;

type Body_ = JsonBody<Contenox>;
type Caller = CurrentUser<Contenox>;

/// A backend's whole answer, with its status (a backend's 4xx is the
/// client's to read).
fn whole(status: u16, body: Bytes) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A backend's answer as JSON, or its error in contenox's shape.
fn json_of(status: u16, body: &[u8]) -> ContenoxResult<Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::new(StatusCode::BAD_GATEWAY, "the backend's answer is not JSON"))?;
    if (200..300).contains(&status) {
        return Ok(v);
    }
    let message = v["error"]["message"]
        .as_str()
        .or(v["error"].as_str())
        .unwrap_or("the backend refused the request")
        .to_owned();
    Err(ApiError::new(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        message,
    ))
}

async fn chat_completions(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body_,
) -> ContenoxResult<Response> {
    let llm = &state.runtime.llm;
    let mut req =
        chat::check_chat(body, &llm.defaults().task_model).map_err(ApiError::validation)?;
    // The caller's routing rules (vareon's) may choose another model.
    let rule = llm.choose(
        &p.org_id,
        &p.user_id,
        &p.username,
        &req.model,
        &req.last_user_text(),
    )?;
    if let Some((model, _)) = &rule {
        req.retarget(model);
    }
    let (answer, guard) = llm.chat(&p.org_id, &req).await?;
    let who = Usage {
        llm: llm.clone(),
        org: p.org_id.clone(),
        user: p.user_id.clone(),
        model: req.model.clone(),
        prompt_chars: usage::prompt_chars(&req.body),
        price: guard.price,
    };
    let mut response = answer_response(answer, guard, who)?;
    let headers = response.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(&req.model) {
        headers.insert("x-warden-model", v);
    }
    if let Some((_, id)) = rule
        && let Ok(v) = header::HeaderValue::from_str(&id)
    {
        headers.insert("x-warden-routing-rule", v);
    }
    Ok(response)
}

/// Who a request's tokens are counted for.
struct Usage {
    llm: warden_supervisors::Llm,
    org: String,
    user: String,
    model: String,
    prompt_chars: usize,
    price: f64,
}

impl Usage {
    fn record(&self, t: usage::Tokens) {
        self.llm
            .record_usage(&self.org, &self.user, &self.model, t, self.price);
    }
}

/// A stream's check and its usage: the tokens are counted once, when the
/// stream ends, breaks, or is dropped because the client went away.
struct Tallied {
    check: chat::SseCheck,
    who: Usage,
    counted: bool,
}

impl Tallied {
    fn count(&mut self) {
        if !std::mem::replace(&mut self.counted, true) {
            self.who
                .record(self.check.tally.tokens(self.who.prompt_chars));
        }
    }
}

impl Drop for Tallied {
    fn drop(&mut self) {
        self.count();
    }
}

/// A backend's answer as the client gets it; its tokens are counted
/// (a stream's when it ends, however it ends).
fn answer_response(
    answer: Answer,
    guard: warden_supervisors::InFlight,
    who: Usage,
) -> ContenoxResult<Response> {
    Ok(match answer {
        Answer::Whole { status, body } => {
            if (200..300).contains(&status) && !chat::is_json(&body) {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "the backend's answer is not JSON",
                ));
            }
            if (200..300).contains(&status) {
                who.record(usage::of_whole(who.prompt_chars, &body));
            }
            whole(status, body)
        }
        Answer::Stream { first, rest } => {
            // Bytes pass as they come, each event checked on the way; the
            // guard counts the request until the stream ends. A stream
            // that breaks, or says something that is not an event, ends
            // with one error event.
            let rest = futures_util::stream::iter([Ok(first)]).chain(rest);
            let tallied = Tallied {
                check: chat::SseCheck::default(),
                who,
                counted: false,
            };
            let stream =
                futures_util::stream::unfold(Some((rest, tallied, guard)), |st| async move {
                    let (mut rest, mut t, guard) = st?;
                    let item = match rest.next().await {
                        Some(Ok(b)) => match t.check.feed(&b) {
                            Ok(()) => return Some((Ok(b), Some((rest, t, guard)))),
                            Err(e) => format!("the backend sent {e}"),
                        },
                        Some(Err(e)) => e,
                        None => match t.check.finish() {
                            Ok(()) => {
                                t.count();
                                return None;
                            }
                            Err(e) => format!("the backend's stream ended inside an event ({e})"),
                        },
                    };
                    // A broken stream's tokens were used all the same.
                    t.count();
                    Some((
                        Ok::<Bytes, std::convert::Infallible>(chat::broken_stream_event(&item)),
                        None,
                    ))
                });
            (
                [
                    (header::CONTENT_TYPE, "text/event-stream"),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                Body::from_stream(stream),
            )
                .into_response()
        }
    })
}

/// `/execute`: a prompt to the task model (or `model_name`), answered
/// whole: `{id, response}`.
async fn execute(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body_,
) -> ContenoxResult<Json<Value>> {
    let mut f = Fields::new(body);
    let prompt = f.string_max("prompt", true, usize::MAX);
    let model = f.string("model_name", false);
    f.drop(&["model_provider"]);
    f.finish_as::<Contenox>()?;
    let llm = &state.runtime.llm;
    let model = model
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| llm.defaults().task_model.clone());
    let req = chat::check_chat(
        json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        &model,
    )
    .map_err(ApiError::validation)?;
    let (answer, guard) = llm.chat(&p.org_id, &req).await?;
    let price = guard.price;
    let Answer::Whole { status, body } = answer else {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "the backend streamed an answer it was asked for whole",
        ));
    };
    if (200..300).contains(&status) {
        let chars = usage::prompt_chars(&req.body);
        llm.record_usage(
            &p.org_id,
            &p.user_id,
            &req.model,
            usage::of_whole(chars, &body),
            price,
        );
    }
    let v = json_of(status, &body)?;
    let response = v["choices"][0]["message"]["content"]
        .as_str()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "the backend's answer has no message",
            )
        })?;
    Ok(Json(
        json!({"id": warden_storage::new_uuid(), "response": response}),
    ))
}

/// `/embed`: the embedding model's vector for `text`.
async fn embed(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body_,
) -> ContenoxResult<Json<Value>> {
    let mut f = Fields::new(body);
    let text = f.string_max("text", true, usize::MAX);
    f.finish_as::<Contenox>()?;
    let llm = &state.runtime.llm;
    let model = llm.defaults().embed_model.clone();
    let (answer, guard) = llm
        .embed(&p.org_id, &model, text.as_deref().unwrap_or_default())
        .await?;
    let price = guard.price;
    let Answer::Whole { status, body } = answer else {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "the backend streamed embeddings",
        ));
    };
    if (200..300).contains(&status) {
        let chars = text.as_deref().map_or(0, |t| t.chars().count());
        llm.record_usage(
            &p.org_id,
            &p.user_id,
            &model,
            usage::of_whole(chars, &body),
            price,
        );
    }
    let v = json_of(status, &body)?;
    let vector = v["data"][0]["embedding"].clone();
    if !vector
        .as_array()
        .is_some_and(|a| a.iter().all(Value::is_number))
    {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "the backend's answer has no embedding",
        ));
    }
    Ok(Json(json!({"vector": vector})))
}

pub(super) fn routes() -> Api {
    let o = "contenox: openai";
    Api::new()
        .post("/v1/chat/completions", o, "OpenAI chat completions, whole or streamed (SSE), routed by group and health with failover", chat_completions)
        .post("/execute", o, "Run a prompt through the task model: {id, response}", execute)
        .post("/embed", o, "The embedding model's vector for a text", embed)
}
