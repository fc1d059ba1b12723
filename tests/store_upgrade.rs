//! A data directory written by an older Warden opens in this one, and
//! everything in it reads back: users (with their old passwords), nodes,
//! instructions, tools, tokens, API keys, access entries, mail, node
//! metrics and telemetry. `tests/fixtures/store-v1` was written by the
//! binary of commit 90dbe9c (schema 1) with `tests/fixtures/make-store-v1.sh`.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

fn fixture_file(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .expect("fixture file")
    .trim()
    .to_owned()
}

#[tokio::test]
async fn a_schema_1_store_opens_and_everything_reads_back() {
    // Starting logs the fixture's admin in with its old password.
    let s = TestServer::start_from_fixture("store-v1").await;

    // Users of every dialect, and their old passwords.
    let users = s.get("/admin/users", &s.admin_token).await;
    assert_eq!(users.status, 200, "{}", users.body);
    let mut names: Vec<&str> = users
        .body
        .as_array()
        .expect("a list of users")
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["admin", "fred", "nina", "olga", "vera"]);
    let olga = s.login("olga", "olga-password-1").await;
    let r = s
        .call(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": "nina@example.com", "password": "nina-password"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user"]["name"], "Nina N");
    // Unverified accounts stay unverified.
    let r = s
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "fred", "password": "fred-password"})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // Nodes, with what the daemon registered, its metrics and its command.
    let nodes = s.get("/api/nodes?sort=nodeId", &olga).await;
    assert_eq!(nodes.status, 200, "{}", nodes.body);
    let data = nodes.body["data"].as_array().expect("nodes");
    assert_eq!(data.len(), 2, "{}", nodes.body);
    let gpu = data
        .iter()
        .find(|n| n["nodeId"] == "node-gpu-01")
        .expect("node-gpu-01");
    assert_eq!(gpu["name"], "GPU Server 1");
    // The daemon reported the real host when it registered.
    assert!(gpu["cpuCores"].as_u64().unwrap() >= 1, "{gpu}");
    assert_eq!(gpu["role"], json!(["worker"]));
    assert!(gpu["hostname"].is_string(), "{gpu}");
    assert_eq!(gpu["websocketConnected"], false);
    let id = gpu["_id"].as_str().unwrap();
    let metrics = s.get(&format!("/api/nodes/{id}/metrics"), &olga).await;
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    assert!(
        metrics.body["pagination"]["total"].as_u64().unwrap() >= 1,
        "{}",
        metrics.body
    );
    let commands = s.get(&format!("/api/nodes/{id}/commands"), &olga).await;
    assert_eq!(commands.status, 200, "{}", commands.body);
    let commands: Vec<&Value> = match &commands.body {
        Value::Array(a) => a.iter().collect(),
        other => other["data"].as_array().expect("commands").iter().collect(),
    };
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0]["type"], "model.download");
    assert_eq!(commands[0]["status"], "queued");

    // Re-indexed at the upgrade: the ordered lists see every node.
    let r = s
        .get("/api/nodes?sort=-createdAt&limit=1&page=2", &olga)
        .await;
    assert_eq!(r.body["pagination"]["total"], 2, "{}", r.body);
    assert_eq!(r.body["data"][0]["nodeId"], "node-gpu-01", "{}", r.body);
    let by_status = |status: &'static str| {
        let (s, olga) = (&s, &olga);
        async move {
            s.get(&format!("/api/nodes?filter[status]={status}"), olga)
                .await
                .body["pagination"]["total"]
                .as_u64()
                .unwrap()
        }
    };
    assert_eq!(by_status("offline").await + by_status("online").await, 2);
    let r = s.get("/users", &s.admin_token).await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(5), "{}", r.body);

    // Plain records.
    let r = s.get("/api/instructions", &olga).await;
    assert_eq!(r.body["data"][0]["instructionId"], "inst-support");
    assert_eq!(
        r.body["data"][0]["guidelines"],
        json!(["be kind", "be brief"])
    );
    let r = s.get("/api/tools", &olga).await;
    assert_eq!(r.body["data"][0]["toolId"], "tool-search");
    assert_eq!(r.body["data"][0]["endpoint"], "http://localhost/search");
    let r = s.get("/access-control", &s.admin_token).await;
    assert!(
        r.body.to_string().contains("files/report.pdf"),
        "{}",
        r.body
    );

    // Telemetry points, newest first.
    let r = s.get("/api/neosyntis/telemetry/", &olga).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let values: Vec<f64> = r
        .body
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values.len(), 3, "{}", r.body);
    for v in [1.5, 2.5, 3.5] {
        assert!(values.contains(&v), "{values:?}");
    }

    // The API key still authenticates.
    let key: Value = serde_json::from_str(&fixture_file("store-v1.api-key.json")).unwrap();
    let r = s
        .http
        .get(format!("{}/auth/api-keys", s.base))
        .header("x-api-key", key["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let listed: Value = r.json().await.unwrap();
    assert!(listed.to_string().contains("fixture-key"), "{listed}");

    // The node token still registers its node, which then gets its queued command.
    let token = fixture_file("store-v1.node-token");
    let mut ws = WsNode::connect(&s, &format!("token={token}"))
        .await
        .expect("the node token is accepted");
    ws.expect("connection.ack").await;
    ws.send(
        "node.register",
        json!({"nodeId": "node-gpu-01", "name": "GPU Server 1", "cpuCores": 16, "ramTotal": 65536}),
    )
    .await;
    let ack = ws.expect("register.ack").await;
    assert_eq!(ack["data"]["status"], "success", "{ack}");
    let command = ws.expect("model.download").await;
    assert_eq!(command["data"]["modelId"], "m1");

    // Mail sent by the old build is still in the outbox.
    let r = s.get("/admin/outbox", &s.admin_token).await;
    assert!(
        r.body.to_string().contains("vera@example.com"),
        "{}",
        r.body
    );

    // A restart of the upgraded store reads it all again.
    let s = s.restart(|_| {}).await;
    assert_eq!(
        s.get("/api/nodes", &s.login("olga", "olga-password-1").await)
            .await
            .body["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The old points were given time-index entries by the upgrade: a
    // retention sweep by time range finds every one of them.
    let s = s
        .stop_edit_start(|data_dir| async move {
            let store =
                warden_storage::Store::open(&warden_storage::StoreConfig::new(data_dir)).unwrap();
            let pruned = store
                .prune_points(warden_storage::now_millis() + 86_400_000)
                .await
                .unwrap();
            assert!(pruned >= 4, "pruned {pruned}");
            store.close();
        })
        .await;
    let r = s
        .get(
            "/api/neosyntis/telemetry/",
            &s.login("olga", "olga-password-1").await,
        )
        .await;
    assert_eq!(r.body, json!([]));
    s.stop().await;
}
