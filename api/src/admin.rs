//! Warden's own admin routes: the live actor tree, fault injection, and
//! user administration until every dialect's own user routes land.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_identity::model::{Role, User};
use warden_identity::{Enrolment, SignUp};

use crate::AppState;
use crate::auth::AdminUser;
use crate::dialects::Aiwm;
use crate::dialects::aiwm::{AiwmBody, AiwmResult, Fields};
use crate::openapi::Api;

type Admin = AdminUser<Aiwm>;

async fn actors(State(state): State<AppState>, _: Admin) -> AiwmResult<Json<Value>> {
    Ok(Json(
        serde_json::to_value(state.runtime.snapshot().await?).unwrap_or_default(),
    ))
}

async fn crash(
    State(state): State<AppState>,
    AdminUser(admin, _): Admin,
    Path(name): Path<String>,
) -> AiwmResult<(StatusCode, Json<Value>)> {
    state.runtime.crash(&name).await?;
    tracing::warn!(actor = %name, by = %admin.username, "fault injection: actor told to crash");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"message": format!("{name} was told to crash")})),
    ))
}

async fn restart(
    State(state): State<AppState>,
    AdminUser(admin, _): Admin,
    Path(name): Path<String>,
) -> AiwmResult<Json<Value>> {
    state.runtime.reset(&name).await?;
    tracing::info!(actor = %name, by = %admin.username, "failed actor reset");
    Ok(Json(
        json!({"message": format!("{name} was reset and will start on next use")}),
    ))
}

/// Fault injection: the store's next flush fails, which poisons it: every
/// later write answers 503 and the server stops with a non-zero exit.
async fn fail_flush(
    State(state): State<AppState>,
    AdminUser(admin, _): Admin,
) -> AiwmResult<(StatusCode, Json<Value>)> {
    state.store.inject_flush_failure();
    tracing::warn!(by = %admin.username, "fault injection: the next flush of the store fails");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"message": "the next flush of the store will fail"})),
    ))
}

/// Fault injection: every flush of the store first waits `{"ms": N}`
/// (0 to 10,000), so readers racing a group's flush can be watched.
async fn flush_delay(
    State(state): State<AppState>,
    AdminUser(admin, _): Admin,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<Json<Value>> {
    let mut f = Fields::new(body);
    let ms = f.count("ms", true);
    f.finish()?;
    let ms = ms.unwrap_or_default();
    if ms > 10_000 {
        return Err(crate::error::ApiError::validation(vec![
            "ms must not be greater than 10000".into(),
        ]));
    }
    state
        .store
        .inject_flush_delay(std::time::Duration::from_millis(ms));
    tracing::warn!(ms, by = %admin.username, "fault injection: every flush of the store is delayed");
    Ok(Json(
        json!({"message": format!("every flush now waits {ms} ms first")}),
    ))
}

fn key_view(k: &warden_identity::KeyInfo) -> Value {
    json!({
        "kid": k.kid,
        "createdAt": crate::dialects::iso(k.created_at),
        "current": k.current,
        "retiresAt": k.retires_at.map(crate::dialects::iso),
    })
}

/// `GET /admin/keys`: the JWT signing keys (ids and lifetimes only).
async fn keys(State(state): State<AppState>, _: Admin) -> AiwmResult<Json<Value>> {
    let keys = state.identity.signing_keys();
    Ok(Json(Value::Array(keys.iter().map(key_view).collect())))
}

/// `POST /admin/keys/rotate`: a new signing key; tokens signed with the
/// older ones stay valid until they expire.
async fn rotate_key(
    State(state): State<AppState>,
    AdminUser(admin, _): Admin,
) -> AiwmResult<(StatusCode, Json<Value>)> {
    let key = state.identity.rotate_signing_key()?;
    tracing::info!(kid = %key.kid, by = %admin.username, "signing key rotated");
    Ok((StatusCode::CREATED, Json(key_view(&key))))
}

fn user_view(u: &User) -> Value {
    json!({
        "id": u.id,
        "username": u.username,
        "email": u.email,
        "roles": u.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "orgId": u.org_id,
        "emailVerified": u.email_verified,
    })
}

async fn create_user(
    State(state): State<AppState>,
    _: Admin,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<(StatusCode, Json<Value>)> {
    let mut f = Fields::new(body);
    let username = f.string("username", true);
    let email = f.string("email", true);
    let password = f.string_max("password", true, 1024);
    let roles = f.strings("roles", false).unwrap_or_default();
    let org_id = f.string("orgId", false);
    let mut parsed = Vec::new();
    for r in &roles {
        match Role::parse(r) {
            Some(role) => parsed.push(role),
            None => f.error(
                "each value in roles must be one of the following values: admin, operator, viewer"
                    .into(),
            ),
        }
    }
    f.finish()?;
    let user = state
        .identity
        .enrol(
            SignUp {
                username: Some(username.unwrap_or_default()),
                email: email.unwrap_or_default(),
                password: password.unwrap_or_default(),
                full_name: None,
            },
            Enrolment::ByAdmin {
                org_id,
                roles: parsed,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user_view(&user))))
}

async fn list_users(State(state): State<AppState>, _: Admin) -> AiwmResult<Json<Value>> {
    let users = state.store.all::<User>()?;
    Ok(Json(Value::Array(users.iter().map(user_view).collect())))
}

/// `GET /admin/outbox?to=`: mail Warden sent or kept, newest first.
async fn outbox(
    State(state): State<AppState>,
    _: Admin,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> AiwmResult<Json<Value>> {
    let mails = state
        .identity
        .mailer()
        .outbox(q.get("to").map(String::as_str))?;
    let items: Vec<Value> = mails
        .iter()
        .map(|m| json!({"id": m.id, "to": m.to, "subject": m.subject, "body": m.body, "status": m.status, "createdAt": crate::dialects::iso(m.created_at)}))
        .collect();
    Ok(Json(Value::Array(items)))
}

#[derive(serde::Deserialize)]
struct UsageQuery {
    user: Option<String>,
    model: Option<String>,
}

/// The organisation's LLM usage by user and model: requests, tokens
/// (the providers' counts, or Warden's estimates where they gave none)
/// and cost at each model's `cost_per_token`.
async fn llm_usage(
    State(state): State<AppState>,
    AdminUser(admin, _): Admin,
    axum::extract::Query(q): axum::extract::Query<UsageQuery>,
) -> AiwmResult<Json<Value>> {
    let rows = state
        .runtime
        .llm
        .usage(&admin.org_id, q.user.as_deref(), q.model.as_deref())?;
    Ok(Json(Value::Array(
        rows.iter()
            .map(|u| {
                serde_json::json!({
                    "userId": u.user_id,
                    "model": u.model,
                    "requests": u.requests,
                    "promptTokens": u.prompt_tokens,
                    "completionTokens": u.completion_tokens,
                    "totalTokens": u.prompt_tokens + u.completion_tokens,
                    "estimatedRequests": u.estimated_requests,
                    "cost": u.cost,
                    "updatedAt": warden_storage::iso_millis(u.updated_at),
                })
            })
            .collect(),
    )))
}

pub(crate) fn routes(fault_injection: bool) -> Api {
    let api = Api::new()
        .get(
            "/admin/llm/usage",
            "admin",
            "LLM usage of the organisation by user and model (user, model filters)",
            llm_usage,
        )
        .get(
            "/admin/actors",
            "admin",
            "The live supervision tree",
            actors,
        )
        .post(
            "/admin/actors/{name}/restart",
            "admin",
            "Clear a failed actor so it can start again",
            restart,
        )
        .post(
            "/admin/users",
            "admin",
            "Create a user (admin only)",
            create_user,
        )
        .get(
            "/admin/users",
            "admin",
            "List users (admin only)",
            list_users,
        )
        .get(
            "/admin/keys",
            "admin",
            "The JWT signing keys: ids, ages, which signs, when each retires",
            keys,
        )
        .post(
            "/admin/keys/rotate",
            "admin",
            "Rotate the JWT signing key (older tokens stay valid until they expire)",
            rotate_key,
        )
        .get(
            "/admin/outbox",
            "admin",
            "Mail sent or kept in the outbox, newest first (?to=)",
            outbox,
        );
    if fault_injection {
        api.post(
            "/admin/actors/{name}/crash",
            "admin",
            "Make an actor panic (fault injection)",
            crash,
        )
        .post(
            "/admin/store/flush-delay",
            "admin",
            "Delay every flush of the store by {ms} (fault injection)",
            flush_delay,
        )
        .post(
            "/admin/store/fail-next-flush",
            "admin",
            "Make the store's next flush fail, poisoning it (fault injection)",
            fail_flush,
        )
    } else {
        api
    }
}
