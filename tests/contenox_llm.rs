//! The LLM gateway's backends as contenox clients see them, against
//! local servers that speak Ollama's and OpenAI's protocols: live state
//! from each backend's actor, groups and affinity, provider keys that
//! are used but never shown, tenancy, and supervision.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::{TestServer, eventually, find_actor};
use serde_json::{Value, json};

/// What a fake backend serves, and the Authorization headers it saw.
#[derive(Clone, Default)]
struct Fake {
    models: Arc<Mutex<Vec<String>>>,
    /// The key it accepts (`None`: any request).
    key: Option<String>,
    auth_seen: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    fn with(models: &[&str], key: Option<&str>) -> Fake {
        Fake {
            models: Arc::new(Mutex::new(models.iter().map(|m| m.to_string()).collect())),
            key: key.map(str::to_owned),
            auth_seen: Arc::default(),
        }
    }

    /// Checks the key as OpenAI does, quoting what it got when wrong.
    fn refuse(&self, headers: &HeaderMap) -> Option<axum::response::Response> {
        let got = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        self.auth_seen.lock().unwrap().push(got.clone());
        let want = self.key.as_ref()?;
        if got == format!("Bearer {want}") {
            return None;
        }
        let given = got.strip_prefix("Bearer ").unwrap_or("(none)");
        Some(
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"message": format!("Incorrect API key provided: {given}"), "type": "invalid_request_error"}})),
            )
                .into_response(),
        )
    }
}

async fn ollama_tags(State(f): State<Fake>, headers: HeaderMap) -> axum::response::Response {
    if let Some(no) = f.refuse(&headers) {
        return no;
    }
    let models: Vec<Value> = f
        .models
        .lock()
        .unwrap()
        .iter()
        .map(|m| {
            json!({
        "name": m, "model": m, "modified_at": "2026-01-01T00:00:00Z", "size": 4_109_865_159u64,
        "digest": "sha256:2af3b81862c6be03c769683af18efdadb2c33f60ff32ab6f83e42c043d6c7816",
        "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
            "parameter_size": "7.2B", "quantization_level": "Q4_0"}})
        })
        .collect();
    axum::Json(json!({"models": models})).into_response()
}

async fn openai_models(State(f): State<Fake>, headers: HeaderMap) -> axum::response::Response {
    if let Some(no) = f.refuse(&headers) {
        return no;
    }
    let data: Vec<Value> = f
        .models
        .lock()
        .unwrap()
        .iter()
        .map(
            |m| json!({"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "system"}),
        )
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// A local server speaking Ollama's (`/api/tags`) and OpenAI's
/// (`/v1/models`) model listings.
async fn fake_backend(f: Fake) -> String {
    let app = axum::Router::new()
        .route("/api/tags", axum::routing::get(ollama_tags))
        .route("/v1/models", axum::routing::get(openai_models))
        .with_state(f);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// An address nothing listens on.
fn dead_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

async fn fast() -> TestServer {
    TestServer::start_with(|c| {
        c.llm_probe_interval = Duration::from_millis(200);
        c.enable_fault_injection = true;
    })
    .await
}

/// Waits until a backend's view satisfies `ok`.
async fn backend_until(
    s: &TestServer,
    t: &str,
    id: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    eventually(10, what, || async {
        let r = s.get(&format!("/backends/{id}"), t).await;
        (r.status == 200 && ok(&r.body)).then_some(r.body)
    })
    .await
}

fn assert_contenox_error(r: &common::Reply, status: u16) {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    for key in ["code", "message", "param", "type"] {
        assert!(r.body["error"][key].is_string(), "{key} in {}", r.body);
    }
}

#[tokio::test]
async fn backends_show_what_they_really_serve() {
    let s = fast().await;
    let t = s.admin_token.clone();
    let fake = Fake::with(&["mistral:instruct", "nomic-embed-text:latest"], None);
    let url = fake_backend(fake.clone()).await;

    let r = s
        .post(
            "/backends",
            &t,
            json!({"name": "ollama-local", "type": "ollama", "baseUrl": format!("{url}/")}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["baseUrl"], url, "a trailing slash is dropped");
    assert_eq!(r.body["type"], "ollama");
    assert!(r.body["createdAt"].as_str().unwrap().ends_with('Z'));

    let b = backend_until(&s, &t, &id, "the first probe", |b| {
        b["models"].as_array().is_some_and(|m| m.len() == 2)
    })
    .await;
    assert_eq!(
        b["models"],
        json!(["mistral:instruct", "nomic-embed-text:latest"])
    );
    let pulled = &b["pulledModels"][0];
    assert_eq!(pulled["model"], "mistral:instruct");
    assert_eq!(pulled["details"]["family"], "llama");
    assert_eq!(pulled["details"]["quantizationLevel"], "Q4_0");
    assert_eq!(pulled["size"], 4_109_865_159u64);
    assert_eq!(
        (
            pulled["canChat"].as_bool(),
            b["pulledModels"][1]["canEmbed"].as_bool()
        ),
        (Some(true), Some(true))
    );
    assert!(b.get("error").is_none(), "{b}");
    assert_eq!(b["healthy"], true);

    // What the backend serves is asked again on each cycle.
    fake.models.lock().unwrap().push("phi3:3.8b".into());
    backend_until(&s, &t, &id, "a pulled model", |b| {
        b["models"].as_array().is_some_and(|m| m.len() == 3)
    })
    .await;

    let r = s.get("/state", &t).await;
    assert_eq!(r.status, 200);
    let entry = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["name"], "ollama-local");
    assert_eq!(entry["backend"]["baseUrl"], url);
    assert_eq!(entry["models"].as_array().unwrap().len(), 3);

    let r = s.get("/backends", &t).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body[0]["id"], id.as_str());

    // A backend that does not answer says why; fixing its URL heals it at once.
    let r = s
        .post(
            "/backends",
            &t,
            json!({"name": "down", "type": "openai", "baseUrl": dead_address()}),
        )
        .await;
    let down = r.body["id"].as_str().unwrap().to_owned();
    let b = backend_until(&s, &t, &down, "an error", |b| b["error"].is_string()).await;
    assert!(
        b["error"].as_str().unwrap().contains("GET /v1/models"),
        "{b}"
    );
    assert_eq!(b["healthy"], false);
    assert_eq!(b["models"], json!([]));
    let r = s
        .put(&format!("/backends/{down}"), &t, json!({"baseUrl": url}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "down", "a partial update keeps the rest");
    backend_until(&s, &t, &down, "the healed backend", |b| {
        b.get("error").is_none() && b["models"].as_array().is_some_and(|m| m.len() == 3)
    })
    .await;

    // Bad input, in contenox's error shape; nothing stored.
    for body in [
        json!({"name": "x", "type": "llamafile", "baseUrl": url}),
        json!({"name": "x", "type": "ollama", "baseUrl": "ftp://example.com"}),
        json!({"name": "x", "type": "ollama", "baseUrl": "http://user:pw@example.com"}),
        json!({"type": "ollama", "baseUrl": url}),
        json!({"name": "x", "type": "ollama"}),
        json!({"name": 7, "type": "ollama", "baseUrl": url}),
    ] {
        let r = s.post("/backends", &t, body.clone()).await;
        assert_contenox_error(&r, 400);
    }
    let r = s
        .post(
            "/backends",
            &t,
            json!({"name": "ollama-local", "type": "ollama", "baseUrl": url}),
        )
        .await;
    assert_contenox_error(&r, 409);
    assert_eq!(
        s.get("/backends", &t).await.body.as_array().unwrap().len(),
        2
    );
    assert_contenox_error(&s.get("/backends/nope", &t).await, 404);
    assert_contenox_error(&s.get("/backends?limit=zero", &t).await, 400);

    // Deleting ends the backend and its actor.
    let r = s.delete(&format!("/backends/{down}"), &t).await;
    assert_eq!(
        (r.status.as_u16(), r.body.clone()),
        (200, json!("backend removed"))
    );
    assert_contenox_error(&s.get(&format!("/backends/{down}"), &t).await, 404);
    assert_contenox_error(&s.delete(&format!("/backends/{down}"), &t).await, 404);
    let name = format!("backend:{down}");
    eventually(10, "the deleted backend's actor to stop", || async {
        let tree = s.get("/admin/actors", &t).await.body;
        find_actor(&tree, &name).is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn groups_and_backend_affinity() {
    let s = fast().await;
    let (t, me) = s.user("llmadmin", &["admin"], None).await;
    let org = me["orgId"].as_str().unwrap().to_owned();
    let url = fake_backend(Fake::with(&["mistral:instruct"], None)).await;
    let backend = s
        .post(
            "/backends",
            &t,
            json!({"name": "b1", "type": "ollama", "baseUrl": url}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = s.get("/groups", &t).await;
    let names: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    for system in [
        "internal_embed_group",
        "internal_tasks_group",
        "internal_chat_group",
    ] {
        assert!(names.contains(&system), "{names:?}");
    }
    let r = s.get("/groups/internal_chat_group", &t).await;
    assert_eq!(
        (r.body["id"].as_str(), r.body["purposeType"].as_str()),
        (Some("internal_chat_group"), Some("Internal Chat"))
    );
    assert_contenox_error(&s.delete("/groups/internal_chat_group", &t).await, 403);
    assert_contenox_error(
        &s.put("/groups/internal_embed_group", &t, json!({"name": "mine"}))
            .await,
        403,
    );

    let r = s
        .post(
            "/groups",
            &t,
            json!({"name": "production-chat", "purposeType": "Internal Tasks"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let group = r.body["id"].as_str().unwrap().to_owned();
    assert_contenox_error(
        &s.post(
            "/groups",
            &t,
            json!({"name": "production-chat", "purposeType": "x"}),
        )
        .await,
        409,
    );
    assert_contenox_error(
        &s.post(
            "/groups",
            &t,
            json!({"name": "internal_chat_group", "purposeType": "x"}),
        )
        .await,
        400,
    );
    assert_contenox_error(
        &s.post("/groups", &t, json!({"name": "no-purpose"})).await,
        400,
    );
    assert_eq!(
        s.get("/group-by-name/production-chat", &t).await.body["id"],
        group.as_str()
    );
    assert_eq!(
        s.get("/group-by-name/internal_tasks_group", &t).await.body["id"],
        "internal_tasks_group"
    );
    assert_contenox_error(&s.get("/group-by-name/none-such", &t).await, 404);
    let r = s.get("/group-by-purpose/Internal%20Tasks", &t).await;
    let ids: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&group.as_str()) && ids.contains(&"internal_tasks_group"));
    assert_eq!(
        s.get("/group-by-purpose/Internal%20Tasks?limit=1", &t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = s
        .put(
            &format!("/groups/{group}"),
            &t,
            json!({"purposeType": "Chat"}),
        )
        .await;
    assert_eq!(
        (r.body["name"].as_str(), r.body["purposeType"].as_str()),
        (Some("production-chat"), Some("Chat"))
    );

    // Backends in groups: contenox's plain-string answers.
    for g in [group.as_str(), "internal_chat_group"] {
        let r = s
            .post(
                &format!("/backend-affinity/{g}/backends/{backend}"),
                &t,
                json!({}),
            )
            .await;
        assert_eq!(
            (r.status.as_u16(), r.body.clone()),
            (201, json!("backend assigned"))
        );
    }
    let r = s
        .post(
            &format!("/backend-affinity/{group}/backends/{backend}"),
            &t,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 201, "assigning twice changes nothing");
    assert_contenox_error(
        &s.post(
            &format!("/backend-affinity/{group}/backends/nope"),
            &t,
            json!({}),
        )
        .await,
        404,
    );
    assert_contenox_error(
        &s.post(
            &format!("/backend-affinity/nope/backends/{backend}"),
            &t,
            json!({}),
        )
        .await,
        404,
    );
    let r = s
        .get(&format!("/backend-affinity/{group}/backends"), &t)
        .await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(r.body[0]["id"], backend.as_str());
    assert!(r.body[0].get("models").is_none(), "basic information only");
    let r = s
        .get(&format!("/backend-affinity/{backend}/groups"), &t)
        .await;
    assert_eq!(r.body.as_array().unwrap().len(), 2, "{}", r.body);
    let r = s
        .delete(&format!("/backend-affinity/{group}/backends/{backend}"), &t)
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body.clone()),
        (200, json!("backend removed"))
    );
    assert_contenox_error(
        &s.delete(&format!("/backend-affinity/{group}/backends/{backend}"), &t)
            .await,
        404,
    );
    assert_eq!(
        s.get(&format!("/backend-affinity/{group}/backends"), &t)
            .await
            .body,
        json!([])
    );

    // Another organisation sees the system groups, but none of these.
    let (other, _) = s.user("otheradmin", &["admin"], None).await;
    assert_contenox_error(&s.get(&format!("/backends/{backend}"), &other).await, 404);
    assert_eq!(s.get("/backends", &other).await.body, json!([]));
    assert_contenox_error(&s.get(&format!("/groups/{group}"), &other).await, 404);
    assert_eq!(
        s.get("/backend-affinity/internal_chat_group/backends", &other)
            .await
            .body,
        json!([])
    );
    assert_contenox_error(
        &s.post(
            &format!("/backend-affinity/internal_chat_group/backends/{backend}"),
            &other,
            json!({}),
        )
        .await,
        404,
    );
    assert_eq!(
        s.get("/backend-affinity/internal_chat_group/backends", &t)
            .await
            .body[0]["id"],
        backend.as_str()
    );
    // Members read; only admins write.
    let (viewer, _) = s.user("llmviewer", &["viewer"], Some(&org)).await;
    assert_eq!(
        s.get(&format!("/backends/{backend}"), &viewer).await.status,
        200
    );
    assert_contenox_error(
        &s.post("/groups", &viewer, json!({"name": "v", "purposeType": "x"}))
            .await,
        403,
    );
    assert_contenox_error(
        &s.delete(&format!("/backends/{backend}"), &viewer).await,
        403,
    );
    assert_contenox_error(
        &s.call(reqwest::Method::GET, "/backends", None, None).await,
        401,
    );

    // A deleted group leaves its backends; a deleted backend leaves its groups.
    let r = s.delete(&format!("/groups/{group}"), &t).await;
    assert_eq!((r.status.as_u16(), r.body.clone()), (200, json!("deleted")));
    assert_eq!(s.get(&format!("/backends/{backend}"), &t).await.status, 200);
    s.delete(&format!("/backends/{backend}"), &t).await;
    assert_eq!(
        s.get("/backend-affinity/internal_chat_group/backends", &t)
            .await
            .body,
        json!([])
    );
}

#[tokio::test]
async fn provider_keys_are_used_and_never_shown() {
    let s = fast().await;
    let (t, me) = s.user("keyadmin", &["admin"], None).await;
    let org = me["orgId"].as_str().unwrap().to_owned();
    let key = "sk-test-provider-key-0123456789";
    let fake = Fake::with(&["gpt-4o", "text-embedding-3-small"], Some(key));
    let url = fake_backend(fake.clone()).await;
    let id = s
        .post(
            "/backends",
            &t,
            json!({"name": "openai", "type": "openai", "baseUrl": format!("{url}/v1")}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = backend_until(&s, &t, &id, "a 401 without a key", |b| {
        b["error"].is_string()
    })
    .await;
    assert!(b["error"].as_str().unwrap().contains("HTTP 401"), "{b}");

    let r = s.get("/providers/openai/status", &t).await;
    assert_eq!(
        (
            r.body["configured"].as_bool(),
            r.body["secretSource"].as_str()
        ),
        (Some(false), Some("none"))
    );
    assert_contenox_error(&s.get("/providers/openai/config", &t).await, 404);
    let r = s
        .post("/providers/openai/configure", &t, json!({"apiKey": key}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["Type"].as_str(), r.body["configured"].as_bool()),
        (Some("openai"), Some(true))
    );
    assert_contenox_error(
        &s.post(
            "/providers/openai/configure",
            &t,
            json!({"apiKey": "sk-other"}),
        )
        .await,
        409,
    );
    assert_eq!(
        s.post(
            "/providers/openai/configure",
            &t,
            json!({"apiKey": key, "upsert": true})
        )
        .await
        .status,
        200
    );
    assert_contenox_error(
        &s.post(
            "/providers/openai/configure",
            &t,
            json!({"apiKeyEnv": "WARDEN_ADMIN_PASSWORD"}),
        )
        .await,
        400,
    );
    assert_contenox_error(
        &s.post("/providers/ollama/configure", &t, json!({"apiKey": key}))
            .await,
        400,
    );
    let b = backend_until(&s, &t, &id, "the key in use", |b| {
        b.get("error").is_none() && b["healthy"] == true
    })
    .await;
    assert_eq!(b["models"], json!(["gpt-4o", "text-embedding-3-small"]));

    // A vLLM server is not sent the organisation's OpenAI key.
    let vfake = Fake::with(&["served-model"], None);
    let vurl = fake_backend(vfake.clone()).await;
    let vllm = s
        .post(
            "/backends",
            &t,
            json!({"name": "vllm", "type": "vllm", "baseUrl": vurl}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    backend_until(&s, &t, &vllm, "the vLLM probe", |b| b["healthy"] == true).await;
    let seen = vfake.auth_seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(String::is_empty),
        "{seen:?}"
    );
    assert!(
        fake.auth_seen
            .lock()
            .unwrap()
            .iter()
            .any(|a| a == &format!("Bearer {key}"))
    );

    // A backend's own wrong key is quoted back by the provider: scrubbed.
    let own = "sk-own-wrong-key-9876543210";
    let r = s
        .post(
            "/backends",
            &t,
            json!({"name": "own", "type": "openai", "baseUrl": url, "apiKey": own}),
        )
        .await;
    assert_eq!(r.status, 201);
    let own_id = r.body["id"].as_str().unwrap().to_owned();
    let b = backend_until(&s, &t, &own_id, "the wrong key's error", |b| {
        b["error"].is_string()
    })
    .await;
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("Incorrect API key provided: ***"),
        "{b}"
    );

    // No response ever holds a key.
    for path in [
        "/backends",
        "/state",
        "/providers/configs",
        "/providers/openai/config",
        "/providers/openai/status",
        &format!("/backends/{own_id}"),
    ] {
        let r = s.get(path, &t).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let text = r.body.to_string();
        assert!(
            !text.contains(key) && !text.contains(own),
            "{path} shows a key: {text}"
        );
    }
    assert_eq!(
        s.get("/providers/configs", &t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (member, _) = s.user("keyreader", &["operator"], Some(&org)).await;
    assert_contenox_error(&s.get("/providers/configs", &member).await, 403);

    let r = s.delete("/providers/openai/config", &t).await;
    assert_eq!(
        (r.status.as_u16(), r.body.clone()),
        (200, json!("provider config deleted"))
    );
    assert_eq!(
        s.get("/providers/openai/status", &t).await.body["configured"],
        false
    );
    backend_until(&s, &t, &id, "the key gone", |b| b["error"].is_string()).await;
}

#[tokio::test]
async fn a_crashed_backend_actor_restarts_and_keeps_probing() {
    let s = fast().await;
    let t = s.admin_token.clone();
    let fake = Fake::with(&["mistral:instruct"], None);
    let url = fake_backend(fake.clone()).await;
    let id = s
        .post(
            "/backends",
            &t,
            json!({"name": "crashy", "type": "ollama", "baseUrl": url}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    backend_until(&s, &t, &id, "the first probe", |b| b["healthy"] == true).await;
    let name = format!("backend:{id}");
    let r = s
        .post(&format!("/admin/actors/{name}/crash"), &t, json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(10, "the restart", || async {
        let tree = s.get("/admin/actors", &t).await.body;
        let a = find_actor(&tree, &name)?;
        (a["restartCount"] == 1 && a["status"] == "running").then_some(())
    })
    .await;
    fake.models.lock().unwrap().push("llama3:8b".into());
    backend_until(&s, &t, &id, "probing after the restart", |b| {
        b["models"].as_array().is_some_and(|m| m.len() == 2)
    })
    .await;
}

#[tokio::test]
async fn models_are_the_core_registry_and_groups_hold_them() {
    let s = TestServer::start().await;
    let (t, me) = s.user("modeladmin", &["admin"], None).await;
    let org = me["orgId"].as_str().unwrap().to_owned();

    // The boot models, in every organisation's view.
    let r = s.get("/models", &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let find = |body: &Value, id: &str| {
        body.as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
    };
    let phi = find(&r.body, "phi3:3.8b").expect("the task model");
    assert_eq!(
        (phi["canChat"].as_bool(), phi["canEmbed"].as_bool()),
        (Some(true), Some(false))
    );
    let embed = find(&r.body, "nomic-embed-text:latest").expect("the embedding model");
    assert_eq!(embed["canEmbed"], true);
    assert_eq!(
        s.get("/defaultmodel", &t).await.body,
        json!({"modelName": "phi3:3.8b"})
    );
    assert_contenox_error(&s.delete("/models/phi3:3.8b", &t).await, 403);
    assert_contenox_error(
        &s.put(
            "/models/nomic-embed-text:latest",
            &t,
            json!({"contextLength": 1}),
        )
        .await,
        403,
    );
    let groups = s.get("/model-affinity/phi3:3.8b/groups", &t).await.body;
    let ids: Vec<&str> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&"internal_tasks_group") && ids.contains(&"internal_chat_group"));
    assert_eq!(
        s.get("/model-affinity/internal_embed_group/models", &t)
            .await
            .body[0]["id"],
        "nomic-embed-text:latest"
    );

    // A declared model is a core model: AIWM's registry lists it.
    let r = s
        .post("/models", &t, json!({"model": "mistral:instruct", "canChat": true, "canStream": true, "contextLength": 8192}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        (r.body["id"].as_str(), r.body["contextLength"].as_u64()),
        (Some("mistral:instruct"), Some(8192))
    );
    assert_contenox_error(
        &s.post("/models", &t, json!({"model": "mistral:instruct"}))
            .await,
        409,
    );
    assert_contenox_error(
        &s.post("/models", &t, json!({"model": "phi3:3.8b"})).await,
        409,
    );
    assert_contenox_error(
        &s.post("/models", &t, json!({"model": "has space"})).await,
        400,
    );
    assert_contenox_error(&s.post("/models", &t, json!({"canChat": true})).await, 400);
    assert_contenox_error(
        &s.post("/models", &t, json!({"model": "x", "contextLength": -1}))
            .await,
        400,
    );
    let aiwm = s.get("/api/models", &t).await;
    let listed = aiwm.body["data"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|m| m["name"] == "mistral:instruct" && m["type"] == "llm"),
        "{}",
        aiwm.body
    );
    let r = s
        .put(
            "/models/mistral:instruct",
            &t,
            json!({"contextLength": 4096, "model": "renamed"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (
            r.body["id"].as_str(),
            r.body["contextLength"].as_u64(),
            r.body["canChat"].as_bool()
        ),
        (Some("mistral:instruct"), Some(4096), Some(true))
    );
    assert_contenox_error(
        &s.put("/models/none-such", &t, json!({"contextLength": 1}))
            .await,
        404,
    );
    s.post("/models", &t, json!({"model": "lonely:1b"})).await;

    // Groups hold models by name; only grouped models are reachable.
    let group = s
        .post(
            "/groups",
            &t,
            json!({"name": "chat", "purposeType": "Chat"}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s
        .post(
            &format!("/model-affinity/{group}/models/mistral:instruct"),
            &t,
            json!({}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body.clone()),
        (200, json!("model assigned"))
    );
    assert_contenox_error(
        &s.post(
            &format!("/model-affinity/{group}/models/none-such"),
            &t,
            json!({}),
        )
        .await,
        404,
    );
    assert_eq!(
        s.get(&format!("/model-affinity/{group}/models"), &t)
            .await
            .body[0]["id"],
        "mistral:instruct"
    );
    assert_eq!(
        s.get("/model-affinity/mistral:instruct/groups", &t)
            .await
            .body[0]["id"],
        group.as_str()
    );
    s.post(
        "/model-affinity/internal_chat_group/models/mistral:instruct",
        &t,
        json!({}),
    )
    .await;
    let r = s
        .delete(
            "/model-affinity/internal_chat_group/models/mistral:instruct",
            &t,
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body.clone()),
        (200, json!("model removed"))
    );
    assert_contenox_error(
        &s.delete(
            "/model-affinity/internal_chat_group/models/mistral:instruct",
            &t,
        )
        .await,
        404,
    );
    assert_eq!(
        s.get("/model-affinity/mistral:instruct/groups", &t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    for path in ["/v1/models", "/openai/any-chain/v1/models"] {
        let r = s.get(path, &t).await;
        assert_eq!(r.body["object"], "list", "{path}");
        let ids: Vec<&str> = r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        for id in ["mistral:instruct", "phi3:3.8b", "nomic-embed-text:latest"] {
            assert!(ids.contains(&id), "{path}: {ids:?}");
        }
        assert!(
            !ids.contains(&"lonely:1b"),
            "an ungrouped model is not reachable"
        );
        assert_eq!(r.body["data"][0]["object"], "model");
    }

    // Another organisation sees the server's models, not these.
    let (other, _) = s.user("othermodels", &["admin"], None).await;
    let theirs = s.get("/models", &other).await.body;
    assert!(find(&theirs, "phi3:3.8b").is_some() && find(&theirs, "mistral:instruct").is_none());
    assert_contenox_error(
        &s.get("/model-affinity/mistral:instruct/groups", &other)
            .await,
        404,
    );
    let (viewer, _) = s.user("modelviewer", &["viewer"], Some(&org)).await;
    assert_contenox_error(
        &s.post("/models", &viewer, json!({"model": "v:1"})).await,
        403,
    );

    // Deleted: gone from every view and from its groups.
    let r = s.delete("/models/mistral:instruct", &t).await;
    assert_eq!(
        (r.status.as_u16(), r.body.clone()),
        (200, json!("model removed"))
    );
    assert_contenox_error(&s.delete("/models/mistral:instruct", &t).await, 404);
    assert_eq!(
        s.get(&format!("/model-affinity/{group}/models"), &t)
            .await
            .body,
        json!([])
    );
    let aiwm = s.get("/api/models", &t).await;
    assert!(
        !aiwm.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "mistral:instruct")
    );
}

#[tokio::test]
async fn system_services_resources_and_version() {
    let s = TestServer::start().await;
    let t = s.admin_token.clone();
    let r = s.get("/system/services", &t).await;
    assert_eq!(r.status, 200);
    let names: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for n in [
        "http-gateway",
        "nodes",
        "executions",
        "deployments",
        "backends",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    let r = s.get("/system/resources", &t).await;
    assert!(
        r.body.as_array().unwrap().iter().any(|k| k == "backends"),
        "{}",
        r.body
    );
    assert_contenox_error(
        &s.call(reqwest::Method::GET, "/system/services", None, None)
            .await,
        401,
    );
    let r = s.call(reqwest::Method::GET, "/version", None, None).await;
    assert_eq!(
        (r.status.as_u16(), r.body["name"].as_str()),
        (200, Some("warden"))
    );
    assert_eq!(r.body["version"], env!("CARGO_PKG_VERSION"));
}
