//! The real `warden node` daemon against the real server: it registers
//! with the host's facts, heartbeats, goes offline when killed, comes
//! back, and survives a server restart without losing telemetry or
//! running a command twice.

mod common;

use common::{TestServer, daemon, eventually, fast_nodes};
use serde_json::{Value, json};

async fn node(s: &TestServer, id: &str) -> Option<Value> {
    let r = s.get(&format!("/api/nodes/{id}"), &s.admin_token).await;
    (r.status == 200).then_some(r.body)
}

fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_brings_its_node_online_and_offline() {
    let s = TestServer::start_with(fast_nodes).await;
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(&s.base, &s.admin_token, "daemon-a", dir.path());

    let online = eventually(15, "the node online", || async {
        node(&s, "daemon-a")
            .await
            .filter(|n| n["status"] == "online" && n["registeredAt"].is_string())
    })
    .await;
    let expected = warden::node::Host::new().unwrap().registration(None);
    assert_eq!(online["cpuCores"], expected.cpu_cores.unwrap());
    assert!(expected.cpu_cores.unwrap() >= 1);
    assert_eq!(online["ramTotal"], expected.ram_total.unwrap());
    assert!(online["ramTotal"].as_u64().unwrap() > 100, "RAM in MB");
    assert_eq!(online["hostname"].as_str(), expected.hostname.as_deref());
    assert_eq!(online["os"]["platform"], "linux");
    assert_eq!(online["websocketConnected"], true);
    let first = online["lastHeartbeat"].as_str().unwrap().to_owned();
    eventually(5, "a later heartbeat", || async {
        node(&s, "daemon-a")
            .await
            .filter(|n| n["lastHeartbeat"].as_str().unwrap() > first.as_str())
    })
    .await;

    d.kill().unwrap();
    d.wait().unwrap();
    let killed = std::time::Instant::now();
    eventually(8, "offline", || async {
        node(&s, "daemon-a")
            .await
            .filter(|n| n["status"] == "offline")
    })
    .await;
    assert!(
        killed.elapsed() <= std::time::Duration::from_millis(5500),
        "offline three intervals after the last heartbeat, judged on the next 1 s tick (slack for a loaded machine)"
    );

    let mut d = daemon(&s.base, &s.admin_token, "daemon-a", dir.path());
    eventually(15, "online again", || async {
        node(&s, "daemon-a")
            .await
            .filter(|n| n["status"] == "online" && n["websocketConnected"] == true)
    })
    .await;
    let r = s
        .get("/api/nodes?filter[nodeId]=daemon-a", &s.admin_token)
        .await;
    assert_eq!(
        r.body["pagination"]["total"], 1,
        "the same node, not a new one"
    );
    d.kill().unwrap();
    d.wait().unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_loses_no_telemetry_and_repeats_no_command() {
    let addr = free_port();
    let listen = move |c: &mut warden::config::ServerConfig| {
        fast_nodes(c);
        c.listen = addr;
    };
    let s = TestServer::start_with(listen).await;
    // A node token, so the daemon also proves that credential path.
    let id = s
        .post(
            "/api/nodes",
            &s.admin_token,
            common::node_body("daemon-b", "B"),
        )
        .await
        .body["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = s
        .post(&format!("/api/nodes/{id}/token"), &s.admin_token, json!({}))
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(&s.base, &token, "daemon-b", dir.path());
    eventually(15, "online", || async {
        node(&s, &id)
            .await
            .filter(|n| n["websocketConnected"] == true && n["registeredAt"].is_string())
    })
    .await;

    // A command runs once and its result is recorded.
    let cmd = s
        .post(
            &format!("/api/nodes/{id}/commands"),
            &s.admin_token,
            json!({"type": "system.healthCheck", "resource": {"type": "node", "id": id}}),
        )
        .await
        .body;
    let cmd_path = format!(
        "/api/nodes/{id}/commands/{}",
        cmd["messageId"].as_str().unwrap()
    );
    let done = eventually(10, "the command's result", || async {
        let c = s.get(&cmd_path, &s.admin_token).await.body;
        (c["status"] == "succeeded").then_some(c)
    })
    .await;
    assert_eq!(done["result"]["healthy"], true);
    let unsupported = s
        .post(
            &format!("/api/nodes/{id}/commands"),
            &s.admin_token,
            json!({"type": "deployment.create", "resource": {"type": "deployment", "id": "x"}, "data": {"framework": "tensorrt", "modelPath": "x/m.plan"}}),
        )
        .await
        .body;
    let unsupported_path = format!(
        "/api/nodes/{id}/commands/{}",
        unsupported["messageId"].as_str().unwrap()
    );
    let failed = eventually(10, "an error result", || async {
        let c = s.get(&unsupported_path, &s.admin_token).await.body;
        (c["status"] == "failed").then_some(c)
    })
    .await;
    assert_eq!(failed["error"]["code"], "UNSUPPORTED_FRAMEWORK");

    // The server goes away for a while; the daemon buffers its metrics.
    eventually(10, "some metrics", || async {
        let r = s
            .get(&format!("/api/nodes/{id}/metrics"), &s.admin_token)
            .await;
        (r.body["pagination"]["total"].as_u64() >= Some(2)).then_some(())
    })
    .await;
    let s = {
        let s = s;
        let data_dir_kept = s; // restart keeps the data directory
        let stopped = std::time::Instant::now();
        let restarted = data_dir_kept
            .restart_after(std::time::Duration::from_secs(5), listen)
            .await;
        assert!(stopped.elapsed() >= std::time::Duration::from_secs(5));
        restarted
    };
    let seqs = eventually(
        30,
        "every metric, including those buffered during the outage",
        || async {
            let r = s
                .get(
                    &format!("/api/nodes/{id}/metrics?limit=100"),
                    &s.admin_token,
                )
                .await;
            let mut seqs: Vec<u64> = r.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_u64().unwrap())
                .collect();
            seqs.sort();
            let reconnected = node(&s, &id)
                .await
                .is_some_and(|n| n["websocketConnected"] == true);
            (reconnected && seqs.len() >= 7).then_some(seqs)
        },
    )
    .await;
    let expected: Vec<u64> = (0..seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "no gap and no duplicate in the metric sequence"
    );

    // Nothing ran twice.
    let after = s.get(&cmd_path, &s.admin_token).await.body;
    assert_eq!(after["completedAt"], done["completedAt"]);
    assert_eq!(
        s.get(&format!("/api/nodes/{id}/commands"), &s.admin_token)
            .await
            .body["pagination"]["total"],
        2
    );
    d.kill().unwrap();
    d.wait().unwrap();
    s.stop().await;
}
