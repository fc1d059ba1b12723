//! The stored side of supervised user processes.

use warden_domain::{Owned, Owner};
use warden_storage::{Millis, Record};

/// An agent process's state as myntrix shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProcState {
    Stopped,
    Running,
    Restarting,
    Failed,
}

impl ProcState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcState::Stopped => "stopped",
            ProcState::Running => "running",
            ProcState::Restarting => "restarting",
            ProcState::Failed => "failed",
        }
    }
}

/// How long restarts count against an agent's health.
pub const HEALTH_WINDOW_MS: Millis = 10 * 60 * 1000;

/// What Warden knows of a supervised user process: whether it should
/// run (so a crash or a reboot re-spawns it), how it runs, and the (pid,
/// start time) that names it for a later run's leftover check.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProcessRecord {
    /// The entity's id (an agent's `_id`, a runtime's deployment `_id`).
    pub id: String,
    /// Whose process: `agent` or `runtime`.
    pub kind: String,
    /// Whether it should run.
    pub desired: bool,
    pub state: ProcState,
    pub pid: Option<u32>,
    /// The process's start time (clock ticks after boot).
    pub started: Option<u64>,
    /// When it was restarted after its process ended unasked (newest last).
    pub restarts: Vec<Millis>,
    pub last_run: Option<Millis>,
    pub failure: Option<String>,
    /// The port it was given (runtimes).
    pub port: Option<u16>,
    pub owner: Owner,
}

warden_storage::first_layout!(ProcessRecord);

impl ProcessRecord {
    pub fn new(kind: &str, id: &str, owner: Owner) -> ProcessRecord {
        ProcessRecord {
            id: id.to_owned(),
            kind: kind.to_owned(),
            desired: false,
            state: ProcState::Stopped,
            pid: None,
            started: None,
            restarts: Vec::new(),
            last_run: None,
            failure: None,
            port: None,
            owner,
        }
    }

    /// 0 when failed, else 100 less 25 for each restart in the last 10
    /// minutes.
    pub fn health(&self, now: Millis) -> u32 {
        if self.state == ProcState::Failed {
            return 0;
        }
        let recent = self
            .restarts
            .iter()
            .filter(|t| now - **t <= HEALTH_WINDOW_MS)
            .count() as u32;
        100u32.saturating_sub(25 * recent)
    }
}

/// The ordered index of processes that should run, by kind (boot).
pub const DESIRED: &str = "desired";

impl Record for ProcessRecord {
    const COLLECTION: &'static str = "processes";
    fn id(&self) -> &str {
        &self.id
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        if self.desired {
            vec![(DESIRED, self.kind.clone(), self.id.as_bytes().to_vec())]
        } else {
            Vec::new()
        }
    }
    const INDEX_VERSION: u32 = 1;
}

impl Owned for ProcessRecord {
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

impl ProcessRecord {
    /// Changes a stored record (its live fields, by its actor).
    pub async fn change(
        store: &warden_storage::Store,
        id: &str,
        mut change: impl FnMut(&mut ProcessRecord),
    ) -> Result<(), crate::DomainError> {
        store
            .update::<ProcessRecord, crate::DomainError>(id, |p| {
                change(p);
                Ok(Some(()))
            })
            .await?;
        Ok(())
    }

    /// Whether its last process was running when its actor stopped (a
    /// crash, a restart of Warden): the next start is a restart.
    pub fn was_running(&self) -> bool {
        matches!(self.state, ProcState::Running | ProcState::Restarting)
    }

    /// Kills what an earlier actor or run left running, if it is still
    /// the process recorded (same pid and start time); its pid if so.
    pub fn kill_leftover(&self) -> Option<u32> {
        let (pid, started) = (self.pid?, self.started?);
        super::kill_leftover(pid, started).then_some(pid)
    }

    /// Records a started process: running, its pid, start time and port,
    /// a restart counted when `restarted` (the newest 20 kept).
    pub async fn record_start(
        store: &warden_storage::Store,
        id: &str,
        process: &super::Process,
        port: Option<u16>,
        restarted: bool,
    ) -> Result<(), crate::DomainError> {
        let (pid, started) = (process.pid(), process.started());
        let now = warden_storage::now_millis();
        ProcessRecord::change(store, id, |p| {
            if restarted {
                p.restarts.push(now);
                let keep = p.restarts.len().saturating_sub(20);
                p.restarts.drain(..keep);
            }
            p.state = ProcState::Running;
            p.pid = Some(pid);
            p.started = Some(started);
            p.port = port;
            p.last_run = Some(now);
            p.failure = None;
        })
        .await
    }

    /// What the actor tree shows of a process.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::json!({
            "pid": self.pid,
            "state": self.state.as_str(),
            "restarts": self.restarts.len(),
            "port": self.port,
        })
    }

    /// Records whether entity `id` of `kind` should run (its record made
    /// at its first start). `clear_failed`: a failed one may run again.
    pub async fn set_desired(
        store: &warden_storage::Store,
        kind: &str,
        id: &str,
        owner: &Owner,
        desired: bool,
        clear_failed: bool,
    ) -> Result<(), crate::DomainError> {
        loop {
            let changed = store
                .update::<ProcessRecord, crate::DomainError>(id, |p| {
                    p.desired = desired;
                    if clear_failed && desired && p.state == ProcState::Failed {
                        p.state = ProcState::Stopped;
                    }
                    Ok(Some(()))
                })
                .await?;
            if changed.is_some() {
                return Ok(());
            }
            let mut p = ProcessRecord::new(kind, id, owner.clone());
            p.desired = desired;
            match store.insert(p).await {
                // Made meanwhile by another request: change that one.
                Err(warden_storage::StorageError::Conflict { .. }) => continue,
                other => {
                    other?;
                    return Ok(());
                }
            }
        }
    }
}
