use thiserror::Error;
use warden_storage::StorageError;

/// What a domain operation can answer besides success. Each dialect maps
/// these to its own status codes and bodies, in one place.
#[derive(Debug, Error)]
pub enum DomainError {
    #[error("{kind} with ID {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("validation failed")]
    Invalid(Vec<String>),
    #[error("{field} '{value}' already exists")]
    Conflict { field: String, value: String },
    /// The entity's actor failed past its restart limit.
    #[error("{kind} {id} has failed: {reason}")]
    Failed {
        kind: &'static str,
        id: String,
        reason: String,
    },
    /// The actor went away while handling the request; safe to retry.
    #[error("{0}")]
    Unavailable(String),
    /// The actor did not answer in time. The request may still take
    /// effect: not retried automatically (retry with an idempotency key).
    #[error("{0}")]
    TimedOut(String),
    /// What the request needs from outside (an LLM backend) is not there
    /// or failed; the message says why and how to fix it, in words safe
    /// to show (503).
    #[error("{0}")]
    Unreachable(String),
    /// The entity is busy with what the request would start again (a
    /// model that is training): 409.
    #[error("{0}")]
    Busy(String),
    /// The operation is never allowed on this entity (a system record).
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for DomainError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Conflict { field, value } => DomainError::Conflict { field, value },
            other => DomainError::Storage(other),
        }
    }
}
