//! The HTTP surface (axum). Handlers are thin: they translate a request into one
//! library call and its result back.
//!
//! One file per surface: `execute.rs` (`POST /v1/execute`, JSON or SSE), `ops.rs`
//! (`/healthz`, `/metrics`), `error.rs` (the JSON error body and status mapping).

mod error;
mod execute;
mod ops;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

pub use error::ApiError;

use crate::config::Config;
use crate::sandbox::Sandbox;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    pub sandbox: Arc<Sandbox>,
    pub config: Arc<Config>,
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/execute", post(execute::execute))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .fallback(error::not_found)
        .with_state(state)
}
