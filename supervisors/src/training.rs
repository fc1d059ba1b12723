//! Training runs: the kind definition for the supervisor (runs that were
//! queued or running come back at boot and resume from their last
//! checkpoint), the queue they share, and the service forge's and
//! vareon's routes call.

use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::{Semaphore, broadcast};
use warden_actors::DomainError;
use warden_actors::training::{
    Progress, RunStatus, STATUS, TrainingArgs, TrainingHandle, TrainingMsg, TrainingRun,
    TrainingRunActor, target_status,
};
use warden_domain::{Model, Owner, dataset};
use warden_ml::{Architecture, Hyper};
use warden_storage::{Record, Store, Write, now_millis};

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

    /// Queued and running runs (the status index holds only those),
    /// oldest first.
    fn unfinished(&self) -> Vec<TrainingRun> {
        let mut all = Vec::new();
        for status in [RunStatus::Queued, RunStatus::Running] {
            match self.store.by_index::<TrainingRun>(STATUS, status.as_str()) {
                Ok(runs) => all.extend(runs.into_iter().filter(|r| !r.is_deleted())),
                Err(e) => tracing::error!(error = %e, "could not read the training runs"),
            }
        }
        all.sort_by_key(|r| r.audit.created_at);
        all
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
        let Ok(Some((mut run, version))) = self.store.get_versioned::<TrainingRun>(id) else {
            return;
        };
        if run.status.is_terminal() {
            return;
        }
        run.status = RunStatus::Failed;
        run.completed_at = Some(now_millis());
        run.error = Some(format!("the run's actor failed too often: {reason}"));
        let writes = Write::put(&run, Some(version))
            .map_err(DomainError::from)
            .and_then(|w| {
                let mut all = vec![w];
                all.extend(target_status(
                    &self.store,
                    &run,
                    RunStatus::Failed.as_str(),
                )?);
                Ok(all)
            });
        let result = match writes {
            Ok(writes) => self.store.commit(writes).await.map_err(DomainError::from),
            Err(e) => Err(e),
        };
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
        let run = self.prepare(owner, by, dataset_id, architecture, hyperparameters)?;
        let run = self.store.insert(run).await?;
        self.activate(run.id).await
    }

    /// Starts a run that trains into an ML model of `org` (vareon's
    /// `train`) on the model's training dataset: the model is `training`
    /// in the same commit as the run's creation, and the run fills it in
    /// when it ends. A model that is training already is refused.
    pub async fn start_into(
        &self,
        org: &str,
        by: &str,
        model_id: &str,
        architecture: &str,
        hyperparameters: Option<serde_json::Value>,
    ) -> Result<TrainingRun, DomainError> {
        let model: Model = warden_domain::find_in_org(&self.store, org, model_id, "mdl_", "Model")?;
        let Some((mut model, version)) = self
            .store
            .get_versioned::<Model>(&model.id)?
            .filter(|(m, _)| m.is_ml() && !m.is_deleted())
        else {
            return Err(DomainError::NotFound {
                kind: "ML Model",
                id: model_id.to_owned(),
            });
        };
        let dataset_id = model.training_dataset().ok_or_else(|| {
            DomainError::Invalid(vec![
                "training_dataset_id: the model has no training dataset".into(),
            ])
        })?;
        let ml = model.ml.get_or_insert_default();
        if ml.status == "training" {
            return Err(DomainError::Busy(format!(
                "model {model_id} is training already"
            )));
        }
        let mut run = self.prepare(
            model.owner.clone(),
            by,
            &dataset_id,
            architecture,
            hyperparameters,
        )?;
        run.model_id = Some(model.id.clone());
        ml.status = "training".into();
        model.audit.touch(by);
        self.store
            .commit(vec![
                Write::insert(&run)?,
                Write::put(&model, Some(version))?,
            ])
            .await?;
        self.activate(run.id).await
    }

    /// A new run's record, once everything it asks for is checked.
    fn prepare(
        &self,
        owner: Owner,
        by: &str,
        dataset_id: &str,
        architecture: &str,
        hyperparameters: Option<serde_json::Value>,
    ) -> Result<TrainingRun, DomainError> {
        let invalid = |m: String| DomainError::Invalid(vec![m]);
        Architecture::parse(architecture).ok_or_else(|| {
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
        if dataset::feature_columns(&d.profile).0.is_empty() {
            return Err(invalid(
                "the dataset has no numeric column to train on".into(),
            ));
        }
        warden_ml::data::split_rows(
            d.profile.rows as usize,
            hyper.validation_split,
            hyper.sequence_length as usize,
        )
        .map_err(invalid)?;
        Ok(TrainingRun::new(&d.id, architecture, hyper, owner, by))
    }

    /// Wakes a stored run's actor: activation admits the run (or queues
    /// it) before any other message.
    async fn activate(&self, id: String) -> Result<TrainingRun, DomainError> {
        self.kind
            .with_actor(&id, |a| async move { TrainingHandle(a).get().await })
            .await
    }

    /// Asks an unfinished run's actor (`ask`); a finished run, or one
    /// that finished meanwhile, is answered from the store (`done`).
    async fn unfinished_or<T, F, Fut>(
        &self,
        org: &str,
        id: &str,
        done: impl Fn(TrainingRun) -> T,
        mut ask: F,
    ) -> Result<T, DomainError>
    where
        F: FnMut(TrainingHandle) -> Fut,
        Fut: std::future::Future<Output = Result<T, DomainError>>,
    {
        let run = warden_actors::training::find(&self.store, org, id)?;
        if run.status.is_terminal() {
            return Ok(done(run));
        }
        match self
            .kind
            .with_actor(&run.id, |a| ask(TrainingHandle(a)))
            .await
        {
            Err(DomainError::NotFound { .. }) => {
                Ok(done(warden_actors::training::find(&self.store, org, id)?))
            }
            other => other,
        }
    }

    /// A run's record: from its actor while it is unfinished (the latest
    /// word), else from the store.
    pub async fn get(&self, org: &str, id: &str) -> Result<TrainingRun, DomainError> {
        self.unfinished_or(org, id, |r| r, |h| async move { h.get().await })
            .await
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
        self.unfinished_or(org, id, |r| r, |h| async move { h.stop(by).await })
            .await
    }

    /// The run now and, while it is unfinished, its later changes.
    pub async fn watch(
        &self,
        org: &str,
        id: &str,
    ) -> Result<(TrainingRun, Option<broadcast::Receiver<Progress>>), DomainError> {
        self.unfinished_or(
            org,
            id,
            |r| (r, None),
            |h| async move { h.subscribe().await.map(|(r, rx)| (r, Some(rx))) },
        )
        .await
    }

    /// Running and queued runs: from the status index, not a scan.
    pub fn queue(&self) -> QueueStats {
        let count = |s: RunStatus| {
            self.store
                .ids_by_index::<TrainingRun>(STATUS, s.as_str())
                .map_or(0, |ids| ids.len())
        };
        QueueStats {
            active: count(RunStatus::Running),
            queued: count(RunStatus::Queued),
            max_concurrent: self.max_concurrent,
        }
    }
}
