//! Vareon's cognisys over the core LLM gateway: providers are the
//! backends contenox shows, models the core registry's, and a user's
//! routing rules choose the model of that user's chat requests.

mod common;

use std::time::Duration;

use common::fake_llm::{Fake, serve};
use common::{TestServer, eventually};
use serde_json::{Value, json};

async fn server() -> TestServer {
    TestServer::start_with(|c| c.llm_probe_interval = Duration::from_millis(200)).await
}

fn assert_detail(r: &common::Reply, status: u16) {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    assert!(
        r.body["detail"].is_string() || r.body["detail"].is_array(),
        "{}",
        r.body
    );
}

async fn chat(
    s: &TestServer,
    t: &str,
    model: &str,
    text: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = s
        .http
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(t)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

#[tokio::test]
async fn providers_are_backends_and_test_their_connection() {
    let s = server().await;
    let (t, me) = s.user("cogadmin", &["admin"], None).await;
    let org = me["orgId"].as_str().unwrap().to_owned();
    let url = serve(Fake::new("p", &["general:7b"])).await;
    let key = "sk-vareon-provider-key-42";
    let r = s
        .post(
            "/api/cognisys/providers/",
            &t,
            json!({"name": "local", "base_url": url, "api_key": key}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (r.body["base_url"].as_str(), r.body["type"].as_str()),
        (Some(url.as_str()), Some("openai"))
    );
    assert!(!r.body.to_string().contains(key));
    // The same record through contenox.
    let b = s.get(&format!("/backends/{id}"), &t).await;
    assert_eq!(
        (b.status.as_u16(), b.body["name"].as_str()),
        (200, Some("local"))
    );

    let r = s
        .post(
            &format!("/api/cognisys/providers/{id}/test-connection"),
            &t,
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "success", "{}", r.body);
    assert_eq!(r.body["models"], json!(["general:7b"]));
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let r = s
        .put(
            &format!("/api/cognisys/providers/{id}"),
            &t,
            json!({"base_url": dead}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s
        .post(
            &format!("/api/cognisys/providers/{id}/test-connection"),
            &t,
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "failure", "{}", r.body);
    assert!(!r.body.to_string().contains(key));

    let list = s.get("/api/cognisys/providers/?skip=0&limit=10", &t).await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    assert_eq!(
        s.get("/api/cognisys/providers?skip=1", &t).await.body,
        json!([])
    );
    assert_detail(&s.get("/api/cognisys/providers?limit=x", &t).await, 422);
    assert_detail(
        &s.post("/api/cognisys/providers/", &t, json!({"name": "no-url"}))
            .await,
        422,
    );
    assert_detail(
        &s.post(
            "/api/cognisys/providers/",
            &t,
            json!({"name": "bad", "base_url": "ftp://x"}),
        )
        .await,
        422,
    );
    let (member, _) = s.user("cogmember", &["operator"], Some(&org)).await;
    assert_eq!(
        s.get(&format!("/api/cognisys/providers/{id}"), &member)
            .await
            .status,
        200
    );
    assert_detail(
        &s.post(
            "/api/cognisys/providers/",
            &member,
            json!({"name": "m", "base_url": url}),
        )
        .await,
        403,
    );
    let (stranger, _) = s.user("cogstranger", &["admin"], None).await;
    assert_detail(
        &s.get(&format!("/api/cognisys/providers/{id}"), &stranger)
            .await,
        404,
    );

    let r = s.delete(&format!("/api/cognisys/providers/{id}"), &t).await;
    assert_eq!(r.status, 204);
    assert_detail(
        &s.get(&format!("/api/cognisys/providers/{id}"), &t).await,
        404,
    );
    assert_eq!(s.get(&format!("/backends/{id}"), &t).await.status, 404);
}

#[tokio::test]
async fn models_route_to_their_provider_and_rules_choose_the_model() {
    let s = server().await;
    let (t, me) = s.user("ruler", &["admin"], None).await;
    let org = me["orgId"].as_str().unwrap().to_owned();
    let general = Fake::new("general", &["general:7b"]);
    let coder = Fake::new("coder", &["coder:7b"]);
    let mut providers = Vec::new();
    for (name, fake) in [("general", &general), ("coder", &coder)] {
        let url = serve(fake.clone()).await;
        let r = s
            .post(
                "/api/cognisys/providers/",
                &t,
                json!({"name": name, "base_url": url}),
            )
            .await;
        providers.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let mut models = Vec::new();
    for (name, provider) in [("general:7b", &providers[0]), ("coder:7b", &providers[1])] {
        let r = s
            .post("/api/cognisys/models/", &t, json!({"provider_id": provider, "model_name": name, "max_tokens": 4096, "cost_per_token": 0.000002}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["provider"]["id"], provider.as_str());
        assert_eq!(r.body["cost_per_token"], 0.000002);
        models.push(r.body["id"].as_str().unwrap().to_owned());
    }
    assert_detail(
        &s.post(
            "/api/cognisys/models/",
            &t,
            json!({"provider_id": providers[0], "model_name": "x", "cost_per_token": -1}),
        )
        .await,
        422,
    );
    assert_detail(
        &s.post(
            "/api/cognisys/models/",
            &t,
            json!({"provider_id": "none", "model_name": "y"}),
        )
        .await,
        404,
    );
    assert_detail(
        &s.post(
            "/api/cognisys/models/",
            &t,
            json!({"provider_id": providers[0], "model_name": "general:7b"}),
        )
        .await,
        409,
    );
    let r = s
        .get(&format!("/api/cognisys/models/{}", models[0]), &t)
        .await;
    assert_eq!(
        (r.body["model_name"].as_str(), r.body["max_tokens"].as_u64()),
        (Some("general:7b"), Some(4096))
    );
    let list = s.get("/api/cognisys/models/?limit=100", &t).await.body;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model_name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"general:7b") && names.contains(&"coder:7b"),
        "{names:?}"
    );
    assert_eq!(
        s.get("/api/cognisys/models?skip=0&limit=1", &t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The same model through contenox, by name.
    let c = s.get("/models", &t).await.body;
    assert!(
        c.as_array().unwrap().iter().any(|m| m["id"] == "coder:7b"),
        "{c}"
    );

    // A model with its provider is served without any group.
    eventually(10, "both providers probed", || async {
        let st = s.get("/state", &t).await.body;
        (st.as_array()?
            .iter()
            .filter(|b| b["healthy"] == true)
            .count()
            == 2)
            .then_some(())
    })
    .await;
    let (status, v, _) = chat(&s, &t, "general:7b", "hello").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "hello from general");

    // Rules: the first that holds, by priority, picks the model.
    let r = s
        .post("/api/cognisys/routing-rules", &t, json!({"name": "code to coder", "condition": "text contains \"code\"", "target_model": "coder:7b", "priority": 10}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let rule = r.body["id"].as_str().unwrap().to_owned();
    assert!(r.body["owner_id"].is_string());
    s.post("/api/cognisys/routing-rules", &t, json!({"name": "catch-all", "condition": "length > 100000", "target_model": "general:7b", "priority": 1})).await;
    let (status, v, headers) = chat(&s, &t, "general:7b", "please write CODE for me").await;
    assert_eq!(status, 200);
    assert_eq!(v["choices"][0]["message"]["content"], "hello from coder");
    assert_eq!(headers["x-warden-model"], "coder:7b");
    assert_eq!(headers["x-warden-routing-rule"], rule.as_str());
    let (_, v, headers) = chat(&s, &t, "general:7b", "just talk").await;
    assert_eq!(v["choices"][0]["message"]["content"], "hello from general");
    assert!(headers.get("x-warden-routing-rule").is_none());
    let got = s
        .get(&format!("/api/cognisys/routing-rules/{rule}"), &t)
        .await;
    assert_eq!(
        (got.status.as_u16(), got.body["target_model"].as_str()),
        (200, Some("coder:7b"))
    );
    let list = s.get("/api/cognisys/routing-rules", &t).await.body;
    assert_eq!(list[0]["id"], rule.as_str(), "highest priority first");

    // Bad rules say why; other users neither see nor follow these rules.
    let r = s
        .post(
            "/api/cognisys/routing-rules",
            &t,
            json!({"name": "bad", "condition": "colour == 'red'", "target_model": "coder:7b"}),
        )
        .await;
    assert_detail(&r, 422);
    assert!(r.body.to_string().contains("unknown field"), "{}", r.body);
    assert_detail(
        &s.post(
            "/api/cognisys/routing-rules",
            &t,
            json!({"name": "bad", "condition": "true", "target_model": "none-such"}),
        )
        .await,
        422,
    );
    assert_detail(&s.post("/api/cognisys/routing-rules", &t, json!({"name": "bad", "condition": "true", "target_model": "coder:7b", "priority": 1.5})).await, 422);
    let (other, _) = s.user("otherruler", &["operator"], Some(&org)).await;
    assert_detail(
        &s.get(&format!("/api/cognisys/routing-rules/{rule}"), &other)
            .await,
        404,
    );
    assert_eq!(
        s.get("/api/cognisys/routing-rules", &other).await.body,
        json!([])
    );
    let (_, v, _) = chat(&s, &other, "general:7b", "write code").await;
    assert_eq!(
        v["choices"][0]["message"]["content"], "hello from general",
        "not their rule"
    );

    let r = s
        .put(
            &format!("/api/cognisys/routing-rules/{rule}"),
            &t,
            json!({"condition": "text contains 'rust'"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["condition"].as_str()),
        (200, Some("text contains 'rust'"))
    );
    let (_, v, _) = chat(&s, &t, "general:7b", "write code").await;
    assert_eq!(v["choices"][0]["message"]["content"], "hello from general");
    assert_eq!(
        s.delete(&format!("/api/cognisys/routing-rules/{rule}"), &t)
            .await
            .status,
        204
    );
    assert_detail(
        &s.delete(&format!("/api/cognisys/routing-rules/{rule}"), &t)
            .await,
        404,
    );

    // Models: renamed, re-pointed, deleted.
    let r = s
        .put(
            &format!("/api/cognisys/models/{}", models[1]),
            &t,
            json!({"provider_id": providers[0]}),
        )
        .await;
    assert_eq!(r.body["provider_id"], providers[0].as_str(), "{}", r.body);
    assert_eq!(
        s.delete(&format!("/api/cognisys/models/{}", models[1]), &t)
            .await
            .status,
        204
    );
    assert_detail(
        &s.get(&format!("/api/cognisys/models/{}", models[1]), &t)
            .await,
        404,
    );
    assert_eq!(chat(&s, &t, "coder:7b", "hi").await.0, 404);
}
