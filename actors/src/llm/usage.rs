//! Tokens a request used: the provider's `usage` when it gives one (a
//! whole answer's, or a stream's final usage chunk), else an estimate of
//! one token per four characters (OpenAI's rule of thumb for English),
//! counted over the prompt's message texts and the answer's text.

use std::borrow::Cow;

use serde_json::Value;
use warden_storage::{Millis, Record};

warden_storage::first_layout!(LlmUsage);

/// Tokens of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    /// Counted by Warden, not reported by the provider.
    pub estimated: bool,
}

/// One token per four characters, rounded up.
pub fn estimate(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

/// The characters of a request's message texts.
pub fn prompt_chars(body: &serde_json::Map<String, Value>) -> usize {
    body.get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .map(|m| match &m["content"] {
                    Value::String(s) => s.chars().count(),
                    Value::Array(parts) => parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .map(|t| t.chars().count())
                        .sum(),
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn reported(usage: &Value) -> Option<(u64, u64)> {
    Some((
        usage.get("prompt_tokens")?.as_u64()?,
        usage
            .get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    ))
}

/// A whole answer's tokens.
pub fn of_whole(prompt_chars: usize, answer: &[u8]) -> Tokens {
    let v: Value = serde_json::from_slice(answer).unwrap_or(Value::Null);
    if let Some((prompt, completion)) = reported(&v["usage"]) {
        return Tokens {
            prompt,
            completion,
            estimated: false,
        };
    }
    let text: usize = v["choices"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["message"]["content"].as_str())
                .map(|t| t.chars().count())
                .sum()
        })
        .unwrap_or(0);
    Tokens {
        prompt: estimate(prompt_chars),
        completion: estimate(text),
        estimated: true,
    }
}

#[derive(serde::Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChunkChoice<'a>>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(serde::Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
}

#[derive(serde::Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

/// A stream's tokens, tallied event by event.
#[derive(Debug, Default)]
pub struct Tally {
    chars: usize,
    usage: Option<(u64, u64)>,
}

impl Tally {
    /// Reads one event's data; false when it is not a chunk object.
    pub fn event(&mut self, data: &str) -> bool {
        match serde_json::from_str::<Chunk<'_>>(data) {
            Ok(c) => {
                for choice in &c.choices {
                    if let Some(t) = choice.delta.as_ref().and_then(|d| d.content.as_ref()) {
                        self.chars += t.chars().count();
                    }
                }
                if let Some(u) = c.usage.as_ref().and_then(reported) {
                    self.usage = Some(u);
                }
                true
            }
            Err(_) => false,
        }
    }

    pub fn tokens(&self, prompt_chars: usize) -> Tokens {
        match self.usage {
            Some((prompt, completion)) => Tokens {
                prompt,
                completion,
                estimated: false,
            },
            None => Tokens {
                prompt: estimate(prompt_chars),
                completion: estimate(self.chars),
                estimated: true,
            },
        }
    }
}

/// What a user's requests to a model used, summed.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct LlmUsage {
    /// `{org}|{user}|{model}`.
    pub id: String,
    pub org_id: String,
    pub user_id: String,
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Requests whose tokens Warden estimated.
    pub estimated_requests: u64,
    pub cost: f64,
    pub updated_at: Millis,
}

impl LlmUsage {
    pub fn key(org: &str, user: &str, model: &str) -> String {
        format!("{org}|{user}|{model}")
    }

    /// Adds another tally of the same row.
    pub fn add(&mut self, other: &LlmUsage) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.estimated_requests += other.estimated_requests;
        self.cost += other.cost;
        self.updated_at = self.updated_at.max(other.updated_at);
    }
}

impl Record for LlmUsage {
    const COLLECTION: &'static str = "llm_usage";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("org", self.org_id.clone())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reported_usage_wins_and_estimates_fill_in() {
        let t = of_whole(
            40,
            br#"{"usage": {"prompt_tokens": 5, "completion_tokens": 3}}"#,
        );
        assert_eq!(
            t,
            Tokens {
                prompt: 5,
                completion: 3,
                estimated: false
            }
        );
        let t = of_whole(
            40,
            br#"{"choices": [{"message": {"content": "twelve chars"}}]}"#,
        );
        assert_eq!(
            t,
            Tokens {
                prompt: 10,
                completion: 3,
                estimated: true
            }
        );
        let mut tally = Tally::default();
        assert!(tally.event(r#"{"choices": [{"delta": {"content": "hel\"lo"}}]}"#));
        assert!(tally.event(r#"{"choices": [{"delta": {}}]}"#));
        assert!(!tally.event("[1, 2]"));
        assert_eq!(
            tally.tokens(8),
            Tokens {
                prompt: 2,
                completion: 2,
                estimated: true
            }
        );
        tally.event(r#"{"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}"#);
        assert_eq!(
            tally.tokens(8),
            Tokens {
                prompt: 9,
                completion: 4,
                estimated: false
            }
        );
        let body = json!({"messages": [{"role": "user", "content": "abcd"}, {"role": "user", "content": [{"type": "text", "text": "ef"}]}]});
        assert_eq!(prompt_chars(body.as_object().unwrap()), 6);
    }
}
