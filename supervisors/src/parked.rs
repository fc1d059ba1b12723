//! Runs parked on their jobs (WORKFLOWS.md §6 "parked runs"): a run
//! whose only outstanding work is waiting for `job` tasks' jobs keeps no
//! actor and no task. Its actor tells [`ParkedRuns`] when to wake it (the
//! earliest of its jobs' expiry and its own deadlines) and passivates;
//! one timer task for every parked run wakes each at its time, and a
//! worker's `done` / `failed` wakes the job's run at once
//! ([`crate::Executions::wake`]). Waking activates the actor, which looks
//! at its jobs again (`ExecArgs::woken`: not a resume).
//!
//! Nothing here is stored: after a restart every running execution is
//! activated at boot, looks at its jobs and parks again.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use warden_actors::DomainError;
use warden_actors::execution::{ExecMsg, Parking};
use warden_storage::{Millis, now_millis};

use crate::executions::ReplyRoute;
use crate::kind::WeakKindRef;

/// The longest the timer task sleeps without looking.
const MAX_SLEEP: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct ParkedRuns(Arc<Inner>);

struct Inner {
    due: Mutex<Due>,
    changed: Notify,
    route: ReplyRoute,
}

#[derive(Default)]
struct Due {
    by_time: BTreeSet<(Millis, String)>,
    by_id: HashMap<String, Millis>,
    /// Runs being woken: their actor, activated now, looks at its jobs.
    waking: HashSet<String>,
}

impl ParkedRuns {
    /// The registry, and its timer task (which ends with the executions
    /// kind behind `route`, where wake-ups go).
    pub(crate) fn start(route: ReplyRoute) -> ParkedRuns {
        let runs = ParkedRuns(Arc::new(Inner {
            due: Mutex::new(Due::default()),
            changed: Notify::new(),
            route,
        }));
        tokio::spawn(wake_when_due(runs.clone()));
        runs
    }

    fn due(&self) -> std::sync::MutexGuard<'_, Due> {
        self.0.due.lock().expect("never poisoned")
    }

    /// Whether the run's actor is being activated to look at its parked
    /// jobs (not after a crash or a restart); forgets its wake-up.
    pub(crate) fn take(&self, execution: &str) -> bool {
        let mut due = self.due();
        let parked = match due.by_id.remove(execution) {
            Some(at) => due.by_time.remove(&(at, execution.to_owned())),
            None => false,
        };
        parked | due.waking.remove(execution)
    }

    /// Wakes a run now: its actor (activated again if it passivated)
    /// looks at its parked jobs.
    pub(crate) async fn wake(&self, execution: &str) -> Result<(), DomainError> {
        let kind = self
            .0
            .route
            .get()
            .and_then(WeakKindRef::upgrade)
            .ok_or_else(|| DomainError::Unavailable("the executions service has stopped".into()))?;
        {
            let mut due = self.due();
            if let Some(at) = due.by_id.remove(execution) {
                due.by_time.remove(&(at, execution.to_owned()));
            }
            due.waking.insert(execution.to_owned());
        }
        let woke = kind
            .with_actor(execution, |a| async move {
                a.cast(ExecMsg::Wake)
                    .map_err(|e| DomainError::Unavailable(e.to_string()))
            })
            .await;
        self.due().waking.remove(execution);
        woke
    }
}

impl Parking for ParkedRuns {
    fn park(&self, execution: &str, wake_at: Millis) {
        let mut due = self.due();
        if let Some(old) = due.by_id.insert(execution.to_owned(), wake_at) {
            due.by_time.remove(&(old, execution.to_owned()));
        }
        let earliest = due.by_time.first().is_none_or(|(t, _)| wake_at < *t);
        due.by_time.insert((wake_at, execution.to_owned()));
        drop(due);
        if earliest {
            self.0.changed.notify_one();
        }
    }
}

/// Sleeps until the earliest wake-up (or a new earlier one), then wakes
/// every run that is due. Ends once the executions kind is gone.
async fn wake_when_due(runs: ParkedRuns) {
    loop {
        if runs.0.route.get().is_some_and(|k| k.upgrade().is_none()) {
            return;
        }
        let now = now_millis();
        let (woken, next) = {
            let mut due = runs.due();
            let mut woken = Vec::new();
            while let Some((at, _)) = due.by_time.first()
                && *at <= now
            {
                let (_, id) = due.by_time.pop_first().expect("just seen");
                due.by_id.remove(&id);
                woken.push(id);
            }
            (woken, due.by_time.first().map(|(at, _)| *at))
        };
        for id in woken {
            // Parked again meanwhile: woken by `wake` below all the same.
            let runs = runs.clone();
            tokio::spawn(async move {
                if let Err(e) = runs.wake(&id).await {
                    tracing::debug!(execution = %id, error = %e, "a parked run could not be woken");
                }
            });
        }
        let wait = next.map_or(MAX_SLEEP, |at| {
            Duration::from_millis((at - now).clamp(0, MAX_SLEEP.as_millis() as i64) as u64)
        });
        tokio::select! {
            () = runs.0.changed.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
