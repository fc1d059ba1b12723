//! Contenox's identity routes: register/login/refresh, the UI cookie
//! flow, users, access control, and X-API-Key keys (shown once, hashed,
//! accepted on every dialect).

mod common;

use common::TestServer;
use reqwest::Method;
use serde_json::{Value, json};

fn set_cookie(r: &common::Reply) -> String {
    r.headers["set-cookie"].to_str().unwrap().to_owned()
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

async fn with_cookie(s: &TestServer, method: Method, path: &str, cookie: &str) -> common::Reply {
    let resp = s
        .http
        .request(method, format!("{}{}", s.base, path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    common::Reply {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn register_login_refresh_and_errors() {
    let s = TestServer::start().await;
    let r = s.call(Method::POST, "/register", None, Some(json!({"email": "cora@example.com", "password": "cora-password", "friendlyName": "Cora", "allowedResources": []}))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["user"]["email"], "cora@example.com");
    assert_eq!(r.body["user"]["friendlyName"], "Cora");
    assert!(r.body["expiresAt"].as_str().unwrap().ends_with('Z'));
    let r = s
        .call(
            Method::POST,
            "/register",
            None,
            Some(json!({"email": "cora@example.com", "password": "cora-password"})),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], "conflict");
    let r = s
        .call(
            Method::POST,
            "/register",
            None,
            Some(json!({"password": 5})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]["message"].is_string()
            && r.body["error"]["type"].is_string()
            && r.body["error"]["param"].is_string()
    );

    let r = s
        .call(
            Method::POST,
            "/login",
            None,
            Some(json!({"email": "cora@example.com", "password": "cora-password"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.body["token"].as_str().unwrap().to_owned();
    let r = s
        .call(
            Method::POST,
            "/login",
            None,
            Some(json!({"email": "cora@example.com", "password": "wrong-password"})),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );

    // Refresh: a new token; the old one is revoked.
    let r = s
        .call(
            Method::POST,
            "/token_refresh",
            None,
            Some(json!({"token": t})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let fresh = r.body["token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, t);
    assert_eq!(s.get("/users", &t).await.status, 401);
    assert_eq!(s.get("/users", &fresh).await.status, 200);
    assert_eq!(
        s.call(
            Method::POST,
            "/token_refresh",
            None,
            Some(json!({"token": "junk"}))
        )
        .await
        .status,
        401
    );
    s.stop().await;
}

#[tokio::test]
async fn the_ui_cookie_flow() {
    let s = TestServer::start().await;
    let r = s
        .call(
            Method::POST,
            "/ui/register",
            None,
            Some(
                json!({"email": "ui@example.com", "password": "ui-password", "friendlyName": "UI"}),
            ),
        )
        .await;
    assert_eq!(r.status, 201);
    let sc = set_cookie(&r);
    assert!(sc.starts_with("auth_token="));
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(sc.contains(attr), "{attr} in {sc}");
    }
    assert!(
        r.body.to_string().find("auth_token").is_none(),
        "the token is not in the body"
    );

    let r = s
        .call(
            Method::POST,
            "/ui/login",
            None,
            Some(json!({"email": "ui@example.com", "password": "ui-password"})),
        )
        .await;
    assert_eq!(r.status, 200);
    let cookie = cookie_pair(&set_cookie(&r));
    let me = with_cookie(&s, Method::GET, "/ui/me", &cookie).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["email"], "ui@example.com");
    // The cookie works on Contenox routes, not on other dialects' routes.
    assert_eq!(
        with_cookie(&s, Method::GET, "/users", &cookie).await.status,
        200
    );
    assert_eq!(
        with_cookie(&s, Method::GET, "/api/nodes", &cookie)
            .await
            .status,
        401
    );

    let r = with_cookie(&s, Method::POST, "/ui/token_refresh", &cookie).await;
    assert_eq!(r.status, 200);
    let refreshed = cookie_pair(&set_cookie(&r));
    assert_ne!(refreshed, cookie);
    assert_eq!(
        with_cookie(&s, Method::GET, "/ui/me", &cookie).await.status,
        401,
        "the old cookie's token is revoked"
    );

    let r = with_cookie(&s, Method::POST, "/ui/logout", &refreshed).await;
    assert_eq!(r.status, 200);
    assert!(set_cookie(&r).contains("Max-Age=0"));
    assert_eq!(
        with_cookie(&s, Method::GET, "/ui/me", &refreshed)
            .await
            .status,
        401
    );
    assert_eq!(s.call(Method::GET, "/ui/me", None, None).await.status, 401);
    s.stop().await;
}

#[tokio::test]
async fn users_crud_with_cursor_paging() {
    let s = TestServer::start().await;
    let t = s.admin_token.clone();
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = s.post("/users", &t, json!({"email": format!("u{i}@example.com"), "password": "user-password", "friendlyName": format!("User {i}"), "allowedResources": []})).await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let all = s.get("/users", &t).await.body;
    assert_eq!(all[0]["id"], ids[2].as_str(), "newest first");
    let page = s.get("/users?limit=2", &t).await.body;
    assert_eq!(page.as_array().unwrap().len(), 2);
    let cursor = page[1]["createdAt"].as_str().unwrap();
    let next = s
        .get(&format!("/users?limit=2&cursor={cursor}"), &t)
        .await
        .body;
    assert_eq!(next[0]["id"], ids[0].as_str());
    assert_eq!(s.get("/users?cursor=yesterday", &t).await.status, 400);

    let r = s
        .put(
            &format!("/users/{}", ids[0]),
            &t,
            json!({"friendlyName": "Renamed", "password": "user-password-2"}),
        )
        .await;
    assert_eq!(r.body["friendlyName"], "Renamed");
    // A user sees and changes themselves, not others; only admins create or delete.
    let u0 = s
        .call(
            Method::POST,
            "/login",
            None,
            Some(json!({"email": "u0@example.com", "password": "user-password-2"})),
        )
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(s.get(&format!("/users/{}", ids[0]), &u0).await.status, 200);
    assert_eq!(s.get(&format!("/users/{}", ids[1]), &u0).await.status, 404);
    assert_eq!(
        s.post(
            "/users",
            &u0,
            json!({"email": "x@example.com", "password": "user-password"})
        )
        .await
        .status,
        403
    );
    assert_eq!(
        s.delete(&format!("/users/{}", ids[1]), &u0).await.status,
        403
    );
    assert_eq!(
        s.delete(&format!("/users/{}", ids[0]), &t).await.status,
        200
    );
    assert_eq!(s.get(&format!("/users/{}", ids[0]), &t).await.status, 404);
    assert_eq!(
        s.get("/users", &u0).await.status,
        401,
        "a deleted user's token stops"
    );
    s.stop().await;
}

#[tokio::test]
async fn access_control_entries() {
    let s = TestServer::start().await;
    let t = s.admin_token.clone();
    let (user, user_body) = s.user("grantee", &["operator"], None).await;
    let uid = user_body["id"].as_str().unwrap();
    assert_eq!(
        s.get("/permissions", &t).await.body,
        json!(["none", "view", "edit", "manage"])
    );
    let r = s.post("/access-control", &t, json!({"identity": uid, "resource": "files/report.pdf", "resourceType": "file", "permission": "view"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(s.post("/access-control", &t, json!({"identity": uid, "resource": "files/report.pdf", "resourceType": "file", "permission": "edit"})).await.status, 409);
    assert_eq!(s.post("/access-control", &t, json!({"identity": uid, "resource": "r", "resourceType": "file", "permission": "godmode"})).await.status, 400);
    assert_eq!(
        s.post(
            "/access-control",
            &user,
            json!({"identity": uid, "resource": "r", "resourceType": "file", "permission": "view"})
        )
        .await
        .status,
        403
    );

    let r = s
        .get(&format!("/access-control/{id}?expand=user"), &t)
        .await;
    assert_eq!(r.body["identityDetails"]["id"], uid);
    let r = s
        .put(
            &format!("/access-control/{id}"),
            &t,
            json!({"permission": "manage"}),
        )
        .await;
    assert_eq!(r.body["permission"], "manage");
    // The grantee reads the grants made to them, and only those.
    let mine = s.get("/access-control", &user).await.body;
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(
        s.get(&format!("/access-control?identity={uid}"), &t)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.delete(&format!("/access-control/{id}"), &t).await.status,
        200
    );
    assert_eq!(
        s.get(&format!("/access-control/{id}"), &t).await.status,
        404
    );
    s.stop().await;
}

#[tokio::test]
async fn api_keys_are_shown_once_and_work_everywhere() {
    let s = TestServer::start().await;
    let (user, _) = s.user("keyholder", &["operator"], None).await;
    let r = s.post("/auth/api-keys", &user, json!({"name": "ci"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let key = r.body["key"].as_str().unwrap().to_owned();
    let key_id = r.body["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("wk_") && !key.contains('.'));
    // Listed without the key.
    let list = s.get("/auth/api-keys", &user).await.body;
    assert_eq!(list[0]["id"], key_id.as_str());
    assert!(!list.to_string().contains(&key));

    // X-API-Key on Vareon, AIWM, Contenox and Forge routes.
    for path in ["/api/users/me", "/api/nodes", "/users", "/api/v1/auth/me"] {
        let r = s
            .http
            .get(format!("{}{}", s.base, path))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = s
        .http
        .get(format!("{}/api/users/me", s.base))
        .header("x-api-key", format!("{key}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Deleted: refused everywhere at once.
    assert_eq!(
        s.delete(&format!("/auth/api-keys/{key_id}"), &user)
            .await
            .status,
        204
    );
    let r = s
        .http
        .get(format!("{}/api/users/me", s.base))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        s.delete(&format!("/auth/api-keys/{key_id}"), &user)
            .await
            .status,
        404
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_paging_never_skips_users_created_in_the_same_millisecond() {
    let s = TestServer::start().await;
    let t = s.admin_token.clone();
    // Created all at once: many would share a millisecond.
    let created = futures_util::future::join_all((0..24).map(|i| {
        let (s, t) = (&s, t.clone());
        async move {
            let r = s.post("/users", &t, json!({"email": format!("burst{i}@example.com"), "password": "user-password", "friendlyName": format!("B{i}"), "allowedResources": []})).await;
            assert_eq!(r.status, 201, "{}", r.body);
            r.body["id"].as_str().unwrap().to_owned()
        }
    }))
    .await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/users?limit=5&cursor={c}"),
            None => "/users?limit=5".into(),
        };
        let page = s.get(&path, &t).await.body;
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        for u in &page {
            seen.push(u["id"].as_str().unwrap().to_owned());
        }
        cursor = page.last().unwrap()["createdAt"]
            .as_str()
            .map(str::to_owned);
    }
    for id in &created {
        assert_eq!(
            seen.iter().filter(|s| *s == id).count(),
            1,
            "{id} in {seen:?}"
        );
    }
    assert_eq!(seen.len(), created.len() + 1, "the burst and the admin");
}
