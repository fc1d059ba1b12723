//! The LLM gateway's service: backends (each with its supervised
//! [`BackendActor`] holding the live state), affinity groups and their
//! members, provider keys. Records are org-owned; the system groups are
//! shared by every organisation, each of which sees only its own members
//! in them.

use std::time::{Duration, Instant};

use ractor::ActorRef;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use warden_actors::DomainError;

use warden_actors::llm::chat::{self, Answer, Attempt, ChatRequest};
use warden_actors::llm::pull::{Pull, PullBoard, PullEvents, PullPlanner};
use warden_actors::llm::rules::{Condition, Facts};
use warden_actors::llm::usage::{LlmUsage, Tokens};
use warden_actors::llm::{
    AffinityGroup, Backend, BackendActor, BackendArgs, BackendHandle, BackendInput, BackendMsg,
    GroupInput, LiveBoard, LiveState, MemberKind, Membership, ProviderConfig, RoutingRule,
    RuleInput, SYSTEM_ORG, Shared,
};
use warden_domain::{LLM_NAME, LlmProfile, Model, Owner};
use warden_storage::{Record, Store, now_millis};

use crate::{Kind, KindRef};

/// The models the server declares at boot (contenox's embedding and
/// task models), shared by every organisation and never deleted.
#[derive(Debug, Clone)]
pub struct LlmDefaults {
    pub embed_model: String,
    pub task_model: String,
}

impl Default for LlmDefaults {
    fn default() -> Self {
        LlmDefaults {
            embed_model: "nomic-embed-text:latest".into(),
            task_model: "phi3:3.8b".into(),
        }
    }
}

/// What a client may set on a gateway model (contenox `/models`).
#[derive(Debug, Clone, Default)]
pub struct LlmModelInput {
    pub name: Option<String>,
    /// The backend that serves it first (`Some(None)` clears it).
    pub backend_id: Option<Option<String>>,
    pub cost_per_token: Option<f64>,
    pub can_chat: Option<bool>,
    pub can_embed: Option<bool>,
    pub can_prompt: Option<bool>,
    pub can_stream: Option<bool>,
    pub context_length: Option<u64>,
}

/// A model name as backends take it (`mistral:instruct`,
/// `hf.co/org/model:Q4_K_M`): no spaces or control characters.
fn check_model_name(name: &str) -> Result<(), DomainError> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/@-+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(DomainError::Invalid(vec![
            "model must be 1 to 256 of letters, digits and . _ : / @ - +".into(),
        ]))
    }
}

fn check_cost(cost: Option<f64>) -> Result<(), DomainError> {
    match cost {
        Some(c) if !(c.is_finite() && c >= 0.0) => Err(DomainError::Invalid(vec![
            "cost_per_token must be a non-negative number".into(),
        ])),
        _ => Ok(()),
    }
}

fn model_not_found(name: &str) -> DomainError {
    DomainError::NotFound {
        kind: "model",
        id: name.to_owned(),
    }
}

/// How often each backend is asked what it serves, by default.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(15);

pub struct BackendKind {
    store: Store,
    client: reqwest::Client,
    probe_every: Duration,
    shared: Shared,
}

impl BackendKind {
    pub(crate) fn new(store: Store, client: reqwest::Client, probe_every: Duration) -> Self {
        let (pull_events, _) = tokio::sync::broadcast::channel(1024);
        BackendKind {
            shared: Shared {
                board: LiveBoard::default(),
                pulls: PullBoard::default(),
                pull_events,
                planner: Arc::new(GroupPlanner {
                    store: store.clone(),
                }),
            },
            store,
            client,
            probe_every,
        }
    }
}

/// The models a backend's groups hold (its organisation's members and
/// the system's), which an Ollama backend pulls.
struct GroupPlanner {
    store: Store,
}

impl PullPlanner for GroupPlanner {
    fn wanted(&self, b: &Backend) -> Vec<String> {
        let org = &b.owner.org_id;
        let member = format!("{org}|{}|{}", MemberKind::Backend.as_str(), b.id);
        let groups = self
            .store
            .by_index::<Membership>("member", &member)
            .unwrap_or_default();
        let mut names: Vec<String> = Vec::new();
        for g in groups {
            for scope in [org.as_str(), SYSTEM_ORG] {
                let key = format!("{scope}|{}|{}", g.group_id, MemberKind::Model.as_str());
                for m in self
                    .store
                    .by_index::<Membership>("group", &key)
                    .unwrap_or_default()
                {
                    if !names.contains(&m.member_id) {
                        names.push(m.member_id);
                    }
                }
            }
        }
        names
    }
}

impl Kind for BackendKind {
    type Actor = BackendActor;
    type Msg = BackendMsg;
    type Args = BackendArgs;
    const KIND: &'static str = "backend";
    const SUPERVISOR: &'static str = "backends";

    fn actor(&self) -> BackendActor {
        BackendActor
    }

    fn args(&self, id: &str) -> BackendArgs {
        BackendArgs {
            store: self.store.clone(),
            id: id.to_owned(),
            client: self.client.clone(),
            shared: self.shared.clone(),
        }
    }

    fn exists(&self, id: &str) -> Result<bool, DomainError> {
        Ok(self
            .store
            .get::<Backend>(id)?
            .is_some_and(|b| !b.is_deleted()))
    }

    /// Every backend is probed from boot on: `/state` is live at once.
    fn boot_ids(&self) -> Vec<String> {
        self.store
            .all::<Backend>()
            .map(|all| {
                all.into_iter()
                    .filter(|b| !b.is_deleted())
                    .map(|b| b.id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A backend's actor holds nothing durable: a failed one is tried
    /// again on the next use, not remembered across restarts.
    fn failed(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    async fn mark_failed(&self, id: &str, reason: &str) {
        tracing::error!(
            backend = id,
            reason,
            "a backend's actor failed past its restart limit"
        );
    }

    async fn clear_failed(&self, _id: &str) {}

    fn crash(actor: &ActorRef<BackendMsg>) {
        BackendHandle(actor.clone()).crash();
    }

    fn tick(&self) -> Option<crate::kind::Tick<BackendMsg>> {
        Some((self.probe_every, || BackendMsg::Tick))
    }
}

/// Stores a record that may be there already (a second boot, a second
/// assignment): finding it there is success.
async fn insert_once<T: Record>(store: &Store, record: T) -> Result<(), DomainError> {
    match store.insert(record).await {
        Ok(_) | Err(warden_storage::StorageError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn backend_not_found(id: &str) -> DomainError {
    DomainError::NotFound {
        kind: "backend",
        id: id.to_owned(),
    }
}

fn group_not_found(id: &str) -> DomainError {
    DomainError::NotFound {
        kind: "affinity group",
        id: id.to_owned(),
    }
}

/// Newest first, strictly older than `before`, at most `limit`.
fn page<T>(mut items: Vec<T>, at: impl Fn(&T) -> i64, before: Option<i64>, limit: usize) -> Vec<T> {
    items.sort_by_key(|t| std::cmp::Reverse(at(t)));
    items
        .into_iter()
        .filter(|t| before.is_none_or(|b| at(t) < b))
        .take(limit)
        .collect()
}

/// How long a request waits for backends not yet probed since the start.
pub const FIRST_PROBE_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Llm {
    kind: KindRef<BackendKind>,
    store: Store,
    defaults: LlmDefaults,
    board: LiveBoard,
    /// Requests in flight per backend: routing prefers the least busy.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    /// The client requests are forwarded with (its own pool).
    client: reqwest::Client,
    /// Turns among equally busy backends.
    turn: Arc<std::sync::atomic::AtomicUsize>,
    /// Usage not yet stored, by `LlmUsage::key` (see `flush_usage`).
    usage: Arc<Mutex<HashMap<String, LlmUsage>>>,
    pulls: PullBoard,
    pull_events: PullEvents,
}

/// A request in flight on a backend, counted until dropped (a stream's
/// guard lives as long as the stream).
pub struct InFlight {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    id: String,
    /// The model's `cost_per_token`, for the request's usage.
    pub price: f64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .expect("in-flight counts are never poisoned");
        if let Some(n) = counts.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.id);
            }
        }
    }
}

/// Whether a backend's listing has the model (Ollama's `name` and
/// `name:latest` are the same model).
fn serves(live: &LiveState, model: &str) -> bool {
    let bare = |m: &str| m.strip_suffix(":latest").unwrap_or(m).to_owned();
    let want = bare(model);
    live.models.iter().any(|m| bare(&m.model) == want)
}

impl Llm {
    pub(crate) fn new(kind: KindRef<BackendKind>, store: Store, defaults: LlmDefaults) -> Self {
        let board = kind.kind().shared.board.clone();
        let pulls = kind.kind().shared.pulls.clone();
        let pull_events = kind.kind().shared.pull_events.clone();
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .unwrap_or_default();
        Llm {
            kind,
            store,
            defaults,
            board,
            in_flight: Arc::default(),
            client,
            turn: Arc::default(),
            usage: Arc::default(),
            pulls,
            pull_events,
        }
    }

    pub fn defaults(&self) -> &LlmDefaults {
        &self.defaults
    }

    /// Declares the boot models (once) and puts them in their system
    /// groups: the embedding model in `internal_embed_group`, the task
    /// model in `internal_tasks_group` and `internal_chat_group`.
    pub(crate) async fn ensure_system_models(&self) -> Result<(), DomainError> {
        let d = self.defaults.clone();
        let models = [
            (d.embed_model.as_str(), true, &["internal_embed_group"][..]),
            (
                d.task_model.as_str(),
                false,
                &["internal_tasks_group", "internal_chat_group"][..],
            ),
        ];
        for (name, embed, groups) in models {
            check_model_name(name)?;
            if self
                .store
                .get_by_unique::<Model>(LLM_NAME, &format!("{SYSTEM_ORG}/{name}"))?
                .is_none()
            {
                let mut m = Model::new(
                    Owner {
                        org_id: SYSTEM_ORG.into(),
                        user_id: "system".into(),
                        group_id: String::new(),
                    },
                    "system",
                );
                m.name = name.into();
                m.kind = if embed { "embedding" } else { "llm" }.into();
                m.status = "ready".into();
                m.llm = Some(LlmProfile {
                    can_chat: !embed,
                    can_embed: embed,
                    can_prompt: !embed,
                    can_stream: !embed,
                    context_length: 0,
                    system: true,
                    ..LlmProfile::default()
                });
                insert_once(&self.store, m).await?;
            }
            for g in groups {
                let m = Membership::new(g, MemberKind::Model, name, SYSTEM_ORG);
                insert_once(&self.store, m).await?;
            }
        }
        Ok(())
    }

    // Gateway models: core models an LLM gateway may serve, named by
    // their name (contenox's model id).

    /// A model `org` may use by name: its own declared one, a system
    /// one, else the oldest of its LLM models with that name.
    pub fn llm_model(&self, org: &str, name: &str) -> Result<Model, DomainError> {
        for scope in [org, SYSTEM_ORG] {
            if let Some(m) = self
                .store
                .get_by_unique::<Model>(LLM_NAME, &format!("{scope}/{name}"))?
                .filter(|m| !m.is_deleted())
            {
                return Ok(m);
            }
        }
        self.org_llm_models(org)?
            .into_iter()
            .filter(|m| m.name == name)
            .min_by_key(|m| m.audit.created_at)
            .ok_or_else(|| model_not_found(name))
    }

    fn org_llm_models(&self, org: &str) -> Result<Vec<Model>, DomainError> {
        Ok(self
            .store
            .in_scope::<Model>(warden_domain::CREATED, &warden_domain::org_scope(Some(org)))?
            .into_iter()
            .filter(|m| !m.is_deleted() && m.is_llm())
            .collect())
    }

    /// The models `org` sees: the system ones and its own LLM models
    /// (newest first), one per name.
    pub fn llm_models(
        &self,
        org: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Model>, DomainError> {
        let mut all = self.org_llm_models(org)?;
        if org != SYSTEM_ORG {
            all.extend(self.org_llm_models(SYSTEM_ORG)?);
        }
        all.sort_by_key(|m| m.audit.created_at);
        let mut seen = std::collections::HashSet::new();
        all.retain(|m| seen.insert(m.name.clone()));
        Ok(page(all, |m| m.audit.created_at, before, limit))
    }

    pub async fn declare_model(
        &self,
        owner: Owner,
        by: &str,
        input: LlmModelInput,
    ) -> Result<Model, DomainError> {
        let name = input.name.clone().unwrap_or_default();
        check_model_name(&name)?;
        if self.llm_model(&owner.org_id, &name).is_ok() {
            return Err(DomainError::Conflict {
                field: "model".into(),
                value: name,
            });
        }
        if let Some(Some(b)) = &input.backend_id {
            self.backend(&owner.org_id, b)?;
        }
        check_cost(input.cost_per_token)?;
        let embed = input.can_embed.unwrap_or(false);
        let chat = input.can_chat.unwrap_or(!embed);
        let mut m = Model::new(owner, by);
        m.name = name;
        m.kind = if embed && !chat { "embedding" } else { "llm" }.into();
        m.status = "ready".into();
        m.llm = Some(LlmProfile {
            can_chat: chat,
            can_embed: embed,
            can_prompt: input.can_prompt.unwrap_or(chat),
            can_stream: input.can_stream.unwrap_or(chat),
            context_length: input.context_length.unwrap_or(0),
            system: false,
            backend_id: input.backend_id.clone().flatten(),
            cost_per_token: input.cost_per_token.unwrap_or(0.0),
        });
        Ok(self.store.insert(m).await?)
    }

    fn own_model(&self, org: &str, name: &str) -> Result<Model, DomainError> {
        let m = self.llm_model(org, name)?;
        if m.llm.as_ref().is_some_and(|p| p.system) {
            return Err(DomainError::Forbidden(format!(
                "{name} is declared by the server: it cannot be changed or deleted"
            )));
        }
        Ok(m)
    }

    /// Changes what a model can do (its name, the id, stays).
    pub async fn update_model(
        &self,
        org: &str,
        name: &str,
        by: &str,
        input: LlmModelInput,
    ) -> Result<Model, DomainError> {
        let m = self.own_model(org, name)?;
        if let Some(Some(b)) = &input.backend_id {
            self.backend(org, b)?;
        }
        check_cost(input.cost_per_token)?;
        if let Some(n) = &input.name {
            check_model_name(n)?;
            if n != &m.name && self.llm_model(org, n).is_ok() {
                return Err(DomainError::Conflict {
                    field: "model".into(),
                    value: n.clone(),
                });
            }
        }
        warden_domain::catalog::update::<Model>(&self.store, &m.id, by, |m| {
            warden_domain::set(&mut m.name, input.name.clone());
            let mut p = m.llm_profile();
            warden_domain::set(&mut p.backend_id, input.backend_id.clone());
            warden_domain::set(&mut p.cost_per_token, input.cost_per_token);
            warden_domain::set(&mut p.can_chat, input.can_chat);
            warden_domain::set(&mut p.can_embed, input.can_embed);
            warden_domain::set(&mut p.can_prompt, input.can_prompt);
            warden_domain::set(&mut p.can_stream, input.can_stream);
            warden_domain::set(&mut p.context_length, input.context_length);
            m.llm = Some(p);
            Ok(())
        })
        .await
    }

    /// Deletes a model (from every dialect's view) and its group
    /// memberships; the server's own models refuse (403).
    pub async fn delete_model(&self, org: &str, name: &str, by: &str) -> Result<(), DomainError> {
        let m = self.own_model(org, name)?;
        warden_domain::catalog::soft_delete::<Model>(&self.store, &m.id, by).await?;
        let key = format!("{org}|{}|{name}", MemberKind::Model.as_str());
        let writes: Vec<_> = self
            .store
            .ids_by_index::<Membership>("member", &key)?
            .iter()
            .map(|id| warden_storage::Write::remove::<Membership>(id))
            .collect();
        if !writes.is_empty() {
            self.store.commit(writes).await?;
        }
        Ok(())
    }

    /// The models of a group `org` sees (its own members and, for the
    /// system models, the server's).
    pub fn group_models(&self, org: &str, group: &str) -> Result<Vec<Model>, DomainError> {
        self.group(org, group)?;
        let mut names = self.member_ids(org, group, MemberKind::Model)?;
        names.extend(self.member_ids(SYSTEM_ORG, group, MemberKind::Model)?);
        let mut seen = std::collections::HashSet::new();
        Ok(names
            .into_iter()
            .filter(|n| seen.insert(n.clone()))
            .filter_map(|n| self.llm_model(org, &n).ok())
            .collect())
    }

    /// The groups a model is in, for `org`.
    pub fn model_groups(&self, org: &str, name: &str) -> Result<Vec<AffinityGroup>, DomainError> {
        let m = self.llm_model(org, name)?;
        self.groups_of_model(org, &m)
    }

    fn groups_of_model(&self, org: &str, m: &Model) -> Result<Vec<AffinityGroup>, DomainError> {
        let name = m.name.as_str();
        let mut groups = self.groups_of(org, MemberKind::Model, name)?;
        if m.owner.org_id == SYSTEM_ORG {
            for g in self.groups_of(SYSTEM_ORG, MemberKind::Model, name)? {
                if !groups.iter().any(|x| x.id == g.id) {
                    groups.push(g);
                }
            }
        }
        Ok(groups)
    }

    /// Writes the system groups that are not stored yet (at boot).
    pub(crate) async fn ensure_system_groups(&self) -> Result<(), DomainError> {
        for g in AffinityGroup::system() {
            if self.store.get::<AffinityGroup>(&g.id)?.is_none() {
                let g = AffinityGroup {
                    created_at: now_millis(),
                    updated_at: now_millis(),
                    ..g
                };
                insert_once(&self.store, g).await?;
            }
        }
        Ok(())
    }

    // Backends.

    pub async fn create_backend(
        &self,
        input: BackendInput,
        owner: Owner,
        by: &str,
    ) -> Result<Backend, DomainError> {
        let b = self
            .store
            .insert(Backend::create(input, owner, by)?)
            .await?;
        // The actor starts probing at once; a failure to start it now is
        // retried by the next use or tick.
        if let Err(e) = self.kind.get_or_activate(&b.id).await {
            tracing::warn!(backend = %b.id, error = %e, "could not start a backend's actor");
        }
        Ok(b)
    }

    /// A live backend of `org`; another organisation's is "not found".
    pub fn backend(&self, org: &str, id: &str) -> Result<Backend, DomainError> {
        self.store
            .get::<Backend>(id)?
            .filter(|b| !b.is_deleted() && b.owner.org_id == org)
            .ok_or_else(|| backend_not_found(id))
    }

    pub fn backends(
        &self,
        org: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Backend>, DomainError> {
        let all = self
            .store
            .in_scope::<Backend>(warden_domain::CREATED, &warden_domain::org_scope(Some(org)))?;
        Ok(page(
            all.into_iter().filter(|b| !b.is_deleted()).collect(),
            |b| b.audit.created_at,
            before,
            limit,
        ))
    }

    pub async fn update_backend(
        &self,
        org: &str,
        id: &str,
        input: BackendInput,
        by: &str,
    ) -> Result<Backend, DomainError> {
        self.backend(org, id)?;
        let updated = self
            .store
            .update::<Backend, DomainError>(id, |b| {
                if b.is_deleted() {
                    return Err(backend_not_found(id));
                }
                b.apply(input.clone(), false)?;
                b.audit.touch(by);
                Ok(Some(()))
            })
            .await?
            .ok_or_else(|| backend_not_found(id))?;
        self.refresh(id).await;
        Ok(updated)
    }

    /// Removes a backend and its group memberships (contenox deletes for
    /// good); its actor stops on its next look at the store.
    pub async fn delete_backend(&self, org: &str, id: &str) -> Result<(), DomainError> {
        self.backend(org, id)?;
        let key = format!("{org}|{}|{id}", MemberKind::Backend.as_str());
        let mut writes = Vec::new();
        for m in self.store.ids_by_index::<Membership>("member", &key)? {
            writes.push(warden_storage::Write::remove::<Membership>(&m));
        }
        writes.push(warden_storage::Write::remove::<Backend>(id));
        self.store.commit(writes).await?;
        self.refresh(id).await;
        Ok(())
    }

    async fn refresh(&self, id: &str) {
        if let Ok(a) = self.kind.get_or_activate(id).await {
            BackendHandle(a).refresh();
        }
    }

    /// What the backend's actor last published (before its first probe:
    /// not healthy, no error, never checked).
    pub fn live(&self, id: &str) -> LiveState {
        self.board
            .read()
            .expect("the live board is never poisoned")
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// Asks a backend what it serves, now (vareon's test-connection):
    /// the model names and the time it took, or a key-free error.
    pub async fn test(
        &self,
        b: &Backend,
    ) -> Result<Result<(Vec<String>, u64), String>, DomainError> {
        let target = warden_actors::llm::target_of(&self.store, b)?;
        let (result, took) = warden_actors::llm::probe::probe(&self.client, &target).await;
        Ok(result.map(|ms| {
            (
                ms.into_iter().map(|m| m.model).collect(),
                took.as_millis() as u64,
            )
        }))
    }

    // Routing.

    /// The backends that may serve `model` for `org`, best first: those
    /// sharing a group with it (a model in no group is in the default
    /// chat group), answering, and listing it; the least busy first,
    /// then the fastest.
    fn route_model(&self, org: &str, model: &str) -> Result<(Model, Vec<Backend>), DomainError> {
        let (resolved, backends) = self.candidates(org, model)?;
        self.rank(model, resolved, backends)
    }

    /// Whether a backend that may serve `model` has not been probed since
    /// the server started: a request may wait for its first probe.
    fn awaiting_probe(&self, org: &str, model: &str) -> bool {
        self.candidates(org, model).is_ok_and(|(_, backends)| {
            backends
                .iter()
                .any(|b| self.live(&b.id).checked_at.is_none())
        })
    }

    /// The backends that share a group with `model` (and its own), in no
    /// particular order; an error says what is missing.
    fn candidates(&self, org: &str, model: &str) -> Result<(Model, Vec<Backend>), DomainError> {
        let resolved = self.llm_model(org, model)?;
        let mut groups: Vec<String> = self
            .groups_of_model(org, &resolved)?
            .into_iter()
            .map(|g| g.id)
            .collect();
        if groups.is_empty() {
            groups.push("internal_chat_group".into());
        }
        let mut backends: Vec<Backend> = Vec::new();
        // The model's own backend (vareon's provider) comes with the groups'.
        if let Some(pinned) = resolved.llm.as_ref().and_then(|p| p.backend_id.clone())
            && let Ok(b) = self.backend(org, &pinned)
        {
            backends.push(b);
        }
        for g in &groups {
            for b in self.group_backends(org, g)? {
                if !backends.iter().any(|x| x.id == b.id) {
                    backends.push(b);
                }
            }
        }
        if backends.is_empty() {
            let any = !self.backends(org, None, 1)?.is_empty();
            return Err(DomainError::Unreachable(if any {
                format!(
                    "no backend shares a group with model {model}: put one in a group of the model (POST /backend-affinity/{{groupID}}/backends/{{backendID}})"
                )
            } else {
                "no LLM backend is configured: add one (POST /backends with type ollama, openai, vllm or gemini and its baseUrl) and put it in a group with the model".to_owned()
            }));
        }
        Ok((resolved, backends))
    }

    /// The candidates that answer and list `model`, best first.
    fn rank(
        &self,
        model: &str,
        resolved: Model,
        backends: Vec<Backend>,
    ) -> Result<(Model, Vec<Backend>), DomainError> {
        let counts = self
            .in_flight
            .lock()
            .expect("in-flight counts are never poisoned")
            .clone();
        let mut ready: Vec<(usize, u64, Backend)> = Vec::new();
        for b in backends {
            let live = self.live(&b.id);
            if live.healthy && serves(&live, model) {
                let busy = counts.get(&b.id).copied().unwrap_or(0);
                ready.push((busy, live.latency_ms.unwrap_or(u64::MAX), b));
            }
        }
        if ready.is_empty() {
            return Err(DomainError::Unreachable(format!(
                "no healthy backend serves model {model} (see GET /state)"
            )));
        }
        // The least busy first; among the equally busy, in turn (so that
        // sequential requests spread), the fastest probe first otherwise.
        ready.sort_by_key(|(busy, latency, _)| (*busy, *latency));
        let least = ready
            .iter()
            .filter(|(busy, _, _)| *busy == ready[0].0)
            .count();
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ready[..least].rotate_left(turn % least);
        Ok((resolved, ready.into_iter().map(|(_, _, b)| b).collect()))
    }

    fn enter(&self, id: &str, price: f64) -> InFlight {
        *self
            .in_flight
            .lock()
            .expect("in-flight counts are never poisoned")
            .entry(id.to_owned())
            .or_default() += 1;
        InFlight {
            counts: self.in_flight.clone(),
            id: id.to_owned(),
            price,
        }
    }

    /// Sends a request to the backends that may serve `model`, in
    /// routing order, until one answers: a connect error, a timeout, a
    /// 5xx or a stream that ends before its first byte moves on to the
    /// next. The guard counts the request until dropped.
    async fn forward(
        &self,
        org: &str,
        model: &str,
        path: &str,
        body: &serde_json::Value,
        stream: bool,
    ) -> Result<(Answer, InFlight), DomainError> {
        let mut failures = Vec::new();
        // Just after a start, backends have not been probed yet: a request
        // (a run resumed at boot, say) waits for their first probe.
        let waiting_until = Instant::now() + FIRST_PROBE_WAIT;
        let (resolved, backends) = loop {
            match self.route_model(org, model) {
                Ok(routed) => break routed,
                Err(e) if Instant::now() < waiting_until && self.awaiting_probe(org, model) => {
                    tracing::debug!(model, error = %e, "waiting for the first probe of a backend");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let price = resolved.llm_profile().cost_per_token;
        for b in backends {
            let target = warden_actors::llm::target_of(&self.store, &b)?;
            let guard = self.enter(&b.id, price);
            match chat::attempt(&self.client, &target, path, body, stream).await {
                Attempt::Answered(a) => return Ok((a, guard)),
                Attempt::Next(reason) => {
                    tracing::warn!(backend = %b.id, model, reason = %reason, "an LLM backend failed a request; trying the next");
                    failures.push(format!("{}: {reason}", b.name));
                }
            }
        }
        Err(DomainError::Unreachable(format!(
            "every backend that serves {model} failed: {}",
            failures.join("; ")
        )))
    }

    /// A chat completion (OpenAI's protocol), streamed or whole.
    pub async fn chat(
        &self,
        org: &str,
        req: &ChatRequest,
    ) -> Result<(Answer, InFlight), DomainError> {
        let body = serde_json::Value::Object(req.body.clone());
        self.forward(org, &req.model, "chat/completions", &body, req.stream)
            .await
    }

    /// Embeddings of `input` by `model` (OpenAI's protocol), whole.
    pub async fn embed(
        &self,
        org: &str,
        model: &str,
        input: &str,
    ) -> Result<(Answer, InFlight), DomainError> {
        let body = serde_json::json!({"model": model, "input": input});
        self.forward(org, model, "embeddings", &body, false).await
    }

    /// The embedding of `text` by `model` (the server's embedding model
    /// when `None`) on a user's behalf, usage counted: what chain tasks
    /// ask. A refusal or an answer without a vector is an error.
    pub async fn embed_vector(
        &self,
        org: &str,
        user: &str,
        model: Option<&str>,
        text: &str,
    ) -> Result<Vec<f64>, DomainError> {
        let model = model.map_or_else(|| self.defaults().embed_model.clone(), str::to_owned);
        let (answer, guard) = self.embed(org, &model, text).await?;
        let Answer::Whole { status, body } = answer else {
            return Err(DomainError::Unreachable(
                "the backend streamed embeddings".into(),
            ));
        };
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| DomainError::Unreachable("the backend's answer is not JSON".into()))?;
        if !(200..300).contains(&status) {
            let why = v["error"]["message"].as_str().unwrap_or("no reason given");
            return Err(DomainError::Unreachable(format!(
                "the backend refused the embedding (HTTP {status}): {why}"
            )));
        }
        self.record_usage(
            org,
            user,
            &model,
            warden_actors::llm::usage::of_whole(text.chars().count(), &body),
            guard.price,
        );
        v["data"][0]["embedding"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(serde_json::Value::as_f64)
                    .collect::<Option<Vec<f64>>>()
            })
            .ok_or_else(|| DomainError::Unreachable("the backend's answer has no embedding".into()))
    }

    // Groups.

    /// A group `org` may see: its own or a system group.
    pub fn group(&self, org: &str, id: &str) -> Result<AffinityGroup, DomainError> {
        self.store
            .get::<AffinityGroup>(id)?
            .filter(|g| g.org_id == org || g.is_system())
            .ok_or_else(|| group_not_found(id))
    }

    pub fn groups(&self, org: &str) -> Result<Vec<AffinityGroup>, DomainError> {
        let mut all = self.store.by_index::<AffinityGroup>("org", SYSTEM_ORG)?;
        all.extend(self.store.by_index::<AffinityGroup>("org", org)?);
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok(all)
    }

    pub fn group_by_name(&self, org: &str, name: &str) -> Result<AffinityGroup, DomainError> {
        for scope in [org, SYSTEM_ORG] {
            if let Some(g) = self
                .store
                .get_by_unique::<AffinityGroup>("name", &format!("{scope}/{name}"))?
            {
                return Ok(g);
            }
        }
        Err(group_not_found(name))
    }

    pub fn groups_by_purpose(
        &self,
        org: &str,
        purpose: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AffinityGroup>, DomainError> {
        let mut all = self
            .store
            .by_index::<AffinityGroup>("purpose", &format!("{SYSTEM_ORG}/{purpose}"))?;
        all.extend(
            self.store
                .by_index::<AffinityGroup>("purpose", &format!("{org}/{purpose}"))?,
        );
        Ok(page(all, |g| g.created_at, before, limit))
    }

    pub async fn create_group(
        &self,
        org: &str,
        input: GroupInput,
    ) -> Result<AffinityGroup, DomainError> {
        Ok(self
            .store
            .insert(AffinityGroup::create(input, org)?)
            .await?)
    }

    fn own_group(&self, org: &str, id: &str) -> Result<AffinityGroup, DomainError> {
        let g = self.group(org, id)?;
        if g.is_system() {
            return Err(DomainError::Forbidden(format!(
                "{} is a system group: it cannot be changed or deleted",
                g.name
            )));
        }
        Ok(g)
    }

    pub async fn update_group(
        &self,
        org: &str,
        id: &str,
        input: GroupInput,
    ) -> Result<AffinityGroup, DomainError> {
        self.own_group(org, id)?;
        self.store
            .update::<AffinityGroup, DomainError>(id, |g| {
                g.apply(input.clone(), false)?;
                Ok(Some(()))
            })
            .await?
            .ok_or_else(|| group_not_found(id))
    }

    /// Deletes a group and its memberships (not its members).
    pub async fn delete_group(&self, org: &str, id: &str) -> Result<(), DomainError> {
        self.own_group(org, id)?;
        let mut writes = Vec::new();
        for kind in [MemberKind::Backend, MemberKind::Model] {
            let key = format!("{org}|{id}|{}", kind.as_str());
            for m in self.store.ids_by_index::<Membership>("group", &key)? {
                writes.push(warden_storage::Write::remove::<Membership>(&m));
            }
        }
        writes.push(warden_storage::Write::remove::<AffinityGroup>(id));
        self.store.commit(writes).await?;
        Ok(())
    }

    // Memberships.

    /// Puts a member in a group (a second time changes nothing). A
    /// backend must exist in `org`; a model is named by its name.
    pub async fn assign(
        &self,
        org: &str,
        group: &str,
        kind: MemberKind,
        member: &str,
    ) -> Result<(), DomainError> {
        self.group(org, group)?;
        match kind {
            MemberKind::Backend => drop(self.backend(org, member)?),
            MemberKind::Model => drop(self.llm_model(org, member)?),
        }
        insert_once(&self.store, Membership::new(group, kind, member, org)).await
    }

    pub async fn unassign(
        &self,
        org: &str,
        group: &str,
        kind: MemberKind,
        member: &str,
    ) -> Result<(), DomainError> {
        self.group(org, group)?;
        let key = Membership::key(group, kind, member, org);
        if self.store.get::<Membership>(&key)?.is_none() {
            return Err(DomainError::NotFound {
                kind: if kind == MemberKind::Backend {
                    "backend in group"
                } else {
                    "model in group"
                },
                id: member.to_owned(),
            });
        }
        Ok(self.store.remove::<Membership>(&key).await?)
    }

    /// The ids of a group's members of one kind, in `org`.
    pub fn members(
        &self,
        org: &str,
        group: &str,
        kind: MemberKind,
    ) -> Result<Vec<String>, DomainError> {
        self.group(org, group)?;
        self.member_ids(org, group, kind)
    }

    fn member_ids(
        &self,
        org: &str,
        group: &str,
        kind: MemberKind,
    ) -> Result<Vec<String>, DomainError> {
        let mut ms = self
            .store
            .by_index::<Membership>("group", &format!("{org}|{group}|{}", kind.as_str()))?;
        ms.sort_by_key(|m| m.created_at);
        Ok(ms.into_iter().map(|m| m.member_id).collect())
    }

    /// The backends of a group (those still there), oldest member first.
    pub fn group_backends(&self, org: &str, group: &str) -> Result<Vec<Backend>, DomainError> {
        Ok(self
            .members(org, group, MemberKind::Backend)?
            .iter()
            .filter_map(|id| self.backend(org, id).ok())
            .collect())
    }

    /// The groups a member belongs to.
    pub fn groups_of(
        &self,
        org: &str,
        kind: MemberKind,
        member: &str,
    ) -> Result<Vec<AffinityGroup>, DomainError> {
        let ms = self
            .store
            .by_index::<Membership>("member", &format!("{org}|{}|{member}", kind.as_str()))?;
        Ok(ms
            .iter()
            .filter_map(|m| self.group(org, &m.group_id).ok())
            .collect())
    }

    // Routing rules (a user's own).

    fn rule_not_found(id: &str) -> DomainError {
        DomainError::NotFound {
            kind: "routing rule",
            id: id.to_owned(),
        }
    }

    /// A rule's target must be a model the organisation can use.
    fn check_target(&self, org: &str, input: &RuleInput) -> Result<(), DomainError> {
        match &input.target_model {
            Some(t) if self.llm_model(org, t).is_err() => Err(DomainError::Invalid(vec![format!(
                "target_model {t} is not a model of this organisation"
            )])),
            _ => Ok(()),
        }
    }

    pub async fn create_rule(
        &self,
        org: &str,
        user: &str,
        input: RuleInput,
    ) -> Result<RoutingRule, DomainError> {
        self.check_target(org, &input)?;
        Ok(self
            .store
            .insert(RoutingRule::create(input, user, org)?)
            .await?)
    }

    pub fn rule(&self, org: &str, user: &str, id: &str) -> Result<RoutingRule, DomainError> {
        self.store
            .get::<RoutingRule>(id)?
            .filter(|r| r.org_id == org && r.owner_id == user)
            .ok_or_else(|| Self::rule_not_found(id))
    }

    /// A user's rules, highest priority first (then oldest).
    pub fn rules(&self, org: &str, user: &str) -> Result<Vec<RoutingRule>, DomainError> {
        let mut all = self
            .store
            .by_index::<RoutingRule>("owner", &format!("{org}/{user}"))?;
        all.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.created_at.cmp(&b.created_at))
        });
        Ok(all)
    }

    pub async fn update_rule(
        &self,
        org: &str,
        user: &str,
        id: &str,
        input: RuleInput,
    ) -> Result<RoutingRule, DomainError> {
        self.rule(org, user, id)?;
        self.check_target(org, &input)?;
        self.store
            .update::<RoutingRule, DomainError>(id, |r| {
                r.apply(input.clone(), false)?;
                Ok(Some(()))
            })
            .await?
            .ok_or_else(|| Self::rule_not_found(id))
    }

    pub async fn delete_rule(&self, org: &str, user: &str, id: &str) -> Result<(), DomainError> {
        self.rule(org, user, id)?;
        Ok(self.store.remove::<RoutingRule>(id).await?)
    }

    /// The model a user's rules choose for a request (the first rule, by
    /// priority, whose condition holds), with the rule's id; `None` keeps
    /// the requested model.
    pub fn choose(
        &self,
        org: &str,
        user_id: &str,
        username: &str,
        requested: &str,
        text: &str,
    ) -> Result<Option<(String, String)>, DomainError> {
        let facts = Facts {
            text,
            model: requested,
            user: username,
        };
        for r in self.rules(org, user_id)? {
            // Stored rules parsed when written; one that no longer parses
            // (a later, stricter build) is skipped, not fatal.
            if Condition::parse(&r.condition).is_ok_and(|c| c.holds(&facts)) {
                return Ok(Some((r.target_model, r.id)));
            }
        }
        Ok(None)
    }

    // Model pulls.

    /// An organisation's pulls, running and queued, by backend.
    pub fn pulls(&self, org: &str) -> Vec<Pull> {
        let mut all: Vec<Pull> = self
            .pulls
            .read()
            .expect("the pull board is never poisoned")
            .values()
            .flatten()
            .filter(|p| p.org_id == org)
            .cloned()
            .collect();
        all.sort_by(|a, b| a.queued_at.cmp(&b.queued_at).then(a.model.cmp(&b.model)));
        all
    }

    /// Progress as it happens (every organisation's: filter by `org_id`).
    pub fn pull_events(&self) -> tokio::sync::broadcast::Receiver<Pull> {
        self.pull_events.subscribe()
    }

    /// Cancels pulls of the organisation's backends: those of `model`
    /// (all when `None`), on the backend at `base_url` (all when `None`).
    /// Answers how many were cancelled.
    pub async fn cancel_pulls(
        &self,
        org: &str,
        base_url: Option<&str>,
        model: Option<&str>,
    ) -> Result<usize, DomainError> {
        let want = base_url.map(|u| u.trim_end_matches('/'));
        let mut n = 0;
        for b in self.backends(org, None, usize::MAX)? {
            if want.is_some_and(|u| u != b.base_url) {
                continue;
            }
            let model = model.map(str::to_owned);
            n += self
                .kind
                .with_actor(&b.id, |a| {
                    let model = model.clone();
                    async move { BackendHandle(a).cancel_pulls(model).await }
                })
                .await
                .unwrap_or(0);
        }
        Ok(n)
    }

    // Usage.

    /// Counts a request's tokens (and their cost, at the model's
    /// `cost_per_token`) for its user and model; stored by `flush_usage`.
    pub fn record_usage(&self, org: &str, user: &str, model: &str, t: Tokens, price: f64) {
        let key = LlmUsage::key(org, user, model);
        let mut pending = self.usage.lock().expect("usage is never poisoned");
        let row = pending.entry(key.clone()).or_insert_with(|| LlmUsage {
            id: key,
            org_id: org.to_owned(),
            user_id: user.to_owned(),
            model: model.to_owned(),
            ..LlmUsage::default()
        });
        row.add(&LlmUsage {
            requests: 1,
            prompt_tokens: t.prompt,
            completion_tokens: t.completion,
            estimated_requests: u64::from(t.estimated),
            cost: (t.prompt + t.completion) as f64 * price,
            updated_at: now_millis(),
            ..LlmUsage::default()
        });
    }

    /// Stores the usage counted since the last flush (every few seconds
    /// and at shutdown: a crash loses at most that much counting, never
    /// a request), and adds it to each model's own counters (AIWM's
    /// `totalInference`, `totalTokens`). What cannot be stored now is
    /// kept for the next flush.
    pub async fn flush_usage(&self) {
        let taken: Vec<LlmUsage> =
            std::mem::take(&mut *self.usage.lock().expect("usage is never poisoned"))
                .into_values()
                .collect();
        for delta in taken {
            if let Err(e) = self.store_usage(&delta).await {
                tracing::warn!(error = %e, "could not store LLM usage; kept for the next flush");
                let mut pending = self.usage.lock().expect("usage is never poisoned");
                pending
                    .entry(delta.id.clone())
                    .or_insert_with(|| LlmUsage {
                        requests: 0,
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        estimated_requests: 0,
                        cost: 0.0,
                        ..delta.clone()
                    })
                    .add(&delta);
            }
        }
    }

    async fn store_usage(&self, delta: &LlmUsage) -> Result<(), DomainError> {
        let updated = self
            .store
            .update::<LlmUsage, DomainError>(&delta.id, |u| {
                u.add(delta);
                Ok(Some(()))
            })
            .await?;
        if updated.is_none() {
            self.store.insert(delta.clone()).await?;
        }
        if let Ok(m) = self.llm_model(&delta.org_id, &delta.model)
            && m.owner.org_id == delta.org_id
        {
            self.store
                .update::<Model, DomainError>(&m.id, |m| {
                    m.total_inference += delta.requests;
                    m.total_tokens += delta.prompt_tokens + delta.completion_tokens;
                    Ok(Some(()))
                })
                .await?;
        }
        Ok(())
    }

    /// An organisation's usage by user and model (stored and pending),
    /// optionally of one user or one model.
    pub fn usage(
        &self,
        org: &str,
        user: Option<&str>,
        model: Option<&str>,
    ) -> Result<Vec<LlmUsage>, DomainError> {
        let mut rows: HashMap<String, LlmUsage> = self
            .store
            .by_index::<LlmUsage>("org", org)?
            .into_iter()
            .map(|u| (u.id.clone(), u))
            .collect();
        for (k, d) in self.usage.lock().expect("usage is never poisoned").iter() {
            if d.org_id == org {
                match rows.get_mut(k) {
                    Some(row) => row.add(d),
                    None => {
                        rows.insert(k.clone(), d.clone());
                    }
                }
            }
        }
        let mut out: Vec<LlmUsage> = rows
            .into_values()
            .filter(|u| user.is_none_or(|x| u.user_id == x) && model.is_none_or(|x| u.model == x))
            .collect();
        out.sort_by(|a, b| a.user_id.cmp(&b.user_id).then(a.model.cmp(&b.model)));
        Ok(out)
    }

    // Provider keys.

    /// Sets an organisation's key for a provider type; its backends of
    /// that type without their own key use it from their next probe.
    pub async fn configure_provider(
        &self,
        org: &str,
        provider_type: &str,
        api_key: &str,
    ) -> Result<ProviderConfig, DomainError> {
        let mut c = ProviderConfig::new(org, provider_type, api_key)?;
        if let Some(old) = self.store.get::<ProviderConfig>(&c.id)? {
            c.created_at = old.created_at;
        }
        self.store.put(&c).await?;
        self.refresh_kind(org, provider_type).await;
        Ok(c)
    }

    async fn refresh_kind(&self, org: &str, provider_type: &str) {
        let ids: Vec<String> = self
            .backends(org, None, usize::MAX)
            .unwrap_or_default()
            .into_iter()
            .filter(|b| b.kind == provider_type)
            .map(|b| b.id)
            .collect();
        for id in ids {
            self.refresh(&id).await;
        }
    }

    pub fn provider(&self, org: &str, provider_type: &str) -> Result<ProviderConfig, DomainError> {
        self.store
            .get::<ProviderConfig>(&ProviderConfig::key(org, provider_type))?
            .ok_or_else(|| DomainError::NotFound {
                kind: "provider configuration",
                id: provider_type.to_owned(),
            })
    }

    pub fn providers(&self, org: &str) -> Result<Vec<ProviderConfig>, DomainError> {
        let mut all = self.store.by_index::<ProviderConfig>("org", org)?;
        all.sort_by(|a, b| a.provider_type.cmp(&b.provider_type));
        Ok(all)
    }

    pub async fn remove_provider(&self, org: &str, provider_type: &str) -> Result<(), DomainError> {
        let c = self.provider(org, provider_type)?;
        self.store.remove::<ProviderConfig>(&c.id).await?;
        self.refresh_kind(org, provider_type).await;
        Ok(())
    }
}
