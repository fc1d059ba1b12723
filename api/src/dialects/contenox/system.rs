//! Contenox's system routes: `/system/services` (the services running,
//! from the live supervision tree), `/system/resources` (the resource
//! kinds access control knows) and `/version`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{Contenox, ContenoxResult};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::openapi::Api;

type Caller = CurrentUser<Contenox>;

/// The supervisors running now (each a service of entities), and the
/// gateway that serves the HTTP dialects.
async fn services(State(state): State<AppState>, _: Caller) -> ContenoxResult<Json<Value>> {
    let tree = state.runtime.snapshot().await?;
    let mut names: Vec<String> = vec!["http-gateway".into()];
    names.extend(
        tree.children
            .iter()
            .filter(|c| c.status == "running")
            .map(|c| c.name.clone()),
    );
    Ok(Json(json!(names)))
}

async fn resources(_: Caller) -> Json<Value> {
    Json(json!(warden_domain::access::RESOURCE_TYPES))
}

async fn version(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"name": "warden", "version": state.config.version}))
}

pub(super) fn routes() -> Api {
    let s = "contenox: system";
    Api::new()
        .get(
            "/system/services",
            s,
            "The services running (the supervision tree's)",
            services,
        )
        .get(
            "/system/resources",
            s,
            "The resource kinds access control knows",
            resources,
        )
        .public_get("/version", s, "The server's name and version", version)
}
