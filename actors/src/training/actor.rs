//! `TrainingRunActor`: the one writer of a run's record. A run waits in
//! the queue (a fair semaphore of `max_concurrent` permits) until it is
//! admitted, then trains on a blocking thread of its own: each epoch the
//! thread writes a checkpoint blob and the actor commits the record that
//! points at it, so that a run cut short (crash, `kill -9`) resumes from
//! its last epoch. `stop` raises a flag the thread checks between
//! batches and answers at once. At the end the actor registers the model
//! and its evaluation in the same commit as the run's completion.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use warden_domain::dataset;
use warden_domain::evaluation::Evaluation;
use warden_domain::{Model, Trained};
use warden_ml::{Architecture, Checkpoint, EpochLoss, Session};
use warden_storage::{BlobRef, Store, Write, now_millis};

use super::record::{RunStatus, TrainingRun};
use crate::DomainError;

type Reply<T> = RpcReplyPort<Result<T, DomainError>>;

/// What watchers of a run hear: its record after each change.
pub type Progress = Arc<TrainingRun>;

pub enum TrainingMsg {
    Get(Reply<TrainingRun>),
    Stop(String, Reply<TrainingRun>),
    Subscribe(Reply<(TrainingRun, broadcast::Receiver<Progress>)>),
    /// The queue let the run in.
    Admitted(OwnedSemaphorePermit),
    /// The thread finished an epoch and wrote its checkpoint.
    Epoch {
        loss: EpochLoss,
        checkpoint: BlobRef,
        parameters: u64,
    },
    /// The thread ended: a model (its file written), or why not.
    Finished(Result<Box<Outcome>, String>),
    Crash,
}

/// A finished run's products.
pub struct Outcome {
    pub model: warden_ml::Model,
    pub file: BlobRef,
    pub evaluation: warden_ml::Evaluation,
}

pub struct TrainingArgs {
    pub store: Store,
    pub id: String,
    pub queue: Arc<Semaphore>,
}

pub struct TrainingState {
    store: Store,
    run: TrainingRun,
    version: u64,
    queue: Arc<Semaphore>,
    worker: Option<Worker>,
    watchers: broadcast::Sender<Progress>,
}

/// The run's thread (or its wait in the queue): told to stop when the
/// actor's state goes, even when the actor fails, so that two threads
/// never train one run.
struct Worker {
    stop: Arc<AtomicBool>,
    waiting: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.waiting.take() {
            w.abort();
        }
    }
}

#[derive(Default)]
pub struct TrainingRunActor;

/// Checkpoints start with this byte, then the bincode of a [`Checkpoint`].
const CHECKPOINT_FORMAT: u8 = 1;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

impl TrainingState {
    async fn persist(&mut self, next: TrainingRun, also: Vec<Write>) -> Result<(), DomainError> {
        let mut writes = vec![Write::put(&next, Some(self.version))?];
        writes.extend(also);
        let v = self.store.commit(writes).await?;
        self.version = v[0];
        self.run = next;
        let _ = self.watchers.send(Arc::new(self.run.clone()));
        Ok(())
    }

    /// Joins the queue, or starts at once when a permit is free (before
    /// the actor answers anything, so a new run is `running` from its
    /// first answer when there was room).
    async fn admit(&mut self, me: &ActorRef<TrainingMsg>) -> Result<(), DomainError> {
        let stop = Arc::new(AtomicBool::new(false));
        match self.queue.clone().try_acquire_owned() {
            Ok(permit) => {
                self.worker = Some(Worker {
                    stop,
                    waiting: None,
                });
                self.admitted(me, permit).await?;
            }
            Err(_) => {
                let (queue, me) = (self.queue.clone(), me.clone());
                let waiting = tokio::spawn(async move {
                    if let Ok(permit) = queue.acquire_owned().await {
                        let _ = me.cast(TrainingMsg::Admitted(permit));
                    }
                });
                self.worker = Some(Worker {
                    stop,
                    waiting: Some(waiting),
                });
            }
        }
        Ok(())
    }

    async fn admitted(
        &mut self,
        me: &ActorRef<TrainingMsg>,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), DomainError> {
        if self.run.status.is_terminal() || self.worker.is_none() {
            return Ok(());
        }
        let mut next = self.run.clone();
        next.status = RunStatus::Running;
        next.started_at.get_or_insert(now_millis());
        self.persist(next, Vec::new()).await?;
        self.start_thread(me, permit);
        Ok(())
    }

    fn start_thread(&mut self, me: &ActorRef<TrainingMsg>, permit: OwnedSemaphorePermit) {
        let Some(worker) = self.worker.as_mut() else {
            return;
        };
        worker.waiting = None;
        let (stop, store, run, me) = (
            worker.stop.clone(),
            self.store.clone(),
            self.run.clone(),
            me.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let ended = train(&store, &run, &stop, &me);
            if !stop.load(Ordering::Relaxed) {
                let _ = me.cast(TrainingMsg::Finished(ended));
            }
        });
    }

    /// Ends the run. A run that trains into an existing model (vareon's
    /// `train`) and ends without one tells that model how it ended, in
    /// the same commit.
    async fn end(
        &mut self,
        status: RunStatus,
        error: Option<String>,
        mut also: Vec<Write>,
        model_id: Option<String>,
    ) -> Result<(), DomainError> {
        self.worker = None;
        let mut next = self.run.clone();
        next.status = status;
        next.error = error;
        next.completed_at = Some(now_millis());
        if model_id.is_some() {
            next.model_id = model_id;
        } else {
            also.extend(target_status(&self.store, &next, status.as_str())?);
        }
        let old = next.checkpoint.take();
        self.persist(next, also).await?;
        if let Some(b) = old {
            let _ = self.store.blobs().delete(&b);
        }
        Ok(())
    }
}

/// The write that sets the vareon status of the model a run trains into
/// (a run's `model_id` set before it ends), if it still exists.
pub fn target_status(
    store: &Store,
    run: &TrainingRun,
    status: &str,
) -> Result<Option<Write>, DomainError> {
    let Some(id) = &run.model_id else {
        return Ok(None);
    };
    let Some((mut m, version)) = store.get_versioned::<Model>(id)? else {
        return Ok(None);
    };
    if m.audit.deleted_at.is_some() {
        return Ok(None);
    }
    m.ml.get_or_insert_default().status = status.into();
    m.audit.touch(&run.audit.created_by);
    Ok(Some(Write::put(&m, Some(version))?))
}

/// The run's work, on its own thread: reads the dataset, resumes from
/// the checkpoint, trains epoch by epoch, then scores and writes the model.
fn train(
    store: &Store,
    run: &TrainingRun,
    stop: &AtomicBool,
    me: &ActorRef<TrainingMsg>,
) -> Result<Box<Outcome>, String> {
    let arch = Architecture::parse(&run.architecture).ok_or("unknown architecture")?;
    let d = dataset::find(store, &run.owner.org_id, &run.dataset_id).map_err(|e| e.to_string())?;
    let raw = dataset::read_numeric(store, &d).map_err(|e| match e {
        DomainError::Invalid(v) => v.join("; "),
        e => e.to_string(),
    })?;
    let mut session = Session::new(arch, run.hyperparameters.clone(), raw)?;
    if let Some(blob) = &run.checkpoint {
        let bytes = store
            .blobs()
            .get(blob)
            .map_err(|e| format!("the checkpoint cannot be read: {e}"))?;
        let cp = match bytes.split_first() {
            Some((&CHECKPOINT_FORMAT, rest)) => {
                bincode::serde::decode_from_slice::<Checkpoint, _>(rest, bincode_config())
                    .map(|(cp, _)| cp)
                    .map_err(|e| e.to_string())
            }
            _ => Err("unknown checkpoint format".into()),
        };
        match cp {
            Ok(cp) => session.resume(cp)?,
            Err(e) => {
                tracing::warn!(run = %run.id, error = %e, "checkpoint unreadable; training from the start")
            }
        }
    }
    let parameters = session.parameter_count() as u64;
    while !session.done() {
        let Some(loss) = session.epoch(stop)? else {
            return Err("stopped".into());
        };
        let mut bytes = vec![CHECKPOINT_FORMAT];
        bytes.extend(
            bincode::serde::encode_to_vec(session.checkpoint(), bincode_config())
                .map_err(|e| format!("the checkpoint cannot be encoded: {e}"))?,
        );
        let checkpoint = store
            .blobs()
            .put(&bytes)
            .map_err(|e| format!("the checkpoint cannot be written: {e}"))?;
        if me
            .cast(TrainingMsg::Epoch {
                loss,
                checkpoint,
                parameters,
            })
            .is_err()
        {
            return Err("the run's actor is gone".into());
        }
    }
    if stop.load(Ordering::Relaxed) {
        return Err("stopped".into());
    }
    let (model, evaluation) = session.finish();
    let file = store
        .blobs()
        .put(&model.to_bytes())
        .map_err(|e| format!("the model cannot be written: {e}"))?;
    Ok(Box::new(Outcome {
        model,
        file,
        evaluation,
    }))
}

/// What a finished run writes besides itself: its model (the one it
/// trains into, when it still exists, else a new registry entry) and the
/// model's evaluation; and the model's id.
fn products(
    store: &Store,
    run: &TrainingRun,
    o: &Outcome,
) -> Result<(Vec<Write>, String), DomainError> {
    let equipment = dataset::find(store, &run.owner.org_id, &run.dataset_id)
        .map(|d| d.equipment_type)
        .unwrap_or_default();
    let target = match &run.model_id {
        Some(id) => store
            .get_versioned::<Model>(id)?
            .filter(|(m, _)| m.audit.deleted_at.is_none()),
        None => None,
    };
    let (model, write) = match target {
        Some((mut m, version)) => {
            fill(&mut m, run, o, &equipment);
            m.ml.get_or_insert_default().status = "trained".into();
            m.audit.touch(&run.audit.created_by);
            let w = Write::put(&m, Some(version))?;
            (m, w)
        }
        None => {
            let mut m = Model::new(run.owner.clone(), &run.audit.created_by);
            m.name = format!("{} on {} ({})", run.architecture, run.dataset_id, &run.id);
            m.description = format!("Trained by run {} on dataset {}", run.id, run.dataset_id);
            fill(&mut m, run, o, &equipment);
            let w = Write::insert(&m)?;
            (m, w)
        }
    };
    let evaluation = Evaluation::completed(
        &model.id,
        "standard",
        &o.evaluation,
        run.best_val_loss.unwrap_or(0.0),
        run.owner.clone(),
        &run.audit.created_by,
    );
    Ok((vec![write, Write::insert(&evaluation)?], model.id))
}

/// A registry entry made the model a finished run trained.
fn fill(m: &mut Model, run: &TrainingRun, o: &Outcome, equipment_type: &str) {
    m.kind = "classifier".into();
    m.framework = "warden".into();
    m.file_name = format!("models/{}.wardenml", m.id);
    m.file_size = o.file.size;
    m.sha256 = Some(o.file.sha256.clone());
    m.is_downloaded = true;
    m.status = "ready".into();
    m.tags = vec!["anomaly-detection".into(), run.architecture.clone()];
    let e = &o.evaluation.metrics;
    m.trained = Some(Trained {
        architecture: run.architecture.clone(),
        dataset_id: run.dataset_id.clone(),
        training_run_id: run.id.clone(),
        equipment_type: equipment_type.into(),
        parameters: o.model.parameter_count() as u64,
        input_features: o.model.features.clone(),
        hyperparameters: serde_json::to_string(&run.hyperparameters).unwrap_or_default(),
        threshold: o.model.threshold as f64,
        val_loss: run.best_val_loss.unwrap_or(0.0),
        precision: e.precision,
        recall: e.recall,
        f1: e.f1,
        accuracy: e.accuracy,
        auc_roc: e.auc_roc,
        curves: run
            .history
            .iter()
            .map(|h| (h.train_loss, h.val_loss))
            .collect(),
        blob: o.file.clone(),
    });
}

impl Actor for TrainingRunActor {
    type Msg = TrainingMsg;
    type State = TrainingState;
    type Arguments = TrainingArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<TrainingMsg>,
        args: TrainingArgs,
    ) -> Result<TrainingState, ActorProcessingErr> {
        let (run, version) = args
            .store
            .get_versioned::<TrainingRun>(&args.id)?
            .ok_or_else(|| format!("training run {} does not exist", args.id))?;
        Ok(TrainingState {
            store: args.store,
            run,
            version,
            queue: args.queue,
            worker: None,
            watchers: broadcast::channel(64).0,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<TrainingMsg>,
        state: &mut TrainingState,
    ) -> Result<(), ActorProcessingErr> {
        if !state.run.status.is_terminal() {
            state.admit(&myself).await?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<TrainingMsg>,
        msg: TrainingMsg,
        state: &mut TrainingState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TrainingMsg::Get(reply) => {
                let _ = reply.send(Ok(state.run.clone()));
            }
            TrainingMsg::Subscribe(reply) => {
                let _ = reply.send(Ok((state.run.clone(), state.watchers.subscribe())));
            }
            TrainingMsg::Stop(by, reply) => {
                if state.run.status.is_terminal() {
                    let _ = reply.send(Ok(state.run.clone()));
                    return Ok(());
                }
                let mut next = state.run.clone();
                next.audit.touch(&by);
                state.run = next;
                let ended = state.end(RunStatus::Stopped, None, Vec::new(), None).await;
                let _ = reply.send(ended.map(|()| state.run.clone()));
            }
            TrainingMsg::Admitted(permit) => state.admitted(&myself, permit).await?,
            TrainingMsg::Epoch {
                loss,
                checkpoint,
                parameters,
            } => {
                if state.run.status != RunStatus::Running {
                    let _ = state.store.blobs().delete(&checkpoint);
                    return Ok(());
                }
                let mut next = state.run.clone();
                next.current_epoch = loss.epoch;
                next.parameters = parameters;
                next.history.push(loss);
                if next.best_val_loss.is_none_or(|b| loss.val_loss < b) {
                    next.best_val_loss = Some(loss.val_loss);
                }
                let old = next.checkpoint.replace(checkpoint);
                state.persist(next, Vec::new()).await?;
                if let Some(b) = old {
                    let _ = state.store.blobs().delete(&b);
                }
            }
            TrainingMsg::Finished(ended) => {
                if state.run.status != RunStatus::Running {
                    return Ok(());
                }
                match ended {
                    Ok(outcome) => {
                        let (writes, id) = products(&state.store, &state.run, &outcome)?;
                        state
                            .end(RunStatus::Completed, None, writes, Some(id))
                            .await?;
                    }
                    Err(reason) => {
                        tracing::warn!(run = %state.run.id, %reason, "training failed");
                        state
                            .end(RunStatus::Failed, Some(reason), Vec::new(), None)
                            .await?;
                    }
                }
            }
            TrainingMsg::Crash => panic!(
                "fault injection: training run {} was told to crash",
                state.run.id
            ),
        }
        if state.run.status.is_terminal() {
            // Nothing left to supervise: readers use the stored record.
            myself.stop(Some("finished".into()));
        }
        Ok(())
    }
}

/// The public API of a running run's actor.
#[derive(Clone)]
pub struct TrainingHandle(pub ActorRef<TrainingMsg>);

impl TrainingHandle {
    async fn call<T: Send + 'static>(
        &self,
        msg: impl FnOnce(Reply<T>) -> TrainingMsg,
    ) -> Result<T, DomainError> {
        crate::ask(
            &self.0,
            Duration::from_secs(30),
            "the training run's actor",
            msg,
        )
        .await
    }
    pub async fn get(&self) -> Result<TrainingRun, DomainError> {
        self.call(TrainingMsg::Get).await
    }
    pub async fn stop(&self, by: &str) -> Result<TrainingRun, DomainError> {
        let by = by.to_owned();
        self.call(|r| TrainingMsg::Stop(by, r)).await
    }
    pub async fn subscribe(
        &self,
    ) -> Result<(TrainingRun, broadcast::Receiver<Progress>), DomainError> {
        self.call(TrainingMsg::Subscribe).await
    }
    pub fn crash(&self) {
        let _ = self.0.cast(TrainingMsg::Crash);
    }
}
