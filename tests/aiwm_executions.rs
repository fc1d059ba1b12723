//! AIWM executions (seeds/aiwm-api.md §6): durable multi-step work on the
//! fleet, driven over HTTP, answered by a daemon over the node protocol.

mod common;

use common::{TestServer, WsNode, assert_aiwm_error, eventually, fast_nodes, node_body};
use serde_json::{Value, json};

/// A registered node with a connected daemon.
async fn online_node(s: &TestServer, token: &str, node_id: &str) -> WsNode {
    let r = s
        .post("/api/nodes", token, node_body(node_id, node_id))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    connect(s, token, node_id).await
}

async fn connect(s: &TestServer, token: &str, node_id: &str) -> WsNode {
    let mut ws = WsNode::connect(s, &format!("token={token}&nodeId={node_id}"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    ws.send("node.register", json!({"hostname": node_id})).await;
    ws.expect("register.ack").await;
    ws
}

fn health_step(index: u32, node: &str, depends_on: &[u32], optional: bool) -> Value {
    json!({
        "index": index,
        "name": format!("check {index}"),
        "command": {"type": "system.healthCheck", "resource": {"type": "node", "id": node}, "data": {"deep": index}},
        "nodeId": node,
        "timeoutSeconds": 60,
        "dependsOn": depends_on,
        "optional": optional,
    })
}

fn execution(id: &str, steps: Vec<Value>) -> Value {
    json!({
        "executionId": id,
        "name": format!("run {id}"),
        "category": "maintenance",
        "type": "health-check",
        "timeoutSeconds": 600,
        "resourceType": "node",
        "resourceId": "n1",
        "steps": steps,
        "labels": {"team": "infra"},
    })
}

/// The next command frame (anything but acks), skipping other frames.
async fn next_command(ws: &mut WsNode) -> Value {
    loop {
        let v = ws
            .recv()
            .await
            .expect("a command before the connection closed");
        let t = v["type"].as_str().unwrap_or_default();
        if t != "error" && !t.ends_with(".ack") {
            return v;
        }
    }
}

async fn answer(ws: &mut WsNode, cmd: &Value, ok: bool) {
    let id = cmd["messageId"].as_str().unwrap();
    ws.send(
        "command.ack",
        json!({"originalMessageId": id, "status": "acknowledged"}),
    )
    .await;
    let data = if ok {
        json!({"originalMessageId": id, "status": "success", "progress": 100, "result": {"healthy": true, "step": cmd["metadata"]["stepIndex"]}})
    } else {
        json!({"originalMessageId": id, "status": "error", "progress": 40, "result": null, "error": {"code": "CHECK_FAILED", "message": "disk full", "details": {"free": 0}}})
    };
    ws.send("command.result", data).await;
}

async fn wait_status(s: &TestServer, t: &str, id: &str, status: &str) -> Value {
    eventually(15, &format!("execution {id} {status}"), || async {
        let x = s.get(&format!("/api/executions/{id}"), t).await.body;
        (x["status"] == status).then_some(x)
    })
    .await
}

#[tokio::test]
async fn a_dag_runs_on_a_node_and_completes() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let mut ws = online_node(&s, &t, "n1").await;

    let r = s
        .post(
            "/api/executions",
            &t,
            execution(
                "exec-1",
                vec![
                    health_step(0, "n1", &[], false),
                    health_step(1, "n1", &[], true),
                    health_step(2, "n1", &[0, 1], false),
                ],
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let x = &r.body;
    assert_eq!(x["status"], "pending");
    assert_eq!(x["progress"], 0);
    assert_eq!(x["involvedNodeIds"], json!(["n1"]));
    assert_eq!(
        (x["retryCount"].clone(), x["maxRetries"].clone()),
        (json!(0), json!(3))
    );
    assert_eq!(
        x["labels"],
        json!({"team": "infra"}),
        "extra fields are kept"
    );
    assert_eq!(x["steps"][2]["dependsOn"], json!([0, 1]));
    assert_eq!(x["steps"][0]["status"], "pending");

    let r = s
        .post("/api/executions/exec-1/start", &t, json!({"force": false}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "running");
    assert!(r.body["startedAt"].is_string());
    assert!(r.body["timeoutAt"].is_string());

    // Steps 0 and 1 go out together; 2 waits for both.
    let mut first = [next_command(&mut ws).await, next_command(&mut ws).await];
    first.sort_by_key(|c| c["metadata"]["stepIndex"].as_u64());
    assert_eq!(first[0]["type"], "system.healthCheck");
    assert_eq!(first[0]["resource"], json!({"type": "node", "id": "n1"}));
    assert_eq!(first[0]["metadata"]["executionId"], "exec-1");
    assert_eq!(first[1]["metadata"]["stepIndex"], 1);
    assert_eq!(first[0]["data"], json!({"deep": 0}));
    let x = s.get("/api/executions/exec-1", &t).await.body;
    assert_eq!(x["steps"][0]["sentMessageId"], first[0]["messageId"]);
    assert_eq!(x["sentMessageIds"].as_array().unwrap().len(), 2);

    answer(&mut ws, &first[0], true).await;
    answer(&mut ws, &first[1], false).await; // optional: skipped
    let last = next_command(&mut ws).await;
    assert_eq!(last["metadata"]["stepIndex"], 2);
    answer(&mut ws, &last, true).await;

    let x = wait_status(&s, &t, "exec-1", "completed").await;
    assert_eq!(x["progress"], 100);
    assert_eq!(x["steps"][0]["status"], "completed");
    assert_eq!(x["steps"][0]["result"], json!({"healthy": true, "step": 0}));
    assert_eq!(x["steps"][1]["status"], "skipped");
    assert_eq!(x["steps"][1]["error"]["code"], "CHECK_FAILED");
    assert_eq!(x["steps"][1]["error"]["details"], json!({"free": 0}));
    assert_eq!(x["steps"][2]["status"], "completed");
    assert!(x["completedAt"].is_string());
    assert_eq!(x["sentMessageIds"].as_array().unwrap().len(), 3);
    assert_eq!(
        x["receivedMessageIds"].as_array().unwrap().len(),
        6,
        "every ack and result is tracked: {x}"
    );
    assert_eq!(x["result"]["steps"][2]["result"]["healthy"], true);

    // Lists, filters and statistics read what is stored.
    s.post("/api/executions", &t, execution("exec-2", vec![]))
        .await;
    let other =
        json!({"name": "other", "category": "deployment", "type": "deploy-model", "steps": []});
    assert_eq!(s.post("/api/executions", &t, other).await.status, 201);
    let list = s.get("/api/executions?status=completed", &t).await.body;
    assert_eq!(list["pagination"]["total"], 1);
    assert_eq!(list["data"][0]["executionId"], "exec-1");
    let list = s
        .get("/api/executions?category=maintenance&limit=1", &t)
        .await
        .body;
    assert_eq!(
        (
            list["pagination"]["total"].clone(),
            list["data"].as_array().unwrap().len()
        ),
        (json!(2), 1)
    );
    let list = s.get("/api/executions?nodeId=n1", &t).await.body;
    assert_eq!(list["pagination"]["total"], 1);
    let list = s
        .get(
            "/api/executions?resourceType=node&resourceId=n1&type=health-check",
            &t,
        )
        .await
        .body;
    assert_eq!(list["pagination"]["total"], 2);
    let stats = s.get("/api/executions/_statistics/summary", &t).await.body;
    assert_eq!(stats["total"], 3, "{stats}");
    assert_eq!(stats["byStatus"]["completed"], 1);
    assert_eq!(stats["byStatus"]["pending"], 2);
    assert_eq!(stats["byStatus"]["failed"], 0);
    assert_eq!(
        stats["byCategory"],
        json!({"deployment": 1, "maintenance": 2})
    );

    // The node's command list shows the same commands.
    let node = s.get("/api/nodes/n1", &t).await.body;
    let cmds = s
        .get(
            &format!("/api/nodes/{}/commands", node["_id"].as_str().unwrap()),
            &t,
        )
        .await
        .body;
    assert_eq!(cmds["pagination"]["total"], 3);
    s.stop().await;
}

#[tokio::test]
async fn bad_requests_and_refused_transitions() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    s.post("/api/nodes", &t, node_body("n1", "n1")).await;

    let r = s.post("/api/executions", &t, json!({"steps": "x"})).await;
    assert_aiwm_error(&r, 400, "/api/executions");
    let errors = r.body["errors"].to_string();
    assert!(errors.contains("steps must be an array"), "{errors}");
    let r = s
        .post("/api/executions", &t, json!({"category": "c", "type": "t"}))
        .await;
    assert!(
        r.body["errors"]
            .to_string()
            .contains("name must be a string"),
        "{}",
        r.body
    );
    let cyclic = execution(
        "c",
        vec![
            health_step(0, "n1", &[1], false),
            health_step(1, "n1", &[0], false),
        ],
    );
    let r = s.post("/api/executions", &t, cyclic).await;
    assert_aiwm_error(&r, 400, "/api/executions");
    assert!(r.body["errors"].to_string().contains("cycle"), "{}", r.body);
    let r = s
        .post(
            "/api/executions",
            &t,
            execution("u", vec![health_step(0, "ghost", &[], false)]),
        )
        .await;
    assert!(r.body["errors"].to_string().contains("ghost"), "{}", r.body);
    let r = s
        .post(
            "/api/executions",
            &t,
            json!({"name": "p", "category": "c", "type": "t", "parentExecutionId": "nope"}),
        )
        .await;
    assert_aiwm_error(&r, 400, "/api/executions");

    assert_eq!(
        s.post("/api/executions", &t, execution("e1", vec![]))
            .await
            .status,
        201
    );
    let r = s.post("/api/executions", &t, execution("e1", vec![])).await;
    assert_aiwm_error(&r, 409, "/api/executions");

    // Refused transitions leave the execution as it was.
    let path = "/api/executions/e1/retry";
    assert_aiwm_error(&s.post(path, &t, json!({})).await, 400, path);
    let path = "/api/executions/e1/start";
    assert_aiwm_error(&s.post(path, &t, json!({"force": "yes"})).await, 400, path);
    let r = s.post(path, &t, json!({})).await;
    assert_eq!(
        r.body["status"], "completed",
        "no steps: done at once: {}",
        r.body
    );
    assert_aiwm_error(&s.post(path, &t, json!({})).await, 400, path);
    let path = "/api/executions/e1/cancel";
    assert_aiwm_error(&s.post(path, &t, json!({})).await, 400, path);
    let path = "/api/executions/nope";
    assert_aiwm_error(&s.get(path, &t).await, 404, path);
    let path = "/api/executions/nope/start";
    assert_aiwm_error(&s.post(path, &t, json!({})).await, 404, path);

    // Parent and child link both ways.
    let child = json!({"executionId": "child", "name": "c", "category": "batch", "type": "t", "parentExecutionId": "e1"});
    assert_eq!(s.post("/api/executions", &t, child).await.status, 201);
    let parent = s.get("/api/executions/e1", &t).await.body;
    assert_eq!(parent["childExecutionIds"], json!(["child"]));
    assert_eq!(
        s.get("/api/executions/child", &t).await.body["parentExecutionId"],
        "e1"
    );

    // Tenancy and roles: another organisation sees nothing; a viewer writes nothing.
    let (other, _) = s.user("stranger", &["operator"], None).await;
    let path = "/api/executions/e1";
    assert_aiwm_error(&s.get(path, &other).await, 404, path);
    let stats = s
        .get("/api/executions/_statistics/summary", &other)
        .await
        .body;
    assert_eq!(stats["total"], 0);
    let (viewer, _) = s.user("watcher", &["viewer"], None).await;
    let r = s
        .post("/api/executions", &viewer, execution("v", vec![]))
        .await;
    assert_aiwm_error(&r, 403, "/api/executions");
    let r = s
        .call(reqwest::Method::GET, "/api/executions", None, None)
        .await;
    assert_eq!(r.status, 401);
    s.stop().await;
}

#[tokio::test]
async fn a_step_waits_for_its_node_and_times_out_without_it() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    s.post("/api/nodes", &t, node_body("away", "away")).await;
    s.post("/api/nodes", &t, node_body("late", "late")).await;

    // Offline past the step's timeout: the command never leaves.
    let mut step = health_step(0, "away", &[], false);
    step["timeoutSeconds"] = json!(1);
    s.post("/api/executions", &t, execution("gone", vec![step]))
        .await;
    s.post("/api/executions/gone/start", &t, json!({})).await;
    let x = wait_status(&s, &t, "gone", "timeout").await;
    assert_eq!(x["error"]["code"], "STEP_TIMEOUT");
    assert_eq!(x["error"]["stepIndex"], 0);
    assert_eq!(x["steps"][0]["status"], "failed");
    let node = s.get("/api/nodes/away", &t).await.body;
    let commands = format!("/api/nodes/{}/commands", node["_id"].as_str().unwrap());
    // The node's actor hears of the timeout after the execution records it.
    eventually(10, "the timed-out command cancelled", || async {
        let cmds = s.get(&commands, &t).await.body;
        (cmds["data"][0]["status"] == "cancelled").then_some(())
    })
    .await;
    let mut ws = WsNode::connect(&s, &format!("token={t}&nodeId=away"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    ws.send("node.register", json!({})).await;
    let ack = ws.expect("register.ack").await;
    assert_eq!(
        ack["data"]["pendingCommands"],
        json!([]),
        "a timed-out command is never sent"
    );

    // Offline, then back in time: the command goes out on registration.
    s.post(
        "/api/executions",
        &t,
        execution("wait", vec![health_step(0, "late", &[], false)]),
    )
    .await;
    let r = s.post("/api/executions/wait/start", &t, json!({})).await;
    assert_eq!(r.body["steps"][0]["status"], "running");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut ws = connect(&s, &t, "late").await;
    let cmd = next_command(&mut ws).await;
    assert_eq!(cmd["metadata"]["executionId"], "wait");
    answer(&mut ws, &cmd, true).await;
    wait_status(&s, &t, "wait", "completed").await;
    s.stop().await;
}

#[tokio::test]
async fn cancel_tells_the_node_and_retry_sends_a_new_command() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let mut ws = online_node(&s, &t, "n1").await;

    s.post(
        "/api/executions",
        &t,
        execution("c1", vec![health_step(0, "n1", &[], false)]),
    )
    .await;
    s.post("/api/executions/c1/start", &t, json!({})).await;
    let cmd = next_command(&mut ws).await;
    let r = s
        .post(
            "/api/executions/c1/cancel",
            &t,
            json!({"reason": "User requested cancellation"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(
        r.body["error"],
        json!({"code": "USER_CANCELLED", "message": "User requested cancellation"})
    );
    let cancel = ws.expect("command.cancel").await;
    assert_eq!(cancel["data"]["originalMessageId"], cmd["messageId"]);
    // A late answer changes nothing.
    answer(&mut ws, &cmd, true).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        s.get("/api/executions/c1", &t).await.body["status"],
        "cancelled"
    );

    // A failed required step fails the run; a retry sends a new command.
    let mut two = execution(
        "r1",
        vec![
            health_step(0, "n1", &[], false),
            health_step(1, "n1", &[0], false),
        ],
    );
    two["maxRetries"] = json!(1);
    s.post("/api/executions", &t, two).await;
    s.post("/api/executions/r1/start", &t, json!({})).await;
    let c0 = next_command(&mut ws).await;
    answer(&mut ws, &c0, true).await;
    let c1 = next_command(&mut ws).await;
    answer(&mut ws, &c1, false).await;
    let x = wait_status(&s, &t, "r1", "failed").await;
    assert_eq!(x["error"]["code"], "CHECK_FAILED");
    assert_eq!(x["error"]["stepIndex"], 1);
    assert_eq!(x["error"]["nodeId"], "n1");
    assert_eq!(x["steps"][1]["progress"], 40);

    let r = s
        .post("/api/executions/r1/retry", &t, json!({"resetSteps": false}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "running");
    assert_eq!(r.body["retryCount"], 1);
    assert_eq!(r.body["retryAttempts"].as_array().unwrap().len(), 1);
    assert_eq!(
        r.body["steps"][0]["status"], "completed",
        "a completed step is kept"
    );
    let again = next_command(&mut ws).await;
    assert_eq!(again["metadata"]["stepIndex"], 1);
    assert_ne!(
        again["messageId"], c1["messageId"],
        "a retry is a new command"
    );
    answer(&mut ws, &again, true).await;
    wait_status(&s, &t, "r1", "completed").await;
    let path = "/api/executions/r1/retry";
    assert_aiwm_error(&s.post(path, &t, json!({})).await, 400, path);
    s.stop().await;
}

#[tokio::test]
async fn an_execution_resumes_after_a_restart_without_sending_twice() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let mut ws = online_node(&s, &t, "n1").await;
    s.post(
        "/api/executions",
        &t,
        execution(
            "long",
            vec![
                health_step(0, "n1", &[], false),
                health_step(1, "n1", &[0], false),
            ],
        ),
    )
    .await;
    s.post("/api/executions/long/start", &t, json!({})).await;
    let c0 = next_command(&mut ws).await;
    drop(ws);

    let s = s.restart(fast_nodes).await;
    let t = s.admin_token.clone();
    let tree = s.get("/admin/actors", &t).await.body;
    let x = s.get("/api/executions/long", &t).await.body;
    assert_eq!(x["status"], "running");
    assert!(
        common::find_actor(&tree, &format!("execution:{}", x["_id"].as_str().unwrap())).is_some(),
        "a running execution is re-activated at boot: {tree}"
    );

    // The daemon comes back: nothing is re-sent; its late answer counts.
    let mut ws = WsNode::connect(&s, &format!("token={t}&nodeId=n1"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    ws.send("node.register", json!({})).await;
    let ack = ws.expect("register.ack").await;
    assert_eq!(ack["data"]["pendingCommands"], json!([]));
    answer(&mut ws, &c0, true).await;
    let c1 = next_command(&mut ws).await;
    assert_eq!(c1["metadata"]["stepIndex"], 1);
    answer(&mut ws, &c1, true).await;
    let x = wait_status(&s, &t, "long", "completed").await;
    assert_eq!(x["sentMessageIds"].as_array().unwrap().len(), 2);
    s.stop().await;
}
