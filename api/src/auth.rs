//! Authentication extractors: a handler that takes `CurrentUser<D>` or
//! `AdminUser<D>` cannot run without a valid credential, and the refusal
//! is written in dialect `D`'s error body.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use warden_identity::Principal;

use crate::AppState;
use crate::dialects::Dialect;
use crate::error::ApiError;

/// The authenticated caller.
pub(crate) struct CurrentUser<D>(pub Principal, pub PhantomData<D>);

/// The authenticated caller, who must be an instance administrator.
pub(crate) struct AdminUser<D>(pub Principal, pub PhantomData<D>);

/// The credential a request presents: `Authorization: Bearer`, else
/// `X-API-Key` (any credential works on every dialect).
fn presented(parts: &Parts) -> Option<&str> {
    bearer(&parts.headers)
        .or_else(|| {
            parts
                .headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
        .filter(|t| !t.is_empty())
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller's own user record (gone: the credential is no longer good).
pub(crate) fn caller<D>(
    state: &AppState,
    p: &Principal,
) -> Result<warden_identity::model::User, ApiError<D>> {
    state
        .identity
        .user(&p.user_id)?
        .ok_or_else(ApiError::unauthorized)
}

/// A cookie's value from the request headers.
pub(crate) fn cookie_value(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name && !v.is_empty()).then(|| v.to_owned())
        })
}

/// The peer's IP address (loopback when unknown, e.g. in-process calls).
pub(crate) struct ClientIp(pub std::net::IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        Ok(ClientIp(ip))
    }
}

/// Checks a password login for every dialect: failed attempts are counted
/// per IP and per account, and a caller over the limit is refused first.
/// Unverified accounts are refused with 403.
pub(crate) async fn password_login<D>(
    state: &AppState,
    ip: std::net::IpAddr,
    login: &str,
    password: &str,
) -> Result<warden_identity::model::User, ApiError<D>> {
    if let Some(wait) = state.limits.login_blocked(ip, login) {
        return Err(ApiError::too_many(wait));
    }
    let identity = state.identity.clone();
    let (login_owned, password_owned) = (login.to_owned(), password.to_owned());
    let outcome =
        tokio::task::spawn_blocking(move || identity.authenticate(&login_owned, &password_owned))
            .await
            .map_err(ApiError::internal)?;
    match outcome {
        Ok(user) if !user.email_verified => Err(ApiError::forbidden("Email not verified")),
        Ok(user) => Ok(user),
        Err(warden_identity::IdentityError::InvalidCredentials) => {
            state.limits.login_failed(ip, login);
            tracing::info!(%ip, "failed login");
            Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "Invalid credentials",
            ))
        }
        Err(e) => Err(e.into()),
    }
}

impl<D: Dialect> FromRequestParts<AppState> for CurrentUser<D> {
    type Rejection = ApiError<D>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let cookie = D::ACCEPTS_COOKIE.and_then(|name| cookie_value(&parts.headers, name));
        let token = presented(parts)
            .or(cookie.as_deref())
            .ok_or_else(ApiError::unauthorized)?;
        let principal = state.identity.verify_token(token).map_err(|e| {
            tracing::debug!(error = %e, "refused a credential");
            ApiError::unauthorized()
        })?;
        if D::API_RATE_LIMITED
            && let Some(wait) = state.limits.api.hit(&principal.user_id)
        {
            return Err(ApiError::too_many(wait));
        }
        Ok(CurrentUser(principal, PhantomData))
    }
}

impl<D: Dialect> FromRequestParts<AppState> for AdminUser<D> {
    type Rejection = ApiError<D>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let CurrentUser(principal, _) = CurrentUser::<D>::from_request_parts(parts, state).await?;
        if !principal.is_admin() {
            return Err(ApiError::forbidden("Admin access required"));
        }
        Ok(AdminUser(principal, PhantomData))
    }
}
