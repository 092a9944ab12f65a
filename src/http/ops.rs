//! Operator endpoints: liveness, readiness and Prometheus metrics. None needs auth.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use tokio_util::sync::CancellationToken;

use super::AppState;

/// Liveness: the process answers.
pub(super) async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness, for a load balancer: 200 while the store answers, 503 when it does not
/// or once this replica has begun to shut down (so it is taken out of rotation while
/// it drains).
pub(super) async fn readyz(State(app): State<AppState>, stopping: CancellationToken) -> impl IntoResponse {
    if stopping.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "stopping" })));
    }
    match app.service.ready().await {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "status": "ready" }))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unavailable", "error": e.to_string() })),
        ),
    }
}

pub(super) async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::prometheus().render())
}
