//! Node create and get throughput and latency over HTTP, against the real
//! server on loopback with a data directory on disk (durable commits).
//!
//! cargo bench --bench http
//! Knobs: WARDEN_BENCH_CREATES (20000), WARDEN_BENCH_GETS (100000),
//! WARDEN_BENCH_CONCURRENCY (64), WARDEN_BENCH_DIR (default: a temp dir in
//! the checkout, on disk), WARDEN_BENCH_DURABILITY (`flush` or `fsync`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Report {
    name: &'static str,
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    fn print(mut self) {
        self.latencies.sort();
        let pct = |p: f64| {
            self.latencies
                [((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1)]
        };
        println!(
            "{:<12} {:>8} requests  {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            self.name,
            self.count,
            self.count as f64 / self.elapsed.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            self.latencies.last().unwrap().as_secs_f64() * 1e3,
        );
    }
}

/// Runs `total` requests from `concurrency` workers; `make(i)` sends request i.
async fn drive<F, Fut>(
    name: &'static str,
    total: usize,
    concurrency: usize,
    make: F,
) -> (Report, Vec<String>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<String>> + Send,
{
    let make = Arc::new(make);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let out = Arc::new(Mutex::new((Vec::with_capacity(total), Vec::new())));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (make, next, out) = (make.clone(), next.clone(), out.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                let id = make(i).await.expect("request succeeded");
                lat.push(t.elapsed());
                ids.push(id);
            }
            let mut o = out.lock().await;
            o.0.extend(lat);
            o.1.extend(ids);
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = start.elapsed();
    let (latencies, ids) = std::mem::take(&mut *out.lock().await);
    (
        Report {
            name,
            count: total,
            elapsed,
            latencies,
        },
        ids,
    )
}

fn main() {
    let creates = env_usize("WARDEN_BENCH_CREATES", 20_000);
    let gets = env_usize("WARDEN_BENCH_GETS", 100_000);
    let concurrency = env_usize("WARDEN_BENCH_CONCURRENCY", 64);
    let dir = match std::env::var("WARDEN_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).unwrap(),
        Err(_) => tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap(),
    };

    // The server gets its own runtime, like the binary (2 workers on this machine).
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = warden::config::ServerConfig::for_data_dir(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    if std::env::var("WARDEN_BENCH_DURABILITY").as_deref() == Ok("fsync") {
        config.durability = warden_storage::Durability::Fsync;
    }
    config.admin_username = Some("bench".into());
    config.admin_password = Some("bench-password".into());
    let running = server_rt.block_on(warden::server::start(config)).unwrap();
    let base = format!("http://{}", running.addr);

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async move {
        warden::install_tls_provider();
        let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
        let login: serde_json::Value = http
            .post(format!("{base}/auth/login"))
            .json(&json!({"username": "bench", "password": "bench-password"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = Arc::new(login["accessToken"].as_str().unwrap().to_owned());
        println!(
            "warden http bench: {creates} creates, {gets} gets, {concurrency} concurrent clients, durability {}, data at {}",
            std::env::var("WARDEN_BENCH_DURABILITY").unwrap_or_else(|_| "flush".into()),
            dir.path().display()
        );

        let (h, b, t) = (http.clone(), base.clone(), token.clone());
        let (report, ids) = drive("node-create", creates, concurrency, move |i| {
            let (h, b, t) = (h.clone(), b.clone(), t.clone());
            async move {
                let body = json!({"nodeId": format!("bench-{i}"), "name": format!("Bench node {i}"), "role": ["worker"], "cpuCores": 16, "ramTotal": 65536, "ramFree": 32768, "isLocal": true});
                let r = h.post(format!("{b}/api/nodes")).bearer_auth(t.as_str()).json(&body).send().await.ok()?;
                if r.status() != 201 {
                    return None;
                }
                let v: serde_json::Value = r.json().await.ok()?;
                v["_id"].as_str().map(str::to_owned)
            }
        })
        .await;
        report.print();

        let ids = Arc::new(ids);
        let (h, b, t) = (http.clone(), base.clone(), token.clone());
        let (report, _) = drive("node-get", gets, concurrency, move |i| {
            let (h, b, t, ids) = (h.clone(), b.clone(), t.clone(), ids.clone());
            async move {
                let id = &ids[i % ids.len()];
                let r = h.get(format!("{b}/api/nodes/{id}")).bearer_auth(t.as_str()).send().await.ok()?;
                (r.status() == 200).then(|| id.clone())
            }
        })
        .await;
        report.print();
    });
    server_rt.block_on(running.stop()).unwrap();
}
