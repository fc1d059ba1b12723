//! The sled engine: one tree of records, one of time series, and a single
//! writer doing group commit.
//!
//! Callers send a request (a list of [`Write`]s applied atomically) over a
//! channel. The committer thread takes up to [`MAX_GROUP`] waiting requests
//! as one commit group with the next sequence number, stamps the number
//! first (so any record of the group that survives a crash is covered by
//! it), checks and applies each request as one sled batch (so one failing
//! request does not sink the others), flushes once, advances the durable
//! watermark and only then answers every caller. Being the only writer, it
//! checks constraints without transactions: nothing else changes the tree
//! between its read and its write. sled's asynchronous flush is not used:
//! it deadlocks under concurrency in 0.34.7. A failed flush poisons the
//! engine: the group and every later request are refused.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use crate::engine::{Engine, Outcome, Request, Scan, Space, Watermark};
use crate::record::{Envelope, EnvelopeRef, Write};
use crate::{Durability, StorageError, keys, migrations};

pub(crate) const MAX_GROUP: usize = 256;

/// How long a group of only unacknowledged writes keeps gathering more.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// How long a group of only unacknowledged writes (telemetry points,
/// coalesced heartbeat writes) may stay unflushed. Nobody was promised
/// them, so they ride on the next flush a waiting writer asks for, or on
/// this timer, or on a reader that meets one of their records (it asks for
/// a flush at once and waits for it). At 10,000 daemons this turns about
/// a thousand flushes a second into a few dozen.
pub(crate) const DEFERRED_FLUSH: std::time::Duration = std::time::Duration::from_millis(50);

pub(crate) struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
    series: sled::Tree,
    /// Shared with the watermark's flush requests; taken at close.
    writer: Arc<Mutex<Option<mpsc::Sender<Request>>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    watermark: Arc<Watermark>,
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        StorageError::Engine(e.to_string())
    }
}

impl SledEngine {
    /// Opens `<dir>` and brings it to the current schema (see `migrations.rs`).
    pub(crate) fn open(
        dir: &Path,
        durability: Durability,
        cache_bytes: u64,
    ) -> Result<SledEngine, StorageError> {
        let db = open_db(dir, cache_bytes)?;
        let tree = db.open_tree(keys::MAIN_TREE)?;
        let series = db.open_tree(keys::SERIES_TREE)?;
        migrations::run(&db, &tree, &series, migrations::ALL, keys::SCHEMA_VERSION)?;
        let durable = match tree.get(keys::meta(keys::COMMIT_SEQ_KEY))? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes")),
            _ => 0,
        };
        let watermark = Arc::new(Watermark::new(durable));
        let log_file = File::open(dir.join("db")).ok();
        let (tx, rx) = mpsc::channel::<Request>();
        let writer = Arc::new(Mutex::new(Some(tx)));
        {
            let writer = writer.clone();
            watermark.on_flush_request(move || {
                let writer = writer.lock().expect("writer lock is never poisoned");
                if let Some(tx) = writer.as_ref() {
                    let _ = tx.send(Request::flush());
                }
            });
        }
        let committer = {
            let (db, tree, series, watermark) =
                (db.clone(), tree.clone(), series.clone(), watermark.clone());
            std::thread::Builder::new()
                .name("warden-committer".into())
                .spawn(move || run(db, tree, series, durability, log_file, watermark, rx))
                .expect("spawning the committer thread must succeed at startup")
        };
        Ok(SledEngine {
            db,
            tree,
            series,
            writer,
            committer: Mutex::new(Some(committer)),
            watermark,
        })
    }

    fn space(&self, space: Space) -> &sled::Tree {
        match space {
            Space::Records => &self.tree,
            Space::Series => &self.series,
        }
    }
}

impl Engine for SledEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.space(space).get(key)?.map(|v| v.to_vec()))
    }

    fn range(&self, space: Space, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Scan<'_> {
        Box::new(
            self.space(space)
                .range::<Vec<u8>, _>((from, to))
                .map(|item| {
                    item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .map_err(Into::into)
                }),
        )
    }

    fn submit(&self, request: Request) -> Result<(), StorageError> {
        self.watermark.check()?;
        let guard = self
            .writer
            .lock()
            .expect("writer lock is never poisoned: no code panics holding it");
        let sender = guard.as_ref().ok_or(StorageError::Closed)?;
        sender.send(request).map_err(|_| StorageError::Closed)
    }

    fn watermark(&self) -> &Watermark {
        &self.watermark
    }

    fn close(&self) {
        let sender = self
            .writer
            .lock()
            .expect("writer lock is never poisoned")
            .take();
        drop(sender);
        if let Some(handle) = self
            .committer
            .lock()
            .expect("committer lock is never poisoned")
            .take()
        {
            let _ = handle.join();
        }
        let _ = self.db.flush();
    }
}

/// Opens sled's database. sled releases its file lock from a background
/// thread after the last handle is dropped, so a store closed in this
/// process a moment ago may still hold it: wait for it a little (up to
/// 5 s), then say plainly that another process has the directory.
fn open_db(dir: &Path, cache_bytes: u64) -> Result<sled::Db, StorageError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000))
            .open()
        {
            Ok(db) => return Ok(db),
            // sled reports a held lock as an `Other` error with this text.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                return Err(StorageError::Engine(format!(
                    "{} is in use by another Warden process",
                    dir.display()
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn run(
    db: sled::Db,
    tree: sled::Tree,
    series: sled::Tree,
    durability: Durability,
    log_file: Option<File>,
    watermark: Arc<Watermark>,
    rx: mpsc::Receiver<Request>,
) {
    let mut seq = watermark.durable();
    let mut group: Vec<(Option<tokio::sync::oneshot::Sender<Outcome>>, Outcome)> =
        Vec::with_capacity(MAX_GROUP);
    // The last group applied but not yet flushed: groups of only
    // unacknowledged writes wait for the next flush (see `DEFERRED_FLUSH`).
    let mut unflushed: Option<u64> = None;
    // When the oldest unflushed group must be flushed at the latest.
    let mut flush_by = std::time::Instant::now();
    loop {
        let received = if unflushed.is_some() {
            let left = flush_by.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(req) => Some(req),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(req) => Some(req),
                Err(_) => break,
            }
        };
        let mut flush_wanted =
            received.is_none() || (unflushed.is_some() && std::time::Instant::now() >= flush_by);
        let mut next = received;
        let mut applied_any = false;
        let mut writes = GroupWrites::new(&tree);
        if next.is_some() {
            seq += 1;
            watermark.begin(seq);
            writes.put(keys::meta(keys::COMMIT_SEQ_KEY), seq.to_be_bytes().to_vec());
        }
        let gathering_since = std::time::Instant::now();
        while let Some(req) = next.take() {
            if req.flush_only {
                flush_wanted = true;
            } else {
                let outcome = match watermark.check() {
                    Err(e) => Err(e),
                    Ok(()) => {
                        let mut pending = Pending::new(&writes);
                        let outcome = apply(&mut pending, req.writes, seq);
                        let changes = pending.into_parts();
                        if outcome.is_ok() {
                            writes.absorb(changes);
                        }
                        outcome
                    }
                };
                applied_any |= outcome.is_ok();
                flush_wanted |= req.reply.is_some();
                group.push((req.reply, outcome));
            }
            if group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
                // Nobody waits on this group yet: gather a little longer,
                // so that a steady trickle of unacknowledged writes makes
                // few large groups (each group is one sled batch, and each
                // batch wakes sled's I/O threads). A waiting writer ends
                // the gathering at once.
                if next.is_none() && !flush_wanted && !group.is_empty() {
                    let until = gathering_since + GATHER;
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    if !left.is_zero() {
                        next = rx.recv_timeout(left).ok();
                    }
                }
            }
        }
        let mut written = Ok(());
        if applied_any {
            written = writes
                .commit(&series, &watermark)
                .map_err(|e| std::io::Error::other(e.to_string()));
            if unflushed.is_none() {
                flush_by = std::time::Instant::now() + DEFERRED_FLUSH;
            }
            unflushed = Some(seq);
        }
        let flushing = written.is_ok() && flush_wanted && unflushed.is_some();
        let flushed = match written {
            Ok(()) if flushing => flush(&db, durability, log_file.as_ref(), &watermark),
            other => other,
        };
        watermark.count_group(group.len(), flushing);
        match &flushed {
            Ok(()) if flushing => {
                watermark.advance(seq);
                unflushed = None;
            }
            // Nothing waits on an unflushed group: a group that applied
            // nothing is durable as soon as everything before it is.
            Ok(()) if unflushed.is_none() => watermark.advance(seq),
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "writing or flushing the store failed: the store is poisoned and takes no more writes");
                watermark.poison(e.to_string());
            }
        }
        for (reply, outcome) in group.drain(..) {
            let answer = match (&flushed, outcome) {
                (Err(e), Ok(_)) => Err(StorageError::Poisoned(e.to_string())),
                (_, outcome) => outcome,
            };
            match reply {
                Some(reply) => {
                    let _ = reply.send(answer);
                }
                None => {
                    watermark.release_nowait();
                    if let Err(e) = answer {
                        tracing::warn!(error = %e, "a write nobody waited for failed");
                    }
                }
            }
        }
    }
    if watermark.check().is_ok() {
        let _ = flush(&db, durability, log_file.as_ref(), &watermark);
    }
}

/// Key changes: `Some(value)` puts, `None` removes.
type KeyChanges = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// A request's record changes, point changes and collections touched.
type RequestChanges = (KeyChanges, KeyChanges, Vec<&'static str>);

/// The writes of one commit group, applied to sled as one batch per tree
/// (with the group's sequence stamp in it). One batch per group, not per
/// request: sled takes a process-wide write lock for each batch, which
/// every concurrent reader then queues behind, so a batch per request made
/// the committer and the readers hand that lock back and forth all day.
/// A crash loses a whole group or keeps it whole.
struct GroupWrites<'t> {
    tree: &'t sled::Tree,
    records: KeyChanges,
    points: KeyChanges,
    /// The collections whose records the group changes.
    collections: HashSet<&'static str>,
}

impl<'t> GroupWrites<'t> {
    fn new(tree: &'t sled::Tree) -> Self {
        GroupWrites {
            tree,
            records: HashMap::new(),
            points: HashMap::new(),
            collections: HashSet::new(),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.records.insert(key, Some(value));
    }

    /// A record key as the group has left it so far.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.records.get(key) {
            Some(change) => Ok(change.clone()),
            None => Ok(self.tree.get(key)?.map(|v| v.to_vec())),
        }
    }

    /// Takes in the changes of a request that passed its checks.
    fn absorb(&mut self, (records, points, collections): RequestChanges) {
        self.records.extend(records);
        self.points.extend(points);
        self.collections.extend(collections);
    }

    /// Applies the group; then tells the watermark which collections changed.
    fn commit(self, series: &sled::Tree, watermark: &Watermark) -> Result<(), StorageError> {
        fn batch(changes: KeyChanges) -> sled::Batch {
            let mut batch = sled::Batch::default();
            for (k, v) in changes {
                match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                }
            }
            batch
        }
        if !self.points.is_empty() {
            series.apply_batch(batch(self.points))?;
        }
        self.tree.apply_batch(batch(self.records))?;
        watermark.changed(&self.collections);
        Ok(())
    }
}

/// One request's changes on top of its group's: dropped whole if any of
/// its checks fails, so a refused request leaves nothing behind.
struct Pending<'g, 't> {
    group: &'g GroupWrites<'t>,
    records: KeyChanges,
    points: KeyChanges,
    collections: Vec<&'static str>,
}

impl<'g, 't> Pending<'g, 't> {
    fn new(group: &'g GroupWrites<'t>) -> Self {
        Pending {
            group,
            records: HashMap::new(),
            points: HashMap::new(),
            collections: Vec::new(),
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.records.get(key) {
            Some(change) => Ok(change.clone()),
            None => self.group.get(key),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.records.insert(key, Some(value));
    }

    fn remove(&mut self, key: Vec<u8>) {
        self.records.insert(key, None);
    }

    fn into_parts(self) -> RequestChanges {
        (self.records, self.points, self.collections)
    }
}

fn flush(
    db: &sled::Db,
    durability: Durability,
    log_file: Option<&File>,
    watermark: &Watermark,
) -> std::io::Result<()> {
    let delay = watermark.flush_delay();
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    if watermark.take_injected_failure() {
        return Err(std::io::Error::other(
            "injected flush failure (fault injection)",
        ));
    }
    if durability == Durability::Unflushed {
        return Ok(());
    }
    db.flush().map_err(std::io::Error::other)?;
    if durability == Durability::Fsync
        && let Some(file) = log_file
    {
        file.sync_data()?;
    }
    Ok(())
}

/// Checks one request and records its changes in `pending`; returns the
/// new version of each put.
fn apply(pending: &mut Pending<'_, '_>, writes: Vec<Write>, seq: u64) -> Outcome {
    let mut versions = Vec::with_capacity(writes.len());
    // Changes to the counts of ordered-index scopes, written with the batch.
    let mut counts: HashMap<Vec<u8>, i64> = HashMap::new();
    // Unique keys claimed by earlier writes of this same request.
    let mut claimed: HashSet<Vec<u8>> = HashSet::new();
    for write in writes {
        match write {
            Write::Put {
                collection,
                id,
                expect_version,
                index_keys,
                unique_keys,
                layout,
                body,
            } => {
                pending.collections.push(collection);
                let rkey = keys::record(collection, &id);
                let old_bytes = pending.get(&rkey)?;
                let old = match &old_bytes {
                    Some(bytes) => Some(EnvelopeRef::read(bytes, collection, &id)?),
                    None => None,
                };
                let current = old.as_ref().map_or(0, |e| e.version);
                if let Some(expected) = expect_version
                    && expected != current
                {
                    return Err(if expected == 0 {
                        StorageError::Conflict {
                            field: "_id".into(),
                            value: id,
                        }
                    } else {
                        StorageError::VersionMismatch { collection, id }
                    });
                }
                let old_unique: HashSet<&[u8]> = old
                    .iter()
                    .flat_map(|e| e.unique_keys.iter().map(|(_, _, k)| *k))
                    .collect();
                for (name, value, ukey) in &unique_keys {
                    if old_unique.contains(ukey.as_slice()) {
                        continue;
                    }
                    let taken = claimed.contains(ukey)
                        || pending
                            .get(ukey)?
                            .is_some_and(|owner| owner != id.as_bytes());
                    if taken {
                        return Err(StorageError::Conflict {
                            field: name.clone(),
                            value: value.clone(),
                        });
                    }
                }
                // Only the keys that differ are written: most updates (a
                // heartbeat's lastHeartbeat) keep every index key.
                let new_keys: Vec<&[u8]> = index_keys.iter().map(Vec::as_slice).collect();
                let old_keys: &[&[u8]] = old.as_ref().map_or(&[][..], |o| &o.index_keys[..]);
                for k in old_keys {
                    if !new_keys.contains(k) {
                        pending.remove(k.to_vec());
                    }
                }
                for k in &new_keys {
                    if !old_keys.contains(k) {
                        pending.put(k.to_vec(), Vec::new());
                    }
                }
                if let Some(old) = &old {
                    for (_, _, k) in &old.unique_keys {
                        if !unique_keys.iter().any(|(_, _, n)| n.as_slice() == *k) {
                            pending.remove(k.to_vec());
                        }
                    }
                }
                count_changes(&mut counts, old_keys, &new_keys);
                for (_, _, k) in &unique_keys {
                    if !old_unique.contains(k.as_slice()) {
                        pending.put(k.clone(), id.as_bytes().to_vec());
                    }
                    claimed.insert(k.clone());
                }
                let version = current + 1;
                let envelope = Envelope {
                    version,
                    seq,
                    layout,
                    index_keys,
                    unique_keys,
                    body,
                };
                pending.put(rkey, envelope.encode()?);
                versions.push(version);
            }
            Write::Remove { collection, id } => {
                pending.collections.push(collection);
                let rkey = keys::record(collection, &id);
                if let Some(bytes) = pending.get(&rkey)? {
                    let old = EnvelopeRef::read(&bytes, collection, &id)?;
                    count_changes(&mut counts, &old.index_keys, &[]);
                    for k in &old.index_keys {
                        pending.remove(k.to_vec());
                    }
                    for (_, _, k) in &old.unique_keys {
                        pending.remove(k.to_vec());
                    }
                    pending.remove(rkey);
                }
                versions.push(0);
            }
            Write::Point { key, value } => {
                pending.points.insert(key, Some(value));
                versions.push(0);
            }
            Write::RemovePoints { keys } => {
                for key in keys {
                    pending.points.insert(key, None);
                }
                versions.push(0);
            }
            Write::Meta { name, value } => {
                pending.put(keys::meta(&name), value);
                versions.push(0);
            }
        }
    }
    for (key, delta) in counts {
        if delta == 0 {
            continue;
        }
        let current = pending
            .get(&key)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        let next = (current as i64).saturating_add(delta).max(0) as u64;
        pending.put(key, next.to_be_bytes().to_vec());
    }
    Ok(versions)
}

/// Adds to `counts` the scope-count changes of replacing the ordered keys
/// among `old` by those among `new`.
fn count_changes(counts: &mut HashMap<Vec<u8>, i64>, old: &[&[u8]], new: &[&[u8]]) {
    let ordered = |keys: &[&[u8]]| -> HashSet<Vec<u8>> {
        keys.iter()
            .filter(|k| k.first() == Some(&keys::ORDERED))
            .map(|k| k.to_vec())
            .collect()
    };
    let (old, new) = (ordered(old), ordered(new));
    for k in old.difference(&new) {
        if let Some(c) = keys::count_of(k) {
            *counts.entry(c).or_default() -= 1;
        }
    }
    for k in new.difference(&old) {
        if let Some(c) = keys::count_of(k) {
            *counts.entry(c).or_default() += 1;
        }
    }
}
