//! Identity under abuse: login bursts cannot slip past the limit, a
//! stranger cannot lock a user out, `X-Forwarded-For` counts only from
//! trusted proxies, mail-sending routes are limited, signing keys rotate
//! without ending older tokens, and node tokens are listed and revoked.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

fn behind_proxy(c: &mut warden::config::ServerConfig) {
    c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}

/// A password login through the (trusted) proxy for `client`.
async fn login_from(s: &TestServer, client: &str, username: &str, password: &str) -> u16 {
    s.http
        .post(format!("{}/auth/login", s.base))
        .header("x-forwarded-for", format!("{client}, 127.0.0.1"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_gets_exactly_the_limit_and_a_stranger_cannot_lock_a_user_out() {
    let s = TestServer::start_with(behind_proxy).await;
    s.user("victim", &["operator"], None).await;

    // 60 wrong passwords at once from one address: the limit (30) is
    // reserved before any password is checked, so exactly 30 are checked.
    let attempts: Vec<_> = (0..60)
        .map(|_| {
            let s = &s;
            async move { login_from(s, "203.0.113.5", "victim", "wrong-password").await }
        })
        .collect();
    let mut codes = futures_util::future::join_all(attempts).await;
    codes.sort();
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 30, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 30, "{codes:?}");

    // The attacker's address is spent, even with the right password...
    assert_eq!(
        login_from(&s, "203.0.113.5", "victim", "user-password-1").await,
        429
    );
    // ...but the victim, from their own address, logs in.
    assert_eq!(
        login_from(&s, "198.51.100.7", "victim", "user-password-1").await,
        200
    );
    // Correct logins never count: many in a row stay fine.
    for _ in 0..35 {
        assert_eq!(
            login_from(&s, "198.51.100.7", "victim", "user-password-1").await,
            200
        );
    }
}

#[tokio::test]
async fn forwarded_for_is_ignored_from_peers_that_are_not_trusted_proxies() {
    let s = TestServer::start().await;
    s.user("target", &["operator"], None).await;
    for i in 0..30 {
        assert_eq!(
            login_from(&s, &format!("192.0.2.{i}"), "target", "wrong-password").await,
            401
        );
    }
    // Every attempt counted against the real peer, whatever the header said.
    assert_eq!(
        login_from(&s, "192.0.2.99", "someone-else", "wrong-password").await,
        429
    );
}

#[tokio::test]
async fn sign_ups_and_reset_requests_are_limited_per_address() {
    let s = TestServer::start_with(|c| c.rate_limits.mail_per_minute = Some(3)).await;
    for i in 0..3 {
        let r = s
            .call(
                Method::POST,
                "/api/v1/auth/signup",
                None,
                Some(json!({"username": format!("spam{i}"), "email": format!("spam{i}@example.com"), "password": "spam-password"})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    for (path, body) in [
        (
            "/api/v1/auth/signup",
            json!({"username": "spam9", "email": "spam9@example.com", "password": "spam-password"}),
        ),
        (
            "/api/v1/auth/forgot-password",
            json!({"email": "spam0@example.com"}),
        ),
        (
            "/api/auth/register",
            json!({"email": "nn@example.com", "password": "nn-password", "name": "N"}),
        ),
    ] {
        let r = s.call(Method::POST, path, None, Some(body)).await;
        assert_eq!(r.status, 429, "{path}: {}", r.body);
        assert!(r.headers.contains_key("retry-after"), "{path}");
    }
    // Nothing was created by the refused sign-up.
    let users = s.get("/admin/users", &s.admin_token).await.body;
    assert!(!users.to_string().contains("spam9"), "{users}");
}

fn kid_of(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["kid"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn signing_keys_rotate_and_older_tokens_stay_valid_until_they_expire() {
    let s = TestServer::start().await;
    let (user, _) = s.user("rotor", &["viewer"], None).await;
    let before = s.admin_token.clone();
    let first_kid = kid_of(&before).expect("tokens name their key");

    assert_eq!(
        s.call(Method::POST, "/admin/keys/rotate", Some(&user), None)
            .await
            .status,
        403
    );
    let r = s
        .call(Method::POST, "/admin/keys/rotate", Some(&before), None)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["current"], true);
    let second_kid = r.body["kid"].as_str().unwrap().to_owned();
    assert_ne!(second_kid, first_kid);

    // Old tokens still work; new ones are signed with the new key.
    assert_eq!(s.get("/api/nodes", &before).await.status, 200);
    assert_eq!(s.get("/api/nodes", &user).await.status, 200);
    let after = s.login(ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(kid_of(&after).as_deref(), Some(second_kid.as_str()));
    let keys = s.get("/admin/keys", &after).await.body;
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let old = keys
        .iter()
        .find(|k| k["kid"] == first_kid.as_str())
        .unwrap();
    assert_eq!(old["current"], false);
    assert!(old["retiresAt"].is_string(), "{old}");
    assert!(!serde_json::to_string(keys).unwrap().contains("secret"));

    // Both tokens survive a restart.
    let s = s.restart(|_| {}).await;
    assert_eq!(s.get("/api/nodes", &before).await.status, 200);
    assert_eq!(s.get("/api/nodes", &after).await.status, 200);
}

#[tokio::test]
async fn node_tokens_are_listed_bounded_and_revocable() {
    let s = TestServer::start_with(fast_nodes).await;
    let t = s.admin_token.clone();
    let id = s
        .post("/api/nodes", &t, node_body("tok-node", "T"))
        .await
        .body["_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The operator's default lifetime (30 days), and a bound on it.
    let r = s
        .post(&format!("/api/nodes/{id}/token"), &t, json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let expires = chrono::DateTime::parse_from_rfc3339(r.body["expiresAt"].as_str().unwrap())
        .unwrap()
        .timestamp();
    let days = (expires - chrono::Utc::now().timestamp()) as f64 / 86400.0;
    assert!((29.9..=30.1).contains(&days), "{days}");
    let token = r.body["token"].as_str().unwrap().to_owned();
    let token_id = r.body["id"].as_str().unwrap().to_owned();
    let r = s
        .post(
            &format!("/api/nodes/{id}/token"),
            &t,
            json!({"expiresIn": "400d"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);

    let list = s.get(&format!("/api/nodes/{id}/tokens"), &t).await.body;
    assert_eq!(list["data"][0]["id"], token_id.as_str());
    assert_eq!(list["data"][0]["status"], "active");
    assert!(!list.to_string().contains(&token), "never the token itself");

    // A daemon connected with it is dropped on revocation and cannot return.
    let mut ws = WsNode::connect(&s, &format!("token={token}"))
        .await
        .unwrap();
    ws.expect("connection.ack").await;
    ws.send("node.register", json!({"nodeId": "tok-node", "name": "T"}))
        .await;
    ws.expect("register.ack").await;
    let r = s
        .delete(&format!("/api/nodes/{id}/tokens/{token_id}"), &t)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "revoked");
    while ws.recv().await.is_some() {}
    match WsNode::connect(&s, &format!("token={token}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 401)
        }
        other => panic!("a revoked token connected: {:?}", other.is_ok()),
    }
    let node = s.get(&format!("/api/nodes/{id}"), &t).await.body;
    assert_eq!(node["websocketConnected"], false);
    let list = s.get(&format!("/api/nodes/{id}/tokens"), &t).await.body;
    assert_eq!(list["data"][0]["status"], "revoked");
    assert_eq!(
        s.delete(&format!("/api/nodes/{id}/tokens/no-such-token"), &t)
            .await
            .status,
        404
    );
}
