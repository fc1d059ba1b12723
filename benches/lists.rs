//! Lists at scale: N nodes in one organisation; the first and the 500th
//! page of `GET /api/nodes?limit=20&sort=-createdAt` and a filtered page,
//! measured from outside the release server's process, and the server's
//! resident memory at 1,000 and at N nodes (it should not grow with N).
//!
//! cargo bench --bench lists
//! Knobs: WARDEN_BENCH_NODES (100000), WARDEN_BENCH_REQUESTS (300 per query).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_warden");
const ADMIN_PASSWORD: &str = "bench-admin-password";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn serve(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("WARDEN_ADMIN_USERNAME", "admin")
        .env("WARDEN_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("WARDEN_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the warden binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("warden listening on ")
        .expect("the listening line")
        .to_owned();
    (child, base)
}

fn stop(mut child: Child) {
    // SIGTERM: a clean stop, so the store is closed before it is opened again.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap()
        / 1024.0
}

async fn login(http: &reqwest::Client, base: &str, user: &str, password: &str) -> String {
    let r: Value = http
        .post(format!("{base}/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["accessToken"].as_str().unwrap().to_owned()
}

/// Writes `count` nodes of `org` straight into the stopped server's store.
async fn populate(dir: &std::path::Path, org: &str, from: usize, count: usize) {
    let store =
        warden_storage::Store::open(&warden_storage::StoreConfig::new(dir.to_path_buf())).unwrap();
    let owner = warden_domain::Owner {
        org_id: org.to_owned(),
        user_id: "bench".into(),
        group_id: String::new(),
    };
    let mut writes = Vec::with_capacity(1000);
    for i in from..from + count {
        let new = warden_actors::node::NewNode {
            node_id: format!("bench-{i:07}"),
            name: format!("Bench node {i}"),
            ..Default::default()
        };
        let mut node = warden_actors::node::create(new, owner.clone(), "bench").unwrap();
        // A spread of creation times and a few online nodes to filter by.
        node.audit.created_at -= (from + count - i) as i64;
        if i % 10 == 0 {
            node.status = warden_actors::node::NodeStatus::Maintenance;
        }
        writes.push(warden_storage::Write::insert(&node).unwrap());
        if writes.len() == 1000 {
            store.commit(std::mem::take(&mut writes)).await.unwrap();
        }
    }
    if !writes.is_empty() {
        store.commit(writes).await.unwrap();
    }
    store.close();
}

async fn measure(http: &reqwest::Client, base: &str, token: &str, path: &str, n: usize) -> String {
    let url = format!("{base}{path}");
    for _ in 0..20 {
        http.get(&url).bearer_auth(token).send().await.unwrap();
    }
    let mut lat = Vec::with_capacity(n);
    let mut total = Value::Null;
    for _ in 0..n {
        let t = Instant::now();
        let r = http.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        lat.push(t.elapsed());
        total = body["pagination"]["total"].clone();
        assert_eq!(body["data"].as_array().map(Vec::len), Some(20), "{path}");
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    format!(
        "| `{path}` | {total} | {:.2} ms | {:.2} ms | {:.2} ms |",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or(Duration::ZERO).as_secs_f64() * 1e3
    )
}

#[tokio::main]
async fn main() {
    let nodes = env_usize("WARDEN_BENCH_NODES", 100_000);
    let requests = env_usize("WARDEN_BENCH_REQUESTS", 300);
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    warden::install_tls_provider();
    let http = reqwest::Client::new();

    // An operator in an organisation of their own.
    let (child, base) = serve(dir.path());
    let admin = login(&http, &base, "admin", ADMIN_PASSWORD).await;
    let user: Value = http
        .post(format!("{base}/admin/users"))
        .bearer_auth(&admin)
        .json(&json!({"username": "fleet", "email": "fleet@example.com", "password": "fleet-password", "roles": ["operator"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org = user["orgId"].as_str().unwrap().to_owned();
    stop(child);

    let mut rows = Vec::new();
    let mut done = 0;
    for target in [1_000, nodes] {
        let t = Instant::now();
        populate(dir.path(), &org, done, target - done).await;
        eprintln!("populated {target} nodes in {:?}", t.elapsed());
        done = target;
        let (child, base) = serve(dir.path());
        let token = login(&http, &base, "fleet", "fleet-password").await;
        let last_page = (target / 20).min(500);
        // One node in ten is in maintenance.
        let filtered_page = (target / 10 / 20).clamp(1, 10);
        for path in [
            "/api/nodes?limit=20&sort=-createdAt".to_owned(),
            format!("/api/nodes?limit=20&sort=-createdAt&page={last_page}"),
            format!(
                "/api/nodes?limit=20&sort=-createdAt&filter[status]=maintenance&page={filtered_page}"
            ),
        ] {
            rows.push((target, measure(&http, &base, &token, &path, requests).await));
        }
        rows.push((
            target,
            format!(
                "| server RSS after the queries | | {:.0} MiB | | |",
                rss_mib(child.id())
            ),
        ));
        stop(child);
    }
    println!("| nodes | query | total | p50 | p99 | max |");
    println!("|---:|---|---:|---:|---:|---:|");
    for (n, row) in rows {
        println!("| {n} {row}");
    }
}
