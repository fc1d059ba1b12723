//! DAG workflows (WORKFLOWS.md §1, §5 scenarios 1, 4, 5, 12, 13):
//! neuronest's `/api/orchestration/workflows` and vareon's steps with
//! `depends_on`, run by the execution actor with independent steps at
//! once, `${...}` templates, cancel, and a restart in the middle.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestServer, eventually};
use serde_json::{Value, json};

/// What the tool server saw: each call's idempotency key and body.
#[derive(Clone, Default)]
struct Seen {
    calls: Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    /// Calls whose answer was never sent (the caller went away).
    dropped: Arc<AtomicUsize>,
}

/// A hook's tool server: `hold` answers `{"text": label}` after `ms`
/// milliseconds (its input's), counting the calls dropped unanswered.
async fn tool_server(seen: Seen) -> String {
    use axum::extract::State;
    use axum::routing::{get, post};
    async fn spec() -> axum::Json<Value> {
        axum::Json(json!({"openapi": "3.0.0", "paths": {
            "/hold": {"post": {"operationId": "hold",
                "requestBody": {"content": {"application/json": {}}}}}}}))
    }
    struct Unanswered(Arc<AtomicUsize>, bool);
    impl Drop for Unanswered {
        fn drop(&mut self) {
            if !self.1 {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    async fn hold(
        State(seen): State<Seen>,
        headers: axum::http::HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> axum::Json<Value> {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        seen.calls.lock().unwrap().push((key, body.clone()));
        let mut guard = Unanswered(seen.dropped.clone(), false);
        let ms = body["input"]["ms"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        guard.1 = true;
        axum::Json(json!({"text": body["input"]["label"]}))
    }
    let app = axum::Router::new()
        .route("/openapi.json", get(spec))
        .route("/hold", post(hold))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A server, an operator's token and a registered hook `tools`.
async fn with_tools(user: &str) -> (TestServer, String, Seen) {
    let s = TestServer::start().await;
    let (t, _) = s.user(user, &["operator"], None).await;
    let seen = Seen::default();
    let url = tool_server(seen.clone()).await;
    let r = s
        .post(
            "/hooks/remote",
            &t,
            json!({"name": "tools", "endpointUrl": url, "timeoutMs": 60000}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    (s, t, seen)
}

fn hold(id: &str, label: &str, ms: u64, depends_on: &[&str]) -> Value {
    json!({"id": id, "name": format!("hold {label}"), "task_type": "hook",
        "hook": {"name": "tools", "tool_name": "hold"},
        "input_data": {"label": label, "ms": ms}, "depends_on": depends_on})
}

/// The task a run is, once it ended.
async fn ended(s: &TestServer, t: &str, id: &str) -> Value {
    eventually(20, "the workflow's run ends", || async {
        let v = s
            .get(&format!("/api/orchestration/tasks/{id}"), t)
            .await
            .body;
        (v["status"] != "created" && v["status"] != "running").then_some(v)
    })
    .await
}

/// §5.4: A and B run at once (each held 1 s), C waits for both and reads
/// their results through templates; the run reads back as a neuronest
/// task, an AIWM execution, and the workflow's status and result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_fans_out_and_in_with_templates() {
    let (s, t, seen) = with_tools("dag-fan").await;
    let steps = json!([
        hold("A", "alpha", 1000, &[]),
        hold("B", "beta", 1000, &[]),
        {"id": "C", "name": "join", "task_type": "echo", "depends_on": ["A", "B"],
         "input_data": {"both": "${A.result.text} + ${B.result.text}", "topic": "${topic}",
                        "whole": "${A.result}"}}
    ]);
    let r = s
        .post(
            "/api/orchestration/workflows",
            &t,
            json!({"name": "fan", "description": "two then one", "steps": steps}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["steps"], steps, "the steps come back as sent");
    assert_eq!(
        (r.body["status"].clone(), r.body["result"].clone()),
        (json!("created"), Value::Null)
    );
    let id = r.body["id"].as_str().unwrap().to_owned();

    let started = Instant::now();
    let r = s
        .post(
            &format!("/api/orchestration/workflows/{id}/execute"),
            &t,
            json!({"topic": "owls"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "created");
    assert_eq!(r.body["task_type"], "workflow");
    assert_eq!(r.body["input_data"], json!({"topic": "owls"}));
    assert_eq!(r.body["context"], json!({ "workflow_id": id }));
    let task_id = r.body["id"].as_str().unwrap().to_owned();
    let task = ended(&s, &t, &task_id).await;
    let took = started.elapsed();
    assert_eq!(task["status"], "completed", "{task}");
    assert!(
        took < Duration::from_millis(1600),
        "A and B ran at once: {took:?}"
    );
    assert_eq!(
        task["result"],
        json!({"both": "alpha + beta", "topic": "owls", "whole": {"text": "alpha"}})
    );
    assert_eq!(seen.calls.lock().unwrap().len(), 2);

    let w = s
        .get(&format!("/api/orchestration/workflows/{id}"), &t)
        .await
        .body;
    assert_eq!(
        (w["status"].clone(), w["result"].clone()),
        (json!("completed"), task["result"].clone())
    );
    let x = s.get(&format!("/api/executions/{task_id}"), &t).await.body;
    assert_eq!(x["status"], "completed", "{x}");
    let statuses: Vec<&str> = x["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["completed"; 3]);
    assert_eq!(x["steps"][2]["dependsOn"], json!([0, 1]));
    assert_eq!(x["steps"][0]["result"], json!({"text": "alpha"}));

    // The same workflow in the other dialects: vareon's steps string,
    // contenox's chain of the steps in order.
    let v = s
        .get(&format!("/api/neosyntis/workflows/{id}"), &t)
        .await
        .body;
    assert_eq!(
        serde_json::from_str::<Value>(v["steps"].as_str().unwrap()).unwrap(),
        steps
    );
    assert_eq!(v["status"], "completed");
    let c = s.get(&format!("/taskchains/{id}"), &t).await.body;
    assert_eq!(
        c["tasks"][0]["transition"]["branches"][0]["goto"], "B",
        "{c}"
    );

    // An update replaces the steps; an unresolved template fails its step.
    let r = s
        .put(
            &format!("/api/orchestration/workflows/{id}"),
            &t,
            json!({"steps": [{"id": "A", "task_type": "echo", "input_data": {"x": "${nope}"}}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "fan");
    let r = s
        .post(
            &format!("/api/orchestration/workflows/{id}/execute"),
            &t,
            json!({}),
        )
        .await;
    let task = ended(&s, &t, r.body["id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"], "step A: unresolved ${nope}");
    assert_eq!(
        s.get(&format!("/api/orchestration/workflows/{id}"), &t)
            .await
            .body["status"],
        "failed"
    );
}

/// §5.1 (in part): a contenox chain is a workflow neuronest lists (its
/// tasks as steps, each depending on the one before) and executes, by its
/// chain id; the hook's JSON is the result.
#[tokio::test]
async fn a_chain_runs_as_a_neuronest_workflow() {
    let (s, t, _) = with_tools("dag-chain").await;
    let chain = json!({"id": "triage", "tasks": [
        {"id": "start", "handler": "noop",
         "transition": {"branches": [{"operator": "default", "goto": "call"}]}},
        {"id": "call", "handler": "hook", "hook": {"name": "tools", "tool_name": "hold"},
         "transition": {"branches": [{"operator": "default", "goto": "end"}]}}]});
    assert_eq!(s.post("/taskchains", &t, chain).await.status, 201);
    let listed = s.get("/api/orchestration/workflows", &t).await.body;
    let w = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "triage")
        .cloned()
        .expect("the chain is listed");
    assert_eq!(w["steps"][1]["depends_on"], json!(["start"]));
    assert_eq!(w["steps"][1]["task_type"], "hook");
    let r = s
        .post(
            "/api/orchestration/workflows/triage/execute",
            &t,
            json!({"label": "x"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let task = ended(&s, &t, r.body["id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["result"], json!({"text": "x"}));
    let listed = s
        .get("/api/orchestration/tasks?task_type=workflow", &t)
        .await
        .body;
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

/// §5.5: cancelling a run blocked in a step ends it at once, drops the
/// call, and starts no later step; a second cancel is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_run_is_cancelled_mid_step() {
    let (s, t, seen) = with_tools("dag-cancel").await;
    let r = s
        .post(
            "/api/orchestration/workflows",
            &t,
            json!({"name": "stuck", "steps": [hold("A", "a", 30_000, &[]), hold("B", "b", 0, &["A"])]}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let r = s
        .post(
            &format!("/api/orchestration/workflows/{id}/execute"),
            &t,
            json!({}),
        )
        .await;
    let task = format!(
        "/api/orchestration/tasks/{}",
        r.body["id"].as_str().unwrap()
    );
    eventually(10, "the step is called", || async {
        (!seen.calls.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let asked = Instant::now();
    let r = s.post(&format!("{task}/cancel"), &t, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({"message": "Task cancelled successfully"}));
    assert_eq!(s.get(&task, &t).await.body["status"], "cancelled");
    eventually(5, "the call is dropped", || async {
        (seen.dropped.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert!(asked.elapsed() < Duration::from_secs(2));
    let again = s.post(&format!("{task}/cancel"), &t, json!({})).await;
    assert_eq!(again.status, 400, "{}", again.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.calls.lock().unwrap().len(), 1, "no later step ran");
    assert_eq!(s.delete(&task, &t).await.status, 200);
    assert_eq!(s.get(&task, &t).await.status, 404);
}

/// Two steps in flight when the server stops are called again when it
/// starts, under the same idempotency keys, and the run completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_run_resumes_its_steps_after_a_restart() {
    let (s, t, seen) = with_tools("dag-resume").await;
    let r = s
        .post(
            "/api/orchestration/workflows",
            &t,
            json!({"name": "resume", "steps": [
                hold("A", "a", 1500, &[]), hold("B", "b", 1500, &[]),
                {"id": "C", "task_type": "noop", "depends_on": ["A", "B"], "input_data": {"a": "${A.result.text}"}}]}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let r = s
        .post(
            &format!("/api/orchestration/workflows/{id}/execute"),
            &t,
            json!({}),
        )
        .await;
    let task_id = r.body["id"].as_str().unwrap().to_owned();
    eventually(10, "both steps are called", || async {
        (seen.calls.lock().unwrap().len() == 2).then_some(())
    })
    .await;
    let s = s.restart(|_| {}).await;
    let t = s.login("dag-resume", "user-password-1").await;
    let task = ended(&s, &t, &task_id).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["result"], json!({"a": "a"}));
    let calls = seen.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 4, "each step called again once");
    for step in ["A", "B"] {
        let keys: Vec<&String> = calls
            .iter()
            .filter(|(k, _)| k.contains(&format!(":{step}:")))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys.len(), 2, "{calls:?}");
        assert_eq!(keys[0], keys[1], "the same idempotency key");
    }
    // The step records show which attempts were resumed.
    let x = s.get(&format!("/api/executions/{task_id}"), &t).await.body;
    let resumed: Vec<&Value> = x["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["resumed"])
        .collect();
    assert_eq!(resumed, [&json!(true), &json!(true), &Value::Null], "{x}");
}

/// §5.12, §5.13: steps that do not read are refused (422, naming the
/// problem), unknown workflows are 404, and another organisation sees
/// nothing of them. Vareon's steps with `depends_on` are the same DAG.
#[tokio::test]
async fn bad_dags_are_refused_and_workflows_are_private() {
    let (s, t, _) = with_tools("dag-bad").await;
    let (other, _) = s.user("dag-outsider", &["operator"], None).await;
    for (bad, says) in [
        (json!({"name": "x"}), "steps"),
        (json!({"name": "x", "steps": "[]"}), "steps"),
        (json!({"name": "x", "steps": []}), "at least one step"),
        (json!({"steps": [{"id": "a", "task_type": "noop"}]}), "name"),
        (
            json!({"name": "x", "steps": [{"id": "a", "task_type": "noop", "depends_on": ["b"]},
                                          {"id": "b", "task_type": "noop", "depends_on": ["a"]}]}),
            "cycle",
        ),
        (
            json!({"name": "x", "steps": [{"id": "a", "task_type": "noop", "depends_on": ["zz"]}]}),
            "zz",
        ),
        (json!({"name": "x", "steps": [{"id": "a"}]}), "task_type"),
    ] {
        let r = s
            .post("/api/orchestration/workflows", &t, bad.clone())
            .await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
        assert!(
            r.body["detail"].to_string().contains(says),
            "{bad}: {}",
            r.body
        );
    }
    let r = s
        .post(
            "/api/orchestration/workflows",
            &t,
            json!({"name": "mine", "steps": [{"id": "a", "task_type": "noop"}]}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/orchestration/workflows/{id}");
    for missing in ["/api/orchestration/workflows/nope", path.as_str()] {
        let (status, body) = {
            let r = s
                .get(missing, if missing == path { &other } else { &t })
                .await;
            (r.status, r.body)
        };
        assert_eq!(status, 404, "{missing}: {body}");
        assert!(body["detail"].is_string());
    }
    assert_eq!(
        s.post(&format!("{path}/execute"), &other, json!({}))
            .await
            .status,
        404
    );
    assert_eq!(s.delete(&path, &other).await.status, 404);
    let theirs = s.get("/api/orchestration/workflows", &other).await.body;
    assert_eq!(theirs, json!([]));
    let r = s.put(&path, &t, json!({"steps": [{"id": "a"}]})).await;
    assert_eq!(r.status, 422, "{}", r.body);

    // Vareon: a steps string of DAG steps runs as a DAG.
    let steps = json!([{"id": "a", "task_type": "echo", "input_data": {"v": 1}},
                       {"id": "b", "task_type": "echo", "depends_on": ["a"], "input_data": {"w": "${a.result.v}"}}]);
    let r = s
        .post(
            "/api/neosyntis/workflows/",
            &t,
            json!({"name": "vdag", "steps": steps.to_string()}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let vid = r.body["id"].as_str().unwrap().to_owned();
    let r = s
        .post(
            &format!("/api/neosyntis/workflows/{vid}/trigger"),
            &t,
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "running", "{}", r.body);
    let st = eventually(10, "the run ends", || async {
        let v = s
            .get(&format!("/api/neosyntis/workflows/{vid}/status"), &t)
            .await
            .body;
        (v["status"] != "running").then_some(v)
    })
    .await;
    assert_eq!(st["status"], "completed", "{st}");
    let n = s
        .get(&format!("/api/orchestration/workflows/{vid}"), &t)
        .await
        .body;
    assert_eq!(n["steps"], steps);

    let r = s.delete(&path, &t).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"message": "Workflow deleted successfully"}));
    assert_eq!(s.get(&path, &t).await.status, 404);
}
