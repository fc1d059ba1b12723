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

/// `POST /tasks` runs a chain of pure tasks to its end as an execution:
/// templates, branches, retries, fallbacks, and the errors of section 2.
#[tokio::test]
async fn chains_run_through_tasks_and_show_as_executions() {
    let s = TestServer::start().await;
    let (t, _) = s.user("runner", &["operator"], None).await;
    let to_end = json!({"branches": [{"operator": "default", "goto": "end"}]});
    let chain = json!({
        "id": "route", "debug": true,
        "tasks": [
            {"id": "greet", "handler": "noop", "prompt_template": "{{.input}}",
             "transition": {"branches": [{"operator": "default", "goto": "command"}]}},
            {"id": "command", "handler": "parse_transition",
             "transition": {"branches": [
                 {"operator": "equals", "when": "set", "goto": "settings"},
                 {"operator": "default", "goto": "end"}]}},
            {"id": "settings", "handler": "parse_key_value", "prompt_template": "replicas=3; region=eu",
             "transition": to_end}
        ]
    });
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": chain, "input": "/set replicas", "inputType": "string"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["output"], json!({"replicas": 3, "region": "eu"}));
    assert_eq!(r.body["outputType"], "json");
    let state = r.body["state"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = state
        .iter()
        .map(|u| {
            (
                u["taskID"].as_str().unwrap(),
                u["transition"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("greet", "noop"),
            ("command", "set"),
            ("settings", "parsed")
        ]
    );
    assert_eq!(state[0]["input"], "/set replicas", "debug shows inputs");
    assert_eq!(state[2]["output"], "{\"region\":\"eu\",\"replicas\":3}");
    assert_eq!(state[1]["error"], json!({"error": ""}));

    // Retries, then the failure target; without one the run fails (500).
    let failing = |on_failure: Value| {
        json!({"chain": {"id": "f", "tasks": [
            {"id": "boom", "handler": "raise_error", "retry_on_failure": 1,
             "transition": {"on_failure": on_failure, "branches": [{"operator": "default", "goto": "end"}]}},
            {"id": "fallback", "handler": "noop", "prompt_template": "recovered",
             "transition": {"branches": [{"operator": "default", "goto": "end"}]}}
        ]}, "input": "disk full", "inputType": "string"})
    };
    let r = s.post("/tasks", &t, failing(json!("fallback"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["output"], "recovered");
    assert_eq!(r.body["state"].as_array().unwrap().len(), 3);
    let r = s.post("/tasks", &t, failing(Value::Null)).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(
        r.body["error"]["message"],
        "task boom failed after 1 retries: disk full"
    );

    // Bad chains and inputs: 400 naming the problem, nothing runs.
    for (body, says) in [
        (json!({"input": "x"}), "chain"),
        (
            json!({"chain": {"id": "e", "tasks": []}}),
            "at least one task",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "teleport"}]}}),
            "task a: unsupported handler",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "noop",
            "transition": {"branches": [{"operator": "default", "goto": "ghost"}]}}]}}),
            "goto \"ghost\"",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "noop",
            "transition": {"branches": [{"operator": "almost", "goto": "end"}]}}]}}),
            "unknown operator",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "noop", "timeout": "soon"}]}}),
            "timeout",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "noop"}]}, "input": "x", "inputType": "yaml"}),
            "inputType",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "noop"}]}, "input": "x", "inputType": "int"}),
            "not a valid int",
        ),
        (
            json!({"chain": {"id": "e", "tasks": [{"id": "a", "handler": "raw_string"}]}, "input": "x"}),
            "needs an LLM",
        ),
    ] {
        let r = s.post("/tasks", &t, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {}",
            r.body
        );
    }
    // A branch without a match and no default: the run fails.
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": {"id": "n", "tasks": [{"id": "a", "handler": "noop",
            "transition": {"branches": [{"operator": "equals", "when": "x", "goto": "end"}]}}]},
            "input": "y", "inputType": "string"}),
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no matching transition")
    );

    // Each run is an execution (AIWM's view), completed or failed.
    let listed = s.get("/api/executions?limit=50", &t).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let text = listed.body.to_string();
    assert!(text.contains("task-chain"), "{text}");
}
