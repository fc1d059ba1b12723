//! Evaluations of trained models (forge's `/api/v1/evaluations`): the
//! figures of one scoring of a model against held-out data. A plain
//! record: written when a run finishes and when a client asks for
//! another evaluation; never changed after.

use warden_ml::{Evaluation as Scored, Metrics};
use warden_storage::{Millis, Record, new_uuid};

use crate::{Audit, DomainError, Owned, Owner};

warden_storage::first_layout!(Evaluation);

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

impl Owned for Evaluation {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// A live evaluation of `org`, by its id (bare or forge's `eval_` one).
pub fn find(store: &warden_storage::Store, org: &str, id: &str) -> Result<Evaluation, DomainError> {
    crate::find_in_org(store, org, id, "eval_", "Evaluation")
}

/// Scores a trained model again on its dataset's held-out part (the same
/// windows, or labels, as at the end of its run) with its stored
/// threshold, and stores the evaluation. Blocking: run it off the runtime.
pub fn evaluate_again(
    store: &warden_storage::Store,
    model: &crate::Model,
    evaluation_type: &str,
    by: &str,
) -> Result<Evaluation, DomainError> {
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
    let scored = held.evaluate(&file.score(&held.windows), file.threshold);
    Ok(Evaluation::completed(
        &model.id,
        evaluation_type,
        &scored,
        t.val_loss,
        model.owner.clone(),
        by,
    ))
}
