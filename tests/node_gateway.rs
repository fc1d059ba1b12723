//! The node gateway over a raw WebSocket (seeds/aiwm-api.md, "WebSocket
//! Integration"; DIALECTS.md): handshake auth, registration, telemetry,
//! liveness, commands, bad frames.

mod common;

use common::{TestServer, WsNode, assert_aiwm_error, eventually, fast_nodes, node_body};
use serde_json::{Value, json};

async fn node_by(s: &TestServer, token: &str, id: &str) -> Value {
    let r = s.get(&format!("/api/nodes/{id}"), token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[tokio::test]
async fn a_daemon_with_a_user_token_registers_and_stays_alive() {
    let s = TestServer::start_with(fast_nodes).await;
    let (token, user) = s.user("gpuowner", &["operator"], None).await;
    let mut ws = WsNode::connect(&s, &format!("token={token}&nodeId=gpu-box-1"))
        .await
        .unwrap();
    let ack = ws.expect("connection.ack").await;
    assert_eq!(ack["status"], "success");
    assert_eq!(ack["data"]["status"], "success");

    ws.send("node.register", json!({
        "nodeId": "gpu-box-1", "name": "GPU box", "hostname": "gpu-box", "ipAddress": "10.0.0.5",
        "os": {"platform": "linux", "release": "6.1"}, "containerRuntime": {"type": "docker", "version": "27"},
        "cpuCores": 8, "cpuModel": "EPYC", "ramTotal": 32000, "diskTotal": 1000000,
        "gpuDevices": [{"deviceId": "GPU-0", "model": "RTX 4090", "memoryTotal": 24576, "memoryFree": 24000}],
        "daemonVersion": "1.2.3", "nodeStatus": "ready"
    })).await;
    let ack = ws.expect("register.ack").await;
    assert_eq!(ack["data"]["status"], "success");
    assert_eq!(ack["data"]["controllerInfo"]["heartbeatInterval"], 1000);
    assert_eq!(ack["data"]["controllerInfo"]["metricsInterval"], 2000);
    assert_eq!(ack["data"]["pendingCommands"], json!([]));

    let node = node_by(&s, &token, "gpu-box-1").await;
    assert_eq!(node["status"], "online");
    assert_eq!(node["websocketConnected"], true);
    assert_eq!(node["cpuCores"], 8);
    assert_eq!(node["ramTotal"], 32000);
    assert_eq!(node["hostname"], "gpu-box");
    assert_eq!(node["os"], json!({"platform": "linux", "release": "6.1"}));
    assert_eq!(node["gpuDevices"][0]["model"], "RTX 4090");
    assert_eq!(node["owner"]["userId"], user["id"]);
    let id = node["_id"].as_str().unwrap().to_owned();

    // Heartbeats move lastHeartbeat; the daemon's health is not the status.
    let first = node["lastHeartbeat"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    ws.send(
        "telemetry.heartbeat",
        json!({"status": "healthy", "cpuUsage": 12.5, "ramUsage": 50.0, "uptimeSeconds": 100}),
    )
    .await;
    let node = eventually(5, "a newer lastHeartbeat", || async {
        let n = node_by(&s, &token, &id).await;
        (n["lastHeartbeat"].as_str().unwrap() > first.as_str()).then_some(n)
    })
    .await;
    assert_eq!(node["status"], "online");
    assert_eq!(node["daemonStatus"], "healthy");
    assert_eq!(node["ramFree"], 16000);

    // Metrics land in the time series, newest first.
    for cpu in [10, 20, 30] {
        ws.send(
            "telemetry.metrics",
            json!({"cpu": {"usage": cpu}, "memory": {"used": 1}, "gpuDevices": [], "network": {}}),
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let metrics = eventually(5, "three metrics", || async {
        let r = s.get(&format!("/api/nodes/{id}/metrics"), &token).await;
        (r.body["pagination"]["total"] == 3).then_some(r.body)
    })
    .await;
    assert_eq!(metrics["data"][0]["cpu"]["usage"], 30);
    assert_eq!(metrics["data"][2]["cpu"]["usage"], 10);
    let r = s
        .get(&format!("/api/nodes/{id}/metrics?limit=1&page=2"), &token)
        .await;
    assert_eq!(r.body["data"][0]["cpu"]["usage"], 20);
    let r = s
        .get(
            &format!("/api/nodes/{id}/metrics?from=2999-01-01T00:00:00Z"),
            &token,
        )
        .await;
    assert_eq!(r.body["pagination"]["total"], 0);
    assert_aiwm_error(
        &s.get(&format!("/api/nodes/{id}/metrics?from=yesterday"), &token)
            .await,
        400,
        &format!("/api/nodes/{id}/metrics"),
    );

    // The daemon goes away: disconnected at once, offline within 3 intervals.
    drop(ws);
    eventually(5, "websocketConnected false", || async {
        (node_by(&s, &token, &id).await["websocketConnected"] == false).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    eventually(6, "offline", || async {
        (node_by(&s, &token, &id).await["status"] == "offline").then_some(())
    })
    .await;
    // Three 1 s intervals after the last heartbeat, judged on a 1 s tick.
    assert!(started.elapsed() < std::time::Duration::from_millis(5500));

    // It comes back.
    let mut ws = WsNode::connect(&s, &format!("token={token}&nodeId=gpu-box-1"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    assert_eq!(node_by(&s, &token, &id).await["status"], "online");
    s.stop().await;
}

#[tokio::test]
async fn handshakes_are_checked_before_any_event() {
    let s = TestServer::start_with(fast_nodes).await;
    let (alice, _) = s.user("alicenode", &["operator"], None).await;
    let (mallory, _) = s.user("mallorynode", &["operator"], None).await;
    let (viewer, _) = s.user("viewernode", &["viewer"], None).await;
    let id = s
        .post("/api/nodes", &alice, node_body("alice-gpu", "A"))
        .await
        .body["_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let status = |e: tokio_tungstenite::tungstenite::Error| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    };
    assert_eq!(status(WsNode::connect(&s, "").await.err().unwrap()), 401);
    assert_eq!(
        status(WsNode::connect(&s, "token=garbage").await.err().unwrap()),
        401
    );
    assert_eq!(
        status(
            WsNode::connect(&s, &format!("token={viewer}&nodeId=new-node"))
                .await
                .err()
                .unwrap()
        ),
        403
    );

    // Mallory cannot become alice's node: with its _id she is refused...
    // (she does not see it, so she would create her own node named by that id)
    let mut ws = WsNode::connect(&s, &format!("token={mallory}&nodeId=alice-gpu"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    ws.send("node.register", json!({"hostname": "evil"})).await;
    ws.expect("register.ack").await;
    assert_eq!(
        node_by(&s, &alice, &id).await["websocketConnected"],
        false,
        "alice's node is untouched"
    );
    assert_eq!(
        s.get("/api/nodes/alice-gpu", &mallory).await.body["owner"]["orgId"],
        s.get("/api/nodes", &mallory).await.body["data"][0]["owner"]["orgId"]
    );

    // A node token: minted by an operator, accepted for that node only.
    let r = s
        .post(
            &format!("/api/nodes/{id}/token"),
            &alice,
            json!({"expiresIn": "1h"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let node_token = r.body["token"].as_str().unwrap().to_owned();
    assert!(r.body["expiresAt"].as_str().unwrap().ends_with('Z'));
    assert!(
        r.body["installScript"]
            .as_str()
            .unwrap()
            .contains(&node_token)
    );
    assert!(
        r.body["installScript"]
            .as_str()
            .unwrap()
            .contains("warden node --server")
    );
    assert_aiwm_error(
        &s.post(
            &format!("/api/nodes/{id}/token"),
            &alice,
            json!({"expiresIn": "forever"}),
        )
        .await,
        400,
        &format!("/api/nodes/{id}/token"),
    );
    assert_aiwm_error(
        &s.post(&format!("/api/nodes/{id}/token"), &mallory, json!({}))
            .await,
        404,
        &format!("/api/nodes/{id}/token"),
    );
    // User routes refuse node tokens.
    assert_aiwm_error(&s.get("/api/nodes", &node_token).await, 401, "/api/nodes");
    let mut ws = WsNode::connect(&s, &format!("token={node_token}"))
        .await
        .unwrap();
    let ack = ws.expect("connection.ack").await;
    assert_eq!(ack["nodeId"], id.as_str());
    assert_eq!(node_by(&s, &alice, &id).await["websocketConnected"], true);

    // A deleted node's token no longer connects.
    drop(ws);
    assert_eq!(
        s.delete(&format!("/api/nodes/{id}"), &alice).await.status,
        200
    );
    assert_eq!(
        status(
            WsNode::connect(&s, &format!("token={node_token}"))
                .await
                .err()
                .unwrap()
        ),
        404
    );
    s.stop().await;
}

#[tokio::test]
async fn commands_queue_deliver_once_and_record_replies() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let id = s
        .post("/api/nodes", &t, node_body("worker-1", "W"))
        .await
        .body["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/nodes/{id}/commands");

    // Queued while the node is away.
    let r = s.post(&path, &t, json!({"type": "system.healthCheck", "resource": {"type": "node", "id": id}, "data": {"deep": true}, "metadata": {"priority": "high"}})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "queued");
    let queued_id = r.body["messageId"].as_str().unwrap().to_owned();
    assert_aiwm_error(
        &s.post(&path, &t, json!({"type": "rm -rf"})).await,
        400,
        &path,
    );

    // Delivered after register.ack, with resource at the top level.
    let mut ws = WsNode::connect(&s, &format!("token={t}&nodeId=worker-1"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    ws.send("node.register", json!({"hostname": "w1"})).await;
    let ack = ws.expect("register.ack").await;
    assert_eq!(ack["data"]["pendingCommands"], json!([queued_id]));
    let cmd = ws.expect("system.healthCheck").await;
    assert_eq!(cmd["messageId"], queued_id.as_str());
    assert_eq!(cmd["resource"], json!({"type": "node", "id": id}));
    assert_eq!(cmd["data"], json!({"deep": true}));
    assert_eq!(cmd["metadata"]["priority"], "high");
    assert_eq!(
        s.get(&format!("{path}/{queued_id}"), &t).await.body["status"],
        "sent"
    );

    ws.send(
        "command.ack",
        json!({"originalMessageId": queued_id, "status": "acknowledged"}),
    )
    .await;
    eventually(5, "acknowledged", || async {
        (s.get(&format!("{path}/{queued_id}"), &t).await.body["status"] == "acknowledged")
            .then_some(())
    })
    .await;
    ws.send(
        "command.result",
        json!({"originalMessageId": queued_id, "status": "success", "result": {"healthy": true}}),
    )
    .await;
    let done = eventually(5, "succeeded", || async {
        let c = s.get(&format!("{path}/{queued_id}"), &t).await.body;
        (c["status"] == "succeeded").then_some(c)
    })
    .await;
    assert_eq!(done["result"], json!({"healthy": true}));
    assert!(done["completedAt"].is_string());

    // A connected node gets a new command at once; errors are recorded.
    let r = s.post(&path, &t, json!({"type": "model.download", "resource": {"type": "model", "id": "m1"}, "data": {"source": "x", "targetPath": "/tmp/m"}})).await;
    assert_eq!(r.body["status"], "sent");
    let second = r.body["messageId"].as_str().unwrap().to_owned();
    let cmd = ws.expect("model.download").await;
    assert_eq!(cmd["messageId"], second.as_str());
    ws.send("command.result", json!({"originalMessageId": second, "status": "error", "error": {"code": "DOWNLOAD_FAILED", "message": "no network"}})).await;
    let failed = eventually(5, "failed", || async {
        let c = s.get(&format!("{path}/{second}"), &t).await.body;
        (c["status"] == "failed").then_some(c)
    })
    .await;
    assert_eq!(failed["error"]["code"], "DOWNLOAD_FAILED");

    // Reconnecting delivers nothing twice.
    drop(ws);
    let mut ws = WsNode::connect(&s, &format!("token={t}&nodeId=worker-1"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    ws.send("node.register", json!({"hostname": "w1"})).await;
    let ack = ws.expect("register.ack").await;
    assert_eq!(ack["data"]["pendingCommands"], json!([]));
    ws.send("telemetry.heartbeat", json!({"status": "healthy"}))
        .await;
    ws.send("not.a.type", json!({})).await;
    let next = ws.recv().await.unwrap();
    assert_eq!(
        next["type"], "error",
        "only the error for the unknown type, no re-sent command: {next}"
    );
    let list = s.get(&path, &t).await.body;
    assert_eq!(list["pagination"]["total"], 2);
    s.stop().await;
}

#[tokio::test]
async fn bad_frames_get_errors_and_harm_no_one() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let mut good = WsNode::connect(&s, &format!("token={t}&nodeId=good"))
        .await
        .unwrap();
    good.expect("connection.ack").await;
    good.send("node.register", json!({})).await;
    good.expect("register.ack").await;

    let mut bad = WsNode::connect(&s, &format!("token={t}&nodeId=bad"))
        .await
        .unwrap();
    bad.expect("connection.ack").await;
    // Before registering, telemetry is refused.
    bad.send("telemetry.heartbeat", json!({})).await;
    assert_eq!(bad.expect("error").await["data"]["code"], "REJECTED");
    bad.send_text("this is not json".into()).await;
    assert_eq!(bad.expect("error").await["data"]["code"], "BAD_MESSAGE");
    bad.send_text("{\"type\": 5}".into()).await;
    assert_eq!(bad.expect("error").await["data"]["code"], "BAD_MESSAGE");
    bad.send("node.register", json!({"cpuCores": "many"})).await;
    let e = bad.expect("error").await;
    assert!(
        e["data"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid data"),
        "{e}"
    );
    bad.send("node.register", json!({})).await;
    bad.expect("register.ack").await;
    bad.send("surprise", json!({})).await;
    assert!(
        bad.expect("error").await["data"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown message type")
    );
    // An oversized frame closes that connection only.
    bad.send_text(format!(
        "{{\"type\":\"telemetry.metrics\",\"data\":\"{}\"}}",
        "x".repeat(100 * 1024)
    ))
    .await;
    assert!(bad.recv().await.is_none(), "closed");

    good.send("telemetry.heartbeat", json!({"status": "healthy"}))
        .await;
    good.send("nope", json!({})).await;
    assert_eq!(good.expect("error").await["type"], "error");
    assert_eq!(s.get("/health", &t).await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn a_second_connection_replaces_the_first() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let mut first = WsNode::connect(&s, &format!("token={t}&nodeId=dup"))
        .await
        .unwrap();
    first.expect("connection.ack").await;
    first.send("node.register", json!({})).await;
    first.expect("register.ack").await;
    let mut second = WsNode::connect(&s, &format!("token={t}&nodeId=dup"))
        .await
        .unwrap();
    second.expect("connection.ack").await;
    assert!(
        first.recv().await.is_none(),
        "the first connection is closed"
    );
    second.send("node.register", json!({})).await;
    second.expect("register.ack").await;
    let node = s.get("/api/nodes/dup", &t).await.body;
    assert_eq!(node["websocketConnected"], true);
    // The first one's goodbye does not mark the node disconnected.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        s.get("/api/nodes/dup", &t).await.body["websocketConnected"],
        true
    );
    s.stop().await;
}

/// The next frame, raw: `None` when the stream ended cleanly; panics on
/// a transport error (a reset instead of a close handshake).
async fn next_raw(ws: &mut WsNode) -> Option<tokio_tungstenite::tungstenite::Message> {
    use futures_util::StreamExt;
    match tokio::time::timeout(std::time::Duration::from_secs(10), ws.socket.next())
        .await
        .expect("a frame or the end within 10 s")
    {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => panic!("the connection ended without a close handshake: {e}"),
    }
}

/// Reads until the server's Close; its code.
async fn close_code(ws: &mut WsNode) -> u16 {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match next_raw(ws).await {
            Some(Message::Close(frame)) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                // Our side of the handshake, then the stream ends cleanly.
                assert!(next_raw(ws).await.is_none());
                return code;
            }
            Some(_) => continue,
            None => panic!("the stream ended without a Close frame"),
        }
    }
}

#[tokio::test]
async fn a_clients_close_is_answered_with_a_close() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let mut ws = WsNode::connect(&s, &format!("token={t}&nodeId=closer"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    ws.socket
        .send(Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    // The server's Close comes back, then the stream ends: no reset.
    loop {
        match next_raw(&mut ws).await {
            Some(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));
                break;
            }
            Some(_) => continue,
            None => panic!("no Close came back"),
        }
    }
    assert!(next_raw(&mut ws).await.is_none());
}

#[tokio::test]
async fn an_oversized_frame_gets_close_1009() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let mut ws = WsNode::connect(&s, &format!("token={t}&nodeId=big"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    ws.send_text("x".repeat(200 * 1024)).await;
    // The Close with 1009 arrives (the frame's unread payload then makes
    // the kernel end the connection with a reset, which is fine).
    use futures_util::StreamExt;
    let code = loop {
        match ws.socket.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                break frame.map(|f| u16::from(f.code));
            }
            Some(Ok(_)) => continue,
            other => panic!("no Close before the end: {other:?}"),
        }
    };
    assert_eq!(code, Some(1009));
}

#[tokio::test]
async fn server_shutdown_closes_daemons_with_1001() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let mut ws = WsNode::connect(&s, &format!("token={t}&nodeId=leaver"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    let stopping = tokio::spawn(s.stop());
    assert_eq!(close_code(&mut ws).await, 1001);
    stopping.await.unwrap();
}

#[tokio::test]
async fn heartbeats_are_coalesced_but_liveness_and_status_changes_are_not() {
    let s = TestServer::start_with(|c| {
        c.node_timing.heartbeat = std::time::Duration::from_millis(200);
        c.node_timing.heartbeat_write = std::time::Duration::from_secs(60);
    })
    .await;
    let t = s.admin_token.clone();
    let mut ws = WsNode::connect(&s, &format!("token={t}&nodeId=coalesced"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    ws.send(
        "node.register",
        json!({"nodeId": "coalesced", "name": "C", "cpuCores": 2, "ramTotal": 1000}),
    )
    .await;
    let ack = ws.expect("register.ack").await;
    let id = ack["data"]["_id"].as_str().unwrap().to_owned();
    let registered = node_by(&s, &t, &id).await;
    assert_eq!(registered["status"], "online");

    // Heartbeats that change only gauges are not written one by one...
    for _ in 0..4 {
        ws.send(
            "telemetry.heartbeat",
            json!({"status": "healthy", "cpuUsage": 50.0}),
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let node = node_by(&s, &t, &id).await;
    assert_eq!(node["lastHeartbeat"], registered["lastHeartbeat"], "{node}");
    assert_eq!(node["status"], "online");

    // ...but silence still turns the node offline after three intervals,
    // and that change is written at once.
    let node = eventually(5, "offline after three silent intervals", || async {
        let n = node_by(&s, &t, &id).await;
        (n["status"] == "offline").then_some(n)
    })
    .await;
    // The gauges held back were written with it.
    assert_eq!(node["cpuUsage"], 50.0, "{node}");
    // A heartbeat brings it back online, durably, at once.
    ws.send("telemetry.heartbeat", json!({"status": "healthy"}))
        .await;
    eventually(5, "online again", || async {
        (node_by(&s, &t, &id).await["status"] == "online").then_some(())
    })
    .await;
}
