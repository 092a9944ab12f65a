//! The HTTP surface (axum). Handlers are thin: they translate a request into one
//! library call and its result back.
//!
//! One file per surface: `execute.rs` (`POST /v1/execute`, JSON or SSE), `usage.rs`
//! (`GET /v1/usage`), `tools.rs` (`GET /v1/tools`), `sessions.rs` (`/v1/sessions`), `models.rs` (the model proxy),
//! `ops.rs` (`/healthz`, `/readyz`, `/metrics`), `mcp.rs` (`/mcp`, the Code Mode MCP server),
//! `error.rs` (the JSON error body and status mapping). `guard.rs` applies the Host,
//! Origin and Content-Type rules to every route, and `serve.rs` accepts connections
//! with their timeouts, cap and graceful shutdown. Every `/v1` route and `/mcp`
//! authenticate with `Authorization: Bearer <key>`.

mod approvals;
pub mod error;
mod execute;
pub mod extract;
pub mod guard;
mod handles;
mod keys;
mod mcp;
pub mod models;
pub(crate) mod oauth;
mod ops;
pub mod serve;
mod sessions;
mod tools;
mod usage;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio_util::sync::CancellationToken;

pub use crate::app::AppState;
pub use error::{status, ApiError};

use axum::http::{header, HeaderMap, StatusCode};

use crate::auth::Principal;
use crate::error::Kind;

/// Reads a request body up to `limit` bytes; a declared `Content-Length` over the
/// cap is refused before anything is read (413), and a body that does not arrive
/// within the body timeout is 408.
pub(crate) async fn read_body(headers: &HeaderMap, body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(Kind::InvalidRequest, format!("request body is larger than {limit} bytes"))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(error) = source {
            if let Some(timeout) = error.downcast_ref::<serve::BodyTimeout>() {
                return ApiError::new(Kind::InvalidRequest, timeout.to_string())
                    .with_status(StatusCode::REQUEST_TIMEOUT);
            }
            if error.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            source = error.source();
        }
        ApiError::new(Kind::InvalidRequest, format!("cannot read the request body: {e}"))
    })
}

/// Why a streamed request body broke off: its timeout (408) or anything else.
fn body_error(error: axum::Error) -> crate::service::BodyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(cause) = source {
        if let Some(timeout) = cause.downcast_ref::<serve::BodyTimeout>() {
            return crate::service::BodyError::TimedOut(timeout.to_string());
        }
        source = cause.source();
    }
    crate::service::BodyError::Failed(error.to_string())
}

/// The credential a request presents: `Authorization: Bearer`, else the key header
/// an SDK sends (`x-api-key`, `x-goog-api-key`), else the signed assertion an
/// identity-aware proxy adds (`[[auth.oidc]] header`).
pub(crate) fn credential<'h>(app: &AppState, headers: &'h HeaderMap) -> Option<&'h str> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    text(header::AUTHORIZATION.as_str())
        .and_then(crate::auth::bearer)
        .or_else(|| text("x-api-key"))
        .or_else(|| text("x-goog-api-key"))
        .or_else(|| app.service.identity().assertion_headers().find_map(text))
}

/// The caller of a request, from its credential.
async fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
    Ok(app.service.authenticate(credential(app, headers)).await?)
}

/// The application's routes, with `others` (the console's), behind the
/// Host/Origin/Content-Type guard (and CORS for the listed origins). `stopping` is
/// cancelled when the server begins to shut down.
pub fn router(state: AppState, stopping: CancellationToken, others: Router) -> Router {
    let guard = Arc::new(guard::Guard::new(&state.config.http, state.service.mode()));
    let mcp = mcp::router(&state, stopping.clone());
    let mut app = Router::new()
        .route("/v1/tools", get(tools::list))
        .route("/v1/execute", post(execute::execute))
        .route("/v1/executions", post(handles::start))
        .route("/v1/executions/{id}", get(handles::show).delete(handles::cancel))
        .route("/v1/executions/{id}/events", get(handles::events))
        .route("/v1/usage", get(usage::usage))
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/approvals/counts", get(approvals::counts))
        .route("/v1/approvals/{id}", get(approvals::show).post(approvals::decide))
        .route("/v1/me", get(keys::me))
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{name}", axum::routing::delete(keys::revoke))
        .route("/v1/auth/cli", get(oauth::cli_login))
        .route("/v1/sessions", post(sessions::open).get(sessions::list))
        .route("/v1/sessions/{id}", get(sessions::show).delete(sessions::end))
        .route("/v1/sessions/{id}/files", get(sessions::files))
        .route(
            "/v1/sessions/{id}/files/{*path}",
            get(sessions::get_file).put(sessions::put_file).delete(sessions::delete_file),
        )
        .route("/v1/chat/completions", post(models::chat_completions))
        .route("/v1/messages", post(models::messages))
        .route("/v1/messages/count_tokens", post(models::count_tokens))
        .route("/v1/responses", post(models::responses))
        .route("/v1/responses/compact", post(models::responses_compact))
        .route("/v1beta/models/{target}", post(models::gemini))
        .route("/v1/models/{target}", post(models::gemini))
        .route("/v1/models", get(models::list))
        .route(oauth::METADATA_PATH, get(oauth::server_metadata))
        .route(&format!("{}/mcp", oauth::METADATA_PATH), get(oauth::mcp_metadata))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(move |state| ops::readyz(state, stopping)))
        .route("/metrics", get(ops::metrics))
        .fallback(error::not_found)
        .with_state(state)
        .merge(mcp)
        .merge(others);
    if let Some(cors) = guard.cors() {
        app = app.layer(cors);
    }
    app.layer(axum::middleware::from_fn_with_state(guard, guard::enforce))
}

/// A response body that holds `guard` until the body ends or is dropped: how a
/// request or stream stays counted as in flight for exactly as long as it is.
pub(crate) struct Guarded<G> {
    inner: axum::body::Body,
    _guard: G,
}

impl<G> Guarded<G> {
    pub(crate) fn new(inner: axum::body::Body, guard: G) -> Self {
        Self { inner, _guard: guard }
    }
}

impl<G: Unpin> HttpBody for Guarded<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
