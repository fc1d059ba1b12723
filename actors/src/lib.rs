//! Behaviour of each entity kind: a message enum behind a typed handle, a
//! state with plain transition functions, and an actor that persists every
//! change before it replies. Supervision lives in `warden-supervisors`.

pub mod agents;
pub mod conversation;
pub mod deployment;
pub mod egress;
pub mod execution;
pub mod llm;
pub mod node;
pub mod process;
pub mod runtime;
pub mod spawner;
pub mod telegram;
pub mod terminal;
pub mod training;

pub use warden_domain::DomainError;

pub use warden_domain::merge_json_objects as merge_extra;

pub use warden_domain::set;

/// Asks an entity's actor and waits for its answer: a timeout says the
/// request may still take effect (`TimedOut`); an actor that stopped
/// before answering is `Unavailable` (safe to retry). `what` names the
/// actor in those messages ("the node's actor").
pub async fn ask<M: ractor::Message, T: Send + 'static>(
    actor: &ractor::ActorRef<M>,
    timeout: std::time::Duration,
    what: &str,
    msg: impl FnOnce(ractor::RpcReplyPort<Result<T, DomainError>>) -> M,
) -> Result<T, DomainError> {
    match actor.call(msg, Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(result)) => result,
        Ok(ractor::rpc::CallResult::Timeout) => Err(DomainError::TimedOut(format!(
            "{what} did not answer in time"
        ))),
        Ok(_) | Err(_) => Err(DomainError::Unavailable(format!(
            "{what} stopped while handling the request"
        ))),
    }
}
