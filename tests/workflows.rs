//! The workflow engine's definitions through the real server: contenox
//! task chains stored as sent (loose fields round-trip), replaced by id,
//! paged, refused when malformed, per organisation.

mod common;

use std::time::Duration;

use common::fake_llm::{Fake, Mode, serve};
use common::{TestServer, eventually};
use serde_json::{Value, json};

fn triage() -> Value {
    json!({
        "id": "triage",
        "description": "Sort incoming tickets",
        "debug": true,
        "token_limit": 4096,
        "tasks": [
            {"id": "clean", "handler": "noop", "prompt_template": "{{.input}}",
             "transition": {"branches": [{"operator": "default", "goto": "classify"}]}},
            {"id": "classify", "handler": "condition_key", "model": "mistral:instruct",
             "valid_conditions": {"urgent": true, "normal": false},
             "retry_on_failure": 2, "timeout": "30s",
             "transition": {"on_failure": "end", "branches": [
                 {"operator": "equals", "when": "true", "goto": "end"},
                 {"operator": "default", "goto": "end"}]}}
        ],
        "owner_note": "kept verbatim"
    })
}

#[tokio::test]
async fn task_chains_are_stored_as_sent_replaced_paged_and_private() {
    let s = TestServer::start().await;
    let (t, _) = s.user("chains", &["operator"], None).await;
    let (viewer, _) = s.user("chain-viewer", &["viewer"], None).await;
    let (other, _) = s.user("chain-outsider", &["operator"], None).await;

    let r = s.post("/taskchains", &t, triage()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body, triage(), "every field round-trips");
    let got = s.get("/taskchains/triage", &t).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, triage());

    // The same id replaces, as the original's key-value put does.
    let mut second = triage();
    second["description"] = json!("Sort tickets, v2");
    second["tasks"].as_array_mut().unwrap().truncate(1);
    let r = s.post("/taskchains", &t, second.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let list = s.get("/taskchains", &t).await.body;
    assert_eq!(list, json!([second]));

    // PUT replaces at the path's id.
    let mut third = second.clone();
    third.as_object_mut().unwrap().remove("id");
    third["description"] = json!("v3");
    let r = s.put("/taskchains/triage", &t, third).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["id"], "triage");
    assert_eq!(r.body["description"], "v3");
    let r = s
        .put(
            "/taskchains/triage",
            &t,
            json!({"id": "other", "tasks": []}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        s.put("/taskchains/nope", &t, json!({"tasks": []}))
            .await
            .status,
        404
    );

    // Malformed chains: 400 in contenox's error shape, nothing stored.
    for (bad, says) in [
        (json!({"tasks": []}), "id"),
        (
            json!({"id": "x", "tasks": {"id": "one"}}),
            "tasks must be an array",
        ),
        (
            json!({"id": "x", "tasks": [{"id": "a", "transition": {"branches": {"goto": "b"}}}]}),
            "branches",
        ),
        (json!({"id": "a/b", "tasks": []}), "'/'"),
    ] {
        let r = s.post("/taskchains", &t, bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(says),
            "{bad}: {}",
            r.body
        );
        assert_eq!(r.body["error"]["type"], "invalid_request_error");
    }

    // Paging: newest first, limit, cursor (created before it).
    for id in ["c1", "c2", "c3"] {
        let r = s
            .post("/taskchains", &t, json!({"id": id, "tasks": []}))
            .await;
        assert_eq!(r.status, 201);
    }
    let page = s.get("/taskchains?limit=2", &t).await.body;
    let ids: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c3", "c2"]);
    assert_eq!(
        s.get("/taskchains?cursor=2000-01-01T00:00:00Z", &t)
            .await
            .body,
        json!([])
    );
    assert_eq!(
        s.get("/taskchains?cursor=2999-01-01T00:00:00.123456789Z", &t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(s.get("/taskchains?limit=0", &t).await.status, 400);
    assert_eq!(s.get("/taskchains?cursor=yesterday", &t).await.status, 400);

    // Other organisations never see them; viewers cannot change them.
    assert_eq!(s.get("/taskchains/triage", &other).await.status, 404);
    assert_eq!(s.get("/taskchains", &other).await.body, json!([]));
    let mine = s
        .post("/taskchains", &other, json!({"id": "triage", "tasks": []}))
        .await;
    assert_eq!(mine.status, 201, "chain ids are per organisation");
    assert_eq!(
        s.get("/taskchains/triage", &t).await.body["description"],
        "v3"
    );
    assert_eq!(s.post("/taskchains", &viewer, triage()).await.status, 403);
    assert_eq!(s.get("/taskchains", "").await.status, 401);

    // Delete, then the id is free again.
    let r = s.delete("/taskchains/triage", &t).await;
    assert_eq!((r.status.as_u16(), r.body.clone()), (200, json!("deleted")));
    assert_eq!(s.get("/taskchains/triage", &t).await.status, 404);
    assert_eq!(s.delete("/taskchains/triage", &t).await.status, 404);
    assert_eq!(s.post("/taskchains", &t, triage()).await.status, 201);
}

/// `POST /tasks` runs a chain of pure tasks to its end as an execution:
/// templates, branches, retries, fallbacks, and the errors of section 2.
#[tokio::test]
async fn chains_run_through_tasks_and_show_as_executions() {
    let s = TestServer::start().await;
    let (t, _) = s.user("runner", &["operator"], None).await;
    let to_end = json!({"branches": [{"operator": "default", "goto": "end"}]});
    let chain = json!({
        "id": "route", "debug": true,
        "tasks": [
            {"id": "greet", "handler": "noop", "prompt_template": "{{.input}}",
             "transition": {"branches": [{"operator": "default", "goto": "command"}]}},
            {"id": "command", "handler": "parse_transition",
             "transition": {"branches": [
                 {"operator": "equals", "when": "set", "goto": "settings"},
                 {"operator": "default", "goto": "end"}]}},
            {"id": "settings", "handler": "parse_key_value", "prompt_template": "replicas=3; region=eu",
             "transition": to_end}
        ]
    });
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": chain, "input": "/set replicas", "inputType": "string"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["output"], json!({"replicas": 3, "region": "eu"}));
    assert_eq!(r.body["outputType"], "json");
    let state = r.body["state"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = state
        .iter()
        .map(|u| {
            (
                u["taskID"].as_str().unwrap(),
                u["transition"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("greet", "noop"),
            ("command", "set"),
            ("settings", "parsed")
        ]
    );
    assert_eq!(state[0]["input"], "/set replicas", "debug shows inputs");
    assert_eq!(state[2]["output"], "{\"region\":\"eu\",\"replicas\":3}");
    assert_eq!(state[1]["error"], json!({"error": ""}));

    // Retries, then the failure target; without one the run fails (500).
    let failing = |on_failure: Value| {
        json!({"chain": {"id": "f", "tasks": [
            {"id": "boom", "handler": "raise_error", "retry_on_failure": 1,
             "transition": {"on_failure": on_failure, "branches": [{"operator": "default", "goto": "end"}]}},
            {"id": "fallback", "handler": "noop", "prompt_template": "recovered",
             "transition": {"branches": [{"operator": "default", "goto": "end"}]}}
        ]}, "input": "disk full", "inputType": "string"})
    };
    let r = s.post("/tasks", &t, failing(json!("fallback"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["output"], "recovered");
    assert_eq!(r.body["state"].as_array().unwrap().len(), 3);
    let r = s.post("/tasks", &t, failing(Value::Null)).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(
        r.body["error"]["message"],
        "task boom failed after 1 retries: disk full"
    );

    // Bad chains and inputs: 400 naming the problem, nothing runs.
    for (body, says) in [
        (json!({"input": "x"}), "chain"),
        (
            json!({"chain": {"id": "e", "tasks": []}}),
            "at least one task",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "teleport"}]}}),
            "task a: unsupported handler",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "noop",
            "transition": {"branches": [{"operator": "default", "goto": "ghost"}]}}]}}),
            "goto \"ghost\"",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "noop",
            "transition": {"branches": [{"operator": "almost", "goto": "end"}]}}]}}),
            "unknown operator",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "noop", "timeout": "soon"}]}}),
            "timeout",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "noop"}]}, "input": "x", "inputType": "yaml"}),
            "inputType",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "noop"}]}, "input": "x", "inputType": "int"}),
            "not a valid int",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "embedding",
                "execute_config": {"models": ["m1", "m2"]}}]}, "input": "x"}),
            "at most one model",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "hook"}]}, "input": "x"}),
            "hook.name and hook.tool_name",
        ),
    ] {
        let r = s.post("/tasks", &t, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {}",
            r.body
        );
    }
    // A prompted task without any LLM backend: the run fails saying how
    // to fix it.
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": {"id": "p", "tasks": [{"id": "a", "handler": "raw_string",
            "transition": {"branches": [{"operator": "default", "goto": "end"}]}}]}, "input": "x"}),
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no LLM backend is configured"),
        "{}",
        r.body
    );
    // A branch without a match and no default: the run fails.
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": {"id": "n", "tasks": [{"id": "a", "handler": "noop",
            "transition": {"branches": [{"operator": "equals", "when": "x", "goto": "end"}]}}]},
            "input": "y", "inputType": "string"}),
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no matching transition")
    );

    // Each run is an execution (AIWM's view), completed or failed.
    let listed = s.get("/api/executions?limit=50", &t).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let text = listed.body.to_string();
    assert!(text.contains("task-chain"), "{text}");
}

/// An LLM call in flight when the server stops is made again when it
/// starts, and the run completes: the call was recorded before it was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_waiting_on_the_llm_resumes_after_a_restart() {
    let (s, t, fake) = with_llm("resumer").await;
    fake.set(Mode::Hold);
    let chain = json!({"id": "slow", "tasks": [
        {"id": "ask", "handler": "raw_string", "execute_config": {"model": "mistral:instruct"},
         "transition": {"branches": [{"operator": "default", "goto": "end"}]}}]});
    let client = {
        let (http, base, t) = (s.http.clone(), s.base.clone(), t.clone());
        tokio::spawn(async move {
            http.post(format!("{base}/tasks"))
                .bearer_auth(t)
                .json(&json!({"chain": chain, "input": "hi", "inputType": "string"}))
                .send()
                .await
        })
    };
    eventually(10, "the LLM asked", || async {
        (fake.chats.load(std::sync::atomic::Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    // The server stops with the call in flight (its waiting client is
    // answered 503, and the run, not cancelled, goes on) and starts again.
    let s = s
        .restart(|c| c.llm_probe_interval = Duration::from_millis(200))
        .await;
    let answered = client.await.unwrap().expect("the stopping server answers");
    assert_eq!(answered.status(), 503);
    fake.set(Mode::Ok);
    let t = s.login("resumer", "user-password-1").await;
    let x = eventually(30, "the run completes after the restart", || async {
        let list = s.get("/api/executions?limit=10", &t).await.body;
        let x = list["data"]
            .as_array()
            .or(list.as_array())
            .and_then(|all| all.iter().find(|x| x["type"] == "task-chain").cloned())?;
        (x["status"] == "completed" || x["status"] == "failed").then_some(x)
    })
    .await;
    assert_eq!(x["status"], "completed", "{x}");
    assert_eq!(x["result"]["output"], "hello from a", "{x}");
    assert!(
        fake.chats.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "asked again"
    );
}

/// A server with an LLM backend (a local OpenAI-speaking server) serving
/// `mistral:instruct`, and an admin's token.
async fn with_llm(user: &str) -> (TestServer, String, Fake) {
    let s = TestServer::start_with(|c| c.llm_probe_interval = Duration::from_millis(200)).await;
    let (t, _) = s.user(user, &["admin"], None).await;
    let fake = Fake::new("a", &["mistral:instruct"]);
    let url = serve(fake.clone()).await;
    let group = s
        .post(
            "/groups",
            &t,
            json!({"name": "chains", "purposeType": "Chat"}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let backend = s
        .post(
            "/backends",
            &t,
            json!({"name": "fake", "type": "openai", "baseUrl": url}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(
        &format!("/backend-affinity/{group}/backends/{backend}"),
        &t,
        json!({}),
    )
    .await;
    let r = s
        .post(
            "/models",
            &t,
            json!({"model": "mistral:instruct", "canChat": true}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    s.post(
        &format!("/model-affinity/{group}/models/mistral:instruct"),
        &t,
        json!({}),
    )
    .await;
    eventually(10, "the backend's first probe", || async {
        (s.get(&format!("/backends/{backend}"), &t).await.body["healthy"] == true).then_some(())
    })
    .await;
    (s, t, fake)
}

/// A `POST /tasks` running in the background, answering (status, body).
fn run_in_background(
    s: &TestServer,
    t: &str,
    body: Value,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let (http, base, t) = (s.http.clone(), s.base.clone(), t.to_owned());
    tokio::spawn(async move {
        let r = http
            .post(format!("{base}/tasks"))
            .bearer_auth(t)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    })
}

/// A hook `slowpoke` whose tool `slow` answers after 5 s.
async fn slow_hook(s: &TestServer, t: &str) {
    let tools = Tools {
        calls: Default::default(),
        failures: Default::default(),
    };
    let url = tool_server(tools).await;
    let r = s
        .post(
            "/hooks/remote",
            t,
            json!({"name": "slowpoke", "endpointUrl": url, "timeoutMs": 20000}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

/// The `_id` of the caller's chain run once it is running.
async fn running_chain_run(s: &TestServer, t: &str) -> String {
    eventually(10, "the run started", || async {
        let list = s.get("/api/executions?limit=5", t).await.body;
        list["data"]
            .as_array()
            .or(list.as_array())?
            .iter()
            .find(|x| x["type"] == "task-chain" && x["status"] == "running")
            .and_then(|x| x["_id"].as_str().map(str::to_owned))
    })
    .await
}

/// Prompted tasks ask the LLM gateway (a local OpenAI-speaking server)
/// with their system instruction and model, read its answer as their
/// handler says, and fail (then retry, then fail the run) when no model
/// answers.
#[tokio::test]
async fn prompted_chain_tasks_ask_the_llm_gateway() {
    let (s, t, fake) = with_llm("prompter").await;
    let chain = json!({"id": "greeter", "tasks": [
        {"id": "ask", "handler": "raw_string", "prompt_template": "Say hi to {{.input}}",
         "system_instruction": "Be brief.", "retry_on_failure": 1,
         "execute_config": {"model": "mistral:instruct", "temperature": 0.1},
         "transition": {"branches": [
             {"operator": "starts_with", "when": "hello", "goto": "judge"},
             {"operator": "default", "goto": "end"}]}},
        {"id": "judge", "handler": "condition_key", "prompt_template": "Was it polite? {{.ask}}",
         "valid_conditions": {"hello from a": true, "no": false},
         "execute_config": {"model": "mistral:instruct"},
         "transition": {"branches": [{"operator": "equals", "when": "true", "goto": "end"}]}}
    ]});
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": chain, "input": "Bob", "inputType": "string"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["output"].clone(), r.body["outputType"].clone()),
        (json!(true), json!("bool"))
    );
    let units: Vec<(&str, &str)> = r.body["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["taskID"].as_str().unwrap(),
                u["transition"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(units, [("ask", "hello from a"), ("judge", "true")]);
    assert!(r.body["state"][0]["duration"].as_u64().unwrap() > 0);
    let bodies = fake.bodies.lock().unwrap().clone();
    let first = &bodies[bodies.len() - 2];
    assert_eq!(first["model"], "mistral:instruct");
    assert_eq!(first["temperature"], 0.1);
    assert_eq!(
        first["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi to Bob"}])
    );
    assert_eq!(
        bodies[bodies.len() - 1]["messages"][0]["content"],
        "Was it polite? hello from a"
    );

    // An embedding task: the embedding model's vector for its input.
    let e = Fake::new("e", &["nomic-embed-text:latest"]);
    let url = serve(e.clone()).await;
    let id = s
        .post(
            "/backends",
            &t,
            json!({"name": "embedder", "type": "openai", "baseUrl": url}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(
        &format!("/backend-affinity/internal_embed_group/backends/{id}"),
        &t,
        json!({}),
    )
    .await;
    let embed = json!({"chain": {"id": "vec", "tasks": [{"id": "v", "handler": "embedding",
        "transition": {"branches": [{"operator": "default", "goto": "end"}]}}]}, "input": "hello", "inputType": "string"});
    let r = eventually(10, "an embedding", || async {
        let r = s.post("/tasks", &t, embed.clone()).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(
        (r.body["output"].clone(), r.body["outputType"].clone()),
        (json!([0.25, -0.5, 1.0]), json!("vector"))
    );

    // No model answers: each attempt fails, then the run does.
    fake.set(Mode::Fail);
    let before = fake.chats.load(std::sync::atomic::Ordering::SeqCst);
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": chain, "input": "Bob", "inputType": "string"}),
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("task ask failed after 1 retries: no model answered"),
        "{message}"
    );
    assert_eq!(
        fake.chats.load(std::sync::atomic::Ordering::SeqCst) - before,
        2,
        "one call per attempt"
    );
}

/// What the mock tool server saw: (path and query, headers, body).
type Calls = std::sync::Arc<std::sync::Mutex<Vec<(String, axum::http::HeaderMap, Value)>>>;

#[derive(Clone)]
struct Tools {
    calls: Calls,
    /// Answers 500 while this is above 0 (counting down).
    failures: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn tool_server(tools: Tools) -> String {
    use axum::extract::{OriginalUri, State};
    use axum::routing::{get, post};
    async fn spec() -> axum::Json<Value> {
        axum::Json(json!({"openapi": "3.0.0", "paths": {
            "/tickets/{id}/comment": {"post": {"operationId": "comment",
                "parameters": [{"name": "id", "in": "path"}, {"name": "notify", "in": "query"}],
                "requestBody": {"content": {"application/json": {}}}}},
            "/slow": {"get": {"operationId": "slow"}}
        }}))
    }
    async fn comment(
        State(t): State<Tools>,
        uri: OriginalUri,
        headers: axum::http::HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        t.calls
            .lock()
            .unwrap()
            .push((uri.0.to_string(), headers, body.clone()));
        let left = t.failures.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            t.failures
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "busy").into_response();
        }
        let id = uri
            .0
            .path()
            .split('/')
            .nth(2)
            .unwrap_or_default()
            .to_owned();
        axum::Json(json!({"ok": true, "ticket": id, "echo": body})).into_response()
    }
    async fn slow() -> &'static str {
        tokio::time::sleep(Duration::from_secs(5)).await;
        "late"
    }
    let app = axum::Router::new()
        .route("/openapi.json", get(spec))
        .route("/tickets/{id}/comment", post(comment))
        .route("/slow", get(slow))
        .with_state(tools);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A hook's document is read once for calls close together, and again
/// at once when it lacks the tool a task asks for (the tool server just
/// gained it).
#[tokio::test]
async fn a_hooks_document_is_reused_and_read_again_for_a_new_tool() {
    use axum::routing::{get, post};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let s = TestServer::start().await;
    let (t, _) = s.user("doc-reader", &["operator"], None).await;
    let (reads, grown) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let spec = {
        let (reads, grown) = (reads.clone(), grown.clone());
        move || {
            let (reads, grown) = (reads.clone(), grown.clone());
            async move {
                reads.fetch_add(1, Ordering::SeqCst);
                let mut paths = json!({"/a": {"post": {"operationId": "a",
                    "requestBody": {"content": {"application/json": {}}}}}});
                if grown.load(Ordering::SeqCst) {
                    paths["/b"] = json!({"post": {"operationId": "b",
                        "requestBody": {"content": {"application/json": {}}}}});
                }
                axum::Json(json!({"openapi": "3.0.0", "paths": paths}))
            }
        }
    };
    let app = axum::Router::new()
        .route("/openapi.json", get(spec))
        .route("/a", post(|| async { axum::Json(json!({"tool": "a"})) }))
        .route("/b", post(|| async { axum::Json(json!({"tool": "b"})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let r = s
        .post(
            "/hooks/remote",
            &t,
            json!({"name": "docs", "endpointUrl": url, "timeoutMs": 2000}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let run = |tool: &str| {
        let body = json!({"chain": {"id": "d", "tasks": [{"id": "call", "handler": "hook",
            "hook": {"name": "docs", "tool_name": tool},
            "transition": {"branches": [{"operator": "default", "goto": "end"}]}}]},
            "input": "x", "inputType": "string"});
        let (s, t) = (&s, &t);
        async move { s.post("/tasks", t, body).await }
    };
    for _ in 0..3 {
        let r = run("a").await;
        assert_eq!(r.body["output"]["tool"], "a", "{}", r.body);
    }
    assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for three calls");
    grown.store(true, Ordering::SeqCst);
    let r = run("b").await;
    assert_eq!(r.body["output"]["tool"], "b", "{}", r.body);
    assert_eq!(
        reads.load(Ordering::SeqCst),
        2,
        "read again for the new tool"
    );
    s.stop().await;
}

/// Remote hooks: registered as §4 D says, and called by chain tasks as
/// §4 C says (the tool found in the hook's OpenAPI document, path and
/// query parameters taken out of the arguments, the hook's headers and
/// an idempotency key sent, retries, a template, timeouts).
#[tokio::test]
async fn hooks_are_registered_and_called_by_chain_tasks() {
    let s = TestServer::start().await;
    let (t, _) = s.user("hooker", &["operator"], None).await;
    let (other, _) = s.user("hook-outsider", &["operator"], None).await;
    let tools = Tools {
        calls: Default::default(),
        failures: Default::default(),
    };
    let url = tool_server(tools.clone()).await;

    let hook = json!({"name": "tickets", "endpointUrl": url, "timeoutMs": 2000,
        "headers": {"Authorization": "Bearer tool-secret"}});
    let r = s.post("/hooks/remote", &t, hook.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["headers"], hook["headers"]);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(s.post("/hooks/remote", &t, hook.clone()).await.status, 409);
    for bad in [
        json!({"name": "", "endpointUrl": url, "timeoutMs": 1}),
        json!({"name": "x", "endpointUrl": "", "timeoutMs": 1}),
        json!({"name": "x", "endpointUrl": url, "timeoutMs": 0}),
    ] {
        let r = s.post("/hooks/remote", &t, bad.clone()).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    let dead = s
        .post(
            "/hooks/remote",
            &t,
            json!({"name": "dead", "endpointUrl": "http://127.0.0.1:1", "timeoutMs": 300}),
        )
        .await;
    assert_eq!(dead.status, 201);
    assert_eq!(
        s.get(&format!("/hooks/remote/{id}"), &t).await.body["name"],
        "tickets"
    );
    assert_eq!(
        s.get("/hooks/remote/by-name/tickets", &t).await.body["id"],
        id.as_str()
    );
    assert_eq!(s.get("/hooks/remote/by-name/nope", &t).await.status, 404);
    assert_eq!(
        s.get("/hooks/remote", &t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let schemas = s.get("/hooks/schemas", &t).await.body;
    assert!(
        schemas["tickets"]["paths"]["/slow"].is_object(),
        "{schemas}"
    );
    assert!(
        schemas.get("dead").is_none(),
        "a hook that does not answer is left out"
    );
    let mut names: Vec<String> =
        serde_json::from_value(s.get("/supported", &t).await.body).unwrap();
    names.sort();
    assert_eq!(names, ["dead", "tickets"]);
    assert_eq!(
        s.get(&format!("/hooks/remote/{id}"), &other).await.status,
        404
    );
    assert_eq!(s.get("/supported", &other).await.body, json!([]));

    // A chain task calls the tool.
    let run = |task: Value, input: &str| {
        let (s, t) = (&s, &t);
        let body =
            json!({"chain": {"id": "h", "tasks": [task]}, "input": input, "inputType": "string"});
        async move { s.post("/tasks", t, body).await }
    };
    let comment = |extra: Value| {
        let mut task = json!({"id": "call", "handler": "hook",
            "hook": {"name": "tickets", "tool_name": "comment", "args": {"id": "T-7", "notify": "yes", "text": "hi"}},
            "transition": {"branches": [{"operator": "default", "goto": "end"}]}});
        task.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        task
    };
    let r = run(comment(json!({})), "urgent").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["outputType"], "json");
    assert_eq!(r.body["output"]["ticket"], "T-7");
    assert_eq!(
        r.body["output"]["echo"],
        json!({"input": "urgent", "text": "hi"})
    );
    assert_eq!(r.body["state"][0]["transition"], "ok");
    let (uri, headers, _) = tools.calls.lock().unwrap().last().unwrap().clone();
    assert_eq!(uri, "/tickets/T-7/comment?notify=yes");
    assert_eq!(headers["authorization"], "Bearer tool-secret");
    assert!(headers.get("idempotency-key").is_some());

    let r = run(
        comment(json!({"output_template": "Ticket {{.ticket}} ok={{.ok}}"})),
        "x",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["output"], "Ticket T-7 ok=true");

    // Two failures, then an answer: three attempts, the last one good.
    tools.failures.store(2, std::sync::atomic::Ordering::SeqCst);
    let r = run(comment(json!({"retry_on_failure": 2})), "x").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let errors: Vec<String> = r.body["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["error"]["error"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(errors.len(), 3);
    assert!(
        errors[0].contains("answered 500")
            && errors[1].contains("answered 500")
            && errors[2].is_empty(),
        "{errors:?}"
    );
    let keys: std::collections::HashSet<String> = tools
        .calls
        .lock()
        .unwrap()
        .iter()
        .rev()
        .take(3)
        .map(|(_, h, _)| h["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 3, "each attempt has its own key");

    // A missing hook, and a hook slower than its timeout.
    let r = run(
        json!({"id": "x", "handler": "hook", "hook": {"name": "nope", "tool_name": "t"}}),
        "x",
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hook nope is not registered"),
        "{}",
        r.body
    );
    let r = s
        .put(
            &format!("/hooks/remote/{id}"),
            &t,
            json!({"timeoutMs": 300}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["timeoutMs"].clone()),
        (200, json!(300))
    );
    let started = std::time::Instant::now();
    let r = run(
        json!({"id": "x", "handler": "hook", "hook": {"name": "tickets", "tool_name": "slow"}}),
        "x",
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{}",
        r.body
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    let r = s.delete(&format!("/hooks/remote/{id}"), &t).await;
    assert_eq!((r.status.as_u16(), r.body.clone()), (200, json!("deleted")));
    assert_eq!(s.get(&format!("/hooks/remote/{id}"), &t).await.status, 404);
}

/// A stored chain serves OpenAI's chat completions: a model execution on
/// the request's messages, converted to a `chat.completion`, whole or
/// streamed.
#[tokio::test]
async fn stored_chains_answer_openai_chat_completions() {
    let (s, t, fake) = with_llm("chat-chains").await;
    let chain = json!({"id": "assistant", "token_limit": 1000, "tasks": [
        {"id": "answer", "handler": "model_execution", "system_instruction": "You are helpful.",
         "execute_config": {"model": "mistral:instruct"},
         "transition": {"branches": [{"operator": "default", "goto": "convert"}]}},
        {"id": "convert", "handler": "convert_to_openai_chat_response",
         "transition": {"branches": [{"operator": "default", "goto": "end"}]}}
    ]});
    assert_eq!(s.post("/taskchains", &t, chain.clone()).await.status, 201);
    let ask =
        json!({"model": "mistral:instruct", "messages": [{"role": "user", "content": "hi there"}]});
    let r = s
        .post("/openai/assistant/v1/chat/completions", &t, ask.clone())
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["object"], "chat.completion");
    assert!(r.body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        r.body["choices"][0]["message"],
        json!({"role": "assistant", "content": "hello from a"})
    );
    assert_eq!(r.body["choices"][0]["finish_reason"], "stop");
    assert_eq!(r.body["usage"]["total_tokens"], 8);
    let sent = fake.bodies.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "hi there"}])
    );

    // Streamed: the same answer as SSE chunks, then [DONE].
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let resp = s
        .http
        .post(format!("{}/openai/assistant/v1/chat/completions", s.base))
        .bearer_auth(&t)
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let first: Value = serde_json::from_str(events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["content"], "hello from a");

    // Over the chain's token limit; an unknown chain; a chain that does
    // not end in a chat completion.
    let mut long = ask.clone();
    long["messages"][0]["content"] = json!("word ".repeat(2000));
    let r = s
        .post("/openai/assistant/v1/chat/completions", &t, long)
        .await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("token_limit"),
        "{}",
        r.body
    );
    assert_eq!(
        s.post("/openai/nope/v1/chat/completions", &t, ask.clone())
            .await
            .status,
        404
    );
    let mut bare = chain.clone();
    bare["id"] = json!("bare");
    bare["tasks"].as_array_mut().unwrap().truncate(1);
    bare["tasks"][0]["transition"] = json!({"branches": [{"operator": "default", "goto": "end"}]});
    s.post("/taskchains", &t, bare).await;
    let r = s.post("/openai/bare/v1/chat/completions", &t, ask).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chat_history output"),
        "{}",
        r.body
    );
}

/// Vareon's neosyntis workflows are the same workflows: contenox chains
/// listed there, `steps` as a JSON string, triggers that start runs at
/// once, and the latest run's status.
#[tokio::test]
async fn vareon_workflows_share_the_definitions_and_trigger_runs() {
    let s = TestServer::start().await;
    let (t, _) = s.user("neo-flows", &["operator"], None).await;
    let chain = json!({"id": "triage", "tasks": [{"id": "a", "handler": "noop",
        "transition": {"branches": [{"operator": "default", "goto": "end"}]}}]});
    assert_eq!(s.post("/taskchains", &t, chain).await.status, 201);

    let steps = json!([{"id": "greet", "handler": "noop", "prompt_template": "hello",
        "transition": {"branches": [{"operator": "default", "goto": "end"}]}}])
    .to_string();
    let r = s
        .post(
            "/api/neosyntis/workflows/",
            &t,
            json!({"name": "greeter", "description": "says hello", "steps": steps}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "created");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let echoed: Value = serde_json::from_str(r.body["steps"].as_str().unwrap()).unwrap();
    assert_eq!(echoed[0]["id"], "greet");

    // One list, both dialects.
    let listed = s.get("/api/neosyntis/workflows/", &t).await.body;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["greeter", "triage"]);
    let chains = s.get("/taskchains", &t).await.body;
    assert_eq!(chains.as_array().unwrap().len(), 2);
    assert_eq!(
        s.get("/api/neosyntis/workflows/triage", &t).await.body["name"],
        "triage"
    );

    // A trigger starts a run at once; the status follows the run.
    let path = format!("/api/neosyntis/workflows/{id}");
    let r = s.post(&format!("{path}/trigger"), &t, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "running");
    let st = s.get(&format!("{path}/status"), &t).await.body;
    assert_eq!(st["status"], "completed", "{st}");

    // Step strings run as a chain; one that fails shows failed.
    let r = s
        .post("/api/neosyntis/workflows/", &t,
              json!({"name": "pipeline", "status": "draft", "steps": json!(["fetch", "hook:nohook/send"]).to_string()}))
        .await;
    assert_eq!(
        r.body["status"], "draft",
        "a written status until the first run"
    );
    let pipeline = r.body["id"].as_str().unwrap().to_owned();
    let r = s
        .post(
            &format!("/api/neosyntis/workflows/{pipeline}/trigger"),
            &t,
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "running");
    let st = eventually(10, "the pipeline's run ends", || async {
        let st = s
            .get(&format!("/api/neosyntis/workflows/{pipeline}/status"), &t)
            .await
            .body;
        (st["status"] != "running" && st["status"] != "pending").then_some(st)
    })
    .await;
    assert_eq!(st["status"], "failed", "the hook is not registered: {st}");

    // Steps that are no program: kept; a trigger is a failed run.
    let r = s
        .post(
            "/api/neosyntis/workflows/",
            &t,
            json!({"name": "odd", "steps": "first fetch, then send"}),
        )
        .await;
    assert_eq!(r.body["steps"], "first fetch, then send");
    let odd = r.body["id"].as_str().unwrap().to_owned();
    let r = s
        .post(
            &format!("/api/neosyntis/workflows/{odd}/trigger"),
            &t,
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "failed", "{}", r.body);
    let runs = s.get("/api/executions?limit=20", &t).await.body.to_string();
    assert!(runs.contains("not a JSON list"), "the failed run says why");

    // Each run is one of the caller's myntrix jobs, newest first.
    let jobs = s.get("/api/myntrix/jobs/", &t).await.body;
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    assert!(jobs.iter().all(|j| j["type"] == "task-chain"));
    assert_eq!(jobs[0]["status"], "failed");
    assert!(
        jobs[0]["logs"]
            .as_str()
            .unwrap()
            .contains("not a JSON list")
    );
    assert_eq!(jobs[2]["status"], "completed");
    assert_eq!(
        s.get("/api/myntrix/jobs/?skip=1&limit=1", &t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (stranger, _) = s.user("neo-stranger", &["operator"], None).await;
    assert_eq!(s.get("/api/myntrix/jobs/", &stranger).await.body, json!([]));
    assert_eq!(s.get("/api/myntrix/jobs/", "").await.status, 401);

    // Changes, bad input, and deletion.
    let r = s
        .put(&path, &t, json!({"name": "greeter v2", "status": "active"}))
        .await;
    assert_eq!(
        (r.body["name"].clone(), r.body["status"].clone()),
        (json!("greeter v2"), json!("completed"))
    );
    for bad in [json!({"steps": "[]"}), json!({"name": "x", "steps": ["a"]})] {
        let r = s.post("/api/neosyntis/workflows/", &t, bad.clone()).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    assert_eq!(s.get("/api/neosyntis/workflows/nope", &t).await.status, 404);
    assert_eq!(s.get("/api/neosyntis/workflows/", "").await.status, 401);
    assert_eq!(s.delete(&path, &t).await.status, 204);
    assert_eq!(s.get(&path, &t).await.status, 404);
}

/// A synchronous run whose actor fails past its restart limit answers at
/// once with why (the supervisor's verdict reaches its waiter), rather
/// than holding the request.
#[tokio::test]
async fn a_run_given_up_on_answers_its_waiting_caller() {
    let s = TestServer::start_with(|c| {
        c.enable_fault_injection = true;
        c.execution_policy.max_restarts = 0;
    })
    .await;
    let t = s.admin_token.clone();
    slow_hook(&s, &t).await;
    let client = run_in_background(
        &s,
        &t,
        json!({"chain": {"id": "stuck", "tasks": [{"id": "wait", "handler": "hook",
                    "hook": {"name": "slowpoke", "tool_name": "slow"}}]}, "input": "x"}),
    );
    let id = running_chain_run(&s, &t).await;
    let started = std::time::Instant::now();
    let r = s
        .post(
            &format!("/admin/actors/execution:{id}/crash"),
            &t,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let (status, body) = client.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failed too often"),
        "{body}"
    );
}

/// Cancelling a chain run mid-call (AIWM's cancel): the run ends
/// `cancelled` at once, its waiting caller hears so, and the late answer
/// of the call changes nothing.
#[tokio::test]
async fn a_chain_run_is_cancelled_mid_call() {
    let s = TestServer::start().await;
    let t = s.admin_token.clone();
    slow_hook(&s, &t).await;
    let client = run_in_background(
        &s,
        &t,
        json!({"chain": {"id": "long", "tasks": [
                    {"id": "wait", "handler": "hook", "hook": {"name": "slowpoke", "tool_name": "slow"},
                     "transition": {"branches": [{"operator": "default", "goto": "after"}]}},
                    {"id": "after", "handler": "raise_error", "prompt_template": "must not run"}]}, "input": "x"}),
    );
    let id = running_chain_run(&s, &t).await;
    let started = std::time::Instant::now();
    let r = s
        .post(
            &format!("/api/executions/{id}/cancel"),
            &t,
            json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (status, body) = client.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("changed my mind"),
        "{body}"
    );
    let x = s.get(&format!("/api/executions/{id}"), &t).await.body;
    assert_eq!(x["status"], "cancelled", "{x}");
    // A moment later: still cancelled (the call was dropped with the run).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.get(&format!("/api/executions/{id}"), &t).await.body["status"],
        "cancelled"
    );
}

/// NeuroNest orchestration tasks: one-step runs answered `created` at
/// once, run in the background (the LLM for text generation), listed with
/// filters, cancelled, deleted.
#[tokio::test]
async fn neuronest_tasks_run_in_the_background() {
    let (s, t, fake) = with_llm("orchestrator").await;
    let task = |body: Value| {
        let (s, t) = (&s, &t);
        async move { s.post("/api/orchestration/tasks", t, body).await }
    };
    let done = |id: String| {
        let (s, t) = (&s, &t);
        async move {
            eventually(10, "the task ends", || async {
                let v = s
                    .get(&format!("/api/orchestration/tasks/{id}"), t)
                    .await
                    .body;
                (v["status"] != "created" && v["status"] != "running").then_some(v)
            })
            .await
        }
    };

    let agent = s
        .post("/api/orchestration/agents", &t,
              json!({"name": "poet", "configuration": {"model": "mistral:instruct", "temperature": 0.3}}))
        .await;
    assert_eq!(agent.status, 200, "{}", agent.body);
    let agent_id = agent.body["id"].as_str().unwrap().to_owned();
    let r = task(
        json!({"task_type": "text_generation", "input_data": {"prompt": "Write a haiku"},
        "context": {"style": "haiku"}, "tools": ["search"], "agent_id": agent_id}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "created");
    assert_eq!(r.body["context"], json!({"style": "haiku"}));
    let generated = done(r.body["id"].as_str().unwrap().to_owned()).await;
    assert_eq!(generated["status"], "completed", "{generated}");
    assert_eq!(generated["result"], json!({"text": "hello from a"}));
    let asked = fake.bodies.lock().unwrap().last().unwrap().clone();
    assert_eq!(asked["messages"][0]["content"], "Write a haiku");
    assert_eq!(
        (asked["model"].clone(), asked["temperature"].clone()),
        (json!("mistral:instruct"), json!(0.3))
    );

    let r = task(json!({"task_type": "echo", "input_data": {"a": 1}})).await;
    let echoed = done(r.body["id"].as_str().unwrap().to_owned()).await;
    assert_eq!(echoed["result"], json!({"a": 1}));
    let r = task(json!({"task_type": "teleport"})).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["status"], "failed");
    assert_eq!(r.body["error"], "unsupported task_type teleport");

    let by = |q: String| {
        let (s, t) = (&s, &t);
        async move {
            s.get(&format!("/api/orchestration/tasks?{q}"), t)
                .await
                .body
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["task_type"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        by(String::new()).await,
        ["teleport", "echo", "text_generation"]
    );
    assert_eq!(by("task_type=echo".into()).await, ["echo"]);
    assert_eq!(by("status=failed".into()).await, ["teleport"]);
    assert_eq!(
        by(format!("agent_id={agent_id}")).await,
        ["text_generation"]
    );

    // Cancel a task waiting on the LLM; then delete it.
    fake.set(Mode::Hold);
    let r = task(json!({"task_type": "text_generation", "input_data": {"prompt": "slowly"}, "agent_id": agent_id})).await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/orchestration/tasks/{id}");
    eventually(10, "the task runs", || async {
        (s.get(&path, &t).await.body["status"] == "running").then_some(())
    })
    .await;
    let r = s.post(&format!("{path}/cancel"), &t, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({"message": "Task cancelled successfully"}));
    assert_eq!(s.get(&path, &t).await.body["status"], "cancelled");
    let again = s.post(&format!("{path}/cancel"), &t, json!({})).await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(again.body["detail"].is_string());
    fake.set(Mode::Ok);
    assert_eq!(s.delete(&path, &t).await.status, 200);
    assert_eq!(s.get(&path, &t).await.status, 404);

    for bad in [
        json!({"input_data": {}}),
        json!({"task_type": "echo", "input_data": "x"}),
        json!({"task_type": "echo", "agent_id": "nobody"}),
    ] {
        let r = task(bad.clone()).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    let runs = s.get("/api/executions?limit=20", &t).await.body.to_string();
    assert!(runs.contains("neuronest-task"), "AIWM lists them");
}

/// WORKFLOWS.md §5.11: a `job` task hands its input to a worker through
/// the job queue and waits; leases are exclusive and lapse back into the
/// queue; only the holder finishes a job; a failed job is a failed
/// attempt (the task's retry makes a new job).
#[tokio::test]
async fn a_job_task_waits_for_a_worker_through_leases() {
    let s = TestServer::start().await;
    let (t, _) = s.user("jobs", &["operator"], None).await;
    let (other, _) = s.user("jobs-outsider", &["operator"], None).await;
    let chain = json!({"id": "review", "tasks": [
        {"id": "ask", "handler": "job", "job": {"type": "review", "valid_for": "1m"},
         "retry_on_failure": 1,
         "transition": {"branches": [{"operator": "equals", "when": "done", "goto": "end"}]}}]});
    let bad = json!({"id": "bad", "tasks": [{"id": "ask", "handler": "job", "job": {}}]});
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": bad, "input": "x", "inputType": "string"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.to_string().contains("job.type"), "{}", r.body);
    let run = run_in_background(
        &s,
        &t,
        json!({"chain": chain, "input": {"doc": 1}, "inputType": "json"}),
    );
    let job = eventually(5, "the job", || async {
        let p = s.get("/jobs/pending", &t).await.body;
        p.as_array()?.first().cloned()
    })
    .await;
    assert_eq!(job["taskType"], "review");
    assert_eq!(job["payload"], json!({"doc": 1}));
    assert_eq!(job["retryCount"], 0);
    assert_eq!(s.get("/jobs/pending", &other).await.body, json!([]));

    let lease = |leaser: &str, duration: &str| {
        s.post(
            "/leases",
            &t,
            json!({"leaserId": leaser, "leaseDuration": duration, "jobTypes": ["other", "review"]}),
        )
    };
    let r = lease("w1", "1s").await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["id"], job["id"]);
    assert_eq!(lease("w1", "1s").await.status, 404, "one holder at a time");
    let busy = s.get("/jobs/in-progress", &t).await.body;
    assert_eq!(busy[0]["leaserId"], "w1");
    let done = |id: &Value, leaser: &str, how: &str| {
        let path = format!("/jobs/{}/{how}", id.as_str().unwrap());
        let body = json!({"leaserId": leaser});
        let (s, t) = (&s, &t);
        async move {
            s.call(reqwest::Method::PATCH, &path, Some(t), Some(body))
                .await
        }
    };
    assert_eq!(done(&job["id"], "w2", "done").await.status, 409);
    assert_eq!(done(&json!("no-such-job"), "w1", "done").await.status, 404);
    for bad in [
        json!({"leaseDuration": "1s", "jobTypes": ["review"]}),
        json!({"leaserId": "w", "leaseDuration": "soon", "jobTypes": ["review"]}),
        json!({"leaserId": "w", "leaseDuration": "1s", "jobTypes": []}),
    ] {
        assert_eq!(s.post("/leases", &t, bad).await.status, 422);
    }

    // The lease lapses: back in the queue, one retry more.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pending = s.get("/jobs/pending", &t).await.body;
    assert_eq!(pending[0]["id"], job["id"]);
    assert_eq!(pending[0]["retryCount"], 1);
    assert_eq!(s.get("/jobs/in-progress", &t).await.body, json!([]));

    // Failed: the task's retry makes a new job.
    assert_eq!(lease("w2", "30s").await.status, 201);
    let r = done(&job["id"], "w2", "failed").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!("job marked as failed"));
    let second = eventually(5, "the retry's job", || async {
        let p = s.get("/jobs/pending", &t).await.body;
        p.as_array()?
            .first()
            .filter(|j| j["id"] != job["id"])
            .cloned()
    })
    .await;
    assert_eq!(lease("w2", "30s").await.body["id"], second["id"]);
    assert_eq!(
        done(&second["id"], "w2", "done").await.body,
        json!("job marked as done")
    );
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the run ends once the job is done")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["jobId"], second["id"]);
    assert_eq!(body["output"]["leaserId"], "w2");
    let state = body["state"].as_array().unwrap();
    assert_eq!(
        state.len(),
        2,
        "a failed attempt, then the done one: {body}"
    );
    assert!(
        state[0]["error"]["error"]
            .as_str()
            .unwrap()
            .contains("failed")
    );
    s.stop().await;
}

/// WORKFLOWS.md §6 "parked runs": a run that waits only for its job keeps
/// no actor; the worker's `done` wakes it at once, and the job's expiry
/// wakes it to fail the attempt.
#[tokio::test]
async fn a_run_waiting_for_a_job_keeps_no_actor_until_the_job_ends() {
    let s = TestServer::start().await;
    let (t, _) = s.user("parker", &["operator"], None).await;
    let chain = |valid_for: &str| {
        json!({"chain": {"id": "park", "tasks": [
            {"id": "ask", "handler": "job", "job": {"type": "park", "valid_for": valid_for},
             "transition": {"branches": [{"operator": "default", "goto": "end"}]}}]},
         "input": "x", "inputType": "string"})
    };
    let running = || async {
        let list = s.get("/api/executions?status=running", &t).await.body;
        list["data"].as_array()?.first()?["_id"]
            .as_str()
            .map(str::to_owned)
    };
    let live = |id: String| {
        let s = &s;
        async move {
            let tree = s.get("/admin/actors", &s.admin_token).await.body;
            common::find_actor(&tree, &format!("execution:{id}")).is_some()
        }
    };

    let run = run_in_background(&s, &t, chain("1m"));
    let job = eventually(5, "the job", || async {
        let p = s.get("/jobs/pending", &t).await.body;
        p.as_array()?.first().cloned()
    })
    .await;
    let id = eventually(5, "the running run", running).await;
    eventually(5, "the run's actor passivated", || async {
        (!live(id.clone()).await).then_some(())
    })
    .await;
    let r = s
        .post(
            "/leases",
            &t,
            json!({"leaserId": "w", "leaseDuration": "30s", "jobTypes": ["park"]}),
        )
        .await;
    assert_eq!(r.body["id"], job["id"], "{}", r.body);
    let path = format!("/jobs/{}/done", job["id"].as_str().unwrap());
    let r = s
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(&t),
            Some(json!({"leaserId": "w"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (status, body) = tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .expect("done wakes the run at once")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["jobId"], job["id"]);
    assert!(body["state"][0].get("resumed").is_none(), "{body}");

    // Nobody takes the job: its expiry wakes the run, which fails.
    let run = run_in_background(&s, &t, chain("2s"));
    let id = eventually(5, "the running run", running).await;
    eventually(5, "the run's actor passivated", || async {
        (!live(id.clone()).await).then_some(())
    })
    .await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the expiry wakes the run")
        .unwrap();
    assert_ne!(status, 200, "{body}");
    assert!(body.to_string().contains("expired"), "{body}");
    s.stop().await;
}

/// WORKFLOWS.md §5.5: a `/tasks` client that goes away mid-run cancels
/// the run (`client_disconnected`), as the original does.
#[tokio::test]
async fn a_client_that_goes_away_cancels_its_run() {
    let s = TestServer::start().await;
    let (t, _) = s.user("leaver", &["operator"], None).await;
    let chain = json!({"id": "wait", "tasks": [
        {"id": "ask", "handler": "job", "job": {"type": "never"},
         "transition": {"branches": [{"operator": "default", "goto": "end"}]}}]});
    let gone = s
        .http
        .post(format!("{}/tasks", s.base))
        .bearer_auth(&t)
        .header("x-correlation-id", "leaver-1")
        .timeout(Duration::from_millis(700))
        .json(&json!({"chain": chain, "input": "x", "inputType": "string"}))
        .send()
        .await;
    assert!(gone.is_err(), "the run should still be waiting");
    let run = eventually(5, "the run cancelled", || async {
        let v = s.get("/activity/requests/leaver-1", &t).await.body;
        (v["status"] == "cancelled").then_some(v)
    })
    .await;
    assert!(
        run["error"].to_string().contains("client_disconnected"),
        "{run}"
    );
    s.stop().await;
}

/// WORKFLOWS.md's SSRF rules: a hook may not reach a cloud metadata
/// (link-local) address nor this server's own admin routes; both fail
/// the task saying why, and `/hooks/schemas` leaves them out.
#[tokio::test]
async fn hooks_may_not_reach_metadata_addresses_or_the_servers_admin_routes() {
    let s = TestServer::start().await;
    let (t, _) = s.user("ssrf", &["operator"], None).await;
    let own_admin = format!("{}/admin", s.base);
    for (name, url) in [
        ("meta", "http://169.254.169.254"),
        ("itself", own_admin.as_str()),
    ] {
        let r = s
            .post(
                "/hooks/remote",
                &t,
                json!({"name": name, "endpointUrl": url, "timeoutMs": 3000}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    for (name, says) in [("meta", "link-local"), ("itself", "own admin route")] {
        let chain = json!({"id": "ssrf", "tasks": [
            {"id": "call", "handler": "hook", "hook": {"name": name, "tool_name": "users_get"},
             "transition": {"branches": [{"operator": "default", "goto": "end"}]}}]});
        let started = std::time::Instant::now();
        let r = s
            .post(
                "/tasks",
                &t,
                json!({"chain": chain, "input": "x", "inputType": "string"}),
            )
            .await;
        assert_eq!(r.status, 500, "{}", r.body);
        assert!(r.body.to_string().contains(says), "{name}: {}", r.body);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused before any wait"
        );
    }
    assert_eq!(s.get("/hooks/schemas", &t).await.body, json!({}));
    s.stop().await;
}

/// A `chain` task (and a vareon `chain:<id>` step) runs a stored chain on
/// its input as a child execution, linked both ways, and takes its
/// output; a chain that calls itself stops at eight deep.
#[tokio::test]
async fn a_chain_task_runs_a_stored_chain_as_a_child() {
    let s = TestServer::start().await;
    let (t, _) = s.user("parent-chains", &["operator"], None).await;
    let end = json!({"branches": [{"operator": "default", "goto": "end"}]});
    let inner = json!({"id": "inner", "tasks": [
        {"id": "say", "handler": "noop", "prompt_template": "inner got {{.input}}", "transition": end}]});
    assert_eq!(s.post("/taskchains", &t, inner).await.status, 201);
    let outer = json!({"id": "outer", "tasks": [
        {"id": "call", "handler": "chain", "chain": {"id": "inner"}, "transition": end}]});
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": outer, "input": "x", "inputType": "string"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["output"], "inner got x");
    let list = s.get("/api/executions?limit=20", &t).await.body;
    let all = list["data"]
        .as_array()
        .or(list.as_array())
        .cloned()
        .unwrap();
    let child = all
        .iter()
        .find(|x| x["parentExecutionId"].is_string())
        .unwrap_or_else(|| panic!("no child run in {list}"));
    let parent = all
        .iter()
        .find(|x| x["_id"] == child["parentExecutionId"])
        .unwrap();
    assert_eq!(parent["childExecutionIds"], json!([child["executionId"]]));

    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": {"id": "bad", "tasks": [{"id": "c", "handler": "chain", "transition": end}]},
                "input": "x", "inputType": "string"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.to_string().contains("chain.id"));
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": {"id": "lost", "tasks": [{"id": "c", "handler": "chain", "chain": {"id": "nope"}, "transition": end}]},
                "input": "x", "inputType": "string"}),
        )
        .await;
    assert_eq!(r.status, 500);
    assert!(
        r.body.to_string().contains("task chain nope not found"),
        "{}",
        r.body
    );
    let looping = json!({"id": "loop", "tasks": [
        {"id": "again", "handler": "chain", "chain": {"id": "loop"}, "transition": end}]});
    assert_eq!(s.post("/taskchains", &t, looping.clone()).await.status, 201);
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": looping, "input": "x", "inputType": "string"}),
        )
        .await;
    assert_eq!(r.status, 500);
    assert!(r.body.to_string().contains("nest at most 8"), "{}", r.body);

    // Vareon: a chain:<id> step.
    let steps = json!(["prepare", "chain:inner"]).to_string();
    let w = s
        .post(
            "/api/neosyntis/workflows/",
            &t,
            json!({"name": "nested", "steps": steps}),
        )
        .await;
    assert_eq!(w.status, 201, "{}", w.body);
    let id = w.body["id"].as_str().unwrap().to_owned();
    let r = s
        .post(
            &format!("/api/neosyntis/workflows/{id}/trigger"),
            &t,
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "running", "{}", r.body);
    eventually(5, "the nested workflow completed", || async {
        let v = s
            .get(&format!("/api/neosyntis/workflows/{id}/status"), &t)
            .await
            .body;
        (v["status"] == "completed").then_some(())
    })
    .await;
    s.stop().await;
}

/// WORKFLOWS.md §2: a model execution offers the tools of the hooks it
/// names (and the client's, when passed), the model calls one, and an
/// `execute_tool_calls` task makes the call against the hook and hands
/// the answer back to the model, which then answers.
#[tokio::test]
async fn a_model_calls_a_hook_tool_through_execute_tool_calls() {
    let (s, t, fake) = with_llm("tool-user").await;
    let tools = Tools {
        calls: Default::default(),
        failures: Default::default(),
    };
    let url = tool_server(tools.clone()).await;
    let r = s
        .post(
            "/hooks/remote",
            &t,
            json!({"name": "tickets", "endpointUrl": url, "timeoutMs": 3000}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let chain = json!({"id": "agent", "tasks": [
        {"id": "ask", "handler": "model_execution",
         "execute_config": {"model": "mistral:instruct", "hooks": ["tickets"],
                            "pass_clients_tools": true, "hide_tools": ["secret"]},
         "transition": {"branches": [
             {"operator": "equals", "when": "tool-call", "goto": "run"},
             {"operator": "default", "goto": "end"}]}},
        {"id": "run", "handler": "execute_tool_calls",
         "transition": {"branches": [{"operator": "equals", "when": "tools_executed", "goto": "ask"},
                                     {"operator": "default", "goto": "end"}]}}]});
    let client_tool = |name: &str| json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}});
    let input = json!({"model": "mistral:instruct",
        "messages": [{"role": "user", "content": "file it"}],
        "tools": [client_tool("lookup"), client_tool("secret")]});
    let run = |chain: &Value| {
        let body = json!({"chain": chain, "input": input, "inputType": "openai_chat"});
        let (s, t) = (&s, &t);
        async move { s.post("/tasks", t, body).await }
    };
    let r = run(&chain).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let transitions: Vec<&str> = r.body["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["transition"].as_str().unwrap())
        .collect();
    // The model called the client's own tool: not a hook's, so it is left
    // to the client, which gets the history ending in the call.
    assert_eq!(transitions, ["tool-call", "no_calls_found"]);
    let messages = r.body["output"]["messages"].as_array().unwrap().clone();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant"]);
    assert_eq!(messages[1]["tool_calls"][0]["function"]["name"], "lookup");

    // What the model was offered: the client's tools less the hidden one,
    // then the hook's operations with their parameters.
    let bodies = fake.bodies.lock().unwrap().clone();
    let offered = &bodies.last().expect("the model was asked")["tools"];
    let names: Vec<&str> = offered
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[0], "lookup", "{names:?}");
    assert!(
        names.contains(&"tickets.comment")
            && names.contains(&"tickets.slow")
            && !names.contains(&"secret"),
        "{names:?}"
    );
    let comment = offered
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "tickets.comment")
        .unwrap();
    let params = &comment["function"]["parameters"];
    assert!(
        params["properties"]["id"].is_object() && params["properties"]["notify"].is_object(),
        "{params}"
    );
    assert_eq!(params["required"], json!(["id"]));
    assert!(tools.calls.lock().unwrap().is_empty(), "no hook called yet");

    // Without the client's tools the model calls the hook's tool.
    let mut chain = chain;
    chain["tasks"][0]["execute_config"]["pass_clients_tools"] = json!(false);
    chain["tasks"][0]["execute_config"]["hooks"] = json!("tickets");
    let r = run(&chain).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let messages = r.body["output"]["messages"].as_array().unwrap().clone();
    let calls = tools.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "the model's call was made once");
    let (path, headers, body) = &calls[0];
    assert_eq!(path, "/tickets/7/comment");
    assert_eq!(body, &json!({"note": "hi"}));
    let answer: Value = serde_json::from_str(messages[2]["content"].as_str().unwrap()).unwrap();
    assert_eq!(answer["ticket"], "7");
    assert!(
        headers["idempotency-key"]
            .to_str()
            .unwrap()
            .ends_with(":call_1"),
        "{headers:?}"
    );
    assert_eq!(messages[2]["role"], "tool");
    assert_eq!(messages[3]["content"], "hello from a");

    // A hook that is not registered: the run fails saying so.
    chain["tasks"][0]["execute_config"]["hooks"] = json!(["nobody"]);
    let r = run(&chain).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hook nobody is not registered"),
        "{}",
        r.body
    );
}
