//! Behaviour of each entity kind: a message enum behind a typed handle, a
//! state with plain transition functions, and an actor that persists every
//! change before it replies. Supervision lives in `warden-supervisors`.

pub mod node;

pub use warden_domain::DomainError;

pub use warden_domain::merge_json_objects as merge_extra;

/// Sets a field when a value was given (partial updates).
pub fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}
