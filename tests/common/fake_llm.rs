//! A local server speaking the OpenAI protocol as LLM backends do
//! (Ollama's `/api/tags` too): model listings, chat completions whole and
//! streamed (`stream_options.include_usage` honoured), embeddings, and
//! failure modes for failover tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Mode {
    Ok,
    /// Chat requests answer 500.
    Fail,
    /// Streams break before their first byte.
    BreakBeforeFirst,
    /// Streams break after two chunks.
    BreakMid,
    /// Whole answers that are not JSON; streams with an event that is not.
    Garbage,
    /// Streams with 400 ms between events.
    Slow,
    /// Whole answers after 6 s.
    Hold,
}

#[derive(Clone)]
pub struct Fake {
    pub name: String,
    pub models: Arc<Mutex<Vec<String>>>,
    pub mode: Arc<Mutex<Mode>>,
    pub chats: Arc<AtomicUsize>,
    pub bodies: Arc<Mutex<Vec<Value>>>,
    /// Pulls asked for, and pulls whose client went away mid-way.
    pub pulls: Arc<Mutex<Vec<String>>>,
    pub pulls_dropped: Arc<AtomicUsize>,
}

impl Fake {
    pub fn new(name: &str, models: &[&str]) -> Fake {
        Fake {
            name: name.into(),
            models: Arc::new(Mutex::new(models.iter().map(|m| m.to_string()).collect())),
            mode: Arc::new(Mutex::new(Mode::Ok)),
            chats: Arc::default(),
            bodies: Arc::default(),
            pulls: Arc::default(),
            pulls_dropped: Arc::default(),
        }
    }
    pub fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
}

async fn tags(State(f): State<Fake>) -> Response {
    let models: Vec<Value> = f
        .models
        .lock()
        .unwrap()
        .iter()
        .map(|m| json!({"name": m, "model": m}))
        .collect();
    axum::Json(json!({"models": models})).into_response()
}

async fn models(State(f): State<Fake>) -> Response {
    let data: Vec<Value> = f
        .models
        .lock()
        .unwrap()
        .iter()
        .map(|m| json!({"id": m, "object": "model"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

fn chunk(model: &str, delta: Value, finish: Value) -> String {
    let c = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

async fn completions(State(f): State<Fake>, axum::Json(body): axum::Json<Value>) -> Response {
    f.chats.fetch_add(1, Ordering::SeqCst);
    f.bodies.lock().unwrap().push(body.clone());
    let mode = *f.mode.lock().unwrap();
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    if mode == Mode::Fail {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "overloaded").into_response();
    }
    let text = format!("hello from {}", f.name);
    if mode == Mode::Hold {
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    // Offered tools and asked by the user: call the first tool, or the
    // first `*.comment` tool when a hook's are offered (with arguments
    // `{"id": "7", "note": "hi"}`); after a tool's answer, talk.
    let last_role = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map(|m| m["role"].clone());
    let names: Vec<&str> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    let pick = names
        .iter()
        .find(|n| n.ends_with(".comment") && names[0].contains('.'))
        .or(names.first());
    if let Some(tool) = pick
        && body["stream"] != true
        && last_role == Some(json!("user"))
    {
        return axum::Json(json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": tool, "arguments": "{\"id\": \"7\", \"note\": \"hi\"}"}}]},
            "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}))
            .into_response();
    }
    if body["stream"] != true {
        if mode == Mode::Garbage {
            return (axum::http::StatusCode::OK, "<html>not json").into_response();
        }
        return axum::Json(json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}))
            .into_response();
    }
    let mut parts: Vec<Result<String, std::io::Error>> = Vec::new();
    let broken = || Err(std::io::Error::other("backend died"));
    if mode == Mode::BreakBeforeFirst {
        parts.push(broken());
    } else {
        parts.push(Ok(chunk(
            &model,
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )));
        for word in text.split(' ') {
            parts.push(Ok(chunk(
                &model,
                json!({"content": format!("{word} ")}),
                Value::Null,
            )));
        }
        if mode == Mode::BreakMid {
            parts.truncate(2);
            parts.push(broken());
        } else if mode == Mode::Garbage {
            parts.truncate(2);
            parts.push(Ok("data: {\"choices\": [oops\n\n".into()));
            parts.push(Ok("data: [DONE]\n\n".into()));
        } else {
            parts.push(Ok(chunk(&model, json!({}), json!("stop"))));
            if body["stream_options"]["include_usage"] == true {
                let u = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
                    "model": model, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}});
                parts.push(Ok(format!("data: {u}\n\n")));
            }
            parts.push(Ok("data: [DONE]\n\n".into()));
        }
    }
    let pause = Duration::from_millis(if mode == Mode::Slow { 400 } else { 5 });
    let stream = futures_util::stream::iter(parts).then(move |p| async move {
        tokio::time::sleep(pause).await;
        p
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Counts a pull whose client went away before it finished.
struct Dropped(Arc<AtomicUsize>, bool);

impl Drop for Dropped {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Ollama's pull: progress as newline-delimited JSON, then `success`
/// (and the model is served). A model named `slow...` takes 10 s.
async fn pull(State(f): State<Fake>, axum::Json(body): axum::Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    f.pulls.lock().unwrap().push(model.clone());
    if model.starts_with("missing") {
        let line = json!({"error": "pull model manifest: file does not exist"});
        return (axum::http::StatusCode::OK, format!("{line}\n")).into_response();
    }
    let (steps, delay) = if model.starts_with("slow") {
        (20, 500)
    } else {
        (5, 20)
    };
    let guard = Dropped(f.pulls_dropped.clone(), false);
    let stream = futures_util::stream::unfold((0u64, guard), move |(i, mut guard)| {
        let (f, model) = (f.clone(), model.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let line = if i == 0 {
                json!({"status": "pulling manifest"})
            } else if i <= steps {
                json!({"status": "downloading", "digest": "sha256:abc", "total": steps * 10, "completed": i * 10})
            } else if i == steps + 1 {
                f.models.lock().unwrap().push(model);
                guard.1 = true;
                json!({"status": "success"})
            } else {
                return None;
            };
            Some((
                Ok::<String, std::io::Error>(format!("{line}\n")),
                (i + 1, guard),
            ))
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn embeddings(State(_f): State<Fake>, axum::Json(body): axum::Json<Value>) -> Response {
    axum::Json(json!({"object": "list", "model": body["model"], "data": [{"object": "embedding", "index": 0,
        "embedding": [0.25, -0.5, 1.0]}], "usage": {"prompt_tokens": 2, "total_tokens": 2}}))
    .into_response()
}

pub async fn serve(f: Fake) -> String {
    let app = axum::Router::new()
        .route("/api/tags", axum::routing::get(tags))
        .route("/v1/models", axum::routing::get(models))
        .route("/api/pull", axum::routing::post(pull))
        .route("/v1/chat/completions", axum::routing::post(completions))
        .route("/v1/embeddings", axum::routing::post(embeddings))
        .with_state(f);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}
