//! The floor `benches/load.sh` measures sandgate against: a bare axum server on the
//! same runtime settings that takes the same request body, parses it as JSON and
//! answers as `/v1/execute` would, with no sandbox, policy, ledger or middleware.
//!
//! ```text
//! cargo run --release --example floor -- 127.0.0.1:18421
//! ```

use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Request {
    code: String,
}

async fn execute(Json(request): Json<Request>) -> Json<Value> {
    Json(json!({ "ok": true, "result": 2, "code_bytes": request.code.len() }))
}

#[tokio::main]
async fn main() {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18421".into());
    let listener = tokio::net::TcpListener::bind(&address).await.expect("the address is free");
    let app =
        Router::new().route("/v1/execute", post(execute)).route("/healthz", axum::routing::get(|| async { "ok" }));
    axum::serve(listener, app).await.expect("the server runs");
}
