//! The engine a [`Store`](crate::Store) runs on, as a small trait: reads of
//! one key, ordered key ranges, atomic commits checked against expected
//! versions and unique constraints, and a commit sequence with a durable
//! watermark. sled implements it today (`sled_engine.rs`); a PostgreSQL
//! engine for cluster mode implements the same calls (`../shared/design/
//! CLUSTER.md`: a range is a range on a `bytea` key, a commit is one
//! fenced statement). Nothing outside this crate names the engine.
//!
//! Invariants every engine keeps:
//! - A request is applied whole or not at all.
//! - A caller is answered only once its request is durable.
//! - Nothing written by a commit group is visible to readers of the store
//!   before the group is durable: every record carries the group's number
//!   (`seq`) and a reader that meets one above [`Watermark::durable`] waits.
//! - A failed flush poisons the engine: no further acknowledgements.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::{StorageError, Write};

/// The two key spaces: records with their indexes and metadata, and time
/// series points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Records,
    Series,
}

pub type Entry = (Vec<u8>, Vec<u8>);

/// An ordered walk over a key range; either end first.
pub type Scan<'a> = Box<dyn DoubleEndedIterator<Item = Result<Entry, StorageError>> + Send + 'a>;

/// What a commit answers: each put's new version.
pub type Outcome = Result<Vec<u64>, StorageError>;

/// One atomic commit on its way to the engine.
pub struct Request {
    pub writes: Vec<Write>,
    /// `None` for a write nobody waits for (telemetry).
    pub reply: Option<oneshot::Sender<Outcome>>,
    /// No writes: a reader met a group that is applied but not yet
    /// flushed, and asks for the flush now.
    pub flush_only: bool,
}

impl Request {
    pub fn flush() -> Request {
        Request {
            writes: Vec::new(),
            reply: None,
            flush_only: true,
        }
    }
}

/// A storage engine. Object-safe, so the store holds `Arc<dyn Engine>`.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    fn range(&self, space: Space, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Scan<'_>;
    /// Queues an atomic commit; its reply comes once it is durable (or refused).
    fn submit(&self, request: Request) -> Result<(), StorageError>;
    /// The commit sequence and its durable watermark.
    fn watermark(&self) -> &Watermark;
    /// Stops taking commits and waits until every queued one is durable.
    fn close(&self);
}

/// How long a reader waits for a group to become durable before it gives
/// up with [`StorageError::Unavailable`]: far above any healthy flush.
const READ_WAIT: Duration = Duration::from_secs(10);

/// Most unacknowledged (`commit_nowait`) requests queued at once; past it
/// such writes are dropped and counted, never buffered without bound.
pub const MAX_NOWAIT_QUEUED: usize = 65_536;

/// The commit sequence as readers see it: the last durable group, poison,
/// a fault-injection switch, and the back-pressure count of unacknowledged
/// writes.
pub struct Watermark {
    /// The last commit group whose writes have been applied (maybe not yet durable).
    applied: AtomicU64,
    durable: AtomicU64,
    lock: Mutex<()>,
    became_durable: Condvar,
    poison: OnceLock<String>,
    poisoned: watch::Sender<Option<String>>,
    fail_next_flush: AtomicBool,
    flush_delay_ms: AtomicU64,
    nowait_queued: AtomicUsize,
    nowait_dropped: AtomicU64,
    /// Requests applied (whether or not they succeeded), for group sizes.
    requests: AtomicU64,
    /// Flushes made.
    flushes: AtomicU64,
    /// The last group of the previous run: counting starts after it.
    opened_at: u64,
    /// Asks the engine for a flush (set by the engine once it runs).
    flush_request: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Change counters of the collections someone watches (see [`Changes`]).
    watched: RwLock<HashMap<&'static str, Changes>>,
}

/// How many commits have changed one collection since start: a reader
/// that caches what it derived from the collection (the verified-credential
/// cache) keeps the count it saw and trusts its copy while the count is
/// unchanged. The count moves after a commit's writes are visible to
/// readers and before its writer is answered, so once a write is
/// acknowledged no reader trusts a copy made before it.
#[derive(Clone, Default)]
pub struct Changes(Arc<AtomicU64>);

impl Changes {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// What the engine's committer has done since start: the figures behind
/// `warden_store_*` in `/metrics` (average group size = requests / groups).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub groups: u64,
    pub requests: u64,
    pub flushes: u64,
    pub nowait_queued: usize,
    pub nowait_dropped: u64,
}

impl Watermark {
    /// A watermark whose groups up to `durable` are on disk.
    pub fn new(durable: u64) -> Watermark {
        Watermark {
            applied: AtomicU64::new(durable),
            durable: AtomicU64::new(durable),
            lock: Mutex::new(()),
            became_durable: Condvar::new(),
            poison: OnceLock::new(),
            poisoned: watch::channel(None).0,
            fail_next_flush: AtomicBool::new(false),
            flush_delay_ms: AtomicU64::new(0),
            nowait_queued: AtomicUsize::new(0),
            nowait_dropped: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            opened_at: durable,
            watched: RwLock::new(HashMap::new()),
            flush_request: OnceLock::new(),
        }
    }

    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Called by the engine before it applies the writes of group `seq`.
    pub fn begin(&self, seq: u64) {
        self.applied.fetch_max(seq, Ordering::AcqRel);
    }

    /// Waits until everything applied so far is durable: for reads of data
    /// that carries no commit group (time-series points).
    pub fn wait_applied(&self) -> Result<(), StorageError> {
        self.wait(self.applied.load(Ordering::Acquire))
    }

    /// How a reader asks the engine for a flush.
    pub fn on_flush_request(&self, request: impl Fn() + Send + Sync + 'static) {
        let _ = self.flush_request.set(Box::new(request));
    }

    /// Called by the engine once group `seq` is durable.
    pub fn advance(&self, seq: u64) {
        let _guard = self.lock.lock().expect("watermark lock is never poisoned");
        self.durable.fetch_max(seq, Ordering::AcqRel);
        self.became_durable.notify_all();
    }

    /// Blocks until group `seq` is durable. Nearly always returns at once:
    /// only a read racing the flush of the group it reads waits, for at
    /// most that flush.
    pub fn wait(&self, seq: u64) -> Result<(), StorageError> {
        if seq <= self.durable() {
            return Ok(());
        }
        // The group may be one the engine flushes lazily: ask for it now.
        if let Some(request) = self.flush_request.get() {
            request();
        }
        let deadline = std::time::Instant::now() + READ_WAIT;
        let mut guard = self.lock.lock().expect("watermark lock is never poisoned");
        loop {
            if seq <= self.durable() {
                return Ok(());
            }
            if let Some(reason) = self.poison.get() {
                return Err(StorageError::Poisoned(reason.clone()));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StorageError::Unavailable(
                    "a write this read depends on is not durable yet".into(),
                ));
            }
            guard = self
                .became_durable
                .wait_timeout(guard, left)
                .expect("watermark lock is never poisoned")
                .0;
        }
    }

    /// Marks the engine poisoned after a failed flush; for good.
    pub fn poison(&self, reason: String) {
        let _guard = self.lock.lock().expect("watermark lock is never poisoned");
        if self.poison.set(reason.clone()).is_ok() {
            self.poisoned.send_replace(Some(reason));
        }
        self.became_durable.notify_all();
    }

    /// `Err(Poisoned)` once a flush has failed.
    pub fn check(&self) -> Result<(), StorageError> {
        match self.poison.get() {
            Some(reason) => Err(StorageError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    /// Resolves with the cause once the engine is poisoned.
    pub fn poisoned(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.poisoned.subscribe();
        async move {
            let reason = rx
                .wait_for(|p| p.is_some())
                .await
                .map(|reason| reason.clone().unwrap_or_default());
            match reason {
                Ok(reason) => reason,
                // The store was dropped: it can no longer fail.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Fault injection: the next flush fails as an I/O error would.
    pub fn fail_next_flush(&self) {
        self.fail_next_flush.store(true, Ordering::Release);
    }

    /// Fault injection: every flush first waits this long, widening the
    /// window between applying a group and its becoming durable.
    pub fn set_flush_delay(&self, delay: Duration) {
        self.flush_delay_ms
            .store(delay.as_millis() as u64, Ordering::Release);
    }

    /// The injected delay before each flush (zero unless injected).
    pub fn flush_delay(&self) -> Duration {
        Duration::from_millis(self.flush_delay_ms.load(Ordering::Acquire))
    }

    /// Whether the flush about to run should fail (and clears the switch).
    pub fn take_injected_failure(&self) -> bool {
        self.fail_next_flush.swap(false, Ordering::AcqRel)
    }

    /// Reserves room for an unacknowledged write, or counts it dropped.
    pub fn reserve_nowait(&self) -> bool {
        if self.nowait_queued.fetch_add(1, Ordering::AcqRel) >= MAX_NOWAIT_QUEUED {
            self.nowait_queued.fetch_sub(1, Ordering::AcqRel);
            self.nowait_dropped.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            true
        }
    }

    /// An unacknowledged write left the queue.
    pub fn release_nowait(&self) {
        self.nowait_queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Unacknowledged writes dropped for want of room since start.
    pub fn nowait_dropped(&self) -> u64 {
        self.nowait_dropped.load(Ordering::Relaxed)
    }

    /// The change counter of `collection`, watched from now on.
    pub fn watch(&self, collection: &'static str) -> Changes {
        self.watched
            .write()
            .expect("the watch lock is never poisoned")
            .entry(collection)
            .or_default()
            .clone()
    }

    /// Called by the engine once writes to `collections` are visible to
    /// readers, before their writers are answered.
    pub fn changed<'a>(&self, collections: impl IntoIterator<Item = &'a &'static str>) {
        let watched = self
            .watched
            .read()
            .expect("the watch lock is never poisoned");
        if watched.is_empty() {
            return;
        }
        for c in collections {
            if let Some(changes) = watched.get(c) {
                changes.0.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Counts a group of `requests` requests, and whether it was flushed.
    pub fn count_group(&self, requests: usize, flushed: bool) {
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        if flushed {
            self.flushes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The committer's counters since start.
    pub fn stats(&self) -> CommitStats {
        CommitStats {
            groups: self.applied.load(Ordering::Acquire) - self.opened_at,
            requests: self.requests.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            nowait_queued: self.nowait_queued(),
            nowait_dropped: self.nowait_dropped(),
        }
    }

    /// Unacknowledged writes waiting now.
    pub fn nowait_queued(&self) -> usize {
        self.nowait_queued.load(Ordering::Relaxed)
    }
}
