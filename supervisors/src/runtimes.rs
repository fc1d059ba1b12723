//! Neuronest runtimes: the kind for the supervisor (a runtime that should
//! run runs again from boot) and the service the runtime routes call.
//! A runtime is a deployment of type `runtime`; its run is a
//! `RuntimeActor`, never a `DeploymentActor`.

use std::sync::Arc;

use ractor::ActorRef;
use warden_actors::DomainError;
use warden_actors::deployment::{self, Deployment};
use warden_actors::process::ExecPolicy;
use warden_actors::process::record::{DESIRED, ProcState, ProcessRecord};
use warden_actors::runtime::{
    KIND, RtHandle, RtMsg, RuntimeActor, RuntimeArgs, RuntimeDef, RuntimePolicy, set_status,
};
use warden_domain::Owner;
use warden_storage::{Record, Store};

use crate::{Kind, KindRef};

pub struct RuntimeKind {
    store: Store,
    exec: Arc<ExecPolicy>,
    policy: Arc<RuntimePolicy>,
}

fn is_runtime(d: &Deployment) -> bool {
    d.deployment_type == KIND && !d.is_deleted()
}

impl Kind for RuntimeKind {
    type Actor = RuntimeActor;
    type Msg = RtMsg;
    type Args = RuntimeArgs;
    const KIND: &'static str = "runtime";
    const SUPERVISOR: &'static str = "runtimes";

    fn actor(&self) -> RuntimeActor {
        RuntimeActor
    }

    fn args(&self, id: &str) -> RuntimeArgs {
        RuntimeArgs {
            store: self.store.clone(),
            id: id.to_owned(),
            exec: self.exec.clone(),
            policy: self.policy.clone(),
        }
    }

    fn exists(&self, id: &str) -> Result<bool, DomainError> {
        let runtime = self
            .store
            .get::<Deployment>(id)?
            .is_some_and(|d| is_runtime(&d));
        Ok(runtime
            && self
                .store
                .get::<ProcessRecord>(id)?
                .is_some_and(|p| p.desired))
    }

    fn boot_ids(&self) -> Vec<String> {
        match self.store.in_scope::<ProcessRecord>(DESIRED, KIND) {
            Ok(all) => all.into_iter().map(|p| p.id).collect(),
            Err(e) => {
                tracing::error!(error = %e, "could not read the runtimes that should run");
                Vec::new()
            }
        }
    }

    fn failed(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    async fn mark_failed(&self, id: &str, reason: &str) {
        let why = format!("the runtime's actor failed too often: {reason}");
        let _ = self
            .store
            .update::<ProcessRecord, DomainError>(id, |p| {
                p.desired = false;
                p.state = ProcState::Failed;
                p.pid = None;
                p.failure = Some(why.clone());
                Ok(Some(()))
            })
            .await;
        let _ = self
            .store
            .update::<Deployment, DomainError>(id, |d| {
                set_status(d, "failed");
                d.container_name = None;
                d.container_port = None;
                d.endpoint = None;
                Ok(Some(()))
            })
            .await;
    }

    async fn clear_failed(&self, _id: &str) {}

    fn crash(actor: &ActorRef<RtMsg>) {
        RtHandle(actor.clone()).crash();
    }

    fn config(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&*self.policy).ok()
    }
    /// The process's pid, state, restarts and port.
    fn detail(&self, id: &str) -> Option<serde_json::Value> {
        Some(self.store.get::<ProcessRecord>(id).ok()??.detail())
    }
}

/// Runtimes.
#[derive(Clone)]
pub struct Runtimes {
    kind: KindRef<RuntimeKind>,
    store: Store,
}

impl Runtimes {
    pub(crate) fn kind(
        store: Store,
        exec: Arc<ExecPolicy>,
        policy: Arc<RuntimePolicy>,
    ) -> RuntimeKind {
        RuntimeKind {
            store,
            exec,
            policy,
        }
    }

    pub(crate) fn new(kind: KindRef<RuntimeKind>, store: Store) -> Runtimes {
        Runtimes { kind, store }
    }

    pub fn policy(&self) -> &RuntimePolicy {
        &self.kind.kind().policy
    }

    /// A runtime of the user's (another user's is not found).
    pub fn get(&self, user_id: &str, id: &str) -> Result<Deployment, DomainError> {
        self.store
            .get::<Deployment>(id)?
            .filter(|d| is_runtime(d) && d.owner.user_id == user_id)
            .ok_or_else(|| DomainError::NotFound {
                kind: "Runtime",
                id: id.to_owned(),
            })
    }

    /// The user's runtimes, oldest first.
    pub fn list(&self, owner: &Owner) -> Result<Vec<Deployment>, DomainError> {
        Ok(self
            .store
            .in_scope::<Deployment>(
                warden_domain::CREATED,
                &warden_domain::org_scope(Some(&owner.org_id)),
            )?
            .into_iter()
            .filter(|d| is_runtime(d) && d.owner.user_id == owner.user_id)
            .collect())
    }

    /// The process record of a runtime (none before its first start).
    pub fn process(&self, id: &str) -> Result<Option<ProcessRecord>, DomainError> {
        Ok(self.store.get::<ProcessRecord>(id)?)
    }

    /// Makes a runtime (`created`): its project must be the caller's.
    pub async fn create(
        &self,
        owner: Owner,
        def: RuntimeDef,
        by: &str,
    ) -> Result<Deployment, DomainError> {
        self.project_exists(&owner.org_id, &def.project_id)?;
        let mut d = deployment::blank(owner, by);
        d.name = format!("runtime {} ({})", def.project_id, def.entry_point);
        d.environment = "development".into();
        def.store_in(&mut d);
        set_status(&mut d, "created");
        d.log(d.audit.created_at, "created", "runtime created", "info");
        Ok(self.store.insert(d).await?)
    }

    fn project_exists(&self, org: &str, project: &str) -> Result<(), DomainError> {
        if self.policy().project_dir(org, project).is_dir() {
            Ok(())
        } else {
            Err(DomainError::NotFound {
                kind: "Project",
                id: project.to_owned(),
            })
        }
    }

    /// Changes the definition: shown at once, used by the next start.
    pub async fn update(
        &self,
        d: &Deployment,
        def: RuntimeDef,
        by: &str,
    ) -> Result<Deployment, DomainError> {
        self.store
            .update::<Deployment, DomainError>(&d.id, |d| {
                def.store_in(d);
                d.audit.touch(by);
                Ok(Some(()))
            })
            .await?
            .ok_or_else(|| DomainError::NotFound {
                kind: "Runtime",
                id: d.id.clone(),
            })
    }

    async fn set_desired(&self, d: &Deployment, desired: bool) -> Result<(), DomainError> {
        ProcessRecord::set_desired(&self.store, KIND, &d.id, &d.owner, desired, true).await
    }

    /// Starts a run and answers at once (`starting`); a running one is
    /// left running.
    pub async fn start(&self, d: &Deployment) -> Result<(), DomainError> {
        let running = self
            .process(&d.id)?
            .is_some_and(|p| p.desired && p.state == ProcState::Running);
        if running {
            return Ok(());
        }
        self.store
            .update::<Deployment, DomainError>(&d.id, |d| {
                set_status(d, "starting");
                Ok(Some(()))
            })
            .await?;
        self.set_desired(d, true).await?;
        let _ = self.kind.reset(&d.id).await;
        self.kind.get_or_activate(&d.id).await.map(|_| ())
    }

    /// Stops a run; answered once its process's session is gone.
    pub async fn stop(&self, d: &Deployment) -> Result<(), DomainError> {
        self.set_desired(d, false).await?;
        match self.kind.get_or_activate(&d.id).await {
            Ok(actor) => match RtHandle(actor).stop().await {
                Ok(()) | Err(DomainError::Unavailable(_)) => Ok(()),
                Err(e) => Err(e),
            },
            // Not running: the records say so already, or now.
            Err(_) => {
                let status = warden_actors::runtime::status_of(d);
                if matches!(status.as_str(), "starting" | "running" | "stopping") {
                    self.store
                        .update::<Deployment, DomainError>(&d.id, |d| {
                            set_status(d, "stopped");
                            Ok(Some(()))
                        })
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// Stop, then start: a new run.
    pub async fn restart(&self, d: &Deployment) -> Result<(), DomainError> {
        self.stop(d).await?;
        self.start(d).await
    }

    /// Stops, removes the run's files, soft-deletes the deployment.
    pub async fn delete(&self, d: &Deployment, by: &str) -> Result<(), DomainError> {
        self.stop(d).await?;
        let dir = self.policy().runtimes_dir.join(&d.id);
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(runtime = %d.id, error = %e, "could not remove a runtime's files");
        }
        self.store
            .update::<Deployment, DomainError>(&d.id, |d| {
                d.audit.delete(by);
                Ok(Some(()))
            })
            .await?;
        Ok(())
    }
}
