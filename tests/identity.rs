//! Identity across the dialects: each dialect's documented flow from
//! sign-up to logout, codes and links read from the outbox; credentials
//! that cross dialects; revocation; TOTP; brute force; secrets kept secret.

mod common;

use common::{TestServer, after, digits, latest_mail, now_secs, post_form, totp};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn vareon_register_verify_login_profile() {
    let s = TestServer::start().await;
    let r = s.call(Method::POST, "/api/register", None, Some(json!({"email": "vera@example.com", "username": "vera", "password": "vera-password"}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["message"],
        "Registration successful. Please check your email to verify your account."
    );
    let r = s.call(Method::POST, "/api/register", None, Some(json!({"email": "VERA@example.com", "username": "vera2", "password": "vera-password"}))).await;
    assert_eq!(
        (r.status.as_u16(), r.body["detail"].as_str()),
        (400, Some("Username or email already registered"))
    );
    let r = s
        .call(
            Method::POST,
            "/api/register",
            None,
            Some(json!({"email": "x@example.com"})),
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body["detail"].is_array());

    // Unverified: 403.
    let r = post_form(
        &s,
        "/api/token",
        &[("username", "vera"), ("password", "vera-password")],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let mail = latest_mail(&s, "vera@example.com").await;
    let token = after(mail["body"].as_str().unwrap(), "token: ");
    let r = s
        .call(
            Method::POST,
            "/api/verify-email",
            None,
            Some(json!({"email": "vera@example.com", "token": "wrong"})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = s
        .call(
            Method::POST,
            "/api/verify-email",
            None,
            Some(json!({"email": "nobody@example.com", "token": token})),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = s
        .call(
            Method::POST,
            "/api/verify-email",
            None,
            Some(json!({"email": "vera@example.com", "token": token})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"message": "Email verified successfully!", "status": "success"})
    );

    // OAuth2 password form, by username or email.
    let r = post_form(
        &s,
        "/api/token",
        &[
            ("username", "vera@example.com"),
            ("password", "vera-password"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["token_type"], "bearer");
    let t = r.body["access_token"].as_str().unwrap().to_owned();
    let r = post_form(
        &s,
        "/api/token",
        &[("username", "vera"), ("password", "nope-nope-nope")],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.body["detail"].as_str()),
        (401, Some("Incorrect username or password"))
    );
    let r = post_form(&s, "/api/token", &[("username", "vera")]).await;
    assert_eq!(r.status, 422);

    let me = s.get("/api/users/me", &t).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["username"], "vera");
    assert_eq!(me.body["is_verified"], true);
    assert_eq!(me.body["is_active"], true);
    assert_eq!(me.body["roles"][0]["name"], "operator");
    assert!(
        me.body["roles"][0]["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "admin_access")
    );
    let r = s
        .put("/api/users/me", &t, json!({"username": "vera-renamed"}))
        .await;
    assert_eq!(r.body["username"], "vera-renamed");
    let r = s
        .put("/api/users/me", &t, json!({"username": "admin"}))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["detail"].as_str()),
        (400, Some("Username or email already taken"))
    );

    // The dashboard needs admin_access.
    let r = s.get("/api/dashboard", &t).await;
    assert_eq!(
        (r.status.as_u16(), r.body["detail"].as_str()),
        (403, Some("Not enough permissions"))
    );
    let r = s.get("/api/dashboard", &s.admin_token).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body["roles"][0]["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "admin_access")
    );
    s.stop().await;
}

#[tokio::test]
async fn neuronest_register_to_logout() {
    let s = TestServer::start().await;
    let r = s
        .call(
            Method::POST,
            "/api/auth/register",
            None,
            Some(
                json!({"email": "nina@example.com", "password": "nina-password", "name": "Nina N"}),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["token_type"], "bearer");
    assert_eq!(r.body["expires_in"], 86400);
    assert_eq!(r.body["user"]["email"], "nina@example.com");
    assert_eq!(r.body["user"]["name"], "Nina N");
    assert_eq!(r.body["user"]["is_active"], true);
    let first = r.body["access_token"].as_str().unwrap().to_owned();

    let r = s
        .call(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": "nina@example.com", "password": "nina-password"})),
        )
        .await;
    assert_eq!(r.status, 200);
    let t = r.body["access_token"].as_str().unwrap().to_owned();
    let r = s.get("/api/auth/me", &t).await;
    assert_eq!(r.body["name"], "Nina N");
    assert!(r.body["created_at"].as_str().unwrap().ends_with('Z'));
    let r = s
        .put("/api/auth/me", &t, json!({"name": "Nina Smith"}))
        .await;
    assert_eq!(r.body["name"], "Nina Smith");

    // Change password: the old password and every older token stop working.
    let r = s
        .put(
            "/api/auth/change-password",
            &t,
            json!({"current_password": "wrong-one", "new_password": "nina-password-2"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = s
        .put(
            "/api/auth/change-password",
            &t,
            json!({"current_password": "nina-password", "new_password": "nina-password-2"}),
        )
        .await;
    assert_eq!(r.body["message"], "Password changed successfully");
    assert_eq!(s.get("/api/auth/me", &first).await.status, 401);
    assert_eq!(s.get("/api/auth/me", &t).await.status, 401);
    let r = s
        .call(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": "nina@example.com", "password": "nina-password"})),
        )
        .await;
    assert_eq!(r.status, 401);

    // Forgot / reset, with the token from the outbox; unknown emails answer the same.
    let known = s
        .call(
            Method::POST,
            "/api/auth/forgot-password",
            None,
            Some(json!({"email": "nina@example.com"})),
        )
        .await;
    let unknown = s
        .call(
            Method::POST,
            "/api/auth/forgot-password",
            None,
            Some(json!({"email": "ghost@example.com"})),
        )
        .await;
    assert_eq!((known.status, &known.body), (unknown.status, &unknown.body));
    assert_eq!(
        known.body["message"],
        "If the email exists, a password reset link will be sent."
    );
    let mail = latest_mail(&s, "nina@example.com").await;
    let reset = after(mail["body"].as_str().unwrap(), "30 minutes: ");
    let r = s
        .call(
            Method::POST,
            "/api/auth/reset-password",
            None,
            Some(json!({"token": "bogus", "new_password": "nina-password-3"})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = s
        .call(
            Method::POST,
            "/api/auth/reset-password",
            None,
            Some(json!({"token": reset, "new_password": "nina-password-3"})),
        )
        .await;
    assert_eq!(r.body["message"], "Password reset successfully");
    let r = s
        .call(
            Method::POST,
            "/api/auth/reset-password",
            None,
            Some(json!({"token": reset, "new_password": "nina-password-4"})),
        )
        .await;
    assert_eq!(r.status, 400, "a reset token works once");
    let r = s
        .call(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": "nina@example.com", "password": "nina-password-3"})),
        )
        .await;
    let t = r.body["access_token"].as_str().unwrap().to_owned();

    let r = s
        .call(Method::POST, "/api/auth/logout", Some(&t), None)
        .await;
    assert_eq!(r.body["message"], "Successfully logged out");
    assert_eq!(s.get("/api/auth/me", &t).await.status, 401);
    assert_eq!(
        s.get("/api/auth/me", &t).await.body,
        json!({"detail": "Not authenticated"})
    );
    s.stop().await;
}

/// A code for the earliest step the server accepts now (one step of drift
/// either way) that is later than `last`; waits for time to pass if needed.
async fn fresh_code(secret: &str, last: &mut u64) -> String {
    loop {
        let current = now_secs() / 30;
        if let Some(step) = (current.saturating_sub(1)..=current + 1).find(|s| *s > *last) {
            *last = step;
            return totp(secret, step * 30);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn forge_signup(s: &TestServer, username: &str, email: &str, password: &str) {
    let r = s
        .call(
            Method::POST,
            "/api/v1/auth/signup",
            None,
            Some(json!({"username": username, "email": email, "password": password})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"message": "Account created. Check your email for verification code.", "user_id": username})
    );
}

async fn forge_login(s: &TestServer, username: &str, password: &str) -> Value {
    s.call(
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!({"username": username, "password": password})),
    )
    .await
    .body
}

#[tokio::test]
async fn forge_signup_to_logout_with_mfa() {
    let s = TestServer::start().await;
    forge_signup(&s, "fred", "fred@example.com", "fred-password").await;
    let r = s
        .call(
            Method::POST,
            "/api/v1/auth/signup",
            None,
            Some(
                json!({"username": "fred", "email": "f2@example.com", "password": "fred-password"}),
            ),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["error"].as_str()),
        (400, Some("Username taken"))
    );
    let r = s
        .call(
            Method::POST,
            "/api/v1/auth/signup",
            None,
            Some(json!({"username": "shorty", "email": "s@example.com", "password": "short"})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body["code"].is_string() && r.body["error"].is_string());

    // Blocked until verified.
    let r = s
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "fred", "password": "fred-password"})),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["code"], "FORBIDDEN");
    // Resend replaces the code; the old one no longer works.
    let old = digits(
        latest_mail(&s, "fred@example.com").await["body"]
            .as_str()
            .unwrap(),
        6,
    );
    let r = s
        .call(
            Method::POST,
            "/api/v1/auth/resend-verification",
            None,
            Some(json!({"email": "fred@example.com"})),
        )
        .await;
    assert_eq!(r.body["message"], "Verification code sent");
    let code = digits(
        latest_mail(&s, "fred@example.com").await["body"]
            .as_str()
            .unwrap(),
        6,
    );
    if old != code {
        let r = s
            .call(
                Method::POST,
                "/api/v1/auth/verify-email",
                None,
                Some(json!({"email": "fred@example.com", "code": old})),
            )
            .await;
        assert_eq!(r.status, 400);
    }
    let r = s
        .call(
            Method::POST,
            "/api/v1/auth/verify-email",
            None,
            Some(json!({"email": "fred@example.com", "code": code})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["message"], "Email verified successfully");

    let login = forge_login(&s, "fred", "fred-password").await;
    assert_eq!(login["email_verified"], true);
    assert_eq!(login["mfa_required"], false);
    assert!(login["user"]["id"].as_str().unwrap().starts_with("usr_"));
    assert_eq!(login["user"]["role"], "operator");
    let t = login["token"].as_str().unwrap().to_owned();
    assert_eq!(t.matches('.').count(), 0, "opaque, never a JWT");
    let r = s.get("/api/v1/auth/session", &t).await;
    assert_eq!(r.body["valid"], true);
    assert_eq!(r.body["user"]["username"], "fred");
    assert_eq!(
        s.get("/api/v1/auth/me", &t).await.body["email"],
        "fred@example.com"
    );

    // Preferences, push tokens.
    let r = s
        .put(
            "/api/v1/profile/preferences",
            &t,
            json!({"theme": "nexusedge-dark", "notifications_enabled": true}),
        )
        .await;
    assert_eq!(r.body["theme"], "nexusedge-dark");
    assert_eq!(
        s.get("/api/v1/profile/preferences", &t).await.body["notifications_enabled"],
        true
    );
    let r = s.post("/api/v1/push/register", &t, json!({"token": "ExponentPushToken[abc]", "platform": "ios", "device_name": "iPhone 15"})).await;
    assert_eq!(r.body["message"], "Push token registered");

    // MFA: setup, enable with a code from an independent RFC 6238 implementation.
    let setup = s.post("/api/v1/mfa/setup", &t, json!({})).await.body;
    let secret = setup["secret"].as_str().unwrap().to_owned();
    assert!(
        setup["provisioning_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    assert!(
        setup["provisioning_uri"]
            .as_str()
            .unwrap()
            .contains(&format!("secret={secret}"))
    );
    assert!(
        setup["qr_code"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );
    let r = s
        .post("/api/v1/mfa/verify", &t, json!({"code": "000000"}))
        .await;
    assert_eq!(r.status, 400);
    let now = now_secs();
    let mut last = 0;
    let enable_code = fresh_code(&secret, &mut last).await;
    let r = s
        .post("/api/v1/mfa/verify", &t, json!({"code": enable_code}))
        .await;
    assert_eq!(r.body["message"], "MFA enabled successfully", "{}", r.body);
    assert_eq!(s.get("/api/v1/profile", &t).await.body["mfa_enabled"], true);

    // Login now needs the second step; the token is unusable until then.
    let login = forge_login(&s, "fred", "fred-password").await;
    assert_eq!(login["mfa_required"], true);
    let pending = login["token"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/api/v1/auth/me", &pending).await.status, 401);
    // The code just used to enable MFA cannot be used again (same step).
    let r = s
        .call(
            Method::POST,
            "/api/v1/auth/mfa/validate",
            None,
            Some(json!({"username": "fred", "code": enable_code})),
        )
        .await;
    assert_eq!(r.status, 401, "a reused code is refused");
    // An expired code (ten minutes old) is refused.
    let r = s
        .call(
            Method::POST,
            "/api/v1/auth/mfa/validate",
            None,
            Some(json!({"username": "fred", "code": totp(&secret, now - 600)})),
        )
        .await;
    assert_eq!(r.status, 401);
    // The next step's code is fresh.
    let next = fresh_code(&secret, &mut last).await;
    let r = s
        .call(
            Method::POST,
            "/api/v1/auth/mfa/validate",
            None,
            Some(json!({"username": "fred", "code": next})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["message"], "MFA validated");
    let full = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/api/v1/auth/me", &full).await.status, 200);
    assert_eq!(
        s.get("/api/v1/auth/me", &pending).await.status,
        200,
        "the pending token became usable"
    );
    assert!(
        latest_mail(&s, "fred@example.com").await["subject"]
            .as_str()
            .unwrap()
            .contains("Two-factor")
    );

    // Change password ends every session.
    let r = s
        .put(
            "/api/v1/auth/change-password",
            &full,
            json!({"current_password": "fred-password", "new_password": "fred-password-2"}),
        )
        .await;
    assert_eq!(r.body["message"], "Password changed successfully");
    assert_eq!(s.get("/api/v1/auth/me", &full).await.status, 401);

    // Forgot/reset: same answer for unknown accounts; token from the outbox.
    let a = s
        .call(
            Method::POST,
            "/api/v1/auth/forgot-password",
            None,
            Some(json!({"email": "fred@example.com"})),
        )
        .await;
    let b = s
        .call(
            Method::POST,
            "/api/v1/auth/forgot-password",
            None,
            Some(json!({"email": "nobody@example.com"})),
        )
        .await;
    assert_eq!((a.status, &a.body), (b.status, &b.body));
    let reset = after(
        latest_mail(&s, "fred@example.com").await["body"]
            .as_str()
            .unwrap(),
        "30 minutes: ",
    );
    let r = s
        .call(
            Method::POST,
            "/api/v1/auth/reset-password",
            None,
            Some(json!({"token": reset, "new_password": "fred-password-3"})),
        )
        .await;
    assert_eq!(r.body["message"], "Password reset successfully");

    // Log in again (MFA), log out: the token stops.
    let pending = forge_login(&s, "fred", "fred-password-3").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = fresh_code(&secret, &mut last).await;
    let r = s
        .call(
            Method::POST,
            "/api/v1/auth/mfa/validate",
            None,
            Some(json!({"username": "fred", "code": code})),
        )
        .await;
    let t = r.body["token"].as_str().unwrap().to_owned();
    let r = s
        .call(Method::POST, "/api/v1/auth/logout", Some(&t), None)
        .await;
    assert_eq!(r.body["message"], "Logged out");
    assert_eq!(s.get("/api/v1/auth/me", &t).await.status, 401);
    assert_eq!(
        s.get("/api/v1/auth/me", &t).await.body["code"],
        "UNAUTHORIZED"
    );
    // Disabling needs a fresh code: the last one used, or an older one, is refused.
    assert_eq!(s.get("/api/v1/auth/me", &pending).await.status, 200);
    let r = s
        .post("/api/v1/mfa/disable", &pending, json!({"code": code}))
        .await;
    assert_eq!(r.status, 400, "reused");
    let r = s
        .post(
            "/api/v1/mfa/disable",
            &pending,
            json!({"code": totp(&secret, (last - 1) * 30)}),
        )
        .await;
    assert_eq!(r.status, 400, "older than the last accepted step");
    s.stop().await;
}

#[tokio::test]
async fn forge_admin_users_and_cascade_delete() {
    let s = TestServer::start().await;
    let admin = forge_login(&s, "admin", common::ADMIN_PASSWORD).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s.post("/api/v1/admin/users", &admin, json!({"username": "opal", "email": "opal@example.com", "password": "opal-password", "role": "operator"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["email_verified"], true);
    // Created users can log in at once.
    let opal = forge_login(&s, "opal", "opal-password").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(s.get("/api/v1/admin/users", &opal).await.status, 403);
    // Verified once (and so cached): the role as it is now.
    assert_eq!(
        s.get("/api/v1/auth/me", &opal).await.body["role"],
        "operator"
    );
    let list = s.get("/api/v1/admin/users", &admin).await.body;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|u| u["username"] == "opal")
    );
    let r = s
        .put(
            "/api/v1/admin/users/opal",
            &admin,
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(r.body["role"], "viewer");
    assert_eq!(
        s.get("/api/v1/admin/users/opal", &admin).await.body["role"],
        "viewer"
    );
    assert_eq!(
        s.get("/api/v1/auth/me", &opal).await.body["role"],
        "viewer",
        "a role change reaches the user's next request, cached credential or not"
    );
    assert_eq!(s.get("/api/v1/admin/users/ghost", &admin).await.status, 404);
    s.post(
        "/api/v1/push/register",
        &opal,
        json!({"token": "ExponentPushToken[x]"}),
    )
    .await;

    let r = s.delete("/api/v1/admin/users/opal", &admin).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        s.get("/api/v1/auth/me", &opal).await.status,
        401,
        "a deleted user's session stops at once"
    );
    assert_eq!(s.get("/api/v1/admin/users/opal", &admin).await.status, 404);
    s.stop().await;
}

#[tokio::test]
async fn credentials_cross_dialects_and_revocation_is_everywhere() {
    let s = TestServer::start().await;
    // Register via NeuroNest, log in via Vareon, use the token on AIWM.
    s.call(
        Method::POST,
        "/api/auth/register",
        None,
        Some(json!({"email": "cross@example.com", "password": "cross-password", "name": "Cross"})),
    )
    .await;
    let r = post_form(
        &s,
        "/api/token",
        &[
            ("username", "cross@example.com"),
            ("password", "cross-password"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let jwt = r.body["access_token"].as_str().unwrap().to_owned();
    let r = s
        .post("/api/nodes", &jwt, common::node_body("cross-node", "X"))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        s.get("/api/v1/auth/me", &jwt).await.status,
        200,
        "a JWT works on Forge too"
    );

    // The same user through Forge: an opaque token on AIWM, Vareon and NeuroNest routes.
    let username = s.get("/api/users/me", &jwt).await.body["username"]
        .as_str()
        .unwrap()
        .to_owned();
    let forge = forge_login(&s, &username, "cross-password").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.get("/api/nodes", &forge).await.body["pagination"]["total"],
        1
    );
    assert_eq!(s.get("/api/users/me", &forge).await.status, 200);
    assert_eq!(s.get("/api/auth/me", &forge).await.status, 200);
    assert_eq!(
        s.get("/users", &forge).await.status,
        200,
        "a Forge token on a Contenox route"
    );

    // Logout through Vareon's neighbour NeuroNest revokes the JWT everywhere.
    assert_eq!(
        s.call(Method::POST, "/api/auth/logout", Some(&jwt), None)
            .await
            .status,
        200
    );
    for path in [
        "/api/nodes",
        "/api/users/me",
        "/api/auth/me",
        "/api/v1/auth/me",
        "/api/myntrix/system-metrics",
    ] {
        assert_eq!(s.get(path, &jwt).await.status, 401, "{path}");
    }
    assert_eq!(
        s.get("/api/nodes", &forge).await.status,
        200,
        "other sessions live on"
    );
    // Logout through Forge ends the session everywhere.
    assert_eq!(
        s.call(Method::POST, "/api/v1/auth/logout", Some(&forge), None)
            .await
            .status,
        200
    );
    assert_eq!(s.get("/api/nodes", &forge).await.status, 401);

    // A deleted user's credentials stop everywhere.
    let jwt = post_form(
        &s,
        "/api/token",
        &[
            ("username", "cross@example.com"),
            ("password", "cross-password"),
        ],
    )
    .await
    .body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = forge_login(&s, "admin", common::ADMIN_PASSWORD).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.delete(&format!("/api/v1/admin/users/{username}"), &admin)
            .await
            .status,
        204
    );
    assert_eq!(s.get("/api/nodes", &jwt).await.status, 401);
    assert_eq!(s.get("/api/users/me", &jwt).await.status, 401);
    s.stop().await;
}

#[tokio::test]
async fn brute_force_is_refused_with_429() {
    let s = TestServer::start().await;
    for i in 0..30 {
        let r = s
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"username": format!("nobody{i}"), "password": "wrong-password"})),
            )
            .await;
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let r = s
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "admin", "password": common::ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(r.status, 429, "the 31st attempt in a minute from one IP");
    assert_eq!(r.body["code"], "RATE_LIMITED");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
    // The limit is per IP across dialects.
    let r = post_form(
        &s,
        "/api/token",
        &[("username", "admin"), ("password", common::ADMIN_PASSWORD)],
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(
        s.call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"username": "admin", "password": common::ADMIN_PASSWORD}))
        )
        .await
        .status,
        429
    );
    // Correct logins do not count: a busy client is never locked out.
    let s = TestServer::start().await;
    for _ in 0..40 {
        let r = s
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"username": "admin", "password": common::ADMIN_PASSWORD})),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    s.stop().await;
}

#[tokio::test]
async fn forge_api_limit_per_user() {
    let s = TestServer::start_with(|c| c.rate_limits.api_per_minute = Some(5)).await;
    let t = forge_login(&s, "admin", common::ADMIN_PASSWORD).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..5 {
        assert_eq!(s.get("/api/v1/auth/me", &t).await.status, 200);
    }
    let r = s.get("/api/v1/auth/me", &t).await;
    assert_eq!(r.status, 429);
    assert!(r.headers.contains_key("retry-after"));
    // Other dialects document no limit.
    assert_eq!(s.get("/api/nodes", &t).await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn passwords_and_secrets_stay_secret() {
    let s = TestServer::start().await;
    let password = "Sup3r-Secret-Passw0rd";
    s.call(
        Method::POST,
        "/api/auth/register",
        None,
        Some(json!({"email": "sec@example.com", "password": password, "name": "Sec"})),
    )
    .await;
    forge_signup(&s, "secf", "secf@example.com", password).await;
    let mut seen = Vec::new();
    seen.push(s.get("/admin/users", &s.admin_token).await.body.to_string());
    seen.push(
        s.get("/api/v1/admin/users", &s.admin_token)
            .await
            .body
            .to_string(),
    );
    seen.push(
        s.get("/admin/outbox", &s.admin_token)
            .await
            .body
            .to_string(),
    );
    let t = s
        .call(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": "sec@example.com", "password": password})),
        )
        .await
        .body;
    seen.push(t.to_string());
    let token = t["access_token"].as_str().unwrap();
    seen.push(s.get("/api/users/me", token).await.body.to_string());
    seen.push(s.get("/api/v1/profile", token).await.body.to_string());
    for body in &seen {
        assert!(
            !body.contains(password),
            "a response shows the password: {body}"
        );
        assert!(!body.contains("$argon2"), "a response shows a hash: {body}");
    }
    // The store keeps argon2id hashes, never the password itself.
    let dir = s.data_dir.clone();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !bytes
                        .windows(password.len())
                        .any(|w| w == password.as_bytes()),
                    "{} holds the password",
                    path.display()
                );
            }
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn forge_cli_device_code_login() {
    let s = TestServer::start().await;
    let init = s
        .call(Method::POST, "/api/v1/auth/cli/init", None, None)
        .await;
    assert_eq!(init.status, 200, "{}", init.body);
    let device = init.body["device_code"].as_str().unwrap().to_owned();
    let user_code = init.body["user_code"].as_str().unwrap().to_owned();
    assert_eq!(user_code.len(), 9);
    assert_eq!(init.body["interval"], 5);
    let poll = format!("/api/v1/auth/cli/poll?code={device}");
    assert_eq!(
        s.call(Method::GET, &poll, None, None).await.body["status"],
        "pending"
    );
    let admin = forge_login(&s, "admin", common::ADMIN_PASSWORD).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.post(
            "/api/v1/auth/cli/verify",
            &admin,
            json!({"user_code": "XXXX-XXXX"})
        )
        .await
        .status,
        400
    );
    assert_eq!(
        s.post(
            "/api/v1/auth/cli/verify",
            &admin,
            json!({"user_code": user_code.to_lowercase()})
        )
        .await
        .body["message"],
        "Device authorized"
    );
    let r = s.call(Method::GET, &poll, None, None).await;
    assert_eq!(r.body["status"], "approved");
    let token = r.body["token"].as_str().unwrap();
    assert_eq!(
        s.get("/api/v1/auth/me", token).await.body["username"],
        "admin"
    );
    // Spent: a second poll gets nothing.
    assert_eq!(s.call(Method::GET, &poll, None, None).await.status, 410);
    assert_eq!(
        s.call(Method::GET, "/api/v1/auth/cli/poll", None, None)
            .await
            .status,
        400
    );
    s.stop().await;
}
