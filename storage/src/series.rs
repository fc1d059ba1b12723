//! Time series: points of JSON, ordered by time within a named series
//! (`node/{id}/metrics`, `telemetry/{owner}`), kept in their own tree.
//!
//! A point's key ends with its id, so writing the same point twice (a
//! daemon re-sending buffered telemetry) stores it once. Every point also
//! has a time-index key (`00 00`, time, point key), so retention deletes
//! by time range: its cost is the points it removes.

use crate::engine::Space;
use crate::{Millis, StorageError, Store, Write, keys};

/// One stored point.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub at: Millis,
    pub id: String,
    pub value: Vec<u8>,
}

/// A time range query; `newest_first` walks backwards from `to`.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub from: Millis,
    pub to: Millis,
    pub limit: usize,
    pub skip: usize,
    pub newest_first: bool,
}

impl Default for Range {
    fn default() -> Self {
        Range {
            from: Millis::MIN,
            to: Millis::MAX,
            limit: 100,
            skip: 0,
            newest_first: true,
        }
    }
}

fn time_bytes(at: Millis) -> [u8; 8] {
    ((at as u64) ^ (1 << 63)).to_be_bytes()
}

fn prefix(series: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(series.len() + 2);
    keys::push(&mut k, series.as_bytes());
    k
}

/// The key of a point: series, time, id.
pub fn point_key(series: &str, at: Millis, id: &str) -> Vec<u8> {
    let mut k = prefix(series);
    k.extend_from_slice(&time_bytes(at));
    keys::push(&mut k, id.as_bytes());
    k
}

/// Starts the time index. No series key starts with it: an escaped
/// component's 0x00 is always followed by 0xFF or 0x01.
const TIME_INDEX: [u8; 2] = [0, 0];

/// The time-index key of a point: `00 00`, its time, its key.
pub(crate) fn time_index_key(at: Millis, point_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + point_key.len());
    k.extend_from_slice(&TIME_INDEX);
    k.extend_from_slice(&time_bytes(at));
    k.extend_from_slice(point_key);
    k
}

/// The time of a point's key (after its series component).
pub(crate) fn time_of_point_key(key: &[u8]) -> Option<Millis> {
    let (_, rest) = keys::pop(key)?;
    let t: [u8; 8] = rest.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(t) ^ (1 << 63)) as Millis)
}

/// The writes that store a point: itself and its time-index entry.
fn point_writes(series: &str, at: Millis, id: &str, value: Vec<u8>) -> Vec<Write> {
    let key = point_key(series, at, id);
    vec![
        Write::Point {
            key: time_index_key(at, &key),
            value: Vec::new(),
        },
        Write::Point { key, value },
    ]
}

fn decode(series_len: usize, key: &[u8], value: &[u8]) -> Option<Point> {
    let rest = key.get(series_len..)?;
    let t: [u8; 8] = rest.get(..8)?.try_into().ok()?;
    let at = (u64::from_be_bytes(t) ^ (1 << 63)) as Millis;
    let (id, _) = keys::pop(&rest[8..])?;
    Some(Point {
        at,
        id: String::from_utf8_lossy(&id).into_owned(),
        value: value.to_vec(),
    })
}

impl Store {
    /// Appends a point durably.
    pub async fn append_point(
        &self,
        series: &str,
        at: Millis,
        id: &str,
        value: Vec<u8>,
    ) -> Result<(), StorageError> {
        self.commit(point_writes(series, at, id, value))
            .await
            .map(|_| ())
    }

    /// Appends a point without waiting for the flush.
    pub fn append_point_nowait(
        &self,
        series: &str,
        at: Millis,
        id: &str,
        value: Vec<u8>,
    ) -> Result<(), StorageError> {
        self.commit_nowait(point_writes(series, at, id, value))
    }

    /// Points of one series within a time range.
    /// Waits first for every point already applied to be durable, so no
    /// point a crash could still take away is ever answered.
    pub fn points(&self, series: &str, range: Range) -> Result<Vec<Point>, StorageError> {
        self.engine().watermark().wait_applied()?;
        let p = prefix(series);
        let mut start = p.clone();
        start.extend_from_slice(&time_bytes(range.from));
        let mut end = p.clone();
        end.extend_from_slice(&time_bytes(range.to.saturating_add(1).max(range.to)));
        if range.to == Millis::MAX {
            end = p.clone();
            end.extend_from_slice(&[0xFF; 9]);
        }
        let iter = self.engine().range(
            Space::Series,
            std::ops::Bound::Included(start),
            std::ops::Bound::Excluded(end),
        );
        let mut out = Vec::new();
        let mut push =
            |item: Result<(Vec<u8>, Vec<u8>), StorageError>| -> Result<bool, StorageError> {
                let (k, v) = item?;
                if let Some(point) = decode(p.len(), &k, &v) {
                    out.push(point);
                }
                Ok(out.len() < range.skip.saturating_add(range.limit))
            };
        if range.newest_first {
            for item in iter.rev() {
                if !push(item)? {
                    break;
                }
            }
        } else {
            for item in iter {
                if !push(item)? {
                    break;
                }
            }
        }
        Ok(out.into_iter().skip(range.skip).collect())
    }

    /// Keeps a series' newest points: at most `keep` of them and at most
    /// `max_bytes` of values (a log ring). Returns how many were removed.
    pub async fn trim_series(
        &self,
        series: &str,
        keep: usize,
        max_bytes: usize,
    ) -> Result<usize, StorageError> {
        let p = prefix(series);
        let mut end = p.clone();
        end.extend_from_slice(&[0xFF; 9]);
        let (mut kept, mut bytes) = (0usize, 0usize);
        let mut doomed = Vec::new();
        for item in self
            .engine()
            .range(
                Space::Series,
                std::ops::Bound::Included(p.clone()),
                std::ops::Bound::Excluded(end),
            )
            .rev()
        {
            let (key, value) = item?;
            if kept < keep && bytes + value.len() <= max_bytes {
                kept += 1;
                bytes += value.len();
                continue;
            }
            if let Some(at) = time_of_point_key(&key) {
                doomed.push(time_index_key(at, &key));
            }
            doomed.push(key);
        }
        let removed = doomed.len() / 2;
        if !doomed.is_empty() {
            self.commit(vec![Write::RemovePoints { keys: doomed }])
                .await?;
        }
        Ok(removed)
    }

    /// Removes every point older than `before`, in every series, by a
    /// range of the time index. Returns how many were removed.
    pub async fn prune_points(&self, before: Millis) -> Result<usize, StorageError> {
        let mut end = TIME_INDEX.to_vec();
        end.extend_from_slice(&time_bytes(before));
        let mut removed = 0;
        loop {
            let mut doomed = Vec::new();
            for item in self.engine().range(
                Space::Series,
                std::ops::Bound::Included(TIME_INDEX.to_vec()),
                std::ops::Bound::Excluded(end.clone()),
            ) {
                let (key, _) = item?;
                doomed.push(key[10..].to_vec());
                doomed.push(key);
                if doomed.len() >= 2048 {
                    break;
                }
            }
            if doomed.is_empty() {
                return Ok(removed);
            }
            removed += doomed.len() / 2;
            self.commit(vec![Write::RemovePoints { keys: doomed }])
                .await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;

    #[tokio::test]
    async fn a_series_is_trimmed_to_its_newest_points() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::new(dir.path().to_path_buf())).unwrap();
        for i in 0..10 {
            store
                .append_point("log", i, &format!("p{i}"), vec![b'x'; 10])
                .await
                .unwrap();
        }
        store
            .append_point("other", 1, "o", b"o".to_vec())
            .await
            .unwrap();
        assert_eq!(store.trim_series("log", 4, usize::MAX).await.unwrap(), 6);
        let ids: Vec<String> = store
            .points("log", Range::default())
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, ["p9", "p8", "p7", "p6"]);
        assert_eq!(
            store.trim_series("log", 100, 25).await.unwrap(),
            2,
            "by bytes too"
        );
        assert_eq!(store.points("other", Range::default()).unwrap().len(), 1);
        // The time index forgot them too: pruning finds only what is left.
        assert_eq!(store.prune_points(i64::MAX).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn ranges_order_idempotence_and_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::new(dir.path().to_path_buf())).unwrap();
        for (at, id) in [(-5, "a"), (10, "b"), (20, "c"), (30, "d")] {
            store
                .append_point("s", at, id, id.as_bytes().to_vec())
                .await
                .unwrap();
        }
        store
            .append_point("s", 20, "c", b"c".to_vec())
            .await
            .unwrap(); // again: stored once
        store
            .append_point("s2", 15, "x", b"x".to_vec())
            .await
            .unwrap();
        store
            .append_point("s\0", 15, "y", b"y".to_vec())
            .await
            .unwrap();
        let ids = |ps: Vec<Point>| ps.into_iter().map(|p| p.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.points("s", Range::default()).unwrap()),
            vec!["d", "c", "b", "a"]
        );
        let r = Range {
            from: 10,
            to: 20,
            newest_first: false,
            ..Default::default()
        };
        assert_eq!(ids(store.points("s", r).unwrap()), vec!["b", "c"]);
        let r = Range {
            limit: 2,
            skip: 1,
            ..Default::default()
        };
        assert_eq!(ids(store.points("s", r).unwrap()), vec!["c", "b"]);
        assert_eq!(store.points("s", Range::default()).unwrap()[3].at, -5);
        assert_eq!(store.prune_points(15).await.unwrap(), 2);
        assert_eq!(
            ids(store.points("s", Range::default()).unwrap()),
            vec!["d", "c"]
        );
        assert_eq!(
            ids(store.points("s2", Range::default()).unwrap()),
            vec!["x"]
        );
    }
}
