//! AIWM §3 instructions and §7 tools: plain records with the same
//! conventions as nodes (paging, soft delete, audit, tenancy).

mod common;

use common::{TestServer, assert_aiwm_error};
use serde_json::json;

#[tokio::test]
async fn instructions_crud_as_documented() {
    let s = TestServer::start().await;
    let (token, user) = s.user("writer", &["operator"], None).await;
    let (other, _) = s.user("outsider", &["operator"], None).await;
    let body = json!({
        "instructionId": "inst-cs-agent-v1",
        "name": "Customer Support Agent v1",
        "description": "Instructions for customer support AI agent",
        "systemPrompt": "You are a helpful customer support agent.",
        "guidelines": ["Always greet customers warmly", "Escalate complex issues"],
        "tags": ["customer-service", "support", "polite"],
        "isActive": true
    });
    let r = s.post("/api/instructions", &token, body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    for key in [
        "instructionId",
        "name",
        "description",
        "systemPrompt",
        "guidelines",
        "tags",
        "isActive",
    ] {
        assert_eq!(r.body[key], body[key], "{key}");
    }
    assert_eq!(r.body["owner"]["userId"], user["id"]);
    assert_eq!(r.body["createdBy"], user["id"]);
    let id = r.body["_id"].as_str().unwrap().to_owned();
    let path = format!("/api/instructions/{id}");

    // A second, inactive one, for filters.
    let r = s
        .post(
            "/api/instructions",
            &token,
            json!({"name": "Sales", "systemPrompt": "Sell.", "tags": ["sales"], "isActive": false}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(
        r.body["instructionId"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "an instructionId is generated"
    );

    let r = s.get("/api/instructions?page=1&limit=10", &token).await;
    assert_eq!(
        r.body["pagination"],
        json!({"page": 1, "limit": 10, "total": 2})
    );
    let r = s
        .get("/api/instructions?filter[isActive]=true", &token)
        .await;
    assert_eq!(r.body["pagination"]["total"], 1);
    assert_eq!(r.body["data"][0]["_id"], id.as_str());
    let r = s
        .get("/api/instructions?filter[tags]=customer-service", &token)
        .await;
    assert_eq!(r.body["pagination"]["total"], 1);
    let r = s.get("/api/instructions?sort=name", &token).await;
    assert_eq!(r.body["data"][0]["name"], "Customer Support Agent v1");

    let r = s.put(&path, &token, json!({"name": "Customer Support Agent v2", "guidelines": ["New guideline 1", "New guideline 2"], "tags": ["empathetic"]})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "Customer Support Agent v2");
    assert_eq!(
        r.body["guidelines"],
        json!(["New guideline 1", "New guideline 2"])
    );
    assert_eq!(r.body["systemPrompt"], body["systemPrompt"]);
    assert_eq!(r.body["isActive"], true);
    let r = s.put(&path, &token, json!({"isActive": "yes"})).await;
    assert_aiwm_error(&r, 400, &path);
    assert_eq!(
        r.body["errors"],
        json!(["isActive must be a boolean value"])
    );

    // Tenancy.
    for r in [
        s.get(&path, &other).await,
        s.put(&path, &other, json!({"name": "x"})).await,
        s.delete(&path, &other).await,
    ] {
        assert_aiwm_error(&r, 404, &path);
    }
    assert_eq!(
        s.get("/api/instructions", &other).await.body["pagination"]["total"],
        0
    );

    let r = s.delete(&path, &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["message"], "Instruction deleted successfully");
    assert!(
        r.body["deletedAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_aiwm_error(&s.get(&path, &token).await, 404, &path);
    assert_eq!(
        s.get("/api/instructions", &token).await.body["pagination"]["total"],
        1
    );
    s.stop().await;
}

#[tokio::test]
async fn tools_crud_as_documented() {
    let s = TestServer::start().await;
    let (token, _) = s.user("toolsmith", &["operator"], None).await;
    let (other, _) = s.user("stranger", &["operator"], None).await;
    let body = json!({
        "toolId": "web-search",
        "name": "Web search",
        "description": "Searches the web",
        "type": "api",
        "category": "search",
        "provider": "google",
        "endpoint": "https://search.example.com/v1",
        "version": "2.1.0",
        "status": "active",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        "responseFormat": {"type": "array", "schema": {"items": {"type": "object"}}},
        "tags": ["search"],
        "documentation": "Pass q.",
        "examples": [{"title": "t", "description": "d", "arguments": {"q": "rust"}, "expectedOutput": []}],
        "isActive": true
    });
    let r = s.post("/api/tools", &token, body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    for key in [
        "toolId",
        "name",
        "description",
        "type",
        "category",
        "provider",
        "endpoint",
        "version",
        "status",
        "parameters",
        "responseFormat",
        "tags",
        "documentation",
        "examples",
        "isActive",
    ] {
        assert_eq!(r.body[key], body[key], "{key}");
    }
    assert_eq!(r.body["usage"], json!([]));
    assert_eq!(r.body["totalUsage"], 0);
    assert_eq!(r.body["totalFailures"], 0);
    assert_eq!(r.body["averageLatency"], 0.0);
    let id = r.body["_id"].as_str().unwrap().to_owned();
    let path = format!("/api/tools/{id}");

    let r = s
        .post(
            "/api/tools",
            &token,
            json!({"name": "calc", "description": "adds", "type": "robot"}),
        )
        .await;
    assert_aiwm_error(&r, 400, "/api/tools");
    assert_eq!(
        r.body["errors"],
        json!(["type must be one of the following values: api, function, service"])
    );
    assert_eq!(s.post("/api/tools", &token, json!({"name": "calc", "description": "adds", "type": "function", "status": "deprecated"})).await.status, 201);

    let r = s.get("/api/tools?filter[type]=api", &token).await;
    assert_eq!(r.body["pagination"]["total"], 1);
    let r = s.get("/api/tools?filter[status]=deprecated", &token).await;
    assert_eq!(r.body["data"][0]["name"], "calc");
    let r = s.get("/api/tools/web-search", &token).await;
    assert_eq!(r.body["_id"], id.as_str());

    let r = s
        .put(
            &path,
            &token,
            json!({"status": "inactive", "totalUsage": 99}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "inactive");
    assert_eq!(
        r.body["totalUsage"], 0,
        "usage statistics are Warden's to record"
    );

    for r in [
        s.get(&path, &other).await,
        s.put(&path, &other, json!({"name": "x"})).await,
        s.delete(&path, &other).await,
    ] {
        assert_aiwm_error(&r, 404, &path);
    }
    let r = s.delete(&path, &token).await;
    assert_eq!(r.body["message"], "Tool deleted successfully");
    assert_aiwm_error(&s.get(&path, &token).await, 404, &path);
    assert_eq!(
        s.get("/api/tools", &token).await.body["pagination"]["total"],
        1
    );
    s.stop().await;
}

#[tokio::test]
async fn models_crud_as_documented() {
    let s = TestServer::start().await;
    let (token, _) = s.user("modeller", &["operator"], None).await;
    let (other, _) = s.user("outsider", &["operator"], None).await;
    let body = json!({
        "modelId": "llama-2-7b-v1",
        "name": "Llama 2 7B",
        "description": "Meta's Llama 2 7B parameter model",
        "version": "1.0.0",
        "type": "llm",
        "framework": "pytorch",
        "repository": "huggingface.co/meta-llama/Llama-2-7b-chat-hf",
        "fileName": "model.safetensors",
        "fileSize": 13476875264u64,
        "nodeId": "node-gpu-01",
        "tags": ["llm", "chat", "meta"]
    });
    let r = s.post("/api/models", &token, body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    for (key, value) in body.as_object().unwrap() {
        assert_eq!(&r.body[key], value, "{key}");
    }
    assert_eq!(r.body["isDownloaded"], false);
    assert_eq!(r.body["downloadProgress"], 0);
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["totalInference"], 0);
    assert_eq!(r.body["totalTokens"], 0);
    assert_eq!(r.body["totalProcessingTime"], 0);
    assert_eq!(r.body["isActive"], true);
    let id = r.body["_id"].as_str().unwrap().to_owned();

    let onnx = json!({"name": "tiny", "type": "classifier", "framework": "onnx", "nodeId": "edge-1", "sha256": "00".repeat(32)});
    assert_eq!(s.post("/api/models", &token, onnx).await.status, 201);
    let r = s
        .post("/api/models", &token, json!({"name": "x", "type": "robot", "framework": "onnx", "fileName": "../x", "downloadProgress": 150}))
        .await;
    assert_aiwm_error(&r, 400, "/api/models");
    assert_eq!(r.body["errors"].as_array().unwrap().len(), 3, "{}", r.body);
    let r = s.post("/api/models", &token, body.clone()).await;
    assert_aiwm_error(&r, 409, "/api/models");

    // Filters of §2.2.
    let r = s.get("/api/models?filter[type]=llm", &token).await;
    assert_eq!(r.body["pagination"]["total"], 1);
    let r = s
        .get(
            "/api/models?filter[nodeId]=node-gpu-01&filter[isDownloaded]=false",
            &token,
        )
        .await;
    assert_eq!(r.body["data"][0]["modelId"], "llama-2-7b-v1");
    let r = s.get("/api/models?filter[framework]=onnx", &token).await;
    assert_eq!(r.body["data"][0]["name"], "tiny");
    let r = s.get("/api/models?sort=-name", &token).await;
    assert_eq!(r.body["data"][0]["name"], "tiny");

    // §2.4: download status; usage counters are Warden's.
    let path = format!("/api/models/{id}");
    let r = s
        .put(
            &path,
            &token,
            json!({"status": "downloading", "downloadProgress": 45, "totalTokens": 5}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["status"].clone(), r.body["downloadProgress"].clone()),
        (json!("downloading"), json!(45))
    );
    assert_eq!(r.body["totalTokens"], 0);
    assert_eq!(
        s.get("/api/models/llama-2-7b-v1", &token).await.body["downloadProgress"],
        45
    );
    let r = s.put(&path, &token, json!({"status": "lost"})).await;
    assert_aiwm_error(&r, 400, &path);

    // Tenancy, then soft delete.
    assert_aiwm_error(&s.get(&path, &other).await, 404, &path);
    assert_aiwm_error(&s.delete(&path, &other).await, 404, &path);
    let r = s.delete(&path, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["message"], "Model deleted successfully");
    assert_aiwm_error(&s.get(&path, &token).await, 404, &path);
    assert_eq!(
        s.get("/api/models", &token).await.body["pagination"]["total"],
        1
    );
    s.stop().await;
}
