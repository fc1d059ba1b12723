//! Vareon's myntrix devices over the core (VAREON-NEURONEST.md §3C):
//! every node is a device, its commands and uploads go to a real
//! `warden node` daemon; plain devices are records Warden never connects
//! to; and the overviews (system status, search, visualization data)
//! count what the organisation really has.

mod common;

use common::{TestServer, daemon, eventually, fast_nodes};
use serde_json::{Value, json};

const BOUNDARY: &str = "warden-device-boundary-b2f1c0";

/// A multipart body with one file field named as given.
fn form(file_name: &str, bytes: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn post_form(s: &TestServer, token: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    let r = s
        .http
        .post(format!("{}{path}", s.base))
        .bearer_auth(token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn device(s: &TestServer, token: &str, id: &str) -> Value {
    let r = s.get(&format!("/api/myntrix/devices/{id}"), token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn myntrix(status: &Value, counter: &str) -> u64 {
    status["myntrix"][counter].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_device_runs_commands_and_takes_files_through_its_daemon() {
    let s = TestServer::start_with(fast_nodes).await;
    let (alice, alice_user) = s.user("devalice", &["operator"], None).await;
    let (bob, _) = s.user("devbob", &["operator"], None).await;
    let org = alice_user["orgId"].as_str().unwrap().to_owned();
    let (viewer, _) = s.user("devviewer", &["viewer"], Some(&org)).await;

    let r = s
        .post("/api/nodes", &alice, common::node_body("dev-a", "Rig A"))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["_id"].as_str().unwrap().to_owned();
    let minted = s
        .post(&format!("/api/nodes/{id}/token"), &alice, json!({}))
        .await;
    assert_eq!(minted.status, 200, "{}", minted.body);
    let node_token = minted.body["token"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(&s.base, &node_token, "dev-a", dir.path());

    // The node is a device, connected once its daemon is.
    let seen = eventually(15, "the node's device connected", || async {
        let v = device(&s, &alice, &id).await;
        (v["status"] == "connected" && v["firmware_version"].is_string()).then_some(v)
    })
    .await;
    assert_eq!(seen["connection_string"], "node://dev-a");
    assert_eq!(seen["name"], "Rig A");
    assert_eq!(seen["type"], "node");
    assert_eq!(seen["owner_id"], alice_user["id"]);
    assert!(seen["last_seen"].is_string());
    assert!(seen["configuration"]["cpuCores"].as_u64().unwrap() >= 1);
    let list = s.get("/api/myntrix/devices/", &alice).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    let ids = |v: &Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].clone())
            .collect()
    };
    assert_eq!(
        ids(&s.get("/api/myntrix/devices", &alice).await.body),
        ids(&list.body),
        "with or without the trailing slash"
    );

    // Another organisation sees nothing of it.
    assert_eq!(s.get("/api/myntrix/devices/", &bob).await.body, json!([]));
    let r = s.get(&format!("/api/myntrix/devices/{id}"), &bob).await;
    assert_eq!(r.status, 404);
    assert!(r.body["detail"].is_string());
    let r = s
        .post(
            &format!("/api/myntrix/devices/{id}/command"),
            &bob,
            json!({"command": "system.healthCheck"}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);

    // A command runs on the daemon and answers with its result.
    let r = s
        .post(
            &format!("/api/myntrix/devices/{id}/command"),
            &alice,
            json!({"command": "system.healthCheck"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "success");
    let result: Value = serde_json::from_str(r.body["message"].as_str().unwrap()).unwrap();
    assert_eq!(result["healthy"], true, "{result}");
    assert!(uuid::Uuid::parse_str(r.body["message_id"].as_str().unwrap()).is_ok());
    // It is a job of the caller's, as every execution is.
    let jobs = s.get("/api/myntrix/jobs/", &alice).await;
    assert!(
        jobs.body
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["status"] == "completed" && j["details"]["resource_id"] == id.as_str()),
        "{}",
        jobs.body
    );
    for bad in ["G0 X10 Y10", "rm -rf /"] {
        let r = s
            .post(
                &format!("/api/myntrix/devices/{id}/command"),
                &alice,
                json!({"command": bad}),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(
            r.body["detail"]
                .as_str()
                .unwrap()
                .contains("system.healthCheck"),
            "the refusal lists what is supported: {}",
            r.body
        );
    }
    let r = s
        .post(
            &format!("/api/myntrix/devices/{id}/command"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = s
        .post(
            &format!("/api/myntrix/devices/{id}/command"),
            &viewer,
            json!({"command": "system.healthCheck"}),
        )
        .await;
    assert_eq!(r.status, 403, "a viewer looks, never acts");

    // An upload reaches the daemon's disk under a safe name, checked.
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (status, body) = post_form(
        &s,
        &alice,
        &format!("/api/myntrix/devices/{id}/upload"),
        form("../../evil", &bytes),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("'evil'"),
        "{body}"
    );
    let landed = dir.path().join("uploads").join(&id).join("evil");
    assert_eq!(
        std::fs::read(&landed).unwrap(),
        bytes,
        "{}",
        landed.display()
    );
    assert!(!dir.path().join("evil").exists());
    // The file is no longer served once delivered.
    let file_id = body["file_id"].as_str().unwrap();
    let r = s
        .get(
            &format!("/api/myntrix/devices/{id}/files/{file_id}"),
            &alice,
        )
        .await;
    assert_eq!(r.status, 404);
    let (status, _) = post_form(
        &s,
        &alice,
        &format!("/api/myntrix/devices/{id}/upload"),
        format!("--{BOUNDARY}--\r\n").into_bytes(),
    )
    .await;
    assert_eq!(status, 422, "no file");

    // Renamed and typed through vareon: the node's name is the device's.
    let r = s
        .put(
            &format!("/api/myntrix/devices/{id}"),
            &alice,
            json!({"name": "Rig Alpha", "type": "gpu_server", "configuration": {"rack": 4, "cpuCores": 9999}, "status": "maintenance"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "Rig Alpha");
    assert_eq!(r.body["type"], "gpu_server");
    assert_eq!(r.body["configuration"]["rack"], 4);
    assert_ne!(
        r.body["configuration"]["cpuCores"], 9999,
        "facts are the node's"
    );
    assert_eq!(
        r.body["status"], "connected",
        "status is not a client's to set"
    );
    let node = s.get(&format!("/api/nodes/{id}"), &alice).await;
    assert_eq!(node.body["name"], "Rig Alpha");
    let r = s
        .put(
            &format!("/api/myntrix/devices/{id}"),
            &alice,
            json!({"connection_string": "node://elsewhere"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);

    // Disconnected: the node stays online, commands are refused.
    let r = s
        .post(
            &format!("/api/myntrix/devices/{id}/disconnect"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "disconnected");
    assert_eq!(
        s.get(&format!("/api/nodes/{id}"), &alice).await.body["status"],
        "online"
    );
    let r = s
        .post(
            &format!("/api/myntrix/devices/{id}/command"),
            &alice,
            json!({"command": "system.healthCheck"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = s
        .post(
            &format!("/api/myntrix/devices/{id}/connect"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "connected", "{}", r.body);

    // The overviews count it; another organisation's do not.
    let st = s.get("/api/system/status", &alice).await;
    assert_eq!(st.status, 200, "{}", st.body);
    assert_eq!(myntrix(&st.body, "devicesConnected"), 1, "{}", st.body);
    assert_eq!(
        st.body["arcana"]["devicesConnected"], 0,
        "a block's own counters only"
    );
    assert!(myntrix(&st.body, "jobsCompleted") >= 1);
    assert_eq!(
        myntrix(
            &s.get("/api/system/status", &bob).await.body,
            "devicesConnected"
        ),
        0
    );
    let viz = s.get("/api/myntrix/visualization-data", &alice).await;
    assert_eq!(viz.body["devices"][0]["id"], id.as_str());
    assert!(viz.body["devices"][0].get("owner_id").is_none());
    assert!(viz.body["timestamp"].is_string());
    let found = s.get("/api/search?query=ALPHA", &alice).await;
    assert_eq!(
        found.body,
        json!([{"type": "hardware_device", "id": id, "name": "Rig Alpha", "device_type": "gpu_server"}])
    );
    assert_eq!(s.get("/api/search?query=alpha", &bob).await.body, json!([]));

    // The daemon gone: disconnected, and commands refused at once.
    d.kill().unwrap();
    d.wait().unwrap();
    eventually(10, "the device disconnected", || async {
        (device(&s, &alice, &id).await["status"] == "disconnected").then_some(())
    })
    .await;
    let st = s.get("/api/system/status", &alice).await;
    assert_eq!(myntrix(&st.body, "devicesConnected"), 0);
    let r = s
        .post(
            &format!("/api/myntrix/devices/{id}/command"),
            &alice,
            json!({"command": "system.healthCheck"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let (status, _) = post_form(
        &s,
        &alice,
        &format!("/api/myntrix/devices/{id}/upload"),
        form("x.bin", b"x"),
    )
    .await;
    assert_eq!(status, 409);

    // Connected while its daemon is down: answered at once, disconnected,
    // and connected by itself once the daemon is back.
    s.post(
        &format!("/api/myntrix/devices/{id}/disconnect"),
        &alice,
        json!({}),
    )
    .await;
    let r = s
        .post(
            &format!("/api/myntrix/devices/{id}/connect"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "disconnected");
    let mut d = daemon(&s.base, &node_token, "dev-a", dir.path());
    eventually(15, "connected again by itself", || async {
        (device(&s, &alice, &id).await["status"] == "connected").then_some(())
    })
    .await;
    d.kill().unwrap();
    d.wait().unwrap();

    // Deleting the device deletes the node.
    let r = s
        .delete(&format!("/api/myntrix/devices/{id}"), &alice)
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(s.get(&format!("/api/nodes/{id}"), &alice).await.status, 404);
    assert_eq!(s.get("/api/myntrix/devices/", &alice).await.body, json!([]));
    s.stop().await;
}

#[tokio::test]
async fn plain_devices_are_records_warden_never_connects_to() {
    let s = TestServer::start().await;
    let (alice, alice_user) = s.user("plainalice", &["operator"], None).await;
    let (bob, _) = s.user("plainbob", &["operator"], None).await;
    let r = s
        .post("/api/nodes", &alice, common::node_body("gpu-1", "GPU 1"))
        .await;
    assert_eq!(r.status, 201);
    let node_id = r.body["_id"].as_str().unwrap().to_owned();

    let r = s
        .post(
            "/api/myntrix/devices/",
            &alice,
            json!({"name": "Arm", "type": "robot_arm", "connection_string": "/dev/ttyUSB0",
                   "status": "connected", "firmware_version": "1.2", "configuration": {"baud": 115200}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let arm = r.body["id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&arm).is_ok());
    assert_eq!(r.body["owner_id"], alice_user["id"]);
    assert_eq!(r.body["configuration"], json!({"baud": 115200}));
    assert_eq!(r.body["last_seen"], Value::Null);

    for path in ["connect", "disconnect"] {
        let r = s
            .post(
                &format!("/api/myntrix/devices/{arm}/{path}"),
                &alice,
                json!({}),
            )
            .await;
        assert_eq!(r.status, 409, "{path}: {}", r.body);
        assert!(
            r.body["detail"]
                .as_str()
                .unwrap()
                .contains("scheme 'serial' is not supported"),
            "{}",
            r.body
        );
    }
    let r = s
        .post(
            &format!("/api/myntrix/devices/{arm}/command"),
            &alice,
            json!({"command": "system.healthCheck"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let (status, body) = post_form(
        &s,
        &alice,
        &format!("/api/myntrix/devices/{arm}/upload"),
        form("fw.bin", b"firmware"),
    )
    .await;
    assert_eq!(status, 409, "{body}");

    // node:// names the organisation's nodes, which are devices already.
    let r = s
        .post(
            "/api/myntrix/devices/",
            &alice,
            json!({"name": "n", "type": "t", "connection_string": "node://gpu-1"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    for unknown in ["node://nobody", &format!("node://{node_id}")] {
        let r = s
            .post(
                "/api/myntrix/devices/",
                &bob,
                json!({"name": "n", "type": "t", "connection_string": unknown}),
            )
            .await;
        assert_eq!(r.status, 422, "{unknown}: {}", r.body);
        assert_eq!(r.body["detail"][0]["type"], "value_error");
    }
    let r = s
        .post("/api/myntrix/devices/", &alice, json!({"name": "n"}))
        .await;
    assert_eq!(r.status, 422);
    let r = s
        .post(
            "/api/myntrix/devices/",
            &alice,
            json!({"name": "n", "type": "t", "connection_string": "x", "configuration": [1]}),
        )
        .await;
    assert_eq!(r.status, 422, "configuration is an object");

    let r = s
        .put(
            &format!("/api/myntrix/devices/{arm}"),
            &alice,
            json!({"status": "maintenance", "last_seen": "2026-01-02T03:04:05Z", "name": "Arm 2"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "maintenance");
    assert_eq!(r.body["name"], "Arm 2");
    assert!(
        r.body["last_seen"]
            .as_str()
            .unwrap()
            .starts_with("2026-01-02T03:04:05")
    );
    assert_eq!(r.body["type"], "robot_arm", "unchanged");

    let list = s.get("/api/myntrix/devices/?limit=1", &alice).await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    assert_eq!(
        list.body[0]["id"],
        node_id.as_str(),
        "oldest first: the node"
    );
    let r = s.get("/api/myntrix/devices/?skip=-1", &alice).await;
    assert_eq!(r.status, 422);
    let st = s.get("/api/system/status", &alice).await;
    assert_eq!(
        myntrix(&st.body, "devicesConnected"),
        0,
        "a plain device says connected but nothing is: {}",
        st.body
    );

    assert_eq!(
        s.get(&format!("/api/myntrix/devices/{arm}"), &bob)
            .await
            .status,
        404
    );
    assert_eq!(
        s.delete(&format!("/api/myntrix/devices/{arm}"), &bob)
            .await
            .status,
        404
    );
    let r = s
        .delete(&format!("/api/myntrix/devices/{arm}"), &alice)
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.body, Value::String(String::new()), "204 has no body");
    assert_eq!(
        s.get(&format!("/api/myntrix/devices/{arm}"), &alice)
            .await
            .status,
        404
    );
    s.stop().await;
}

#[tokio::test]
async fn system_status_and_search_count_what_the_organisation_has() {
    let s = TestServer::start().await;
    let (alice, _) = s.user("statalice", &["admin"], None).await;
    let (bob, _) = s.user("statbob", &["operator"], None).await;
    let st = s.get("/api/system/status", &alice).await;
    assert_eq!(st.status, 200, "{}", st.body);
    for block in ["arcana", "myntrix", "neosyntis", "cognisys"] {
        let b = &st.body[block];
        assert_eq!(b["status"], "online");
        let uptime = b["uptime"].as_str().unwrap();
        assert!(uptime.ends_with('s') && uptime.contains("d "), "{uptime}");
        assert_eq!(b.as_object().unwrap().len(), 14, "{block}: {b}");
        assert_eq!(b["datasetsManaged"], 0);
    }
    assert_eq!(st.body["neosyntis"]["searchQueriesProcessed"], 0);

    let r = s
        .post(
            "/api/neosyntis/workflows/",
            &alice,
            json!({"name": "Nightly 100%_report", "steps": "[]"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let wf = r.body["id"].as_str().unwrap().to_owned();
    let r = s
        .post(
            "/api/agents",
            &alice,
            json!({"name": "Report agent", "description": "d", "role": "reporter"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let agent = r.body["_id"].as_str().unwrap().to_owned();
    let r = s
        .post(
            "/api/cognisys/providers/",
            &alice,
            json!({"name": "local", "base_url": "http://127.0.0.1:9"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = s
        .post(
            "/api/cognisys/models/",
            &alice,
            json!({"provider_id": r.body["id"], "model_name": "small"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = s
        .post(
            "/api/cognisys/routing-rules",
            &alice,
            json!({"name": "reports to small", "condition": "text contains \"report\"", "target_model": "small", "priority": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);

    // Literal: % and _ are characters, not wildcards.
    let found = s.get("/api/search?query=100%25_R", &alice).await;
    assert_eq!(found.status, 200);
    assert_eq!(
        found.body,
        json!([{"type": "workflow", "id": wf, "name": "Nightly 100%_report", "status": "created"}])
    );
    assert_eq!(s.get("/api/search?query=1_0", &alice).await.body, json!([]));
    let found = s.get("/api/search?query=report", &alice).await;
    let types: Vec<&str> = found
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["workflow", "agent", "routing_rule"],
        "{}",
        found.body
    );
    assert_eq!(found.body[1]["id"], agent.as_str());
    assert_eq!(found.body[1]["status"], "running");
    assert_eq!(found.body[2]["target_model"], "small");
    assert_eq!(
        s.get("/api/search?query=report", &bob).await.body,
        json!([])
    );
    let r = s.get("/api/search", &alice).await;
    assert_eq!(r.status, 422, "query is required: {}", r.body);

    let st = s.get("/api/system/status", &alice).await;
    assert_eq!(
        st.body["neosyntis"]["searchQueriesProcessed"], 3,
        "searches answered (the refused one is not): {}",
        st.body
    );
    assert_eq!(st.body["myntrix"]["activeAgents"], 1);
    assert_eq!(st.body["cognisys"]["routingRules"], 1);
    let models = s.get("/api/cognisys/models/", &alice).await;
    assert_eq!(
        st.body["cognisys"]["modelsActive"],
        models.body.as_array().unwrap().len(),
        "the models the organisation can use, its own and the server's: {}",
        models.body
    );
    assert_eq!(st.body["arcana"]["routingRules"], 0);
    let st = s.get("/api/system/status", &bob).await;
    assert_eq!(st.body["neosyntis"]["searchQueriesProcessed"], 1);
    assert_eq!(st.body["myntrix"]["activeAgents"], 0);
    let viz = s.get("/api/myntrix/visualization-data", &alice).await;
    assert_eq!(viz.body["agents"][0]["type"], "reporter");
    assert_eq!(viz.body["agents"][0]["health"], 100);
    assert_eq!(viz.body["devices"], json!([]));
    let r = s
        .call(reqwest::Method::GET, "/api/system/status", None, None)
        .await;
    assert_eq!(r.status, 401);
    s.stop().await;
}

/// A daemon of `node_id` over the raw node protocol, with a node token.
async fn raw_daemon(
    s: &TestServer,
    token: &str,
    node_id: &str,
) -> (common::WsNode, String, String) {
    let r = s
        .post("/api/nodes", token, common::node_body(node_id, node_id))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["_id"].as_str().unwrap().to_owned();
    let minted = s
        .post(&format!("/api/nodes/{id}/token"), token, json!({}))
        .await;
    let node_token = minted.body["token"].as_str().unwrap().to_owned();
    let mut ws = common::WsNode::connect(s, &format!("token={node_token}&nodeId={node_id}"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    ws.send("node.register", json!({"hostname": node_id})).await;
    ws.expect("register.ack").await;
    (ws, id, node_token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_file_is_served_to_its_node_alone_and_let_go_after() {
    let s = TestServer::start_with(fast_nodes).await;
    let (alice, _) = s.user("filealice", &["operator"], None).await;
    let (mut ws, id, token_a) = raw_daemon(&s, &alice, "files-a").await;
    let (_ws_b, _, token_b) = raw_daemon(&s, &alice, "files-b").await;

    let upload = {
        let (s, alice, id) = (&s, alice.clone(), id.clone());
        async move {
            post_form(
                s,
                &alice,
                &format!("/api/myntrix/devices/{id}/upload"),
                form("C:\\Users\\me\\report 'final'.pdf", b"%PDF-1.4 the content"),
            )
            .await
        }
    };
    let daemon = async {
        let cmd = loop {
            let v = ws.recv().await.expect("the command");
            if v["type"] == "file.download" {
                break v;
            }
        };
        let data = &cmd["data"];
        assert_eq!(
            data["fileName"], "report final.pdf",
            "the last component, quotes dropped"
        );
        assert_eq!(data["targetPath"], id.as_str());
        assert_eq!(data["fileSize"], 20);
        let path = data["source"]
            .as_str()
            .unwrap()
            .strip_prefix("warden:")
            .unwrap()
            .to_owned();
        // Another node's credential does not reach it; its own does.
        let other = s
            .http
            .get(format!("{}{path}", s.base))
            .bearer_auth(&token_b)
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 404);
        let none = s
            .http
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 401);
        let own = s
            .http
            .get(format!("{}{path}", s.base))
            .bearer_auth(&token_a)
            .send()
            .await
            .unwrap();
        assert_eq!(own.status(), 200);
        assert!(
            own.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .contains("reportfinal.pdf"),
            "a header-safe name"
        );
        assert_eq!(own.bytes().await.unwrap().as_ref(), b"%PDF-1.4 the content");
        let mid = cmd["messageId"].as_str().unwrap();
        ws.send(
            "command.ack",
            json!({"originalMessageId": mid, "status": "acknowledged"}),
        )
        .await;
        ws.send(
            "command.result",
            json!({"originalMessageId": mid, "status": "error", "error": {"code": "CHECKSUM_MISMATCH", "message": "sha256 differs"}}),
        )
        .await;
        path
    };
    let ((status, body), path) = tokio::join!(upload, daemon);
    assert_eq!(status, 502, "the device's refusal, said: {body}");
    assert!(
        body["detail"].as_str().unwrap().contains("sha256 differs"),
        "{body}"
    );
    // The delivery ended: the file is no longer held.
    let gone = s
        .http
        .get(format!("{}{path}", s.base))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_daemon_gets_a_504_and_an_oversized_upload_a_413() {
    let s = TestServer::start_with(|c| {
        fast_nodes(c);
        c.device_command_wait = std::time::Duration::from_secs(1);
    })
    .await;
    let (alice, _) = s.user("silentalice", &["operator"], None).await;
    let (mut ws, id, _) = raw_daemon(&s, &alice, "silent-a").await;
    let asked = async {
        s.post(
            &format!("/api/myntrix/devices/{id}/command"),
            &alice,
            json!({"command": "system.healthCheck"}),
        )
        .await
    };
    let silent = async {
        // Acknowledged, never answered.
        let cmd = loop {
            let v = ws.recv().await.expect("the command");
            if v["type"] == "system.healthCheck" {
                break v;
            }
        };
        ws.send(
            "command.ack",
            json!({"originalMessageId": cmd["messageId"], "status": "acknowledged"}),
        )
        .await;
    };
    let (r, ()) = tokio::join!(asked, silent);
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{}",
        r.body
    );

    // Over 100 MB: refused as it streams in, nothing sent to the device.
    let big = vec![b'z'; 101 * 1024 * 1024];
    let (status, body) = post_form(
        &s,
        &alice,
        &format!("/api/myntrix/devices/{id}/upload"),
        form("big.bin", &big),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    s.stop().await;
}
