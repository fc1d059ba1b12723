//! Errors at the edge. A handler returns `ApiError<D>`; the dialect `D`
//! decides the body. `DomainError` maps to a status in one place.

use std::marker::PhantomData;

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use warden_actors::DomainError;
use warden_identity::IdentityError;

use crate::dialects::{Aiwm, Dialect};

#[derive(Debug)]
pub(crate) struct ApiError<D> {
    pub status: StatusCode,
    pub message: String,
    pub errors: Vec<String>,
    /// Seconds, for 429 answers.
    pub retry_after: Option<u64>,
    _dialect: PhantomData<D>,
}

impl<D> ApiError<D> {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            errors: Vec::new(),
            retry_after: None,
            _dialect: PhantomData,
        }
    }

    pub fn validation(errors: Vec<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: "Validation failed".into(),
            errors,
            retry_after: None,
            _dialect: PhantomData,
        }
    }

    pub fn too_many(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests; try again later",
        );
        e.retry_after = Some(retry_after);
        e
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(kind: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("{kind} with ID {id} not found"),
        )
    }

    /// A 500 whose body says nothing of the cause; the log has it, with
    /// the request's correlation id.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
    }

    /// A 503: safe to retry later. The cause goes to the log, not the body.
    pub fn unavailable(detail: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %detail, "service unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service temporarily unavailable; try again later",
        )
    }

    /// A store failure: 503 when the store cannot take or answer the
    /// request now (poisoned, closed, busy), 500 otherwise.
    pub fn storage(e: warden_storage::StorageError) -> Self {
        use warden_storage::StorageError as S;
        match e {
            S::Poisoned(_) => {
                tracing::error!(error = %e, "write refused");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The store cannot take writes after a failed flush; the server is stopping",
                )
            }
            S::Closed | S::Unavailable(_) => Self::unavailable(e),
            other => Self::internal(other),
        }
    }
}

impl<D: Dialect> IntoResponse for ApiError<D> {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after;
        let mut response = D::error(self.status, self.message, self.errors);
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl<D> From<DomainError> for ApiError<D> {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::NotFound { kind, id } => Self::not_found(&capitalise(kind), &id),
            DomainError::Invalid(errors) => Self::validation(errors),
            e @ DomainError::Conflict { .. } => Self::new(StatusCode::CONFLICT, e.to_string()),
            e @ DomainError::Failed { .. } => {
                Self::new(StatusCode::CONFLICT, capitalise(&e.to_string()))
            }
            DomainError::Unavailable(m) | DomainError::TimedOut(m) => Self::unavailable(m),
            DomainError::Forbidden(m) => Self::new(StatusCode::FORBIDDEN, m),
            DomainError::Busy(m) => Self::new(StatusCode::CONFLICT, m),
            DomainError::Unreachable(m) => Self::new(StatusCode::SERVICE_UNAVAILABLE, m),
            DomainError::Storage(e) => Self::storage(e),
        }
    }
}

impl<D> From<warden_storage::StorageError> for ApiError<D> {
    fn from(e: warden_storage::StorageError) -> Self {
        DomainError::from(e).into()
    }
}

impl<D> From<IdentityError> for ApiError<D> {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::InvalidCredentials => {
                Self::new(StatusCode::UNAUTHORIZED, "Invalid credentials")
            }
            IdentityError::InvalidToken => Self::unauthorized(),
            IdentityError::Invalid(m) => Self::validation(vec![m]),
            IdentityError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, m),
            IdentityError::EmailNotVerified => Self::forbidden("Email not verified"),
            e @ IdentityError::Taken { .. } => Self::new(StatusCode::CONFLICT, e.to_string()),
            IdentityError::Secrets(e) => Self::internal(e),
            IdentityError::Busy => {
                let mut e = Self::unavailable("password checks queue full");
                e.retry_after = Some(1);
                e
            }
            IdentityError::Storage(e) => Self::storage(e),
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Every path no route matches: 404, marked for the route-coverage tool.
pub(crate) async fn unmatched(method: axum::http::Method, uri: Uri) -> Response {
    let mut response = ApiError::<Aiwm>::new(
        StatusCode::NOT_FOUND,
        format!("Cannot {method} {}", uri.path()),
    )
    .into_response();
    response.headers_mut().insert(
        "x-warden-route",
        axum::http::HeaderValue::from_static("unmatched"),
    );
    response
}
