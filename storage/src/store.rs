//! [`Store`]: opening, reads, list queries, commits and shutdown.

use std::cmp::Ordering;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

use crate::committer::{self, Request};
use crate::record::{Envelope, Write, decode};
use crate::{BlobStore, Record, StorageError, keys};

/// How far a successful commit is guaranteed to have gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// sled's `flush()`: written to the OS; survives a killed process.
    #[default]
    Flush,
    /// `flush()` plus `fdatasync` of sled's log once per group: survives power loss.
    Fsync,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
}

/// A schema migration: brings the tree from `from` to `from + 1`.
pub struct Migration {
    pub from: u32,
    pub run: fn(&sled::Tree) -> Result<(), StorageError>,
}

/// Where a list looks: the whole collection, or one value of one index.
pub enum Scope<'a> {
    All,
    Index(&'a str, &'a str),
}

/// Orders two records for a list.
pub type SortFn<'a, T> = &'a (dyn Fn(&T, &T) -> Ordering + Sync);

pub struct ListQuery<'a, T> {
    pub scope: Scope<'a>,
    pub include_deleted: bool,
    pub filter: Option<&'a (dyn Fn(&T) -> bool + Sync)>,
    pub sort: Option<SortFn<'a, T>>,
    pub offset: usize,
    pub limit: usize,
}

impl<T> Default for ListQuery<'_, T> {
    fn default() -> Self {
        ListQuery {
            scope: Scope::All,
            include_deleted: false,
            filter: None,
            sort: None,
            offset: 0,
            limit: usize::MAX,
        }
    }
}

/// One page of a list and the number of records that matched in all.
#[derive(Debug)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub total: usize,
}

struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    writer: Mutex<Option<mpsc::Sender<Request>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    blobs: BlobStore,
    series: sled::Tree,
    data_dir: PathBuf,
}

/// Cheap to clone; all clones share one database and one committer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    pub fn open(config: &StoreConfig) -> Result<Store, StorageError> {
        Self::open_with_migrations(config, &[])
    }

    /// Opens `<data_dir>/db` and `<data_dir>/blobs`, then runs every
    /// migration from the stored schema version up to [`keys::SCHEMA_VERSION`].
    pub fn open_with_migrations(
        config: &StoreConfig,
        migrations: &[Migration],
    ) -> Result<Store, StorageError> {
        let db_path = config.data_dir.join("db");
        std::fs::create_dir_all(&config.data_dir)?;
        let db = sled::Config::new()
            .path(&db_path)
            .flush_every_ms(Some(1000))
            .open()?;
        let tree = db.open_tree(keys::MAIN_TREE)?;
        migrate(&db, &tree, migrations, keys::SCHEMA_VERSION)?;
        let log_file = File::open(db_path.join("db")).ok();
        let series = db.open_tree(keys::SERIES_TREE)?;
        let (tx, handle) = committer::spawn(
            db.clone(),
            tree.clone(),
            series.clone(),
            config.durability,
            log_file,
        );
        let blobs = BlobStore::open(config.data_dir.join("blobs"))?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                tree,
                writer: Mutex::new(Some(tx)),
                committer: Mutex::new(Some(handle)),
                blobs,
                series,
                data_dir: config.data_dir.clone(),
            }),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    /// A separate sled tree for data with its own layout (time series, ...).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StorageError> {
        Ok(self.inner.db.open_tree(name)?)
    }

    pub fn schema_version(&self) -> Result<u32, StorageError> {
        read_schema(&self.inner.tree)
    }

    /// Queues `writes` without waiting: for state nobody was promised
    /// (telemetry). Still atomic, still in order with every other write.
    pub fn commit_nowait(&self, writes: Vec<Write>) -> Result<(), StorageError> {
        let (reply, _) = oneshot::channel();
        let guard = self
            .inner
            .writer
            .lock()
            .expect("writer lock is never poisoned: no code panics holding it");
        let sender = guard.as_ref().ok_or(StorageError::Closed)?;
        sender
            .send(Request { writes, reply })
            .map_err(|_| StorageError::Closed)
    }

    pub(crate) fn series_tree(&self) -> &sled::Tree {
        &self.inner.series
    }

    /// Applies `writes` atomically and durably; returns each put's new version.
    pub async fn commit(&self, writes: Vec<Write>) -> Result<Vec<u64>, StorageError> {
        let (reply, answer) = oneshot::channel();
        {
            let guard = self
                .inner
                .writer
                .lock()
                .expect("writer lock is never poisoned: no code panics holding it");
            let sender = guard.as_ref().ok_or(StorageError::Closed)?;
            sender
                .send(Request { writes, reply })
                .map_err(|_| StorageError::Closed)?;
        }
        answer.await.map_err(|_| StorageError::Closed)?
    }

    /// Inserts a record that must not exist; returns it.
    pub async fn insert<T: Record>(&self, record: T) -> Result<T, StorageError> {
        self.commit(vec![Write::insert(&record)?]).await?;
        Ok(record)
    }

    /// Replaces a record unconditionally (the caller is its only writer).
    pub async fn put<T: Record>(&self, record: &T) -> Result<u64, StorageError> {
        Ok(self.commit(vec![Write::put(record, None)?]).await?[0])
    }

    /// Read-modify-write with optimistic retries, for records without an actor.
    /// `change` returns `Ok(None)` to leave the record as it is. Returns the
    /// record as stored, or `None` when it does not exist.
    pub async fn update<T: Record, E: From<StorageError>>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut T) -> Result<Option<()>, E>,
    ) -> Result<Option<T>, E> {
        loop {
            let Some((mut record, version)) = self.get_versioned::<T>(id)? else {
                return Ok(None);
            };
            if change(&mut record)?.is_none() {
                return Ok(Some(record));
            }
            match self.commit(vec![Write::put(&record, Some(version))?]).await {
                Ok(_) => return Ok(Some(record)),
                Err(StorageError::VersionMismatch { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub async fn remove<T: Record>(&self, id: &str) -> Result<(), StorageError> {
        self.commit(vec![Write::remove::<T>(id)]).await.map(|_| ())
    }

    pub fn get<T: Record>(&self, id: &str) -> Result<Option<T>, StorageError> {
        Ok(self.get_versioned(id)?.map(|(r, _)| r))
    }

    pub fn get_versioned<T: Record>(&self, id: &str) -> Result<Option<(T, u64)>, StorageError> {
        match self.inner.tree.get(keys::record(T::COLLECTION, id))? {
            None => Ok(None),
            Some(bytes) => {
                let env: Envelope = decode(&bytes, T::COLLECTION, id)?;
                Ok(Some((decode(&env.body, T::COLLECTION, id)?, env.version)))
            }
        }
    }

    /// The live record holding `value` under a unique constraint.
    pub fn get_by_unique<T: Record>(
        &self,
        constraint: &str,
        value: &str,
    ) -> Result<Option<T>, StorageError> {
        match self
            .inner
            .tree
            .get(keys::unique(T::COLLECTION, constraint, value))?
        {
            None => Ok(None),
            Some(id) => self.get(&String::from_utf8_lossy(&id)),
        }
    }

    /// Ids of the records with `value` under `index`, in id order.
    pub fn ids_by_index<T: Record>(
        &self,
        index: &str,
        value: &str,
    ) -> Result<Vec<String>, StorageError> {
        let prefix = keys::index_prefix(T::COLLECTION, index, value);
        let mut ids = Vec::new();
        for item in self.inner.tree.scan_prefix(&prefix).keys() {
            let key = item?;
            if let Some((id, _)) = keys::pop(&key[prefix.len()..]) {
                ids.push(String::from_utf8_lossy(&id).into_owned());
            }
        }
        Ok(ids)
    }

    /// The records with `value` under `index`, in id order.
    pub fn by_index<T: Record>(&self, index: &str, value: &str) -> Result<Vec<T>, StorageError> {
        let mut out = Vec::new();
        for id in self.ids_by_index::<T>(index, value)? {
            out.extend(self.get::<T>(&id)?);
        }
        Ok(out)
    }

    pub fn count<T: Record>(&self) -> usize {
        self.inner
            .tree
            .scan_prefix(keys::records(T::COLLECTION))
            .count()
    }

    /// Every record of the collection (including soft-deleted ones).
    pub fn all<T: Record>(&self) -> Result<Vec<T>, StorageError> {
        let prefix = keys::records(T::COLLECTION);
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix(&prefix) {
            let (key, bytes) = item?;
            let id = keys::pop(&key[prefix.len()..])
                .map(|(id, _)| String::from_utf8_lossy(&id).into_owned());
            let id = id.unwrap_or_default();
            let env: Envelope = decode(&bytes, T::COLLECTION, &id)?;
            out.push(decode(&env.body, T::COLLECTION, &id)?);
        }
        Ok(out)
    }

    /// Filter, sort and page a collection (soft-deleted records hidden
    /// unless asked for). Loads the scope into memory: scopes are tenants,
    /// whose collections are expected to stay in the thousands.
    pub fn list<T: Record>(&self, query: &ListQuery<'_, T>) -> Result<Listed<T>, StorageError> {
        let candidates = match query.scope {
            Scope::All => self.all::<T>()?,
            Scope::Index(index, value) => self.by_index::<T>(index, value)?,
        };
        let mut items: Vec<T> = candidates
            .into_iter()
            .filter(|r| query.include_deleted || !r.is_deleted())
            .filter(|r| query.filter.is_none_or(|f| f(r)))
            .collect();
        if let Some(sort) = query.sort {
            items.sort_by(|a, b| sort(a, b));
        }
        let total = items.len();
        let items = items
            .into_iter()
            .skip(query.offset)
            .take(query.limit)
            .collect();
        Ok(Listed { items, total })
    }

    /// Stops the committer after it has flushed everything sent so far.
    pub fn close(&self) {
        let sender = self
            .inner
            .writer
            .lock()
            .expect("writer lock is never poisoned")
            .take();
        drop(sender);
        if let Some(handle) = self
            .inner
            .committer
            .lock()
            .expect("committer lock is never poisoned")
            .take()
        {
            let _ = handle.join();
        }
    }
}

fn read_schema(tree: &sled::Tree) -> Result<u32, StorageError> {
    Ok(match tree.get(keys::meta(keys::SCHEMA_KEY))? {
        Some(v) if v.len() == 4 => u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
        _ => 0,
    })
}

/// Brings the tree to `target`: a new store is stamped directly; an older
/// one runs its migrations in order, each stamped and flushed as it ends.
fn migrate(
    db: &sled::Db,
    tree: &sled::Tree,
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
        version = target;
    }
    while version < target {
        if let Some(m) = migrations.iter().find(|m| m.from == version) {
            (m.run)(tree)?;
        }
        version += 1;
        tree.insert(keys::meta(keys::SCHEMA_KEY), &version.to_be_bytes())?;
        db.flush()?;
    }
    tree.insert(keys::meta(keys::SCHEMA_KEY), &version.to_be_bytes())?;
    db.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    struct Thing {
        id: String,
        org: String,
        name: String,
        deleted: bool,
    }

    impl Record for Thing {
        const COLLECTION: &'static str = "things";
        fn id(&self) -> &str {
            &self.id
        }
        fn indexes(&self) -> Vec<(&'static str, String)> {
            vec![("org", self.org.clone())]
        }
        fn uniques(&self) -> Vec<(&'static str, String)> {
            vec![("name", format!("{}/{}", self.org, self.name))]
        }
        fn is_deleted(&self) -> bool {
            self.deleted
        }
    }

    fn thing(id: &str, org: &str, name: &str) -> Thing {
        Thing {
            id: id.into(),
            org: org.into(),
            name: name.into(),
            deleted: false,
        }
    }

    fn open(dir: &Path) -> Store {
        Store::open(&StoreConfig {
            data_dir: dir.to_path_buf(),
            durability: Durability::Flush,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn insert_get_index_unique_and_soft_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.insert(thing("1", "a", "x")).await.unwrap();
        store.insert(thing("2", "a", "y")).await.unwrap();
        store.insert(thing("3", "b", "x")).await.unwrap();
        assert!(matches!(
            store.insert(thing("1", "z", "q")).await,
            Err(StorageError::Conflict { .. })
        ));
        match store.insert(thing("4", "a", "x")).await {
            Err(StorageError::Conflict { field, value }) => {
                assert_eq!((field.as_str(), value.as_str()), ("name", "a/x"))
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(
            store.ids_by_index::<Thing>("org", "a").unwrap(),
            vec!["1", "2"]
        );
        assert_eq!(
            store
                .get_by_unique::<Thing>("name", "b/x")
                .unwrap()
                .unwrap()
                .id,
            "3"
        );

        // A renamed record frees its old unique value and moves its index.
        let renamed: Option<Thing> = store
            .update::<Thing, StorageError>("1", |t| {
                t.name = "w".into();
                t.org = "b".into();
                Ok(Some(()))
            })
            .await
            .unwrap();
        assert_eq!(renamed.unwrap().name, "w");
        assert_eq!(store.ids_by_index::<Thing>("org", "a").unwrap(), vec!["2"]);
        store.insert(thing("4", "a", "x")).await.unwrap();

        // Soft delete hides from lists and frees the unique value.
        store
            .update::<Thing, StorageError>("2", |t| {
                t.deleted = true;
                Ok(Some(()))
            })
            .await
            .unwrap();
        let listed = store
            .list(&ListQuery::<Thing> {
                scope: Scope::Index("org", "a"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            listed
                .items
                .iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>(),
            vec!["4"]
        );
        store.insert(thing("5", "a", "y")).await.unwrap();

        // Sort, filter, page.
        let by_name = |a: &Thing, b: &Thing| b.name.cmp(&a.name);
        let only_b = |t: &Thing| t.org == "b";
        let q = ListQuery {
            sort: Some(&by_name),
            filter: Some(&only_b),
            offset: 1,
            limit: 1,
            ..Default::default()
        };
        let page = store.list(&q).unwrap();
        assert_eq!(page.total, 2);
        assert_eq!(page.items[0].id, "1"); // x (3), then w (1)

        store.remove::<Thing>("4").await.unwrap();
        assert!(store.get::<Thing>("4").unwrap().is_none());
        store.insert(thing("6", "a", "x")).await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.insert(thing("1", "a", "x")).await.unwrap();
        let writes = vec![
            Write::insert(&thing("2", "a", "y")).unwrap(),
            Write::insert(&thing("3", "a", "x")).unwrap(),
        ];
        assert!(store.commit(writes).await.is_err());
        assert!(store.get::<Thing>("2").unwrap().is_none());
        assert!(
            store
                .get_by_unique::<Thing>("name", "a/y")
                .unwrap()
                .is_none()
        );
        assert_eq!(store.ids_by_index::<Thing>("org", "a").unwrap(), vec!["1"]);
    }

    #[tokio::test]
    async fn concurrent_writers_all_land_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            let mut tasks = Vec::new();
            for i in 0..200 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    store
                        .insert(thing(&i.to_string(), "a", &i.to_string()))
                        .await
                }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            store.close();
        }
        let store = open(dir.path());
        assert_eq!(store.count::<Thing>(), 200);
        assert_eq!(store.schema_version().unwrap(), keys::SCHEMA_VERSION);
    }

    #[test]
    fn migrations_run_in_order_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let db = sled::Config::new().path(&path).open().unwrap();
            let tree = db.open_tree(keys::MAIN_TREE).unwrap();
            tree.insert(b"legacy", b"1").unwrap();
            tree.insert(keys::meta(keys::SCHEMA_KEY), &0u32.to_be_bytes())
                .unwrap();
            fn rename(tree: &sled::Tree) -> Result<(), StorageError> {
                let v = tree.remove(b"legacy")?.expect("the fixture wrote it");
                tree.insert(b"current", v)?;
                Ok(())
            }
            migrate(
                &db,
                &tree,
                &[Migration {
                    from: 0,
                    run: rename,
                }],
                1,
            )
            .unwrap();
            assert!(tree.get(b"current").unwrap().is_some());
            assert_eq!(read_schema(&tree).unwrap(), 1);
            assert!(matches!(
                migrate(&db, &tree, &[], 0),
                Err(StorageError::SchemaTooNew {
                    found: 1,
                    supported: 0
                })
            ));
        }
    }
}
