//! Behaviour of each entity kind: a message enum behind a typed handle, a
//! state with plain transition functions, and an actor that persists every
//! change before it replies. Supervision lives in `warden-supervisors`.

pub mod conversation;
pub mod deployment;
pub mod execution;
pub mod llm;
pub mod node;
pub mod telegram;

pub use warden_domain::DomainError;

pub use warden_domain::merge_json_objects as merge_extra;

pub use warden_domain::set;
