//! A controller restart with a live fleet: N simulated daemons (raw
//! WebSocket, AIWM envelope, reconnecting with full jitter under a capped
//! doubling ceiling as `warden node` does) are connected and heartbeating;
//! the server stops (Close 1001 to every daemon) and starts again on the
//! same data directory and port. Every node must be online again within
//! 30 s, no node may be registered twice (the fleet is still N nodes), and
//! no command may reach a daemon twice, neither those answered before the
//! restart nor those queued after it.
//!
//! N is 2,000 (the figure); `WARDEN_FLEET_NODES` changes it. On
//! the 2-core CI machine the whole test takes about 30 s in a debug build.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, eventually};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

fn fleet_size() -> usize {
    std::env::var("WARDEN_FLEET_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// What the fleet saw, shared by every simulated daemon.
#[derive(Default)]
struct Fleet {
    /// `register.ack`s received, all connections together.
    registered: AtomicUsize,
    /// Each command's message id, with how many times it arrived.
    commands: Mutex<HashMap<String, usize>>,
}

/// Reconnect delays: a random wait below a ceiling that doubles from
/// `BASE` to `CAP` (full jitter), reset by a successful registration.
const BASE: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(4);

fn jitter(attempt: u32) -> Duration {
    let ceiling = BASE.saturating_mul(1 << attempt.min(10)).min(CAP);
    ceiling.mul_f64(rand::random::<f64>())
}

fn envelope(kind: &str, data: Value) -> Message {
    Message::text(
        json!({
            "type": kind,
            "messageId": uuid::Uuid::new_v4().to_string(),
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "data": data,
        })
        .to_string(),
    )
}

/// One daemon: connect, register, heartbeat every second, answer
/// commands; on any loss of the connection, wait with jitter and start
/// over. Ends (with a clean close) when `stop` turns true.
async fn daemon(url: String, node_id: String, fleet: Arc<Fleet>, mut stop: watch::Receiver<bool>) {
    let mut attempt = 0u32;
    while !*stop.borrow() {
        let connected = tokio::select! {
            c = tokio_tungstenite::connect_async(&url) => c.ok(),
            _ = stop.changed() => return,
        };
        let Some((mut socket, _)) = connected else {
            tokio::time::sleep(jitter(attempt)).await;
            attempt += 1;
            continue;
        };
        let register = envelope(
            "node.register",
            json!({"nodeId": node_id, "hostname": node_id, "cpuCores": 8, "ramTotal": 32768}),
        );
        if socket.send(register).await.is_err() {
            continue;
        }
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        beat.tick().await;
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    let _ = socket.close(None).await;
                    return;
                }
                _ = beat.tick() => {
                    let hb = envelope("telemetry.heartbeat", json!({"status": "healthy", "cpuUsage": 12.5}));
                    if socket.send(hb).await.is_err() {
                        break;
                    }
                }
                frame = socket.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    let v: Value = serde_json::from_str(text.as_str()).expect("JSON frame");
                    let kind = v["type"].as_str().unwrap_or_default();
                    match kind {
                        "register.ack" => {
                            assert_eq!(v["data"]["status"], "success", "{v}");
                            fleet.registered.fetch_add(1, Ordering::SeqCst);
                            attempt = 0;
                        }
                        "connection.ack" | "error" => {}
                        _ => {
                            let id = v["messageId"].as_str().unwrap_or_default().to_owned();
                            *fleet.commands.lock().unwrap().entry(id.clone()).or_default() += 1;
                            let ack = envelope("command.ack", json!({"originalMessageId": id, "status": "received"}));
                            let result = envelope("command.result", json!({"originalMessageId": id, "status": "success", "progress": 100, "result": {"healthy": true}}));
                            if socket.send(ack).await.is_err() || socket.send(result).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        }
        // The server went away: back off before the next try.
        drop(socket);
        tokio::time::sleep(jitter(attempt)).await;
        attempt += 1;
    }
}

async fn count(s: &TestServer, query: &str) -> u64 {
    let r = s
        .get(&format!("/api/nodes?limit=1{query}"), &s.admin_token)
        .await;
    r.body["pagination"]["total"].as_u64().unwrap_or(0)
}

/// Queues a health check on each of `ids`; returns the commands' message ids.
async fn queue_commands(s: &TestServer, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        let r = s
            .post(
                &format!("/api/nodes/{id}/commands"),
                &s.admin_token,
                json!({"type": "system.healthCheck", "resource": {"type": "node", "id": id}}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        out.push(r.body["messageId"].as_str().unwrap().to_owned());
    }
    out
}

async fn all_succeeded(s: &TestServer, ids: &[String], messages: &[String]) -> bool {
    for (id, m) in ids.iter().zip(messages) {
        let c = s
            .get(&format!("/api/nodes/{id}/commands/{m}"), &s.admin_token)
            .await;
        if c.body["status"] != "succeeded" {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_fleet_survives_a_controller_restart() {
    let n = fleet_size();
    // Both ends of every connection live in this process.
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the fd limit");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let listen = move |c: &mut warden::config::ServerConfig| {
        c.node_timing.heartbeat = Duration::from_secs(1);
        c.listen = addr;
    };
    let s = TestServer::start_with(listen).await;
    let url = format!(
        "ws://{addr}/ws/node?token={}&nodeId=",
        s.admin_token.clone()
    );
    let fleet = Arc::new(Fleet::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut daemons = Vec::new();
    for i in 0..n {
        let node_id = format!("fleet-{i:05}");
        daemons.push(tokio::spawn(daemon(
            format!("{url}{node_id}"),
            node_id,
            fleet.clone(),
            stop_rx.clone(),
        )));
        if i % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eventually(90, "the whole fleet registered", || async {
        (fleet.registered.load(Ordering::SeqCst) >= n).then_some(())
    })
    .await;
    eventually(30, "the whole fleet online", || async {
        (count(&s, "&filter[status]=online").await == n as u64).then_some(())
    })
    .await;

    // Commands answered before the restart must not come back after it.
    let page = s.get("/api/nodes?limit=20", &s.admin_token).await.body;
    let ids: Vec<String> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["_id"].as_str().unwrap().to_owned())
        .collect();
    let before = queue_commands(&s, &ids).await;
    eventually(20, "the commands answered", || async {
        all_succeeded(&s, &ids, &before).await.then_some(())
    })
    .await;

    // The restart: every daemon gets a Close, reconnects with jitter.
    let registered_before = fleet.registered.load(Ordering::SeqCst);
    let stopped = std::time::Instant::now();
    let s = s.restart_after(Duration::from_millis(500), listen).await;
    eprintln!("restarted {:?} after the stop began", stopped.elapsed());
    eventually(30, "every daemon registered again", || async {
        (fleet.registered.load(Ordering::SeqCst) >= registered_before + n).then_some(())
    })
    .await;
    eprintln!(
        "all registered again {:?} after the stop began",
        stopped.elapsed()
    );
    eventually(30, "every node online again", || async {
        (count(&s, "&filter[status]=online").await == n as u64).then_some(())
    })
    .await;
    let back_in = stopped.elapsed();
    eprintln!("{n} daemons: all online again {back_in:?} after the server stopped");
    assert!(
        back_in < Duration::from_secs(30),
        "the fleet was back in {back_in:?}"
    );
    assert_eq!(
        count(&s, "").await,
        n as u64,
        "no node was registered twice"
    );

    let after = queue_commands(&s, &ids).await;
    eventually(20, "the new commands answered", || async {
        all_succeeded(&s, &ids, &after).await.then_some(())
    })
    .await;
    // Give a duplicate the time to arrive, then count deliveries.
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let commands = fleet.commands.lock().unwrap();
        for m in before.iter().chain(&after) {
            assert_eq!(commands.get(m), Some(&1), "command {m} delivered once");
        }
        assert_eq!(commands.len(), before.len() + after.len());
    }

    stop_tx.send(true).unwrap();
    for d in daemons {
        let _ = tokio::time::timeout(Duration::from_secs(10), d).await;
    }
    s.stop().await;
}
