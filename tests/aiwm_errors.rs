//! Bad input gets the documented 4xx body, never a 5xx: malformed JSON,
//! wrong types, missing fields, oversized bodies, unknown ids, bad pages,
//! missing or bad credentials.

mod common;

use common::{TestServer, assert_aiwm_error, node_body};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn validation_errors_use_the_aiwm_body() {
    let s = TestServer::start().await;
    let t = s.admin_token.clone();

    // The reference's own example: POST {} → the three messages.
    let r = s.post("/api/nodes", &t, json!({})).await;
    assert_aiwm_error(&r, 400, "/api/nodes");
    assert_eq!(r.body["message"], "Validation failed");
    assert_eq!(
        r.body["errors"],
        json!([
            "nodeId must be a string",
            "name must be a string",
            "cpuCores must be a number"
        ])
    );

    let r = s.post("/api/nodes", &t, json!({"nodeId": 5, "name": ["x"], "cpuCores": "many", "isLocal": "yes", "role": [1], "status": "exploded", "ramTotal": -1, "ramFree": 1.5})).await;
    assert_aiwm_error(&r, 400, "/api/nodes");
    let errors: Vec<&str> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for expected in [
        "nodeId must be a string",
        "name must be a string",
        "cpuCores must be a number",
        "isLocal must be a boolean value",
        "each value in role must be a string",
        "status must be one of the following values: online, offline, maintenance",
        "ramTotal must not be less than 0",
        "ramFree must be an integer number",
    ] {
        assert!(
            errors.contains(&expected),
            "missing {expected:?} in {errors:?}"
        );
    }
    let r = s.post("/api/nodes", &t, json!({"nodeId": "a b", "name": "", "cpuCores": 1, "gpuDevices": [{"deviceId": "GPU-0"}, 3]})).await;
    assert_aiwm_error(&r, 400, "/api/nodes");
    let errors = r.body["errors"].to_string();
    assert!(errors.contains("nodeId must contain only"), "{errors}");
    assert!(errors.contains("name should not be empty"), "{errors}");
    assert!(
        errors.contains("gpuDevices.0.model must be a string"),
        "{errors}"
    );
    assert!(
        errors.contains("gpuDevices.1 must be an object"),
        "{errors}"
    );

    // Malformed JSON and non-object bodies.
    for bad in [&b"{\"nodeId\": "[..], b"not json", b"[1,2]", b"\"str\""] {
        let r = s
            .raw(Method::POST, "/api/nodes", Some(&t), bad.to_vec())
            .await;
        assert_aiwm_error(&r, 400, "/api/nodes");
    }
    let r = s
        .raw(
            Method::PUT,
            "/api/instructions/abc",
            Some(&t),
            b"{oops".to_vec(),
        )
        .await;
    assert_aiwm_error(&r, 400, "/api/instructions/abc");

    // Oversized bodies.
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let r = s
        .raw(Method::POST, "/api/tools", Some(&t), big.into_bytes())
        .await;
    assert_aiwm_error(&r, 413, "/api/tools");
    let r = s
        .post(
            "/api/nodes",
            &t,
            json!({"nodeId": "n", "name": "x".repeat(300), "cpuCores": 1}),
        )
        .await;
    assert_eq!(
        r.body["errors"],
        json!(["name must be shorter than or equal to 256 characters"])
    );

    // Unknown ids on every id route.
    for base in ["/api/nodes", "/api/instructions", "/api/tools"] {
        let path = format!("{base}/999999999999999999999999");
        assert_aiwm_error(&s.get(&path, &t).await, 404, &path);
        assert_aiwm_error(&s.put(&path, &t, json!({"name": "x"})).await, 404, &path);
        assert_aiwm_error(&s.delete(&path, &t).await, 404, &path);
    }
    assert_eq!(
        s.get("/api/nodes/999999999999999999999999", &t).await.body["message"],
        "Node with ID 999999999999999999999999 not found"
    );

    // Bad page numbers and limits.
    for q in [
        "page=0",
        "page=-1",
        "page=abc",
        "limit=0",
        "limit=101",
        "limit=ten",
        "page=1.5",
    ] {
        for base in ["/api/nodes", "/api/instructions", "/api/tools"] {
            let r = s.get(&format!("{base}?{q}"), &t).await;
            assert_aiwm_error(&r, 400, base);
        }
    }
    assert_eq!(s.get("/api/nodes?limit=100", &t).await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn credentials_are_required_and_checked() {
    let s = TestServer::start().await;
    for (method, path) in [
        (Method::GET, "/api/nodes"),
        (Method::POST, "/api/nodes"),
        (Method::GET, "/api/nodes/x"),
        (Method::PUT, "/api/nodes/x"),
        (Method::DELETE, "/api/nodes/x"),
        (Method::GET, "/api/instructions"),
        (Method::POST, "/api/tools"),
        (Method::GET, "/admin/actors"),
        (Method::POST, "/admin/users"),
    ] {
        let r = s.call(method.clone(), path, None, Some(json!({}))).await;
        assert_aiwm_error(&r, 401, path);
        assert_eq!(r.body["message"], "Unauthorized");
        let r = s
            .call(method.clone(), path, Some("not-a-token"), Some(json!({})))
            .await;
        assert_aiwm_error(&r, 401, path);
        let forged = format!("{}x", s.admin_token);
        assert_eq!(s.call(method, path, Some(&forged), None).await.status, 401);
    }
    // Admin routes need an admin.
    let (op, _) = s.user("opera", &["operator"], None).await;
    assert_aiwm_error(&s.get("/admin/actors", &op).await, 403, "/admin/actors");
    assert_aiwm_error(
        &s.post("/admin/users", &op, json!({})).await,
        403,
        "/admin/users",
    );

    // Login failures.
    let r = s
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"username": "admin", "password": "wrong-password"})),
        )
        .await;
    assert_aiwm_error(&r, 401, "/auth/login");
    let r = s
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"username": "nobody", "password": "wrong-password"})),
        )
        .await;
    assert_aiwm_error(&r, 401, "/auth/login");
    let r = s
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"username": 3})),
        )
        .await;
    assert_aiwm_error(&r, 400, "/auth/login");
    s.stop().await;
}

#[tokio::test]
async fn login_answers_both_habits_and_by_email() {
    let s = TestServer::start().await;
    let r = s
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"username": "admin@example.com", "password": common::ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accessToken"], r.body["token"]);
    assert_eq!(
        r.body["accessToken"].as_str().unwrap().matches('.').count(),
        2,
        "a JWT"
    );
    assert_eq!(r.body["user"]["username"], "admin");
    assert_eq!(r.body["user"]["roles"], json!(["admin"]));
    assert!(r.body["user"]["orgId"].is_string());
    assert!(
        r.body.to_string().find("password").is_none(),
        "no password or hash in {}",
        r.body
    );
    let token = r.body["accessToken"].as_str().unwrap();
    assert_eq!(
        s.post("/api/nodes", token, node_body("n1", "one"))
            .await
            .status,
        201
    );
    // Users listed by an admin never show hashes.
    let r = s.get("/admin/users", &s.admin_token).await;
    assert!(!r.body.to_string().contains("argon2"));
    s.stop().await;
}
