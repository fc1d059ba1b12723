//! The workflow engine's definitions through the real server: contenox
//! task chains stored as sent (loose fields round-trip), replaced by id,
//! paged, refused when malformed, per organisation.

mod common;

use common::TestServer;
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
