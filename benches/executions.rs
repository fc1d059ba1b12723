//! Executions at load: N simulated nodes (raw WebSocket, answering every
//! command at once with an ack and a result) and E concurrent three-step
//! executions (a chain 0 → 1 → 2, each on one node), against the release
//! `warden serve` in its own process.
//!
//! Reports: executions/s from the first start to the last completion;
//! the p50/p99 step turn-around (a node's result sent → the next step's
//! command received, i.e. the server's durable record of the result,
//! the next step's durable intent, and the send); then a kill -9 in the
//! middle of a second run and the time until every unfinished execution
//! moved again and until all completed.
//!
//! cargo bench --bench executions
//! WARDEN_BENCH_NODES=100 WARDEN_BENCH_EXECUTIONS=1000 cargo bench --bench executions

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_warden");

/// The server process, killed when dropped (a failed bench leaves none).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(dir: &std::path::Path, listen: &str) -> (Server, String) {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(dir)
        .env("WARDEN_ADMIN_USERNAME", "bench")
        .env("WARDEN_ADMIN_PASSWORD", "bench-password")
        .env("WARDEN_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("warden starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .trim_start_matches("warden listening on ")
        .to_owned();
    (Server(child), base)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the simulated nodes saw, shared by all of them.
#[derive(Default)]
struct Seen {
    /// Execution key → when its node sent the last result.
    answered: HashMap<String, Instant>,
    /// Step turn-arounds, in microseconds.
    turns: Vec<u64>,
    /// Commands received per (execution, step): a second one is a repeat.
    commands: HashMap<(String, u64), u32>,
    /// Executions whose last step was answered.
    finished: usize,
    /// Executions that received a command since `mark`.
    moved: HashMap<String, Instant>,
}

/// One simulated node: answers each command at once. Like the real
/// daemon it reconnects when the connection drops and sends its recent
/// results again (the server records an answer once), so a result lost
/// with a killed server is not lost to the execution.
async fn node(base: String, token: String, id: String, seen: Arc<Mutex<Seen>>) {
    let url = format!(
        "{}/ws/node?token={token}&nodeId={id}",
        base.replacen("http", "ws", 1)
    );
    let mut recent: std::collections::VecDeque<String> = Default::default();
    loop {
        // Nagle off, as the daemons' WebSocket clients have it: an ack and
        // a result written back to back would otherwise wait for the
        // server's delayed ACK (40 ms).
        let Ok((ws, _)) =
            tokio_tungstenite::connect_async_with_config(url.as_str(), None, true).await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (mut tx, mut rx) = ws.split();
        let register = json!({"type": "node.register", "messageId": uuid::Uuid::new_v4().to_string(),
            "timestamp": "2026-01-01T00:00:00Z", "data": {"nodeId": id, "name": id}});
        if tx.send(Message::text(register.to_string())).await.is_err() {
            continue;
        }
        while let Some(Ok(frame)) = rx.next().await {
            let Ok(text) = frame.to_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if v["type"] == "register.ack" {
                for line in &recent {
                    let _ = tx.send(Message::text(line.clone())).await;
                }
                continue;
            }
            if v["type"] != "system.healthCheck" {
                continue;
            }
            let now = Instant::now();
            let exec = v["metadata"]["executionId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let step = v["metadata"]["stepIndex"].as_u64().unwrap_or_default();
            {
                let mut s = seen.lock().unwrap();
                *s.commands.entry((exec.clone(), step)).or_default() += 1;
                if let Some(at) = s.answered.get(&exec).copied() {
                    s.turns.push(now.duration_since(at).as_micros() as u64);
                }
                s.moved.entry(exec.clone()).or_insert(now);
            }
            let mid = v["messageId"].as_str().unwrap_or_default().to_owned();
            let ack = json!({"type": "command.ack", "messageId": uuid::Uuid::new_v4().to_string(), "timestamp": "2026-01-01T00:00:00Z",
                "data": {"originalMessageId": mid, "status": "acknowledged"}});
            let result = json!({"type": "command.result", "messageId": uuid::Uuid::new_v4().to_string(), "timestamp": "2026-01-01T00:00:00Z",
                "data": {"originalMessageId": mid, "status": "success", "result": {"ok": true}}}).to_string();
            recent.push_back(result.clone());
            if recent.len() > 64 {
                recent.pop_front();
            }
            if tx.send(Message::text(ack.to_string())).await.is_err()
                || tx.send(Message::text(result)).await.is_err()
            {
                break;
            }
            let mut s = seen.lock().unwrap();
            s.answered.insert(exec, Instant::now());
            if step == 2 {
                s.finished += 1;
            }
        }
    }
}

async fn login(http: &reqwest::Client, base: &str) -> String {
    let r: Value = http
        .post(format!("{base}/auth/login"))
        .json(&json!({"username": "bench", "password": "bench-password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["accessToken"].as_str().unwrap().to_owned()
}

async fn post(http: &reqwest::Client, base: &str, token: &str, path: &str, body: Value) {
    let r = http
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
}

/// Runs `f` over `items` with `width` at a time.
async fn in_parallel<T, F, Fut>(items: Vec<T>, width: usize, f: F)
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let f = &f;
    futures_util::stream::iter(items)
        .for_each_concurrent(width, |i| async move { f(i).await })
        .await;
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The store's commit counters (requests, groups, flushes) from `/metrics`.
async fn store_counters(http: &reqwest::Client, base: &str) -> [f64; 3] {
    let text = match http.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let read = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    [
        read("warden_store_commits_total"),
        read("warden_store_commit_groups_total"),
        read("warden_store_flushes_total"),
    ]
}

/// Executions completed and timed out, from the statistics.
async fn ended(http: &reqwest::Client, base: &str, token: &str) -> (u64, u64) {
    let r: Value = match http
        .get(format!("{base}/api/executions/_statistics/summary"))
        .bearer_auth(token)
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => return (0, 0),
    };
    let n = |s: &str| r["byStatus"][s].as_u64().unwrap_or(0);
    (n("completed"), n("timeout"))
}

fn spawn_nodes(
    base: &str,
    token: &str,
    n: usize,
    seen: &Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let (b, t, s) = (base.to_owned(), token.to_owned(), seen.clone());
            tokio::spawn(node(b, t, format!("bench-node-{i}"), s))
        })
        .collect()
}

async fn create_all(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    prefix: &str,
    n: usize,
    nodes: usize,
) {
    let keys: Vec<usize> = (0..n).collect();
    in_parallel(keys, 32, |i| async move {
        let node = format!("bench-node-{}", i % nodes);
        let step = |k: u32| json!({"index": k, "name": format!("s{k}"), "nodeId": node, "timeoutSeconds": 5,
            "dependsOn": if k == 0 { vec![] } else { vec![k - 1] },
            "command": {"type": "system.healthCheck", "resource": {"type": "node", "id": node}, "data": {}}});
        let body = json!({"executionId": format!("{prefix}-{i}"), "name": "bench", "category": "batch", "type": "three-steps",
            "timeoutSeconds": 600, "steps": [step(0), step(1), step(2)]});
        post(http, base, token, "/api/executions", body).await;
    })
    .await;
}

async fn start_all(http: &reqwest::Client, base: &str, token: &str, prefix: &str, n: usize) {
    in_parallel((0..n).collect(), 64, |i| async move {
        post(
            http,
            base,
            token,
            &format!("/api/executions/{prefix}-{i}/start"),
            json!({}),
        )
        .await;
    })
    .await;
}

#[tokio::main]
async fn main() {
    warden::install_tls_provider();
    let nodes = env_usize("WARDEN_BENCH_NODES", 100);
    let n = env_usize("WARDEN_BENCH_EXECUTIONS", 1000);
    let dir = tempfile::tempdir().unwrap();
    // A fixed port, so that the nodes find the restarted server.
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (child, base) = start_server(dir.path(), &listen);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let token = login(&http, &base).await;

    // Run 0: executions one at a time: the turn-around of a step with
    // nothing queued ahead of it (the round trip's own cost).
    let seen = Arc::new(Mutex::new(Seen::default()));
    let tasks = spawn_nodes(&base, &token, nodes, &seen);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alone = env_usize("WARDEN_BENCH_ALONE", 100);
    create_all(&http, &base, &token, "z", alone, nodes).await;
    for i in 0..alone {
        let done = seen.lock().unwrap().finished;
        post(
            &http,
            &base,
            &token,
            &format!("/api/executions/z-{i}/start"),
            json!({}),
        )
        .await;
        let t = Instant::now();
        while seen.lock().unwrap().finished == done {
            assert!(t.elapsed() < Duration::from_secs(30), "run 0 stalled");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let turns = {
        let mut s = seen.lock().unwrap();
        let mut turns = std::mem::take(&mut s.turns);
        turns.sort_unstable();
        turns
    };
    println!(
        "{alone} three-step executions one at a time: step turn-around p50 {:.2} ms, p99 {:.2} ms ({} turns)",
        percentile(&turns, 0.5),
        percentile(&turns, 0.99),
        turns.len(),
    );

    // Run 1: throughput and turn-around.
    let t = Instant::now();
    create_all(&http, &base, &token, "a", n, nodes).await;
    let create_s = t.elapsed().as_secs_f64();
    let before = store_counters(&http, &base).await;
    let t = Instant::now();
    start_all(&http, &base, &token, "a", n).await;
    while ended(&http, &base, &token).await.0 < (alone + n) as u64 {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "run 1 did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run_s = t.elapsed().as_secs_f64();
    let after = store_counters(&http, &base).await;
    let per = |i: usize| (after[i] - before[i]) / n as f64;
    let (turns, repeats) = {
        let s = seen.lock().unwrap();
        let mut turns = s.turns.clone();
        turns.sort_unstable();
        (turns, s.commands.values().filter(|c| **c > 1).count())
    };
    println!(
        "{n} three-step executions on {nodes} nodes: created in {create_s:.2} s ({:.0}/s); \
         started and completed in {run_s:.2} s = {:.0} executions/s; step turn-around p50 {:.1} ms, \
         p99 {:.1} ms ({} turns); commands received twice: {repeats}; per execution: \
         {:.1} store writes in {:.1} commit groups, {:.1} flushes",
        n as f64 / create_s,
        n as f64 / run_s,
        percentile(&turns, 0.5),
        percentile(&turns, 0.99),
        turns.len(),
        per(0),
        per(1),
        per(2),
    );

    // Run 2: kill -9 in the middle, then restart on the same data; the
    // nodes stay up and reconnect.
    create_all(&http, &base, &token, "b", n, nodes).await;
    let finished_first = seen.lock().unwrap().finished;
    start_all(&http, &base, &token, "b", n).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(child);
    let finished_before = seen.lock().unwrap().finished - finished_first;
    {
        let mut s = seen.lock().unwrap();
        s.moved.clear();
        s.commands.clear();
    }
    let (child, base) = start_server(dir.path(), &listen);
    let restarted = Instant::now();
    let token = login(&http, &base).await;
    // A command that was out when the server died may never have reached
    // its node; it is not sent again (never twice), so its step waits for
    // its timeout (5 s here) and the run ends `timeout`, as specified.
    let target = (alone + 2 * n) as u64;
    let (done, timed_out) = loop {
        let (done, timed_out) = ended(&http, &base, &token).await;
        if done + timed_out >= target {
            break (done, timed_out);
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(300),
            "run 2 did not finish after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let all_done = restarted.elapsed().as_secs_f64();
    drop(tasks);
    let s = seen.lock().unwrap();
    let mut moved: Vec<f64> = s
        .moved
        .values()
        .map(|t| t.duration_since(restarted).as_secs_f64())
        .collect();
    moved.sort_by(f64::total_cmp);
    let repeats = s.commands.values().filter(|c| **c > 1).count();
    let within = |s: f64| moved.iter().filter(|t| **t <= s).count();
    println!(
        "kill -9 with {finished_before} of {n} executions finished: after the restart {} executions \
         moved again ({} within 1 s, {} within 2 s, the last at {:.2} s); {} completed and {timed_out} \
         ended `timeout` (their command was out when the server died) within {all_done:.2} s; commands \
         received twice after the restart: {repeats}",
        moved.len(),
        within(1.0),
        within(2.0),
        moved.last().copied().unwrap_or(0.0),
        done - (alone + n) as u64,
    );
    drop(child);
}
