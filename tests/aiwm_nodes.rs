//! AIWM §1 nodes: CRUD, paging, filters, sort, soft delete, audit, tenancy.

mod common;

use common::{TestServer, assert_aiwm_error, node_body};
use serde_json::json;

#[tokio::test]
async fn node_lifecycle_matches_the_reference() {
    let s = TestServer::start().await;
    let (token, user) = s.user("tonyh", &["operator"], None).await;
    let user_id = user["id"].as_str().unwrap();
    let org_id = user["orgId"].as_str().unwrap();

    // 1.1 Register: 201 with the documented shape.
    let mut body = node_body("node-gpu-01", "GPU Server 1");
    body["rack"] = json!("r7"); // unknown fields are kept
    let r = s.post("/api/nodes", &token, body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let node = r.body;
    let id = node["_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 24);
    assert_eq!(node["nodeId"], "node-gpu-01");
    assert_eq!(node["name"], "GPU Server 1");
    assert_eq!(node["role"], json!(["worker"]));
    assert_eq!(node["status"], "offline");
    assert_eq!(node["isLocal"], true);
    assert_eq!(node["websocketConnected"], false);
    assert!(node["lastHeartbeat"].is_string());
    assert_eq!(
        (
            node["cpuCores"].clone(),
            node["ramTotal"].clone(),
            node["ramFree"].clone()
        ),
        (json!(16), json!(65536), json!(32768))
    );
    assert_eq!(
        node["owner"],
        json!({"orgId": org_id, "userId": user_id, "groupId": ""})
    );
    assert_eq!(node["createdBy"], user_id);
    assert_eq!(node["updatedBy"], user_id);
    assert_eq!(node["createdAt"], node["updatedAt"]);
    assert_eq!(node["rack"], "r7");

    // The same nodeId twice in one org conflicts.
    let r = s
        .post("/api/nodes", &token, node_body("node-gpu-01", "again"))
        .await;
    assert_aiwm_error(&r, 409, "/api/nodes");

    // 1.3 Get by _id and by nodeId.
    let r = s.get(&format!("/api/nodes/{id}"), &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, node);
    let r = s.get("/api/nodes/node-gpu-01", &token).await;
    assert_eq!(r.body["_id"], id.as_str());

    // 1.4 Update: partial, audit fields move, unknown fields merge.
    let r = s.put(&format!("/api/nodes/{id}"), &token, json!({"name": "GPU Server 1 - Updated", "status": "maintenance", "ramFree": 30000, "zone": "b"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "GPU Server 1 - Updated");
    assert_eq!(r.body["status"], "maintenance");
    assert_eq!(r.body["ramFree"], 30000);
    assert_eq!(r.body["cpuCores"], 16);
    assert_eq!(r.body["rack"], "r7");
    assert_eq!(r.body["zone"], "b");
    assert_eq!(r.body["updatedBy"], user_id);
    assert!(r.body["updatedAt"].as_str() >= node["updatedAt"].as_str());
    assert_eq!(
        s.get(&format!("/api/nodes/{id}"), &token).await.body["status"],
        "maintenance"
    );

    // Server-owned fields cannot be set by clients.
    let r = s
        .put(
            &format!("/api/nodes/{id}"),
            &token,
            json!({"websocketConnected": true, "owner": {"orgId": "x"}, "_id": "y"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["websocketConnected"], false);
    assert_eq!(r.body["owner"]["orgId"], org_id);
    assert_eq!(r.body["_id"], id.as_str());

    // 1.5 Delete: soft, then hidden from every read.
    let r = s.delete(&format!("/api/nodes/{id}"), &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["message"], "Node deleted successfully");
    assert_aiwm_error(
        &s.get(&format!("/api/nodes/{id}"), &token).await,
        404,
        &format!("/api/nodes/{id}"),
    );
    assert_eq!(
        s.get(&format!("/api/nodes/{id}"), &token).await.body["message"],
        format!("Node with ID {id} not found")
    );
    assert_aiwm_error(
        &s.put(&format!("/api/nodes/{id}"), &token, json!({"name": "z"}))
            .await,
        404,
        &format!("/api/nodes/{id}"),
    );
    assert_aiwm_error(
        &s.delete(&format!("/api/nodes/{id}"), &token).await,
        404,
        &format!("/api/nodes/{id}"),
    );
    let r = s.get("/api/nodes", &token).await;
    assert_eq!(r.body["pagination"]["total"], 0);
    // A deleted node's nodeId can be registered again.
    assert_eq!(
        s.post("/api/nodes", &token, node_body("node-gpu-01", "reborn"))
            .await
            .status,
        201
    );
    s.stop().await;
}

#[tokio::test]
async fn list_pages_filters_and_sorts() {
    let s = TestServer::start().await;
    let (token, _) = s.user("lister", &["operator"], None).await;
    for i in 0..25 {
        let mut body = node_body(&format!("node-{i:02}"), &format!("Node {:02}", 24 - i));
        body["status"] = json!(if i % 5 == 0 { "online" } else { "offline" });
        body["isLocal"] = json!(i % 2 == 0);
        body["cpuCores"] = json!(i);
        assert_eq!(s.post("/api/nodes", &token, body).await.status, 201);
    }
    let r = s.get("/api/nodes", &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["pagination"],
        json!({"page": 1, "limit": 10, "total": 25})
    );
    assert_eq!(r.body["data"].as_array().unwrap().len(), 10);

    let r = s.get("/api/nodes?page=3&limit=10", &token).await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 5);
    assert_eq!(
        r.body["pagination"],
        json!({"page": 3, "limit": 10, "total": 25})
    );
    let r = s.get("/api/nodes?page=9&limit=10", &token).await;
    assert_eq!(r.body["data"], json!([]));

    let r = s.get("/api/nodes?filter[status]=online", &token).await;
    assert_eq!(r.body["pagination"]["total"], 5);
    assert!(
        r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["status"] == "online")
    );

    let r = s
        .get(
            "/api/nodes?filter[isLocal]=true&sort=name&limit=100",
            &token,
        )
        .await;
    let names: Vec<&str> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 13);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);

    let r = s.get("/api/nodes?sort=-cpuCores&limit=3", &token).await;
    let cores: Vec<i64> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["cpuCores"].as_i64().unwrap())
        .collect();
    assert_eq!(cores, vec![24, 23, 22]);

    let r = s
        .get(
            "/api/nodes?filter%5Bstatus%5D=online&filter%5BisLocal%5D=false",
            &token,
        )
        .await;
    assert_eq!(r.body["pagination"]["total"], 2); // 5 and 15
    s.stop().await;
}

#[tokio::test]
async fn another_org_sees_nothing_and_viewers_only_read() {
    let s = TestServer::start().await;
    let (alice, alice_user) = s.user("alice", &["operator"], None).await;
    let (mallory, _) = s.user("mallory", &["operator"], None).await;
    let (viewer, _) = s
        .user("vera", &["viewer"], alice_user["orgId"].as_str())
        .await;

    let id = s
        .post("/api/nodes", &alice, node_body("secret-node", "Secret"))
        .await
        .body["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/nodes/{id}");

    // Another org: 404 on every id route, and an empty list.
    assert_aiwm_error(&s.get(&path, &mallory).await, 404, &path);
    assert_aiwm_error(
        &s.put(&path, &mallory, json!({"name": "pwned"})).await,
        404,
        &path,
    );
    assert_aiwm_error(&s.delete(&path, &mallory).await, 404, &path);
    assert_aiwm_error(
        &s.get("/api/nodes/secret-node", &mallory).await,
        404,
        "/api/nodes/secret-node",
    );
    assert_eq!(
        s.get("/api/nodes", &mallory).await.body["pagination"]["total"],
        0
    );
    // Mallory may use the same nodeId in her own org.
    assert_eq!(
        s.post("/api/nodes", &mallory, node_body("secret-node", "Mine"))
            .await
            .status,
        201
    );
    assert_eq!(s.get(&path, &alice).await.body["name"], "Secret");

    // A viewer of alice's org reads but cannot write.
    assert_eq!(s.get(&path, &viewer).await.status, 200);
    assert_eq!(
        s.get("/api/nodes", &viewer).await.body["pagination"]["total"],
        1
    );
    assert_aiwm_error(
        &s.post("/api/nodes", &viewer, node_body("v", "v")).await,
        403,
        "/api/nodes",
    );
    assert_aiwm_error(
        &s.put(&path, &viewer, json!({"name": "x"})).await,
        403,
        &path,
    );
    assert_aiwm_error(&s.delete(&path, &viewer).await, 403, &path);

    // The instance admin sees every org.
    assert_eq!(
        s.get("/api/nodes", &s.admin_token).await.body["pagination"]["total"],
        2
    );
    assert_eq!(s.get(&path, &s.admin_token).await.status, 200);
    s.stop().await;
}
