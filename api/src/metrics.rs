//! Request metrics in Prometheus text format (`warden_*`), plus the actor
//! gauges the supervision tree reports at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use warden_storage::CommitStats;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct Series {
    count_by_status: BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Series by route, then method: looked up by `&str`, so recording a
/// request allocates nothing once its series exists.
#[derive(Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<String, Vec<(String, Series)>>>,
}

impl Metrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut series = self
            .series
            .lock()
            .expect("metrics lock is never poisoned: nothing panics holding it");
        if !series.contains_key(route) {
            series.insert(route.to_owned(), Vec::new());
        }
        let methods = series.get_mut(route).expect("inserted above");
        let at = match methods.iter().position(|(m, _)| m == method) {
            Some(at) => at,
            None => {
                methods.push((method.to_owned(), Series::default()));
                methods.len() - 1
            }
        };
        let s = &mut methods[at].1;
        *s.count_by_status.entry(status).or_default() += 1;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                s.buckets[i] += 1;
            }
        }
        s.count += 1;
        s.sum += secs;
    }

    /// Renders request series plus the given actor gauges.
    pub fn render(
        &self,
        actors: &[(String, String, usize)],
        restarts: &[(String, u64)],
        store: &CommitStats,
    ) -> String {
        let mut out = String::new();
        let series = self.series.lock().expect("metrics lock is never poisoned");
        out.push_str(
            "# HELP warden_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE warden_http_requests_total counter\n");
        let all = || {
            series
                .iter()
                .flat_map(|(route, methods)| methods.iter().map(move |(m, s)| (m, route, s)))
        };
        for (method, route, s) in all() {
            for (status, n) in &s.count_by_status {
                let _ = writeln!(
                    out,
                    "warden_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        out.push_str("# HELP warden_http_request_duration_seconds HTTP request latency by route and method.\n");
        out.push_str("# TYPE warden_http_request_duration_seconds histogram\n");
        for (method, route, s) in all() {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "warden_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "warden_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "warden_http_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "warden_http_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        out.push_str("# HELP warden_actors Live entity actors by kind and supervision status.\n");
        out.push_str("# TYPE warden_actors gauge\n");
        for (kind, status, n) in actors {
            let _ = writeln!(
                out,
                "warden_actors{{kind=\"{kind}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP warden_actor_restarts Restarts of the current entity actors by kind.\n",
        );
        out.push_str("# TYPE warden_actor_restarts gauge\n");
        for (kind, n) in restarts {
            let _ = writeln!(out, "warden_actor_restarts{{kind=\"{kind}\"}} {n}");
        }
        for (name, kind, help, value) in [
            (
                "warden_store_commit_groups_total",
                "counter",
                "Commit groups applied since start (one flush each when any write in it succeeded).",
                store.groups,
            ),
            (
                "warden_store_commits_total",
                "counter",
                "Commit requests applied since start; divided by groups, the average group size.",
                store.requests,
            ),
            (
                "warden_store_flushes_total",
                "counter",
                "Store flushes since start.",
                store.flushes,
            ),
            (
                "warden_store_unacknowledged_queued",
                "gauge",
                "Writes nobody waits for (telemetry) queued now.",
                store.nowait_queued as u64,
            ),
            (
                "warden_store_unacknowledged_dropped_total",
                "counter",
                "Writes nobody waits for dropped because the queue was full.",
                store.nowait_dropped,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe("GET", "/api/nodes", 200, Duration::from_micros(300));
        m.observe("GET", "/api/nodes", 404, Duration::from_millis(30));
        let text = m.render(
            &[("node".into(), "running".into(), 2)],
            &[("node".into(), 1)],
            &CommitStats {
                groups: 2,
                requests: 5,
                ..CommitStats::default()
            },
        );
        assert!(text.contains(
            "warden_http_requests_total{method=\"GET\",route=\"/api/nodes\",status=\"200\"} 1"
        ));
        assert!(text.contains("le=\"0.0005\"} 1"));
        assert!(text.contains("le=\"0.05\"} 2"));
        assert!(text.contains("warden_actors{kind=\"node\",status=\"running\"} 2"));
        assert!(text.contains("warden_store_commit_groups_total 2\n"));
        assert!(text.contains("warden_store_commits_total 5\n"));
    }
}
