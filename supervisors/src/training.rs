//! Training runs: the kind definition for the supervisor (runs that were
//! queued or running come back at boot and resume from their last
//! checkpoint), the queue they share, and the service forge's and
//! vareon's routes call.

use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::{Semaphore, broadcast};
use warden_actors::DomainError;
use warden_actors::training::{
    Progress, RunStatus, TrainingArgs, TrainingHandle, TrainingMsg, TrainingRun, TrainingRunActor,
};
use warden_domain::{Owner, dataset};
use warden_ml::{Architecture, Hyper};
use warden_storage::{Record, Store, now_millis};

use crate::{Kind, KindRef};

/// Runs that train at once unless configured (`[training] max_concurrent`).
pub const DEFAULT_MAX_CONCURRENT: usize = 2;

pub struct TrainingKind {
    store: Store,
    queue: Arc<Semaphore>,
}

impl TrainingKind {
    pub(crate) fn new(store: Store, max_concurrent: usize) -> Self {
        TrainingKind {
            store,
            queue: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    fn unfinished(&self) -> Vec<TrainingRun> {
        match self.store.all::<TrainingRun>() {
            Ok(mut all) => {
                all.retain(|r| !r.is_deleted() && !r.status.is_terminal());
                all.sort_by_key(|r| r.audit.created_at);
                all
            }
            Err(e) => {
                tracing::error!(error = %e, "could not read the training runs");
                Vec::new()
            }
        }
    }
}

impl Kind for TrainingKind {
    type Actor = TrainingRunActor;
    type Msg = TrainingMsg;
    type Args = TrainingArgs;
    const KIND: &'static str = "training";
    const SUPERVISOR: &'static str = "training-runs";

    fn actor(&self) -> TrainingRunActor {
        TrainingRunActor
    }

    fn args(&self, id: &str) -> TrainingArgs {
        TrainingArgs {
            store: self.store.clone(),
            id: id.to_owned(),
            queue: self.queue.clone(),
        }
    }

    fn exists(&self, id: &str) -> Result<bool, DomainError> {
        Ok(self
            .store
            .get::<TrainingRun>(id)?
            .is_some_and(|r| !r.is_deleted() && !r.status.is_terminal()))
    }

    /// Runs that were queued or training: oldest first, so the queue keeps its order.
    fn boot_ids(&self) -> Vec<String> {
        self.unfinished().into_iter().map(|r| r.id).collect()
    }

    fn failed(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    async fn mark_failed(&self, id: &str, reason: &str) {
        let result = self
            .store
            .update::<TrainingRun, DomainError>(id, |r| {
                if r.status.is_terminal() {
                    return Ok(None);
                }
                r.status = RunStatus::Failed;
                r.completed_at = Some(now_millis());
                r.error = Some(format!("the run's actor failed too often: {reason}"));
                Ok(Some(()))
            })
            .await;
        if let Err(e) = result {
            tracing::error!(run = id, error = %e, "could not record the run's failure");
        }
    }

    async fn clear_failed(&self, _id: &str) {}

    fn crash(actor: &ActorRef<TrainingMsg>) {
        TrainingHandle(actor.clone()).crash();
    }
}

/// The queue's figures (forge's `/training/queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    pub active: usize,
    pub queued: usize,
    pub max_concurrent: usize,
}

#[derive(Clone)]
pub struct Training {
    kind: KindRef<TrainingKind>,
    store: Store,
    max_concurrent: usize,
}

impl Training {
    pub(crate) fn new(kind: KindRef<TrainingKind>, store: Store, max_concurrent: usize) -> Self {
        Training {
            kind,
            store,
            max_concurrent: max_concurrent.max(1),
        }
    }

    /// Starts a run: checks what can be checked before queueing (the
    /// architecture, every hyperparameter, the dataset and its size) so
    /// that a bad request leaves nothing behind.
    pub async fn start(
        &self,
        owner: Owner,
        by: &str,
        dataset_id: &str,
        architecture: &str,
        hyperparameters: Option<serde_json::Value>,
    ) -> Result<TrainingRun, DomainError> {
        let invalid = |m: String| DomainError::Invalid(vec![m]);
        let arch = Architecture::parse(architecture).ok_or_else(|| {
            invalid(format!(
                "Invalid architecture {architecture:?}: valid architectures are {}",
                Architecture::NAMES.join(", ")
            ))
        })?;
        let hyper: Hyper = match hyperparameters {
            None | Some(serde_json::Value::Null) => Hyper::default(),
            Some(v) => serde_json::from_value(v)
                .map_err(|e| invalid(format!("Invalid hyperparameters: {e}")))?,
        };
        let problems = hyper.problems();
        if !problems.is_empty() {
            return Err(DomainError::Invalid(problems));
        }
        let d = dataset::find(&self.store, &owner.org_id, dataset_id)?;
        if !d.profiled {
            return Err(invalid(format!(
                "dataset {dataset_id} is a {} file, not a CSV",
                d.format
            )));
        }
        let features = d
            .profile
            .numeric()
            .filter(|c| {
                !dataset::LABEL_COLUMNS.contains(&c.name.trim().to_ascii_lowercase().as_str())
            })
            .count();
        if features == 0 {
            return Err(invalid(
                "the dataset has no numeric column to train on".into(),
            ));
        }
        let rows = d.profile.rows as f64;
        let t = hyper.sequence_length as f64;
        let train = (rows * (1.0 - hyper.validation_split)).floor();
        if train < t || rows - train < t {
            return Err(invalid(format!(
                "the dataset has {rows} rows: too few for sequence_length {t} with validation_split {} \
                 (each part needs at least {t} rows)",
                hyper.validation_split
            )));
        }
        let _ = arch;
        let run = TrainingRun::new(&d.id, architecture, hyper, owner, by);
        let run = self.store.insert(run).await?;
        // Activation admits the run (or queues it) before any other message.
        let id = run.id.clone();
        self.kind
            .with_actor(&id, |a| async move { TrainingHandle(a).get().await })
            .await
    }

    /// A run's record: from its actor while it is unfinished (the latest
    /// word), else from the store.
    pub async fn get(&self, org: &str, id: &str) -> Result<TrainingRun, DomainError> {
        let run = warden_actors::training::find(&self.store, org, id)?;
        if run.status.is_terminal() {
            return Ok(run);
        }
        match self
            .kind
            .with_actor(&run.id, |a| async move { TrainingHandle(a).get().await })
            .await
        {
            Err(DomainError::NotFound { .. }) => {
                Ok(warden_actors::training::find(&self.store, org, id)?)
            }
            other => other,
        }
    }

    pub fn list(&self, org: &str) -> Result<Vec<TrainingRun>, DomainError> {
        let scope = warden_domain::org_scope(Some(org));
        let mut all = self
            .store
            .in_scope::<TrainingRun>(warden_domain::CREATED, &scope)?;
        all.reverse();
        Ok(all)
    }

    /// Stops a run at once (a finished run is answered as it stands).
    pub async fn stop(&self, org: &str, id: &str, by: &str) -> Result<TrainingRun, DomainError> {
        let run = warden_actors::training::find(&self.store, org, id)?;
        if run.status.is_terminal() {
            return Ok(run);
        }
        match self
            .kind
            .with_actor(&run.id, |a| async move { TrainingHandle(a).stop(by).await })
            .await
        {
            Err(DomainError::NotFound { .. }) => {
                Ok(warden_actors::training::find(&self.store, org, id)?)
            }
            other => other,
        }
    }

    /// The run now and, while it is unfinished, its later changes.
    pub async fn watch(
        &self,
        org: &str,
        id: &str,
    ) -> Result<(TrainingRun, Option<broadcast::Receiver<Progress>>), DomainError> {
        let run = warden_actors::training::find(&self.store, org, id)?;
        if run.status.is_terminal() {
            return Ok((run, None));
        }
        match self
            .kind
            .with_actor(
                &run.id,
                |a| async move { TrainingHandle(a).subscribe().await },
            )
            .await
        {
            Ok((run, rx)) => Ok((run, Some(rx))),
            Err(DomainError::NotFound { .. }) => {
                Ok((warden_actors::training::find(&self.store, org, id)?, None))
            }
            Err(e) => Err(e),
        }
    }

    pub fn queue(&self) -> QueueStats {
        let (mut active, mut queued) = (0, 0);
        for r in self.kind.kind().unfinished() {
            match r.status {
                RunStatus::Running => active += 1,
                _ => queued += 1,
            }
        }
        QueueStats {
            active,
            queued,
            max_concurrent: self.max_concurrent,
        }
    }
}
