//! The Done-means path of executions and deployments: a real server, a
//! real `warden node`, and a small ONNX model (tests/fixtures/linear.onnx,
//! y = x @ [[1,2],[3,4],[5,6]] + [0.5,-1]) registered, deployed through
//! an execution (pending → running → completed), called for the right
//! numbers, and stopped. ONNX Runtime comes from `scripts/onnxruntime`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::training::{fetch, rows_of, sensor_csv, small, upload};
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
    daemon_as("onnx-node", server, token, dir, models)
}

fn daemon_as(
    node: &str,
    server: &str,
    token: &str,
    dir: &std::path::Path,
    models: &std::path::Path,
) -> Child {
    Command::new(BIN)
        .args([
            "node",
            "--server",
            server,
            "--token",
            token,
            "--node-id",
            node,
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

/// A model Warden trained, served on a real node two ways: forge's edge
/// deployment (a registered target, queued until its daemon connects,
/// the bundle, cancel) and vareon's `deploy`. The node fetches the ONNX
/// export from the server with its own credential; the served scores
/// are the native ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trained_model_is_served_on_a_node_through_forge_and_vareon() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let csv = sensor_csv(1500);
    let ds = upload(&s, &t, "ahu", csv.clone()).await;
    let run = s
        .post(
            "/api/v1/training/start",
            &t,
            json!({"dataset_id": ds, "architecture": "lstm_autoencoder", "hyperparameters": small(3)}),
        )
        .await;
    assert_eq!(run.status, 201, "{}", run.body);
    let run_id = run.body["id"].as_str().unwrap().to_owned();
    let model_id = eventually(60, "the run completes", || async {
        let r = s.get(&format!("/api/v1/training/{run_id}"), &t).await.body;
        r["model_id"].as_str().map(str::to_owned)
    })
    .await;
    let bare = model_id.trim_start_matches("mdl_").to_owned();

    // The target, registered before its daemon runs.
    let target = s
        .post(
            "/api/v1/deployments/targets",
            &t,
            json!({"ip": "127.0.0.1", "name": "AHU-1", "arch": "x86_64", "node_id": "edge-1"}),
        )
        .await;
    assert_eq!(target.status, 201, "{}", target.body);
    assert_eq!(target.body["status"], "offline");
    let bad = s
        .post(
            "/api/v1/deployments/targets",
            &t,
            json!({"ip": "not-an-ip", "name": "x"}),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let unknown = s
        .post(
            "/api/v1/deployments",
            &t,
            json!({"model_id": model_id, "target_ip": "10.9.9.9"}),
        )
        .await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    let missing = s
        .post(
            "/api/v1/deployments",
            &t,
            json!({"model_id": "mdl_nope", "target_id": "edge-1"}),
        )
        .await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    let (viewer, _) = s.user("edge-viewer", &["viewer"], None).await;
    let refused = s
        .post(
            "/api/v1/deployments",
            &viewer,
            json!({"model_id": "mdl_nope", "target_id": "edge-1"}),
        )
        .await;
    assert_eq!(refused.status, 403, "viewers are refused before any lookup");
    assert_eq!(s.get("/api/v1/deployments/targets", "").await.status, 401);

    let dep = s
        .post(
            "/api/v1/deployments",
            &t,
            json!({"model_id": model_id, "target_ip": "127.0.0.1", "target_name": "AHU-1"}),
        )
        .await;
    assert_eq!(dep.status, 201, "{}", dep.body);
    assert_eq!(dep.body["status"], "queued", "{}", dep.body);
    assert_eq!(dep.body["target_id"], "edge-1");
    assert!(dep.body["binary_size_bytes"].as_u64().unwrap() > 1000);
    let dep_id = dep.body["id"].as_str().unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let mut d = daemon_as("edge-1", &s.base, &t, dir.path(), models.path());
    let deployed = eventually(60, "the model deployed", || async {
        let v = s
            .get(&format!("/api/v1/deployments/{dep_id}"), &t)
            .await
            .body;
        assert_ne!(v["status"], "failed", "{v}");
        (v["status"] == "deployed").then_some(v)
    })
    .await;
    assert!(deployed["deployed_at"].is_string(), "{deployed}");
    assert_eq!(deployed["deployed_by"], "admin");
    let endpoint = deployed["endpoint"].as_str().unwrap().to_owned();

    // The served model scores windows of raw rows as Warden does.
    let (_, file) = fetch(&s, &t, &format!("/api/v1/models/{model_id}/download")).await;
    let native = warden_ml::Model::from_bytes(&file).unwrap();
    let (tl, f) = (native.sequence_length(), native.features.len());
    let rows = rows_of(&csv, tl + 10);
    let windows: Vec<&[f32]> = (0..3).map(|w| &rows[w * 5 * f..(w * 5 + tl) * f]).collect();
    let x: Vec<Vec<Vec<f32>>> = windows
        .iter()
        .map(|w| w.chunks(f).map(<[f32]>::to_vec).collect())
        .collect();
    let expected = native.score(&native.standardise(&windows.concat()));
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{endpoint}/v1/infer"))
        .json(&json!({"inputs": {"x": x}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let scores = answer["outputs"]["score"].as_array().expect("scores");
    assert_eq!(scores.len(), 3, "{answer}");
    for (a, b) in scores.iter().zip(&expected) {
        let a = a.as_f64().unwrap() as f32;
        assert!(
            (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
            "served {a} vs native {b}"
        );
    }

    // The target serves it; AIWM sees the same deployment.
    let targets = s.get("/api/v1/deployments/targets", &t).await.body;
    let edge = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "edge-1")
        .unwrap();
    assert_eq!(edge["status"], "online", "{edge}");
    assert_eq!(edge["current_model"], model_id.as_str());
    assert_eq!(edge["ip"], "127.0.0.1");
    let aiwm = s.get("/api/deployments", &t).await.body;
    assert!(aiwm.to_string().contains(&bare), "{aiwm}");
    let list = s.get("/api/v1/deployments", &t).await.body;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // The bundle: a tar of the manifest and the ONNX export.
    for route in ["binary", "download"] {
        let (status, tar) = fetch(&s, &t, &format!("/api/v1/deployments/{dep_id}/{route}")).await;
        assert_eq!(status, 200);
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("b.tar"), &tar).unwrap();
        let ok = Command::new("tar")
            .arg("-xf")
            .arg("b.tar")
            .current_dir(out.path())
            .status()
            .unwrap();
        assert!(ok.success());
        let onnx = std::fs::read(out.path().join("model.onnx")).unwrap();
        let (_, export) = fetch(
            &s,
            &t,
            &format!("/api/v1/models/{model_id}/download?format=onnx"),
        )
        .await;
        assert_eq!(onnx, export);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(manifest["sha256"], hex::encode(sha2::Sha256::digest(&onnx)));
        assert_eq!(manifest["deployment_id"], dep_id.as_str());
        assert_eq!(manifest["onnx"]["inputs"]["x"], json!(["batch", tl, f]));
        assert_eq!(manifest["target"]["ip"], "127.0.0.1");
    }
    // Nodes fetch exports from /artifacts; nobody else outside the org.
    let (status, _) = fetch(&s, "", &format!("/artifacts/models/{bare}")).await;
    assert_eq!(status, 401);
    let (other, _) = s.user("outsider", &["operator"], None).await;
    let (status, _) = fetch(&s, &other, &format!("/artifacts/models/{bare}")).await;
    assert_eq!(status, 404);
    assert_eq!(
        s.get(&format!("/api/v1/deployments/{dep_id}"), &other)
            .await
            .status,
        404
    );
    let (status, _) = fetch(&s, &t, &format!("/artifacts/models/{bare}?format=zip")).await;
    assert_eq!(status, 400);

    // Vareon's deploy serves it too: deploying, then deployed.
    let neo = format!("/api/neosyntis/models/{bare}");
    let asked = s.post(&format!("{neo}/deploy"), &t, json!({})).await;
    assert_eq!(asked.status, 200, "{}", asked.body);
    assert!(
        ["deploying", "deployed"].contains(&asked.body["status"].as_str().unwrap()),
        "{}",
        asked.body
    );
    let served = eventually(60, "vareon's deployment", || async {
        let v = s.get(&neo, &t).await.body;
        assert_ne!(v["status"], "failed", "{v}");
        (v["status"] == "deployed").then_some(v)
    })
    .await;
    assert!(served["deployed_at"].is_string(), "{served}");
    let again = s.post(&format!("{neo}/deploy"), &t, json!({})).await;
    assert_eq!(
        again.body["status"], "deployed",
        "asking again changes nothing"
    );
    let untrained = s
        .post("/api/neosyntis/models/", &t, json!({"name": "blank"}))
        .await
        .body;
    let r = s
        .post(
            &format!(
                "/api/neosyntis/models/{}/deploy",
                untrained["id"].as_str().unwrap()
            ),
            &t,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);

    // Cancel: the server stops, the deployment stays, cancelled.
    let cancelled = s.delete(&format!("/api/v1/deployments/{dep_id}"), &t).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    eventually(20, "the endpoint gone", || async {
        let v = s
            .get(&format!("/api/v1/deployments/{dep_id}"), &t)
            .await
            .body;
        let gone = reqwest::Client::new().get(&endpoint).send().await.is_err();
        (v["status"] == "cancelled" && gone).then_some(())
    })
    .await;
    d.kill().unwrap();
    d.wait().unwrap();
    s.stop().await;
}
