//! AIWM deployments (seeds/aiwm-api.md §5): the records, and a model
//! really served on a node by the real `warden node` daemon.

mod common;

use std::process::{Child, Command, Stdio};

use common::{TestServer, assert_aiwm_error, eventually, fast_nodes, node_body};
use serde_json::{Value, json};
use sha2::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_warden");

fn deployment(id: &str, model: &str, node: &str) -> Value {
    json!({
        "deploymentId": id,
        "name": "Llama 2 Production Deployment",
        "description": "Production deployment for customer chat",
        "environment": "production",
        "status": "pending",
        "modelId": model,
        "nodeId": node,
        "deploymentType": "api",
        "replicas": 2,
        "hardwareProfile": "gpu"
    })
}

#[tokio::test]
async fn deployments_crud_as_documented() {
    let s = TestServer::start().await;
    let (t, _) = s.user("deployer", &["operator"], None).await;
    let (other, _) = s.user("outsider2", &["operator"], None).await;
    let body = deployment("deploy-llama-prod-01", "llama-2-7b-v1", "node-gpu-01");
    let r = s.post("/api/deployments", &t, body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    for (k, v) in body.as_object().unwrap() {
        assert_eq!(&r.body[k], v, "{k}");
    }
    assert_eq!(r.body["isRunning"], false);
    assert_eq!(r.body["totalInferences"], 0);
    assert_eq!(r.body["averageLatency"], 0.0);
    assert_eq!(r.body["uptime"], 0);
    assert_eq!(r.body["events"][0]["event"], "created");
    let id = r.body["_id"].as_str().unwrap().to_owned();

    let r = s
        .post("/api/deployments", &t, json!({"name": "x", "modelId": "m", "nodeId": "n", "environment": "moon", "replicas": 0}))
        .await;
    assert_aiwm_error(&r, 400, "/api/deployments");
    assert_eq!(r.body["errors"].as_array().unwrap().len(), 2, "{}", r.body);
    assert_aiwm_error(
        &s.post("/api/deployments", &t, body.clone()).await,
        409,
        "/api/deployments",
    );
    let mut staging = deployment("d2", "m2", "n2");
    staging["environment"] = json!("staging");
    s.post("/api/deployments", &t, staging).await;

    let r = s
        .get("/api/deployments?filter[environment]=production", &t)
        .await;
    assert_eq!(r.body["pagination"]["total"], 1);
    let r = s.get("/api/deployments?filter[isRunning]=false", &t).await;
    assert_eq!(r.body["pagination"]["total"], 2);
    let r = s.get("/api/deployments?filter[modelId]=m2", &t).await;
    assert_eq!(r.body["data"][0]["deploymentId"], "d2");

    // §5.4: what a client may change; the runtime fields are the node's.
    let path = format!("/api/deployments/{id}");
    let r = s
        .put(
            &path,
            &t,
            json!({"status": "running", "replicas": 3, "totalInferences": 5000}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (
            r.body["replicas"].clone(),
            r.body["status"].clone(),
            r.body["totalInferences"].clone()
        ),
        (json!(3), json!("pending"), json!(0))
    );

    // Start needs a model and a node that exist; stop needs a running one.
    let start = format!("{path}/start");
    let r = s.post(&start, &t, json!({})).await;
    assert_aiwm_error(&r, 400, &start);
    assert!(
        r.body["errors"].to_string().contains("no such model"),
        "{}",
        r.body
    );
    let stop = format!("{path}/stop");
    assert_aiwm_error(&s.post(&stop, &t, json!({})).await, 400, &stop);

    assert_aiwm_error(&s.get(&path, &other).await, 404, &path);
    let r = s.delete(&path, &t).await;
    assert_eq!(r.body["message"], "Deployment deleted successfully");
    assert_aiwm_error(&s.get(&path, &t).await, 404, &path);
    s.stop().await;
}

fn daemon(server: &str, token: &str, dir: &std::path::Path, models: &std::path::Path) -> Child {
    Command::new(BIN)
        .args([
            "node",
            "--server",
            server,
            "--token",
            token,
            "--node-id",
            "serve-node",
            "--advertise-host",
            "127.0.0.1",
        ])
        .args([
            "--runtime",
            "files=python3 -m http.server {port} --bind {host} --directory {modelDir}",
        ])
        .arg("--data-dir")
        .arg(dir)
        .arg("--models-dir")
        .arg(models)
        .env("WARDEN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the daemon starts")
}

async fn fetch(url: &str) -> Option<Vec<u8>> {
    let r = reqwest::get(url).await.ok()?;
    r.status().is_success().then_some(())?;
    Some(r.bytes().await.ok()?.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_served_on_a_node_restarted_when_it_dies_and_stopped() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let source = tempfile::tempdir().unwrap();
    let weights: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let file = source.path().join("weights.bin");
    std::fs::write(&file, &weights).unwrap();
    let sum = hex::encode(sha2::Sha256::digest(&weights));
    s.post("/api/nodes", &t, node_body("serve-node", "serving"))
        .await;
    let model = json!({"modelId": "files-v1", "name": "files", "type": "classifier", "framework": "files", "repository": file.display().to_string(), "fileName": "weights.bin", "sha256": sum, "nodeId": "serve-node"});
    assert_eq!(s.post("/api/models", &t, model).await.status, 201);
    let dir = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let mut d = daemon(&s.base, &t, dir.path(), models.path());
    eventually(15, "the daemon online", || async {
        let n = s.get("/api/nodes/serve-node", &t).await.body;
        (n["websocketConnected"] == true && n["registeredAt"].is_string()).then_some(())
    })
    .await;

    assert_eq!(
        s.post(
            "/api/deployments",
            &t,
            deployment("web-files", "files-v1", "serve-node")
        )
        .await
        .status,
        201
    );
    let r = s
        .post("/api/deployments/web-files/start", &t, json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["message"], "Deployment started successfully");
    let exec_id = r.body["deployment"]["executionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = "/api/deployments/web-files/start";
    assert_aiwm_error(&s.post(path, &t, json!({})).await, 400, path);

    // pending → running → completed: download, then the server process.
    let x = eventually(30, "the start execution to complete", || async {
        let x = s.get(&format!("/api/executions/{exec_id}"), &t).await.body;
        (x["status"] == "completed" || x["status"] == "failed").then_some(x)
    })
    .await;
    assert_eq!(x["status"], "completed", "{x}");
    assert_eq!(x["steps"][0]["command"]["type"], "model.download");
    assert_eq!(x["steps"][1]["command"]["type"], "deployment.create");
    let dep = eventually(10, "the deployment running", || async {
        let d = s.get("/api/deployments/web-files", &t).await.body;
        (d["status"] == "running").then_some(d)
    })
    .await;
    assert_eq!(dep["isRunning"], true);
    let endpoint = dep["endpoint"].as_str().unwrap().to_owned();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{dep}");
    assert_eq!(
        fetch(&format!("{endpoint}/weights.bin")).await.unwrap(),
        weights
    );
    assert_eq!(
        s.get("/api/models/files-v1", &t).await.body["status"],
        "ready"
    );

    // The served process dies: the daemon restarts it and says so.
    let pid = x["steps"][1]["result"]["pid"].as_i64().unwrap();
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    eventually(15, "a restart event", || async {
        let d = s.get("/api/deployments/web-files", &t).await.body;
        d["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "restarted" && e["severity"] == "warning")
            .then_some(())
    })
    .await;
    eventually(15, "served again", || async {
        fetch(&format!("{endpoint}/weights.bin")).await
    })
    .await;
    let logs = eventually(10, "log lines", || async {
        let l = s.get("/api/deployments/web-files/logs", &t).await.body;
        (!l["data"].as_array().unwrap().is_empty()).then_some(l)
    })
    .await;
    assert!(logs["data"][0]["message"].is_string(), "{logs}");

    // Stop: graceful, and the endpoint is gone.
    let r = s
        .post("/api/deployments/web-files/stop", &t, json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["message"], "Deployment stopped successfully");
    eventually(20, "stopped", || async {
        let d = s.get("/api/deployments/web-files", &t).await.body;
        (d["status"] == "stopped" && d["isRunning"] == false).then_some(())
    })
    .await;
    assert!(fetch(&format!("{endpoint}/weights.bin")).await.is_none());

    d.kill().unwrap();
    d.wait().unwrap();
    s.stop().await;
}
