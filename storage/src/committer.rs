//! The single writer: group commit over one sled tree.
//!
//! Callers send a request (a list of [`Write`]s applied atomically) over a
//! channel. The committer thread takes up to [`MAX_GROUP`] waiting requests,
//! checks and applies each as one sled batch (so one failing request does
//! not sink the others), flushes once, and only then answers every caller.
//! Being the only writer, it can check constraints without transactions:
//! nothing else changes the tree between its read and its write. sled's
//! asynchronous flush is not used: it deadlocks under concurrency in 0.34.7.

use std::collections::HashSet;
use std::fs::File;
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::record::{Envelope, Write, decode, encode};
use crate::{Durability, StorageError, keys};

pub(crate) const MAX_GROUP: usize = 256;

pub(crate) type Outcome = Result<Vec<u64>, StorageError>;

pub(crate) struct Request {
    pub writes: Vec<Write>,
    pub reply: oneshot::Sender<Outcome>,
}

pub(crate) fn spawn(
    db: sled::Db,
    tree: sled::Tree,
    series: sled::Tree,
    durability: Durability,
    log_file: Option<File>,
) -> (mpsc::Sender<Request>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Request>();
    let handle = std::thread::Builder::new()
        .name("warden-committer".into())
        .spawn(move || run(db, tree, series, durability, log_file, rx))
        .expect("spawning the committer thread must succeed at startup");
    (tx, handle)
}

fn run(
    db: sled::Db,
    tree: sled::Tree,
    series: sled::Tree,
    durability: Durability,
    log_file: Option<File>,
    rx: mpsc::Receiver<Request>,
) {
    let mut group: Vec<(oneshot::Sender<Outcome>, Outcome)> = Vec::with_capacity(MAX_GROUP);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(req) = next.take() {
            let outcome = apply(&tree, &series, req.writes);
            group.push((req.reply, outcome));
            if group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        let applied_any = group.iter().any(|(_, r)| r.is_ok());
        let flushed = if applied_any {
            flush(&db, durability, log_file.as_ref())
        } else {
            Ok(())
        };
        for (reply, outcome) in group.drain(..) {
            let answer = match (&flushed, outcome) {
                (Err(e), Ok(_)) => Err(StorageError::Io(std::io::Error::new(
                    e.kind(),
                    e.to_string(),
                ))),
                (_, outcome) => outcome,
            };
            if let Err(Err(e)) = reply.send(answer) {
                tracing::warn!(error = %e, "a write nobody waited for failed");
            }
        }
    }
    let _ = flush(&db, durability, log_file.as_ref());
}

fn flush(db: &sled::Db, durability: Durability, log_file: Option<&File>) -> std::io::Result<()> {
    db.flush().map_err(std::io::Error::other)?;
    if durability == Durability::Fsync
        && let Some(file) = log_file
    {
        file.sync_data()?;
    }
    Ok(())
}

/// Checks and applies one request atomically; returns the new version of each put.
fn apply(tree: &sled::Tree, series: &sled::Tree, writes: Vec<Write>) -> Outcome {
    let mut points = sled::Batch::default();
    let mut has_points = false;
    let mut batch = sled::Batch::default();
    let mut versions = Vec::with_capacity(writes.len());
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
    tree.apply_batch(batch)?;
    if has_points {
        series.apply_batch(points)?;
    }
    Ok(versions)
}
