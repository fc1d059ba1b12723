//! Per-request context: the correlation id and path, kept in a task-local
//! so that error bodies built anywhere in a handler can carry them; plus
//! the request span, metrics and the `x-correlation-id` response header.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::AppState;

#[derive(Clone, Debug)]
pub(crate) struct RequestContext {
    pub correlation_id: String,
    pub path: String,
}

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// The current request's context (empty outside a request).
pub(crate) fn current() -> RequestContext {
    CONTEXT
        .try_with(|c| c.clone())
        .unwrap_or_else(|_| RequestContext {
            correlation_id: String::new(),
            path: String::new(),
        })
}

const HEADER: &str = "x-correlation-id";

fn valid_correlation_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

pub(crate) async fn middleware(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let correlation_id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_correlation_id(v))
        .map(str::to_owned)
        .unwrap_or_else(warden_storage::new_uuid);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().clone();
    let ctx = RequestContext {
        correlation_id: correlation_id.clone(),
        path: request.uri().path().to_owned(),
    };
    let span =
        tracing::info_span!("request", %method, route = %route, correlation_id = %correlation_id);
    let mut response = CONTEXT
        .scope(ctx, next.run(request))
        .instrument(span.clone())
        .await;
    let elapsed = started.elapsed();
    let status = response.status();
    state
        .metrics
        .observe(method.as_str(), &route, status.as_u16(), elapsed);
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            micros = elapsed.as_micros() as u64,
            "served"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}
