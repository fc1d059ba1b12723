//! The supervision tree: a root supervisor with one supervisor per entity
//! kind, each keeping a registry `id -> actor`, activating actors from
//! storage on demand, restarting failed ones under a [`RestartPolicy`] and
//! marking an entity failed once the policy is exhausted. The tree is
//! observable through [`Runtime::snapshot`].
//!
//! Actors are spawned without global names so that several runtimes can
//! live in one process (tests); names in the tree are logical
//! (`nodes`, `node:{id}`).

mod agents;
mod automation;
mod conversations;
mod deployments;
mod executions;
mod kind;
mod llm;
mod models;
mod nodes;
mod parked;
mod policy;
mod root;
mod runtimes;
mod scheduler;
mod telegram;
mod terminals;
mod training;
mod tree;

pub use agents::{AgentKind, Agents};
pub use automation::{Automation, MAX_DEPTH, script_event};
pub use conversations::{
    ACTIVE_WINDOW, ChatStats, ConversationKind, Conversations, DEFAULT_CONVERSATION_IDLE,
};
pub use deployments::{DeploymentKind, Deployments};
pub use executions::{
    ChainRequest, ChainRunning, DagRequest, ExecutionKind, ExecutionStats, Executions, RunLabel,
};
pub use kind::{Kind, KindRef};
pub use llm::{BackendKind, DEFAULT_PROBE_INTERVAL, InFlight, Llm, LlmDefaults, LlmModelInput};
pub use nodes::{NodeKind, Nodes};
pub use policy::RestartPolicy;
pub use root::{Runtime, RuntimeConfig};
pub use runtimes::{RuntimeKind, Runtimes};
pub use scheduler::Scheduler;
pub use telegram::{DEFAULT_TELEGRAM_API, Telegram, TelegramKind};
pub use terminals::{OpenRefusal, TerminalKind, Terminals};
pub use training::{DEFAULT_MAX_CONCURRENT, QueueStats, Training, TrainingKind};
pub use tree::{ActorInfo, FailureInfo};
pub use warden_actors::deployment::logs_series;
pub use warden_jsrt::Limits as ScriptLimits;

use std::future::Future;
use std::pin::Pin;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) use warden_storage::iso_millis as rfc3339;
