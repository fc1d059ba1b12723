//! The conversation core behind AIWM conversations and messages, vareon
//! chat and arcana, contenox chats and neuronest agents, against a local
//! server speaking the OpenAI protocol: one conversation read through
//! every dialect, prompts built from the agent's instruction and the
//! user's memory and preferences, trimmed to the model's window, stored
//! before the answer, kept across restarts, crashes and passivation.

mod common;

use std::time::Duration;

use common::fake_llm::{Fake, Mode, serve};
use common::{TestServer, eventually, find_actor};
use serde_json::{Value, json};

struct Setup {
    s: TestServer,
    /// The organisation's admin (backends, models).
    admin: String,
    /// An operator of the same organisation, who chats.
    t: String,
    org: String,
    fake: Fake,
}

impl Setup {
    async fn new(tag: &str, adjust: impl FnOnce(&mut warden::config::ServerConfig)) -> Setup {
        let s = TestServer::start_with(|c| {
            c.llm_probe_interval = Duration::from_millis(200);
            c.enable_fault_injection = true;
            adjust(c);
        })
        .await;
        Setup::on(s, tag).await
    }

    async fn on(s: TestServer, tag: &str) -> Setup {
        let (admin, me) = s.user(&format!("{tag}admin"), &["admin"], None).await;
        let org = me["orgId"].as_str().unwrap().to_owned();
        let (t, _) = s
            .user(&format!("{tag}user"), &["operator"], Some(&org))
            .await;
        let fake = Fake::new(tag, &["phi3:3.8b", "tiny"]);
        let url = serve(fake.clone()).await;
        let b = s
            .post(
                "/backends",
                &admin,
                json!({"name": tag, "type": "ollama", "baseUrl": url}),
            )
            .await;
        assert_eq!(b.status, 201, "{}", b.body);
        let id = b.body["id"].as_str().unwrap().to_owned();
        let r = s
            .post(
                &format!("/backend-affinity/internal_chat_group/backends/{id}"),
                &admin,
                json!({}),
            )
            .await;
        assert!(r.status.is_success(), "{}", r.body);
        eventually(10, "the backend's first probe", || async {
            let b = s.get(&format!("/backends/{id}"), &admin).await.body;
            (b["healthy"] == true).then_some(())
        })
        .await;
        Setup {
            s,
            admin,
            t,
            org,
            fake,
        }
    }

    /// The messages of the last request the backend got.
    fn last_prompt(&self) -> Vec<Value> {
        let bodies = self.fake.bodies.lock().unwrap();
        bodies.last().expect("a request")["messages"]
            .as_array()
            .unwrap()
            .clone()
    }

    async fn vareon_chat(&self, conversation: Option<&str>, message: &str) -> common::Reply {
        let mut body = json!({"message": message});
        if let Some(c) = conversation {
            body["conversation_id"] = json!(c);
        }
        self.s.post("/api/chat", &self.t, body).await
    }
}

#[tokio::test]
async fn one_conversation_through_every_dialect() {
    let x = Setup::new("every", |_| {}).await;
    let s = &x.s;
    // An agent following an instruction, and the user's memory.
    let i = s
        .post(
            "/api/instructions",
            &x.t,
            json!({"name": "support", "systemPrompt": "You are the support desk.", "guidelines": ["Be brief"]}),
        )
        .await;
    assert_eq!(i.status, 201, "{}", i.body);
    let a = s
        .post(
            "/api/agents",
            &x.t,
            json!({"agentId": "helper", "name": "Helper", "instructionId": i.body["_id"], "capabilities": ["chat"]}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["totalTasks"], 0);
    let m = s
        .post(
            "/api/arcana/context-memory",
            &x.t,
            json!({"key": "city", "value": "Berlin"}),
        )
        .await;
    assert_eq!(m.status, 200, "{}", m.body);

    // Created through AIWM, with the agent by its key.
    let c = s
        .post(
            "/api/conversations",
            &x.t,
            json!({"conversationId": "conv-1", "title": "Printer", "agentId": "helper", "topic": "hardware"}),
        )
        .await;
    assert_eq!(c.status, 201, "{}", c.body);
    assert_eq!(c.body["agentId"], a.body["_id"]);
    assert_eq!(c.body["topic"], "hardware");
    assert_eq!(c.body["totalMessages"], 0);

    // Chat through vareon.
    let r = x.vareon_chat(Some("conv-1"), "My printer jams").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["response"], "hello from every");
    assert_eq!(r.body["conversation_id"], "conv-1");
    let prompt = x.last_prompt();
    assert_eq!(prompt[0]["role"], "system");
    let system = prompt[0]["content"].as_str().unwrap();
    assert!(system.contains("You are the support desk."), "{system}");
    assert!(system.contains("- Be brief"), "{system}");
    assert!(system.contains("- city: Berlin"), "{system}");
    assert_eq!(prompt.last().unwrap()["content"], "My printer jams");
    // Preferences' defaults go with it.
    let body = x.fake.bodies.lock().unwrap().last().unwrap().clone();
    assert_eq!(body["temperature"], 0.7);
    assert_eq!(body["model"], "phi3:3.8b");

    // A second turn through contenox carries the first.
    let r = s
        .post("/chats/conv-1/chat", &x.t, json!({"message": "Still jams"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["response"], "hello from every");
    let prompt = x.last_prompt();
    let texts: Vec<&str> = prompt
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(
        &texts[1..],
        ["My printer jams", "hello from every", "Still jams"]
    );

    // Read back through every dialect.
    let h = s.get("/api/chat/history/conv-1", &x.t).await;
    assert_eq!(h.status, 200);
    let senders: Vec<&str> = h
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sender"].as_str().unwrap())
        .collect();
    assert_eq!(senders, ["user", "llm", "user", "llm"]);
    assert_eq!(h.body[0]["message_content"], "My printer jams");
    let h = s.get("/chats/conv-1", &x.t).await;
    assert_eq!(h.body.as_array().unwrap().len(), 4);
    assert_eq!(h.body[3]["isLatest"], true);
    assert_eq!(h.body[2]["isUser"], true);
    let list = s.get("/chats", &x.t).await;
    assert_eq!(list.body[0]["id"], "conv-1");
    assert_eq!(list.body[0]["lastMessage"]["role"], "assistant");
    let list = s.get("/api/chat/conversations", &x.t).await;
    assert_eq!(list.body[0]["title"], "Printer");
    let ms = s
        .get("/api/messages?filter[conversationId]=conv-1", &x.t)
        .await;
    assert_eq!(ms.body["pagination"]["total"], 4);
    let answer = &ms.body["data"][1];
    assert_eq!(answer["role"], "assistant");
    assert_eq!(answer["usage"]["totalTokens"], 8);
    assert!(answer["latency"].is_u64() && answer["responseTime"].is_u64());
    assert_eq!(answer["agentId"], a.body["_id"]);
    let c = s.get("/api/conversations/conv-1", &x.t).await;
    assert_eq!(c.body["totalMessages"], 4);
    assert_eq!(c.body["totalTokens"], 16);

    // The agent's counters moved; populate puts the instruction in.
    let a = s.get("/api/agents/helper?populate=instruction", &x.t).await;
    assert_eq!(a.body["totalTasks"], 2);
    assert_eq!(a.body["completedTasks"], 2);
    assert!(a.body["lastTask"].is_string());
    assert_eq!(a.body["instructionId"]["name"], "support");

    // The arcana status counts what happened.
    let st = s.get("/api/arcana/status", &x.t).await;
    assert_eq!(st.body["status"], "online");
    assert_eq!(st.body["activeChats"], 1);
    assert_eq!(st.body["messagesProcessed"], 4);
    assert!(st.body["avgResponseTime"].as_str().unwrap().ends_with('s'));

    // A contenox instruction is a system message the next prompt carries.
    let r = s
        .post(
            "/chats/conv-1/instruction",
            &x.t,
            json!({"instruction": "Answer in German."}),
        )
        .await;
    assert_eq!((r.status.as_u16(), &r.body), (200, &json!({})));
    x.vareon_chat(Some("conv-1"), "Danke").await;
    let system = x.last_prompt()[0]["content"].as_str().unwrap().to_owned();
    assert!(system.contains("Answer in German."), "{system}");
}

#[tokio::test]
async fn vareon_chat_creates_renames_clears_and_deletes() {
    let x = Setup::new("vchat", |_| {}).await;
    let s = &x.s;
    let r = x.vareon_chat(None, "What is a GPU?\nPlease explain").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.body["conversation_id"].as_str().unwrap().to_owned();
    assert!(r.body["message_id"].is_string());
    let list = s.get("/api/chat/conversations", &x.t).await;
    assert_eq!(list.body[0]["title"], "What is a GPU?");
    // The AIWM view of the vareon-made conversation.
    let c = s.get(&format!("/api/conversations/{id}"), &x.t).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.body["totalMessages"], 2);

    let r = s
        .put(
            &format!("/api/chat/conversations/{id}"),
            &x.t,
            json!({"title": "GPUs"}),
        )
        .await;
    assert_eq!(r.body["title"], "GPUs");
    let r = s
        .post("/api/chat/conversations", &x.t, json!({"title": "second"}))
        .await;
    assert_eq!(r.status, 200);
    let second = r.body["id"].as_str().unwrap().to_owned();

    let r = s
        .post(
            &format!("/api/chat/clear?conversation_id={id}"),
            &x.t,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        s.get(&format!("/api/chat/history/{id}"), &x.t).await.body,
        json!([])
    );
    // Cleared history is not in the next prompt.
    x.vareon_chat(Some(&id), "again").await;
    assert_eq!(x.last_prompt().len(), 1);

    let r = s
        .delete(&format!("/api/chat/conversations/{second}"), &x.t)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.get(&format!("/api/chat/history/{second}"), &x.t)
            .await
            .status,
        404
    );
    assert_eq!(
        s.get(&format!("/api/conversations/{second}"), &x.t)
            .await
            .status,
        404
    );
    let r = s.post("/api/chat/clear", &x.t, json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.get(&format!("/api/chat/history/{id}"), &x.t).await.body,
        json!([])
    );

    let r = s.post("/api/arcana/start-chat", &x.t, json!({})).await;
    assert_eq!(r.body["message"], "Arcana Chat started successfully!");
    let started = r.body["conversation_id"].as_str().unwrap();
    assert_eq!(
        s.get(&format!("/api/chat/history/{started}"), &x.t)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn memory_and_preferences_belong_to_their_user() {
    let x = Setup::new("mem", |_| {}).await;
    let s = &x.s;
    let (other, _) = s.user("memother", &["operator"], None).await;
    let r = s
        .post(
            "/api/arcana/context-memory",
            &x.t,
            json!({"key": "tone", "value": {"formal": true}}),
        )
        .await;
    assert_eq!(r.body["value"], "{\"formal\":true}");
    let first_id = r.body["id"].clone();
    let r = s
        .post(
            "/api/arcana/context-memory",
            &x.t,
            json!({"key": "tone", "value": "casual"}),
        )
        .await;
    assert_eq!(
        (r.body["id"].clone(), r.body["value"].clone()),
        (first_id, json!("casual"))
    );
    assert_eq!(
        s.get("/api/arcana/context-memory", &x.t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.get("/api/arcana/context-memory/tone", &x.t).await.body["value"],
        "casual"
    );
    assert_eq!(
        s.get("/api/arcana/context-memory/tone", &other)
            .await
            .status,
        404
    );
    assert_eq!(
        s.get("/api/arcana/context-memory", &other).await.body,
        json!([])
    );
    assert_eq!(
        s.delete("/api/arcana/context-memory/tone", &other)
            .await
            .status,
        404
    );
    let bad = s
        .post("/api/arcana/context-memory", &x.t, json!({"key": ""}))
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(
        s.delete("/api/arcana/context-memory/tone", &x.t)
            .await
            .status,
        200
    );
    assert_eq!(
        s.get("/api/arcana/context-memory/tone", &x.t).await.status,
        404
    );

    // Preferences: defaults on first read, checked, a model by its id.
    let p = s.get("/api/arcana/llm/preferences", &x.t).await;
    assert_eq!(
        (p.body["temperature"].clone(), p.body["top_p"].clone()),
        (json!(0.7), json!(1.0))
    );
    assert_eq!(p.body["default_model"], Value::Null);
    let bad = s
        .put(
            "/api/arcana/llm/preferences",
            &x.t,
            json!({"temperature": 5}),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    let bad = s
        .put(
            "/api/arcana/llm/preferences",
            &x.t,
            json!({"default_model_id": "nope"}),
        )
        .await;
    assert_eq!(bad.status, 404, "{}", bad.body);
    let model = s
        .post(
            "/models",
            &x.admin,
            json!({"model": "tiny", "canChat": true}),
        )
        .await;
    assert_eq!(model.status, 201, "{}", model.body);
    let tiny_id = model.body["id"].as_str().unwrap().to_owned();
    let p = s
        .put(
            "/api/arcana/llm/preferences",
            &x.t,
            json!({"default_model_id": tiny_id, "temperature": 0.2, "top_p": 0.9}),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.body["default_model"]["model_name"], "tiny");
    x.vareon_chat(None, "hi").await;
    let body = x.fake.bodies.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            body["model"].clone(),
            body["temperature"].clone(),
            body["top_p"].clone()
        ),
        (json!("tiny"), json!(0.2), json!(0.9))
    );
    // The other user's turn uses their own defaults.
    let (t2, _) = s.user("memmate", &["operator"], Some(&x.org)).await;
    s.post("/api/chat", &t2, json!({"message": "hi"})).await;
    let body = x.fake.bodies.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        (body["model"].clone(), body["temperature"].clone()),
        (json!("phi3:3.8b"), json!(0.7))
    );
}

#[tokio::test]
async fn tenants_never_see_each_others_conversations() {
    let x = Setup::new("ten", |_| {}).await;
    let s = &x.s;
    let (stranger, _) = s.user("tenstranger", &["operator"], None).await;
    let (mate, _) = s.user("tenmate", &["operator"], Some(&x.org)).await;
    let r = x.vareon_chat(None, "secret plans").await;
    let id = r.body["conversation_id"].as_str().unwrap().to_owned();
    let aiwm_id = s.get(&format!("/api/conversations/{id}"), &x.t).await.body["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for t in [&stranger, &mate] {
        assert_eq!(
            s.get(&format!("/api/chat/history/{id}"), t).await.status,
            404
        );
        assert_eq!(s.get(&format!("/chats/{id}"), t).await.status, 404);
        let r = s
            .post(
                "/api/chat",
                t,
                json!({"message": "x", "conversation_id": id}),
            )
            .await;
        assert_eq!(r.status, 404);
        assert_eq!(s.get("/api/chat/conversations", t).await.body, json!([]));
    }
    // AIWM is the organisation's view: the mate sees it, the stranger not.
    assert_eq!(
        s.get(&format!("/api/conversations/{aiwm_id}"), &mate)
            .await
            .status,
        200
    );
    assert_eq!(
        s.get(&format!("/api/conversations/{aiwm_id}"), &stranger)
            .await
            .status,
        404
    );
    let ms = s
        .get(
            &format!("/api/messages?filter[conversationId]={aiwm_id}"),
            &stranger,
        )
        .await;
    assert_eq!(ms.body["pagination"]["total"], 0);
    let all = s.get("/api/messages", &stranger).await;
    assert_eq!(all.body["pagination"]["total"], 0);
    let r = s
        .post(
            "/api/messages",
            &stranger,
            json!({"conversationId": aiwm_id, "role": "user", "content": "hi"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn bad_input_is_refused_and_a_failing_backend_leaves_no_message() {
    let x = Setup::new("bad", |_| {}).await;
    let s = &x.s;
    let r = x.vareon_chat(None, "first").await;
    let id = r.body["conversation_id"].as_str().unwrap().to_owned();
    let asked = x.fake.chats.load(std::sync::atomic::Ordering::SeqCst);

    // Empty and huge messages: refused before any backend sees them.
    assert_eq!(x.vareon_chat(Some(&id), "").await.status, 422);
    assert_eq!(x.vareon_chat(Some(&id), "   ").await.status, 422);
    let huge = "x".repeat(100_001);
    let r = x.vareon_chat(Some(&id), &huge).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = s
        .post(&format!("/chats/{id}/chat"), &x.t, json!({"message": ""}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["param"], "message");
    assert_eq!(
        x.fake.chats.load(std::sync::atomic::Ordering::SeqCst),
        asked
    );

    // Unknown agent, model, conversation; invalid roles.
    let r = s
        .post("/api/conversations", &x.t, json!({"agentId": "ghost"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = s
        .post(
            "/chats",
            &x.t,
            json!({"model": "no-such-model", "subject": "x"}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let c = s
        .post(
            "/api/conversations",
            &x.t,
            json!({"modelId": "no-such-model"}),
        )
        .await;
    let cid = c.body["conversationId"].as_str().unwrap().to_owned();
    let r = x.vareon_chat(Some(&cid), "hi").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(x.vareon_chat(Some("nope"), "hi").await.status, 404);
    let aiwm = s.get(&format!("/api/conversations/{id}"), &x.t).await.body;
    let r = s
        .post(
            "/api/messages",
            &x.t,
            json!({"conversationId": aiwm["_id"], "role": "wizard", "content": "hi"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("role must be one of")
    );
    let r = s
        .post(
            "/api/messages",
            &x.t,
            json!({"conversationId": aiwm["_id"], "role": "user"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);

    // A backend that fails: a clear 503, and nothing half-written.
    x.fake.set(Mode::Fail);
    let r = x.vareon_chat(Some(&id), "are you there?").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body["detail"].as_str().unwrap().contains("failed"),
        "{}",
        r.body
    );
    let r = s
        .post(
            &format!("/chats/{id}/chat"),
            &x.t,
            json!({"message": "hello?"}),
        )
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body["error"]["type"], "api_error");
    x.fake.set(Mode::Garbage);
    assert_eq!(x.vareon_chat(Some(&id), "and now?").await.status, 503);
    let h = s.get(&format!("/api/chat/history/{id}"), &x.t).await;
    assert_eq!(h.body.as_array().unwrap().len(), 2, "{}", h.body);
    let c = s.get(&format!("/api/conversations/{id}"), &x.t).await;
    assert_eq!(c.body["totalMessages"], 2);
    x.fake.set(Mode::Ok);
    assert_eq!(x.vareon_chat(Some(&id), "back?").await.status, 200);
}

#[tokio::test]
async fn aiwm_messages_are_stored_as_given_and_soft_deleted() {
    let x = Setup::new("crud", |_| {}).await;
    let s = &x.s;
    let c = s
        .post(
            "/api/conversations",
            &x.t,
            json!({"title": "log", "conversationType": "task"}),
        )
        .await;
    let cid = c.body["_id"].as_str().unwrap().to_owned();
    let m = s
        .post(
            "/api/messages",
            &x.t,
            json!({"conversationId": cid, "role": "assistant", "content": "calling a tool",
                   "toolCalls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                   "usage": {"promptTokens": 3, "completionTokens": 4}, "latency": 12}),
        )
        .await;
    assert_eq!(m.status, 201, "{}", m.body);
    assert_eq!(m.body["toolCalls"][0]["function"]["name"], "f");
    assert_eq!(m.body["usage"]["totalTokens"], 7);
    let mid = m.body["_id"].as_str().unwrap().to_owned();
    let r = s
        .put(
            &format!("/api/messages/{mid}"),
            &x.t,
            json!({"content": "edited"}),
        )
        .await;
    assert_eq!(r.body["content"], "edited");
    assert_eq!(
        s.get(&format!("/api/conversations/{cid}"), &x.t).await.body["totalTokens"],
        7
    );
    let r = s
        .put(
            &format!("/api/conversations/{cid}"),
            &x.t,
            json!({"status": "completed"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed");
    let r = s
        .put(
            &format!("/api/conversations/{cid}"),
            &x.t,
            json!({"status": "asleep"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = s.delete(&format!("/api/messages/{mid}"), &x.t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["deletedAt"].is_string());
    assert_eq!(
        s.get(&format!("/api/messages/{mid}"), &x.t).await.status,
        404
    );
    assert_eq!(
        s.get(&format!("/api/conversations/{cid}"), &x.t).await.body["totalMessages"],
        0
    );
    let r = s.delete(&format!("/api/conversations/{cid}"), &x.t).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.get(&format!("/api/conversations/{cid}"), &x.t)
            .await
            .status,
        404
    );
    let (viewer, _) = s.user("crudviewer", &["viewer"], Some(&x.org)).await;
    let r = s
        .post("/api/conversations", &viewer, json!({"title": "no"}))
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn the_context_window_is_respected() {
    let x = Setup::new("win", |_| {}).await;
    let s = &x.s;
    // A 200-token window: 50 kept for the answer.
    let r = s
        .post(
            "/models",
            &x.admin,
            json!({"model": "tiny", "canChat": true, "contextLength": 200}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let c = s
        .post("/chats", &x.t, json!({"model": "tiny", "subject": "w"}))
        .await;
    assert_eq!(c.status, 201, "{}", c.body);
    let id = c.body["id"].as_str().unwrap().to_owned();
    // Each 200-character message is about 54 tokens.
    let text = "y".repeat(200);
    for _ in 0..4 {
        let r = s
            .post(&format!("/chats/{id}/chat"), &x.t, json!({"message": text}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let prompt = x.last_prompt();
    let tokens: usize = prompt
        .iter()
        .map(|m| m["content"].as_str().unwrap().len().div_ceil(4) + 4)
        .sum();
    assert!(tokens <= 150, "{tokens} tokens sent to a 200-token window");
    assert!(
        prompt.len() < 8,
        "the history was trimmed: {}",
        prompt.len()
    );
    assert_eq!(prompt.last().unwrap()["content"], text);
    // A message larger than the window is refused, not sent.
    let r = s
        .post(
            &format!("/chats/{id}/chat"),
            &x.t,
            json!({"message": "z".repeat(2000)}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context window")
    );
}

#[tokio::test]
async fn history_survives_a_restart_a_crash_and_passivation() {
    let x = Setup::new("dur", |c| c.conversation_idle = Duration::from_millis(300)).await;
    let r = x.vareon_chat(None, "remember me").await;
    let id = r.body["conversation_id"].as_str().unwrap().to_owned();
    let aiwm =
        x.s.get(&format!("/api/conversations/{id}"), &x.t)
            .await
            .body;
    let actor = format!("conversation:{}", aiwm["_id"].as_str().unwrap());

    // Idle: the actor passivates; the next turn brings it back with its history.
    eventually(10, "the conversation's actor to passivate", || async {
        let tree = x.s.get("/admin/actors", &x.s.admin_token).await.body;
        find_actor(&tree, &actor).is_none().then_some(())
    })
    .await;
    x.vareon_chat(Some(&id), "second").await;
    let texts: Vec<String> = x
        .last_prompt()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["remember me", "hello from dur", "second"]);

    // Crashed through the admin route: restarted, history intact.
    x.vareon_chat(Some(&id), "third").await;
    let r =
        x.s.post(
            &format!("/admin/actors/{actor}/crash"),
            &x.s.admin_token,
            json!({}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    eventually(10, "the conversation's actor to restart", || async {
        let tree = x.s.get("/admin/actors", &x.s.admin_token).await.body;
        find_actor(&tree, &actor)
            .filter(|a| a["restartCount"].as_u64() >= Some(1))
            .map(|_| ())
    })
    .await;
    x.vareon_chat(Some(&id), "fourth").await;
    assert_eq!(x.last_prompt().len(), 7);

    // A server restart keeps everything that was answered.
    let Setup { s, t, fake, .. } = x;
    let s = s.restart(|_| {}).await;
    let h = s.get(&format!("/api/chat/history/{id}"), &t).await;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.body.as_array().unwrap().len(), 8);
    drop(fake);
}

#[tokio::test]
async fn neuronest_agents_are_the_aiwm_agents() {
    let x = Setup::new("nn", |_| {}).await;
    let s = &x.s;
    let r = s
        .post(
            "/models",
            &x.admin,
            json!({"model": "tiny", "canChat": true}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = s
        .post(
            "/api/orchestration/agents",
            &x.t,
            json!({"name": "Poetry Agent", "description": "poems", "capabilities": ["poetry"],
                   "configuration": {"model": "tiny", "temperature": 0.3, "max_tokens": 100}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["configuration"]["model"], "tiny");
    let a = s.get(&format!("/api/agents/{id}"), &x.t).await;
    assert_eq!(a.body["name"], "Poetry Agent");
    assert_eq!(a.body["configuration"]["temperature"], 0.3);
    // A conversation with this agent asks its model with its settings.
    let c = s
        .post(
            "/api/conversations",
            &x.t,
            json!({"conversationId": "poem", "agentId": id}),
        )
        .await;
    assert_eq!(c.status, 201, "{}", c.body);
    let r = x.vareon_chat(Some("poem"), "a haiku please").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = x.fake.bodies.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            body["model"].clone(),
            body["temperature"].clone(),
            body["max_tokens"].clone()
        ),
        (json!("tiny"), json!(0.3), json!(100))
    );

    let r = s
        .put(
            &format!("/api/orchestration/agents/{id}"),
            &x.t,
            json!({"name": "Advanced"}),
        )
        .await;
    assert_eq!(r.body["name"], "Advanced");
    assert_eq!(r.body["capabilities"], json!(["poetry"]));
    let list = s.get("/api/orchestration/agents", &x.t).await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    let bad = s
        .post(
            "/api/orchestration/agents",
            &x.t,
            json!({"description": "x"}),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    let (stranger, _) = s.user("nnstranger", &["operator"], None).await;
    assert_eq!(
        s.get(&format!("/api/orchestration/agents/{id}"), &stranger)
            .await
            .status,
        404
    );
    let r = s
        .delete(&format!("/api/orchestration/agents/{id}"), &x.t)
        .await;
    assert_eq!(r.body["message"], "Agent deleted successfully");
    assert_eq!(s.get(&format!("/api/agents/{id}"), &x.t).await.status, 404);
}

/// A local server speaking the Telegram Bot API as a long-polling bot
/// sees it: `getUpdates` waits (up to its `timeout`) for updates after
/// `offset`; `sendMessage` records what the bot said. One bot token is
/// known; any other is refused as Telegram does.
mod telegram_api {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::extract::{Path, State};
    use axum::response::{IntoResponse, Response};
    use serde_json::{Value, json};

    pub const TOKEN: &str = "123456:test-secret-token";

    #[derive(Clone, Default)]
    pub struct Bot {
        pub updates: Arc<Mutex<Vec<Value>>>,
        pub sent: Arc<Mutex<Vec<(i64, String)>>>,
        pub polls: Arc<Mutex<Vec<i64>>>,
        next_id: Arc<Mutex<i64>>,
    }

    impl Bot {
        pub fn say(&self, chat: i64, user: &str, text: &str) {
            let mut id = self.next_id.lock().unwrap();
            *id += 1;
            self.updates
                .lock()
                .unwrap()
                .push(json!({"update_id": 1000 + *id, "message": {
                "message_id": *id, "date": 1_700_000_000, "text": text,
                "chat": {"id": chat, "type": "private"},
                "from": {"id": chat, "is_bot": false, "first_name": user, "username": user}}}));
        }
    }

    async fn method(
        State(bot): State<Bot>,
        Path((token, method)): Path<(String, String)>,
        axum::Json(body): axum::Json<Value>,
    ) -> Response {
        if token != format!("bot{TOKEN}") {
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                axum::Json(json!({"ok": false, "error_code": 401, "description": "Unauthorized"})),
            )
                .into_response();
        }
        match method.as_str() {
            "getUpdates" => {
                let offset = body["offset"].as_i64().unwrap_or(0);
                bot.polls.lock().unwrap().push(offset);
                let wait = body["timeout"].as_u64().unwrap_or(0);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
                loop {
                    let ready: Vec<Value> = bot
                        .updates
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|u| u["update_id"].as_i64().unwrap() >= offset)
                        .cloned()
                        .collect();
                    if !ready.is_empty() || tokio::time::Instant::now() >= deadline {
                        return axum::Json(json!({"ok": true, "result": ready})).into_response();
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            "sendMessage" => {
                let chat = body["chat_id"].as_i64().unwrap();
                let text = body["text"].as_str().unwrap().to_owned();
                bot.sent.lock().unwrap().push((chat, text.clone()));
                axum::Json(json!({"ok": true, "result": {"message_id": 1, "chat": {"id": chat}, "text": text}}))
                    .into_response()
            }
            _ => (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(json!({"ok": false, "description": "Not Found: method not found"})),
            )
                .into_response(),
        }
    }

    pub async fn serve(bot: Bot) -> String {
        let app = axum::Router::new()
            .route("/{token}/{method}", axum::routing::post(method))
            .with_state(bot);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }
}

#[tokio::test]
async fn telegram_frontends_answer_their_chats_through_conversations() {
    let bot = telegram_api::Bot::default();
    let api = telegram_api::serve(bot.clone()).await;
    let api_for_config = api.clone();
    let x = Setup::new("tg", move |c| c.telegram_api = api_for_config).await;
    let s = &x.s;
    let sent = |n: usize| {
        let bot = bot.clone();
        async move {
            eventually(10, "the bot's answers", || async {
                let sent = bot.sent.lock().unwrap().clone();
                (sent.len() >= n).then_some(sent)
            })
            .await
        }
    };

    // Bad input: no token, a malformed token, an unknown status.
    let r = s
        .post("/telegram-frontends", &x.t, json!({"description": "x"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = s
        .post("/telegram-frontends", &x.t, json!({"botToken": "nope"}))
        .await;
    assert_eq!(r.status, 400);
    let r = s
        .post(
            "/telegram-frontends",
            &x.t,
            json!({"botToken": telegram_api::TOKEN, "status": "x"}),
        )
        .await;
    assert_eq!(r.status, 400);

    let r = s
        .post(
            "/telegram-frontends",
            &x.t,
            json!({"botToken": telegram_api::TOKEN, "syncInterval": 1, "description": "support bot"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        !r.body.to_string().contains("test-secret-token"),
        "{}",
        r.body
    );
    let id = r.body["id"].as_str().unwrap().to_owned();

    bot.say(42, "ada", "hello bot");
    let answers = sent(1).await;
    assert_eq!(answers[0], (42, "hello from tg".to_owned()));
    bot.say(42, "ada", "and again");
    bot.say(7, "bob", "hi from bob");
    let answers = sent(3).await;
    assert!(answers.contains(&(7, "hello from tg".to_owned())));
    // Each Telegram chat is a conversation, with its history.
    let key = format!("telegram-{id}-42");
    let c = s.get(&format!("/api/conversations/{key}"), &x.t).await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.body["totalMessages"], 4);
    assert_eq!(c.body["title"], "Telegram: @ada");
    let h = s.get(&format!("/api/chat/history/{key}"), &x.t).await;
    assert_eq!(h.body[2]["message_content"], "and again");
    // The offset confirms what was answered.
    let f = eventually(10, "the offset stored", || async {
        let f = s.get(&format!("/telegram-frontends/{id}"), &x.t).await.body;
        (f["lastOffset"] == 1004).then_some(f)
    })
    .await;
    assert!(f["lastHeartbeat"].is_string());
    assert_eq!(f["lastError"], "");
    assert!(!f.to_string().contains("test-secret-token"));
    let list = s.get("/telegram-frontends", &x.t).await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    let mine = s
        .get(
            &format!(
                "/telegram-frontends/users/{}",
                f["userId"].as_str().unwrap()
            ),
            &x.t,
        )
        .await;
    assert_eq!(mine.body.as_array().map(Vec::len), Some(1), "{}", mine.body);
    let (stranger, _) = s.user("tgstranger", &["operator"], None).await;
    assert_eq!(
        s.get(&format!("/telegram-frontends/{id}"), &stranger)
            .await
            .status,
        404
    );
    assert_eq!(
        s.get("/telegram-frontends", &stranger).await.body,
        json!([])
    );

    // After a restart the bot resumes after the stored offset: nothing
    // answered twice.
    let Setup { s, t, fake, .. } = x;
    let polls_before = bot.polls.lock().unwrap().len();
    let api_again = api.clone();
    let s = s
        .restart(move |c| {
            c.telegram_api = api_again;
            c.llm_probe_interval = Duration::from_millis(200);
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the backend's first probe
    bot.say(42, "ada", "after the restart");
    let answers = sent(4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bot.sent.lock().unwrap().len(), 4, "{answers:?}");
    let resumed = bot.polls.lock().unwrap()[polls_before..].to_vec();
    assert!(resumed.iter().all(|o| *o >= 1004), "{resumed:?}");

    // A token Telegram refuses: the error is shown, the token is not.
    let r = s
        .put(
            &format!("/telegram-frontends/{id}"),
            &t,
            json!({"botToken": "999:wrong-secret-1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let f = eventually(10, "the refusal recorded", || async {
        let f = s.get(&format!("/telegram-frontends/{id}"), &t).await.body;
        f["lastError"]
            .as_str()
            .filter(|e| e.contains("Unauthorized"))
            .map(|_| f.clone())
    })
    .await;
    assert!(!f.to_string().contains("wrong-secret"), "{f}");

    // Inactive: the bot stops asking; deleted: gone.
    let r = s
        .put(
            &format!("/telegram-frontends/{id}"),
            &t,
            json!({"status": "inactive", "botToken": telegram_api::TOKEN}),
        )
        .await;
    assert_eq!(r.body["status"], "inactive");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let polls = bot.polls.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(bot.polls.lock().unwrap().len(), polls);
    assert_eq!(
        s.delete(&format!("/telegram-frontends/{id}"), &t)
            .await
            .status,
        200
    );
    assert_eq!(
        s.get(&format!("/telegram-frontends/{id}"), &t).await.status,
        404
    );
    drop(fake);
}

#[tokio::test]
async fn forge_agent_chats_over_the_same_conversations_and_is_rate_limited() {
    let x = Setup::new("forge", |c| c.rate_limits.agent_per_minute = Some(5)).await;
    let s = &x.s;
    let r = s
        .post(
            "/api/v1/agent/chat",
            &x.t,
            json!({"message": "Which model suits my AHU data?"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["response"], "hello from forge");
    assert_eq!(r.body["training_plan"], Value::Null);
    let id = r.body["conversation_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("conv_"), "{id}");
    let r = s
        .post(
            "/api/v1/agent/chat",
            &x.t,
            json!({"message": "and why?", "conversation_id": id}),
        )
        .await;
    assert_eq!(r.body["conversation_id"], id.as_str());
    assert_eq!(x.last_prompt().len(), 3);
    let h = s.get("/api/v1/agent/history", &x.t).await;
    assert_eq!(h.status, 200, "{}", h.body);
    let roles: Vec<&str> = h
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "agent", "user", "agent"]);
    assert_eq!(h.body[0]["content"], "Which model suits my AHU data?");
    assert_eq!(h.body[0]["conversation_id"], id.as_str());
    // The same conversation through vareon and AIWM.
    let key = id.strip_prefix("conv_").unwrap();
    assert_eq!(
        s.get(&format!("/api/chat/history/{key}"), &x.t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        s.get(&format!("/api/conversations/{key}"), &x.t).await.body["conversationType"],
        "analysis"
    );
    // Bad input in forge's error shape; an unknown conversation is a 404.
    let r = s
        .post("/api/v1/agent/chat", &x.t, json!({"message": ""}))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["code"].as_str()),
        (400, Some("VALIDATION_ERROR"))
    );
    let r = s
        .post(
            "/api/v1/agent/chat",
            &x.t,
            json!({"message": "x", "conversation_id": "conv_nope"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    // Five agent requests a minute: the sixth is refused.
    let r = s.get("/api/v1/agent/history", &x.t).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["code"], "RATE_LIMITED");
}
