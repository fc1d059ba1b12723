//! `model.download` end to end: the real server, the real `warden node`
//! daemon, and a local HTTP file server that speaks ranges. The model
//! record follows the download; checksums, resumes and targets outside
//! the models directory are checked.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use common::{TestServer, eventually, fast_nodes, node_body};
use serde_json::{Value, json};
use sha2::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_warden");

/// The bytes served, and the Range headers the server saw.
#[derive(Clone)]
struct Files {
    body: Arc<Vec<u8>>,
    ranges: Arc<Mutex<Vec<String>>>,
}

async fn serve_file(State(f): State<Files>, headers: HeaderMap) -> impl IntoResponse {
    let len = f.body.len();
    let start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            f.ranges.lock().unwrap().push(v.to_owned());
            v.strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse::<usize>()
                .ok()
        });
    match start {
        Some(s) if s >= len => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            HeaderMap::new(),
            Vec::new(),
        ),
        Some(s) => {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_RANGE,
                format!("bytes {s}-{}/{len}", len - 1).parse().unwrap(),
            );
            (StatusCode::PARTIAL_CONTENT, h, f.body[s..].to_vec())
        }
        None => (StatusCode::OK, HeaderMap::new(), f.body.to_vec()),
    }
}

async fn file_server(body: Vec<u8>) -> (String, Files) {
    let files = Files {
        body: Arc::new(body),
        ranges: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/files/{name}", axum::routing::get(serve_file))
        .with_state(files.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/files"), files)
}

fn daemon(
    server: &str,
    token: &str,
    node_id: &str,
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
            node_id,
            "--data-dir",
        ])
        .arg(dir)
        .arg("--models-dir")
        .arg(models)
        .env("WARDEN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the daemon starts")
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Runs one `model.download` step for `model` and waits for the end.
async fn download(s: &TestServer, exec_id: &str, model: &str, data: Value) -> Value {
    let t = &s.admin_token;
    let body = json!({
        "executionId": exec_id,
        "name": format!("download {model}"),
        "category": "model",
        "type": "download-model",
        "nodeId": "dl-node",
        "steps": [{
            "name": "Download model files",
            "command": {"type": "model.download", "resource": {"type": "model", "id": model}, "data": data},
            "timeoutSeconds": 60,
        }],
    });
    let r = s.post("/api/executions", t, body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    s.post(&format!("/api/executions/{exec_id}/start"), t, json!({}))
        .await;
    eventually(30, "the download to end", || async {
        let x = s.get(&format!("/api/executions/{exec_id}"), t).await.body;
        (x["status"] != "running" && x["status"] != "pending").then_some(x)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_fill_the_registry_and_refuse_what_is_wrong() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sum = sha256(&body);
    let (base, files) = file_server(body.clone()).await;
    s.post("/api/nodes", &t, node_body("dl-node", "downloads"))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let models_dir = std::fs::canonicalize(models.path()).unwrap();
    let mut d = daemon(&s.base, &t, "dl-node", dir.path(), &models_dir);
    eventually(15, "the daemon online", || async {
        let n = s.get("/api/nodes/dl-node", &t).await.body;
        (n["websocketConnected"] == true && n["registeredAt"].is_string()).then_some(())
    })
    .await;

    // A model registered, then really downloaded: its record follows.
    let url = format!("{base}/model.onnx");
    let model = json!({"modelId": "tiny", "name": "tiny", "type": "classifier", "framework": "onnx", "repository": url, "fileName": "model.onnx", "sha256": sum, "nodeId": "dl-node"});
    assert_eq!(s.post("/api/models", &t, model).await.status, 201);
    let x = download(
        &s,
        "get-tiny",
        "tiny",
        json!({"source": url, "fileName": "model.onnx", "targetPath": "tiny", "sha256": sum, "fileSize": body.len()}),
    )
    .await;
    assert_eq!(x["status"], "completed", "{x}");
    let target = models_dir.join("tiny/model.onnx");
    assert_eq!(
        x["steps"][0]["result"]["downloadPath"],
        target.display().to_string()
    );
    assert_eq!(x["steps"][0]["result"]["sha256"], sum.as_str());
    assert_eq!(std::fs::read(&target).unwrap(), body);
    let m = eventually(10, "the model ready", || async {
        let m = s.get("/api/models/tiny", &t).await.body;
        (m["status"] == "ready").then_some(m)
    })
    .await;
    assert_eq!(m["isDownloaded"], true);
    assert_eq!(m["downloadProgress"], 100);
    assert_eq!(m["downloadPath"], target.display().to_string());

    // Resume: what is already there is not fetched again.
    let part = models_dir.join("again/model.onnx.part");
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &body[..100_000]).unwrap();
    let x = download(
        &s,
        "get-again",
        "tiny",
        json!({"source": url, "fileName": "model.onnx", "targetPath": "again", "sha256": sum}),
    )
    .await;
    assert_eq!(x["status"], "completed", "{x}");
    assert_eq!(x["steps"][0]["result"]["resumedFrom"], 100_000);
    assert!(
        files
            .ranges
            .lock()
            .unwrap()
            .contains(&"bytes=100000-".to_owned())
    );
    assert_eq!(
        std::fs::read(models_dir.join("again/model.onnx")).unwrap(),
        body
    );

    // A wrong checksum fails the step, leaves no file, and marks the model.
    let bad = json!({"modelId": "bad", "name": "bad", "type": "classifier", "framework": "onnx", "nodeId": "dl-node"});
    s.post("/api/models", &t, bad).await;
    let x = download(
        &s,
        "get-bad",
        "bad",
        json!({"source": url, "fileName": "model.onnx", "targetPath": "bad", "sha256": "0".repeat(64)}),
    )
    .await;
    assert_eq!(x["status"], "failed");
    assert_eq!(x["error"]["code"], "CHECKSUM_MISMATCH", "{x}");
    assert!(!models_dir.join("bad/model.onnx").exists());
    assert!(!models_dir.join("bad/model.onnx.part").exists());
    eventually(10, "the model in error", || async {
        (s.get("/api/models/bad", &t).await.body["status"] == "error").then_some(())
    })
    .await;

    // No target outside the models directory; no unreachable source hangs.
    let x = download(
        &s,
        "escape",
        "bad",
        json!({"source": url, "targetPath": "/etc/warden-x"}),
    )
    .await;
    assert_eq!(x["error"]["code"], "INVALID_TARGET", "{x}");
    let x = download(
        &s,
        "escape2",
        "bad",
        json!({"source": url, "targetPath": "../../x"}),
    )
    .await;
    assert_eq!(x["error"]["code"], "INVALID_TARGET", "{x}");
    let x = download(
        &s,
        "missing",
        "bad",
        json!({"source": format!("{base}/../nothing"), "targetPath": "m"}),
    )
    .await;
    assert_eq!(x["error"]["code"], "DOWNLOAD_FAILED", "{x}");

    d.kill().unwrap();
    d.wait().unwrap();
    s.stop().await;
}
