//! The official openai clients, Python and JavaScript, unchanged against
//! Warden's `/v1` (installed by `scripts/openai-clients`, which the test
//! command runs): whole and streamed chat with usage, the model list,
//! and their typed errors for a 404 and a 400.

mod common;

use std::time::Duration;

use common::fake_llm::{Fake, serve};
use common::{TestServer, eventually};
use serde_json::{Value, json};

/// A server with one backend serving `model`, in a group with it.
async fn setup(model: &str) -> (TestServer, String) {
    let s = TestServer::start_with(|c| c.llm_probe_interval = Duration::from_millis(200)).await;
    let (t, _) = s.user("clientadmin", &["admin"], None).await;
    let url = serve(Fake::new("clients", &[model])).await;
    let b = s
        .post(
            "/backends",
            &t,
            json!({"name": "b", "type": "openai", "baseUrl": url}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let g = s
        .post("/groups", &t, json!({"name": "g", "purposeType": "Chat"}))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(
        &format!("/backend-affinity/{g}/backends/{b}"),
        &t,
        json!({}),
    )
    .await;
    s.post("/models", &t, json!({"model": model})).await;
    s.post(
        &format!("/model-affinity/{g}/models/{model}"),
        &t,
        json!({}),
    )
    .await;
    eventually(10, "the backend's first probe", || async {
        (s.get(&format!("/backends/{b}"), &t).await.body["healthy"] == true).then_some(())
    })
    .await;
    (s, t)
}

fn check(out: &Value, model: &str) {
    assert_eq!(out["whole"], "hello from clients", "{out}");
    assert_eq!(out["usage"], 8);
    assert_eq!(
        out["streamed"].as_str().unwrap().trim(),
        "hello from clients"
    );
    assert_eq!(out["stream_usage"], 8);
    assert!(
        out["models"].as_array().unwrap().iter().any(|m| m == model),
        "{out}"
    );
    assert_eq!(out["not_found"], 404);
    assert_eq!(out["bad_request"], 400);
}

async fn run(cmd: &mut tokio::process::Command) -> Value {
    let out = cmd.output().await.expect("the client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("one JSON line: {stdout}"))
}

fn clients_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai-clients")
}

#[tokio::test]
async fn the_python_client_works_unchanged() {
    let py = std::env::var("WARDEN_OPENAI_PY")
        .unwrap_or_else(|_| format!("{}/.cache/warden-openai-py", std::env::var("HOME").unwrap()));
    let (s, t) = setup("mistral:instruct").await;
    let out = run(tokio::process::Command::new("python3")
        .arg(clients_dir().join("client.py"))
        .env("PYTHONPATH", py)
        .env("WARDEN_BASE", &s.base)
        .env("WARDEN_TOKEN", &t)
        .env("WARDEN_MODEL", "mistral:instruct"))
    .await;
    check(&out, "mistral:instruct");
}

#[tokio::test]
async fn the_javascript_client_works_unchanged() {
    let (s, t) = setup("llama3:8b").await;
    let out = run(tokio::process::Command::new("node")
        .arg(clients_dir().join("client.mjs"))
        .current_dir(clients_dir())
        .env("WARDEN_BASE", &s.base)
        .env("WARDEN_TOKEN", &t)
        .env("WARDEN_MODEL", "llama3:8b"))
    .await;
    check(&out, "llama3:8b");
}
