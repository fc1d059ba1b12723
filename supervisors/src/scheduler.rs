//! The scheduler: fires each enabled schedule at its cron occurrences
//! (WORKFLOWS.md §1, §5.10; the records are `warden_domain::schedule`).
//!
//! It sleeps until the earliest `next_fire` in the due index (or until a
//! schedule changes), fires what is due and re-arms each from the time it
//! fired, up to 64 at once. A fire starts the action's run under the key of its occurrence
//! first and records the fire second: a crash between the two repeats
//! the fire, which finds its run. An occurrence missed while the server
//! was down fires once at boot.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use warden_actors::execution::Execution;
use warden_domain::DomainError;
use warden_domain::schedule::{DUE, Schedule};
use warden_storage::{Store, now_millis, time_sort_key};

use crate::{Executions, RunLabel};

/// The longest the scheduler sleeps without looking.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Due schedules read at a time.
const DUE_BATCH: usize = 1024;
/// Fires in flight at once.
const CONCURRENT_FIRES: usize = 64;

#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    executions: Executions,
    changed: Notify,
    stop: tokio::sync::watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Scheduler {
    pub fn start(store: Store, executions: Executions) -> Scheduler {
        let s = Scheduler {
            inner: Arc::new(Inner {
                store,
                executions,
                changed: Notify::new(),
                stop: tokio::sync::watch::channel(false).0,
                task: Mutex::new(None),
            }),
        };
        let inner = s.inner.clone();
        let task = tokio::spawn(async move { inner.run().await });
        *s.inner.task.lock().expect("never poisoned") = Some(task);
        s
    }

    /// A schedule was created or changed: look again now.
    pub fn changed(&self) {
        self.inner.changed.notify_one();
    }

    /// Runs a schedule's action now (`POST .../run`), outside its cron.
    pub async fn run_now(&self, s: &Schedule) -> Result<Execution, DomainError> {
        let x = self.inner.start_action(s, None).await?;
        self.inner
            .store
            .update::<Schedule, DomainError>(&s.id, |s| {
                s.remember(&x.id);
                Ok(Some(()))
            })
            .await?;
        Ok(x)
    }

    pub async fn stop(&self) {
        let _ = self.inner.stop.send(true);
        let task = self.inner.task.lock().expect("never poisoned").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// How a schedule's runs are filed: a chain run that names its schedule.
fn label(s: &Schedule, key: Option<String>) -> RunLabel {
    RunLabel {
        extra: json!({"schedule_id": s.id}).to_string(),
        key,
        ..RunLabel::chain()
    }
}

impl Inner {
    async fn run(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            let wait = match self.fire_due().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "the scheduler could not fire what is due; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = stop.changed() => return,
                () = self.changed.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Fires every schedule due now, up to [`CONCURRENT_FIRES`] at once
    /// (their runs' writes share commits); answers how long until the
    /// next.
    async fn fire_due(self: &Arc<Self>) -> Result<Duration, DomainError> {
        let now = now_millis();
        let due = self
            .store
            .ids_up_to::<Schedule>(DUE, "", &time_sort_key(now), DUE_BATCH)?;
        let mut fires = tokio::task::JoinSet::new();
        let mut failed = None;
        let mut note = |r: Result<(String, Result<(), DomainError>), tokio::task::JoinError>| {
            let e = match r {
                Ok((_, Ok(()))) => return,
                Ok((id, Err(e))) => {
                    tracing::warn!(schedule = %id, error = %e, "a scheduled fire failed; it is tried again");
                    e
                }
                Err(e) => DomainError::Unavailable(format!("a scheduled fire failed: {e}")),
            };
            failed = Some(e);
        };
        for id in due {
            if fires.len() >= CONCURRENT_FIRES
                && let Some(r) = fires.join_next().await
            {
                note(r);
            }
            let me = self.clone();
            fires.spawn(async move {
                let r = me.fire(&id, now).await;
                (id, r)
            });
        }
        while let Some(r) = fires.join_next().await {
            note(r);
        }
        // A fire that could not start stays due: try again in a second.
        if let Some(e) = failed {
            return Err(e);
        }
        let next = self
            .store
            .ids_between::<Schedule>(DUE, "", &[], &[0xFF; 9], false, 1)?;
        let Some((key, _)) = next.first() else {
            return Ok(MAX_SLEEP);
        };
        let at = <[u8; 8]>::try_from(key.as_slice())
            .map(|b| (u64::from_be_bytes(b) ^ (1 << 63)) as i64)
            .unwrap_or(now);
        Ok(Duration::from_millis(
            (at - now_millis()).clamp(0, MAX_SLEEP.as_millis() as i64) as u64,
        ))
    }

    async fn fire(&self, id: &str, now: i64) -> Result<(), DomainError> {
        let Some(s) = self.store.get::<Schedule>(id)? else {
            return Ok(());
        };
        let Some(occurrence) = s.next_fire.filter(|t| *t <= now) else {
            return Ok(());
        };
        if !s.enabled || s.audit.deleted_at.is_some() {
            return Ok(());
        }
        // Not started (the store or the actor could not take it): the
        // occurrence stays due, so it is not lost.
        let started = self.start_action(&s, Some(s.run_key(occurrence))).await?;
        self.store
            .update::<Schedule, DomainError>(id, |s| {
                if s.next_fire != Some(occurrence) {
                    return Ok(None);
                }
                s.last_fire = Some(occurrence);
                s.rearm(now);
                s.remember(&started.id);
                Ok(Some(()))
            })
            .await?;
        tracing::debug!(schedule = %s.id, occurrence, "schedule fired");
        Ok(())
    }

    /// Starts the action's run: `{type: "workflow", workflow_id, input?}`
    /// runs a stored workflow (by id, or a chain's key); anything else is
    /// a failed run saying why.
    async fn start_action(
        &self,
        s: &Schedule,
        key: Option<String>,
    ) -> Result<Execution, DomainError> {
        let action = s.action_json();
        let by = &s.owner.user_id;
        let org = &s.owner.org_id;
        if let Some(k) = &key
            && let Some(x) = self.executions.resolve(org, k)?
        {
            return Ok(x);
        }
        let failed = |reason: String| {
            let label = label(s, key.clone());
            async move {
                self.executions
                    .failed_run(s.owner.clone(), by, &s.name, &reason, label)
                    .await
            }
        };
        if action["type"] != "workflow" {
            return failed(format!(
                "action type {} is not one a schedule runs (workflow)",
                action["type"]
            ))
            .await;
        }
        let wid = action["workflow_id"].as_str().unwrap_or_default();
        let found = match warden_domain::find_in_org::<warden_domain::workflow::Workflow>(
            &self.store,
            org,
            wid,
            "",
            "Workflow",
        ) {
            Ok(w) => Some(w),
            Err(DomainError::NotFound { .. }) => {
                warden_domain::workflow::by_key(&self.store, org, wid)?
            }
            Err(e) => return Err(e),
        };
        let Some(w) = found else {
            return failed(format!("workflow {wid} not found")).await;
        };
        let input = action.get("input").cloned().unwrap_or(Value::Null);
        self.executions
            .start_workflow(s.owner.clone(), by, &w, &input, label(s, key))
            .await
    }
}
