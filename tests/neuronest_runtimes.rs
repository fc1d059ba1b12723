//! Neuronest runtimes (VAREON-NEURONEST.md §3B.1-9): a project's entry
//! point run by its language's interpreter as a confined process on a
//! port of its own, stopped, timed out, restarted with the server, and
//! the same runtime seen as an AIWM deployment.

mod common;

use std::time::Duration;

use common::{TestServer, alive, eventually};
use serde_json::{Value, json};

const SERVER: &str = r#"import http.server, os, sys
try:
    open("../escape.txt", "w").write("x")
    print("escaped", flush=True)
except OSError as e:
    print("no escape:", e.__class__.__name__, flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello " + os.environ.get("GREETING", "?")).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("listening on", os.environ["PORT"], flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

async fn file(s: &TestServer, t: &str, project: &str, path: &str, content: &str) {
    let r = s
        .post(
            &format!("/api/projects/{project}/files"),
            t,
            json!({"path": path, "content": content}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn runtime(s: &TestServer, t: &str, id: &str) -> Value {
    let r = s.get(&format!("/api/runtimes/{id}"), t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

async fn status(s: &TestServer, t: &str, id: &str, want: &str) -> Value {
    eventually(15, &format!("runtime {id} {want}"), || async {
        let r = runtime(s, t, id).await;
        (r["status"] == want).then_some(r)
    })
    .await
}

async fn logs(s: &TestServer, t: &str, id: &str) -> Vec<Value> {
    let r = s
        .get(&format!("/api/runtimes/{id}/logs?limit=1000"), t)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body.as_array().unwrap().clone()
}

fn pid_of(r: &Value) -> u64 {
    r["container_id"]
        .as_str()
        .and_then(|c| c.strip_prefix("proc-"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a process in {r}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_runs_its_project_confined_and_stops() {
    let s = TestServer::start_with(|c| c.exec.stop_grace_ms = 1000).await;
    let (t, user) = s.user("rtowner", &["operator"], None).await;
    file(&s, &t, "web", "main.py", SERVER).await;
    file(&s, &t, "web", "lib/notes.txt", "kept").await;
    let listed = s.get("/api/projects/web/files", &t).await;
    assert_eq!(
        listed.body,
        json!([{"path": "lib/notes.txt", "size": 4}, {"path": "main.py", "size": SERVER.len()}])
    );

    let r = s
        .post(
            "/api/runtimes",
            &t,
            json!({"project_id": "web", "language": "python", "entry_point": "main.py",
                   "environment_vars": {"GREETING": "from-env"}, "timeout": 300}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["status"], "created");
    assert_eq!(r.body["user_id"], user["id"]);
    for k in ["container_id", "port", "url"] {
        assert_eq!(r.body[k], Value::Null, "{k}");
    }
    assert_eq!(r.body["environment_vars"], json!({"GREETING": "from-env"}));

    let r = s
        .post(&format!("/api/runtimes/{id}/start"), &t, json!({}))
        .await;
    assert_eq!(r.body, json!({"message": "Runtime starting"}));
    let running = status(&s, &t, &id, "running").await;
    let url = running["url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("http://127.0.0.1:{}", running["port"]));
    let pid = pid_of(&running);
    let body = eventually(10, "the runtime answering", || async {
        let r = reqwest::get(&url).await.ok()?;
        r.text().await.ok()
    })
    .await;
    assert_eq!(body, "hello from-env", "its variables reached it");
    let lines = logs(&s, &t, &id).await;
    let text: Vec<String> = lines
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l["type"].as_str().unwrap(),
                l["message"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        text.iter().any(|l| l.starts_with("info started: process")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|l| l == "stdout no escape: PermissionError"),
        "confined: {text:?}"
    );
    assert!(
        !s.data_dir
            .join("runtimes")
            .join(&id)
            .join("escape.txt")
            .exists()
    );
    assert_eq!(lines[0]["runtime_id"], id.as_str());

    // A job of its user's, in vareon's view.
    let jobs = s.get("/api/myntrix/jobs/", &t).await.body;
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id.as_str())
        .unwrap_or_else(|| panic!("the runtime among {jobs}"));
    assert_eq!(
        (
            job["type"].as_str(),
            job["status"].as_str(),
            job["progress"].as_u64()
        ),
        (Some("runtime"), Some("running"), Some(0))
    );
    assert!(
        job["logs"].as_str().unwrap().contains("started: process"),
        "{job}"
    );

    // The same deployment through AIWM.
    let d = s.get(&format!("/api/deployments/{id}"), &t).await;
    assert_eq!(d.status, 200, "{}", d.body);
    assert_eq!(d.body["deploymentType"], "runtime");
    assert_eq!(d.body["status"], "running");
    let r = s
        .put(&format!("/api/deployments/{id}"), &t, json!({"name": "x"}))
        .await;
    assert_eq!(r.status, 409, "changed through neuronest only: {}", r.body);

    let r = s
        .post(&format!("/api/runtimes/{id}/stop"), &t, json!({}))
        .await;
    assert_eq!(r.body, json!({"message": "Runtime stopped"}));
    assert!(!alive(pid), "stop answers once the process is gone");
    let stopped = runtime(&s, &t, &id).await;
    assert_eq!(stopped["status"], "stopped");
    for k in ["container_id", "port", "url"] {
        assert_eq!(stopped[k], Value::Null, "{k}");
    }

    // Restarted: a new process, the log goes on.
    let r = s
        .post(&format!("/api/runtimes/{id}/restart"), &t, json!({}))
        .await;
    assert_eq!(r.body, json!({"message": "Runtime restarting"}));
    let again = status(&s, &t, &id, "running").await;
    assert_ne!(pid_of(&again), pid);
    assert!(!alive(pid));
    let before = lines.len();
    assert!(logs(&s, &t, &id).await.len() > before, "the log goes on");
    s.post(&format!("/api/runtimes/{id}/stop"), &t, json!({}))
        .await;
    status(&s, &t, &id, "stopped").await;

    // Changed while stopped: shown at once, used by the next start.
    file(
        &s,
        &t,
        "web",
        "exit3.py",
        "import sys\nprint('bye')\nsys.exit(3)\n",
    )
    .await;
    let r = s
        .put(
            &format!("/api/runtimes/{id}"),
            &t,
            json!({"entry_point": "exit3.py", "environment_vars": {}, "timeout": 60}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["entry_point"], "exit3.py");
    assert_eq!(r.body["environment_vars"], json!({}));
    s.post(&format!("/api/runtimes/{id}/start"), &t, json!({}))
        .await;
    status(&s, &t, &id, "failed").await;
    let text: Vec<String> = logs(&s, &t, &id)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert!(text.iter().any(|l| l.contains("exit code 3")), "{text:?}");

    // Deleted: 404 everywhere after.
    let r = s.delete(&format!("/api/runtimes/{id}"), &t).await;
    assert_eq!(r.body, json!({"message": "Runtime deleted successfully"}));
    for path in [
        format!("/api/runtimes/{id}"),
        format!("/api/runtimes/{id}/logs"),
    ] {
        let r = s.get(&path, &t).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.body, json!({"detail": "Runtime not found"}));
    }
    assert!(
        !s.data_dir.join("runtimes").join(&id).exists(),
        "its files went"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_exits_and_missing_interpreters_end_runs() {
    let s = TestServer::start_with(|c| {
        c.exec.stop_grace_ms = 500;
        c.runtimes.languages.insert(
            "ruby".into(),
            vec!["ruby-not-installed".into(), "{entry}".into()],
        );
    })
    .await;
    let t = s.admin_token.clone();
    file(&s, &t, "jobs", "slow.py", "import time\ntime.sleep(1000)\n").await;
    file(&s, &t, "jobs", "ok.py", "print('done')\n").await;
    file(&s, &t, "jobs", "app.rb", "puts 1\n").await;
    let make = |entry: &str, language: &str, timeout: u64| json!({"project_id": "jobs", "language": language, "entry_point": entry, "timeout": timeout});
    let slow = s
        .post("/api/runtimes", &t, make("slow.py", "python", 2))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ok = s
        .post("/api/runtimes", &t, make("ok.py", "python", 60))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rb = s
        .post("/api/runtimes", &t, make("app.rb", "ruby", 60))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for id in [&slow, &ok, &rb] {
        s.post(&format!("/api/runtimes/{id}/start"), &t, json!({}))
            .await;
    }
    let started = std::time::Instant::now();
    status(&s, &t, &ok, "stopped").await;
    status(&s, &t, &rb, "failed").await;
    let text: Vec<String> = logs(&s, &t, &rb)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        text.contains(&"ruby-not-installed not found".to_owned()),
        "{text:?}"
    );
    status(&s, &t, &slow, "failed").await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "killed at its deadline"
    );
    let text: Vec<String> = logs(&s, &t, &slow)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert!(text.iter().any(|l| l.contains("timeout")), "{text:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_runtime_runs_again_after_a_server_restart() {
    let s = TestServer::start().await;
    let t = s.admin_token.clone();
    file(&s, &t, "svc", "main.py", SERVER).await;
    let id = s
        .post(
            "/api/runtimes",
            &t,
            json!({"project_id": "svc", "language": "python", "entry_point": "main.py"}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(&format!("/api/runtimes/{id}/start"), &t, json!({}))
        .await;
    let first = pid_of(&status(&s, &t, &id, "running").await);
    let s = s.restart(|_| {}).await;
    let t = s.admin_token.clone();
    let again = eventually(15, "running with a new process", || async {
        let r = runtime(&s, &t, &id).await;
        (r["status"] == "running" && pid_of(&r) != first).then_some(r)
    })
    .await;
    assert!(!alive(first), "the old process is gone");
    let text: Vec<String> = logs(&s, &t, &id)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        text.iter().any(|l| l.starts_with("started again")),
        "{text:?}"
    );
    // Deleted while running, through neuronest: the process goes, then the files.
    let other = s
        .post(
            "/api/runtimes",
            &t,
            json!({"project_id": "svc", "language": "python", "entry_point": "main.py"}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(&format!("/api/runtimes/{other}/start"), &t, json!({}))
        .await;
    let running_pid = pid_of(&status(&s, &t, &other, "running").await);
    let r = s.delete(&format!("/api/runtimes/{other}"), &t).await;
    assert_eq!(r.body, json!({"message": "Runtime deleted successfully"}));
    assert!(!alive(running_pid), "killed before the answer");
    assert!(!s.data_dir.join("runtimes").join(&other).exists());
    assert_eq!(
        s.get(&format!("/api/runtimes/{other}/logs"), &t)
            .await
            .status,
        404
    );
    assert_eq!(
        s.post(&format!("/api/runtimes/{other}/start"), &t, json!({}))
            .await
            .status,
        404
    );

    // Stopped and deleted through AIWM: the same runtime.
    let r = s
        .post(&format!("/api/deployments/{id}/stop"), &t, json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["deployment"]["status"], "stopped");
    assert!(!alive(pid_of(&again)));
    assert_eq!(runtime(&s, &t, &id).await["status"], "stopped");
    let r = s.delete(&format!("/api/deployments/{id}"), &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.get(&format!("/api/runtimes/{id}"), &t).await.status, 404);
    s.stop().await;
}

#[tokio::test]
async fn runtimes_refuse_bad_input_and_other_users() {
    let s = TestServer::start().await;
    let (t, _) = s.user("rtcheck", &["operator"], None).await;
    let (other, _) = s.user("rtother", &["operator"], None).await;
    file(&s, &t, "mine", "main.py", "print(1)\n").await;
    let good = json!({"project_id": "mine", "language": "python", "entry_point": "main.py", "timeout": 10});
    let id = s.post("/api/runtimes", &t, good.clone()).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    for bad in [
        with("language", json!("cobol")),
        with("entry_point", json!("../../etc/passwd")),
        with("entry_point", json!("/bin/sh")),
        with("entry_point", json!("a/../../x")),
        with("environment_vars", json!({"LD_PRELOAD": "/x.so"})),
        with("environment_vars", json!({"1BAD": "x"})),
        with("timeout", json!(0)),
        with("timeout", json!(10_000_000)),
        with("timeout", json!("10")),
        json!({"language": "python", "entry_point": "main.py"}),
    ] {
        let r = s.post("/api/runtimes", &t, bad.clone()).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
        assert!(r.body["detail"].is_array(), "{}", r.body);
    }
    // Another organisation's project, or one that has no files: 404.
    let r = s.post("/api/runtimes", &other, good.clone()).await;
    assert_eq!(r.status, 404, "{}", r.body);
    for path in ["../x", "/etc/passwd", "a/../../b"] {
        let r = s
            .post(
                "/api/projects/mine/files",
                &t,
                json!({"path": path, "content": "x"}),
            )
            .await;
        assert_eq!(r.status, 422, "{path}: {}", r.body);
    }
    for (method, path) in [
        (reqwest::Method::GET, format!("/api/runtimes/{id}")),
        (reqwest::Method::PUT, format!("/api/runtimes/{id}")),
        (reqwest::Method::DELETE, format!("/api/runtimes/{id}")),
        (reqwest::Method::POST, format!("/api/runtimes/{id}/start")),
        (reqwest::Method::POST, format!("/api/runtimes/{id}/stop")),
        (reqwest::Method::POST, format!("/api/runtimes/{id}/restart")),
        (reqwest::Method::GET, format!("/api/runtimes/{id}/logs")),
    ] {
        let r = s.call(method, &path, Some(&other), Some(json!({}))).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    assert_eq!(s.get("/api/runtimes", &other).await.body, json!([]));
    let mine = s
        .get("/api/runtimes?language=python&status=created", &t)
        .await;
    assert_eq!(mine.body.as_array().unwrap().len(), 1);
    assert_eq!(
        s.get("/api/runtimes?project_id=nope", &t).await.body,
        json!([])
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_runtime_keeps_only_its_log_ring() {
    let s = TestServer::start_with(|c| {
        c.exec.stop_grace_ms = 500;
        c.exec.log_lines = 1000;
    })
    .await;
    let t = s.admin_token.clone();
    file(
        &s,
        &t,
        "flood",
        "main.py",
        "import sys\nwhile True:\n    sys.stdout.write('flood-line ' + 'x' * 60 + '\\n')\n",
    )
    .await;
    let id = s
        .post(
            "/api/runtimes",
            &t,
            json!({"project_id": "flood", "language": "python", "entry_point": "main.py"}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(&format!("/api/runtimes/{id}/start"), &t, json!({}))
        .await;
    status(&s, &t, &id, "running").await;
    let mut slowest = Duration::ZERO;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let at = std::time::Instant::now();
        let r = s
            .http
            .get(format!("{}/health", s.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        slowest = slowest.max(at.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "the server stays responsive: {slowest:?}"
    );
    s.post(&format!("/api/runtimes/{id}/stop"), &t, json!({}))
        .await;
    let kept = logs(&s, &t, &id).await;
    assert!(
        kept.len() > 500 && kept.len() <= 1600,
        "the ring of 1,000 lines (trimmed every 500): {}",
        kept.len()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_in_a_project_is_not_followed() {
    let s = TestServer::start().await;
    let t = s.admin_token.clone();
    let probe = format!(
        "import os\nprint('link:', os.path.exists('secret'), flush=True)\nfor name, path in [('shadow', '/etc/shadow'), ('warden', '/proc/{}/environ'), ('keys', '{}')]:\n    try:\n        open(path).read()\n        print(name + ': read', flush=True)\n    except OSError as e:\n        print(name + ':', e.__class__.__name__, flush=True)\ntry:\n    os.listdir('{}')\n    print('db: listed', flush=True)\nexcept OSError as e:\n    print('db:', e.__class__.__name__, flush=True)\ntry:\n    open('/tmp/warden-runtime-escape', 'w').write('x')\n    print('tmp: written', flush=True)\nexcept OSError as e:\n    print('tmp:', e.__class__.__name__, flush=True)\n",
        std::process::id(),
        s.data_dir.join("secrets/jwt-keys").display(),
        s.data_dir.join("db").display(),
    );
    file(&s, &t, "links", "main.py", &probe).await;
    // Someone with the host's disk put a link in the project.
    let user = s.get("/api/users/me", &t).await.body;
    let org = user["org_id"]
        .as_str()
        .or(user["orgId"].as_str())
        .map(str::to_owned);
    let projects = s.data_dir.join("projects");
    let dir = std::fs::read_dir(&projects)
        .unwrap()
        .map(|e| e.unwrap().path().join("links"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("the project under {} ({org:?})", projects.display()));
    std::os::unix::fs::symlink("/etc/shadow", dir.join("secret")).unwrap();
    let id = s
        .post(
            "/api/runtimes",
            &t,
            json!({"project_id": "links", "language": "python", "entry_point": "main.py"}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(&format!("/api/runtimes/{id}/start"), &t, json!({}))
        .await;
    status(&s, &t, &id, "stopped").await;
    let text: Vec<String> = logs(&s, &t, &id)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        text.contains(&"link: False".to_owned()),
        "the link was not copied: {text:?}"
    );
    for refused in ["db: PermissionError", "tmp: PermissionError"] {
        assert!(text.contains(&refused.to_owned()), "{refused}: {text:?}");
    }
    assert!(!text.contains(&"keys: read".to_owned()), "{text:?}");
    if unsafe { libc::geteuid() } == 0 {
        // As root only Landlock stands between it and the file.
        assert!(
            text.contains(&"shadow: PermissionError".to_owned()),
            "{text:?}"
        );
        assert!(
            text.contains(&"warden: PermissionError".to_owned()),
            "Warden's own environment is closed to it: {text:?}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_and_a_fork_bomb_stop_at_their_caps() {
    let s = TestServer::start_with(|c| {
        c.exec.stop_grace_ms = 500;
        c.exec.groups = warden_actors::process::cgroup::GroupLimits {
            max_pids: 32,
            memory_bytes: 96 << 20,
        };
    })
    .await;
    let t = s.admin_token.clone();
    file(
        &s,
        &t,
        "caps",
        "hog.py",
        "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n",
    )
    .await;
    file(
        &s,
        &t,
        "caps",
        "bomb.py",
        "import os, time\nkids = 0\nfor i in range(500):\n    try:\n        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n        kids += 1\n    except OSError:\n        print('fork refused after', kids, flush=True)\n        break\nos._exit(0)\n",
    )
    .await;
    let make = |entry: &str| json!({"project_id": "caps", "language": "python", "entry_point": entry, "timeout": 60});
    let hog = s.post("/api/runtimes", &t, make("hog.py")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bomb = s.post("/api/runtimes", &t, make("bomb.py")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(&format!("/api/runtimes/{hog}/start"), &t, json!({}))
        .await;
    let hog_log = eventually(20, "the hog ended", || async {
        let r = runtime(&s, &t, &hog).await;
        if r["status"] == "running" || r["status"] == "starting" {
            return None;
        }
        Some(logs(&s, &t, &hog).await)
    })
    .await;
    let text: Vec<String> = hog_log
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    if text.iter().any(|l| l.contains("no control groups")) {
        eprintln!("skipped: this host lets Warden make no control groups");
        s.stop().await;
        return;
    }
    assert_eq!(runtime(&s, &t, &hog).await["status"], "failed");
    assert!(text.iter().any(|l| l.contains("memory limit")), "{text:?}");

    s.post(&format!("/api/runtimes/{bomb}/start"), &t, json!({}))
        .await;
    let text = eventually(20, "the bomb refused", || async {
        let text: Vec<String> = logs(&s, &t, &bomb)
            .await
            .iter()
            .map(|l| l["message"].as_str().unwrap().to_owned())
            .collect();
        text.iter()
            .any(|l| l.starts_with("fork refused after"))
            .then_some(text)
    })
    .await;
    let line = text
        .iter()
        .find(|l| l.starts_with("fork refused after"))
        .unwrap();
    let kids: u32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(kids < 32, "the cap held: {line}");
    let at = std::time::Instant::now();
    assert!(
        s.http
            .get(format!("{}/health", s.base))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert!(at.elapsed() < Duration::from_millis(500));
    s.stop().await;
}
