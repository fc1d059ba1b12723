//! Vareon's identity routes (seeds/vareon-api.md §2, §4): OAuth2 password
//! login, registration with an emailed verification token, the profile,
//! and the `admin_access`-guarded dashboard.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_identity::model::{Role, User};
use warden_identity::{Enrolment, IdentityError, ProfileUpdate, SignUp};

use super::{Vareon, VareonBody, VareonResult};
use crate::AppState;
use crate::auth::{ClientIp, CurrentUser, password_login};
use crate::dialects::{Fields, JsonBody};
use crate::error::ApiError;
use crate::openapi::Api;

type Caller = CurrentUser<Vareon>;

/// Stable ids for roles and permissions, as Vareon's clients expect UUIDs.
fn fixed_id(n: u8) -> String {
    format!("00000000-0000-4000-8000-0000000000{n:02x}")
}

fn permissions(role: Role) -> Vec<&'static str> {
    match role {
        Role::Admin => vec!["admin_access", "read", "write"],
        Role::Operator => vec!["read", "write"],
        Role::Viewer => vec!["read"],
    }
}

fn permission_id(name: &str) -> String {
    fixed_id(match name {
        "admin_access" => 0x10,
        "read" => 0x11,
        _ => 0x12,
    })
}

/// Vareon's `User` body.
pub(crate) fn user_view(u: &User) -> Value {
    let roles: Vec<Value> = u
        .roles
        .iter()
        .map(|r| {
            let perms: Vec<Value> = permissions(*r)
                .into_iter()
                .map(|p| json!({"name": p, "id": permission_id(p)}))
                .collect();
            json!({"name": r.as_str(), "id": fixed_id(*r as u8 + 1), "permissions": perms})
        })
        .collect();
    json!({
        "email": u.email,
        "username": u.username,
        "id": u.id,
        "is_active": u.is_active,
        "is_verified": u.email_verified,
        "verification_token": null,
        "verification_token_expires_at": null,
        "roles": roles,
    })
}

fn taken(e: IdentityError) -> ApiError<Vareon> {
    match e {
        IdentityError::Taken { .. } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "Username or email already registered",
        ),
        other => other.into(),
    }
}

/// `POST /api/token`: OAuth2 password form; `username` may be an email.
async fn token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    body: Bytes,
) -> VareonResult<Json<Value>> {
    let mut username = None;
    let mut password = None;
    for (k, v) in form_urlencoded::parse(&body) {
        match k.as_ref() {
            "username" => username = Some(v.into_owned()),
            "password" => password = Some(v.into_owned()),
            _ => {}
        }
    }
    let mut missing = Vec::new();
    if username.as_deref().is_none_or(str::is_empty) {
        missing.push("username field required".to_owned());
    }
    if password.as_deref().is_none_or(str::is_empty) {
        missing.push("password field required".to_owned());
    }
    if !missing.is_empty() {
        return Err(ApiError::validation(missing));
    }
    let user = password_login::<Vareon>(
        &state,
        ip,
        &username.unwrap_or_default(),
        &password.unwrap_or_default(),
    )
    .await
    .map_err(|e| {
        if e.status == StatusCode::UNAUTHORIZED {
            ApiError::new(StatusCode::UNAUTHORIZED, "Incorrect username or password")
        } else {
            e
        }
    })?;
    let issued = state.identity.issue_token(&user)?;
    Ok(Json(
        json!({"access_token": issued.token, "token_type": "bearer"}),
    ))
}

async fn register(
    _: crate::auth::MailLimited<Vareon>,
    State(state): State<AppState>,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    let mut f = Fields::new(body);
    let email = f.string("email", true);
    let username = f.string("username", true);
    let password = f.string_max("password", true, 1024);
    f.finish_as::<Vareon>()?;
    let user = state
        .identity
        .enrol(
            SignUp {
                username: Some(username.unwrap_or_default()),
                email: email.unwrap_or_default(),
                password: password.unwrap_or_default(),
                full_name: None,
            },
            Enrolment::SelfServiceVerified,
        )
        .await
        .map_err(taken)?;
    state.identity.send_verification(&user, false).await?;
    Ok(Json(
        json!({"message": "Registration successful. Please check your email to verify your account."}),
    ))
}

async fn verify_email(
    State(state): State<AppState>,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    let mut f = Fields::new(body);
    let email = f.string("email", true);
    let token = f.string("token", true);
    f.finish_as::<Vareon>()?;
    state
        .identity
        .verify_email(&email.unwrap_or_default(), &token.unwrap_or_default())
        .await
        .map_err(|e| match e {
            IdentityError::Invalid(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "Invalid verification token or token expired",
            ),
            other => other.into(),
        })?;
    Ok(Json(
        json!({"message": "Email verified successfully!", "status": "success"}),
    ))
}

async fn me(State(state): State<AppState>, CurrentUser(p, _): Caller) -> VareonResult<Json<Value>> {
    let user = state
        .identity
        .user(&p.user_id)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "User not found"))?;
    Ok(Json(user_view(&user)))
}

async fn update_me(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): VareonBody,
) -> VareonResult<Json<Value>> {
    let mut f = Fields::new(body);
    let username = f.string("username", false);
    let email = f.string("email", false);
    let password = f.string_max("password", false, 1024);
    f.finish_as::<Vareon>()?;
    let update = ProfileUpdate {
        username,
        email,
        password,
        ..Default::default()
    };
    let user = state
        .identity
        .update_profile(&p.user_id, update)
        .await
        .map_err(|e| match e {
            IdentityError::Taken { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "Username or email already taken")
            }
            other => other.into(),
        })?;
    Ok(Json(user_view(&user)))
}

/// `GET /api/dashboard`: needs the `admin_access` permission.
async fn dashboard(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> VareonResult<Json<Value>> {
    if !p
        .roles
        .iter()
        .any(|r| permissions(*r).contains(&"admin_access"))
    {
        return Err(ApiError::forbidden("Not enough permissions"));
    }
    me(State(state), CurrentUser(p, std::marker::PhantomData)).await
}

pub(super) fn routes() -> Api {
    Api::new()
        .public_post(
            "/api/token",
            "vareon: auth",
            "OAuth2 password login (form: username or email, password)",
            token,
        )
        .public_post(
            "/api/register",
            "vareon: auth",
            "Register; a verification token is mailed",
            register,
        )
        .public_post(
            "/api/verify-email",
            "vareon: auth",
            "Verify an email address with its token",
            verify_email,
        )
        .get("/api/users/me", "vareon: users", "The caller's profile", me)
        .put(
            "/api/users/me",
            "vareon: users",
            "Update the caller's profile",
            update_me,
        )
        .get(
            "/api/dashboard",
            "vareon: users",
            "The caller's dashboard (admin_access)",
            dashboard,
        )
}
