//! What a user's conversations know about them (vareon arcana): context
//! memories (key → value, each user's own) and LLM preferences (default
//! model, temperature, top_p). The conversation core reads both when it
//! builds a prompt.

use warden_storage::{Millis, Record, new_uuid, now_millis};

use crate::DomainError;
use crate::rules::{Checks, MAX_SHORT};

/// The longest memory value (characters).
pub const MAX_MEMORY_VALUE: usize = 16 * 1024;

/// One thing remembered about a user, by key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    pub id: String,
    pub org_id: String,
    pub user_id: String,
    pub key: String,
    pub value: String,
    pub last_accessed: Millis,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Memory {
    /// A new memory, or `existing` with its value replaced.
    pub fn upsert(
        existing: Option<Memory>,
        org: &str,
        user: &str,
        key: &str,
        value: &str,
    ) -> Result<Memory, DomainError> {
        let mut c = Checks::new();
        c.text("key", &Some(key.to_owned()), true, MAX_SHORT);
        c.text("value", &Some(value.to_owned()), false, MAX_MEMORY_VALUE);
        c.finish()?;
        let now = now_millis();
        Ok(match existing {
            Some(mut m) => {
                m.value = value.to_owned();
                m.updated_at = now.max(m.updated_at);
                m.last_accessed = m.updated_at;
                m
            }
            None => Memory {
                id: new_uuid(),
                org_id: org.to_owned(),
                user_id: user.to_owned(),
                key: key.to_owned(),
                value: value.to_owned(),
                last_accessed: now,
                created_at: now,
                updated_at: now,
            },
        })
    }

    /// The unique value of a user's key.
    pub fn unique(org: &str, user: &str, key: &str) -> String {
        format!("{org}/{user}/{key}")
    }

    /// The ordered scope of a user's memories.
    pub fn scope(org: &str, user: &str) -> String {
        format!("{org}/{user}")
    }
}

/// A user's LLM preferences; created with the defaults on first read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlmPreference {
    pub id: String,
    pub org_id: String,
    pub user_id: String,
    /// A model's `_id` (vareon's LLM model id), if chosen.
    pub default_model_id: Option<String>,
    pub temperature: f64,
    pub top_p: f64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl LlmPreference {
    /// The defaults vareon documents: temperature 0.7, top_p 1.0.
    pub fn new(org: &str, user: &str) -> LlmPreference {
        let now = now_millis();
        LlmPreference {
            id: new_uuid(),
            org_id: org.to_owned(),
            user_id: user.to_owned(),
            default_model_id: None,
            temperature: 0.7,
            top_p: 1.0,
            created_at: now,
            updated_at: now,
        }
    }

    /// Applies a change: temperature in [0, 2], top_p in [0, 1].
    pub fn apply(
        &mut self,
        default_model_id: Option<Option<String>>,
        temperature: Option<f64>,
        top_p: Option<f64>,
    ) -> Result<(), DomainError> {
        let mut c = Checks::new();
        if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            c.fail("temperature must be between 0 and 2".into());
        }
        if top_p.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            c.fail("top_p must be between 0 and 1".into());
        }
        c.finish()?;
        if let Some(m) = default_model_id {
            self.default_model_id = m;
        }
        if let Some(t) = temperature {
            self.temperature = t;
        }
        if let Some(t) = top_p {
            self.top_p = t;
        }
        self.updated_at = now_millis().max(self.updated_at);
        Ok(())
    }

    pub fn unique(org: &str, user: &str) -> String {
        format!("{org}/{user}")
    }
}

warden_storage::first_layout!(Memory, LlmPreference);

impl Record for Memory {
    const COLLECTION: &'static str = "context_memories";
    fn id(&self) -> &str {
        &self.id
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![(
            "key",
            Memory::unique(&self.org_id, &self.user_id, &self.key),
        )]
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        vec![(
            "user",
            Memory::scope(&self.org_id, &self.user_id),
            warden_storage::time_sort_key(self.created_at),
        )]
    }
}

impl Record for LlmPreference {
    const COLLECTION: &'static str = "llm_preferences";
    fn id(&self) -> &str {
        &self.id
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![("user", LlmPreference::unique(&self.org_id, &self.user_id))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_are_checked_and_partial() {
        let mut p = LlmPreference::new("o", "u");
        assert!(p.apply(None, Some(3.0), None).is_err());
        assert!(p.apply(None, None, Some(-0.1)).is_err());
        p.apply(None, Some(0.5), None).unwrap();
        assert_eq!((p.temperature, p.top_p), (0.5, 1.0));
        p.apply(Some(Some("m".into())), None, Some(0.8)).unwrap();
        assert_eq!(p.default_model_id.as_deref(), Some("m"));
        assert_eq!(p.top_p, 0.8);
    }

    #[test]
    fn a_memory_keeps_its_id_when_replaced() {
        let m = Memory::upsert(None, "o", "u", "city", "Berlin").unwrap();
        let n = Memory::upsert(Some(m.clone()), "o", "u", "city", "Paris").unwrap();
        assert_eq!((n.id, n.value.as_str()), (m.id, "Paris"));
        assert!(Memory::upsert(None, "o", "u", " ", "x").is_err());
    }
}
