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
use crate::record::{Envelope, Write, decode, encode};
use crate::{Durability, StorageError, keys, migrations};

pub(crate) const MAX_GROUP: usize = 256;

pub(crate) struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
    series: sled::Tree,
    writer: Mutex<Option<mpsc::Sender<Request>>>,
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
    pub(crate) fn open(dir: &Path, durability: Durability) -> Result<SledEngine, StorageError> {
        let db = open_db(dir)?;
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
            writer: Mutex::new(Some(tx)),
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
fn open_db(dir: &Path) -> Result<sled::Db, StorageError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::Config::new()
            .path(dir)
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
    while let Ok(first) = rx.recv() {
        seq += 1;
        watermark.begin(seq);
        let poisoned = watermark.check().is_err();
        let stamped = if poisoned {
            Ok(())
        } else {
            tree.insert(keys::meta(keys::COMMIT_SEQ_KEY), &seq.to_be_bytes())
                .map(|_| ())
        };
        let mut next = Some(first);
        while let Some(req) = next.take() {
            let outcome = match (&stamped, watermark.check()) {
                (_, Err(e)) => Err(e),
                (Err(e), _) => Err(StorageError::Engine(e.to_string())),
                (Ok(()), Ok(())) => apply(&tree, &series, req.writes, seq),
            };
            group.push((req.reply, outcome));
            if group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        let applied_any = group.iter().any(|(_, r)| r.is_ok());
        let flushed = if applied_any {
            flush(&db, durability, log_file.as_ref(), &watermark)
        } else {
            Ok(())
        };
        match &flushed {
            Ok(()) => watermark.advance(seq),
            Err(e) => {
                tracing::error!(error = %e, "flushing the store failed: the store is poisoned and takes no more writes");
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
    db.flush().map_err(std::io::Error::other)?;
    if durability == Durability::Fsync
        && let Some(file) = log_file
    {
        file.sync_data()?;
    }
    Ok(())
}

/// Checks and applies one request atomically; returns the new version of each put.
fn apply(tree: &sled::Tree, series: &sled::Tree, writes: Vec<Write>, seq: u64) -> Outcome {
    let mut points = sled::Batch::default();
    let mut has_points = false;
    let mut batch = sled::Batch::default();
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
                let rkey = keys::record(collection, &id);
                let old: Option<Envelope> = match tree.get(&rkey)? {
                    Some(bytes) => Some(decode(&bytes, collection, &id)?),
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
                let old_unique: HashSet<&Vec<u8>> = old
                    .iter()
                    .flat_map(|e| e.unique_keys.iter().map(|(_, _, k)| k))
                    .collect();
                for (name, value, ukey) in &unique_keys {
                    if old_unique.contains(ukey) {
                        continue;
                    }
                    let taken = claimed.contains(ukey)
                        || tree
                            .get(ukey)?
                            .is_some_and(|owner| owner.as_ref() != id.as_bytes());
                    if taken {
                        return Err(StorageError::Conflict {
                            field: name.clone(),
                            value: value.clone(),
                        });
                    }
                }
                if let Some(old) = &old {
                    for k in &old.index_keys {
                        batch.remove(k.as_slice());
                    }
                    for (_, _, k) in &old.unique_keys {
                        batch.remove(k.as_slice());
                    }
                }
                count_changes(
                    &mut counts,
                    old.as_ref().map_or(&[][..], |o| &o.index_keys[..]),
                    &index_keys,
                );
                for k in &index_keys {
                    batch.insert(k.as_slice(), &[] as &[u8]);
                }
                for (_, _, k) in &unique_keys {
                    batch.insert(k.as_slice(), id.as_bytes());
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
                batch.insert(rkey, encode(&envelope)?);
                versions.push(version);
            }
            Write::Remove { collection, id } => {
                let rkey = keys::record(collection, &id);
                if let Some(bytes) = tree.get(&rkey)? {
                    let old: Envelope = decode(&bytes, collection, &id)?;
                    count_changes(&mut counts, &old.index_keys, &[]);
                    for k in &old.index_keys {
                        batch.remove(k.as_slice());
                    }
                    for (_, _, k) in &old.unique_keys {
                        batch.remove(k.as_slice());
                    }
                    batch.remove(rkey);
                }
                versions.push(0);
            }
            Write::Point { key, value } => {
                points.insert(key, value);
                has_points = true;
                versions.push(0);
            }
            Write::RemovePoints { keys } => {
                for key in keys {
                    points.remove(key);
                }
                has_points = true;
                versions.push(0);
            }
            Write::Meta { name, value } => {
                batch.insert(keys::meta(&name), value);
                versions.push(0);
            }
        }
    }
    for (key, delta) in counts {
        if delta == 0 {
            continue;
        }
        let current = tree
            .get(&key)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let next = (current as i64).saturating_add(delta).max(0) as u64;
        batch.insert(key, &next.to_be_bytes());
    }
    tree.apply_batch(batch)?;
    if has_points {
        series.apply_batch(points)?;
    }
    Ok(versions)
}

/// Adds to `counts` the scope-count changes of replacing the ordered keys
/// among `old` by those among `new`.
fn count_changes(counts: &mut HashMap<Vec<u8>, i64>, old: &[Vec<u8>], new: &[Vec<u8>]) {
    let ordered = |keys: &[Vec<u8>]| -> HashSet<Vec<u8>> {
        keys.iter()
            .filter(|k| k.first() == Some(&keys::ORDERED))
            .cloned()
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
