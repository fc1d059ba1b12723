//! Contenox users and sessions, and Warden's API-key routes.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use warden_identity::model::{Role, User};
use warden_identity::{Enrolment, IdentityError, ProfileUpdate, SignUp};

use super::{COOKIE, Contenox, ContenoxResult};
use crate::AppState;
use crate::auth::{AdminUser, ClientIp, CurrentUser, password_login};
use crate::dialects::{Fields, JsonBody, iso};
use crate::error::ApiError;
use crate::openapi::Api;

type Body = JsonBody<Contenox>;
type Caller = CurrentUser<Contenox>;
type Admin = AdminUser<Contenox>;

pub(crate) fn user_view(u: &User) -> Value {
    json!({
        "id": u.id,
        "email": u.email,
        "friendlyName": u.full_name.clone().unwrap_or_else(|| u.username.clone()),
        "subject": u.username,
        "roles": u.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "createdAt": iso(u.created_at),
        "updatedAt": iso(u.updated_at),
    })
}

fn session_body(state: &AppState, user: &User) -> ContenoxResult<(String, Value)> {
    let issued = state.identity.issue_token(user)?;
    let expires = iso(warden_storage::now_millis() + issued.expires_in * 1000);
    let body = json!({"token": issued.token, "user": user_view(user), "expiresAt": expires});
    Ok((issued.token, body))
}

fn cookie(token: &str, max_age: i64) -> HeaderValue {
    let value =
        format!("{COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}");
    HeaderValue::from_str(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("auth_token=; Max-Age=0"))
}

fn with_cookie(status: StatusCode, token: &str, max_age: i64, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie(token, max_age));
    r
}

fn taken(e: IdentityError) -> ApiError<Contenox> {
    match e {
        IdentityError::Taken { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "A user with this email already exists",
        ),
        other => other.into(),
    }
}

/// Reads a `CreateUserRequest` and creates the user (verified: Contenox has
/// no verification step).
async fn create_from(
    state: &AppState,
    body: serde_json::Map<String, Value>,
    how: Enrolment,
) -> ContenoxResult<User> {
    let mut f = Fields::new(body);
    let email = f.string("email", true);
    let password = f.string_max("password", true, 1024);
    let friendly = f.string("friendlyName", false);
    f.drop(&["allowedResources"]);
    f.finish_as::<Contenox>()?;
    state
        .identity
        .enrol(
            SignUp {
                username: None,
                email: email.unwrap_or_default(),
                password: password.unwrap_or_default(),
                full_name: friendly,
            },
            how,
        )
        .await
        .map_err(taken)
}

async fn credentials(
    state: &AppState,
    ip: std::net::IpAddr,
    body: serde_json::Map<String, Value>,
) -> ContenoxResult<User> {
    let mut f = Fields::new(body);
    let email = f.string("email", true);
    let password = f.string_max("password", true, 1024);
    f.finish_as::<Contenox>()?;
    password_login::<Contenox>(
        state,
        ip,
        &email.unwrap_or_default(),
        &password.unwrap_or_default(),
    )
    .await
}

async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body, _): Body,
) -> ContenoxResult<Json<Value>> {
    let user = credentials(&state, ip, body).await?;
    Ok(Json(session_body(&state, &user)?.1))
}

async fn register(
    _: crate::auth::MailLimited<Contenox>,
    State(state): State<AppState>,
    JsonBody(body, _): Body,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    let user = create_from(&state, body, Enrolment::SelfService).await?;
    Ok((StatusCode::CREATED, Json(session_body(&state, &user)?.1)))
}

/// A new token for a valid one (which is then revoked).
async fn refresh(state: &AppState, token: &str) -> ContenoxResult<(String, Value)> {
    let principal = state
        .identity
        .verify_token(token)
        .map_err(|_| ApiError::unauthorized())?;
    let user = state
        .identity
        .user(&principal.user_id)?
        .ok_or_else(ApiError::unauthorized)?;
    let fresh = session_body(state, &user)?;
    state.identity.logout(&principal.presented).await?;
    Ok(fresh)
}

async fn token_refresh(
    State(state): State<AppState>,
    JsonBody(body, _): Body,
) -> ContenoxResult<Json<Value>> {
    let mut f = Fields::new(body);
    let token = f.string_max("token", true, 8192);
    f.finish_as::<Contenox>()?;
    let (token, _) = refresh(&state, &token.unwrap_or_default()).await?;
    Ok(Json(json!({"token": token})))
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    crate::auth::cookie_value(headers, COOKIE)
}

async fn ui_login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body, _): Body,
) -> ContenoxResult<Response> {
    let user = credentials(&state, ip, body).await?;
    let (token, _) = session_body(&state, &user)?;
    Ok(with_cookie(
        StatusCode::OK,
        &token,
        state.identity.token_ttl_secs(),
        json!({"user": user_view(&user)}),
    ))
}

async fn ui_register(
    State(state): State<AppState>,
    JsonBody(body, _): Body,
) -> ContenoxResult<Response> {
    let user = create_from(&state, body, Enrolment::SelfService).await?;
    let (token, _) = session_body(&state, &user)?;
    Ok(with_cookie(
        StatusCode::CREATED,
        &token,
        state.identity.token_ttl_secs(),
        json!({"user": user_view(&user)}),
    ))
}

async fn ui_logout(State(state): State<AppState>, headers: HeaderMap) -> ContenoxResult<Response> {
    if let Some(token) = cookie_token(&headers)
        && let Ok(p) = state.identity.verify_token(&token)
    {
        state.identity.logout(&p.presented).await?;
    }
    Ok(with_cookie(StatusCode::OK, "", 0, json!("logged out")))
}

async fn ui_me(State(state): State<AppState>, headers: HeaderMap) -> ContenoxResult<Json<Value>> {
    let token = cookie_token(&headers).ok_or_else(ApiError::unauthorized)?;
    let p = state
        .identity
        .verify_token(&token)
        .map_err(|_| ApiError::unauthorized())?;
    let user = crate::auth::caller(&state, &p)?;
    Ok(Json(user_view(&user)))
}

async fn ui_token_refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ContenoxResult<Response> {
    let token = cookie_token(&headers).ok_or_else(ApiError::unauthorized)?;
    let (fresh, _) = refresh(&state, &token).await?;
    Ok(with_cookie(
        StatusCode::OK,
        &fresh,
        state.identity.token_ttl_secs(),
        json!("token refreshed"),
    ))
}

#[derive(serde::Deserialize)]
struct Paging {
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_users(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Query(q): Query<Paging>,
) -> ContenoxResult<Json<Value>> {
    let (limit, cursor) = super::page_params(q.limit.as_deref(), "cursor", q.cursor.as_deref())?;
    // Newest first, strictly before the cursor. Every user has a distinct
    // creation millisecond (identity stamps them so), so a page that ends
    // on one never hides another created in the same millisecond.
    let scope = warden_domain::org_scope((!p.is_admin()).then_some(p.org_id.as_str()));
    let page = crate::paging::Window::cursor(cursor, limit).read::<User>(
        state.identity.store(),
        warden_domain::CREATED,
        &scope,
        true,
    )?;
    Ok(Json(Value::Array(
        page.items.iter().map(|(_, u)| user_view(u)).collect(),
    )))
}

async fn create_user(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    JsonBody(body, _): Body,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    let user = create_from(
        &state,
        body,
        Enrolment::ByAdmin {
            org_id: Some(p.org_id.clone()),
            roles: vec![Role::Operator],
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(user_view(&user))))
}

/// A user the caller may see: themselves, or anyone for an admin.
fn visible(state: &AppState, p: &warden_identity::Principal, id: &str) -> ContenoxResult<User> {
    state
        .identity
        .user(id)?
        .filter(|u| u.id == p.user_id || p.is_admin())
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("user {id} not found")))
}

async fn get_user(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    Ok(Json(user_view(&visible(&state, &p, &id)?)))
}

async fn update_user(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
    JsonBody(body, _): Body,
) -> ContenoxResult<Json<Value>> {
    let user = visible(&state, &p, &id)?;
    let mut f = Fields::new(body);
    let email = f.string("email", false);
    let friendly = f.string("friendlyName", false);
    let password = f.string_max("password", false, 1024);
    f.finish_as::<Contenox>()?;
    let update = ProfileUpdate {
        email,
        full_name: friendly,
        password,
        ..Default::default()
    };
    let user = state
        .identity
        .update_profile(&user.id, update)
        .await
        .map_err(taken)?;
    Ok(Json(user_view(&user)))
}

async fn delete_user(
    State(state): State<AppState>,
    AdminUser(p, _): Admin,
    Path(id): Path<String>,
) -> ContenoxResult<Json<Value>> {
    let user = visible(&state, &p, &id)?;
    if user.id == p.user_id {
        return Err(ApiError::validation(vec![
            "id must not be your own account".into(),
        ]));
    }
    state.identity.delete_user(&user.id).await?;
    Ok(Json(json!("user deleted")))
}

fn key_view(k: &warden_identity::model::ApiKey) -> Value {
    json!({"id": k.key_id, "name": k.name, "prefix": k.prefix, "createdAt": iso(k.created_at)})
}

/// `POST /auth/api-keys`: a new `X-API-Key` for the caller, shown once.
async fn create_key(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    JsonBody(body, _): Body,
) -> ContenoxResult<(StatusCode, Json<Value>)> {
    let mut f = Fields::new(body);
    let name = f.string("name", true);
    f.finish_as::<Contenox>()?;
    let created = state
        .identity
        .create_api_key(&p.user_id, &name.unwrap_or_default())
        .await?;
    let mut view = key_view(&created.record);
    view["key"] = json!(created.key);
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list_keys(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
) -> ContenoxResult<Json<Value>> {
    Ok(Json(Value::Array(
        state
            .identity
            .api_keys(&p.user_id)?
            .iter()
            .map(key_view)
            .collect(),
    )))
}

async fn delete_key(
    State(state): State<AppState>,
    CurrentUser(p, _): Caller,
    Path(id): Path<String>,
) -> ContenoxResult<StatusCode> {
    if state.identity.delete_api_key(&p.user_id, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("api key {id} not found"),
        ))
    }
}

pub(super) fn routes() -> Api {
    let (auth, users, ui) = ("contenox: auth", "contenox: users", "contenox: ui");
    Api::new()
        .public_post(
            "/login",
            auth,
            "Log in with email and password: {token, user, expiresAt}",
            login,
        )
        .public_post("/register", auth, "Register and log in", register)
        .public_post(
            "/token_refresh",
            auth,
            "Exchange a valid token for a new one",
            token_refresh,
        )
        .public_post(
            "/ui/login",
            ui,
            "Log in; the token goes in an HTTP-only cookie",
            ui_login,
        )
        .public_post(
            "/ui/register",
            ui,
            "Register; the token goes in an HTTP-only cookie",
            ui_register,
        )
        .public_post(
            "/ui/logout",
            ui,
            "Revoke the cookie's token and clear it",
            ui_logout,
        )
        .public_get("/ui/me", ui, "The cookie's user", ui_me)
        .public_post(
            "/ui/token_refresh",
            ui,
            "Refresh the cookie's token",
            ui_token_refresh,
        )
        .get(
            "/users",
            users,
            "Users, newest first (limit, cursor)",
            list_users,
        )
        .post("/users", users, "Create a user (admin)", create_user)
        .get(
            "/users/{id}",
            users,
            "A user (yourself, or any for an admin)",
            get_user,
        )
        .put(
            "/users/{id}",
            users,
            "Update a user (yourself, or any for an admin)",
            update_user,
        )
        .delete("/users/{id}", users, "Delete a user (admin)", delete_user)
        .post(
            "/auth/api-keys",
            auth,
            "Create an X-API-Key for the caller (shown once)",
            create_key,
        )
        .get(
            "/auth/api-keys",
            auth,
            "The caller's API keys (never the keys themselves)",
            list_keys,
        )
        .delete(
            "/auth/api-keys/{id}",
            auth,
            "Delete one of the caller's API keys",
            delete_key,
        )
}
