//! `TestServer`: the real server on an ephemeral port with a temporary
//! data directory, plus an admin token and helpers to talk to it.
#![allow(dead_code)]

pub mod fake_llm;
pub mod training;

use std::path::PathBuf;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use warden::config::ServerConfig;
use warden::server::Running;

pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-password-1";

pub struct TestServer {
    pub base: String,
    pub admin_token: String,
    pub http: reqwest::Client,
    pub data_dir: PathBuf,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        Self::start_in(tempfile::tempdir().expect("temp dir"), adjust).await
    }

    /// Starts on a copy of a committed data directory (`tests/fixtures/NAME`).
    pub async fn start_from_fixture(name: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        copy_dir(&from, &dir.path().join("data"));
        Self::start_in(dir, |_| {}).await
    }

    /// Stops the server, lets `edit` change its data directory, starts again.
    pub async fn stop_edit_start<F, Fut>(mut self, edit: F) -> TestServer
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("server stops cleanly");
        }
        edit(self.data_dir.clone()).await;
        Self::start_in(self._dir, |_| {}).await
    }

    /// Stops the server and starts a new one on the same data directory.
    pub async fn restart(mut self, adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("server stops cleanly");
        }
        Self::start_in(self._dir, adjust).await
    }

    /// Stops the server, waits `downtime`, and starts it again on the same data directory.
    pub async fn restart_after(
        mut self,
        downtime: std::time::Duration,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("server stops cleanly");
        }
        tokio::time::sleep(downtime).await;
        Self::start_in(self._dir, adjust).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        warden::install_tls_provider();
        let mut config = ServerConfig::for_data_dir(dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.admin_username = Some(ADMIN.into());
        config.admin_password = Some(ADMIN_PASSWORD.into());
        config.admin_email = Some("admin@example.com".into());
        adjust(&mut config);
        let data_dir = config.data_dir.clone();
        let running = warden::server::start(config).await.expect("server starts");
        let base = format!("http://{}", running.addr);
        let http = reqwest::Client::new();
        let mut server = TestServer {
            base,
            admin_token: String::new(),
            http,
            data_dir,
            running: Some(running),
            _dir: dir,
        };
        server.admin_token = server.login(ADMIN, ADMIN_PASSWORD).await;
        server
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("server stops cleanly");
        }
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let r = self
            .call(
                Method::POST,
                "/auth/login",
                None,
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "login of {username}: {}", r.body);
        r.body["accessToken"]
            .as_str()
            .expect("accessToken")
            .to_owned()
    }

    /// Creates a user (in a new organisation unless `org` is given) and returns its token.
    pub async fn user(&self, username: &str, roles: &[&str], org: Option<&str>) -> (String, Value) {
        let mut body = json!({"username": username, "email": format!("{username}@example.com"), "password": "user-password-1", "roles": roles});
        if let Some(org) = org {
            body["orgId"] = json!(org);
        }
        let r = self
            .call(
                Method::POST,
                "/admin/users",
                Some(&self.admin_token),
                Some(body),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        (self.login(username, "user-password-1").await, r.body)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::reply(req.send().await.expect("request sent")).await
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::reply(req.send().await.expect("request sent")).await
    }

    async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }
    pub async fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }
    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.call(Method::DELETE, path, Some(token), None).await
    }
}

/// Checks the AIWM error body (seeds/aiwm-api.md, Error Handling).
pub fn assert_aiwm_error(r: &Reply, status: u16, path: &str) {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.body);
    assert_eq!(r.body["statusCode"], status, "body: {}", r.body);
    assert!(r.body["message"].is_string(), "body: {}", r.body);
    assert_eq!(r.body["path"], path, "body: {}", r.body);
    assert!(
        r.body["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "body: {}",
        r.body
    );
    let header = r
        .headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(!header.is_empty());
    assert_eq!(r.body["correlationId"], header);
}

pub fn node_body(node_id: &str, name: &str) -> Value {
    json!({"nodeId": node_id, "name": name, "role": ["worker"], "status": "offline", "isLocal": true, "cpuCores": 16, "ramTotal": 65536, "ramFree": 32768})
}

/// Polls `check` until it returns `Some`, or panics after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Finds an actor by name in the `/admin/actors` tree.
pub fn find_actor<'a>(tree: &'a Value, name: &str) -> Option<&'a Value> {
    if tree["name"] == name {
        return Some(tree);
    }
    tree["children"]
        .as_array()?
        .iter()
        .find_map(|c| find_actor(c, name))
}

/// Test servers with the heartbeat and metrics intervals the tests use.
pub fn fast_nodes(c: &mut ServerConfig) {
    c.node_timing.heartbeat = std::time::Duration::from_millis(1000);
    c.node_timing.metrics = std::time::Duration::from_millis(2000);
    // Every heartbeat written, so reads show each one (the coalescing
    // itself is tested in node_gateway.rs).
    c.node_timing.heartbeat_write = std::time::Duration::ZERO;
}

/// A raw WebSocket node client speaking AIWM's envelope.
pub struct WsNode {
    pub socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl WsNode {
    /// Connects to `/ws/node` with the given query string.
    pub async fn connect(
        server: &TestServer,
        query: &str,
    ) -> Result<WsNode, tokio_tungstenite::tungstenite::Error> {
        let url = format!("{}/ws/node?{query}", server.base.replacen("http", "ws", 1));
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(WsNode { socket })
    }

    pub async fn send(&mut self, kind: &str, data: Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let env = json!({"type": kind, "messageId": id, "timestamp": chrono::Utc::now().to_rfc3339(), "data": data});
        self.send_text(env.to_string()).await;
        id
    }

    pub async fn send_text(&mut self, text: String) {
        use futures_util::SinkExt;
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .expect("frame sent");
    }

    /// The next JSON frame, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Value> {
        use futures_util::StreamExt;
        loop {
            let frame =
                tokio::time::timeout(std::time::Duration::from_secs(10), self.socket.next())
                    .await
                    .expect("a frame within 10 s");
            match frame {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("JSON frame"));
                }
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
                | None
                | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame of the given type (skipping others).
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let v = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("connection closed while waiting for {kind}"));
            if v["type"] == kind {
                return v;
            }
        }
    }
}

/// The newest mail to `to` in the outbox (admin route).
pub async fn latest_mail(s: &TestServer, to: &str) -> Value {
    let r = s
        .get(&format!("/admin/outbox?to={to}"), &s.admin_token)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body[0].clone()
}

/// The first run of `len` digits in a text (a mailed code).
pub fn digits(text: &str, len: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars
        .windows(len)
        .find(|w| w.iter().all(char::is_ascii_digit))
        .map(|w| w.iter().collect())
        .unwrap_or_else(|| panic!("no {len}-digit code in {text:?}"))
}

/// The last whitespace-separated word after `marker` (a mailed token).
pub fn after(text: &str, marker: &str) -> String {
    text.split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("no {marker:?} in {text:?}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// TOTP per RFC 6238 (HMAC-SHA1, 6 digits, 30 s), written independently
/// of the server's implementation.
pub fn totp(secret_base32: &str, unix_secs: u64) -> String {
    use hmac::{Hmac, Mac};
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u64 = 0;
    let mut nbits = 0;
    let mut key = Vec::new();
    for c in secret_base32.trim_end_matches('=').bytes() {
        let v = alphabet
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())
            .expect("base32") as u64;
        bits = (bits << 5) | v;
        nbits += 5;
        if nbits >= 8 {
            nbits -= 8;
            key.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    let counter = (unix_secs / 30).to_be_bytes();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&key).unwrap();
    mac.update(&counter);
    let h = mac.finalize().into_bytes();
    let offset = (h[19] & 0x0f) as usize;
    let bin = ((h[offset] as u32 & 0x7f) << 24)
        | ((h[offset + 1] as u32) << 16)
        | ((h[offset + 2] as u32) << 8)
        | h[offset + 3] as u32;
    format!("{:06}", bin % 1_000_000)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Posts an `application/x-www-form-urlencoded` body.
pub async fn post_form(s: &TestServer, path: &str, pairs: &[(&str, &str)]) -> Reply {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let resp = s
        .http
        .post(format!("{}{}", s.base, path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

/// Copies a directory tree (fixtures into a temporary data directory).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the fixture") {
        let entry = entry.expect("fixture entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a fixture file");
        }
    }
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH` (README's test command sets
/// it), else what `scripts/onnxruntime` installs.
pub fn ort_library() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let out =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/onnxruntime"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("scripts/onnxruntime runs");
    assert!(out.status.success(), "scripts/onnxruntime failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// ONNX Runtime, loaded once per test process (it allows one environment
/// per process).
pub fn ort_env() -> &'static ort::environment::Environment {
    static ENV: std::sync::OnceLock<ort::environment::Environment> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        ort::init_from(ort_library())
            .expect("ONNX Runtime loads")
            .with_name("warden-tests")
            .build()
            .expect("ONNX Runtime starts")
    })
}

/// Runs an exported anomaly model (input `x`, outputs `score` and
/// `anomaly`) on N×T×F windows with ONNX Runtime, optimised as `warden
/// serve-model` runs it.
pub fn onnx_scores(
    env: &ort::environment::Environment,
    model: &[u8],
    shape: [usize; 3],
    x: Vec<f32>,
) -> (Vec<f32>, Vec<f32>) {
    let mut session = ort::session::Session::builder(env)
        .and_then(|mut b| b.commit_from_memory(model))
        .expect("ONNX Runtime accepts the export");
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let x = ort::value::Tensor::from_array((shape, x)).unwrap();
    let out = session
        .run(ort::inputs!["x" => x])
        .expect("the export runs");
    let take = |name: &str| {
        let (_, data) = out[name].try_extract_tensor::<f32>().unwrap();
        data.to_vec()
    };
    (take("score"), take("anomaly"))
}

/// Starts a real `warden node` daemon for `node_id` with its data in `dir`.
pub fn daemon(
    server: &str,
    token: &str,
    node_id: &str,
    dir: &std::path::Path,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "node",
            "--server",
            server,
            "--token",
            token,
            "--node-id",
            node_id,
            "--data-dir",
        ])
        .arg(dir)
        .env("WARDEN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("the daemon starts")
}

/// Whether `pid` is a live process (a zombie has ended).
pub fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}
