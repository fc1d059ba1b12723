//! Socket.IO v4 with the JavaScript `socket.io-client` AIWM's daemons use
//! (tests/socketio/daemon.js follows the reference's example): auth by
//! `auth.token`, registration, heartbeats, commands; websocket and polling.

mod common;

use std::process::Stdio;

use common::{TestServer, eventually, fast_nodes, node_body};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

struct JsDaemon {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl JsDaemon {
    fn start(
        s: &TestServer,
        token: &str,
        node_id: Option<&str>,
        transports: &str,
        seconds: u32,
    ) -> JsDaemon {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
        assert!(
            dir.join("node_modules/socket.io-client").exists(),
            "run scripts/test (it installs tests/socketio's npm packages)"
        );
        let mut child = tokio::process::Command::new("node")
            .current_dir(&dir)
            .args([
                "daemon.js",
                &s.base,
                token,
                node_id.unwrap_or("-"),
                transports,
                &seconds.to_string(),
            ])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        JsDaemon { child, lines }
    }

    /// The next event of the given name the client received.
    async fn expect(&mut self, event: &str) -> Value {
        loop {
            let line =
                tokio::time::timeout(std::time::Duration::from_secs(15), self.lines.next_line())
                    .await
                    .unwrap_or_else(|_| panic!("no {event} within 15 s"))
                    .unwrap()
                    .unwrap_or_else(|| panic!("the client exited before {event}"));
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["event"] == event {
                return v["data"].clone();
            }
        }
    }
}

async fn run_flow(transports: &str) {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let id = s
        .post("/api/nodes", &t, node_body("js-node", "JS"))
        .await
        .body["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let node_token = s
        .post(
            &format!("/api/nodes/{id}/token"),
            &t,
            json!({"expiresIn": 3600}),
        )
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(
        &format!("/api/nodes/{id}/commands"),
        &t,
        json!({"type": "system.healthCheck", "resource": {"type": "node", "id": id}}),
    )
    .await;

    let mut js = JsDaemon::start(&s, &node_token, None, transports, 8);
    let connect = js.expect("connect").await;
    assert_eq!(connect["transport"], transports.split(',').next().unwrap());
    let ack = js.expect("connection.ack").await;
    assert_eq!(ack["type"], "connection.ack");
    assert_eq!(ack["status"], "success");
    assert_eq!(ack["nodeId"], id.as_str());
    let reg = js.expect("register.ack").await;
    assert_eq!(reg["data"]["status"], "success");
    assert_eq!(reg["data"]["controllerInfo"]["heartbeatInterval"], 1000);
    assert_eq!(reg["data"]["controllerInfo"]["metricsInterval"], 2000);
    let cmd = js.expect("system.healthCheck").await;
    assert_eq!(cmd["resource"], json!({"type": "node", "id": id}));

    let node = eventually(10, "online with the JS facts", || async {
        let n = s.get(&format!("/api/nodes/{id}"), &t).await.body;
        (n["cpuCores"] == 12 && n["daemonStatus"] == "healthy").then_some(n)
    })
    .await;
    assert_eq!(node["status"], "online");
    assert_eq!(node["websocketConnected"], true);
    assert_eq!(node["os"]["platform"], "linux");
    let path = format!(
        "/api/nodes/{id}/commands/{}",
        cmd["messageId"].as_str().unwrap()
    );
    eventually(10, "the command's result", || async {
        (s.get(&path, &t).await.body["result"]["from"] == "js").then_some(())
    })
    .await;
    let first = node["lastHeartbeat"].as_str().unwrap().to_owned();
    eventually(10, "heartbeats", || async {
        (s.get(&format!("/api/nodes/{id}"), &t).await.body["lastHeartbeat"]
            .as_str()
            .unwrap()
            > first.as_str())
        .then_some(())
    })
    .await;

    // The client closes its transport: the node is disconnected, then offline.
    assert!(js.child.wait().await.unwrap().success());
    eventually(10, "disconnected and offline", || async {
        let n = s.get(&format!("/api/nodes/{id}"), &t).await.body;
        (n["websocketConnected"] == false && n["status"] == "offline").then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_client_over_websocket() {
    run_flow("websocket,polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_client_over_polling() {
    run_flow("polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_connect_error() {
    let s = TestServer::start_with(fast_nodes).await;
    let mut js = JsDaemon::start(&s, "not-a-token", None, "websocket", 5);
    let err = js.expect("connect_error").await;
    assert!(
        err["message"].as_str().unwrap().contains("Unauthorized"),
        "{err}"
    );
    assert_eq!(js.child.wait().await.unwrap().code(), Some(3));

    // A user token may name a new node in auth.nodeId; it is created on registration.
    let (user, _) = s.user("jsuser", &["operator"], None).await;
    let mut js = JsDaemon::start(&s, &user, Some("js-created"), "websocket", 3);
    js.expect("register.ack").await;
    let n = s.get("/api/nodes/js-created", &user).await;
    assert_eq!(n.status, 200);
    assert_eq!(n.body["hostname"], "js-gpu-01");
    let _ = js.child.wait().await;
    s.stop().await;
}

/// The Socket.IO path: a deployment's start runs as an execution
/// through the reference client, which answers as AIWM's daemon does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_runs_through_the_reference_client() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let id = s
        .post("/api/nodes", &t, node_body("js-exec", "JS"))
        .await
        .body["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let node_token = s
        .post(&format!("/api/nodes/{id}/token"), &t, json!({}))
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let model = json!({"modelId": "llama-2-7b-v1", "name": "Llama 2 7B", "type": "llm", "framework": "pytorch", "repository": "huggingface.co/meta-llama/Llama-2-7b-chat-hf", "fileName": "model.safetensors", "nodeId": "js-exec"});
    assert_eq!(s.post("/api/models", &t, model).await.status, 201);
    let dep = json!({"deploymentId": "deploy-llama-prod-01", "name": "Llama", "modelId": "llama-2-7b-v1", "nodeId": "js-exec"});
    assert_eq!(s.post("/api/deployments", &t, dep).await.status, 201);

    let mut js = JsDaemon::start(&s, &node_token, None, "websocket,polling", 8);
    js.expect("register.ack").await;
    let r = s
        .post("/api/deployments/deploy-llama-prod-01/start", &t, json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let exec = r.body["deployment"]["executionId"]
        .as_str()
        .unwrap()
        .to_owned();

    let download = js.expect("model.download").await;
    assert_eq!(
        download["resource"],
        json!({"type": "model", "id": "llama-2-7b-v1"})
    );
    assert_eq!(
        download["data"]["source"],
        "huggingface.co/meta-llama/Llama-2-7b-chat-hf"
    );
    assert_eq!(download["data"]["fileName"], "model.safetensors");
    assert_eq!(download["metadata"]["executionId"], exec.as_str());
    assert_eq!(download["metadata"]["stepIndex"], 0);
    let create = js.expect("deployment.create").await;
    assert_eq!(
        create["resource"],
        json!({"type": "deployment", "id": "deploy-llama-prod-01"})
    );
    assert_eq!(
        create["data"]["modelPath"],
        "llama-2-7b-v1/model.safetensors"
    );
    assert_eq!(create["metadata"]["stepIndex"], 1);

    let x = eventually(10, "the execution completed", || async {
        let x = s.get(&format!("/api/executions/{exec}"), &t).await.body;
        (x["status"] == "completed").then_some(x)
    })
    .await;
    assert_eq!(x["steps"][1]["result"], json!({"from": "js"}));
    assert_eq!(x["receivedMessageIds"].as_array().unwrap().len(), 4);
    eventually(10, "the deployment running", || async {
        let d = s
            .get("/api/deployments/deploy-llama-prod-01", &t)
            .await
            .body;
        (d["status"] == "running" && d["isRunning"] == true).then_some(())
    })
    .await;
    // The reference client said the download succeeded: the model follows.
    let m = s.get("/api/models/llama-2-7b-v1", &t).await.body;
    assert_eq!(
        (m["status"].clone(), m["isDownloaded"].clone()),
        (json!("ready"), json!(true))
    );
    let _ = js.child.wait().await;
    s.stop().await;
}
