//! Forge's account routes: login with opaque sessions and MFA, signup with
//! a 6-digit code, password reset, profile and preferences, push tokens,
//! and user administration keyed by username.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_identity::model::{Role, User};
use warden_identity::{Enrolment, IdentityError, ProfileUpdate, SignUp};

use super::{Forge, ForgeResult, user_id};
use crate::AppState;
use crate::auth::{AdminUser, ClientIp, CurrentUser, caller, password_login};
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Body = JsonBody<Forge>;
type Caller = CurrentUser<Forge>;
type Admin = AdminUser<Forge>;

fn role(u: &User) -> &'static str {
    u.roles.first().copied().unwrap_or(Role::Viewer).as_str()
}

fn me_view(u: &User) -> Value {
    json!({"id": user_id(&u.id), "username": u.username, "email": u.email, "role": role(u), "created_at": iso(u.created_at)})
}

fn admin_view(u: &User) -> Value {
    let prefs: Value = serde_json::from_str(&u.preferences).unwrap_or_else(|_| json!({}));
    json!({
        "id": user_id(&u.id),
        "username": u.username,
        "email": u.email,
        "role": role(u),
        "email_verified": u.email_verified,
        "mfa_enabled": u.mfa_enabled,
        "is_active": u.is_active,
        "preferences": prefs,
        "created_at": iso(u.created_at),
    })
}

fn bad(message: &str) -> ApiError<Forge> {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// Identity errors as Forge words them: a refused input is a plain 400.
fn refused(e: IdentityError) -> ApiError<Forge> {
    match e {
        IdentityError::Invalid(m) => bad(&m),
        other => other.into(),
    }
}

fn strings(f: &mut Fields, keys: &[&str]) -> Vec<Option<String>> {
    keys.iter().map(|k| f.string_max(k, true, 1024)).collect()
}

async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body, _): Body,
) -> ForgeResult<Json<Value>> {
    let mut f = Fields::new(body);
    let v = strings(&mut f, &["username", "password"]);
    f.finish_as::<Forge>()?;
    let user = password_login::<Forge>(
        &state,
        ip,
        v[0].as_deref().unwrap_or(""),
        v[1].as_deref().unwrap_or(""),
    )
    .await?;
    let session = state
        .identity
        .issue_session(&user, user.mfa_enabled)
        .await?;
    Ok(Json(json!({
        "token": session.token,
        "user": {"id": user_id(&user.id), "username": user.username, "email": user.email, "role": role(&user)},
        "email_verified": user.email_verified,
        "mfa_required": user.mfa_enabled,
    })))
}

async fn logout(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ForgeResult<Json<Value>> {
    state.identity.logout(&p.presented).await?;
    Ok(Json(json!({"message": "Logged out"})))
}

async fn session(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ForgeResult<Json<Value>> {
    let user = caller::<Forge>(&state, &p)?;
    Ok(Json(
        json!({"valid": true, "user": {"id": user_id(&user.id), "username": user.username, "role": role(&user)}}),
    ))
}

async fn signup(
    _: crate::auth::MailLimited<Forge>,
    State(state): State<AppState>,
    JsonBody(body, _): Body,
) -> ForgeResult<(StatusCode, Json<Value>)> {
    let mut f = Fields::new(body);
    let v = strings(&mut f, &["username", "email", "password"]);
    f.finish_as::<Forge>()?;
    let username = v[0].clone().unwrap_or_default();
    let user = state
        .identity
        .enrol(
            SignUp {
                username: Some(username.clone()),
                email: v[1].clone().unwrap_or_default(),
                password: v[2].clone().unwrap_or_default(),
                full_name: None,
            },
            Enrolment::SelfServiceVerified,
        )
        .await
        .map_err(|e| match e {
            IdentityError::Taken { field, .. } => bad(&format!(
                "{} taken",
                if field == "email" {
                    "Email"
                } else {
                    "Username"
                }
            )),
            other => refused(other),
        })?;
    state.identity.send_verification(&user, true).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"message": "Account created. Check your email for verification code.", "user_id": username}),
        ),
    ))
}

async fn verify_email(
    State(state): State<AppState>,
    JsonBody(body, _): Body,
) -> ForgeResult<Json<Value>> {
    let mut f = Fields::new(body);
    let v = strings(&mut f, &["email", "code"]);
    f.finish_as::<Forge>()?;
    state
        .identity
        .verify_email(v[0].as_deref().unwrap_or(""), v[1].as_deref().unwrap_or(""))
        .await
        .map_err(|_| bad("Invalid or expired code"))?;
    Ok(Json(json!({"message": "Email verified successfully"})))
}

async fn resend_verification(
    _: crate::auth::MailLimited<Forge>,
    State(state): State<AppState>,
    JsonBody(body, _): Body,
) -> ForgeResult<Json<Value>> {
    let mut f = Fields::new(body);
    let email = f.string("email", true);
    f.finish_as::<Forge>()?;
    let email = email.unwrap_or_default().to_lowercase();
    // The same answer whether or not the account exists or is verified.
    if let Some(user) = state
        .identity
        .store()
        .get_by_unique::<User>("email", &email)?
        && !user.email_verified
    {
        state.identity.send_verification(&user, true).await?;
    }
    Ok(Json(json!({"message": "Verification code sent"})))
}

async fn forgot_password(
    _: crate::auth::MailLimited<Forge>,
    State(state): State<AppState>,
    JsonBody(body, _): Body,
) -> ForgeResult<Json<Value>> {
    let mut f = Fields::new(body);
    let email = f.string("email", true);
    f.finish_as::<Forge>()?;
    state
        .identity
        .forgot_password(&email.unwrap_or_default())
        .await?;
    Ok(Json(
        json!({"message": "If an account exists with that email, a reset link has been sent."}),
    ))
}

async fn reset_password(
    State(state): State<AppState>,
    JsonBody(body, _): Body,
) -> ForgeResult<Json<Value>> {
    let mut f = Fields::new(body);
    let v = strings(&mut f, &["token", "new_password"]);
    f.finish_as::<Forge>()?;
    state
        .identity
        .reset_password(v[0].as_deref().unwrap_or(""), v[1].as_deref().unwrap_or(""))
        .await
        .map_err(refused)?;
    Ok(Json(json!({"message": "Password reset successfully"})))
}

async fn me(State(state): State<AppState>, CurrentUser(p, _): Caller) -> ForgeResult<Json<Value>> {
    let user = caller::<Forge>(&state, &p)?;
    Ok(Json(me_view(&user)))
}

async fn profile(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ForgeResult<Json<Value>> {
    let user = caller::<Forge>(&state, &p)?;
    Ok(Json(admin_view(&user)))
}

async fn preferences(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ForgeResult<Json<Value>> {
    let user = caller::<Forge>(&state, &p)?;
    Ok(Json(
        serde_json::from_str(&user.preferences).unwrap_or_else(|_| json!({})),
    ))
}

async fn update_preferences(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body,
) -> ForgeResult<Json<Value>> {
    if body.len() > 64 || body.values().any(|v| v.to_string().len() > 4096) {
        return Err(bad(
            "preferences are limited to 64 keys of at most 4 KiB each",
        ));
    }
    let text = Value::Object(body).to_string();
    let user = state
        .identity
        .update_profile(
            &p.user_id,
            ProfileUpdate {
                preferences: Some(text),
                ..Default::default()
            },
        )
        .await?;
    Ok(Json(
        serde_json::from_str(&user.preferences).unwrap_or_else(|_| json!({})),
    ))
}

async fn change_password(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body,
) -> ForgeResult<Json<Value>> {
    let mut f = Fields::new(body);
    let v = strings(&mut f, &["current_password", "new_password"]);
    f.finish_as::<Forge>()?;
    state
        .identity
        .change_password(
            &p.user_id,
            v[0].as_deref().unwrap_or(""),
            v[1].as_deref().unwrap_or(""),
        )
        .await
        .map_err(|e| match e {
            IdentityError::InvalidCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "Current password is incorrect")
            }
            other => refused(other),
        })?;
    Ok(Json(json!({"message": "Password changed successfully"})))
}

async fn push_register(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body,
) -> ForgeResult<Json<Value>> {
    let mut f = Fields::new(body);
    let token = f.string_max("token", true, 512);
    let platform = f.one_of("platform", &["ios", "android", "web"], false);
    let device = f.string("device_name", false);
    f.finish_as::<Forge>()?;
    state
        .identity
        .register_push_token(
            &p.user_id,
            &token.unwrap_or_default(),
            &platform.unwrap_or_default(),
            &device.unwrap_or_default(),
        )
        .await?;
    Ok(Json(json!({"message": "Push token registered"})))
}

async fn mfa_setup(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ForgeResult<Json<Value>> {
    let setup = state
        .identity
        .mfa_setup(&p.user_id)
        .await
        .map_err(refused)?;
    Ok(Json(
        json!({"secret": setup.secret, "provisioning_uri": setup.provisioning_uri, "qr_code": setup.qr_code}),
    ))
}

fn code_of(body: serde_json::Map<String, Value>) -> ForgeResult<String> {
    let mut f = Fields::new(body);
    let code = f.string("code", true);
    f.finish_as::<Forge>()?;
    Ok(code.unwrap_or_default())
}

async fn mfa_verify(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body,
) -> ForgeResult<Json<Value>> {
    state
        .identity
        .mfa_enable(&p.user_id, &code_of(body)?)
        .await
        .map_err(|_| bad("Invalid MFA code"))?;
    Ok(Json(json!({"message": "MFA enabled successfully"})))
}

async fn mfa_disable(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body,
) -> ForgeResult<Json<Value>> {
    state
        .identity
        .mfa_disable(&p.user_id, &code_of(body)?)
        .await
        .map_err(|_| bad("Invalid MFA code"))?;
    Ok(Json(json!({"message": "MFA disabled"})))
}

/// `POST /api/v1/auth/mfa/validate`: public; the second step of an MFA login.
async fn mfa_validate(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body, _): Body,
) -> ForgeResult<Json<Value>> {
    let mut f = Fields::new(body);
    let v = strings(&mut f, &["username", "code"]);
    f.finish_as::<Forge>()?;
    let username = v[0].clone().unwrap_or_default();
    let attempt = state
        .limits
        .login_attempt(ip, &username)
        .map_err(ApiError::too_many)?;
    match state
        .identity
        .mfa_validate(&username, v[1].as_deref().unwrap_or(""))
        .await
    {
        Ok(session) => {
            attempt.succeeded();
            Ok(Json(
                json!({"message": "MFA validated", "token": session.token}),
            ))
        }
        Err(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "Invalid MFA code")),
    }
}

fn by_username(state: &AppState, username: &str) -> ForgeResult<User> {
    state
        .identity
        .store()
        .get_by_unique::<User>("username", &username.to_lowercase())?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("User {username} not found")))
}

fn parse_role(f: &mut Fields, required: bool) -> Option<Role> {
    f.one_of("role", &["admin", "operator", "viewer"], required)
        .and_then(|r| Role::parse(&r))
}

async fn admin_list(State(state): State<AppState>, _: Admin) -> ForgeResult<Json<Value>> {
    let mut users = state.identity.store().all::<User>()?;
    users.sort_by(|a, b| a.username.cmp(&b.username));
    Ok(Json(Value::Array(users.iter().map(admin_view).collect())))
}

async fn admin_create(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    JsonBody(body, _): Body,
) -> ForgeResult<(StatusCode, Json<Value>)> {
    let mut f = Fields::new(body);
    let v = strings(&mut f, &["username", "email", "password"]);
    let role = parse_role(&mut f, false);
    f.finish_as::<Forge>()?;
    let user = state
        .identity
        .enrol(
            SignUp {
                username: Some(v[0].clone().unwrap_or_default()),
                email: v[1].clone().unwrap_or_default(),
                password: v[2].clone().unwrap_or_default(),
                full_name: None,
            },
            Enrolment::ByAdmin {
                org_id: Some(p.org_id.clone()),
                roles: vec![role.unwrap_or(Role::Operator)],
            },
        )
        .await
        .map_err(|e| match e {
            IdentityError::Taken { field, .. } => {
                ApiError::new(StatusCode::CONFLICT, format!("{field} already taken"))
            }
            other => refused(other),
        })?;
    Ok((StatusCode::CREATED, Json(admin_view(&user))))
}

async fn admin_get(
    State(state): State<AppState>,
    _: Admin,
    Path(username): Path<String>,
) -> ForgeResult<Json<Value>> {
    Ok(Json(admin_view(&by_username(&state, &username)?)))
}

async fn admin_update(
    State(state): State<AppState>,
    _: Admin,
    Path(username): Path<String>,
    JsonBody(body, _): Body,
) -> ForgeResult<Json<Value>> {
    let user = by_username(&state, &username)?;
    let mut f = Fields::new(body);
    let email = f.string("email", false);
    let password = f.string_max("password", false, 1024);
    let role = parse_role(&mut f, false);
    f.finish_as::<Forge>()?;
    let update = ProfileUpdate {
        email,
        password,
        roles: role.map(|r| vec![r]),
        ..Default::default()
    };
    let user = state
        .identity
        .update_profile(&user.id, update)
        .await
        .map_err(|e| match e {
            IdentityError::Taken { field, .. } => {
                ApiError::new(StatusCode::CONFLICT, format!("{field} already taken"))
            }
            other => refused(other),
        })?;
    Ok(Json(admin_view(&user)))
}

async fn admin_delete(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(username): Path<String>,
) -> ForgeResult<StatusCode> {
    let user = by_username(&state, &username)?;
    if user.id == p.user_id {
        return Err(bad("You cannot delete your own account"));
    }
    state.identity.delete_user(&user.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/auth/cli/init`: starts a device-code login for the CLI.
async fn cli_init(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> ForgeResult<Json<Value>> {
    let login = state.identity.device_init().await?;
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:8080");
    Ok(Json(json!({
        "device_code": login.device_code,
        "user_code": login.user_code,
        "verification_uri": format!("http://{host}/api/v1/auth/cli/verify"),
        "expires_in": login.expires_in,
        "interval": 5,
    })))
}

#[derive(serde::Deserialize)]
struct PollQuery {
    code: Option<String>,
}

/// `GET /api/v1/auth/cli/poll?code=`: pending, then the session once.
async fn cli_poll(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<PollQuery>,
) -> ForgeResult<Json<Value>> {
    let code = q
        .code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::validation(vec!["code is required".into()]))?;
    match state.identity.device_poll(&code).await? {
        warden_identity::DevicePoll::Pending => Ok(Json(json!({"status": "pending"}))),
        warden_identity::DevicePoll::Approved(session) => {
            Ok(Json(json!({"status": "approved", "token": session.token})))
        }
        warden_identity::DevicePoll::Expired => Err(ApiError::new(
            StatusCode::GONE,
            "Device code expired or unknown",
        )),
    }
}

/// `POST /api/v1/auth/cli/verify`: a signed-in user approves a user code.
async fn cli_verify(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body,
) -> ForgeResult<Json<Value>> {
    let mut f = Fields::new(body);
    let code = f.string("user_code", true);
    f.finish_as::<Forge>()?;
    state
        .identity
        .device_approve(&code.unwrap_or_default(), &p.user_id)
        .await
        .map_err(|_| bad("Invalid or expired code"))?;
    Ok(Json(json!({"message": "Device authorized"})))
}

pub(super) fn routes() -> Api {
    let (auth, acct, admin) = ("forge: auth", "forge: account", "forge: admin");
    Api::new()
        .public_post(
            "/api/v1/auth/login",
            auth,
            "Log in; an opaque token (MFA users validate it next)",
            login,
        )
        .post(
            "/api/v1/auth/logout",
            auth,
            "End the presented session",
            logout,
        )
        .get(
            "/api/v1/auth/session",
            auth,
            "Check the presented session",
            session,
        )
        .public_post(
            "/api/v1/auth/signup",
            auth,
            "Create an account; a 6-digit code is mailed",
            signup,
        )
        .public_post(
            "/api/v1/auth/verify-email",
            auth,
            "Verify an email with its 6-digit code",
            verify_email,
        )
        .public_post(
            "/api/v1/auth/resend-verification",
            auth,
            "Mail a new verification code",
            resend_verification,
        )
        .public_post(
            "/api/v1/auth/forgot-password",
            auth,
            "Mail a reset token (same answer either way)",
            forgot_password,
        )
        .public_post(
            "/api/v1/auth/reset-password",
            auth,
            "Reset a password with its token",
            reset_password,
        )
        .get("/api/v1/auth/me", auth, "The caller", me)
        .public_post(
            "/api/v1/auth/mfa/validate",
            auth,
            "Second step of an MFA login",
            mfa_validate,
        )
        .public_post(
            "/api/v1/auth/cli/init",
            auth,
            "Start a device-code login (CLI)",
            cli_init,
        )
        .public_get(
            "/api/v1/auth/cli/poll",
            auth,
            "Poll a device-code login (?code=)",
            cli_poll,
        )
        .post(
            "/api/v1/auth/cli/verify",
            auth,
            "Approve a device by its user code",
            cli_verify,
        )
        .put(
            "/api/v1/auth/change-password",
            acct,
            "Change the caller's password",
            change_password,
        )
        .post(
            "/api/v1/mfa/setup",
            acct,
            "Start TOTP setup: secret, otpauth URI, QR code",
            mfa_setup,
        )
        .post(
            "/api/v1/mfa/verify",
            acct,
            "Enable MFA with a first code",
            mfa_verify,
        )
        .post(
            "/api/v1/mfa/disable",
            acct,
            "Disable MFA with a code",
            mfa_disable,
        )
        .get("/api/v1/profile", acct, "The caller's profile", profile)
        .get(
            "/api/v1/profile/preferences",
            acct,
            "The caller's preferences",
            preferences,
        )
        .put(
            "/api/v1/profile/preferences",
            acct,
            "Update the caller's preferences",
            update_preferences,
        )
        .post(
            "/api/v1/push/register",
            acct,
            "Register a push token",
            push_register,
        )
        .get("/api/v1/admin/users", admin, "Users (admin)", admin_list)
        .post(
            "/api/v1/admin/users",
            admin,
            "Create a user (admin)",
            admin_create,
        )
        .get(
            "/api/v1/admin/users/{username}",
            admin,
            "A user (admin)",
            admin_get,
        )
        .put(
            "/api/v1/admin/users/{username}",
            admin,
            "Update a user (admin)",
            admin_update,
        )
        .delete(
            "/api/v1/admin/users/{username}",
            admin,
            "Delete a user and their identity records (admin)",
            admin_delete,
        )
}
