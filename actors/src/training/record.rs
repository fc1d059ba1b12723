//! A training run's record: what was asked (dataset, architecture,
//! hyperparameters), where it stands (status, epochs, losses, the last
//! checkpoint's blob) and what it produced (the model's id).

use warden_ml::{EpochLoss, Hyper};
use warden_storage::{BlobRef, Millis, Record, new_uuid};

use crate::DomainError;
use warden_domain::{Audit, Owned, Owner};

warden_storage::first_layout!(TrainingRun);

/// The index of unfinished runs by status.
pub const STATUS: &str = "status";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RunStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Stopped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Stopped => "stopped",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Stopped
        )
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainingRun {
    pub id: String,
    pub dataset_id: String,
    pub architecture: String,
    pub hyperparameters: Hyper,
    pub status: RunStatus,
    pub current_epoch: u32,
    pub total_epochs: u32,
    pub best_val_loss: Option<f64>,
    pub history: Vec<EpochLoss>,
    pub parameters: u64,
    /// The last epoch's checkpoint (a blob), which a restarted run resumes from.
    pub checkpoint: Option<BlobRef>,
    /// The model the run produced; set from the start when the run
    /// trains into an existing model (vareon's `train`), which it then
    /// fills in instead of registering a new one.
    pub model_id: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub owner: Owner,
    pub audit: Audit,
}

impl TrainingRun {
    pub fn new(
        dataset_id: &str,
        architecture: &str,
        hyperparameters: Hyper,
        owner: Owner,
        by: &str,
    ) -> TrainingRun {
        TrainingRun {
            id: new_uuid().replace('-', "")[..12].to_owned(),
            dataset_id: dataset_id.into(),
            architecture: architecture.into(),
            total_epochs: match architecture {
                "sentinel" => 1,
                _ => hyperparameters.epochs,
            },
            hyperparameters,
            status: RunStatus::Queued,
            current_epoch: 0,
            best_val_loss: None,
            history: Vec::new(),
            parameters: 0,
            checkpoint: None,
            model_id: None,
            error: None,
            started_at: None,
            completed_at: None,
            owner,
            audit: Audit::new(by),
        }
    }

    /// Seconds spent in epochs, over every start of the run.
    pub fn training_seconds(&self) -> f64 {
        self.history.iter().map(|e| e.seconds).sum()
    }

    /// The mean epoch time times the epochs left.
    pub fn remaining_seconds(&self) -> f64 {
        if self.history.is_empty() || self.status.is_terminal() {
            return 0.0;
        }
        let per = self.training_seconds() / self.history.len() as f64;
        per * self.total_epochs.saturating_sub(self.current_epoch) as f64
    }
}

impl Record for TrainingRun {
    const COLLECTION: &'static str = "training_runs";
    fn id(&self) -> &str {
        &self.id
    }
    /// Unfinished runs by status (`queued`, `running`): the queue and
    /// boot read only those.
    fn indexes(&self) -> Vec<(&'static str, String)> {
        if self.status.is_terminal() {
            Vec::new()
        } else {
            vec![(STATUS, self.status.as_str().to_owned())]
        }
    }
    fn is_deleted(&self) -> bool {
        self.audit.deleted_at.is_some()
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        warden_domain::created_order(&self.owner.org_id, self.audit.created_at)
    }
}

impl Owned for TrainingRun {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

/// A live run of `org`, by its id (bare or forge's `tr_` one).
pub fn find(
    store: &warden_storage::Store,
    org: &str,
    id: &str,
) -> Result<TrainingRun, DomainError> {
    warden_domain::find_in_org(store, org, id, "tr_", "TrainingRun")
}
