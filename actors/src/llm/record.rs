//! The LLM gateway's stored records: backends (a connection to a server
//! that serves models), affinity groups, group memberships and provider
//! configurations. API keys are stored to be used, never shown: no view
//! of these records renders them, and errors are scrubbed of them.

use warden_domain::rules::{Checks, MAX_SHORT};
use warden_domain::{Audit, DomainError, Owned, Owner, set};
use warden_storage::{Millis, Record, new_uuid, now_millis};

warden_storage::first_layout!(
    Backend,
    AffinityGroup,
    Membership,
    ProviderConfig,
    RoutingRule
);

/// The protocols a backend may speak. `vllm` (and a llama.cpp server)
/// speak OpenAI's; `gemini` is Google's Generative Language API.
pub const BACKEND_TYPES: [&str; 4] = ["ollama", "openai", "vllm", "gemini"];

/// The provider types whose key a provider configuration holds.
pub const PROVIDER_TYPES: [&str; 2] = ["openai", "gemini"];

/// The groups every installation has (contenox declares them at boot):
/// `(id = name, purpose)`. They cannot be changed or deleted.
pub const SYSTEM_GROUPS: [(&str, &str); 3] = [
    ("internal_embed_group", "Internal Embeddings"),
    ("internal_tasks_group", "Internal Tasks"),
    ("internal_chat_group", "Internal Chat"),
];

/// The organisation of the system groups: seen by every organisation.
pub const SYSTEM_ORG: &str = "";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Backend {
    pub id: String,
    pub name: String,
    /// One of [`BACKEND_TYPES`].
    pub kind: String,
    pub base_url: String,
    /// Write-only; when absent, the organisation's provider configuration
    /// for the backend's type is used.
    pub api_key: Option<String>,
    pub owner: Owner,
    pub audit: Audit,
}

/// What a client may set on a backend; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct BackendInput {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub base_url: Option<String>,
    /// `Some("")` removes the key.
    pub api_key: Option<String>,
}

/// Checks a base URL: absolute http(s), no credentials, no query.
pub fn check_base_url(c: &mut Checks, url: &Option<String>) {
    let Some(url) = url else { return };
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                c.fail("baseUrl must not contain credentials (set an API key instead)".into());
            }
            if u.query().is_some() || u.fragment().is_some() {
                c.fail("baseUrl must not have a query or a fragment".into());
            }
        }
        _ => c.fail("baseUrl must be an absolute http or https URL".into()),
    }
}

impl Backend {
    pub fn create(input: BackendInput, owner: Owner, by: &str) -> Result<Backend, DomainError> {
        let mut b = Backend {
            id: new_uuid(),
            name: String::new(),
            kind: String::new(),
            base_url: String::new(),
            api_key: None,
            owner,
            audit: Audit::new(by),
        };
        b.apply(input, true)?;
        Ok(b)
    }

    pub fn apply(&mut self, input: BackendInput, create: bool) -> Result<(), DomainError> {
        let mut c = Checks::new();
        c.text("name", &input.name, create, MAX_SHORT);
        c.not_blank("name", &input.name);
        c.one_of("type", &input.kind, &BACKEND_TYPES, create);
        c.text("baseUrl", &input.base_url, create, 2048);
        check_base_url(&mut c, &input.base_url);
        c.text("apiKey", &input.api_key, false, 4096);
        c.finish()?;
        set(&mut self.name, input.name.map(|n| n.trim().to_owned()));
        set(&mut self.kind, input.kind);
        set(
            &mut self.base_url,
            input.base_url.map(|u| u.trim_end_matches('/').to_owned()),
        );
        if let Some(key) = input.api_key {
            self.api_key = (!key.is_empty()).then_some(key);
        }
        Ok(())
    }
}

impl Record for Backend {
    const COLLECTION: &'static str = "llm_backends";
    fn id(&self) -> &str {
        &self.id
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![("name", format!("{}/{}", self.owner.org_id, self.name))]
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        warden_domain::created_order(&self.owner.org_id, self.audit.created_at)
    }
}

impl Owned for Backend {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// A set of backends and models that serve each other (contenox's
/// affinity group): a request for a model goes only to backends that
/// share a group with it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AffinityGroup {
    pub id: String,
    pub name: String,
    pub purpose_type: String,
    /// [`SYSTEM_ORG`] for the system groups.
    pub org_id: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Default)]
pub struct GroupInput {
    pub name: Option<String>,
    pub purpose_type: Option<String>,
}

impl AffinityGroup {
    pub fn create(input: GroupInput, org_id: &str) -> Result<AffinityGroup, DomainError> {
        let now = now_millis();
        let mut g = AffinityGroup {
            id: new_uuid(),
            name: String::new(),
            purpose_type: String::new(),
            org_id: org_id.to_owned(),
            created_at: now,
            updated_at: now,
        };
        g.apply(input, true)?;
        Ok(g)
    }

    pub fn system() -> impl Iterator<Item = AffinityGroup> {
        SYSTEM_GROUPS.iter().map(|(id, purpose)| AffinityGroup {
            id: (*id).to_owned(),
            name: (*id).to_owned(),
            purpose_type: (*purpose).to_owned(),
            org_id: SYSTEM_ORG.to_owned(),
            created_at: 0,
            updated_at: 0,
        })
    }

    pub fn is_system(&self) -> bool {
        self.org_id == SYSTEM_ORG
    }

    pub fn apply(&mut self, input: GroupInput, create: bool) -> Result<(), DomainError> {
        let mut c = Checks::new();
        c.text("name", &input.name, create, MAX_SHORT);
        c.not_blank("name", &input.name);
        c.text("purposeType", &input.purpose_type, create, MAX_SHORT);
        c.not_blank("purposeType", &input.purpose_type);
        if let Some(name) = &input.name
            && SYSTEM_GROUPS.iter().any(|(n, _)| *n == name.trim())
        {
            c.fail(format!(
                "name {} is reserved for a system group",
                name.trim()
            ));
        }
        c.finish()?;
        set(&mut self.name, input.name.map(|n| n.trim().to_owned()));
        set(
            &mut self.purpose_type,
            input.purpose_type.map(|p| p.trim().to_owned()),
        );
        self.updated_at = now_millis().max(self.updated_at);
        Ok(())
    }
}

impl Record for AffinityGroup {
    const COLLECTION: &'static str = "llm_groups";
    fn id(&self) -> &str {
        &self.id
    }
    fn uniques(&self) -> Vec<(&'static str, String)> {
        vec![("name", format!("{}/{}", self.org_id, self.name))]
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("org", self.org_id.clone()),
            ("purpose", format!("{}/{}", self.org_id, self.purpose_type)),
        ]
    }
}

/// What a group holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemberKind {
    Backend,
    Model,
}

impl MemberKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::Backend => "backend",
            MemberKind::Model => "model",
        }
    }
}

/// A backend or a model in a group. Its id names all three, so that a
/// second assignment finds the first.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Membership {
    pub id: String,
    pub group_id: String,
    pub kind: MemberKind,
    pub member_id: String,
    /// The member's organisation: each organisation sees its own members
    /// of a shared (system) group.
    pub org_id: String,
    pub created_at: Millis,
}

impl Membership {
    pub fn new(group_id: &str, kind: MemberKind, member_id: &str, org_id: &str) -> Membership {
        Membership {
            id: Membership::key(group_id, kind, member_id, org_id),
            group_id: group_id.to_owned(),
            kind,
            member_id: member_id.to_owned(),
            org_id: org_id.to_owned(),
            created_at: now_millis(),
        }
    }

    pub fn key(group_id: &str, kind: MemberKind, member_id: &str, org_id: &str) -> String {
        // The member's id comes last: a `|` in it cannot shift the others.
        format!("{org_id}|{group_id}|{}|{member_id}", kind.as_str())
    }
}

impl Record for Membership {
    const COLLECTION: &'static str = "llm_memberships";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "group",
                format!("{}|{}|{}", self.org_id, self.group_id, self.kind.as_str()),
            ),
            (
                "member",
                format!("{}|{}|{}", self.org_id, self.kind.as_str(), self.member_id),
            ),
        ]
    }
}

/// An organisation's key for a provider type (contenox's provider
/// configuration): used by its backends of that type that have none.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProviderConfig {
    /// `{org}/{type}`.
    pub id: String,
    pub org_id: String,
    pub provider_type: String,
    pub api_key: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl ProviderConfig {
    pub fn key(org_id: &str, provider_type: &str) -> String {
        format!("{org_id}/{provider_type}")
    }

    pub fn new(org_id: &str, provider_type: &str, api_key: &str) -> Result<Self, DomainError> {
        let mut c = Checks::new();
        c.one_of(
            "providerType",
            &Some(provider_type.to_owned()),
            &PROVIDER_TYPES,
            true,
        );
        c.text("apiKey", &Some(api_key.to_owned()), true, 4096);
        c.not_blank("apiKey", &Some(api_key.to_owned()));
        c.finish()?;
        let now = now_millis();
        Ok(ProviderConfig {
            id: ProviderConfig::key(org_id, provider_type),
            org_id: org_id.to_owned(),
            provider_type: provider_type.to_owned(),
            api_key: api_key.to_owned(),
            created_at: now,
            updated_at: now,
        })
    }
}

impl Record for ProviderConfig {
    const COLLECTION: &'static str = "llm_provider_configs";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("org", self.org_id.clone())]
    }
}

/// A user's routing rule (vareon): when its condition holds for a chat
/// request, the request goes to `target_model` (see `rules.rs`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoutingRule {
    pub id: String,
    pub name: String,
    pub condition: String,
    pub target_model: String,
    /// Higher first.
    pub priority: i64,
    pub owner_id: String,
    pub org_id: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Default)]
pub struct RuleInput {
    pub name: Option<String>,
    pub condition: Option<String>,
    pub target_model: Option<String>,
    pub priority: Option<i64>,
}

impl RoutingRule {
    pub fn create(
        input: RuleInput,
        owner_id: &str,
        org_id: &str,
    ) -> Result<RoutingRule, DomainError> {
        let now = now_millis();
        let mut r = RoutingRule {
            id: new_uuid(),
            name: String::new(),
            condition: String::new(),
            target_model: String::new(),
            priority: 0,
            owner_id: owner_id.to_owned(),
            org_id: org_id.to_owned(),
            created_at: now,
            updated_at: now,
        };
        r.apply(input, true)?;
        Ok(r)
    }

    /// Applies a change; the condition must parse.
    pub fn apply(&mut self, input: RuleInput, create: bool) -> Result<(), DomainError> {
        let mut c = Checks::new();
        c.text("name", &input.name, create, MAX_SHORT);
        c.not_blank("name", &input.name);
        c.text("condition", &input.condition, create, 2000);
        c.text("target_model", &input.target_model, create, MAX_SHORT);
        c.not_blank("target_model", &input.target_model);
        if let Some(cond) = &input.condition
            && let Err(e) = super::rules::Condition::parse(cond)
        {
            c.fail(format!("condition: {e}"));
        }
        c.finish()?;
        set(&mut self.name, input.name);
        set(&mut self.condition, input.condition);
        set(&mut self.target_model, input.target_model);
        set(&mut self.priority, input.priority);
        self.updated_at = now_millis().max(self.updated_at);
        Ok(())
    }
}

impl Record for RoutingRule {
    const COLLECTION: &'static str = "llm_routing_rules";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("owner", format!("{}/{}", self.org_id, self.owner_id))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, kind: &str, url: &str) -> BackendInput {
        BackendInput {
            name: Some(name.into()),
            kind: Some(kind.into()),
            base_url: Some(url.into()),
            api_key: None,
        }
    }

    #[test]
    fn backends_are_checked() {
        let owner = Owner::default();
        let b =
            Backend::create(input("a", "ollama", "http://h:11434/"), owner.clone(), "u").unwrap();
        assert_eq!(b.base_url, "http://h:11434", "a trailing slash is dropped");
        for (name, kind, url) in [
            ("", "ollama", "http://h"),
            ("a", "llamafile", "http://h"),
            ("a", "openai", "ftp://h"),
            ("a", "openai", "not a url"),
            ("a", "openai", "http://user:secret@h"),
            ("a", "openai", "http://h/?key=1"),
        ] {
            assert!(
                Backend::create(input(name, kind, url), owner.clone(), "u").is_err(),
                "{name} {kind} {url}"
            );
        }
    }

    #[test]
    fn system_group_names_are_reserved() {
        let g = GroupInput {
            name: Some("internal_chat_group".into()),
            purpose_type: Some("x".into()),
        };
        assert!(AffinityGroup::create(g, "org").is_err());
        assert_eq!(AffinityGroup::system().count(), 3);
    }

    #[test]
    fn provider_configs_need_a_known_type_and_a_key() {
        assert!(ProviderConfig::new("o", "openai", "sk-1").is_ok());
        assert!(ProviderConfig::new("o", "ollama", "sk-1").is_err());
        assert!(ProviderConfig::new("o", "gemini", " ").is_err());
    }
}
