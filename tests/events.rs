//! The event log through the real server (WORKFLOWS.md §4 E-G): events
//! appended and read back by type, aggregate and source within a time
//! window, deleted by range, streamed live over SSE in nid order; raw
//! payloads mapped by path, kept when mapping fails, replayed; mappings
//! with their validation; all per organisation and durable.

mod common;

use std::time::Duration;

use common::TestServer;
use reqwest::Method;
use serde_json::{Value, json};

fn event(t: &str, aggregate: &str, source: &str) -> Value {
    json!({"event_type": t, "aggregate_type": "order", "aggregate_id": aggregate,
        "event_source": source, "version": 1, "data": {"total": 12.5}, "metadata": {"by": "test"}})
}

fn contenox_error(r: &common::Reply, status: u16, says: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{says:?} not in {}", r.body);
}

fn nids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["nid"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn events_are_appended_queried_by_index_deleted_by_range_and_private() {
    let s = TestServer::start().await;
    let (t, _) = s.user("events", &["operator"], None).await;
    let (viewer, _) = s.user("events-viewer", &["viewer"], None).await;
    let (other, _) = s.user("events-outsider", &["operator"], None).await;

    let r = s
        .post("/events", &t, event("order.created", "o-1", "shop"))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.body["data"],
        json!({"total": 12.5}),
        "data comes back an object"
    );
    assert_eq!(r.body["metadata"], json!({"by": "test"}));
    assert!(r.body["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(r.body["created_at"].as_str().unwrap().ends_with('Z'));
    let first = r.body["nid"].as_u64().unwrap();
    let mut with_id = event("order.paid", "o-1", "bank");
    with_id["id"] = json!("pay-1");
    with_id["created_at"] = json!(chrono::Utc::now().to_rfc3339());
    let r = s.post("/events", &t, with_id.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["id"], "pay-1");
    assert!(r.body["nid"].as_u64().unwrap() > first, "nids rise");
    contenox_error(&s.post("/events", &t, with_id).await, 409, "pay-1");
    s.post("/events", &t, event("order.created", "o-2", "shop"))
        .await;
    s.post("/events", &t, event("order.created", "o-3", "pos"))
        .await;

    // Validation: 422 in contenox's error shape, nothing stored.
    for (patch, says) in [
        (json!({"event_type": null}), "event_type"),
        (json!({"aggregate_type": ""}), "aggregate_type"),
        (json!({"aggregate_id": null}), "aggregate_id"),
        (json!({"version": 0}), "version"),
        (
            json!({"created_at": "2001-01-01T00:00:00Z"}),
            "event is too old",
        ),
        (
            json!({"created_at": "2999-01-01T00:00:00Z"}),
            "event is too new",
        ),
        (json!({"created_at": "yesterday"}), "created_at"),
    ] {
        let mut body = event("order.bad", "o-9", "shop");
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        contenox_error(&s.post("/events", &t, body).await, 422, says);
    }
    assert_eq!(
        s.post("/events", &viewer, event("x", "1", "s"))
            .await
            .status,
        403
    );

    let created = s.get("/events/type?event_type=order.created", &t).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let got = nids(&created.body);
    assert_eq!(got.len(), 3);
    assert!(got.windows(2).all(|w| w[0] > w[1]), "newest first: {got:?}");
    let one = s
        .get("/events/type?event_type=order.created&limit=1", &t)
        .await;
    assert_eq!(nids(&one.body), [got[0]]);
    let aggregate = s
        .get(
            "/events/aggregate?event_type=order.created&aggregate_type=order&aggregate_id=o-2",
            &t,
        )
        .await;
    assert_eq!(
        aggregate.body.as_array().unwrap().len(),
        1,
        "{}",
        aggregate.body
    );
    assert_eq!(aggregate.body[0]["aggregate_id"], "o-2");
    let shop = s.get("/events/source?event_source=shop", &t).await;
    assert_eq!(shop.body.as_array().unwrap().len(), 2, "{}", shop.body);
    let bank = s
        .get("/events/source?event_source=bank&event_type=order.paid", &t)
        .await;
    assert_eq!(bank.body[0]["id"], "pay-1");
    assert_eq!(
        s.get(
            "/events/source?event_source=bank&event_type=order.created",
            &t
        )
        .await
        .body,
        json!([])
    );
    let types = s.get("/events/types", &t).await;
    assert_eq!(types.body, json!(["order.created", "order.paid"]));
    // A window in the past holds nothing.
    let old = s
        .get(
            "/events/type?event_type=order.created&from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z",
            &t,
        )
        .await;
    assert_eq!(old.body, json!([]));

    for (path, says) in [
        ("/events/type", "event_type"),
        (
            "/events/aggregate?event_type=order.created",
            "aggregate_type",
        ),
        ("/events/source", "event_source"),
        ("/events/type?event_type=x&limit=0", "limit"),
        ("/events/type?event_type=x&limit=1001", "limit"),
        ("/events/type?event_type=x&from=nope", "from"),
        ("/events/types?to=nope", "to"),
    ] {
        contenox_error(&s.get(path, &t).await, 422, says);
    }

    // Another organisation sees none of it.
    assert_eq!(s.get("/events/types", &other).await.body, json!([]));
    assert_eq!(
        s.get("/events/type?event_type=order.created", &other)
            .await
            .body,
        json!([])
    );

    // Range delete: from and to required; only the type's events go.
    contenox_error(
        &s.delete("/events/type?event_type=order.created", &t).await,
        422,
        "from and to",
    );
    assert_eq!(
        s.delete(
            "/events/type?event_type=order.created&from=2020-01-01T00:00:00Z&to=2999-01-01T00:00:00Z",
            &viewer
        )
        .await
        .status,
        403
    );
    let r = s
        .delete(
            "/events/type?event_type=order.created&from=2020-01-01T00:00:00Z&to=2999-01-01T00:00:00Z",
            &t,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!("events deleted"));
    assert_eq!(
        s.get("/events/type?event_type=order.created", &t)
            .await
            .body,
        json!([])
    );
    assert_eq!(s.get("/events/types", &t).await.body, json!(["order.paid"]));

    // Durable, and nids never come back after a delete.
    let s = s.restart(|_| {}).await;
    let t = s.login("events", "user-password-1").await;
    assert_eq!(s.get("/events/types", &t).await.body, json!(["order.paid"]));
    let r = s
        .post("/events", &t, event("order.created", "o-4", "shop"))
        .await;
    assert!(r.body["nid"].as_u64().unwrap() > got[0], "{}", r.body);
    s.stop().await;
}

/// Reads `data:` lines off an SSE response until `n` have come.
async fn sse_events(resp: &mut reqwest::Response, n: usize) -> Vec<Value> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            if let Some(data) = frame.trim().strip_prefix("data: ") {
                out.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn the_stream_sends_each_committed_event_of_its_type_once_in_nid_order() {
    let s = TestServer::start().await;
    let (t, _) = s.user("tail", &["operator"], None).await;
    let (other, _) = s.user("tail-outsider", &["operator"], None).await;
    let mut resp = s
        .http
        .get(format!("{}/events/stream/job.done", s.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(
        s.call(Method::GET, "/events/stream/job.done", None, None)
            .await
            .status,
        401
    );

    // Concurrent appends: the stream still sees them in nid order.
    let mut posts = Vec::new();
    for i in 0..20 {
        let (s_base, http, t) = (s.base.clone(), s.http.clone(), t.clone());
        posts.push(tokio::spawn(async move {
            let body = event("job.done", &format!("j-{i}"), "runner");
            http.post(format!("{s_base}/events"))
                .bearer_auth(&t)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    // Noise: another type, another organisation.
    s.post("/events", &t, event("job.started", "j-x", "runner"))
        .await;
    s.post("/events", &other, event("job.done", "j-y", "runner"))
        .await;
    for p in posts {
        assert_eq!(p.await.unwrap(), 201);
    }
    let got = sse_events(&mut resp, 20).await;
    let seen: Vec<u64> = got.iter().map(|e| e["nid"].as_u64().unwrap()).collect();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "nid order: {seen:?}");
    assert!(got.iter().all(|e| e["event_type"] == "job.done"));
    assert!(
        got.iter().all(|e| e["aggregate_id"] != "j-y"),
        "other org's event leaked"
    );
    // Nothing else is queued: the next event is the next one sent.
    s.post("/events", &t, event("job.done", "j-last", "runner"))
        .await;
    let last = sse_events(&mut resp, 1).await;
    assert_eq!(last[0]["aggregate_id"], "j-last");
    s.stop().await;
}

fn mapping() -> Value {
    json!({
        "path": "github.push",
        "eventType": "github.push",
        "eventSource": "github.com",
        "aggregateType": "repository",
        "aggregateIDField": "repository.id",
        "eventTypeField": "headers.X-GitHub-Event",
        "metadataMapping": {"sender": "sender.login", "delivery": "headers.X-GitHub-Delivery", "absent": "nope"},
        "version": 2
    })
}

#[tokio::test]
async fn payloads_are_kept_mapped_by_path_and_replayed() {
    let s = TestServer::start().await;
    let (t, _) = s.user("bridge", &["operator"], None).await;
    let (other, _) = s.user("bridge-outsider", &["operator"], None).await;

    // Mappings: created, refused when incomplete or taken, read, replaced.
    let r = s.post("/mappings", &t, mapping()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["aggregateIDField"], "repository.id");
    assert_eq!(r.body["metadataMapping"]["sender"], "sender.login");
    contenox_error(
        &s.post("/mappings", &t, mapping()).await,
        409,
        "github.push",
    );
    for (drop, says) in [
        ("path", "path"),
        ("eventType", "eventType"),
        ("eventSource", "eventSource"),
        ("aggregateType", "aggregateType"),
        ("version", "version"),
    ] {
        let mut bad = mapping();
        bad.as_object_mut().unwrap().remove(drop);
        bad["path"] = json!(format!("p-{drop}"));
        if drop == "path" {
            bad["path"] = json!("");
        }
        contenox_error(&s.post("/mappings", &t, bad).await, 422, says);
    }
    let mut second = mapping();
    second["path"] = json!("a.first");
    assert_eq!(s.post("/mappings", &t, second).await.status, 201);
    let list = s.get("/mappings", &t).await.body;
    let paths: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["a.first", "github.push"], "sorted by path");
    assert_eq!(s.get("/mappings", &other).await.body, json!([]));
    assert_eq!(
        s.get("/mapping?path=github.push", &t).await.body["version"],
        2
    );
    contenox_error(
        &s.get("/mapping?path=github.push", &other).await,
        404,
        "github.push",
    );
    contenox_error(&s.get("/mapping", &t).await, 400, "path");
    let mut replaced = mapping();
    replaced["path"] = json!("ignored, the query wins");
    replaced["metadataMapping"] = json!({"sender": "sender.login"});
    let r = s.put("/mapping?path=github.push", &t, replaced).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["path"], "github.push");
    assert_eq!(r.body["metadataMapping"], json!({"sender": "sender.login"}));
    contenox_error(
        &s.put("/mapping?path=nope", &t, mapping()).await,
        404,
        "nope",
    );
    assert_eq!(
        s.post("/sync", &t, json!({})).await.body,
        json!("mappings synchronized")
    );

    // Ingest: the raw payload, the mapped event, headers as sent but
    // never the credentials.
    let payload = json!({"repository": {"id": 42, "name": "warden"}, "sender": {"login": "ann"}});
    let ingest = |body: Value, path: &str| {
        s.http
            .post(format!("{}/ingest?path={path}", s.base))
            .bearer_auth(&t)
            .header("X-GitHub-Event", "push.received")
            .header("X-Api-Key", "not-to-be-kept")
            .json(&body)
            .send()
    };
    let r = ingest(payload.clone(), "github.push").await.unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["payload"], payload, "payload verbatim");
    assert_eq!(body["path"], "github.push");
    assert!(body["nid"].as_u64().is_some() && body["received_at"].is_string());
    assert_eq!(
        body["event_type"], "push.received",
        "the header wins over the fixed type"
    );
    assert_eq!(body["aggregate_id"], "42");
    assert_eq!(body["aggregate_type"], "repository");
    assert_eq!(body["version"], 2);
    assert_eq!(body["metadata"], json!({"sender": "ann"}));
    assert!(body["event_id"].as_str().unwrap().starts_with("evt_"));
    let headers = body["headers"].as_object().unwrap();
    assert_eq!(headers["x-github-event"], "push.received");
    assert!(!headers.contains_key("authorization") && !headers.contains_key("x-api-key"));
    let raw_nid = body["nid"].as_u64().unwrap();
    let events = s
        .get("/events/type?event_type=push.received", &t)
        .await
        .body;
    assert_eq!(events.as_array().unwrap().len(), 1);
    assert_eq!(events[0]["data"], payload);

    // A payload that does not map is kept all the same.
    let r = ingest(json!({"sender": {"login": "bob"}}), "github.push")
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let err: Value = r.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("aggregate ID field 'repository.id' not found in payload"),
        "{err}"
    );
    let r = ingest(json!({"x": 1}), "no.such.path").await.unwrap();
    assert_eq!(r.status(), 404);
    let raws = s.get("/raw-events", &t).await.body;
    assert_eq!(raws.as_array().unwrap().len(), 3, "{raws}");
    assert_eq!(raws[2]["nid"].as_u64(), Some(raw_nid), "newest first");
    let r = s
        .raw(Method::POST, "/ingest", Some(&t), b"{}".to_vec())
        .await;
    contenox_error(&r, 400, "path");
    let r = s
        .raw(
            Method::POST,
            "/ingest?path=github.push",
            Some(&t),
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400);

    // A raw event by nid; another organisation's is not there.
    let one = s.get(&format!("/raw-events/{raw_nid}"), &t).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["payload"], payload);
    assert_eq!(
        s.get(&format!("/raw-events/{raw_nid}"), &other)
            .await
            .status,
        404
    );
    contenox_error(&s.get("/raw-events/abc", &t).await, 422, "nid");
    assert_eq!(
        s.get(
            &format!("/raw-events/{raw_nid}?to=2020-01-01T00:00:00Z"),
            &t
        )
        .await
        .status,
        404
    );

    // Replay maps the stored payload again: a second event.
    let r = s
        .post(&format!("/replay?nid={raw_nid}"), &t, json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body, json!("event replayed"));
    let events = s
        .get("/events/type?event_type=push.received", &t)
        .await
        .body;
    assert_eq!(events.as_array().unwrap().len(), 2);
    assert_ne!(events[0]["id"], events[1]["id"]);
    contenox_error(&s.post("/replay", &t, json!({})).await, 400, "nid");
    contenox_error(&s.post("/replay?nid=x", &t, json!({})).await, 422, "nid");
    assert_eq!(
        s.post("/replay?nid=999999", &t, json!({})).await.status,
        404
    );
    assert_eq!(
        s.post(&format!("/replay?nid={raw_nid}"), &other, json!({}))
            .await
            .status,
        404
    );

    // A raw event stored directly is not mapped.
    let r = s
        .post(
            "/raw-events",
            &t,
            json!({"path": "manual", "payload": {"a": 1}, "headers": {"Authorization": "Bearer x", "X-Tag": "t"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["payload"], json!({"a": 1}));
    assert_eq!(r.body["headers"], json!({"X-Tag": "t"}));
    contenox_error(
        &s.post("/raw-events", &t, json!({"payload": {}})).await,
        422,
        "path",
    );

    // Delete: gone, and ingest on the path finds no mapping.
    let r = s.delete("/mapping?path=github.push", &t).await;
    assert_eq!(r.body, json!("mapping removed"));
    contenox_error(
        &s.get("/mapping?path=github.push", &t).await,
        404,
        "github.push",
    );
    assert_eq!(s.delete("/mapping?path=github.push", &t).await.status, 404);
    s.stop().await;
}
