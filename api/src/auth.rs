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

/// The client's IP address: the peer's, or, when the peer is one of the
/// configured trusted proxies, the nearest address in `X-Forwarded-For`
/// that is not a trusted proxy itself (loopback when unknown, e.g.
/// in-process calls). A client cannot choose its address by sending the
/// header: from an untrusted peer it is ignored.
pub(crate) struct ClientIp(pub std::net::IpAddr);

pub(crate) fn client_ip(parts: &Parts, trusted: &[ipnet::IpNet]) -> std::net::IpAddr {
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<std::net::IpAddr> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map_while(|hop| hop.trim().parse().ok())
        .collect();
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(hops.first())
        .copied()
        .unwrap_or(peer)
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts, &state.config.trusted_proxies)))
    }
}

/// A mail-sending route (sign-up, resend-code, forgot-password): at most
/// `mail_per_minute` per client address, answered with the dialect's 429.
pub(crate) struct MailLimited<D>(PhantomData<D>);

impl<D: Dialect> FromRequestParts<AppState> for MailLimited<D> {
    type Rejection = ApiError<D>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ip = client_ip(parts, &state.config.trusted_proxies);
        match state.limits.mail.hit(&format!("mail {ip}")) {
            Some(wait) => Err(ApiError::too_many(wait)),
            None => Ok(MailLimited(PhantomData)),
        }
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
    let attempt = state
        .limits
        .login_attempt(ip, login)
        .map_err(ApiError::too_many)?;
    match state.identity.authenticate(login, password).await {
        Ok(user) => {
            attempt.succeeded();
            if user.email_verified {
                Ok(user)
            } else {
                Err(ApiError::forbidden("Email not verified"))
            }
        }
        Err(warden_identity::IdentityError::InvalidCredentials) => {
            tracing::info!(%ip, "failed login");
            Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "Invalid credentials",
            ))
        }
        Err(e) => {
            // Not a wrong password (busy, storage): the slot goes back.
            attempt.succeeded();
            Err(e.into())
        }
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

/// A caller of an organisation: a user, or a node daemon with its node
/// credential (for what nodes fetch from the server). Holds the org id,
/// and the node's `_id` when the caller is a node.
pub(crate) struct OrgMember<D>(pub String, pub Option<String>, pub PhantomData<D>);

impl<D: Dialect> FromRequestParts<AppState> for OrgMember<D> {
    type Rejection = ApiError<D>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = presented(parts).ok_or_else(ApiError::unauthorized)?;
        match state.identity.verify_credential(token) {
            Ok(warden_identity::Credential::User(p)) => Ok(OrgMember(p.org_id, None, PhantomData)),
            Ok(warden_identity::Credential::Node { org_id, node_id }) => {
                Ok(OrgMember(org_id, Some(node_id), PhantomData))
            }
            Err(e) => {
                tracing::debug!(error = %e, "refused a credential");
                Err(ApiError::unauthorized())
            }
        }
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
