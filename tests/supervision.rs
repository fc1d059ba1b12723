//! Supervision as a client sees it: a crashed node actor restarts with
//! its state, the tree counts the restart, and past the restart limit the
//! node is failed while the server keeps serving.

mod common;

use common::{TestServer, assert_aiwm_error, eventually, find_actor, node_body};
use serde_json::{Value, json};

async fn actor(s: &TestServer, name: &str) -> Option<Value> {
    let tree = s.get("/admin/actors", &s.admin_token).await.body;
    find_actor(&tree, name).cloned()
}

async fn wait_status(s: &TestServer, name: &str, status: &str, restarts: u64) -> Value {
    eventually(
        10,
        &format!("{name} {status} with {restarts} restarts"),
        || async {
            actor(s, name)
                .await
                .filter(|a| a["status"] == status && a["restartCount"] == restarts)
        },
    )
    .await
}

fn fault_injection(c: &mut warden::config::ServerConfig) {
    c.enable_fault_injection = true;
}

#[tokio::test]
async fn a_crashed_node_restarts_with_its_state() {
    let s = TestServer::start_with(fault_injection).await;
    let t = s.admin_token.clone();
    let id = s
        .post("/api/nodes", &t, node_body("crashy", "Crashy"))
        .await
        .body["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/nodes/{id}");
    assert_eq!(
        s.put(
            &path,
            &t,
            json!({"name": "Before the crash", "ramFree": 1234})
        )
        .await
        .status,
        200
    );
    let name = format!("node:{id}");
    let before = wait_status(&s, &name, "running", 0).await;
    assert_eq!(before["kind"], "node");
    assert_eq!(before["entityId"], id.as_str());

    let r = s
        .post(&format!("/admin/actors/{name}/crash"), &t, json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let after = wait_status(&s, &name, "running", 1).await;
    assert!(
        after["lastFailure"]["reason"]
            .as_str()
            .unwrap()
            .contains("fault injection")
    );
    assert!(after["startedAt"].as_str() > before["startedAt"].as_str());

    // The restarted actor holds the state it had: a further update keeps the earlier one.
    let r = s.put(&path, &t, json!({"cpuCores": 64})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["name"], "Before the crash");
    assert_eq!(r.body["ramFree"], 1234);
    assert_eq!(r.body["cpuCores"], 64);

    // The tree shows the supervisors and their policy.
    let tree = s.get("/admin/actors", &t).await.body;
    assert_eq!(tree["name"], "root");
    let nodes = find_actor(&tree, "nodes").unwrap();
    assert_eq!(nodes["kind"], "supervisor");
    assert_eq!(nodes["policy"]["max_restarts"], 3);
    // Metrics count it too.
    let metrics = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("warden_actor_restarts{kind=\"node\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_actors{kind=\"node\",status=\"running\"} 1"),
        "{metrics}"
    );

    // Unknown actors.
    assert_aiwm_error(
        &s.post("/admin/actors/node:nope/crash", &t, json!({})).await,
        404,
        "/admin/actors/node:nope/crash",
    );
    assert_aiwm_error(
        &s.post("/admin/actors/garbage/crash", &t, json!({})).await,
        404,
        "/admin/actors/garbage/crash",
    );
    s.stop().await;
}

#[tokio::test]
async fn past_the_restart_limit_the_node_fails_and_the_server_serves_on() {
    let s = TestServer::start_with(fault_injection).await;
    let t = s.admin_token.clone();
    let id = s
        .post("/api/nodes", &t, node_body("doomed", "Doomed"))
        .await
        .body["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/nodes/{id}");
    let name = format!("node:{id}");
    assert_eq!(
        s.put(&path, &t, json!({"status": "online"})).await.status,
        200
    );
    for restarts in 1..=3 {
        wait_status(&s, &name, "running", restarts - 1).await;
        assert_eq!(
            s.post(&format!("/admin/actors/{name}/crash"), &t, json!({}))
                .await
                .status,
            202
        );
        wait_status(&s, &name, "running", restarts).await;
    }
    assert_eq!(
        s.post(&format!("/admin/actors/{name}/crash"), &t, json!({}))
            .await
            .status,
        202
    );
    let failed = wait_status(&s, &name, "failed", 3).await;
    assert!(
        failed["lastFailure"]["reason"]
            .as_str()
            .unwrap()
            .contains("fault injection")
    );

    let r = s.get(&path, &t).await;
    assert_eq!(r.body["status"], "failed");
    assert!(
        r.body["failureReason"]
            .as_str()
            .unwrap()
            .contains("fault injection")
    );
    let r = s.put(&path, &t, json!({"name": "x"})).await;
    assert_aiwm_error(&r, 409, &path);
    assert!(r.body["message"].as_str().unwrap().contains("has failed"));

    // Everything else keeps working.
    assert_eq!(s.get("/health", &t).await.status, 200);
    let other = s
        .post("/api/nodes", &t, node_body("healthy", "Healthy"))
        .await;
    assert_eq!(other.status, 201);
    let other_path = format!("/api/nodes/{}", other.body["_id"].as_str().unwrap());
    assert_eq!(
        s.put(&other_path, &t, json!({"name": "still fine"}))
            .await
            .status,
        200
    );

    // Failed stays failed across a server restart.
    let s = s.restart(fault_injection).await;
    let t = s.admin_token.clone();
    assert_eq!(actor(&s, &name).await.unwrap()["status"], "failed");
    assert_aiwm_error(&s.put(&path, &t, json!({"name": "x"})).await, 409, &path);

    // An admin reset brings it back as offline.
    assert_eq!(
        s.post(&format!("/admin/actors/{name}/restart"), &t, json!({}))
            .await
            .status,
        200
    );
    let r = s.put(&path, &t, json!({"name": "Recovered"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "offline");
    assert!(r.body.get("failureReason").is_none());
    wait_status(&s, &name, "running", 0).await;
    s.stop().await;
}

#[tokio::test]
async fn a_failed_node_can_still_be_deleted() {
    let s = TestServer::start_with(|c| {
        c.enable_fault_injection = true;
        c.node_policy.max_restarts = 0;
    })
    .await;
    let t = s.admin_token.clone();
    let id = s
        .post("/api/nodes", &t, node_body("short-lived", "x"))
        .await
        .body["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/nodes/{id}");
    let name = format!("node:{id}");
    assert_eq!(s.put(&path, &t, json!({"name": "y"})).await.status, 200);
    assert_eq!(
        s.post(&format!("/admin/actors/{name}/crash"), &t, json!({}))
            .await
            .status,
        202
    );
    wait_status(&s, &name, "failed", 0).await;
    assert_eq!(s.delete(&path, &t).await.status, 200);
    assert_aiwm_error(&s.get(&path, &t).await, 404, &path);
    eventually(5, "the deleted node's actor to leave the tree", || async {
        actor(&s, &name).await.is_none().then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn the_crash_route_exists_only_with_fault_injection() {
    let s = TestServer::start().await;
    let r = s
        .post("/admin/actors/node:x/crash", &s.admin_token, json!({}))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.headers.get("x-warden-route").unwrap(), "unmatched");
    s.stop().await;
}

#[tokio::test]
async fn idle_node_actors_passivate_and_come_back_with_their_state() {
    let s = TestServer::start_with(|c| {
        c.node_timing.heartbeat = std::time::Duration::from_millis(100);
        c.node_timing.idle = std::time::Duration::from_millis(300);
    })
    .await;
    let t = s.admin_token.clone();
    let id = s
        .post("/api/nodes", &t, node_body("sleepy", "Sleepy"))
        .await
        .body["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/nodes/{id}");
    let name = format!("node:{id}");
    assert_eq!(s.put(&path, &t, json!({"name": "Awake"})).await.status, 200);
    assert!(actor(&s, &name).await.is_some());
    eventually(5, "the idle actor to passivate", || async {
        actor(&s, &name).await.is_none().then_some(())
    })
    .await;
    let r = s.put(&path, &t, json!({"ramFree": 7})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["name"], "Awake", "re-activated from storage");
    assert!(actor(&s, &name).await.is_some());
    // Updates racing the passivation all land.
    for i in 0..8u64 {
        tokio::time::sleep(std::time::Duration::from_millis(280 + i * 10)).await;
        let r = s.put(&path, &t, json!({"cpuCores": i})).await;
        assert_eq!(r.status, 200, "update {i}: {}", r.body);
        assert_eq!(r.body["cpuCores"], i);
    }
    s.stop().await;
}

/// A daemon connected and registered as `node_id`; returns it and the node's `_id`.
async fn connected_node(s: &TestServer, token: &str, node_id: &str) -> (common::WsNode, String) {
    let mut ws = common::WsNode::connect(s, &format!("token={token}&nodeId={node_id}"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    ws.send(
        "node.register",
        json!({"nodeId": node_id, "name": node_id, "cpuCores": 4, "ramTotal": 1024}),
    )
    .await;
    let ack = ws.expect("register.ack").await;
    (ws, ack["data"]["_id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_crashed_actor_keeps_its_connection_and_commands_queued_meanwhile_flow() {
    let s = TestServer::start_with(|c| {
        fault_injection(c);
        common::fast_nodes(c);
    })
    .await;
    let t = s.admin_token.clone();
    let (mut ws, id) = connected_node(&s, &t, "crash-conn").await;
    let name = format!("node:{id}");
    assert_eq!(
        s.post(&format!("/admin/actors/{name}/crash"), &t, json!({}))
            .await
            .status,
        202
    );
    // Queued right behind the crash: answered by the restarted actor, and
    // delivered over the daemon's connection without it sending anything.
    let r = s
        .post(
            &format!("/api/nodes/{id}/commands"),
            &t,
            json!({"type": "model.download", "resource": {"type": "model", "id": "m"}, "data": {"modelId": "m"}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let sent = ws.expect("model.download").await;
    assert_eq!(sent["messageId"], r.body["messageId"]);
    wait_status(&s, &name, "running", 1).await;
    let node = s.get(&format!("/api/nodes/{id}"), &t).await.body;
    assert_eq!(node["websocketConnected"], true, "{node}");
    assert_eq!(node["status"], "online", "{node}");
    // The connection still works both ways after the restart.
    ws.send(
        "command.result",
        json!({"originalMessageId": sent["messageId"], "status": "success", "result": {"ok": true}}),
    )
    .await;
    eventually(5, "the command succeeded", || async {
        let c = s
            .get(
                &format!(
                    "/api/nodes/{id}/commands/{}",
                    sent["messageId"].as_str().unwrap()
                ),
                &t,
            )
            .await;
        (c.body["status"] == "succeeded").then_some(())
    })
    .await;

    // A reply that reaches the actor while it dies is recorded by its successor.
    let r = s
        .post(
            &format!("/api/nodes/{id}/commands"),
            &t,
            json!({"type": "model.download", "resource": {"type": "model", "id": "m2"}, "data": {"modelId": "m2"}}),
        )
        .await;
    let second = ws.expect("model.download").await;
    assert_eq!(second["messageId"], r.body["messageId"]);
    s.post(&format!("/admin/actors/{name}/crash"), &t, json!({}))
        .await;
    ws.send(
        "command.result",
        json!({"originalMessageId": second["messageId"], "status": "failure", "error": {"message": "disk full"}}),
    )
    .await;
    eventually(5, "the second command failed", || async {
        let c = s
            .get(
                &format!(
                    "/api/nodes/{id}/commands/{}",
                    second["messageId"].as_str().unwrap()
                ),
                &t,
            )
            .await;
        (c.body["status"] == "failed").then_some(())
    })
    .await;
    wait_status(&s, &name, "running", 2).await;
}

#[tokio::test]
async fn a_retried_command_with_its_idempotency_key_is_made_and_sent_once() {
    let s = TestServer::start_with(common::fast_nodes).await;
    let t = s.admin_token.clone();
    let (mut ws, id) = connected_node(&s, &t, "idem").await;
    let send = |key: &'static str| {
        let url = format!("{}/api/nodes/{id}/commands", s.base);
        let t = t.clone();
        let http = s.http.clone();
        async move {
            let r = http
                .post(url)
                .bearer_auth(t)
                .header("idempotency-key", key)
                .json(&json!({"type": "model.download", "resource": {"type": "model", "id": "m"}, "data": {"modelId": key}}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, first) = send("retry-me").await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = send("retry-me").await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(first["messageId"], again["messageId"]);
    let (_, other) = send("another").await;
    assert_ne!(other["messageId"], first["messageId"]);

    let list = s.get(&format!("/api/nodes/{id}/commands"), &t).await.body;
    let n = list["data"]
        .as_array()
        .or(list.as_array())
        .map(Vec::len)
        .unwrap();
    assert_eq!(n, 2, "{list}");
    // The daemon got each command exactly once, in order.
    assert_eq!(
        ws.expect("model.download").await["messageId"],
        first["messageId"]
    );
    assert_eq!(
        ws.expect("model.download").await["messageId"],
        other["messageId"]
    );

    let r = s
        .http
        .post(format!("{}/api/nodes/{id}/commands", s.base))
        .bearer_auth(&t)
        .header("idempotency-key", "")
        .json(&json!({"type": "model.download", "resource": {"type": "model", "id": "m"}, "data": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_online_nodes_reactivate_in_parallel_while_the_supervisor_answers() {
    const NODES: usize = 10_000;
    let s = TestServer::start().await;
    let t = s.admin_token.clone();
    let probe = s
        .post("/api/nodes", &t, node_body("probe", "Probe"))
        .await
        .body["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let org = s.get(&format!("/api/nodes/{probe}"), &t).await.body["owner"]["orgId"]
        .as_str()
        .unwrap()
        .to_owned();
    // 10,000 nodes that were online when the server stopped, written
    // straight into the stopped server's store.
    let s = s
        .stop_edit_start(|data_dir| async move {
            let store =
                warden_storage::Store::open(&warden_storage::StoreConfig::new(data_dir)).unwrap();
            let owner = warden_domain::Owner {
                org_id: org,
                user_id: "fixture".into(),
                group_id: String::new(),
            };
            let mut writes = Vec::new();
            for i in 0..NODES {
                let new = warden_actors::node::NewNode {
                    node_id: format!("boot-{i}"),
                    name: format!("Boot {i}"),
                    ..Default::default()
                };
                let mut node = warden_actors::node::create(new, owner.clone(), "fixture").unwrap();
                node.status = warden_actors::node::NodeStatus::Online;
                writes.push(warden_storage::Write::insert(&node).unwrap());
                if writes.len() == 500 {
                    store.commit(std::mem::take(&mut writes)).await.unwrap();
                }
            }
            if !writes.is_empty() {
                store.commit(writes).await.unwrap();
            }
            store.close();
        })
        .await;
    let started = std::time::Instant::now();
    // The supervisor answers while it re-activates: a write to another node
    // goes through long before the boot is over.
    let r = s
        .put(
            &format!("/api/nodes/{probe}"),
            &t,
            json!({"name": "During boot"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answered = started.elapsed();
    let running = eventually(60, "10,000 node actors running", || async {
        let tree = s.get("/admin/actors", &t).await.body;
        let nodes = tree["children"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == "nodes")?;
        let n = nodes["children"]
            .as_array()?
            .iter()
            .filter(|c| c["status"] == "running")
            .count();
        (n >= NODES).then_some(n)
    })
    .await;
    let all = started.elapsed();
    eprintln!("probe answered after {answered:?}; {running} actors running after {all:?}");
    assert!(
        all < std::time::Duration::from_secs(30),
        "re-activation took {all:?}"
    );
    s.stop().await;
}
