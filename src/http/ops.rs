//! Operator endpoints: liveness and Prometheus metrics. Neither needs auth.

use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

pub(super) async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

pub(super) async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::prometheus().render())
}
