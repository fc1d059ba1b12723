//! The Telegram Bot API, as much of it as a long-polling bot needs:
//! `getUpdates` (with `offset` and a long-poll `timeout`) and
//! `sendMessage`, at `{base}/bot{token}/{method}`. Errors never carry
//! the token (it is in the URL).

use std::time::Duration;

use serde_json::{Value, json};

/// Telegram's longest message (characters); longer answers are split.
pub const MAX_TEXT: usize = 4096;

/// One incoming text message.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub update_id: i64,
    pub chat_id: i64,
    /// `@username`, else the first name.
    pub from: String,
    pub text: String,
}

/// A batch of updates: the text messages among them, and the offset that
/// confirms all of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Updates {
    pub messages: Vec<Incoming>,
    pub next_offset: Option<i64>,
}

fn url(base: &str, token: &str, method: &str) -> String {
    format!("{}/bot{token}/{method}", base.trim_end_matches('/'))
}

/// What went wrong, without the token.
fn describe(e: &reqwest::Error, token: &str) -> String {
    crate::llm::probe::scrub(&crate::llm::probe::transport_error(e), Some(token))
}

async fn call(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    method: &str,
    body: Value,
    wait: Duration,
) -> Result<Value, String> {
    let resp = client
        .post(url(base, token, method))
        .json(&body)
        .timeout(wait)
        .send()
        .await
        .map_err(|e| describe(&e, token))?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| describe(&e, token))?;
    if v["ok"] != true {
        let why = v["description"].as_str().unwrap_or("no description");
        return Err(format!(
            "Telegram answered {method} with HTTP {status}: {why}"
        ));
    }
    Ok(v["result"].clone())
}

/// Reads an update list: text messages (other updates are confirmed and
/// passed over).
pub fn parse_updates(result: &Value) -> Updates {
    let mut out = Updates::default();
    for u in result.as_array().into_iter().flatten() {
        let Some(id) = u["update_id"].as_i64() else {
            continue;
        };
        out.next_offset = Some(out.next_offset.map_or(id + 1, |o: i64| o.max(id + 1)));
        let m = &u["message"];
        let (Some(chat_id), Some(text)) = (m["chat"]["id"].as_i64(), m["text"].as_str()) else {
            continue;
        };
        let from = m["from"]["username"]
            .as_str()
            .map(|u| format!("@{u}"))
            .or_else(|| m["from"]["first_name"].as_str().map(str::to_owned))
            .unwrap_or_else(|| chat_id.to_string());
        out.messages.push(Incoming {
            update_id: id,
            chat_id,
            from,
            text: text.to_owned(),
        });
    }
    out
}

/// Waits up to `timeout` seconds for updates after `offset`.
pub async fn get_updates(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    offset: i64,
    timeout: u32,
) -> Result<Updates, String> {
    let body = json!({"offset": offset, "timeout": timeout, "allowed_updates": ["message"]});
    let wait = Duration::from_secs(u64::from(timeout) + 10);
    let result = call(client, base, token, "getUpdates", body, wait).await?;
    Ok(parse_updates(&result))
}

/// Sends `text` to a chat, in pieces of at most [`MAX_TEXT`] characters.
pub async fn send_message(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    chat_id: i64,
    text: &str,
) -> Result<(), String> {
    let chars: Vec<char> = text.chars().collect();
    let pieces: Vec<String> = if chars.is_empty() {
        vec!["(no answer)".to_owned()]
    } else {
        chars.chunks(MAX_TEXT).map(|c| c.iter().collect()).collect()
    };
    for piece in pieces {
        let body = json!({"chat_id": chat_id, "text": piece});
        call(
            client,
            base,
            token,
            "sendMessage",
            body,
            Duration::from_secs(30),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_give_text_messages_and_the_next_offset() {
        let result = json!([
            {"update_id": 7, "message": {"message_id": 1, "chat": {"id": 42, "type": "private"},
             "from": {"id": 42, "username": "ada", "first_name": "Ada"}, "text": "hi"}},
            {"update_id": 8, "edited_message": {"chat": {"id": 42}, "text": "edited"}},
            {"update_id": 9, "message": {"chat": {"id": -100, "type": "group"},
             "from": {"id": 5, "first_name": "Bob"}, "text": "yo"}},
            {"update_id": 10, "message": {"chat": {"id": 42}, "photo": []}}
        ]);
        let u = parse_updates(&result);
        assert_eq!(u.next_offset, Some(11));
        assert_eq!(u.messages.len(), 2);
        assert_eq!(
            (u.messages[0].from.as_str(), u.messages[0].chat_id),
            ("@ada", 42)
        );
        assert_eq!(
            (u.messages[1].from.as_str(), u.messages[1].text.as_str()),
            ("Bob", "yo")
        );
        assert_eq!(parse_updates(&json!([])), Updates::default());
    }
}
