//! Behaviour of each entity kind: a message enum behind a typed handle, a
//! state with plain transition functions, and an actor that persists every
//! change before it replies. Supervision lives in `warden-supervisors`.

mod error;
pub mod node;

pub use error::DomainError;

/// Merges a JSON object text of extra fields into the stored one: keys in
/// `new` replace those in `old`; anything that is not an object is ignored.
pub fn merge_extra(old: &str, new: &str) -> String {
    use serde_json::{Map, Value};
    let mut merged: Map<String, Value> = serde_json::from_str(old).unwrap_or_default();
    if let Ok(Value::Object(update)) = serde_json::from_str::<Value>(new) {
        merged.extend(update);
    }
    if merged.is_empty() {
        String::new()
    } else {
        Value::Object(merged).to_string()
    }
}

/// Sets a field when a value was given (partial updates).
pub fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}
