//! [`Store`]: opening, reads, list queries, commits and shutdown.

use std::cmp::Ordering;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::engine::{Changes, CommitStats, Engine, Request, Scan, Space};
use crate::record::{EnvelopeRef, Write};
use crate::sled_engine::SledEngine;
use crate::versioned::decode_layout;
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
    /// For measuring what durability costs, never for data: a commit is
    /// acknowledged without a flush (sled flushes its log every second),
    /// so `kill -9` loses up to a second of acknowledged writes.
    Unflushed,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// The most memory sled's page cache may hold, in bytes (sled's own
    /// default is 1 GiB, which a busy store fills).
    pub cache_bytes: u64,
}

/// sled's page cache unless configured (`store_cache_mib`).
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

impl StoreConfig {
    /// A store in `data_dir` with the defaults: `flush` durability and a
    /// page cache of [`DEFAULT_CACHE_BYTES`].
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            durability: Durability::Flush,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// Where a list looks: the whole collection, or one value of one index.
pub enum Scope<'a> {
    All,
    /// A hash index's value.
    Index(&'a str, &'a str),
    /// A scope of an ordered index (live records only).
    Ordered(&'a str, &'a str),
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

/// A page of one scope of an ordered index (see [`Record::ordered`]).
#[derive(Debug, Clone)]
pub struct PageQuery<'a> {
    pub index: &'a str,
    pub scope: &'a str,
    /// Newest (largest sort key) first.
    pub descending: bool,
    /// Entries to pass over first (offset paging).
    pub skip: usize,
    /// Start strictly after this entry (cursor paging): the sort key and id
    /// of the last item of the previous page. Ties on the key go by id.
    pub after: Option<(&'a [u8], &'a str)>,
    pub limit: usize,
}

/// A [`PageQuery::after`] cursor that passes every entry whose sort key
/// is `sort` (a time), whatever its id: reading newest first, the empty id
/// sorts before every id, so "after" it is strictly older; oldest first,
/// an id above every id makes it strictly newer.
pub fn past(sort: &[u8], descending: bool) -> (&[u8], &'static str) {
    (sort, if descending { "" } else { "\u{10ffff}" })
}

/// What a page read found: the records, the scope's total, and each
/// record's sort key (for the next cursor).
#[derive(Debug)]
pub struct Paged<T> {
    pub items: Vec<(Vec<u8>, T)>,
    pub total: u64,
}

struct Inner {
    engine: Box<dyn Engine>,
    blobs: BlobStore,
    data_dir: PathBuf,
}

/// Cheap to clone; all clones share one engine and one committer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens `<data_dir>/db` and `<data_dir>/blobs`, bringing an older
    /// store to the current schema and refusing a newer one.
    pub fn open(config: &StoreConfig) -> Result<Store, StorageError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let engine = SledEngine::open(
            &config.data_dir.join("db"),
            config.durability,
            config.cache_bytes,
        )?;
        let blobs = BlobStore::open(config.data_dir.join("blobs"))?;
        Ok(Store {
            inner: Arc::new(Inner {
                engine: Box::new(engine),
                blobs,
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

    pub(crate) fn engine(&self) -> &dyn Engine {
        self.inner.engine.as_ref()
    }

    pub fn schema_version(&self) -> Result<u32, StorageError> {
        Ok(
            match self
                .engine()
                .get(Space::Records, &keys::meta(keys::SCHEMA_KEY))?
            {
                Some(v) if v.len() == 4 => u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                _ => 0,
            },
        )
    }

    /// Resolves with the cause once a failed flush has poisoned the store;
    /// the server then stops (PostgreSQL's answer to a failed fsync).
    pub fn poisoned(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        self.engine().watermark().poisoned()
    }

    /// Fault injection: the committer's next flush fails.
    pub fn inject_flush_failure(&self) {
        self.engine().watermark().fail_next_flush();
    }

    /// Fault injection: each flush waits `delay` first.
    pub fn inject_flush_delay(&self, delay: std::time::Duration) {
        self.engine().watermark().set_flush_delay(delay);
    }

    /// The change counter of a collection (see [`Changes`]).
    pub fn changes(&self, collection: &'static str) -> Changes {
        self.engine().watermark().watch(collection)
    }

    /// The committer's counters since the store was opened.
    pub fn commit_stats(&self) -> CommitStats {
        self.engine().watermark().stats()
    }

    /// Queues `writes` without waiting: for state nobody was promised
    /// (telemetry). Still atomic, still in order with every other write.
    /// Bounded: past [`MAX_NOWAIT_QUEUED`](crate::engine::MAX_NOWAIT_QUEUED)
    /// queued requests it answers `Unavailable` and counts the drop.
    pub fn commit_nowait(&self, writes: Vec<Write>) -> Result<(), StorageError> {
        let watermark = self.engine().watermark();
        watermark.check()?;
        if !watermark.reserve_nowait() {
            return Err(StorageError::Unavailable(
                "too many unacknowledged writes queued".into(),
            ));
        }
        let sent = self.engine().submit(Request {
            writes,
            reply: None,
            flush_only: false,
        });
        if sent.is_err() {
            watermark.release_nowait();
        }
        sent
    }

    /// Applies `writes` atomically and durably; returns each put's new version.
    pub async fn commit(&self, writes: Vec<Write>) -> Result<Vec<u64>, StorageError> {
        self.submit(writes)?.await
    }

    /// Queues `writes` now, in order with every other write, and returns
    /// what to await for them to be durable (each put's new version): an
    /// actor can go on with its next message and act on the outcome
    /// later, in order, without holding its mailbox for the flush.
    pub fn submit(
        &self,
        writes: Vec<Write>,
    ) -> Result<
        impl std::future::Future<Output = Result<Vec<u64>, StorageError>> + Send + 'static,
        StorageError,
    > {
        let (reply, answer) = oneshot::channel();
        self.engine().submit(Request {
            writes,
            reply: Some(reply),
            flush_only: false,
        })?;
        Ok(async move { answer.await.map_err(|_| StorageError::Closed)? })
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
        match self
            .engine()
            .get(Space::Records, &keys::record(T::COLLECTION, id))?
        {
            None => Ok(None),
            Some(bytes) => self.open_envelope::<T>(&bytes, id).map(Some),
        }
    }

    /// Decodes a stored envelope once its commit group is durable.
    fn open_envelope<T: Record>(&self, bytes: &[u8], id: &str) -> Result<(T, u64), StorageError> {
        let env = EnvelopeRef::read(bytes, T::COLLECTION, id)?;
        self.engine().watermark().wait(env.seq)?;
        let record =
            decode_layout::<T>(env.layout, env.body).map_err(|reason| StorageError::Decode {
                collection: T::COLLECTION,
                id: id.to_owned(),
                reason,
            })?;
        Ok((record, env.version))
    }

    /// The live record holding `value` under a unique constraint.
    pub fn get_by_unique<T: Record>(
        &self,
        constraint: &str,
        value: &str,
    ) -> Result<Option<T>, StorageError> {
        match self.engine().get(
            Space::Records,
            &keys::unique(T::COLLECTION, constraint, value),
        )? {
            None => Ok(None),
            Some(id) => self.get(&String::from_utf8_lossy(&id)),
        }
    }

    /// Entries whose keys start with `prefix`, in key order.
    pub(crate) fn scan_prefix(&self, space: Space, prefix: Vec<u8>) -> Scan<'_> {
        let end = prefix_end(&prefix);
        self.engine().range(space, Bound::Included(prefix), end)
    }

    /// Ids of the records with `value` under `index`, in id order.
    pub fn ids_by_index<T: Record>(
        &self,
        index: &str,
        value: &str,
    ) -> Result<Vec<String>, StorageError> {
        let prefix = keys::index_prefix(T::COLLECTION, index, value);
        let mut ids = Vec::new();
        for item in self.scan_prefix(Space::Records, prefix.clone()) {
            let (key, _) = item?;
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
        self.scan_prefix(Space::Records, keys::records(T::COLLECTION))
            .count()
    }

    /// Every record of the collection (including soft-deleted ones).
    pub fn all<T: Record>(&self) -> Result<Vec<T>, StorageError> {
        let prefix = keys::records(T::COLLECTION);
        let mut out = Vec::new();
        for item in self.scan_prefix(Space::Records, prefix.clone()) {
            let (key, bytes) = item?;
            let id = keys::pop(&key[prefix.len()..])
                .map(|(id, _)| String::from_utf8_lossy(&id).into_owned())
                .unwrap_or_default();
            out.push(self.open_envelope::<T>(&bytes, &id)?.0);
        }
        Ok(out)
    }

    /// One page of a scope of an ordered index, read in key order: the
    /// cost is the page (plus `skip` keys passed over), never the
    /// collection; the total is the scope's maintained count.
    pub fn page<T: Record>(&self, q: &PageQuery<'_>) -> Result<Paged<T>, StorageError> {
        let prefix = keys::ordered_scope(T::COLLECTION, q.index, q.scope);
        let total = self.scope_count::<T>(q.index, q.scope)?;
        let end = prefix_end(&prefix);
        let cursor = q
            .after
            .map(|(sort, id)| keys::ordered(T::COLLECTION, q.index, q.scope, sort, id));
        let (from, to) = match (cursor, q.descending) {
            (None, _) => (Bound::Included(prefix.clone()), end),
            (Some(after), false) => (Bound::Excluded(after), end),
            (Some(before), true) => (Bound::Included(prefix.clone()), Bound::Excluded(before)),
        };
        let scan = self.engine().range(Space::Records, from, to);
        let scan: Scan<'_> = if q.descending {
            Box::new(scan.rev())
        } else {
            scan
        };
        // Small: callers may keep the vector (a full page is rare).
        let mut items = Vec::with_capacity(q.limit.min(64));
        for entry in ordered_ids(prefix.len(), scan).skip(q.skip).take(q.limit) {
            let (sort, id) = entry?;
            if let Some(record) = self.get::<T>(&id)? {
                items.push((sort, record));
            }
        }
        Ok(Paged { items, total })
    }

    /// The number of live records in one scope of an ordered index.
    pub fn scope_count<T: Record>(&self, index: &str, scope: &str) -> Result<u64, StorageError> {
        Ok(self
            .engine()
            .get(Space::Records, &keys::count(T::COLLECTION, index, scope))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Every non-empty scope of an ordered index that starts with
    /// `scope_prefix`, with its count: a group-by read from the counters
    /// the committer keeps, one key per scope (never the records).
    pub fn scope_counts<T: Record>(
        &self,
        index: &str,
        scope_prefix: &str,
    ) -> Result<Vec<(String, u64)>, StorageError> {
        let prefix = keys::counts_with_prefix(T::COLLECTION, index, scope_prefix);
        let base = keys::counts_with_prefix(T::COLLECTION, index, "").len();
        let mut out = Vec::new();
        for entry in self.scan_prefix(Space::Records, prefix) {
            let (key, value) = entry?;
            let Some((scope, _)) = key.get(base..).and_then(keys::pop) else {
                continue;
            };
            let n = <[u8; 8]>::try_from(value.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if n > 0 {
                out.push((String::from_utf8_lossy(&scope).into_owned(), n));
            }
        }
        Ok(out)
    }

    /// The sort key and id of each entry of a scope of an ordered index,
    /// in sort order, read as the caller goes.
    fn scope_entries<T: Record>(
        &self,
        index: &str,
        scope: &str,
    ) -> impl Iterator<Item = Result<(Vec<u8>, String), StorageError>> + '_ {
        let prefix = keys::ordered_scope(T::COLLECTION, index, scope);
        let prefix_len = prefix.len();
        ordered_ids(prefix_len, self.scan_prefix(Space::Records, prefix))
    }

    /// Ids of every record in a scope of an ordered index, in sort order.
    pub fn ids_in_scope<T: Record>(
        &self,
        index: &str,
        scope: &str,
    ) -> Result<Vec<String>, StorageError> {
        self.scope_entries::<T>(index, scope)
            .map(|entry| entry.map(|(_, id)| id))
            .collect()
    }

    /// Every record in a scope of an ordered index, in sort order.
    pub fn in_scope<T: Record>(&self, index: &str, scope: &str) -> Result<Vec<T>, StorageError> {
        let mut records = Vec::new();
        for id in self.ids_in_scope::<T>(index, scope)? {
            records.extend(self.get::<T>(&id)?);
        }
        Ok(records)
    }

    /// Ids of up to `limit` records of a scope of an ordered index whose
    /// sort key is at most `max_key`, smallest first: what a sweep of an
    /// expiry index reads (the expired, never the rest).
    pub fn ids_up_to<T: Record>(
        &self,
        index: &str,
        scope: &str,
        max_key: &[u8],
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let mut ids = Vec::new();
        for entry in self.scope_entries::<T>(index, scope) {
            let (sort, id) = entry?;
            if sort.as_slice() > max_key || ids.len() >= limit {
                break;
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// The sort key and id of up to `limit` entries of a scope of an
    /// ordered index whose sort key lies in `[low, high)` (byte order),
    /// from either end: a range read (events of a type within a time
    /// window) that touches only the entries it returns.
    pub fn ids_between<T: Record>(
        &self,
        index: &str,
        scope: &str,
        low: &[u8],
        high: &[u8],
        descending: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, String)>, StorageError> {
        let prefix_len = keys::ordered_scope(T::COLLECTION, index, scope).len();
        // The empty id sorts before every id under the same sort key.
        let from = keys::ordered(T::COLLECTION, index, scope, low, "");
        let to = keys::ordered(T::COLLECTION, index, scope, high, "");
        let scan = self
            .engine()
            .range(Space::Records, Bound::Included(from), Bound::Excluded(to));
        let scan: Scan<'_> = if descending {
            Box::new(scan.rev())
        } else {
            scan
        };
        ordered_ids(prefix_len, scan).take(limit).collect()
    }

    /// The largest record id of a collection (ids compared as bytes).
    pub fn last_id<T: Record>(&self) -> Result<Option<String>, StorageError> {
        let prefix = keys::records(T::COLLECTION);
        match self.scan_prefix(Space::Records, prefix.clone()).next_back() {
            None => Ok(None),
            Some(entry) => {
                let (key, _) = entry?;
                Ok(keys::pop(&key[prefix.len()..])
                    .map(|(id, _)| String::from_utf8_lossy(&id).into_owned()))
            }
        }
    }

    /// Record ids of a collection from `after` (exclusive) on, in byte
    /// order, at most `limit`: a tail of a log whose ids rise.
    pub fn ids_after<T: Record>(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let prefix = keys::records(T::COLLECTION);
        let end = prefix_end(&prefix);
        let scan = self.engine().range(
            Space::Records,
            Bound::Excluded(keys::record(T::COLLECTION, after)),
            end,
        );
        let mut ids = Vec::new();
        for entry in scan.take(limit) {
            let (key, _) = entry?;
            if let Some((id, _)) = keys::pop(&key[prefix.len()..]) {
                ids.push(String::from_utf8_lossy(&id).into_owned());
            }
        }
        Ok(ids)
    }

    /// A metadata value written by [`Write::Meta`].
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.engine().get(Space::Records, &keys::meta(name))
    }

    /// Re-indexes a collection once when its [`Record::INDEX_VERSION`] is
    /// newer than the store's: every record is written again (in its
    /// current layout, with its current indexes and counts), then the
    /// version is stamped. Returns how many records were rewritten.
    pub async fn ensure_indexes<T: Record>(&self) -> Result<usize, StorageError> {
        let meta = keys::meta(&format!("index_version/{}", T::COLLECTION));
        let stored = self
            .engine()
            .get(Space::Records, &meta)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
            .map_or(0, u32::from_be_bytes);
        if stored >= T::INDEX_VERSION {
            return Ok(0);
        }
        let prefix = keys::records(T::COLLECTION);
        let mut ids = Vec::new();
        for item in self.scan_prefix(Space::Records, prefix.clone()) {
            let (key, _) = item?;
            if let Some((id, _)) = keys::pop(&key[prefix.len()..]) {
                ids.push(String::from_utf8_lossy(&id).into_owned());
            }
        }
        let mut rewritten = 0;
        for chunk in ids.chunks(256) {
            let mut writes = Vec::with_capacity(chunk.len());
            for id in chunk {
                if let Some((record, version)) = self.get_versioned::<T>(id)? {
                    writes.push(Write::put(&record, Some(version))?);
                }
            }
            rewritten += writes.len();
            self.commit(writes).await?;
        }
        self.commit(vec![Write::Meta {
            name: format!("index_version/{}", T::COLLECTION),
            value: T::INDEX_VERSION.to_be_bytes().to_vec(),
        }])
        .await?;
        tracing::info!(
            collection = T::COLLECTION,
            records = rewritten,
            "re-indexed"
        );
        Ok(rewritten)
    }

    /// Filter, sort and page a collection (soft-deleted records hidden
    /// unless asked for). Loads the scope into memory: scopes are tenants,
    /// whose collections are expected to stay in the thousands.
    pub fn list<T: Record>(&self, query: &ListQuery<'_, T>) -> Result<Listed<T>, StorageError> {
        let candidates = match query.scope {
            Scope::All => self.all::<T>()?,
            Scope::Index(index, value) => self.by_index::<T>(index, value)?,
            Scope::Ordered(index, scope) => self.in_scope::<T>(index, scope)?,
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
        self.engine().close();
    }
}

/// The sort key and record id of each entry of a scan of one scope of an
/// ordered index (whose keys all start with `prefix_len` bytes of scope).
fn ordered_ids<'a>(
    prefix_len: usize,
    scan: Scan<'a>,
) -> impl Iterator<Item = Result<(Vec<u8>, String), StorageError>> + 'a {
    scan.filter_map(move |entry| match entry {
        Err(e) => Some(Err(e)),
        Ok((key, _)) => {
            let (sort, rest) = keys::pop(key.get(prefix_len..)?)?;
            let (id, _) = keys::pop(rest)?;
            Some(Ok((sort, String::from_utf8_lossy(&id).into_owned())))
        }
    })
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
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

    crate::first_layout!(Thing);

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
        fn ordered(&self) -> Vec<(&'static str, String, Vec<u8>)> {
            // By the first letter only, so that ties happen.
            vec![(
                "by_name",
                self.org.clone(),
                self.name.as_bytes()[..1].to_vec(),
            )]
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
        Store::open(&StoreConfig::new(dir.to_path_buf())).unwrap()
    }

    /// Requests of one commit group see each other's writes (the group is
    /// one sled batch): of many concurrent inserts of one unique name
    /// exactly one wins, a refused request leaves none of its writes, and
    /// the scope count matches what was stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_group_sees_its_own_writes_and_drops_refused_requests() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                // Two writes per request: a free name, then the contested one.
                let free =
                    Write::insert(&thing(&format!("f{i}"), "a", &format!("free{i}"))).unwrap();
                let contested = Write::insert(&thing(&format!("c{i}"), "a", "same")).unwrap();
                store.commit(vec![free, contested]).await.is_ok()
            }));
        }
        let mut won = 0;
        for t in tasks {
            won += usize::from(t.await.unwrap());
        }
        assert_eq!(won, 1, "exactly one request may claim the name");
        assert_eq!(store.count::<Thing>(), 2, "the winner's two records only");
        let stats = store.commit_stats();
        assert!(stats.requests >= 64);
        let page = store
            .page::<Thing>(&PageQuery {
                index: "by_name",
                scope: "a",
                descending: false,
                skip: 0,
                after: None,
                limit: 100,
            })
            .unwrap();
        assert_eq!(page.total, 2);
        assert_eq!(page.items.len(), 2);
    }

    /// Unacknowledged writes are flushed lazily but never left behind: a
    /// reader that meets one asks for the flush and gets the record; a
    /// steady stream of them is still flushed within the deferral bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_flushes_serve_readers_and_keep_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .commit_nowait(vec![Write::insert(&thing("1", "a", "x")).unwrap()])
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let read = loop {
            let s = store.clone();
            let got = tokio::task::spawn_blocking(move || s.get::<Thing>("1"))
                .await
                .unwrap()
                .unwrap();
            if got.is_some() || std::time::Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        };
        assert_eq!(read.unwrap().name, "x");
        // 100 writes over ~500 ms, nobody waiting: far fewer flushes than
        // groups, yet at least one per deferral period.
        let before = store.commit_stats();
        for i in 0..100 {
            store
                .commit_nowait(vec![
                    Write::insert(&thing(&format!("s{i}"), "b", &format!("n{i}"))).unwrap(),
                ])
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(crate::sled_engine::DEFERRED_FLUSH * 3).await;
        let after = store.commit_stats();
        let flushes = after.flushes - before.flushes;
        assert!(
            flushes >= 3,
            "the deferral bound flushes a steady stream: {flushes}"
        );
        assert!(flushes < 60, "one flush per group would be ~100: {flushes}");
        assert_eq!(store.count::<Thing>(), 101);
    }

    /// A watched collection's counter moves with each commit that changes
    /// it, and only then.
    #[tokio::test]
    async fn change_counters_follow_their_collection() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let things = store.changes(Thing::COLLECTION);
        let others = store.changes("others");
        assert_eq!(things.count(), 0);
        store.insert(thing("1", "a", "x")).await.unwrap();
        assert_eq!(things.count(), 1, "counted before the writer is answered");
        store.remove::<Thing>("1").await.unwrap();
        assert_eq!(things.count(), 2);
        assert!(store.insert(thing("2", "a", "y")).await.is_ok());
        assert!(
            store
                .commit(vec![Write::insert(&thing("2", "a", "z")).unwrap()])
                .await
                .is_err()
        );
        assert_eq!(things.count(), 3, "a refused commit changes nothing");
        assert_eq!(others.count(), 0);
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
        // The same through the ordered index's scope (live records only).
        let ordered = store
            .list(&ListQuery::<Thing> {
                scope: Scope::Ordered("by_name", "a"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(ordered.items.len(), 1);
        assert_eq!(ordered.items[0].id, "4");
        assert_eq!(
            store.ids_in_scope::<Thing>("by_name", "b").unwrap(),
            vec!["1", "3"]
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

    /// `Thing` as a later build would have it: one more field. Its first
    /// layout is the `Thing` above, upgraded on read.
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    struct ThingV2 {
        id: String,
        org: String,
        name: String,
        deleted: bool,
        colour: String,
    }

    impl crate::Versioned for ThingV2 {
        const VERSION: u32 = 2;
        type Previous = Thing;
        fn upgrade(old: Thing) -> ThingV2 {
            ThingV2 {
                id: old.id,
                org: old.org,
                name: old.name,
                deleted: old.deleted,
                colour: "unknown".into(),
            }
        }
    }

    impl Record for ThingV2 {
        const COLLECTION: &'static str = "things";
        fn id(&self) -> &str {
            &self.id
        }
        fn indexes(&self) -> Vec<(&'static str, String)> {
            vec![("org", self.org.clone())]
        }
    }

    #[tokio::test]
    async fn an_added_field_reads_old_bytes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            store.insert(thing("1", "a", "x")).await.unwrap();
            store.close();
        }
        let store = open(dir.path());
        let upgraded: ThingV2 = store.get("1").unwrap().unwrap();
        assert_eq!(upgraded.colour, "unknown");
        assert_eq!(upgraded.name, "x");
        // Written back in the new layout, read in the new layout; the old
        // build's type cannot read a layout newer than its own.
        let mut v2 = upgraded;
        v2.colour = "blue".into();
        store.put(&v2).await.unwrap();
        assert_eq!(store.get::<ThingV2>("1").unwrap().unwrap().colour, "blue");
        assert!(matches!(
            store.get::<Thing>("1"),
            Err(StorageError::Decode { .. })
        ));
        assert_eq!(store.by_index::<ThingV2>("org", "a").unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_failed_flush_poisons_the_store_and_hides_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.insert(thing("1", "a", "x")).await.unwrap();
        let poisoned = store.poisoned();
        store.inject_flush_failure();
        assert!(matches!(
            store.insert(thing("2", "a", "y")).await,
            Err(StorageError::Poisoned(_))
        ));
        assert!(poisoned.await.contains("injected"));
        // The write that was never acknowledged is never read...
        assert!(matches!(
            store.get::<Thing>("2"),
            Err(StorageError::Poisoned(_))
        ));
        // ...what was acknowledged still is, and nothing more is taken.
        assert_eq!(store.get::<Thing>("1").unwrap().unwrap().name, "x");
        assert!(matches!(
            store.insert(thing("3", "a", "z")).await,
            Err(StorageError::Poisoned(_))
        ));
        assert!(matches!(
            store.commit_nowait(vec![Write::insert(&thing("4", "a", "w")).unwrap()]),
            Err(StorageError::Poisoned(_))
        ));
    }

    #[tokio::test]
    async fn concurrent_readers_never_see_a_write_before_its_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..100 {
                        let id = format!("{w}-{i}");
                        store.insert(thing(&id, "a", &id)).await.unwrap();
                    }
                })
            })
            .collect();
        // Every record a reader gets must already be durable: its commit
        // group at or below the durable watermark when the read returns.
        let reader = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                let mut seen = std::collections::HashSet::new();
                while seen.len() < 400 {
                    for w in 0..4 {
                        for i in 0..100 {
                            let id = format!("{w}-{i}");
                            if seen.contains(&id) || store.get::<Thing>(&id).unwrap().is_none() {
                                continue;
                            }
                            let durable = store.engine().watermark().durable();
                            let raw = store
                                .engine()
                                .get(Space::Records, &keys::record("things", &id))
                                .unwrap()
                                .unwrap();
                            let env = EnvelopeRef::read(&raw, "things", &id).unwrap();
                            assert!(env.seq <= durable, "{id} was read before its flush");
                            seen.insert(id);
                        }
                    }
                }
            })
        };
        for w in writers {
            w.await.unwrap();
        }
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn unacknowledged_writes_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let w = store.engine().watermark();
        for _ in 0..crate::engine::MAX_NOWAIT_QUEUED {
            assert!(w.reserve_nowait());
        }
        assert!(matches!(
            store.commit_nowait(vec![Write::insert(&thing("1", "a", "x")).unwrap()]),
            Err(StorageError::Unavailable(_))
        ));
        assert_eq!(store.commit_stats().nowait_dropped, 1);
        for _ in 0..crate::engine::MAX_NOWAIT_QUEUED {
            w.release_nowait();
        }
        store
            .commit_nowait(vec![Write::insert(&thing("1", "a", "x")).unwrap()])
            .unwrap();
    }

    #[tokio::test]
    async fn ordered_pages_read_only_the_page_and_keep_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // Two records share the sort key "b": ties go by id.
        for (id, name) in [("1", "c"), ("2", "b1"), ("3", "a"), ("4", "b2"), ("5", "d")] {
            store.insert(thing(id, "o", name)).await.unwrap();
        }
        store.insert(thing("x", "other", "a")).await.unwrap();
        let page = |descending, skip, limit, after: Option<(Vec<u8>, String)>| {
            let after_ref = after.as_ref().map(|(k, id)| (k.as_slice(), id.as_str()));
            let p = store
                .page::<Thing>(&PageQuery {
                    index: "by_name",
                    scope: "o",
                    descending,
                    skip,
                    after: after_ref,
                    limit,
                })
                .unwrap();
            (
                p.total,
                p.items
                    .into_iter()
                    .map(|(k, t)| (k, t.id))
                    .collect::<Vec<_>>(),
            )
        };
        let ids = |items: &[(Vec<u8>, String)]| {
            items.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>()
        };
        let (total, items) = page(false, 0, 10, None);
        assert_eq!(total, 5);
        assert_eq!(ids(&items), ["3", "2", "4", "1", "5"]);
        let (_, items) = page(true, 1, 2, None);
        assert_eq!(ids(&items), ["1", "4"]);
        // A cursor after the first "b" (id 2) still finds the second (id 4).
        let (_, first) = page(false, 0, 2, None);
        let last = first.last().cloned().unwrap();
        let (_, next) = page(false, 0, 2, Some(last));
        assert_eq!(ids(&next), ["4", "1"]);
        let (_, back) = page(true, 0, 2, Some(next[0].clone()));
        assert_eq!(ids(&back), ["2", "3"]);

        // A range of sort keys, from either end; the log-tail reads.
        let between = |descending| {
            store
                .ids_between::<Thing>("by_name", "o", b"b", b"c", descending, 10)
                .unwrap()
        };
        assert_eq!(ids(&between(false)), ["2", "4"]);
        assert_eq!(ids(&between(true)), ["4", "2"]);
        assert_eq!(store.last_id::<Thing>().unwrap().as_deref(), Some("x"));
        assert_eq!(store.ids_after::<Thing>("3", 2).unwrap(), ["4", "5"]);

        // Renames move entries; soft deletes and removals leave the count.
        store
            .update::<Thing, StorageError>("5", |t| {
                t.name = "0".into();
                Ok(Some(()))
            })
            .await
            .unwrap();
        store
            .update::<Thing, StorageError>("1", |t| {
                t.deleted = true;
                Ok(Some(()))
            })
            .await
            .unwrap();
        store.remove::<Thing>("3").await.unwrap();
        let (total, items) = page(false, 0, 10, None);
        assert_eq!(total, 3);
        assert_eq!(ids(&items), ["5", "2", "4"]);
        let other = store
            .page::<Thing>(&PageQuery {
                index: "by_name",
                scope: "other",
                descending: false,
                skip: 0,
                after: None,
                limit: 10,
            })
            .unwrap();
        assert_eq!(other.total, 1);
    }
}
