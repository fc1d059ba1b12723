//! Vareon scheduled tasks through the real server (WORKFLOWS.md §5.10):
//! a schedule fires its workflow, `run` starts it at once, a disabled one
//! never fires, a bad cron is a 422, and an occurrence missed while the
//! server was down fires once after the restart.

mod common;

use std::time::Duration;

use common::{TestServer, eventually};
use serde_json::{Value, json};

async fn workflow(s: &TestServer, t: &str) -> String {
    let steps = json!([{"id": "a", "handler": "noop",
        "transition": {"branches": [{"operator": "default", "goto": "end"}]}}])
    .to_string();
    let r = s
        .post(
            "/api/neosyntis/workflows/",
            t,
            json!({"name": "nightly", "steps": steps}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn history(s: &TestServer, t: &str, id: &str) -> Vec<Value> {
    let r = s.get(&format!("/api/myntrix/tasks/history/{id}"), t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body.as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn schedules_fire_their_workflow_run_on_demand_and_stop_when_disabled() {
    let s = TestServer::start().await;
    let (t, _) = s.user("sched", &["operator"], None).await;
    let (other, _) = s.user("sched-outsider", &["operator"], None).await;
    let w = workflow(&s, &t).await;

    for bad in [
        json!({"name": "x", "schedule": "61 * * * *", "action": {}}),
        json!({"name": "x", "schedule": "* * *", "action": {}}),
        json!({"name": "x", "action": {}}),
        json!({"name": "x", "schedule": "* * * * *", "action": "run it"}),
    ] {
        let r = s.post("/api/myntrix/tasks/", &t, bad.clone()).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
        assert!(r.body["detail"].is_string(), "{}", r.body);
    }

    // Every second (six fields: seconds first).
    let r = s
        .post(
            "/api/myntrix/tasks/",
            &t,
            json!({"name": "tick", "schedule": "* * * * * *",
                "action": {"type": "workflow", "workflow_id": w}, "enabled": true}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["schedule"], "* * * * * *");
    assert_eq!(r.body["action"]["workflow_id"], w);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let runs = eventually(5, "a scheduled run", || async {
        let h = history(&s, &t, &id).await;
        h.iter().any(|r| r["status"] == "completed").then_some(h)
    })
    .await;
    assert_eq!(runs[0]["task_id"], id.as_str());
    assert!(runs[0]["start_time"].is_string());
    let status = s
        .get(&format!("/api/neosyntis/workflows/{w}/status"), &t)
        .await;
    assert_eq!(status.body["status"], "completed", "{}", status.body);
    // The run is an execution like any other.
    let x = s
        .get(
            &format!("/api/executions/{}", runs[0]["id"].as_str().unwrap()),
            &t,
        )
        .await;
    assert_eq!(x.status, 200, "{}", x.body);

    // Disabled: no more fires.
    let r = s
        .put(
            &format!("/api/myntrix/tasks/{id}"),
            &t,
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["enabled"], false);
    assert_eq!(r.body["name"], "tick", "a PUT changes only what it names");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = history(&s, &t, &id).await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        history(&s, &t, &id).await.len(),
        before,
        "a disabled schedule fired"
    );

    // Run now: the run at once, in the history.
    let r = s
        .post(&format!("/api/myntrix/tasks/{id}/run"), &t, json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        matches!(r.body["status"].as_str(), Some("running" | "completed")),
        "{}",
        r.body
    );
    assert_eq!(history(&s, &t, &id).await[0]["id"], r.body["id"]);

    // A schedule whose workflow is gone: failed runs saying why.
    let r = s
        .post(
            "/api/myntrix/tasks/",
            &t,
            json!({"name": "orphan", "schedule": "* * * * *", "action": {"type": "workflow", "workflow_id": "nope"}}),
        )
        .await;
    let orphan = r.body["id"].as_str().unwrap().to_owned();
    let r = s
        .post(&format!("/api/myntrix/tasks/{orphan}/run"), &t, json!({}))
        .await;
    assert_eq!(r.body["status"], "failed", "{}", r.body);
    assert!(r.body["logs"].as_str().unwrap().contains("nope"));

    // Private to the organisation; deleted is gone.
    assert_eq!(
        s.get(&format!("/api/myntrix/tasks/{id}"), &other)
            .await
            .status,
        404
    );
    assert_eq!(s.get("/api/myntrix/tasks/", &other).await.body, json!([]));
    assert_eq!(
        s.get("/api/myntrix/tasks/", &t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.delete(&format!("/api/myntrix/tasks/{id}"), &t)
            .await
            .status,
        204
    );
    assert_eq!(
        s.get(&format!("/api/myntrix/tasks/{id}"), &t).await.status,
        404
    );
    s.stop().await;
}

#[tokio::test]
async fn an_occurrence_missed_while_down_fires_once_after_the_restart() {
    let s = TestServer::start().await;
    let (t, _) = s.user("sched-restart", &["operator"], None).await;
    let w = workflow(&s, &t).await;
    // One occurrence a year, two seconds from now.
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let cron = at.format("%S %M %H %d %m *").to_string();
    let r = s
        .post(
            "/api/myntrix/tasks/",
            &t,
            json!({"name": "once", "schedule": cron, "action": {"type": "workflow", "workflow_id": w}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    // Down across the occurrence.
    let s = s.restart_after(Duration::from_secs(3), |_| {}).await;
    let t = s.login("sched-restart", "user-password-1").await;
    let runs = eventually(5, "the missed fire", || async {
        let h = history(&s, &t, &id).await;
        (!h.is_empty()).then_some(h)
    })
    .await;
    assert_eq!(runs.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(history(&s, &t, &id).await.len(), 1, "fired twice");
    // Its key names the occurrence: a repeated fire would find it.
    let x = s
        .get(
            &format!("/api/executions/{}", runs[0]["id"].as_str().unwrap()),
            &t,
        )
        .await;
    let key = x.body["executionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(key.starts_with(&format!("sched-{id}-")), "{}", x.body);
    s.stop().await;
}
