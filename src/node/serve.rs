//! `deployment.create` / `deployment.stop`: a model served by a
//! supervised child process on this node.
//!
//! The process comes from a runtime template for the model's framework
//! (`--runtime FRAMEWORK=TEMPLATE`, `*` for any): the template is split
//! into words first and `{modelPath}`, `{modelDir}`, `{port}` and
//! `{host}` are replaced inside each word, so a path with spaces stays
//! one argument and nothing goes through a shell. The child gets its own
//! process group and dies with the daemon (parent-death signal); its
//! output lines become `deployment.logs`. The start is done when the
//! endpoint answers HTTP. A child that exits is restarted (at most
//! [`MAX_RESTARTS`] in [`RESTART_WINDOW`], each a `deployment.status`
//! `restarting`), then given up (`failed`). `deployment.stop` sends
//! SIGTERM to the group, then SIGKILL after `timeoutSeconds`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch};
use warden_actors::node::protocol::{Envelope, kinds};

use super::commands::Out;
use super::download::failure;

pub const MAX_RESTARTS: usize = 3;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// The served deployments of this node, by deployment id.
#[derive(Clone, Default)]
pub struct Served {
    inner: Arc<Mutex<HashMap<String, Handle>>>,
}

#[derive(Clone)]
struct Handle {
    endpoint: String,
    port: u16,
    name: String,
    /// Tells the supervising task to stop (the value: grace period).
    stop: watch::Sender<Option<Duration>>,
    done: watch::Receiver<bool>,
}

/// Everything a deployment needs from the daemon's configuration.
#[derive(Debug, Clone)]
pub struct Runtimes {
    pub templates: HashMap<String, String>,
    /// The host name or address endpoints are advertised with.
    pub advertise: String,
    /// The ONNX Runtime library for the built-in `onnx` runtime.
    pub ort_library: Option<std::path::PathBuf>,
    /// How often a served endpoint is health-checked (ms): the server's
    /// heartbeat interval, at most 10 s.
    pub health_every_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// The built-in runtime of framework `onnx`: this binary's `serve-model`.
const ONNX_BUILT_IN: &str = "{self} serve-model --model {modelPath} --port {port} --host {host}";

impl Runtimes {
    /// `FRAMEWORK=TEMPLATE` entries.
    pub fn parse(entries: &[String], advertise: String) -> anyhow::Result<Runtimes> {
        let mut templates = HashMap::new();
        for e in entries {
            let (k, v) = e
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--runtime wants FRAMEWORK=TEMPLATE, got {e}"))?;
            if v.split_whitespace().next().is_none() {
                anyhow::bail!("--runtime {k}: the template is empty");
            }
            templates.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        Ok(Runtimes {
            templates,
            advertise,
            ort_library: None,
            health_every_ms: Arc::new(std::sync::atomic::AtomicU64::new(10_000)),
        })
    }
}

/// The argv of a template with its placeholders filled, word by word.
pub fn argv(template: &str, vars: &[(&str, &str)]) -> Vec<String> {
    template
        .split_whitespace()
        .map(|word| {
            vars.iter().fold(word.to_owned(), |w, (k, v)| {
                w.replace(&format!("{{{k}}}"), v)
            })
        })
        .collect()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(
    argv: &[String],
    dir: &Path,
    port: u16,
    model: &Path,
    ort: Option<&Path>,
) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("LANG", "C.UTF-8")
        .env("PORT", port.to_string())
        .env("MODEL_PATH", model)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    if let Some(lib) = ort {
        cmd.env("ORT_DYLIB_PATH", lib);
    }
    // SAFETY: prctl only sets this process's parent-death signal; it is
    // async-signal-safe and runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn status_frame(id: &str, status: &str, extra: Value) -> Out {
    let mut data = json!({"deploymentId": id, "status": status});
    if let (Value::Object(d), Value::Object(e)) = (&mut data, extra) {
        d.extend(e);
    }
    Out::Event(Envelope::new(kinds::DEPLOYMENT_STATUS, data))
}

/// Forwards a child's output lines as `deployment.logs`.
fn pipe_logs(
    id: String,
    out: mpsc::UnboundedSender<Out>,
    reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    level: &'static str,
    tail: Arc<Mutex<Vec<String>>>,
) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            {
                let mut t = tail.lock().expect("never poisoned");
                t.push(line.clone());
                if t.len() > 20 {
                    t.remove(0);
                }
            }
            let data = json!({"deploymentId": id, "logs": [{
                "timestamp": warden_actors::node::protocol::iso_now(),
                "level": level,
                "message": line,
            }]});
            let _ = out.send(Out::Event(Envelope::new(kinds::DEPLOYMENT_LOGS, data)));
        }
    });
}

/// Waits until the endpoint answers HTTP, the child exits, or time is up.
async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    child: &mut tokio::process::Child,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the model server exited during start ({status})"));
        }
        if let Ok(r) = http.get(url).timeout(Duration::from_secs(2)).send().await
            && r.status().as_u16() < 500
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("the model server did not answer at {url} in time"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Signals the whole process group of a child.
fn signal_group(child: &tokio::process::Child, signal: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill with a negative pid signals that process group only.
        unsafe {
            libc::kill(-(pid as i32), signal);
        }
    }
}

/// Runs `deployment.create`.
pub async fn create(
    runtimes: &Runtimes,
    served: &Served,
    settings: &super::download::Settings,
    data: &Value,
    resource_id: &str,
    out: mpsc::UnboundedSender<Out>,
) -> Result<Value, Value> {
    let id = data["deploymentId"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or(resource_id)
        .to_owned();
    if id.is_empty() {
        return Err(failure("INVALID_DEPLOYMENT", "no deploymentId"));
    }
    let existing = served
        .inner
        .lock()
        .expect("never poisoned")
        .get(&id)
        .cloned();
    if let Some(h) = existing.filter(|h| !*h.done.borrow()) {
        return Ok(
            json!({"endpoint": h.endpoint, "containerPort": h.port, "containerName": h.name, "alreadyRunning": true}),
        );
    }
    let framework = data["framework"].as_str().unwrap_or_default();
    let template = runtimes
        .templates
        .get(framework)
        .map(String::as_str)
        .or((framework == "onnx").then_some(ONNX_BUILT_IN))
        .or_else(|| runtimes.templates.get("*").map(String::as_str))
        .ok_or_else(|| {
            failure(
                "UNSUPPORTED_FRAMEWORK",
                format!("no runtime for framework '{framework}' on this node (configure --runtime {framework}=TEMPLATE)"),
            )
        })?;
    let model = super::download::inside_models_dir(
        &settings.models_dir,
        data["modelPath"].as_str().unwrap_or_default(),
    )
    .await?;
    if !tokio::fs::try_exists(&model).await.unwrap_or(false) {
        return Err(failure(
            "MODEL_MISSING",
            format!("{} is not on this node", model.display()),
        ));
    }
    let port = match data["port"].as_u64() {
        Some(p) if (1..=65535).contains(&p) => p as u16,
        _ => free_port().map_err(|e| failure("NO_PORT", e.to_string()))?,
    };
    let dir = model.parent().unwrap_or(&settings.models_dir).to_path_buf();
    let port_text = port.to_string();
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "warden".into());
    let (model_text, dir_text) = (model.display().to_string(), dir.display().to_string());
    let args = argv(
        template,
        &[
            ("modelPath", &model_text),
            ("modelDir", &dir_text),
            ("port", &port_text),
            ("host", runtimes.advertise.as_str()),
            ("self", &exe),
        ],
    );
    let name = data["containerName"].as_str().unwrap_or(&id).to_owned();
    let health = data["healthPath"].as_str().unwrap_or("/").to_owned();
    let url = format!("http://127.0.0.1:{port}{health}");
    let startup = Duration::from_secs(data["startupTimeoutSeconds"].as_u64().unwrap_or(120));
    let tail = Arc::new(Mutex::new(Vec::new()));
    let (log_id, log_out) = (id.clone(), out.clone());
    let ort = runtimes.ort_library.clone();
    let start = move |tail: &Arc<Mutex<Vec<String>>>| -> Result<tokio::process::Child, Value> {
        let mut child = spawn(&args, &dir, port, &model, ort.as_deref())
            .map_err(|e| failure("SPAWN_FAILED", format!("{}: {e}", args[0])))?;
        if let Some(o) = child.stdout.take() {
            pipe_logs(log_id.clone(), log_out.clone(), o, "info", tail.clone());
        }
        if let Some(e) = child.stderr.take() {
            pipe_logs(log_id.clone(), log_out.clone(), e, "error", tail.clone());
        }
        Ok(child)
    };
    let mut child = start(&tail)?;
    if let Err(why) = wait_ready(&settings.http, &url, &mut child, startup).await {
        signal_group(&child, libc::SIGKILL);
        let _ = child.wait().await;
        let last = tail.lock().expect("never poisoned").join("\n");
        return Err(json!({"code": "START_FAILED", "message": why, "details": {"output": last}}));
    }
    let endpoint = format!("http://{}:{port}", runtimes.advertise);
    let (stop_tx, mut stop_rx) = watch::channel(None::<Duration>);
    let (done_tx, done_rx) = watch::channel(false);
    served.inner.lock().expect("never poisoned").insert(
        id.clone(),
        Handle {
            endpoint: endpoint.clone(),
            port,
            name: name.clone(),
            stop: stop_tx,
            done: done_rx,
        },
    );
    let result = json!({"endpoint": endpoint, "containerPort": port, "containerName": name, "pid": child.id()});
    let (http, out, served) = (settings.http.clone(), out.clone(), served.clone());
    let every = Duration::from_millis(
        runtimes
            .health_every_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            .clamp(100, 10_000),
    );
    // The supervising task: restarts, health reports, the stop.
    tokio::spawn(async move {
        let started = Instant::now();
        let mut restarts: Vec<Instant> = Vec::new();
        let mut health = tokio::time::interval(every);
        health.tick().await;
        let _ = out.send(status_frame(
            &id,
            "running",
            json!({"endpoint": endpoint, "healthStatus": "healthy", "uptime": 0}),
        ));
        loop {
            tokio::select! {
                changed = stop_rx.changed() => {
                    let grace = if changed.is_ok() { (*stop_rx.borrow()).unwrap_or(Duration::from_secs(30)) } else { Duration::ZERO };
                    signal_group(&child, libc::SIGTERM);
                    if tokio::time::timeout(grace, child.wait()).await.is_err() {
                        signal_group(&child, libc::SIGKILL);
                        let _ = child.wait().await;
                    }
                    break;
                }
                status = child.wait() => {
                    let now = Instant::now();
                    restarts.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
                    let code = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    if restarts.len() >= MAX_RESTARTS {
                        let _ = out.send(status_frame(&id, "failed", json!({"message": format!("the model server exited ({code}) {} times in {} s; given up", MAX_RESTARTS + 1, RESTART_WINDOW.as_secs())})));
                        break;
                    }
                    restarts.push(now);
                    let _ = out.send(status_frame(&id, "restarting", json!({"message": format!("the model server exited ({code}); restarting")})));
                    match start(&tail) {
                        Ok(c) => child = c,
                        Err(e) => {
                            let _ = out.send(status_frame(&id, "failed", json!({"message": e["message"]})));
                            break;
                        }
                    }
                }
                _ = health.tick() => {
                    // A server that reports its usage (serve-model does) has it passed on.
                    let answer = http.get(&url).timeout(Duration::from_secs(5)).send().await.ok();
                    let healthy = answer.as_ref().is_some_and(|r| r.status().as_u16() < 500);
                    let usage: Value = match answer {
                        Some(r) if healthy => r.json().await.unwrap_or(Value::Null),
                        _ => Value::Null,
                    };
                    let mut report = json!({
                        "endpoint": endpoint,
                        "healthStatus": if healthy { "healthy" } else { "unhealthy" },
                        "uptime": started.elapsed().as_secs(),
                    });
                    for key in ["totalInferences", "averageLatency"] {
                        if usage[key].is_number() {
                            report[key] = usage[key].clone();
                        }
                    }
                    let _ = out.send(status_frame(&id, "running", report));
                }
            }
        }
        let _ = done_tx.send(true);
        let mut map = served.inner.lock().expect("never poisoned");
        if map.get(&id).is_some_and(|h| *h.done.borrow()) {
            map.remove(&id);
        }
    });
    Ok(result)
}

/// Runs `deployment.stop`: graceful within `timeoutSeconds`, then killed.
pub async fn stop(served: &Served, data: &Value, resource_id: &str) -> Result<Value, Value> {
    let id = data["deploymentId"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or(resource_id)
        .to_owned();
    let handle = served
        .inner
        .lock()
        .expect("never poisoned")
        .get(&id)
        .cloned();
    let Some(mut h) = handle else {
        return Ok(json!({"stopped": true, "wasRunning": false}));
    };
    let grace = Duration::from_secs(data["timeoutSeconds"].as_u64().unwrap_or(30));
    let graceful = data["gracefulShutdown"].as_bool().unwrap_or(true);
    let _ = h
        .stop
        .send(Some(if graceful { grace } else { Duration::ZERO }));
    let waited =
        tokio::time::timeout(grace + Duration::from_secs(5), h.done.wait_for(|d| *d)).await;
    if waited.is_err() {
        return Err(failure(
            "STOP_TIMEOUT",
            "the model server did not stop in time",
        ));
    }
    Ok(json!({"stopped": true, "wasRunning": true}))
}

/// Stops every served deployment (the daemon is shutting down).
pub fn stop_all(served: &Served) {
    for h in served.inner.lock().expect("never poisoned").values() {
        let _ = h.stop.send(Some(Duration::from_secs(5)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_word_by_word() {
        let a = argv(
            "python3 -m http.server {port} --directory {modelDir}",
            &[("port", "8080"), ("modelDir", "/m/with space")],
        );
        assert_eq!(
            a,
            [
                "python3",
                "-m",
                "http.server",
                "8080",
                "--directory",
                "/m/with space"
            ]
        );
        let r = Runtimes::parse(&["onnx=serve {modelPath}".into()], "h".into()).unwrap();
        assert_eq!(r.templates["onnx"], "serve {modelPath}");
        assert!(Runtimes::parse(&["nope".into()], "h".into()).is_err());
        assert!(Runtimes::parse(&["x= ".into()], "h".into()).is_err());
    }
}
