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

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl<D: Dialect> FromRequestParts<AppState> for CurrentUser<D> {
    type Rejection = ApiError<D>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        let principal = state.identity.verify_token(token).map_err(|e| {
            tracing::debug!(error = %e, "refused a token");
            ApiError::unauthorized()
        })?;
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
