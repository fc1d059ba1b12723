//! Vareon's telemetry views (seeds/vareon-api.md): the server host's
//! metrics, and telemetry ingest and query over the shared series store.

mod common;

use common::TestServer;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn system_metrics_are_the_hosts() {
    let s = TestServer::start().await;
    let r = s.get("/api/myntrix/system-metrics", &s.admin_token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    for key in [
        "cpu_percent",
        "memory_percent",
        "memory_total",
        "memory_available",
    ] {
        assert!(r.body[key].is_number(), "{key} in {}", r.body);
    }
    assert!(
        r.body["memory_total"].as_u64().unwrap() > 100 * 1024 * 1024,
        "bytes, as psutil reports"
    );
    assert!(r.body["memory_percent"].as_f64().unwrap() > 0.0);
    assert!(r.body["timestamp"].is_string());
    let r = s
        .call(Method::GET, "/api/myntrix/system-metrics", None, None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body, json!({"detail": "Not authenticated"}));
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    s.stop().await;
}

#[tokio::test]
async fn telemetry_ingest_and_query() {
    let s = TestServer::start().await;
    let (alice, alice_user) = s.user("vareonalice", &["operator"], None).await;
    let (bob, _) = s.user("vareonbob", &["operator"], None).await;
    // A device of alice's (referenced ids must be the caller's).
    let r = s
        .post(
            "/api/myntrix/devices/",
            &alice,
            json!({"name": "probe", "type": "sensor", "connection_string": "/dev/ttyACM0"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let device = r.body["id"].as_str().unwrap().to_owned();
    let r = s.post("/api/neosyntis/telemetry/ingest", &alice, json!({"metric_name": "temperature", "value": 21.5, "device_id": device, "timestamp": "2026-01-01T00:00:00Z"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["metric_name"], "temperature");
    assert_eq!(r.body["value"], 21.5);
    assert_eq!(r.body["device_id"], device.as_str());
    assert_eq!(r.body["workflow_id"], serde_json::Value::Null);
    assert_eq!(r.body["owner_id"], alice_user["id"]);
    assert!(uuid::Uuid::parse_str(r.body["id"].as_str().unwrap()).is_ok());
    for v in [1.0, 2.0, 3.0] {
        assert_eq!(
            s.post(
                "/api/neosyntis/telemetry/ingest",
                &alice,
                json!({"metric_name": "load", "value": v})
            )
            .await
            .status,
            201
        );
    }

    let r = s.get("/api/neosyntis/telemetry/", &alice).await;
    assert_eq!(r.body.as_array().unwrap().len(), 4);
    assert_eq!(r.body[0]["metric_name"], "temperature", "oldest first");
    let r = s
        .get(
            "/api/neosyntis/telemetry/?metric_name=load&skip=1&limit=1",
            &alice,
        )
        .await;
    assert_eq!(r.body, json!([r.body[0].clone()]));
    assert_eq!(r.body[0]["value"], 2.0);
    assert_eq!(
        s.get("/api/neosyntis/telemetry", &alice)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        4
    );
    // Each user sees their own.
    assert_eq!(
        s.get("/api/neosyntis/telemetry/", &bob).await.body,
        json!([])
    );

    // Another's device, an unknown dataset or workflow: 404, nothing stored.
    for (key, id) in [
        ("device_id", device.clone()),
        ("dataset_id", uuid::Uuid::new_v4().to_string()),
        ("workflow_id", uuid::Uuid::new_v4().to_string()),
    ] {
        let r = s
            .post(
                "/api/neosyntis/telemetry/ingest",
                &bob,
                json!({"metric_name": "m", "value": 1.0, key: id}),
            )
            .await;
        assert_eq!(r.status, 404, "{key}: {}", r.body);
    }
    assert_eq!(
        s.get("/api/neosyntis/telemetry/", &bob).await.body,
        json!([])
    );

    // FastAPI's validation answer.
    let r = s
        .post(
            "/api/neosyntis/telemetry/ingest",
            &alice,
            json!({"value": "hot", "device_id": 7}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let locs: Vec<String> = r.body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["loc"][1].as_str().unwrap().to_owned())
        .collect();
    assert!(
        locs.contains(&"metric_name".to_owned())
            && locs.contains(&"value".to_owned())
            && locs.contains(&"device_id".to_owned()),
        "{locs:?}"
    );
    let r = s
        .raw(
            Method::POST,
            "/api/neosyntis/telemetry/ingest",
            Some(&alice),
            b"{broken".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body["detail"].is_string());
    // Python's json writes NaN for a non-finite float: a value refused, 422.
    let r = s
        .raw(
            Method::POST,
            "/api/neosyntis/telemetry/ingest",
            Some(&alice),
            br#"{"metric_name": "m", "value": NaN}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = s.get("/api/neosyntis/telemetry/?skip=-1", &alice).await;
    assert_eq!(r.status, 422);
    s.stop().await;
}
