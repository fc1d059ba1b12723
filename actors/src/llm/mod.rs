//! The LLM gateway's core: backends and their live state, affinity
//! groups, provider keys (issue #14). Routing and the OpenAI-compatible
//! API build on these.

pub mod actor;
pub mod chat;
pub mod probe;
pub mod pull;
pub mod record;
pub mod rules;
pub mod usage;

pub use actor::{
    BackendActor, BackendArgs, BackendHandle, BackendMsg, LiveBoard, Shared, key_for, target_of,
};
pub use probe::{LiveModel, LiveState};
pub use record::{
    AffinityGroup, BACKEND_TYPES, Backend, BackendInput, GroupInput, MemberKind, Membership,
    PROVIDER_TYPES, ProviderConfig, RoutingRule, RuleInput, SYSTEM_GROUPS, SYSTEM_ORG,
};
