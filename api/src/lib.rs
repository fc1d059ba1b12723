//! The HTTP layer: one router per dialect plus Warden's own admin routes,
//! auth extractors, per-dialect error bodies and paging, request context
//! (correlation id), metrics and the OpenAPI document. No business logic:
//! handlers extract, call the core, and map the answer.

/// The largest dataset a client may upload or import.
pub use dialects::upload::MAX_UPLOAD;

mod admin;
mod artifacts;
mod auth;
mod context;
mod dialects;
mod error;
mod health;
mod limits;
mod metrics;
mod openapi;
mod paging;
mod serving;
mod sse;
mod ws;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use warden_identity::Identity;
use warden_storage::Store;
use warden_supervisors::Runtime;

pub use limits::RateLimits;
pub use metrics::Metrics;

/// Settings the HTTP layer needs.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub enable_fault_injection: bool,
    pub max_body_bytes: usize,
    pub version: &'static str,
    pub rate_limits: RateLimits,
    /// Peers whose `X-Forwarded-For` names the client (reverse proxies).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Dataset imports (`/api/v1/datasets/connect`).
    pub import: warden_import::Settings,
    /// How long a vareon device command waits for its daemon's answer.
    pub device_command_wait: std::time::Duration,
}

/// Everything a handler can reach. One pointer to clone: axum clones the
/// state for every extractor of every request.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

pub struct AppStateInner {
    pub store: Store,
    pub identity: Identity,
    pub runtime: Runtime,
    pub metrics: Arc<Metrics>,
    pub config: Arc<ApiConfig>,
    pub started: Instant,
    pub lifecycle: Lifecycle,
    pub(crate) limits: Arc<limits::Limits>,
}

impl AppState {
    pub fn new(
        store: Store,
        identity: Identity,
        runtime: Runtime,
        config: ApiConfig,
        lifecycle: Lifecycle,
    ) -> AppState {
        AppState(Arc::new(AppStateInner {
            store,
            identity,
            runtime,
            metrics: Arc::new(Metrics::default()),
            limits: Arc::new(limits::Limits::new(config.rate_limits)),
            config: Arc::new(config),
            started: Instant::now(),
            lifecycle,
        }))
    }
}

/// Lets long-lived connections (node sessions) hear about shutdown, and
/// lets the server wait until they have closed.
#[derive(Clone)]
pub struct Lifecycle {
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Upgraded by every live session; the server waits for all to drop.
    alive: tokio::sync::mpsc::WeakSender<()>,
}

/// The server's side of a [`Lifecycle`].
pub struct LifecycleControl {
    stop: tokio::sync::watch::Sender<bool>,
    alive: Option<tokio::sync::mpsc::Sender<()>>,
    done: tokio::sync::mpsc::Receiver<()>,
}

impl Lifecycle {
    pub fn new() -> (Lifecycle, LifecycleControl) {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let (alive, done) = tokio::sync::mpsc::channel(1);
        let weak = alive.downgrade();
        (
            Lifecycle {
                stopping,
                alive: weak,
            },
            LifecycleControl {
                stop,
                alive: Some(alive),
                done,
            },
        )
    }

    /// Resolves when the server starts shutting down.
    pub async fn stopping(&self) {
        let mut rx = self.stopping.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Held for a session's life; `None` once the server is stopping
    /// (then a new connection is refused: a fleet reconnecting during a
    /// shutdown must not hold the shutdown open).
    pub(crate) fn guard(&self) -> Option<tokio::sync::mpsc::Sender<()>> {
        if *self.stopping.borrow() {
            return None;
        }
        self.alive.upgrade()
    }
}

impl LifecycleControl {
    /// Tells every session to close.
    pub fn stop(&mut self) {
        self.alive = None;
        let _ = self.stop.send(true);
    }

    /// Waits until every session has closed (once the router and every
    /// other `AppState` are gone), or `timeout` passes.
    pub async fn wait(mut self, timeout: std::time::Duration) -> bool {
        tokio::time::timeout(timeout, async { while self.done.recv().await.is_some() {} })
            .await
            .is_ok()
    }
}

/// The whole application router: every dialect on one port.
pub fn router(state: AppState) -> Router {
    let api = openapi::Api::new()
        .merge(health::routes())
        .merge(dialects::aiwm::routes())
        .merge(dialects::vareon::routes())
        .merge(dialects::neuronest::routes())
        .merge(dialects::forge::routes())
        .merge(dialects::contenox::routes())
        .merge(ws::routes())
        .merge(ws::shell_routes())
        .merge(artifacts::routes())
        .merge(admin::routes(state.config.enable_fault_injection));
    let (router, docs) = api.finish();
    let docs = Arc::new(docs);
    router
        .merge(openapi::routes(docs))
        .fallback(error::unmatched)
        .layer(ws::socketio_layer(state.clone()))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            context::middleware,
        ))
        .with_state(state)
}
