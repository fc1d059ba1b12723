//! Training runs (forge `/api/v1/training`, vareon's training jobs): each
//! run is a supervised [`TrainingRunActor`] that queues for a slot, trains
//! with warden-ml on a thread of its own, checkpoints every epoch and
//! registers its model and evaluation when it ends.

mod actor;
mod record;

pub use actor::{
    Outcome, Progress, TrainingArgs, TrainingHandle, TrainingMsg, TrainingRunActor, target_status,
};
pub use record::{RunStatus, STATUS, TrainingRun, find};
