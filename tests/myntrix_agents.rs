//! Vareon's myntrix agents (VAREON-NEURONEST.md §3B.10-11): process
//! agents run as supervised, confined processes that are restarted when
//! they die, fail past their restart limit and never outlive a stop;
//! logical agents are the core agents switched active and inactive.

mod common;

use std::time::Duration;

use common::{TestServer, alive, eventually};
use serde_json::{Value, json};
use warden::config::ServerConfig;
use warden_supervisors::RestartPolicy;

fn agents(c: &mut ServerConfig) {
    c.agent_policy = RestartPolicy {
        max_restarts: 2,
        within: Duration::from_secs(60),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(100),
    };
    c.exec.stop_grace_ms = 500;
    c.enable_fault_injection = true;
}

fn kill(pid: u64) {
    // SAFETY: a signal to a process this test's server started.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

async fn agent(s: &TestServer, t: &str, id: &str) -> Value {
    let r = s.get(&format!("/api/myntrix/agents/{id}"), t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// Waits for the agent to run a process other than `not`; its pid.
async fn running(s: &TestServer, t: &str, id: &str, not: u64) -> u64 {
    eventually(10, "the agent running a new process", || async {
        let a = agent(s, t, id).await;
        let pid = a["pid"].as_u64()?;
        (a["status"] == "running" && pid != not && alive(pid)).then_some(pid)
    })
    .await
}

const SLEEPER: &str = "echo hello-agent; exec sleep 1000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_agent_is_supervised_from_start_to_delete() {
    let s = TestServer::start_with(agents).await;
    let (t, user) = s.user("agentops", &["operator"], None).await;
    let r = s
        .post(
            "/api/myntrix/agents/",
            &t,
            json!({"name": "Worker", "type": "worker", "status": "stopped",
                   "configuration": {"command": ["/bin/sh", "-c", SLEEPER], "cwd": "run"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["status"], "stopped");
    assert_eq!(r.body["health"], 100);
    assert_eq!(r.body["owner_id"], user["id"]);
    assert_eq!(r.body["type"], "worker");
    assert_eq!(r.body["last_run"], Value::Null);

    let r = s
        .post(&format!("/api/myntrix/agents/{id}/start"), &t, json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "running");
    assert!(r.body["last_run"].is_string());
    let first = running(&s, &t, &id, 0).await;
    let aiwm = s.get(&format!("/api/agents/{id}"), &t).await;
    assert_eq!(aiwm.body["status"], "active", "the same agent through AIWM");

    let jobs = s.get("/api/myntrix/jobs/", &t).await.body;
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == id.as_str() && j["type"] == "agent" && j["status"] == "running"),
        "{jobs}"
    );

    // Killed from outside: restarted, counted against its health.
    kill(first);
    let second = running(&s, &t, &id, first).await;
    assert_eq!(agent(&s, &t, &id).await["health"], 75);
    let tree = s.get("/admin/actors", &s.admin_token).await.body;
    let sup = common::find_actor(&tree, "agents").expect("an agents supervisor");
    let actor = sup["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["entityId"] == id.as_str())
        .expect("the agent's actor");
    assert!(actor["restartCount"].as_u64().unwrap() >= 1, "{actor}");
    assert_eq!(
        actor["detail"]["pid"], second,
        "the tree shows the process: {actor}"
    );

    // Past its restart limit: failed, health 0.
    kill(second);
    let third = running(&s, &t, &id, second).await;
    kill(third);
    let failed = eventually(10, "the agent failed", || async {
        let a = agent(&s, &t, &id).await;
        (a["status"] == "failed").then_some(a)
    })
    .await;
    assert_eq!(failed["health"], 0);
    assert!(failed["failure"].is_string(), "{failed}");
    assert_eq!(
        s.get(&format!("/api/agents/{id}"), &t).await.body["status"],
        "inactive"
    );

    // Restarted by hand: a new process.
    let r = s
        .post(&format!("/api/myntrix/agents/{id}/restart"), &t, json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let fourth = running(&s, &t, &id, third).await;

    // Stopped: the process goes, and so would any it started.
    let r = s
        .post(&format!("/api/myntrix/agents/{id}/stop"), &t, json!({}))
        .await;
    assert_eq!(r.body["status"], "stopped", "{}", r.body);
    eventually(5, "the process gone", || async {
        (!alive(fourth)).then_some(())
    })
    .await;

    // Deleted while running: the process goes first.
    let r = s
        .put(
            &format!("/api/myntrix/agents/{id}"),
            &t,
            json!({"status": "running"}),
        )
        .await;
    assert_eq!(r.body["status"], "running", "{}", r.body);
    let fifth = running(&s, &t, &id, fourth).await;
    let r = s.delete(&format!("/api/myntrix/agents/{id}"), &t).await;
    assert_eq!(r.status, 204);
    eventually(5, "the process gone", || async {
        (!alive(fifth)).then_some(())
    })
    .await;
    assert_eq!(
        s.get(&format!("/api/myntrix/agents/{id}"), &t).await.status,
        404
    );
    let work = s.data_dir.join("agents").join(&id).join("run");
    assert!(work.is_dir(), "it ran in its own dir");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_or_a_server_restart_leaves_no_orphan() {
    let s = TestServer::start_with(agents).await;
    let t = s.admin_token.clone();
    let r = s
        .post(
            "/api/myntrix/agents/",
            &t,
            json!({"name": "Daemon", "type": "daemon", "status": "running",
                   "configuration": {"command": ["/bin/sh", "-c", SLEEPER]}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let first = running(&s, &t, &id, 0).await;
    let r = s
        .post(&format!("/admin/actors/agent:{id}/crash"), &t, json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let second = running(&s, &t, &id, first).await;
    assert!(!alive(first), "the crashed actor's process went with it");

    let s = s.restart(agents).await;
    let t = s.admin_token.clone();
    let third = running(&s, &t, &id, second).await;
    assert!(!alive(second), "no leftover of the earlier run");
    assert!(third != second);
    s.stop().await;
    assert!(!alive(third), "a stopped server leaves no process behind");
}

#[tokio::test]
async fn logical_agents_switch_and_bad_input_is_refused() {
    let s = TestServer::start().await;
    let (t, _) = s.user("logicalops", &["operator"], None).await;
    let (other, _) = s.user("otherorg", &["operator"], None).await;
    let r = s
        .post(
            "/api/myntrix/agents",
            &t,
            json!({"name": "Helper", "type": "assistant", "status": "running",
                   "configuration": {"model": "mistral"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["status"], "running");
    assert_eq!(r.body["configuration"], json!({"model": "mistral"}));
    assert_eq!(
        s.get(&format!("/api/agents/{id}"), &t).await.body["status"],
        "active"
    );
    let r = s
        .post(&format!("/api/myntrix/agents/{id}/stop"), &t, json!({}))
        .await;
    assert_eq!(r.body["status"], "stopped");
    assert_eq!(
        s.get(&format!("/api/agents/{id}"), &t).await.body["status"],
        "inactive"
    );
    let list = s.get("/api/myntrix/agents/?limit=5", &t).await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);

    for bad in [
        json!({"name": "x", "configuration": {"command": "python3 bot.py"}}),
        json!({"name": "x", "configuration": {"command": []}}),
        json!({"name": "x", "configuration": {"command": ["a"], "cwd": "../x"}}),
        json!({"name": "x", "configuration": {"command": ["a"], "cwd": "/etc"}}),
        json!({"name": "x", "configuration": "str"}),
        json!({"type": "x"}),
    ] {
        let r = s.post("/api/myntrix/agents/", &t, bad.clone()).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    for (method, path) in [
        (reqwest::Method::GET, format!("/api/myntrix/agents/{id}")),
        (reqwest::Method::PUT, format!("/api/myntrix/agents/{id}")),
        (reqwest::Method::DELETE, format!("/api/myntrix/agents/{id}")),
        (
            reqwest::Method::POST,
            format!("/api/myntrix/agents/{id}/start"),
        ),
        (
            reqwest::Method::POST,
            format!("/api/myntrix/agents/{id}/stop"),
        ),
        (
            reqwest::Method::POST,
            format!("/api/myntrix/agents/{id}/restart"),
        ),
    ] {
        let r = s.call(method, &path, Some(&other), Some(json!({}))).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    assert_eq!(s.get("/api/myntrix/agents/", &other).await.body, json!([]));
    s.stop().await;
}
