//! The LLM gateway's service: backends (each with its supervised
//! [`BackendActor`] holding the live state), affinity groups and their
//! members, provider keys. Records are org-owned; the system groups are
//! shared by every organisation, each of which sees only its own members
//! in them.

use std::time::Duration;

use ractor::ActorRef;
use warden_actors::DomainError;
use warden_actors::llm::{
    AffinityGroup, Backend, BackendActor, BackendArgs, BackendHandle, BackendInput, BackendMsg,
    GroupInput, LiveState, MemberKind, Membership, ProviderConfig, SYSTEM_ORG,
};
use warden_domain::Owner;
use warden_storage::{Record, Store, now_millis};

use crate::{Kind, KindRef};

/// How often each backend is asked what it serves, by default.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(15);

pub struct BackendKind {
    store: Store,
    client: reqwest::Client,
    probe_every: Duration,
}

impl BackendKind {
    pub(crate) fn new(store: Store, client: reqwest::Client, probe_every: Duration) -> Self {
        BackendKind {
            store,
            client,
            probe_every,
        }
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

#[derive(Clone)]
pub struct Llm {
    kind: KindRef<BackendKind>,
    store: Store,
}

impl Llm {
    pub(crate) fn new(kind: KindRef<BackendKind>, store: Store) -> Self {
        Llm { kind, store }
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
                match self.store.insert(g).await {
                    Ok(_) | Err(warden_storage::StorageError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
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

    /// What the backend's actor last found; an actor that cannot answer
    /// shows as an error, not as a failed request.
    pub async fn live(&self, id: &str) -> LiveState {
        match self
            .kind
            .with_actor(id, |a| async move { BackendHandle(a).state().await })
            .await
        {
            Ok(s) => s,
            Err(e) => LiveState {
                error: Some(e.to_string()),
                ..LiveState::default()
            },
        }
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
        if kind == MemberKind::Backend {
            self.backend(org, member)?;
        }
        match self
            .store
            .insert(Membership::new(group, kind, member, org))
            .await
        {
            Ok(_) | Err(warden_storage::StorageError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
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
