//! Jobs and leases (contenox `/jobs`, `/leases`; WORKFLOWS.md §1, §5.11):
//! work a run hands to outside workers. A chain's `job` task makes one
//! and waits for it; a worker leases the oldest pending job of the types
//! it takes, for a while, and marks it done or failed.
//!
//! Invariants:
//! - A job's id is derived from what made it (a run's task attempt), so
//!   a run resumed after a crash finds the job it made, lease and all.
//! - At most one leaser holds a job: a lease is a versioned update, and
//!   a concurrent one retries with the next job.
//! - Only the lease holder finishes a job (else 409). A lease that
//!   lapses puts the job back in the queue with one more `retryCount`;
//!   lapsed leases are swept whenever the queue is read.

use serde_json::Value;
use sha2::Digest;
use warden_storage::{Millis, Record, StorageError, Store, Write, now_millis, time_sort_key};

use crate::DomainError;

warden_storage::first_layout!(Job);

const SEP: char = '\u{1f}';

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum JobStatus {
    Pending,
    Leased,
    Done,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Leased => "in-progress",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub id: String,
    pub org_id: String,
    pub task_type: String,
    /// JSON text.
    pub payload: String,
    pub scheduled_for: Millis,
    pub valid_until: Millis,
    pub retry_count: u32,
    pub status: JobStatus,
    pub leaser_id: String,
    pub lease_until: Millis,
    /// The execution that waits for it.
    pub origin: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Job indexes: an organisation's jobs by status (oldest first), and the
/// pending ones by type (what a lease takes).
pub const BY_STATUS: &str = "status";
pub const QUEUE: &str = "queue";

fn scope(a: &str, b: &str) -> String {
    format!("{a}{SEP}{b}")
}

impl Record for Job {
    const COLLECTION: &'static str = "jobs";
    fn id(&self) -> &str {
        &self.id
    }
    fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        let at = time_sort_key(self.created_at);
        let mut o = vec![(
            BY_STATUS,
            scope(&self.org_id, self.status.as_str()),
            at.clone(),
        )];
        if self.status == JobStatus::Pending {
            o.push((QUEUE, scope(&self.org_id, &self.task_type), at));
        }
        o
    }
}

impl Job {
    /// A pending job made by `origin` under `key` (the same key, the
    /// same id).
    pub fn new(
        org: &str,
        key: &str,
        task_type: &str,
        payload: &Value,
        valid_for_ms: i64,
        origin: &str,
    ) -> Job {
        let digest = sha2::Sha256::digest(format!("{org}{SEP}{key}").as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        let now = now_millis();
        Job {
            id: uuid::Builder::from_custom_bytes(bytes)
                .into_uuid()
                .to_string(),
            org_id: org.to_owned(),
            task_type: task_type.to_owned(),
            payload: payload.to_string(),
            scheduled_for: now,
            valid_until: now + valid_for_ms,
            retry_count: 0,
            status: JobStatus::Pending,
            leaser_id: String::new(),
            lease_until: 0,
            origin: origin.to_owned(),
            created_at: now,
            updated_at: now,
        }
    }

    pub fn payload_json(&self) -> Value {
        serde_json::from_str(&self.payload).unwrap_or(Value::Null)
    }

    /// Whether its lease has lapsed at `now`.
    fn lapsed(&self, now: Millis) -> bool {
        self.status == JobStatus::Leased && self.lease_until <= now
    }
}

/// Stores `job` unless a job with its id exists; returns the stored one.
pub async fn ensure(store: &Store, job: Job) -> Result<Job, DomainError> {
    if let Some(j) = store.get::<Job>(&job.id)? {
        return Ok(j);
    }
    match store.commit(vec![Write::insert(&job)?]).await {
        Ok(_) => Ok(job),
        Err(StorageError::VersionMismatch { .. }) => Ok(store
            .get::<Job>(&job.id)?
            .ok_or_else(|| DomainError::Unavailable("a job vanished as it was made".into()))?),
        Err(e) => Err(e.into()),
    }
}

pub fn get(store: &Store, org: &str, id: &str) -> Result<Option<Job>, DomainError> {
    Ok(store.get::<Job>(id)?.filter(|j| j.org_id == org))
}

/// Puts `org`'s lapsed leases back in the queue (one more retry each).
pub async fn sweep(store: &Store, org: &str) -> Result<(), DomainError> {
    let now = now_millis();
    for j in store.in_scope::<Job>(BY_STATUS, &scope(org, JobStatus::Leased.as_str()))? {
        if !j.lapsed(now) {
            continue;
        }
        store
            .update::<Job, DomainError>(&j.id, |j| {
                if !j.lapsed(now) {
                    return Ok(None);
                }
                j.status = JobStatus::Pending;
                j.leaser_id.clear();
                j.lease_until = 0;
                j.retry_count += 1;
                j.updated_at = now;
                Ok(Some(()))
            })
            .await?;
    }
    Ok(())
}

/// `org`'s jobs of one status (pending or leased), oldest first, created
/// after `after`; lapsed leases swept first.
pub async fn list(
    store: &Store,
    org: &str,
    status: JobStatus,
    after: Option<Millis>,
    limit: usize,
) -> Result<Vec<Job>, DomainError> {
    sweep(store, org).await?;
    let cursor = after.map(time_sort_key);
    let page = store.page::<Job>(&warden_storage::PageQuery {
        index: BY_STATUS,
        scope: &scope(org, status.as_str()),
        descending: false,
        skip: 0,
        after: cursor.as_deref().map(|k| warden_storage::past(k, false)),
        limit,
    })?;
    Ok(page.items.into_iter().map(|(_, j)| j).collect())
}

/// Leases the oldest pending job of `types` to `leaser` for `for_ms`.
pub async fn lease(
    store: &Store,
    org: &str,
    leaser: &str,
    types: &[String],
    for_ms: i64,
) -> Result<Option<Job>, DomainError> {
    sweep(store, org).await?;
    loop {
        let now = now_millis();
        // The oldest head of the types' queues.
        let mut oldest: Option<Job> = None;
        for t in types {
            let page = store.page::<Job>(&warden_storage::PageQuery {
                index: QUEUE,
                scope: &scope(org, t),
                descending: false,
                skip: 0,
                after: None,
                limit: 1,
            })?;
            if let Some((_, j)) = page.items.into_iter().next()
                && oldest.as_ref().is_none_or(|o| j.created_at < o.created_at)
            {
                oldest = Some(j);
            }
        }
        let Some(candidate) = oldest else {
            return Ok(None);
        };
        let Some((mut j, version)) = store.get_versioned::<Job>(&candidate.id)? else {
            continue;
        };
        if j.status != JobStatus::Pending {
            continue;
        }
        j.status = JobStatus::Leased;
        j.leaser_id = leaser.to_owned();
        j.lease_until = now + for_ms;
        j.updated_at = now;
        match store.commit(vec![Write::put(&j, Some(version))?]).await {
            Ok(_) => return Ok(Some(j)),
            // Another leaser took it: try the next.
            Err(StorageError::VersionMismatch { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Why a job could not be finished.
#[derive(Debug)]
pub enum FinishError {
    NotFound,
    /// The job is not leased by this leaser (or not leased at all).
    NotHolder(String),
    Domain(DomainError),
}

impl From<DomainError> for FinishError {
    fn from(e: DomainError) -> Self {
        FinishError::Domain(e)
    }
}

/// Marks a leased job done or failed; only its lease holder may.
pub async fn finish(
    store: &Store,
    org: &str,
    id: &str,
    leaser: &str,
    done: bool,
) -> Result<Job, FinishError> {
    sweep(store, org).await?;
    if get(store, org, id)?.is_none() {
        return Err(FinishError::NotFound);
    }
    let mut refusal = None;
    let j = store
        .update::<Job, DomainError>(id, |j| {
            if j.status != JobStatus::Leased || j.leaser_id != leaser {
                refusal = Some(match j.status {
                    JobStatus::Leased => format!("job {} is leased by another leaser", j.id),
                    other => format!("job {} is {}, not leased by {leaser}", j.id, other.as_str()),
                });
                return Ok(None);
            }
            refusal = None;
            j.status = if done {
                JobStatus::Done
            } else {
                JobStatus::Failed
            };
            j.updated_at = now_millis();
            Ok(Some(()))
        })
        .await?
        .ok_or(FinishError::NotFound)?;
    match refusal {
        Some(why) => Err(FinishError::NotHolder(why)),
        None => Ok(j),
    }
}
