//! Talking to a backend on a client's behalf, in OpenAI's chat and
//! embeddings protocol, which every backend type serves (Ollama and
//! vLLM at `/v1/...`, Gemini at `/v1beta/openai/...`). A request is
//! checked here before any backend sees it; an attempt reports whether
//! the next backend should be tried (connect error, timeout, 5xx, or a
//! stream that ended before its first byte) or what to answer.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use super::probe::{Target, openai_url, scrub, transport_error};

/// How long a backend may take to start answering.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);

/// The roles OpenAI's chat API takes.
pub const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "developer"];

/// A checked chat request: the body as the client sent it (with the
/// model it resolved to) and whether it streams.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// Whether the client asked for the final usage chunk.
    pub include_usage: bool,
}

/// Checks a chat completion request as OpenAI does; a missing model is
/// the default one.
pub fn check_chat(
    mut body: Map<String, Value>,
    default_model: &str,
) -> Result<ChatRequest, Vec<String>> {
    let mut errors = Vec::new();
    let model = match body.get("model") {
        None | Some(Value::Null) => default_model.to_owned(),
        Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
        Some(_) => {
            errors.push("model must be a non-empty string".to_owned());
            String::new()
        }
    };
    match body.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, m) in list.iter().enumerate() {
                let Some(m) = m.as_object() else {
                    errors.push(format!("messages[{i}] must be an object"));
                    continue;
                };
                match m.get("role").and_then(Value::as_str) {
                    Some(r) if ROLES.contains(&r) => {}
                    Some(r) => errors.push(format!(
                        "messages[{i}].role {r:?} must be one of: {}",
                        ROLES.join(", ")
                    )),
                    None => errors.push(format!("messages[{i}].role must be a string")),
                }
                let content_ok = match m.get("content") {
                    Some(Value::String(_)) | Some(Value::Array(_)) => true,
                    // An assistant's turn may carry only tool calls.
                    None | Some(Value::Null) => m.contains_key("tool_calls"),
                    Some(_) => false,
                };
                if !content_ok {
                    errors.push(format!(
                        "messages[{i}].content must be a string or an array of parts"
                    ));
                }
            }
        }
        Some(Value::Array(_)) => errors.push("messages must not be empty".to_owned()),
        _ => errors.push("messages must be an array of messages".to_owned()),
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push("stream must be a boolean".to_owned());
            false
        }
    };
    for key in [
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
    ] {
        if body
            .get(key)
            .is_some_and(|v| !v.is_null() && !v.is_number())
        {
            errors.push(format!("{key} must be a number"));
        }
    }
    for key in ["max_tokens", "max_completion_tokens", "n"] {
        if body
            .get(key)
            .is_some_and(|v| !v.is_null() && v.as_u64().is_none())
        {
            errors.push(format!("{key} must be a non-negative integer"));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    body.insert("model".into(), json!(model));
    Ok(ChatRequest {
        body,
        model,
        stream,
        include_usage,
    })
}

impl ChatRequest {
    /// The last user message's text (the text parts of a multi-part one).
    pub fn last_user_text(&self) -> String {
        let Some(m) = self.body["messages"]
            .as_array()
            .and_then(|l| l.iter().rev().find(|m| m["role"] == "user"))
        else {
            return String::new();
        };
        match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    }

    /// Sends the request to another model (a routing rule chose it).
    pub fn retarget(&mut self, model: &str) {
        self.model = model.to_owned();
        self.body.insert("model".into(), json!(model));
    }
}

/// Where a backend takes OpenAI-style requests (`chat/completions`,
/// `embeddings`).
pub fn url(target: &Target, path: &str) -> String {
    match target.kind.as_str() {
        "gemini" => format!("{}/v1beta/openai/{path}", target.base_url),
        "ollama" => format!("{}/v1/{path}", target.base_url),
        _ => openai_url(&target.base_url, path),
    }
}

/// What a backend answered.
pub enum Answer {
    /// A whole answer (also a backend's 4xx, passed on as it said it).
    Whole { status: u16, body: Bytes },
    /// A stream that has produced its first bytes.
    Stream {
        first: Bytes,
        rest: futures_util::stream::BoxStream<'static, Result<Bytes, String>>,
    },
}

/// One attempt at one backend.
pub enum Attempt {
    Answered(Answer),
    /// Nothing reached the client: try the next backend. The reason is
    /// key-free.
    Next(String),
}

/// Sends `body` to `path` on the target; never returns a key in a reason.
pub async fn attempt(
    client: &reqwest::Client,
    target: &Target,
    path: &str,
    body: &Value,
    stream: bool,
) -> Attempt {
    let key = target.api_key.as_deref();
    let mut req = client.post(url(target, path)).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = match tokio::time::timeout(FIRST_BYTE_TIMEOUT, req.send()).await {
        Err(_) => return Attempt::Next("timed out".into()),
        Ok(Err(e)) => return Attempt::Next(scrub(&transport_error(&e), key)),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if status.is_server_error() {
        return Attempt::Next(format!("HTTP {}", status.as_u16()));
    }
    if !stream || !status.is_success() {
        return match tokio::time::timeout(FIRST_BYTE_TIMEOUT, resp.bytes()).await {
            Err(_) => Attempt::Next("timed out".into()),
            Ok(Err(e)) => Attempt::Next(scrub(&transport_error(&e), key)),
            Ok(Ok(body)) => Attempt::Answered(Answer::Whole {
                status: status.as_u16(),
                body,
            }),
        };
    }
    let key_owned = key.map(str::to_owned);
    let mut rest = resp
        .bytes_stream()
        .map(move |r| r.map_err(|e| scrub(&transport_error(&e), key_owned.as_deref())))
        .boxed();
    // Until the first bytes arrive nothing has reached the client.
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, rest.next()).await {
        Err(_) => Attempt::Next("timed out before the first byte".into()),
        Ok(None) => Attempt::Next("the stream ended before its first byte".into()),
        Ok(Some(Err(e))) => Attempt::Next(e),
        Ok(Some(Ok(first))) => Attempt::Answered(Answer::Stream { first, rest }),
    }
}

/// Whether a whole answer is JSON (a backend's garbage is not passed on).
pub fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// The longest event a stream may hold back while it is incomplete.
const MAX_EVENT: usize = 1 << 20;

/// Checks a backend's server-sent events as they pass: every event's
/// `data` is JSON or `[DONE]`, every line a field or a comment. Bytes are
/// passed on as they come; only the unfinished event is kept.
#[derive(Default)]
pub struct SseCheck {
    pending: Vec<u8>,
    /// The tokens the stream reports or holds, for usage.
    pub tally: super::usage::Tally,
}

impl SseCheck {
    /// Checks the events a chunk completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.pending.extend_from_slice(chunk);
        while let Some((end, sep)) = event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end + sep).collect();
            check_event(&event[..end], &mut self.tally)?;
        }
        if self.pending.len() > MAX_EVENT {
            return Err("an event longer than 1 MiB".into());
        }
        Ok(())
    }

    /// At the end of the stream: what is left must be a whole event.
    pub fn finish(&mut self) -> Result<(), String> {
        let rest = std::mem::take(&mut self.pending);
        check_event(&rest, &mut self.tally)
    }
}

/// Where the first event ends, and the length of its blank line.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn check_event(event: &[u8], tally: &mut super::usage::Tally) -> Result<(), String> {
    let text = std::str::from_utf8(event).map_err(|_| "an event that is not UTF-8".to_owned())?;
    let mut data = String::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            "event" | "id" | "retry" => {}
            _ => return Err(format!("a line that is not an SSE field: {:.40}", line)),
        }
    }
    if data.is_empty() || data == "[DONE]" || tally.event(&data) {
        Ok(())
    } else {
        Err("an event whose data is not a JSON object".into())
    }
}

/// The one event that ends a stream that broke after its first byte.
pub fn broken_stream_event(reason: &str) -> Bytes {
    let e = json!({"error": {
        "message": format!("the backend's stream broke off: {reason}"),
        "type": "server_error",
        "code": "stream_interrupted",
        "param": null,
    }});
    Bytes::from(format!("data: {e}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn requests_are_checked_as_openai_does() {
        let ok = check_chat(
            body(
                json!({"messages": [{"role": "user", "content": "hi"}], "stream": true,
            "stream_options": {"include_usage": true}}),
            ),
            "phi3:3.8b",
        )
        .unwrap();
        assert_eq!(
            (ok.model.as_str(), ok.stream, ok.include_usage),
            ("phi3:3.8b", true, true)
        );
        assert_eq!(ok.body["model"], "phi3:3.8b");
        let tool_turn = json!({"model": "m", "messages": [{"role": "assistant", "content": null, "tool_calls": []}]});
        assert!(check_chat(body(tool_turn), "d").is_ok());
        for (bad, n) in [
            (json!({"model": "m", "messages": []}), 1),
            (json!({"model": "m"}), 1),
            (
                json!({"model": 5, "messages": [{"role": "wizard", "content": "x"}]}),
                2,
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": 5}], "temperature": "hot"}),
                2,
            ),
            (
                json!({"model": "m", "messages": ["hi"], "stream": "yes", "max_tokens": -1}),
                3,
            ),
        ] {
            let errors = check_chat(body(bad.clone()), "d").unwrap_err();
            assert_eq!(errors.len(), n, "{bad}: {errors:?}");
        }
    }

    #[test]
    fn events_are_checked_across_chunks() {
        let mut c = SseCheck::default();
        assert!(c.feed(b"data: {\"a\":").is_ok(), "an event may span chunks");
        assert!(
            c.feed(b"1}\n\n: keep-alive\n\nevent: x\r\ndata: [DONE]\r\n\r\n")
                .is_ok()
        );
        assert!(c.finish().is_ok());
        assert!(SseCheck::default().feed(b"data: {oops\n\n").is_err());
        assert!(SseCheck::default().feed(b"<html>\n\n").is_err());
        let mut c = SseCheck::default();
        c.feed(b"data: {\"cut\": ").unwrap();
        assert!(c.finish().is_err(), "a stream may not end inside an event");
        assert!(is_json(b"{\"a\": 1}") && !is_json(b"<html>"));
    }

    #[test]
    fn each_backend_type_has_its_openai_path() {
        let t = |kind: &str, base: &str| Target {
            kind: kind.into(),
            base_url: base.into(),
            api_key: None,
        };
        assert_eq!(
            url(&t("ollama", "http://h:11434"), "chat/completions"),
            "http://h:11434/v1/chat/completions"
        );
        assert_eq!(
            url(&t("openai", "https://api.openai.com/v1"), "embeddings"),
            "https://api.openai.com/v1/embeddings"
        );
        assert_eq!(
            url(
                &t("gemini", "https://generativelanguage.googleapis.com"),
                "chat/completions"
            ),
            "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"
        );
    }
}
