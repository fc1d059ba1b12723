//! JavaScript functions through the real server (WORKFLOWS.md §3, §4 H):
//! functions and triggers stored as sent and refused when incomplete; an
//! ingested payload runs a function whose event runs another; a replay
//! runs it again; hostile scripts end in recorded failures while the
//! server and other functions go on; cascades stop at depth 8; tenants
//! never trigger each other's functions.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, eventually};
use serde_json::{Value, json};

fn contenox_error(r: &common::Reply, status: u16, says: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{says:?} not in {}", r.body);
}

fn trigger(name: &str, listen: &str, function: &str) -> Value {
    json!({"name": name, "description": format!("runs {function}"), "type": "function",
        "listenFor": {"type": listen}, "function": function})
}

fn event(t: &str, aggregate: &str, data: Value) -> Value {
    json!({"event_type": t, "aggregate_type": "order", "aggregate_id": aggregate,
        "event_source": "test", "version": 1, "data": data})
}

#[tokio::test]
async fn functions_and_triggers_are_stored_as_sent_refused_when_incomplete_and_private() {
    let s = TestServer::start().await;
    let (t, _) = s.user("fn-owner", &["operator"], None).await;
    let (viewer, _) = s.user("fn-viewer", &["viewer"], None).await;
    let (other, _) = s.user("fn-outsider", &["operator"], None).await;

    let body = json!({"name": "send-welcome", "description": "mail", "scriptType": "goja",
        "script": "function x( {", "team": "growth"});
    let r = s.post("/functions", &t, body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["team"], "growth", "unknown fields round-trip");
    assert_eq!(
        r.body["script"], "function x( {",
        "not compiled when stored"
    );
    assert!(r.body["createdAt"].is_string());
    contenox_error(
        &s.post("/functions", &t, body.clone()).await,
        409,
        "send-welcome",
    );
    contenox_error(
        &s.post("/functions", &t, json!({"script": "1"})).await,
        422,
        "name",
    );
    assert_eq!(
        s.post("/functions", &viewer, json!({"name": "v"}))
            .await
            .status,
        403
    );
    s.post(
        "/functions",
        &t,
        json!({"name": "second", "script": "var result = {};"}),
    )
    .await;
    let list = s.get("/functions", &t).await.body;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["send-welcome", "second"], "oldest first");
    let page = s.get("/functions?limit=1", &t).await.body;
    assert_eq!(page.as_array().unwrap().len(), 1);
    let r = s
        .put(
            "/functions/send-welcome",
            &t,
            json!({"script": "function f() { return {}; }", "description": "v2"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "send-welcome");
    assert_eq!(r.body["description"], "v2");
    assert_eq!(
        s.get("/functions/send-welcome", &t).await.body["script"],
        "function f() { return {}; }"
    );
    contenox_error(
        &s.get("/functions/send-welcome", &other).await,
        404,
        "send-welcome",
    );
    assert_eq!(s.get("/functions", &other).await.body, json!([]));
    assert_eq!(s.put("/functions/nope", &t, json!({})).await.status, 404);

    // Triggers: validated, listed by event type and by function.
    let r = s
        .post(
            "/event-triggers",
            &t,
            trigger("on-signup", "user.created", "send-welcome"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["listenFor"], json!({"type": "user.created"}));
    for (drop, says) in [
        ("name", "name"),
        ("type", "type"),
        ("listenFor", "listenFor"),
        ("function", "function"),
    ] {
        let mut bad = trigger("bad", "x", "f");
        bad.as_object_mut().unwrap().remove(drop);
        contenox_error(&s.post("/event-triggers", &t, bad).await, 422, says);
    }
    let mut webhook = trigger("bad", "x", "f");
    webhook["type"] = json!("webhook");
    contenox_error(&s.post("/event-triggers", &t, webhook).await, 422, "type");
    let mut no_type = trigger("bad", "x", "f");
    no_type["listenFor"] = json!({});
    contenox_error(
        &s.post("/event-triggers", &t, no_type).await,
        422,
        "listenFor.type",
    );
    s.post(
        "/event-triggers",
        &t,
        trigger("audit", "user.deleted", "second"),
    )
    .await;
    let by_type = s
        .get("/event-triggers/event-type/user.created", &t)
        .await
        .body;
    assert_eq!(by_type.as_array().unwrap().len(), 1);
    assert_eq!(by_type[0]["name"], "on-signup");
    let by_fn = s.get("/event-triggers/function/second", &t).await.body;
    assert_eq!(by_fn[0]["name"], "audit");
    assert_eq!(
        s.get("/event-triggers", &t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let r = s
        .put(
            "/event-triggers/audit",
            &t,
            trigger("ignored", "user.purged", "second"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "audit");
    assert_eq!(
        s.get("/event-triggers/event-type/user.purged", &t)
            .await
            .body[0]["name"],
        "audit"
    );
    assert_eq!(
        s.get("/event-triggers/event-type/user.deleted", &t)
            .await
            .body,
        json!([])
    );
    assert_eq!(s.get("/event-triggers", &other).await.body, json!([]));
    assert_eq!(
        s.post("/executor/sync", &t, json!({})).await.body,
        json!("sync triggered")
    );

    // Deletes free the name; a later GET is a 404.
    assert_eq!(
        s.delete("/event-triggers/audit", &t).await.body,
        json!("event trigger removed")
    );
    assert_eq!(s.get("/event-triggers/audit", &t).await.status, 404);
    assert_eq!(
        s.delete("/functions/second", &t).await.body,
        json!("function removed")
    );
    assert_eq!(s.get("/functions/second", &t).await.status, 404);
    assert_eq!(s.delete("/functions/second", &t).await.status, 404);
    assert_eq!(
        s.post("/functions", &t, json!({"name": "second"}))
            .await
            .status,
        201
    );
    s.stop().await;
}

/// The events of `t` (newest first).
async fn events_of(s: &TestServer, token: &str, t: &str) -> Vec<Value> {
    s.get(&format!("/events/type?event_type={t}"), token)
        .await
        .body
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn an_event_runs_a_function_whose_event_runs_another() {
    let s = TestServer::start().await;
    let (t, _) = s.user("fn-chain", &["operator"], None).await;
    let (other, _) = s.user("fn-chain-outsider", &["operator"], None).await;
    s.post(
        "/mappings",
        &t,
        json!({"path": "shop", "eventType": "order.placed", "eventSource": "shop",
            "aggregateType": "order", "aggregateIDField": "order.id", "version": 1}),
    )
    .await;
    // The script sees camelCase fields and parsed data.
    let enrich = r#"
        function enrich(event) {
            console.log("enriching", event.aggregateID);
            const sent = sendEvent("order.enriched", {
                order: event.aggregateID, type: event.eventType, source: event.eventSource,
                nid: event.nid, total: event.data.order.total * 2
            });
            return {enriched: sent.success, id: sent.event_id};
        }"#;
    let notify = r#"
        var result = null;
        function notify(event) {
            sendEvent("order.notified", {from: event.eventSource, depth: event.metadata.causation_depth});
            return {};
        }"#;
    for (name, script) in [("enrich", enrich), ("notify", notify)] {
        let r = s
            .post("/functions", &t, json!({"name": name, "script": script}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    s.post(
        "/event-triggers",
        &t,
        trigger("t-enrich", "order.placed", "enrich"),
    )
    .await;
    s.post(
        "/event-triggers",
        &t,
        trigger("t-notify", "order.enriched", "notify"),
    )
    .await;

    let started = Instant::now();
    let r = s
        .http
        .post(format!("{}/ingest?path=shop", s.base))
        .bearer_auth(&t)
        .json(&json!({"order": {"id": "o-7", "total": 21}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let raw: Value = r.json().await.unwrap();
    let notified = eventually(5, "the second function's event", || async {
        let n = events_of(&s, &t, "order.notified").await;
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        notified[0]["data"],
        json!({"from": "function_execution", "depth": 1})
    );
    assert_eq!(notified[0]["metadata"]["causation_depth"], 2);
    let enriched = events_of(&s, &t, "order.enriched").await;
    assert_eq!(enriched.len(), 1);
    let e = &enriched[0];
    assert_eq!(
        e["data"],
        json!({"order": "o-7", "type": "order.placed", "source": "shop",
            "nid": raw["event_nid"], "total": 42})
    );
    assert_eq!(e["event_source"], "function_execution");
    assert_eq!(e["aggregate_type"], "function");
    assert_eq!(
        e["id"],
        format!("func-gen-t-enrich-{}-0", raw["event_nid"]),
        "deterministic ids"
    );
    // The runs are recorded, with their log and what they sent.
    let ops = s.get("/activity/operations/function/enrich", &t).await.body;
    assert_eq!(ops[0]["status"], "completed", "{ops}");
    assert_eq!(ops[0]["logs"], json!(["enriching o-7"]));
    assert_eq!(ops[0]["result"], json!({"enriched": true, "id": e["id"]}));
    assert_eq!(ops[0]["emittedEvents"], json!([e["id"]]));

    // A replay maps the payload again: the function runs again.
    let r = s
        .post(&format!("/replay?nid={}", raw["nid"]), &t, json!({}))
        .await;
    assert_eq!(r.status, 202);
    eventually(5, "the replayed event's function", || async {
        (events_of(&s, &t, "order.enriched").await.len() == 2).then_some(())
    })
    .await;

    // Another organisation's event of the same type runs nothing of ours.
    s.post(
        "/events",
        &other,
        event("order.placed", "x", json!({"order": {"total": 1}})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(events_of(&s, &t, "order.enriched").await.len(), 2);
    assert!(events_of(&s, &other, "order.enriched").await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn hostile_functions_fail_alone_and_cascades_stop_at_depth_eight() {
    let s = TestServer::start_with(|c| {
        c.js_limits.deadline = Duration::from_millis(700);
    })
    .await;
    let (t, _) = s.user("fn-hostile", &["operator"], None).await;
    let scripts = [
        ("spin", "function spin() { while (true) {} }"),
        (
            "hog",
            "function hog() { const a = []; while (true) a.push(new Array(100000).fill(7)); }",
        ),
        ("deep", "function deep() { return deep(); }"),
        (
            "throws",
            "function throws() { throw new Error('refused: bad order'); }",
        ),
        ("broken", "function broken( {"),
        (
            "fine",
            "function fine(event) { sendEvent('probe.ok', {n: event.nid}); return {}; }",
        ),
        (
            "echo",
            "function echo(event) { sendEvent('loop', {}); return {}; }",
        ),
    ];
    for (name, script) in scripts {
        s.post("/functions", &t, json!({"name": name, "script": script}))
            .await;
        s.post(
            "/event-triggers",
            &t,
            trigger(&format!("t-{name}"), "probe", name),
        )
        .await;
    }
    // A function that triggers itself.
    s.post("/event-triggers", &t, trigger("t-loop", "loop", "echo"))
        .await;
    let r = s
        .post("/events", &t, event("probe", "p-1", json!({})))
        .await;
    assert_eq!(r.status, 201);
    // The server answers throughout.
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let at = Instant::now();
        let h = s
            .http
            .get(format!("{}/health", s.base))
            .send()
            .await
            .unwrap();
        assert!(h.status().is_success());
        worst = worst.max(at.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(worst < Duration::from_millis(200), "health took {worst:?}");
    // The well-behaved function on the same event ran.
    eventually(5, "the fine function's event", || async {
        (!events_of(&s, &t, "probe.ok").await.is_empty()).then_some(())
    })
    .await;
    let ops = eventually(10, "every hostile run recorded", || async {
        let ops = s.get("/activity/operations?limit=100", &t).await.body;
        let done = ops
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["eventType"] == "probe" && o["status"] != "pending")
            .count();
        (done == scripts.len()).then_some(ops)
    })
    .await;
    let error_of = |f: &str| {
        ops.as_array()
            .unwrap()
            .iter()
            .find(|o| o["function"] == f && o["eventType"] == "probe")
            .map(|o| {
                (
                    o["status"].clone(),
                    o["error"].as_str().unwrap_or("").to_owned(),
                )
            })
            .unwrap()
    };
    for (f, says) in [
        ("spin", "deadline"),
        ("hog", "out of memory"),
        ("deep", "stack"),
        ("throws", "refused: bad order"),
        ("broken", "script error"),
    ] {
        let (status, error) = error_of(f);
        assert_eq!(status, "failed", "{f}");
        assert!(error.to_lowercase().contains(says), "{f}: {error}");
    }
    assert_eq!(error_of("fine").0, "completed");
    let alerts = s.get("/activity/alerts", &t).await.body;
    let failed: Vec<&str> = alerts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "function")
        .map(|a| a["subject"].as_str().unwrap())
        .collect();
    for f in ["spin", "hog", "deep", "throws", "broken"] {
        assert!(failed.contains(&f), "{f} not in {alerts}");
    }

    // The self-triggering function: eight events deep, then refused.
    let loops = eventually(10, "the cascade to stop", || async {
        let n = events_of(&s, &t, "loop").await;
        (n.len() >= 8).then_some(n)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(events_of(&s, &t, "loop").await.len(), 8, "{loops:?}");
    let deepest = s.get("/activity/operations/trigger/t-loop", &t).await.body;
    assert!(
        deepest[0]["result"].is_object() && deepest[0]["causationDepth"] == 8,
        "{deepest}"
    );
    s.stop().await;
}

/// A chain task `{"handler": "function"}` (and a vareon `function:<name>`
/// step) runs a stored function on its input and takes what it returns.
#[tokio::test]
async fn a_function_task_runs_a_stored_function_on_its_input() {
    let s = TestServer::start().await;
    let (t, _) = s.user("fn-task", &["operator"], None).await;
    let script = "function double(x) { sendEvent('doubled', {n: x.n * 2}); return {n: x.n * 2}; }";
    s.post(
        "/functions",
        &t,
        json!({"name": "double", "script": script}),
    )
    .await;
    s.post(
        "/functions",
        &t,
        json!({"name": "grumpy", "script": "function grumpy() { throw new Error('not today'); }"}),
    )
    .await;
    let end = json!({"branches": [{"operator": "default", "goto": "end"}]});
    let chain = |name: &str| json!({"id": "f", "tasks": [{"id": "run", "handler": "function", "function": {"name": name}, "transition": end}]});
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": chain("double"), "input": {"n": 21}, "inputType": "json"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["output"], json!({"n": 42}));
    assert_eq!(r.body["outputType"], "json");
    let sent = events_of(&s, &t, "doubled").await;
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0]["id"].as_str().unwrap().starts_with("func-gen-"),
        "{sent:?}"
    );

    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": chain("grumpy"), "input": {}, "inputType": "json"}),
        )
        .await;
    assert_eq!(r.status, 500);
    assert!(r.body.to_string().contains("not today"), "{}", r.body);
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": chain("nope"), "input": {}, "inputType": "json"}),
        )
        .await;
    assert_eq!(r.status, 500);
    assert!(
        r.body.to_string().contains("function nope not found"),
        "{}",
        r.body
    );
    let r = s
        .post(
            "/tasks",
            &t,
            json!({"chain": {"id": "bad", "tasks": [{"id": "x", "handler": "function", "transition": end}]},
                "input": {}, "inputType": "json"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.to_string().contains("function.name"), "{}", r.body);
    s.stop().await;
}

/// A store written by a build that dispatched invocations behind a cursor
/// (in a second commit) may hold events whose functions never ran: the
/// first boot of this build runs each of them once, and later boots
/// dispatch nothing again.
#[tokio::test]
async fn events_an_older_build_left_undispatched_run_their_functions_once() {
    let s = TestServer::start().await;
    let (t, _) = s.user("fn-upgrade", &["operator"], None).await;
    let script = "function count(event) { return {n: event.nid}; }";
    let r = s
        .post("/functions", &t, json!({"name": "count", "script": script}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    s.post(
        "/event-triggers",
        &t,
        trigger("t-count", "old.kind", "count"),
    )
    .await;
    let r = s
        .post("/events", &t, event("old.kind", "a1", json!({"k": 1})))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let first = r.body["nid"].as_u64().unwrap();
    eventually(5, "the event's function ran", || async {
        (completed_nids(&s, &t).await == [first]).then_some(())
    })
    .await;

    // As an older build left it: two events after its cursor, without
    // their invocations, and no mark that the catch-up was done.
    let s = s
        .stop_edit_start(|data_dir| async move {
            let store =
                warden_storage::Store::open(&warden_storage::StoreConfig::new(data_dir)).unwrap();
            let stored: warden_domain::event::Event =
                store.get(&format!("{first:020}")).unwrap().unwrap();
            let mut writes = vec![
                warden_storage::Write::Meta {
                    name: "automation/dispatch_cursor".into(),
                    value: first.to_be_bytes().to_vec(),
                },
                warden_storage::Write::Meta {
                    name: "automation/invocations_inline".into(),
                    value: Vec::new(),
                },
            ];
            for nid in [first + 1, first + 2] {
                let mut e = stored.clone();
                e.nid = nid;
                e.key = format!("{nid:020}");
                e.id = format!("old-{nid}");
                writes.push(warden_storage::Write::insert(&e).unwrap());
            }
            store.commit(writes).await.unwrap();
            store.close();
        })
        .await;
    let t = s.login("fn-upgrade", "user-password-1").await;
    eventually(5, "the left events' functions ran", || async {
        (completed_nids(&s, &t).await == [first, first + 1, first + 2]).then_some(())
    })
    .await;
    // A later boot dispatches nothing again; new events still run theirs.
    let s = s.restart(|_| {}).await;
    let t = s.login("fn-upgrade", "user-password-1").await;
    let r = s
        .post("/events", &t, event("old.kind", "a2", json!({"k": 2})))
        .await;
    let last = r.body["nid"].as_u64().unwrap();
    eventually(5, "the new event's function ran", || async {
        (completed_nids(&s, &t).await.contains(&last)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        completed_nids(&s, &t).await,
        [first, first + 1, first + 2, last],
        "each event's function ran once"
    );
    s.stop().await;
}

/// The nids of the events whose function runs completed, sorted.
async fn completed_nids(s: &TestServer, t: &str) -> Vec<u64> {
    let ops = s.get("/activity/operations?limit=100", t).await.body;
    let mut nids: Vec<u64> = ops
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["status"] == "completed")
        .map(|o| o["eventNid"].as_u64().unwrap())
        .collect();
    nids.sort();
    nids
}
