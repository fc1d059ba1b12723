//! NeuroNest (seeds/neuronest-api.md), a FastAPI service like Vareon and
//! answering errors the same way (`{"detail": ...}`). This module: its
//! authentication routes. Accounts registered here are usable at once
//! (NeuroNest has no verification step) and log in through every dialect.

mod agents;
mod runtimes;
mod tasks;
mod workflows;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_identity::model::User;
use warden_identity::{Enrolment, IdentityError, ProfileUpdate, SignUp};

use crate::AppState;
use crate::auth::{ClientIp, CurrentUser, password_login};
use crate::dialects::iso;
use crate::dialects::{Fields, JsonBody};
use crate::error::ApiError;
use crate::openapi::Api;

/// NeuroNest speaks FastAPI's error body, as Vareon does.
pub(crate) type Neuronest = super::vareon::Vareon;
type Body = JsonBody<Neuronest>;
type Caller = CurrentUser<Neuronest>;
type Result<T> = std::result::Result<T, ApiError<Neuronest>>;

fn user_view(u: &User, with_created: bool) -> Value {
    let mut v = json!({
        "id": u.id,
        "email": u.email,
        "name": u.full_name.clone().unwrap_or_else(|| u.username.clone()),
        "is_active": u.is_active,
    });
    if with_created {
        v["created_at"] = json!(iso(u.created_at));
    }
    v
}

fn token_body(state: &AppState, user: &User) -> Result<Json<Value>> {
    let issued = state.identity.issue_token(user)?;
    Ok(Json(json!({
        "access_token": issued.token,
        "token_type": "bearer",
        "expires_in": issued.expires_in,
        "user": user_view(user, false),
    })))
}

async fn register(
    _: crate::auth::MailLimited<Neuronest>,
    State(state): State<AppState>,
    JsonBody(body, _): Body,
) -> Result<Json<Value>> {
    let mut f = Fields::new(body);
    let email = f.string("email", true);
    let password = f.string_max("password", true, 1024);
    let name = f.string("name", false);
    f.finish_as::<Neuronest>()?;
    let email = email.unwrap_or_default();
    let user = state
        .identity
        .enrol(
            SignUp {
                username: None,
                email,
                password: password.unwrap_or_default(),
                full_name: name,
            },
            Enrolment::SelfService,
        )
        .await
        .map_err(|e| match e {
            IdentityError::Taken { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "Email already registered")
            }
            other => other.into(),
        })?;
    token_body(&state, &user)
}

async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body, _): Body,
) -> Result<Json<Value>> {
    let mut f = Fields::new(body);
    let email = f.string("email", true);
    let password = f.string_max("password", true, 1024);
    f.finish_as::<Neuronest>()?;
    let user = password_login::<Neuronest>(
        &state,
        ip,
        &email.unwrap_or_default(),
        &password.unwrap_or_default(),
    )
    .await
    .map_err(|e| {
        if e.status == StatusCode::UNAUTHORIZED {
            ApiError::new(StatusCode::UNAUTHORIZED, "Incorrect email or password")
        } else {
            e
        }
    })?;
    token_body(&state, &user)
}

async fn me(State(state): State<AppState>, CurrentUser(p, _): Caller) -> Result<Json<Value>> {
    let user = crate::auth::caller(&state, &p)?;
    Ok(Json(user_view(&user, true)))
}

async fn update_me(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body,
) -> Result<Json<Value>> {
    let mut f = Fields::new(body);
    let name = f.string("name", false);
    let email = f.string("email", false);
    f.finish_as::<Neuronest>()?;
    let user = state
        .identity
        .update_profile(
            &p.user_id,
            ProfileUpdate {
                full_name: name,
                email,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| match e {
            IdentityError::Taken { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "Email already registered")
            }
            other => other.into(),
        })?;
    Ok(Json(user_view(&user, true)))
}

async fn change_password(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body,
) -> Result<Json<Value>> {
    let mut f = Fields::new(body);
    let current = f.string_max("current_password", true, 1024);
    let new = f.string_max("new_password", true, 1024);
    f.finish_as::<Neuronest>()?;
    state
        .identity
        .change_password(
            &p.user_id,
            &current.unwrap_or_default(),
            &new.unwrap_or_default(),
        )
        .await
        .map_err(|e| match e {
            IdentityError::InvalidCredentials => {
                ApiError::new(StatusCode::BAD_REQUEST, "Incorrect password")
            }
            other => other.into(),
        })?;
    Ok(Json(json!({"message": "Password changed successfully"})))
}

async fn forgot_password(
    _: crate::auth::MailLimited<Neuronest>,
    State(state): State<AppState>,
    JsonBody(body, _): Body,
) -> Result<Json<Value>> {
    let mut f = Fields::new(body);
    let email = f.string("email", true);
    f.finish_as::<Neuronest>()?;
    state
        .identity
        .forgot_password(&email.unwrap_or_default())
        .await?;
    Ok(Json(
        json!({"message": "If the email exists, a password reset link will be sent."}),
    ))
}

async fn reset_password(
    State(state): State<AppState>,
    JsonBody(body, _): Body,
) -> Result<Json<Value>> {
    let mut f = Fields::new(body);
    let token = f.string_max("token", true, 1024);
    let new = f.string_max("new_password", true, 1024);
    f.finish_as::<Neuronest>()?;
    state
        .identity
        .reset_password(&token.unwrap_or_default(), &new.unwrap_or_default())
        .await
        .map_err(|e| match e {
            IdentityError::Invalid(m) if m.contains("token") => {
                ApiError::new(StatusCode::BAD_REQUEST, "Invalid or expired token")
            }
            other => other.into(),
        })?;
    Ok(Json(json!({"message": "Password reset successfully"})))
}

async fn logout(State(state): State<AppState>, CurrentUser(p, _): Caller) -> Result<Json<Value>> {
    state.identity.logout(&p.presented).await?;
    Ok(Json(json!({"message": "Successfully logged out"})))
}

pub(crate) fn routes() -> Api {
    let tag = "neuronest: auth";
    agents::routes()
        .merge(tasks::routes())
        .merge(workflows::routes())
        .merge(runtimes::routes())
        .public_post("/api/auth/register", tag, "Register and log in", register)
        .public_post(
            "/api/auth/login",
            tag,
            "Log in with email and password",
            login,
        )
        .get("/api/auth/me", tag, "The caller", me)
        .put(
            "/api/auth/me",
            tag,
            "Update the caller's name or email",
            update_me,
        )
        .put(
            "/api/auth/change-password",
            tag,
            "Change the caller's password",
            change_password,
        )
        .public_post(
            "/api/auth/forgot-password",
            tag,
            "Mail a reset token (same answer either way)",
            forgot_password,
        )
        .public_post(
            "/api/auth/reset-password",
            tag,
            "Reset a password with its token",
            reset_password,
        )
        .post(
            "/api/auth/logout",
            tag,
            "Revoke the presented token",
            logout,
        )
}
