//! The gateway's OpenAI-compatible chat, `/execute` and `/embed`,
//! against local servers that speak OpenAI's protocol (as Ollama, vLLM
//! and OpenAI do), streaming included: routing by group and health,
//! failover before the first byte, one clear error after it, and bad
//! input refused before any backend sees it.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::fake_llm::{Fake, Mode, serve};
use common::{TestServer, eventually};
use serde_json::{Value, json};

struct Setup {
    s: TestServer,
    t: String,
    group: String,
}

impl Setup {
    async fn new() -> Setup {
        let s = TestServer::start_with(|c| {
            c.llm_probe_interval = Duration::from_millis(200);
            c.enable_fault_injection = true;
        })
        .await;
        let (t, _) = s.user("chatadmin", &["admin"], None).await;
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
        Setup { s, t, group }
    }

    /// A backend in the group, answering, once its first probe is in.
    async fn backend(&self, name: &str, kind: &str, fake: &Fake) -> String {
        let url = serve(fake.clone()).await;
        let r = self
            .s
            .post(
                "/backends",
                &self.t,
                json!({"name": name, "type": kind, "baseUrl": url}),
            )
            .await;
        let id = r.body["id"].as_str().unwrap().to_owned();
        self.s
            .post(
                &format!("/backend-affinity/{}/backends/{id}", self.group),
                &self.t,
                json!({}),
            )
            .await;
        eventually(10, "the backend's first probe", || async {
            let b = self.s.get(&format!("/backends/{id}"), &self.t).await.body;
            (b["healthy"] == true).then_some(())
        })
        .await;
        id
    }

    async fn model(&self, name: &str) {
        let r = self
            .s
            .post("/models", &self.t, json!({"model": name, "canChat": true}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        self.s
            .post(
                &format!("/model-affinity/{}/models/{name}", self.group),
                &self.t,
                json!({}),
            )
            .await;
    }

    async fn chat(&self, body: Value) -> reqwest::Response {
        self.s
            .http
            .post(format!("{}/v1/chat/completions", self.s.base))
            .bearer_auth(&self.t)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

/// The `data:` events of an SSE answer, in order.
async fn events(r: reqwest::Response) -> Vec<String> {
    let text = r.text().await.unwrap_or_default();
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

fn user_says(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn chat_whole_and_streamed_through_the_gateway() {
    let x = Setup::new().await;
    let a = Fake::new("a", &["mistral:instruct"]);
    x.backend("a", "ollama", &a).await;
    x.model("mistral:instruct").await;

    let r = x.chat(user_says("mistral:instruct", false)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "hello from a");
    assert_eq!(v["usage"]["total_tokens"], 8);
    assert_eq!(
        a.bodies.lock().unwrap()[0]["messages"][0]["role"],
        "system",
        "the request goes as sent"
    );

    // The backend's actor crashes: it restarts, and requests are served
    // all along.
    let backend = x.s.get("/backends", &x.t).await.body[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let name = format!("backend:{backend}");
    let r =
        x.s.post(
            &format!("/admin/actors/{name}/crash"),
            &x.s.admin_token,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        x.chat(user_says("mistral:instruct", false)).await.status(),
        200
    );
    eventually(10, "the restart", || async {
        let tree = x.s.get("/admin/actors", &x.s.admin_token).await.body;
        let a = common::find_actor(&tree, &name)?;
        (a["restartCount"] == 1 && a["status"] == "running").then_some(())
    })
    .await;
    assert_eq!(
        x.chat(user_says("mistral:instruct", false)).await.status(),
        200
    );

    let mut body = user_says("mistral:instruct", true);
    body["stream_options"] = json!({"include_usage": true});
    let r = x.chat(body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let ev = events(r).await;
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let text: String = ev
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text.trim(), "hello from a");
    let usage: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["total_tokens"], 8);

    // A prompt through the task model; a text through the embedding model.
    let r =
        x.s.post(
            "/execute",
            &x.t,
            json!({"prompt": "hi", "model_name": "mistral:instruct"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["response"], "hello from a");
    assert!(r.body["id"].is_string());
    let r = x.s.post("/execute", &x.t, json!({"prompt": "hi"})).await;
    assert_eq!(
        r.status, 503,
        "no backend serves the task model: {}",
        r.body
    );
    let e = Fake::new("e", &["nomic-embed-text:latest"]);
    let url = serve(e.clone()).await;
    let id =
        x.s.post(
            "/backends",
            &x.t,
            json!({"name": "e", "type": "openai", "baseUrl": url}),
        )
        .await
        .body["id"]
            .as_str()
            .unwrap()
            .to_owned();
    x.s.post(
        &format!("/backend-affinity/internal_embed_group/backends/{id}"),
        &x.t,
        json!({}),
    )
    .await;
    let r = eventually(10, "an embedding", || async {
        let r = x.s.post("/embed", &x.t, json!({"text": "hello"})).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(r.body["vector"], json!([0.25, -0.5, 1.0]));
    assert_eq!(x.s.post("/embed", &x.t, json!({})).await.status, 400);

    // Usage by user and model: the providers' counts where given
    // (whole, stream with include_usage, /execute), estimates otherwise.
    let ev = events(x.chat(user_says("mistral:instruct", true)).await).await;
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let r =
        x.s.get("/admin/llm/usage?model=mistral:instruct", &x.t)
            .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let row = &r.body[0];
    assert_eq!(
        (row["requests"].as_u64(), row["estimatedRequests"].as_u64()),
        (Some(6), Some(1)),
        "{row}"
    );
    // 5 reported answers of 8 tokens, and one estimated: "be brief" +
    // "hi" is 10 characters (3 tokens), "hello from a " 13 (4 tokens).
    assert_eq!(row["totalTokens"], 5 * 8 + 3 + 4, "{row}");
    assert_eq!(row["cost"], 0.0);
    let models = eventually(15, "the model's counters", || async {
        let r = x.s.get("/api/models", &x.t).await;
        let m = r.body["data"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == "mistral:instruct")?
            .clone();
        (m["totalInference"] == 6).then_some(m)
    })
    .await;
    assert_eq!(models["totalTokens"], 47);
    let (other, _) = x.s.user("usagestranger", &["admin"], None).await;
    assert_eq!(x.s.get("/admin/llm/usage", &other).await.body, json!([]));

    // Whole answers that are not JSON are the backend's fault.
    a.set(Mode::Garbage);
    assert_eq!(
        x.s.post(
            "/execute",
            &x.t,
            json!({"prompt": "hi", "model_name": "mistral:instruct"})
        )
        .await
        .status,
        502
    );
}

#[tokio::test]
async fn failover_before_the_first_byte_and_one_error_after_it() {
    let x = Setup::new().await;
    let (a, b) = (
        Fake::new("a", &["llama3:8b"]),
        Fake::new("b", &["llama3:8b"]),
    );
    let a_id = x.backend("a", "openai", &a).await;
    x.backend("b", "vllm", &b).await;
    x.model("llama3:8b").await;

    // a answers 500: every request is answered by b, and a was tried.
    a.set(Mode::Fail);
    for _ in 0..4 {
        let r = x.chat(user_says("llama3:8b", false)).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "hello from b");
    }
    assert!(
        a.chats.load(Ordering::SeqCst) >= 1,
        "the failing backend was tried first in turn"
    );

    // a's streams die before their first byte: b streams instead, whole.
    a.set(Mode::BreakBeforeFirst);
    let before = a.chats.load(Ordering::SeqCst);
    for _ in 0..4 {
        let ev = events(x.chat(user_says("llama3:8b", true)).await).await;
        assert_eq!(ev.last().unwrap(), "[DONE]", "{ev:?}");
        assert!(ev.iter().any(|e| e.contains("b ")), "{ev:?}");
        assert!(
            !ev.iter().any(|e| e.contains("\"a ")),
            "never spliced: {ev:?}"
        );
    }
    assert!(a.chats.load(Ordering::SeqCst) > before);

    // A stream that breaks after its first byte ends with one error event.
    x.s.delete(
        &format!("/backend-affinity/{}/backends/{a_id}", x.group),
        &x.t,
    )
    .await;
    b.set(Mode::BreakMid);
    let ev = events(x.chat(user_says("llama3:8b", true)).await).await;
    assert!(ev.len() >= 2, "{ev:?}");
    let last: Value = serde_json::from_str(ev.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted", "{ev:?}");
    assert!(!ev.contains(&"[DONE]".to_owned()));
    assert_eq!(ev.iter().filter(|e| e.contains("\"error\"")).count(), 1);

    // What is not JSON, whole or in an event, is not passed on.
    b.set(Mode::Garbage);
    let r = x.chat(user_says("llama3:8b", false)).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_gateway", "{v}");
    let ev = events(x.chat(user_says("llama3:8b", true)).await).await;
    let last: Value = serde_json::from_str(ev.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a JSON object"),
        "{ev:?}"
    );
    assert!(!ev.iter().any(|e| e.contains("oops")), "{ev:?}");

    // Every backend failing: 503 naming each.
    b.set(Mode::Fail);
    let r = x.chat(user_says("llama3:8b", false)).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("b: HTTP 500"),
        "{v}"
    );
}

#[tokio::test]
async fn bad_requests_and_unreachable_models_are_refused_clearly() {
    let x = Setup::new().await;
    // No backend at all: how to add one.
    let r = x.chat(user_says("phi3:3.8b", false)).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("POST /backends"),
        "{v}"
    );
    for v in [v["error"]["code"].clone(), v["error"]["type"].clone()] {
        assert!(v.is_string());
    }

    let a = Fake::new("a", &["served:1b"]);
    x.backend("a", "openai", &a).await;
    x.model("served:1b").await;
    x.model("unserved:1b").await;
    let r = x.chat(user_says("unserved:1b", false)).await;
    assert_eq!(
        r.status(),
        503,
        "declared and grouped, but no backend lists it"
    );
    assert_eq!(x.chat(user_says("none-such", false)).await.status(), 404);

    for (body, why) in [
        (
            json!({"model": "served:1b", "messages": []}),
            "empty messages",
        ),
        (json!({"model": "served:1b"}), "no messages"),
        (
            json!({"model": "served:1b", "messages": [{"role": "wizard", "content": "hi"}]}),
            "an invalid role",
        ),
        (
            json!({"model": "served:1b", "messages": [{"role": "user", "content": 5}]}),
            "content not text",
        ),
        (
            json!({"model": "served:1b", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}),
            "stream not a boolean",
        ),
        (
            json!({"model": "served:1b", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}),
            "temperature not a number",
        ),
    ] {
        let r = x.chat(body).await;
        assert_eq!(r.status(), 400, "{why}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].is_string(), "{why}: {v}");
    }
    let r =
        x.s.http
            .post(format!("{}/v1/chat/completions", x.s.base))
            .bearer_auth(&x.t)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 400);
    let huge = "x".repeat(2 * 1024 * 1024);
    let r = x
        .chat(json!({"model": "served:1b", "messages": [{"role": "user", "content": huge}]}))
        .await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        a.chats.load(Ordering::SeqCst),
        0,
        "no bad request reached the backend"
    );
    let r =
        x.s.http
            .post(format!("{}/v1/chat/completions", x.s.base))
            .json(&user_says("served:1b", false))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn ollama_backends_pull_what_their_groups_want() {
    let x = Setup::new().await;
    let o = Fake::new("o", &["have:1b"]);
    let id = x.backend("o", "ollama", &o).await;
    let mut sse =
        x.s.http
            .get(format!("{}/queue/inProgress", x.s.base))
            .bearer_auth(&x.t)
            .send()
            .await
            .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");

    // A model put in the backend's group is pulled, with progress.
    x.model("tiny:1b").await;
    let mut seen: Vec<Value> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !seen
        .iter()
        .any(|e| e["model"] == "tiny:1b" && e["status"] == "success")
    {
        assert!(std::time::Instant::now() < deadline, "no success: {seen:?}");
        let chunk = tokio::time::timeout(Duration::from_secs(5), sse.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for e in String::from_utf8_lossy(&chunk).split("\n\n") {
            if let Some(d) = e.strip_prefix("data: ") {
                seen.push(serde_json::from_str(d).unwrap());
            }
        }
    }
    let progress: Vec<u64> = seen
        .iter()
        .filter(|e| e["status"] == "downloading")
        .map(|e| e["completed"].as_u64().unwrap())
        .collect();
    assert!(
        progress.len() >= 3 && progress.windows(2).all(|w| w[0] <= w[1]),
        "{progress:?}"
    );
    assert!(
        seen.iter()
            .all(|e| e["baseUrl"].is_string() && e["model"].is_string())
    );
    eventually(10, "the pulled model served", || async {
        let b = x.s.get(&format!("/backends/{id}"), &x.t).await.body;
        b["models"]
            .as_array()?
            .iter()
            .any(|m| m == "tiny:1b")
            .then_some(())
    })
    .await;
    assert_eq!(x.s.get("/queue", &x.t).await.body, json!([]));

    // A long pull shows in the queue until it is cancelled; then it is
    // not pulled again.
    x.model("slow:7b").await;
    let job = eventually(10, "the slow pull", || async {
        let q = x.s.get("/queue", &x.t).await.body;
        q.as_array()?
            .iter()
            .find(|j| j["modelJob"]["model"] == "slow:7b" && j["status"] == "downloading")
            .cloned()
    })
    .await;
    assert_eq!(job["taskType"], "model_download");
    let r = x.s.delete("/queue/slow:7b", &x.t).await;
    assert_eq!(
        (r.status.as_u16(), r.body.clone()),
        (200, json!("Model removed from queue"))
    );
    assert_eq!(x.s.get("/queue", &x.t).await.body, json!([]));
    eventually(5, "the pull's connection closed", || async {
        (o.pulls_dropped.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let slow = o
        .pulls
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.as_str() == "slow:7b")
        .count();
    assert_eq!(slow, 1, "a cancelled pull is not started again");

    // A pull the registry refuses fails once, visibly, and waits.
    x.model("missing:1b").await;
    let failed = seen_until(&mut sse, "missing:1b").await;
    assert!(
        failed["status"]
            .as_str()
            .unwrap()
            .starts_with("error: pull model manifest"),
        "{failed}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        o.pulls
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.as_str() == "missing:1b")
            .count(),
        1
    );

    assert_eq!(x.s.delete("/queue/none-such", &x.t).await.status, 404);
    assert_eq!(x.s.delete("/queue/cancel", &x.t).await.status, 400);
    let r = x.s.delete("/queue/cancel?model=tiny:1b", &x.t).await;
    assert_eq!(r.body, json!("Model download cancellation initiated"));
}

/// Reads progress events until one for `model` says it ended badly.
async fn seen_until(sse: &mut reqwest::Response, model: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no error event for {model}"
        );
        let chunk = tokio::time::timeout(Duration::from_secs(5), sse.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for e in String::from_utf8_lossy(&chunk).split("\n\n") {
            if let Some(d) = e.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(d).unwrap();
                if v["model"] == model
                    && v["status"].as_str().is_some_and(|s| s.starts_with("error"))
                {
                    return v;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_stream_the_client_leaves_is_still_counted() {
    let x = Setup::new().await;
    let a = Fake::new("a", &["m:1b"]);
    x.backend("a", "openai", &a).await;
    x.model("m:1b").await;
    a.set(Mode::Slow);
    let mut r = x.chat(user_says("m:1b", true)).await;
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    let left = std::time::Instant::now();
    drop(r);
    eventually(10, "the left stream counted", || async {
        let u = x.s.get("/admin/llm/usage?model=m:1b", &x.t).await.body;
        (u[0]["requests"] == 1).then_some(())
    })
    .await;
    // Counted when the client went away, not when the stream would have ended (~5 s).
    assert!(
        left.elapsed() < Duration::from_secs(3),
        "{:?}",
        left.elapsed()
    );
}
