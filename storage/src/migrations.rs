//! Store-level migrations: changes to the key layout or the envelope that
//! every record shares (a change to one type's body is a new
//! [`Versioned`](crate::Versioned) layout instead, upgraded on read).
//!
//! Each migration reads one space as it is and returns changes. In the
//! records space the changes and the new schema stamp are applied as one
//! atomic batch and flushed, so a crash leaves the store either before or
//! after a step, never half-way, and re-opening runs exactly the steps not
//! yet stamped. A step in the series space is applied, flushed, then
//! stamped: such steps must be idempotent (they only add derived keys), so
//! that one interrupted before its stamp simply runs again.
//! A store stamped newer than this build is refused.

use crate::engine::{Entry, Space};
use crate::record::{Envelope, EnvelopeV1, decode, encode};
use crate::{StorageError, keys};

/// One change a migration makes.
#[allow(dead_code)] // `Remove` is for migrations that drop keys; the current ones only rewrite.
pub(crate) enum Change {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

/// Entries of the records space in key order.
pub(crate) type Entries<'a> = &'a mut dyn Iterator<Item = Result<Entry, StorageError>>;

/// Brings the records space from schema `from` to `from + 1`.
pub(crate) struct Migration {
    pub from: u32,
    pub what: &'static str,
    pub space: Space,
    pub run: fn(Entries<'_>, &mut Vec<Change>) -> Result<(), StorageError>,
}

/// Every migration, in order; `keys::SCHEMA_VERSION` is the last `from + 1`.
pub(crate) const ALL: &[Migration] = &[
    Migration {
        from: 0,
        what: "stamp the schema",
        space: Space::Records,
        run: |_, _| Ok(()),
    },
    Migration {
        from: 1,
        what: "envelopes carry the body's layout and the commit group",
        space: Space::Records,
        run: envelopes_with_layout,
    },
    Migration {
        from: 2,
        what: "every time-series point gets a time-index entry",
        space: Space::Series,
        run: series_time_index,
    },
];

/// Schema 2 → 3: the time index of every stored point (idempotent).
fn series_time_index(entries: Entries<'_>, out: &mut Vec<Change>) -> Result<(), StorageError> {
    for entry in entries {
        let (key, _) = entry?;
        if key.starts_with(&[0, 0]) {
            continue;
        }
        if let Some(at) = crate::series::time_of_point_key(&key) {
            out.push(Change::Put(
                crate::series::time_index_key(at, &key),
                Vec::new(),
            ));
        }
    }
    Ok(())
}

/// Schema 1 → 2: every record envelope gains `layout` (1: every body of
/// schema 1 is its type's first layout) and `seq` (0: durable).
fn envelopes_with_layout(entries: Entries<'_>, out: &mut Vec<Change>) -> Result<(), StorageError> {
    for entry in entries {
        let (key, value) = entry?;
        if key.first() != Some(&keys::RECORD) {
            continue;
        }
        let old: EnvelopeV1 = decode(&value, "envelope", &String::from_utf8_lossy(&key))?;
        let new = Envelope {
            version: old.version,
            seq: 0,
            layout: 1,
            index_keys: old.index_keys,
            unique_keys: old.unique_keys,
            body: old.body,
        };
        out.push(Change::Put(key, encode(&new)?));
    }
    Ok(())
}

pub(crate) fn read_schema(tree: &sled::Tree) -> Result<u32, StorageError> {
    Ok(match tree.get(keys::meta(keys::SCHEMA_KEY))? {
        Some(v) if v.len() == 4 => u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
        _ => 0,
    })
}

/// Brings the tree to `target`: a new store is stamped directly; an older
/// one runs its migrations in order, each atomic with its stamp.
pub(crate) fn run(
    db: &sled::Db,
    tree: &sled::Tree,
    series: &sled::Tree,
    migrations: &[Migration],
    target: u32,
) -> Result<(), StorageError> {
    let mut version = read_schema(tree)?;
    if version > target {
        return Err(StorageError::SchemaTooNew {
            found: version,
            supported: target,
        });
    }
    if version == 0 && tree.is_empty() {
        tree.insert(keys::meta(keys::SCHEMA_KEY), &target.to_be_bytes())?;
        db.flush()?;
        return Ok(());
    }
    while version < target {
        let step = migrations
            .iter()
            .find(|m| m.from == version)
            .ok_or_else(|| StorageError::Engine(format!("no migration from schema {version}")))?;
        let space = match step.space {
            Space::Records => tree,
            Space::Series => series,
        };
        let mut changes = Vec::new();
        let mut entries = space.iter().map(|item| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(Into::into)
        });
        (step.run)(&mut entries, &mut changes)?;
        let mut batch = sled::Batch::default();
        let n = changes.len();
        for change in changes {
            match change {
                Change::Put(k, v) => batch.insert(k, v),
                Change::Remove(k) => batch.remove(k),
            }
        }
        let stamp = (keys::meta(keys::SCHEMA_KEY), (version + 1).to_be_bytes());
        if step.space == Space::Records {
            batch.insert(stamp.0, &stamp.1);
            tree.apply_batch(batch)?;
        } else {
            space.apply_batch(batch)?;
            db.flush()?;
            tree.insert(stamp.0, &stamp.1)?;
        }
        db.flush()?;
        tracing::info!(
            from = version,
            to = version + 1,
            changes = n,
            what = step.what,
            "migrated the store"
        );
        version += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rename(entries: Entries<'_>, out: &mut Vec<Change>) -> Result<(), StorageError> {
        for entry in entries {
            let (k, v) = entry?;
            if k == b"legacy" {
                out.push(Change::Remove(k));
                out.push(Change::Put(b"current".to_vec(), v));
            }
        }
        Ok(())
    }

    fn fail(_: Entries<'_>, out: &mut Vec<Change>) -> Result<(), StorageError> {
        out.push(Change::Put(b"half".to_vec(), b"way".to_vec()));
        Err(StorageError::Engine("the step fails".into()))
    }

    #[test]
    fn steps_run_in_order_atomically_once_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree(keys::MAIN_TREE).unwrap();
        tree.insert(b"legacy", b"1").unwrap();
        tree.insert(keys::meta(keys::SCHEMA_KEY), &1u32.to_be_bytes())
            .unwrap();
        let steps = [
            Migration {
                from: 1,
                what: "rename",
                space: Space::Records,
                run: rename,
            },
            Migration {
                from: 2,
                what: "fail",
                space: Space::Records,
                run: fail,
            },
        ];
        // The second step fails: the first stays done, the second left nothing.
        let series = db.open_tree(keys::SERIES_TREE).unwrap();
        assert!(run(&db, &tree, &series, &steps, 3).is_err());
        assert_eq!(read_schema(&tree).unwrap(), 2);
        assert_eq!(tree.get(b"current").unwrap().unwrap().as_ref(), b"1");
        assert!(tree.get(b"legacy").unwrap().is_none());
        assert!(tree.get(b"half").unwrap().is_none());
        // Re-running does only what is not stamped yet.
        run(&db, &tree, &series, &steps[..1], 2).unwrap();
        assert_eq!(tree.get(b"current").unwrap().unwrap().as_ref(), b"1");
        assert!(matches!(
            run(&db, &tree, &series, &[], 1),
            Err(StorageError::SchemaTooNew {
                found: 2,
                supported: 1
            })
        ));
    }
}
