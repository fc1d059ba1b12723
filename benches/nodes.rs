//! N simulated node daemons over loopback, each registering and then
//! sending a heartbeat a second, against the release `warden serve` in its
//! own process. Reports sustained messages/s, the server's p99 handling
//! latency (from its own /metrics histogram) and its RSS.
//!
//! cargo bench --bench nodes                 (1,000 then 10,000 nodes)
//! WARDEN_BENCH_NODES=1000,5000 WARDEN_BENCH_SECONDS=20 cargo bench --bench nodes

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_warden");

fn start_server(dir: &std::path::Path) -> (Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("WARDEN_ADMIN_USERNAME", "bench")
        .env("WARDEN_ADMIN_PASSWORD", "bench-password")
        .env("WARDEN_NODE_HEARTBEAT_INTERVAL_MS", "1000")
        .env("WARDEN_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("warden starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (
        child,
        line.trim()
            .trim_start_matches("warden listening on ")
            .to_owned(),
    )
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds the process has used (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0 // utime and stime, in USER_HZ (100 on Linux)
}

/// (count, buckets as (upper bound s, cumulative count)) of the heartbeat histogram.
async fn heartbeat_histogram(http: &reqwest::Client, base: &str) -> (u64, Vec<(f64, u64)>) {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut buckets = Vec::new();
    let mut count = 0;
    for line in text
        .lines()
        .filter(|l| l.contains("route=\"/ws/node telemetry.heartbeat\""))
    {
        let value: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if line.starts_with("warden_http_request_duration_seconds_bucket") {
            let le = line
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("+Inf");
            buckets.push((le.parse().unwrap_or(f64::INFINITY), value));
        } else if line.starts_with("warden_http_request_duration_seconds_count") {
            count = value;
        }
    }
    (count, buckets)
}

fn p99_upper_bound(before: &[(f64, u64)], after: &[(f64, u64)]) -> f64 {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| {
            (
                *le,
                n - before.iter().find(|(b, _)| b == le).map_or(0, |(_, m)| *m),
            )
        })
        .collect();
    let total = delta.last().map_or(0, |(_, n)| *n);
    delta
        .iter()
        .find(|(_, n)| *n as f64 >= total as f64 * 0.99)
        .map_or(f64::INFINITY, |(le, _)| *le)
}

async fn run(nodes: usize, seconds: u64) {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let (mut server, base) = start_server(dir.path());
    warden::install_tls_provider();
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!("{base}/auth/login"))
        .json(&json!({"username": "bench", "password": "bench-password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["accessToken"].as_str().unwrap().to_owned();
    let ws_base = base.replacen("http", "ws", 1);

    let connect_started = Instant::now();
    let registered = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(nodes);
    let connect_slots = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    for i in 0..nodes {
        let (url, registered, stop, sent, slots) = (
            format!("{ws_base}/ws/node?token={token}&nodeId=bench-{i}"),
            registered.clone(),
            stop.clone(),
            sent.clone(),
            connect_slots.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = slots.acquire_owned().await.unwrap();
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
            let frame = |kind: &str, data: serde_json::Value| {
                Message::text(json!({"type": kind, "messageId": uuid::Uuid::new_v4().to_string(), "timestamp": "2026-01-01T00:00:00.000Z", "data": data}).to_string())
            };
            ws.send(frame("node.register", json!({"hostname": format!("bench-{i}"), "cpuCores": 8, "ramTotal": 32768}))).await.unwrap();
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str().contains("register.ack") => break,
                    Some(Ok(_)) => continue,
                    other => panic!("node {i} did not register: {other:?}"),
                }
            }
            drop(permit);
            registered.add_permits(1);
            // A heartbeat a second, spread over the second.
            tokio::time::sleep(Duration::from_millis((i as u64 * 7919) % 1000)).await;
            let mut every = tokio::time::interval(Duration::from_secs(1));
            let (mut sink, mut stream) = ws.split();
            tokio::spawn(async move { while stream.next().await.is_some() {} });
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                every.tick().await;
                if sink.send(frame("telemetry.heartbeat", json!({"status": "healthy", "cpuUsage": 10.0, "ramUsage": 30.0}))).await.is_err() {
                    break;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = sink.close().await;
        }));
    }
    let _ = registered.acquire_many(nodes as u32).await.unwrap();
    let connect_time = connect_started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await; // settle
    let (c0, h0) = heartbeat_histogram(&http, &base).await;
    let cpu0 = cpu_seconds(server.id());
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (c1, h1) = heartbeat_histogram(&http, &base).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(server.id()) - cpu0) / elapsed * 100.0;
    let rss = rss_mib(server.id());
    println!(
        "{nodes:>6} nodes  connect+register {:>6.2} s  heartbeats handled {:>8.0} msg/s  server p99 <= {:>6.2} ms  server CPU {:>5.1}%  server RSS {:>7.1} MiB",
        connect_time.as_secs_f64(),
        (c1 - c0) as f64 / elapsed,
        p99_upper_bound(&h0, &h1) * 1e3,
        cpu,
        rss
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = server.kill();
    let _ = server.wait();
}

fn main() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let sizes: Vec<usize> = std::env::var("WARDEN_BENCH_NODES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let seconds = std::env::var("WARDEN_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "warden node-gateway bench: raw WebSocket daemons on loopback, 1 heartbeat/s each, {seconds} s measured"
    );
    for n in sizes {
        rt.block_on(run(n, seconds));
    }
}
