//! A hook's tool server for benchmarks (`benches/workflow/run`): serves
//! `GET /openapi.json` naming one tool, `echo` (`POST /echo`), which
//! answers `{"text": "ok", "echo": <the request body>}` at once. Prints
//! `listening on <addr>` once bound.
//!
//! usage: cargo run --release --example tool_mock -- [127.0.0.1:0]

use axum::Json;
use axum::routing::{get, post};
use serde_json::{Value, json};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let app = axum::Router::new()
        .route(
            "/openapi.json",
            get(|| async {
                Json(json!({"openapi": "3.0.0", "paths": {"/echo": {"post": {
                    "operationId": "echo",
                    "requestBody": {"content": {"application/json": {}}}}}}}))
            }),
        )
        .route(
            "/echo",
            post(
                |Json(body): Json<Value>| async move { Json(json!({"text": "ok", "echo": body})) },
            ),
        );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
