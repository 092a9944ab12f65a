//! The HTTP surface (axum). Handlers are thin: they translate a request into one
//! library call and its result back.
//!
//! One file per surface: `execute.rs` (`POST /v1/execute`, JSON or SSE), `usage.rs`
//! (`GET /v1/usage`), `tools.rs` (`GET /v1/tools`), `models.rs` (the model proxy), `ops.rs` (`/healthz`, `/metrics`), `error.rs` (the JSON error
//! body and status mapping); `/mcp` is the Code Mode MCP server (`crate::mcp::server`).
//! Every `/v1` route and `/mcp` authenticates with `Authorization: Bearer <key>`.

mod error;
mod execute;
mod models;
mod ops;
mod tools;
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

/// `/mcp`: the Code Mode MCP server over streamable HTTP. Every request is
/// authenticated here (401 with `WWW-Authenticate: Bearer` otherwise) and carries its
/// principal into the MCP handler.
fn mcp_service(state: &AppState) -> Router {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

    let mut config = StreamableHttpServerConfig::default().with_max_request_body_bytes(state.config.max_body_bytes);
    config = match (&state.config.mcp.allowed_hosts, state.service.requires_keys()) {
        (Some(hosts), _) => config.with_allowed_hosts(hosts.clone()),
        (None, true) => config.disable_allowed_hosts(),
        (None, false) => config,
    };
    let service = state.service.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(crate::mcp::server::CodeMode::http(service.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    Router::new()
        .route_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(state.clone(), mcp_authenticate))
}

async fn mcp_authenticate(
    axum::extract::State(app): axum::extract::State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match authenticate(&app, request.headers()) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    let mcp = mcp_service(&state);
    Router::new()
        .route("/v1/tools", get(tools::list))
        .route("/v1/execute", post(execute::execute))
        .route("/v1/usage", get(usage::usage))
        .route("/v1/chat/completions", post(models::chat_completions))
        .route("/v1/messages", post(models::messages))
        .route("/v1/models", get(models::list))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .fallback(error::not_found)
        .with_state(state)
        .merge(mcp)
}
