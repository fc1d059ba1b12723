//! How a turn's prompt is built, as pure functions: the system prompt
//! from the agent's instruction, the chat's own instructions and the
//! user's context memory; then the history, newest first, as far as the
//! model's context window allows.
//!
//! Tokens are estimated, not counted: one token per four characters of
//! text (OpenAI's rule of thumb for English, the gateway's usage estimate
//! too) plus 4 per message for the chat format's framing. The answer
//! keeps a reserve of the window: the request's `max_tokens`, else a
//! quarter of the window, at most 1,024. A model that declares no
//! context length is taken to have 8,192.

use serde_json::{Value, json};

use super::record::Message;
use crate::DomainError;
use crate::llm::usage::estimate;

/// The window of a model that declares none.
pub const DEFAULT_CONTEXT: u64 = 8192;
/// The longest message a client may send (characters).
pub const MAX_MESSAGE_CHARS: usize = 100_000;
/// The framing tokens each message costs beside its text.
const PER_MESSAGE: u64 = 4;

/// A message's estimated tokens.
pub fn tokens_of(text: &str) -> u64 {
    estimate(text.chars().count()) + PER_MESSAGE
}

/// What the system prompt is made of.
#[derive(Debug, Default, Clone)]
pub struct System<'a> {
    /// The agent's instruction: its system prompt and guidelines.
    pub instruction: Option<(&'a str, &'a [String])>,
    /// The user's context memory, `(key, value)`.
    pub memory: Vec<(&'a str, &'a str)>,
}

/// The system prompt, or `None` when there is nothing to say. The chat's
/// own instructions (system messages of its history) come after the
/// agent's.
pub fn system_prompt(s: &System<'_>, history: &[Message]) -> Option<String> {
    let mut parts = Vec::new();
    if let Some((prompt, guidelines)) = s.instruction {
        if !prompt.trim().is_empty() {
            parts.push(prompt.trim().to_owned());
        }
        if !guidelines.is_empty() {
            let lines: Vec<String> = guidelines.iter().map(|g| format!("- {g}")).collect();
            parts.push(format!("Guidelines:\n{}", lines.join("\n")));
        }
    }
    for m in history.iter().filter(|m| m.role == "system") {
        if !m.content.trim().is_empty() {
            parts.push(m.content.trim().to_owned());
        }
    }
    if !s.memory.is_empty() {
        let lines: Vec<String> = s
            .memory
            .iter()
            .map(|(k, v)| format!("- {k}: {v}"))
            .collect();
        parts.push(format!(
            "What you know about the user:\n{}",
            lines.join("\n")
        ));
    }
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

/// The tokens kept for the answer.
pub fn reserve(context: u64, max_tokens: Option<u64>) -> u64 {
    max_tokens.unwrap_or_else(|| (context / 4).min(1024))
}

/// The messages sent for a turn: the system prompt, as much of the
/// history as fits (the newest turns; user and assistant messages), and
/// the user's new message. Refused when the system prompt and the new
/// message alone do not fit.
pub fn build(
    system: Option<&str>,
    history: &[Message],
    user_text: &str,
    context: u64,
    max_tokens: Option<u64>,
) -> Result<Vec<Value>, DomainError> {
    let context = if context == 0 {
        DEFAULT_CONTEXT
    } else {
        context
    };
    let budget = context.saturating_sub(reserve(context, max_tokens));
    let fixed = system.map_or(0, tokens_of) + tokens_of(user_text);
    if fixed > budget {
        return Err(DomainError::Invalid(vec![format!(
            "the message does not fit the model's context window: about {fixed} tokens, {budget} available ({context} in the window, {} kept for the answer)",
            context - budget
        )]));
    }
    let mut left = budget - fixed;
    let mut kept = Vec::new();
    for m in history.iter().rev() {
        if m.role != "user" && m.role != "assistant" {
            continue;
        }
        let cost = tokens_of(&m.content);
        if cost > left {
            break;
        }
        left -= cost;
        kept.push(json!({"role": m.role, "content": m.content}));
    }
    let mut out = Vec::with_capacity(kept.len() + 2);
    if let Some(s) = system {
        out.push(json!({"role": "system", "content": s}));
    }
    out.extend(kept.into_iter().rev());
    out.push(json!({"role": "user", "content": user_text}));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_domain::Owner;

    fn msg(seq: u64, role: &str, content: &str) -> Message {
        Message::new("c", seq, role, content.into(), Owner::default(), "u")
    }

    #[test]
    fn the_system_prompt_joins_instruction_chat_instructions_and_memory() {
        let guidelines = vec!["Be brief".to_owned()];
        let s = System {
            instruction: Some(("You help.", &guidelines)),
            memory: vec![("city", "Berlin")],
        };
        let history = [msg(0, "system", "Answer in German.")];
        assert_eq!(
            system_prompt(&s, &history).unwrap(),
            "You help.\n\nGuidelines:\n- Be brief\n\nAnswer in German.\n\nWhat you know about the user:\n- city: Berlin"
        );
        assert_eq!(system_prompt(&System::default(), &[]), None);
    }

    #[test]
    fn the_newest_history_that_fits_is_kept_in_order() {
        // Each 40-character message costs 14 tokens.
        let text = "x".repeat(40);
        let history: Vec<Message> = (0..10)
            .map(|i| msg(i, if i % 2 == 0 { "user" } else { "assistant" }, &text))
            .collect();
        // A window of 100 keeps 25 for the answer: 75 for the prompt,
        // 14 of them the new message, so four history messages fit.
        let out = build(None, &history, &text, 100, None).unwrap();
        assert_eq!(out.len(), 5);
        assert_eq!(out[0]["role"], "user"); // history[6]
        assert_eq!(out[3]["role"], "assistant"); // history[9]
        assert_eq!(out[4]["content"], text);
        // The whole history fits a large window; system messages stay out of it.
        let mut with_system = history.clone();
        with_system.push(msg(10, "system", "rule"));
        let out = build(Some("sys"), &with_system, "hi", 0, None).unwrap();
        assert_eq!(out.len(), 12);
        assert_eq!(out[0]["role"], "system");
    }

    #[test]
    fn a_message_larger_than_the_window_is_refused() {
        let huge = "x".repeat(4000);
        let err = build(None, &[], &huge, 1000, None).unwrap_err();
        let DomainError::Invalid(e) = err else {
            panic!("expected a validation error")
        };
        assert!(e[0].contains("context window"), "{e:?}");
        // max_tokens is what the answer keeps.
        assert!(build(None, &[], &"x".repeat(3000), 1000, Some(200)).is_ok());
    }
}
