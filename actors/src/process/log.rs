//! A supervised process's log: its output lines and lifecycle notes as
//! points of a series, kept as a ring of the newest [`KEEP_LINES`] lines
//! and [`KEEP_BYTES`] bytes, so a process that floods its output costs a
//! bounded amount of store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use warden_storage::{Store, now_millis};

/// Lines a process's log keeps.
pub const KEEP_LINES: usize = 10_000;
/// Bytes a process's log keeps.
pub const KEEP_BYTES: usize = 10 * 1024 * 1024;
/// Lines written between two trims of the ring.
const TRIM_EVERY: u64 = 500;
/// Output lines stored per second at most; the rest are counted, and
/// the count is said in the log (a flood must not flood the store).
pub const LINES_PER_SECOND: u64 = 1000;

/// A log series, shared by the output threads and the actor.
#[derive(Clone)]
pub struct ProcessLog {
    store: Store,
    series: Arc<str>,
    written: Arc<AtomicU64>,
    runtime: tokio::runtime::Handle,
    keep: usize,
    /// The current second, its lines, and the lines dropped in it.
    window: Arc<std::sync::Mutex<(i64, u64, u64)>>,
}

impl ProcessLog {
    /// The log of `series`; must be made inside the tokio runtime (its
    /// trims run there, whichever thread writes the line).
    pub fn new(store: Store, series: String, keep: usize) -> ProcessLog {
        ProcessLog {
            store,
            series: series.into(),
            written: Arc::new(AtomicU64::new(0)),
            runtime: tokio::runtime::Handle::current(),
            keep: keep.max(1),
            window: Arc::new(std::sync::Mutex::new((0, 0, 0))),
        }
    }

    /// An output line, unless this second's budget is spent.
    pub fn output(&self, kind: &str, message: &str) {
        let second = now_millis() / 1000;
        let dropped = {
            let mut w = self.window.lock().expect("never poisoned");
            if w.0 != second {
                let dropped = w.2;
                *w = (second, 0, 0);
                dropped
            } else {
                0
            }
        };
        if dropped > 0 {
            self.line(
                "warning",
                &format!("{dropped} output lines dropped: more than {LINES_PER_SECOND} a second"),
            );
        }
        let over = {
            let mut w = self.window.lock().expect("never poisoned");
            w.1 += 1;
            if w.1 > LINES_PER_SECOND {
                w.2 += 1;
                true
            } else {
                false
            }
        };
        if !over {
            self.line(kind, message);
        }
    }

    pub fn series(&self) -> &str {
        &self.series
    }

    /// Appends a line (`stdout`, `stderr`, `info`, `warning`, `error`)
    /// without waiting for the flush.
    pub fn line(&self, kind: &str, message: &str) {
        let at = now_millis();
        let point = format!("{at}-{}", &warden_storage::new_uuid()[..8]);
        let line = serde_json::json!({"type": kind, "message": message}).to_string();
        if let Err(e) = self
            .store
            .append_point_nowait(&self.series, at, &point, line.into_bytes())
        {
            tracing::debug!(series = %self.series, error = %e, "a log line was dropped");
            return;
        }
        if self.written.fetch_add(1, Ordering::Relaxed) % TRIM_EVERY == TRIM_EVERY - 1 {
            let (store, series, keep) = (self.store.clone(), self.series.clone(), self.keep);
            self.runtime.spawn(async move {
                if let Err(e) = store.trim_series(&series, keep, KEEP_BYTES).await {
                    tracing::warn!(%series, error = %e, "could not trim a process log");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_is_counted_not_stored_and_the_ring_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(&warden_storage::StoreConfig::new(dir.path().to_path_buf())).unwrap();
        let log = ProcessLog::new(store.clone(), "p/logs".into(), 600);
        // Three seconds' budget in one second: the rest is counted.
        let second = now_millis() / 1000;
        for i in 0..3000 {
            log.output("stdout", &format!("line {i}"));
        }
        if now_millis() / 1000 != second {
            return; // crossed a second boundary: the counts are not this test's
        }
        while now_millis() / 1000 == second {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        log.output("stdout", "next second");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let range = warden_storage::series::Range {
            limit: 10_000,
            ..Default::default()
        };
        let all = store.points("p/logs", range).unwrap();
        let text: Vec<String> = all
            .iter()
            .map(|p| String::from_utf8_lossy(&p.value).into_owned())
            .collect();
        assert!(
            text.iter().any(|l| l.contains("2000 output lines dropped")),
            "{:?}",
            &text[..3]
        );
        assert!(
            all.len() <= 600 + TRIM_EVERY as usize + 2,
            "the ring: {}",
            all.len()
        );
    }
}
