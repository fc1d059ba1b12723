//! Evaluations of trained models (forge's `/api/v1/evaluations`): the
//! figures of one scoring of a model against held-out data. A plain
//! record: written when a run finishes and when a client asks for
//! another evaluation; its figures never change after. Its gradient
//! evaluation (warden-ml `gradient`: 19 figures) is asked for later and
//! runs in the background; one left running by a stopped server is
//! taken up again at boot.

use warden_ml::gradient::GradientMetrics;
use warden_ml::{Evaluation as Scored, Metrics};
use warden_storage::{Millis, Record, Store, new_uuid, now_millis};

use crate::{Audit, DomainError, Owned, Owner};

warden_storage::first_layout!(EvaluationV1);

/// [`Evaluation`]'s first layout (before gradient evaluations).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvaluationV1 {
    pub id: String,
    pub model_id: String,
    pub evaluation_type: String,
    pub method: String,
    pub status: String,
    pub metrics: Metrics,
    pub threshold: f64,
    pub val_loss: f64,
    pub windows: u64,
    pub positives: u64,
    pub error: Option<String>,
    pub completed_at: Option<Millis>,
    pub owner: Owner,
    pub audit: Audit,
}

impl warden_storage::Versioned for Evaluation {
    const VERSION: u32 = 2;
    type Previous = EvaluationV1;
    fn upgrade(v: EvaluationV1) -> Self {
        Evaluation {
            id: v.id,
            model_id: v.model_id,
            evaluation_type: v.evaluation_type,
            method: v.method,
            status: v.status,
            metrics: v.metrics,
            threshold: v.threshold,
            val_loss: v.val_loss,
            windows: v.windows,
            positives: v.positives,
            error: v.error,
            completed_at: v.completed_at,
            owner: v.owner,
            audit: v.audit,
            gradient: None,
        }
    }
}

/// Where an evaluation's gradient evaluation stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Gradient {
    /// `running`, `completed` or `failed`.
    pub status: String,
    pub started_at: Millis,
    pub completed_at: Option<Millis>,
    pub metrics: Option<GradientMetrics>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    pub id: String,
    pub model_id: String,
    /// What the client asked for (`standard` when a run registered it).
    pub evaluation_type: String,
    /// `labels` or `injected` (see warden-ml's `eval`).
    pub method: String,
    pub status: String,
    pub metrics: Metrics,
    pub threshold: f64,
    pub val_loss: f64,
    pub windows: u64,
    pub positives: u64,
    pub error: Option<String>,
    pub completed_at: Option<Millis>,
    pub owner: Owner,
    pub audit: Audit,
    /// Set once a gradient evaluation was asked for (layout 2).
    pub gradient: Option<Gradient>,
}

impl Evaluation {
    pub fn completed(
        model_id: &str,
        evaluation_type: &str,
        scored: &Scored,
        val_loss: f64,
        owner: Owner,
        by: &str,
    ) -> Evaluation {
        let audit = Audit::new(by);
        Evaluation {
            id: new_uuid().replace('-', "")[..12].to_owned(),
            model_id: model_id.into(),
            evaluation_type: evaluation_type.into(),
            method: scored.method.clone(),
            status: "completed".into(),
            metrics: scored.metrics,
            threshold: scored.threshold as f64,
            val_loss,
            windows: scored.windows as u64,
            positives: scored.positives as u64,
            error: None,
            completed_at: Some(audit.created_at),
            owner,
            audit,
            gradient: None,
        }
    }
}

impl Record for Evaluation {
    const COLLECTION: &'static str = "evaluations";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(&'static str, String)> {
        vec![("model", self.model_id.clone())]
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        crate::created_order(&self.owner.org_id, self.audit.created_at)
    }
}

impl crate::catalog::Plain for Evaluation {
    const KIND: &'static str = "Evaluation";
    fn audit(&self) -> &Audit {
        &self.audit
    }
    fn audit_mut(&mut self) -> &mut Audit {
        &mut self.audit
    }
}

impl Owned for Evaluation {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// A live evaluation of `org`, by its id (bare or forge's `eval_` one).
pub fn find(store: &warden_storage::Store, org: &str, id: &str) -> Result<Evaluation, DomainError> {
    crate::find_in_org(store, org, id, "eval_", "Evaluation")
}

/// A trained model's file and its dataset's held-out windows (the same
/// windows, or labels, as at the end of its run). Blocking.
fn held_out(
    store: &Store,
    model: &crate::Model,
) -> Result<(warden_ml::Model, warden_ml::train::HeldOut), DomainError> {
    let t = model.trained.as_ref().ok_or_else(|| {
        DomainError::Invalid(vec![format!(
            "model {} was not trained by Warden",
            model.id
        )])
    })?;
    let file = t.file(store)?;
    let d = crate::dataset::find(store, &model.owner.org_id, &t.dataset_id)?;
    let raw = crate::dataset::read_numeric(store, &d)?;
    if raw.names != file.features {
        return Err(DomainError::Invalid(vec![format!(
            "dataset {} no longer has the model's columns",
            t.dataset_id
        )]));
    }
    let series =
        warden_ml::Series::prepare(raw, file.hyper.validation_split, file.sequence_length())
            .map_err(|e| DomainError::Invalid(vec![e]))?;
    let held = warden_ml::train::held_out(&series, file.sequence_length(), file.hyper.seed);
    Ok((file, held))
}

/// Scores a trained model again on its dataset's held-out part with its
/// stored threshold, and stores the evaluation. Blocking: run it off the
/// runtime.
pub fn evaluate_again(
    store: &Store,
    model: &crate::Model,
    evaluation_type: &str,
    by: &str,
) -> Result<Evaluation, DomainError> {
    let (file, held) = held_out(store, model)?;
    let scored = held.evaluate(&file.score(&held.windows), file.threshold);
    let val_loss = model.trained.as_ref().map_or(0.0, |t| t.val_loss);
    Ok(Evaluation::completed(
        &model.id,
        evaluation_type,
        &scored,
        val_loss,
        model.owner.clone(),
        by,
    ))
}

/// Marks the evaluation's gradient evaluation running; `false` when it
/// was running already (nothing changes then).
pub async fn start_gradient(
    store: &Store,
    id: &str,
    by: &str,
) -> Result<(Evaluation, bool), DomainError> {
    let mut started = false;
    let e = crate::catalog::update::<Evaluation>(store, id, by, |e| {
        started = e.gradient.as_ref().is_none_or(|g| g.status != "running");
        if started {
            e.gradient = Some(Gradient {
                status: "running".into(),
                started_at: now_millis(),
                completed_at: None,
                metrics: None,
                error: None,
            });
        }
        Ok(())
    })
    .await?;
    Ok((e, started))
}

/// Computes a running gradient evaluation and records how it ended.
pub async fn run_gradient(store: Store, id: String) {
    let work = {
        let store = store.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || -> Result<GradientMetrics, DomainError> {
            let e: Evaluation = store.get(&id)?.ok_or_else(|| DomainError::NotFound {
                kind: "Evaluation",
                id: id.clone(),
            })?;
            let model: crate::Model = store.get(&e.model_id)?.ok_or_else(|| {
                DomainError::Invalid(vec![format!("model {} no longer exists", e.model_id)])
            })?;
            let (file, held) = held_out(&store, &model)?;
            Ok(warden_ml::gradient::evaluate(&file, &held, file.hyper.seed))
        })
    };
    let result = match work.await {
        Ok(r) => r,
        Err(e) => Err(DomainError::Unavailable(format!(
            "the evaluation failed: {e}"
        ))),
    };
    let ended = store
        .update::<Evaluation, DomainError>(&id, |e| {
            let Some(g) = e.gradient.as_mut().filter(|g| g.status == "running") else {
                return Ok(None);
            };
            g.completed_at = Some(now_millis());
            match &result {
                Ok(m) => {
                    g.status = "completed".into();
                    g.metrics = Some(*m);
                }
                Err(err) => {
                    g.status = "failed".into();
                    g.error = Some(match err {
                        DomainError::Invalid(v) => v.join("; "),
                        other => other.to_string(),
                    });
                }
            }
            Ok(Some(()))
        })
        .await;
    if let Err(e) = ended {
        tracing::error!(evaluation = %id, error = %e, "could not record a gradient evaluation");
    }
}

/// Gradient evaluations a stopped server left running: taken up again.
pub fn resume_gradients(store: &Store) {
    let running = match store.all::<Evaluation>() {
        Ok(all) => all
            .into_iter()
            .filter(|e| e.gradient.as_ref().is_some_and(|g| g.status == "running"))
            .map(|e| e.id)
            .collect::<Vec<_>>(),
        Err(e) => {
            tracing::error!(error = %e, "could not read the evaluations");
            return;
        }
    };
    for id in running {
        tracing::info!(evaluation = %id, "resuming a gradient evaluation");
        tokio::spawn(run_gradient(store.clone(), id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first layout as an older build stored it (same collection).
    impl Record for EvaluationV1 {
        const COLLECTION: &'static str = "evaluations";
        fn id(&self) -> &str {
            &self.id
        }
    }

    /// An evaluation stored before gradient evaluations reads back
    /// without one.
    #[tokio::test]
    async fn layout_1_evaluations_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = warden_storage::StoreConfig::new(dir.path().to_owned());
        let v1 = EvaluationV1 {
            id: "e1".into(),
            model_id: "m1".into(),
            evaluation_type: "standard".into(),
            method: "injected".into(),
            status: "completed".into(),
            metrics: Metrics {
                f1: 0.9,
                ..Default::default()
            },
            threshold: 0.5,
            val_loss: 0.1,
            windows: 10,
            positives: 5,
            error: None,
            completed_at: Some(1),
            owner: Owner::default(),
            audit: Audit::new("u"),
        };
        {
            let store = Store::open(&config).unwrap();
            store.insert(v1.clone()).await.unwrap();
            store.close();
        }
        let store = Store::open(&config).unwrap();
        let read: Evaluation = store.get("e1").unwrap().unwrap();
        assert_eq!(read.gradient, None);
        assert_eq!((read.metrics.f1, read.windows), (0.9, 10));
    }
}
