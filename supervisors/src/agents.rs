//! Process agents: the kind for the supervisor (every agent that should
//! run runs from boot; a failed one stays failed until restarted) and the
//! service myntrix's agent routes call, for process agents and logical
//! (LLM) agents alike.

use std::sync::Arc;

use ractor::ActorRef;
use warden_actors::DomainError;
use warden_actors::agents::{
    AgentActor, AgentArgs, AgentHandle, AgentMsg, ExecPolicy, KIND, ProcState, ProcessRecord,
    command_of,
};
use warden_actors::process::record::DESIRED;
use warden_domain::{Agent, catalog};
use warden_storage::Store;

use crate::{Kind, KindRef};

pub struct AgentKind {
    store: Store,
    policy: Arc<ExecPolicy>,
}

impl Kind for AgentKind {
    type Actor = AgentActor;
    type Msg = AgentMsg;
    type Args = AgentArgs;
    const KIND: &'static str = "agent";
    const SUPERVISOR: &'static str = "agents";

    fn actor(&self) -> AgentActor {
        AgentActor
    }

    fn args(&self, id: &str) -> AgentArgs {
        AgentArgs {
            store: self.store.clone(),
            id: id.to_owned(),
            policy: self.policy.clone(),
        }
    }

    fn exists(&self, id: &str) -> Result<bool, DomainError> {
        let live = self
            .store
            .get::<Agent>(id)?
            .is_some_and(|a| a.audit.deleted_at.is_none());
        Ok(live
            && self
                .store
                .get::<ProcessRecord>(id)?
                .is_some_and(|p| p.desired))
    }

    /// Every agent that should run; a failed one stays failed.
    fn boot_ids(&self) -> Vec<String> {
        match self.store.in_scope::<ProcessRecord>(DESIRED, KIND) {
            Ok(all) => all
                .into_iter()
                .filter(|p| p.state != ProcState::Failed)
                .map(|p| p.id)
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "could not read the agents that should run");
                Vec::new()
            }
        }
    }

    fn failed(&self) -> Vec<(String, String)> {
        self.store
            .in_scope::<ProcessRecord>(DESIRED, KIND)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.state == ProcState::Failed)
            .map(|p| (p.id, p.failure.unwrap_or_default()))
            .collect()
    }

    async fn mark_failed(&self, id: &str, reason: &str) {
        let marked = self
            .store
            .update::<ProcessRecord, DomainError>(id, |p| {
                p.state = ProcState::Failed;
                p.pid = None;
                p.failure = Some(reason.to_owned());
                Ok(Some(()))
            })
            .await;
        if let Err(e) = marked {
            tracing::error!(agent = id, error = %e, "could not mark an agent failed");
        }
        let by = "warden";
        if let Err(e) = catalog::update::<Agent>(&self.store, id, by, |a| {
            a.status = "inactive".into();
            Ok(())
        })
        .await
        {
            tracing::debug!(agent = id, error = %e, "could not mark a failed agent inactive");
        }
    }

    async fn clear_failed(&self, id: &str) {
        let _ = self
            .store
            .update::<ProcessRecord, DomainError>(id, |p| {
                if p.state == ProcState::Failed {
                    p.state = ProcState::Stopped;
                }
                Ok(Some(()))
            })
            .await;
    }

    fn crash(actor: &ActorRef<AgentMsg>) {
        AgentHandle(actor.clone()).crash();
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&*self.policy).ok()
    }
    /// The process's pid, state, restarts and port.
    fn detail(&self, id: &str) -> Option<serde_json::Value> {
        Some(self.store.get::<ProcessRecord>(id).ok()??.detail())
    }
}

/// Myntrix agents: start, stop and restart, for process and logical agents.
#[derive(Clone)]
pub struct Agents {
    kind: KindRef<AgentKind>,
    store: Store,
}

impl Agents {
    pub(crate) fn kind(store: Store, policy: Arc<ExecPolicy>) -> AgentKind {
        AgentKind { store, policy }
    }

    pub(crate) fn new(kind: KindRef<AgentKind>, store: Store) -> Agents {
        Agents { kind, store }
    }

    /// A process agent's process record (`None`: never started, or logical).
    pub fn process(&self, id: &str) -> Result<Option<ProcessRecord>, DomainError> {
        Ok(self.store.get::<ProcessRecord>(id)?)
    }

    async fn set_desired(&self, a: &Agent, desired: bool) -> Result<(), DomainError> {
        ProcessRecord::set_desired(&self.store, KIND, &a.id, &a.owner, desired, false).await
    }

    async fn set_status(&self, a: &Agent, status: &str, by: &str) -> Result<Agent, DomainError> {
        let status = status.to_owned();
        catalog::update::<Agent>(&self.store, &a.id, by, |x| {
            x.status = status.clone();
            x.is_active = status != "inactive";
            Ok(())
        })
        .await
    }

    /// Runs an agent: a process agent's process starts (a failed one is
    /// given a fresh start); a logical agent turns active.
    pub async fn start(&self, a: &Agent, by: &str) -> Result<Agent, DomainError> {
        if command_of(&a.configuration)
            .map_err(|e| DomainError::Invalid(vec![e]))?
            .is_none()
        {
            return self.set_status(a, "active", by).await;
        }
        self.set_desired(a, true).await?;
        let failed = self
            .process(&a.id)?
            .is_some_and(|p| p.state == ProcState::Failed);
        if failed {
            self.kind.reset(&a.id).await?;
        }
        match self.kind.get_or_activate(&a.id).await {
            Ok(_) => self.set_status(a, "active", by).await,
            // It could not start: the reason is on the process record.
            Err(DomainError::Failed { .. }) => Ok(a.clone()),
            Err(e) => Err(e),
        }
    }

    /// Stops an agent: a process agent's process is asked to end (its
    /// whole session is killed after the grace); a logical one turns
    /// inactive.
    pub async fn stop(&self, a: &Agent, by: &str) -> Result<Agent, DomainError> {
        if command_of(&a.configuration).ok().flatten().is_some() || self.process(&a.id)?.is_some() {
            self.set_desired(a, false).await?;
            // Running: stopped by its actor. Not running: nothing to stop.
            match self.kind.get_or_activate(&a.id).await {
                Ok(actor) => AgentHandle(actor).stop().await?,
                Err(_) => {
                    let _ = self
                        .store
                        .update::<ProcessRecord, DomainError>(&a.id, |p| {
                            p.state = ProcState::Stopped;
                            p.pid = None;
                            Ok(Some(()))
                        })
                        .await?;
                    let _ = self.kind.reset(&a.id).await;
                }
            }
        }
        self.set_status(a, "inactive", by).await
    }

    /// Stop, then start: a new process.
    pub async fn restart(&self, a: &Agent, by: &str) -> Result<Agent, DomainError> {
        let a = self.stop(a, by).await?;
        self.start(&a, by).await
    }
}
