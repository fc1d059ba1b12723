//! Server plumbing: health, correlation ids, metrics, OpenAPI, unmatched
//! routes, and the shared route-coverage tool.

mod common;

use common::TestServer;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn health_is_public_and_answers_the_union() {
    let s = TestServer::start().await;
    for path in ["/health", "/api/health"] {
        let r = s.call(Method::GET, path, None, None).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["status"], "ok");
        assert_eq!(r.body["aegis_db"], "connected");
        assert!(r.body["version"].is_string());
        assert!(r.body["uptime_seconds"].is_u64());
    }
    s.stop().await;
}

#[tokio::test]
async fn correlation_ids_are_echoed_or_generated() {
    let s = TestServer::start().await;
    let r = s
        .http
        .get(format!("{}/api/nodes", s.base))
        .header("x-correlation-id", "my-custom-id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-correlation-id"], "my-custom-id");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["correlationId"], "my-custom-id");
    let r = s
        .http
        .get(format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    let generated = r.headers()["x-correlation-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36);
    // An unusable id is replaced, not echoed.
    let r = s
        .http
        .get(format!("{}/health", s.base))
        .header("x-correlation-id", "a".repeat(500))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-correlation-id"].len(), 36);
    s.stop().await;
}

#[tokio::test]
async fn unknown_routes_are_marked_and_methods_refused() {
    let s = TestServer::start().await;
    let r = s
        .call(Method::GET, "/api/nothing-here", Some(&s.admin_token), None)
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["x-warden-route"], "unmatched");
    assert_eq!(r.body["statusCode"], 404);
    assert_eq!(r.body["message"], "Cannot GET /api/nothing-here");
    let r = s
        .call(
            Method::PATCH,
            "/api/nodes",
            Some(&s.admin_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 405);
    s.stop().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let s = TestServer::start().await;
    s.get("/api/nodes", &s.admin_token).await;
    s.get("/api/nodes/missing", &s.admin_token).await;
    let r = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    assert!(text.contains("# TYPE warden_http_requests_total counter"));
    assert!(
        text.contains(
            "warden_http_requests_total{method=\"GET\",route=\"/api/nodes\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "warden_http_requests_total{method=\"GET\",route=\"/api/nodes/{id}\",status=\"404\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("# TYPE warden_http_request_duration_seconds histogram"));
    assert!(text.contains(
        "warden_http_request_duration_seconds_count{method=\"GET\",route=\"/api/nodes\"} 1"
    ));
    s.stop().await;
}

#[tokio::test]
async fn openapi_lists_every_route_served() {
    let s = TestServer::start().await;
    let r = s.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["openapi"], "3.1.0");
    let paths = r.body["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/nodes", "post"),
        ("/api/nodes/{id}", "delete"),
        ("/api/tools/{id}", "put"),
        ("/auth/login", "post"),
        ("/admin/actors", "get"),
        ("/health", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} documented"
        );
    }
    assert_eq!(
        paths["/api/nodes/{id}"]["get"]["parameters"][0]["name"],
        "id"
    );
    assert_eq!(paths["/auth/login"]["post"]["security"], json!([]));
    // Every documented operation is served (never an unmatched 404 or a 405).
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let url = format!(
                "{}{}",
                s.base,
                path.replace("{id}", "x").replace("{name}", "node:x")
            );
            let r = s
                .http
                .request(method.to_uppercase().parse().unwrap(), url)
                .send()
                .await
                .unwrap();
            assert_ne!(r.status(), 405, "{method} {path}");
            assert!(
                r.headers().get("x-warden-route").is_none(),
                "{method} {path}"
            );
        }
    }
    let page = s
        .http
        .get(format!("{}/api-docs", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<code>/api/nodes/{id}</code>"));
    s.stop().await;
}

/// The shared tool (../shared/tools/route_coverage.py) must find every
/// AIWM node, instruction and tool route, and the login.
#[tokio::test]
async fn route_coverage_tool_finds_the_aiwm_routes() {
    let tool =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/route_coverage.py");
    assert!(
        tool.exists(),
        "the shared route-coverage tool is at {}",
        tool.display()
    );
    let s = TestServer::start().await;
    let out = tokio::process::Command::new("python3")
        .arg(&tool)
        .args(["--base", &s.base, "--token", &s.admin_token, "--missing"])
        .output()
        .await
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let missing: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("missing aiwm:"))
        .collect();
    for prefix in [
        "/api/nodes",
        "/api/instructions",
        "/api/tools",
        "/auth/login",
        "/api/health",
    ] {
        let gaps: Vec<&&str> = missing
            .iter()
            .filter(|l| l.contains(&format!(" {prefix}")))
            .collect();
        assert!(
            gaps.is_empty(),
            "routes under {prefix} not served: {gaps:?}\n{text}"
        );
    }
    s.stop().await;
}
