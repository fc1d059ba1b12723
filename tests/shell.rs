//! Vareon's interactive shell (`/ws/shell/{id}` and the arcana terminal
//! routes; VAREON-NEURONEST.md §3A) through the real server, with a
//! tokio-tungstenite client speaking both client protocols.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, alive, eventually};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use warden::config::ServerConfig;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Shells on, as `nobody` when the tests run as root, `/bin/sh`.
fn shells(c: &mut ServerConfig) {
    c.shell.enabled = true;
    c.shell.program = "/bin/sh".into();
    c.shell.roles = vec!["admin".into(), "operator".into()];
    if is_root() {
        c.shell.run_as = Some(warden_actors::terminal::pty::RunAs::lookup("nobody").unwrap());
    }
    c.shell.detach_grace_secs = 3;
}

fn url(s: &TestServer, id: &str, token: Option<&str>) -> String {
    let base = s.base.replacen("http", "ws", 1);
    match token {
        Some(t) => format!("{base}/ws/shell/{id}?token={t}"),
        None => format!("{base}/ws/shell/{id}"),
    }
}

async fn connect(s: &TestServer, id: &str, token: &str) -> Socket {
    let (socket, _) = tokio_tungstenite::connect_async(url(s, id, Some(token)))
        .await
        .expect("the shell connects");
    socket
}

/// The HTTP status a refused handshake got.
async fn refused(request: impl IntoClientRequest + Unpin) -> u16 {
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("the handshake was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("not an HTTP refusal: {e}"),
    }
}

/// What a socket said until `marker` shows up in its output (text
/// frames, envelopes unwrapped), or the socket closed (its code).
async fn read_until(socket: &mut Socket, marker: &str) -> (String, Option<u16>) {
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {marker:?} within 10 s; seen {seen:?}"));
        match frame {
            Some(Ok(Message::Text(t))) => {
                let t = t.as_str();
                match serde_json::from_str::<Value>(t) {
                    Ok(v) if v["type"] == "shell_output" => {
                        seen.push_str(v["payload"]["data"].as_str().unwrap())
                    }
                    _ => seen.push_str(t),
                }
                if seen.contains(marker) {
                    return (seen, None);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return (seen, Some(frame.map_or(1005, |f| u16::from(f.code))));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (seen, Some(1006)),
        }
    }
}

async fn send(socket: &mut Socket, text: &str) {
    socket.send(Message::text(text.to_owned())).await.unwrap();
}

/// Sends a command and waits for its marker (computed by the shell, so
/// the echo of the typed line does not count).
async fn run(socket: &mut Socket, command: &str, marker: &str) -> String {
    send(socket, &format!("{command}\r")).await;
    read_until(socket, marker).await.0
}

async fn sessions(s: &TestServer, token: &str) -> Value {
    let r = s.get("/api/arcana/terminal/sessions", token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// The number just before `marker` in `text`.
fn number_before(text: &str, marker: &str) -> u64 {
    let head = &text[..text.rfind(marker).expect("the marker")];
    let digits: String = head
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a number before {marker} in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_protocol_runs_a_confined_shell_and_records_its_history() {
    // A secret in the server's environment must not reach the shell.
    // SAFETY: set before the server starts; each test is its own process.
    unsafe { std::env::set_var("WARDEN_TEST_SHELL_SECRET", "s3cret-value") };
    let s = TestServer::start_with(shells).await;
    let (alice, alice_user) = s.user("shellalice", &["operator"], None).await;
    let mut ws = connect(&s, "1731000000000", &alice).await;
    send(&mut ws, r#"{"resize":{"cols":100,"rows":30}}"#).await;
    let out = run(&mut ws, "echo size=$(stty size | tr ' ' x)", "size=30x100").await;
    assert!(out.contains("size=30x100"), "{out}");
    let out = run(&mut ws, "echo at=$(pwd)=end$((1+1))", "=end2").await;
    let user_id = alice_user["id"].as_str().unwrap();
    assert!(
        out.contains(&format!("shell/{user_id}=end2")),
        "the user's own work dir: {out}"
    );
    let out = run(&mut ws, "env; echo env-done-$((6*7))", "env-done-42").await;
    assert!(out.contains("TERM=xterm-256color"), "{out}");
    assert!(!out.contains("s3cret-value"), "no server secret: {out}");
    assert!(!out.contains("WARDEN_"), "{out}");
    if is_root() {
        let out = run(&mut ws, "id -u; echo id-done-$((1+1))", "id-done-2").await;
        assert!(out.contains("65534"), "runs as nobody: {out}");
        let db = s.data_dir.join("db");
        let out = run(
            &mut ws,
            &format!("ls {} 2>&1; echo ls-done-$((2+2))", db.display()),
            "ls-done-4",
        )
        .await;
        assert!(
            out.contains("Permission denied"),
            "the data dir is closed to it: {out}"
        );
    }
    // Absurd sizes are ignored or clamped; the session lives on.
    send(&mut ws, r#"{"resize":{"cols":0,"rows":0}}"#).await;
    send(&mut ws, r#"{"resize":{"cols":100000,"rows":100000}}"#).await;
    let out = run(
        &mut ws,
        "echo clamped=$(stty size | tr ' ' x)",
        "clamped=500x1000",
    )
    .await;
    assert!(out.contains("clamped=500x1000"), "{out}");
    // A character split across two PTY reads arrives whole.
    let out = run(
        &mut ws,
        "printf '\\342\\202'; sleep 0.3; printf '\\254 split-%d\\n' $((40+2))",
        "split-42",
    )
    .await;
    assert!(out.contains("€ split-42"), "{out:?}");
    // A keystroke `5` is input, not control; backspace is applied.
    send(&mut ws, "e").await;
    send(&mut ws, "cho five-").await;
    send(&mut ws, "5").await;
    send(&mut ws, "\r").await;
    read_until(&mut ws, "five-5\r\n").await;
    run(
        &mut ws,
        "lx\u{7f}s >/dev/null; echo ls-ok-$((3+3))",
        "ls-ok-6",
    )
    .await;

    let list = sessions(&s, &alice).await;
    assert_eq!(list[0]["id"], "1731000000000");
    assert_eq!(list[0]["status"], "active");
    assert_eq!(list[0]["user_id"], user_id);
    assert_eq!(
        list[0]["last_command"],
        "ls >/dev/null; echo ls-ok-$((3+3))"
    );
    let history = s
        .get(
            "/api/arcana/terminal/sessions/1731000000000/history",
            &alice,
        )
        .await;
    assert_eq!(history.status, 200);
    let commands: Vec<&str> = history
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["command"].as_str().unwrap())
        .collect();
    assert!(commands.contains(&"echo five-5"), "{commands:?}");
    assert_eq!(history.body[0]["session_id"], "1731000000000");
    assert!(
        history.body[0]["output"]
            .as_str()
            .unwrap()
            .contains("size=30x100"),
        "{}",
        history.body
    );

    // exit: the rest of the output, then 1000, then the session is closed.
    send(&mut ws, "echo bye-$((5+5)); exit\r").await;
    let (out, code) = read_until(&mut ws, "\u{0}never").await;
    assert!(out.contains("bye-10"), "{out}");
    assert_eq!(code, Some(1000));
    let list = sessions(&s, &alice).await;
    assert_eq!(list[0]["status"], "closed");
    assert!(list[0]["ended_at"].is_string());
    let again = refused(url(&s, "1731000000000", Some(&alice))).await;
    assert_eq!(again, 409, "a closed session stays closed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envelope_protocol_works_both_ways() {
    let s = TestServer::start_with(shells).await;
    let id = uuid::Uuid::new_v4().to_string();
    let mut ws = connect(&s, &id, &s.admin_token).await;
    send(
        &mut ws,
        r#"{"type":"shell_resize","payload":{"cols":90,"rows":20}}"#,
    )
    .await;
    send(
        &mut ws,
        r#"{"type":"shell_input","payload":{"data":"echo env-$((2+3)) $(stty size)\r"}}"#,
    )
    .await;
    // Every output frame is an envelope.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while !seen.contains("env-5 20 90") {
        assert!(Instant::now() < deadline, "{seen}");
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("an envelope");
                assert_eq!(v["type"], "shell_output");
                seen.push_str(v["payload"]["data"].as_str().unwrap());
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    // Binary frames are raw input.
    ws.send(Message::binary(b"echo bin-$((4+4))\r".to_vec()))
        .await
        .unwrap();
    read_until(&mut ws, "bin-8").await;
    ws.close(None).await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_clients_get_no_shell() {
    let s = TestServer::start_with(shells).await;
    let (viewer, _) = s.user("shellviewer", &["viewer"], None).await;
    assert_eq!(refused(url(&s, "s1", None)).await, 401);
    assert_eq!(refused(url(&s, "s1", Some("garbage"))).await, 401);
    assert_eq!(refused(url(&s, "s1", Some(&viewer))).await, 403);
    // A node's credential is not a user's.
    let r = s
        .post(
            "/api/nodes",
            &s.admin_token,
            common::node_body("shell-node", "N"),
        )
        .await;
    let node = r.body["_id"].as_str().unwrap().to_owned();
    let minted = s
        .post(
            &format!("/api/nodes/{node}/token"),
            &s.admin_token,
            json!({}),
        )
        .await;
    let node_token = minted.body["token"].as_str().unwrap().to_owned();
    assert_eq!(refused(url(&s, "s1", Some(&node_token))).await, 401);
    // A cookie alone is no credential here.
    let mut req = url(&s, "s1", None).into_client_request().unwrap();
    req.headers_mut().insert(
        "cookie",
        format!("auth_token={}", s.admin_token).parse().unwrap(),
    );
    assert_eq!(refused(req).await, 401);
    // A bearer header works; a foreign origin does not.
    let mut req = url(&s, "s1", None).into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", s.admin_token).parse().unwrap(),
    );
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(refused(req).await, 403);
    assert_eq!(refused(url(&s, "a%20b", Some(&s.admin_token))).await, 400);
    assert_eq!(
        refused(url(&s, &"x".repeat(65), Some(&s.admin_token))).await,
        400
    );
    // Without an upgrade: 401 without a credential, 400 with one.
    let r = s
        .http
        .get(format!("{}/ws/shell/s1", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = s
        .http
        .get(format!("{}/ws/shell/s1?token={}", s.base, s.admin_token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        sessions(&s, &s.admin_token).await,
        json!([]),
        "nothing was started"
    );
    s.stop().await;

    // Off by default: refused for everyone, admins too.
    let s = TestServer::start().await;
    assert_eq!(refused(url(&s, "s1", Some(&s.admin_token))).await, 403);
    s.stop().await;

    // An expired token opens nothing.
    let s = TestServer::start_with(|c| {
        shells(c);
        c.token_ttl_secs = 1;
    })
    .await;
    let expiring = s.admin_token.clone();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(refused(url(&s, "late", Some(&expiring))).await, 401);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_their_users_own() {
    let s = TestServer::start_with(shells).await;
    let (a, _) = s.user("tenanta", &["operator"], None).await;
    let (b, _) = s.user("tenantb", &["operator"], None).await;
    let mut wa = connect(&s, "same-id", &a).await;
    run(&mut wa, "echo mine-a-$((1+6))", "mine-a-7").await;
    let mut wb = connect(&s, "same-id", &b).await;
    let (out, _) = read_until(&mut wb, "$ ").await;
    assert!(!out.contains("mine-a"), "B's shell is B's own: {out}");
    run(&mut wb, "echo mine-b-$((1+7))", "mine-b-8").await;
    let hb = s
        .get("/api/arcana/terminal/sessions/same-id/history", &b)
        .await;
    assert!(!hb.body.to_string().contains("mine-a"), "{}", hb.body);
    let r = s
        .post("/api/arcana/terminal/sessions/same-id/close", &b, json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(read_until(&mut wb, "\u{0}never").await.1, Some(1000));
    assert_eq!(
        sessions(&s, &a).await[0]["status"],
        "active",
        "A's is untouched"
    );
    run(&mut wa, "echo still-a-$((2+7))", "still-a-9").await;
    let r = s
        .get("/api/arcana/terminal/sessions/nobodys/history", &a)
        .await;
    assert_eq!(r.status, 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_kills_background_jobs_and_reattaching_replays_the_screen() {
    let s = TestServer::start_with(shells).await;
    let t = s.admin_token.clone();
    let mut ws = connect(&s, "jobs", &t).await;
    let out = run(&mut ws, "sleep 1000 & echo pid=$!=end$((1+1))", "=end2").await;
    let pid = number_before(&out, "=end2");
    assert!(alive(pid));

    // The connection drops without a close: the shell waits for it.
    drop(ws);
    let mut ws = connect(&s, "jobs", &t).await;
    let (replayed, _) = read_until(&mut ws, "pid=").await;
    assert!(
        replayed.contains("sleep 1000"),
        "the scrollback first: {replayed}"
    );
    run(&mut ws, "echo back-$((9+1))", "back-10").await;
    // A second connection takes the session over; the first gets 4001.
    let mut second = connect(&s, "jobs", &t).await;
    assert_eq!(read_until(&mut ws, "\u{0}never").await.1, Some(4001));
    run(&mut second, "echo second-$((9+2))", "second-11").await;

    let r = s
        .post("/api/arcana/terminal/sessions/jobs/close", &t, json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "closed");
    assert_eq!(read_until(&mut second, "\u{0}never").await.1, Some(1000));
    eventually(5, "the background job killed", || async {
        (!alive(pid)).then_some(())
    })
    .await;
    let r = s
        .post("/api/arcana/terminal/sessions/jobs/close", &t, json!({}))
        .await;
    assert_eq!(r.status, 200, "closing again answers the same");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_close_sessions_as_documented() {
    let s = TestServer::start_with(|c| {
        shells(c);
        c.shell.max_per_user = 2;
        c.shell.idle_timeout_secs = 2;
        c.shell.detach_grace_secs = 1;
    })
    .await;
    let t = s.admin_token.clone();
    let mut one = connect(&s, "one", &t).await;
    let mut two = connect(&s, "two", &t).await;
    assert_eq!(refused(url(&s, "three", Some(&t))).await, 429);
    // An oversized frame ends the session with 1009.
    two.send(Message::text("x".repeat(1024 * 1024)))
        .await
        .unwrap();
    assert_eq!(read_until(&mut two, "\u{0}never").await.1, Some(1009));
    // Idle past the limit: a notice, then 4000.
    let (out, code) = read_until(&mut one, "\u{0}never").await;
    assert_eq!(code, Some(4000));
    assert!(out.contains("idle"), "{out}");
    // Detached past the grace: closed, reason "detached".
    let three = connect(&s, "three", &t).await;
    drop(three);
    eventually(8, "the detached session closed", || async {
        let list = sessions(&s, &t).await;
        list.as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == "three" && x["status"] == "closed")
            .cloned()
    })
    .await;
    let list = sessions(&s, &t).await;
    let reasons: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["id"].as_str().unwrap().to_owned(),
                x["close_reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&("three".into(), "detached".into())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("one".into(), "idle".into())),
        "{reasons:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_session_actor_takes_its_shell_with_it() {
    let s = TestServer::start_with(|c| {
        shells(c);
        c.enable_fault_injection = true;
    })
    .await;
    let t = s.admin_token.clone();
    let mut ws = connect(&s, "crashy", &t).await;
    let out = run(&mut ws, "echo shpid=$$=end$((1+1))", "=end2").await;
    let pid = number_before(&out, "=end2");
    let tree = s.get("/admin/actors", &t).await;
    let sup = common::find_actor(&tree.body, "terminals").expect("a terminals supervisor");
    assert_eq!(
        sup["config"]["enabled"], true,
        "the policy in the tree: {sup}"
    );
    let actor = sup["children"][0]["name"].as_str().unwrap().to_owned();
    let r = s
        .post(&format!("/admin/actors/{actor}/crash"), &t, json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let (_, code) = read_until(&mut ws, "\u{0}never").await;
    assert!(code.is_some(), "the socket closed");
    eventually(5, "the shell gone", || async {
        (!alive(pid)).then_some(())
    })
    .await;
    let list = sessions(&s, &t).await;
    assert_eq!(list[0]["status"], "closed");
    assert!(
        list[0]["close_reason"]
            .as_str()
            .unwrap()
            .contains("actor failed"),
        "{list}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_closes_the_shell_and_shutdown_says_1001() {
    let s = TestServer::start_with(shells).await;
    let (alice, _) = s.user("shelllogout", &["operator"], None).await;
    let mut ws = connect(&s, "revoked", &alice).await;
    run(&mut ws, "echo up-$((1+1))", "up-2").await;
    let r = s.post("/api/auth/logout", &alice, json!({})).await;
    assert!(r.status.is_success(), "{}", r.body);
    let (_, code) = read_until(&mut ws, "\u{0}never").await;
    assert_eq!(code, Some(1008));
    assert_eq!(
        refused(url(&s, "after-logout", Some(&alice))).await,
        401,
        "a revoked token opens nothing"
    );

    let mut ws = connect(&s, "shutdown", &s.admin_token).await;
    run(&mut ws, "echo up-$((1+2))", "up-3").await;
    let stopping = tokio::spawn(s.stop());
    let (_, code) = read_until(&mut ws, "\u{0}never").await;
    assert_eq!(code, Some(1001));
    stopping.await.unwrap();
}

/// The resident memory of this process (the server runs in it), KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_to_a_slow_reader_keeps_memory_flat_and_others_fast() {
    let s = TestServer::start_with(shells).await;
    let t = s.admin_token.clone();
    let mut flood = connect(&s, "flood", &t).await;
    run(&mut flood, "echo ready-$((2+2))", "ready-4").await;
    let before = rss_kib();
    // `yes` writes as fast as it can; this client reads nothing for 10 s.
    send(&mut flood, "yes flood-flood-flood-flood\r").await;
    let mut other = connect(&s, "other", &t).await;
    run(&mut other, "echo warm-$((1+1))", "warm-2").await;
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let at = Instant::now();
        run(
            &mut other,
            &format!("echo rt{i}-$((100+{i}))"),
            &format!("rt{i}-{}", 100 + i),
        )
        .await;
        slowest = slowest.max(at.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 50 * 1024,
        "the server grew {grown} KiB under the flood"
    );
    assert!(
        slowest < Duration::from_millis(500),
        "echo elsewhere took {slowest:?}"
    );
    // Ctrl-C stops it; the session is still usable.
    send(&mut flood, "\u{3}").await;
    let r = s
        .post("/api/arcana/terminal/sessions/flood/close", &t, json!({}))
        .await;
    assert_eq!(r.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_in_a_shell_stops_at_its_cap() {
    let s = TestServer::start_with(|c| {
        shells(c);
        c.shell.groups.max_pids = 16;
    })
    .await;
    let t = s.admin_token.clone();
    let mut ws = connect(&s, "bomb", &t).await;
    let out = run(&mut ws, "echo shpid=$$=end$((1+1))", "=end2").await;
    let sid = number_before(&out, "=end2") as u32;
    send(&mut ws, "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30; do sleep 30 & done 2>/dev/null\r").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let members = warden_actors::process::session_members(sid).len();
    if members > 16 && !std::path::Path::new("/sys/fs/cgroup/pids/warden").exists() {
        eprintln!("skipped: this host lets Warden make no control groups");
        s.stop().await;
        return;
    }
    assert!(members <= 16, "the session's cap held: {members} processes");
    let at = Instant::now();
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
