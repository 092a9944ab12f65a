//! The HTTP surface (axum). Handlers are thin: they translate a request into one
//! library call and its result back.
//!
//! One file per surface: `execute.rs` (`POST /v1/execute`, JSON or SSE), `usage.rs`
//! (`GET /v1/usage`), `models.rs` (the model proxy), `ops.rs` (`/healthz`, `/metrics`), `error.rs` (the JSON error
//! body and status mapping). Every `/v1` route authenticates with
//! `Authorization: Bearer <key>`.

mod error;
mod execute;
mod models;
mod ops;
mod usage;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

pub use error::ApiError;

use axum::http::{header, HeaderMap};

use crate::auth::Principal;
use crate::config::Config;
use crate::service::Service;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    pub service: Arc<Service>,
    pub config: Arc<Config>,
}

/// Why a request body could not be read.
enum BodyError {
    /// Declared or actual length over the cap.
    TooLarge,
    Unreadable(String),
}

/// Reads a request body up to `limit` bytes; a declared `Content-Length` over the
/// cap is refused before anything is read.
async fn read_body(headers: &HeaderMap, body: axum::body::Body, limit: usize) -> Result<bytes::Bytes, BodyError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if e.to_string().contains("length limit") {
            BodyError::TooLarge
        } else {
            BodyError::Unreadable(e.to_string())
        }
    })
}

/// The caller of a request, from its bearer token.
fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
    let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(crate::auth::bearer);
    Ok(app.service.authenticate(token)?)
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/execute", post(execute::execute))
        .route("/v1/usage", get(usage::usage))
        .route("/v1/chat/completions", post(models::chat_completions))
        .route("/v1/messages", post(models::messages))
        .route("/v1/models", get(models::list))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .fallback(error::not_found)
        .with_state(state)
}
