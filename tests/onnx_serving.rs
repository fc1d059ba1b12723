//! The Done-means path of executions and deployments: a real server, a
//! real `warden node`, and a small ONNX model (tests/fixtures/linear.onnx,
//! y = x @ [[1,2],[3,4],[5,6]] + [0.5,-1]) registered, deployed through
//! an execution (pending → running → completed), called for the right
//! numbers, and stopped. ONNX Runtime comes from `scripts/onnxruntime`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::{TestServer, eventually, fast_nodes, node_body, ort_library};
use serde_json::json;
use sha2::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_warden");

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/linear.onnx"
    ))
}

#[test]
fn serve_model_without_onnx_runtime_says_so() {
    let out = Command::new(BIN)
        .args(["serve-model", "--model"])
        .arg(fixture())
        .args(["--port", "1"])
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scripts/onnxruntime"), "{err}");
    let out = Command::new(BIN)
        .args(["serve-model", "--model"])
        .arg(fixture())
        .args([
            "--port",
            "1",
            "--ort-library",
            "/nonexistent/libonnxruntime.so",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
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
            "onnx-node",
            "--advertise-host",
            "127.0.0.1",
        ])
        .arg("--ort-library")
        .arg(ort_library())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onnx_model_is_registered_deployed_called_and_stopped() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let bytes = std::fs::read(fixture()).unwrap();
    s.post("/api/nodes", &t, node_body("onnx-node", "onnx"))
        .await;
    let model = json!({
        "modelId": "linear-v1", "name": "linear", "version": "1.0.0", "type": "classifier",
        "framework": "onnx", "repository": fixture().display().to_string(), "fileName": "linear.onnx",
        "fileSize": bytes.len(), "sha256": hex::encode(sha2::Sha256::digest(&bytes)), "nodeId": "onnx-node"
    });
    assert_eq!(s.post("/api/models", &t, model).await.status, 201);
    let dir = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let mut d = daemon(&s.base, &t, dir.path(), models.path());
    eventually(15, "the daemon online", || async {
        let n = s.get("/api/nodes/onnx-node", &t).await.body;
        (n["websocketConnected"] == true && n["registeredAt"].is_string()).then_some(())
    })
    .await;

    let dep = json!({"deploymentId": "linear-prod", "name": "linear", "environment": "production", "modelId": "linear-v1", "nodeId": "onnx-node", "deploymentType": "api", "replicas": 1, "hardwareProfile": "cpu"});
    assert_eq!(s.post("/api/deployments", &t, dep).await.status, 201);
    let r = s
        .post("/api/deployments/linear-prod/start", &t, json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let exec = r.body["deployment"]["executionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let seen = std::sync::Mutex::new(Vec::<String>::new());
    let x = eventually(60, "the execution to end", || async {
        let x = s.get(&format!("/api/executions/{exec}"), &t).await.body;
        let status = x["status"].as_str().unwrap_or_default().to_owned();
        let mut seen = seen.lock().unwrap();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        (status == "completed" || status == "failed").then_some(x)
    })
    .await;
    assert_eq!(x["status"], "completed", "{x}");
    let seen = seen.into_inner().unwrap();
    assert_eq!(
        seen.last().map(String::as_str),
        Some("completed"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .all(|s| s == "running" || s == "completed" || s == "pending"),
        "{seen:?}"
    );
    let d_view = eventually(10, "running", || async {
        let v = s.get("/api/deployments/linear-prod", &t).await.body;
        (v["status"] == "running").then_some(v)
    })
    .await;
    let endpoint = d_view["endpoint"].as_str().unwrap().to_owned();

    // The right numbers from the served model.
    let http = reqwest::Client::new();
    let answer: serde_json::Value = http
        .post(format!("{endpoint}/v1/infer"))
        .json(&json!({"inputs": {"x": [[1, 1, 1], [0, 1, 2]]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["outputs"]["y"],
        json!([[9.5, 11.0], [13.5, 15.0]]),
        "{answer}"
    );
    let bad = http
        .post(format!("{endpoint}/v1/infer"))
        .json(&json!({"inputs": {"x": [[1, 2]]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);

    // Usage reaches the deployment through the daemon's health reports.
    eventually(15, "totalInferences reported", || async {
        let v = s.get("/api/deployments/linear-prod", &t).await.body;
        (v["totalInferences"].as_u64() >= Some(1)
            && v["averageLatency"].as_f64() > Some(0.0)
            && v["lastHealthCheck"].is_string())
        .then_some(())
    })
    .await;

    let r = s
        .post("/api/deployments/linear-prod/stop", &t, json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(20, "stopped", || async {
        let v = s.get("/api/deployments/linear-prod", &t).await.body;
        (v["status"] == "stopped").then_some(())
    })
    .await;
    assert!(
        http.get(&endpoint).send().await.is_err(),
        "the endpoint is gone"
    );
    d.kill().unwrap();
    d.wait().unwrap();
    s.stop().await;
}
