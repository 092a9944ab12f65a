//! The error body every endpoint uses: `{"error": {"kind", "message"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::sandbox::{ErrorKind, Rejected};
use crate::service::ServiceError;

/// An HTTP error: status, kind and message, and `Retry-After` for overload.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    /// Ask for a bearer token (401).
    pub challenge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { status, kind: kind.as_str(), message: message.into(), retry_after_secs: None, challenge: false }
    }

    /// The same error under a request-level kind that is not an execution kind
    /// (`forbidden`, `rate_limited`, `not_found`).
    pub fn with_kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }
}

impl From<Rejected> for ApiError {
    fn from(rejected: Rejected) -> Self {
        let (status, retry) = match &rejected {
            Rejected::Invalid(_) => (StatusCode::BAD_REQUEST, None),
            Rejected::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, None),
            Rejected::Overloaded { retry_after_secs } => (StatusCode::SERVICE_UNAVAILABLE, Some(*retry_after_secs)),
            Rejected::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, Some(1)),
            Rejected::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
        };
        if retry.is_some() {
            crate::telemetry::record_rejection("overloaded");
        }
        Self {
            status,
            kind: rejected.kind().as_str(),
            message: rejected.to_string(),
            retry_after_secs: retry,
            challenge: false,
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        let kind = error.kind();
        let message = error.to_string();
        let (status, retry_after_secs, challenge) = match error {
            ServiceError::Rejected(rejected) => return rejected.into(),
            ServiceError::Unauthorized => (StatusCode::UNAUTHORIZED, None, true),
            ServiceError::Forbidden(_) => (StatusCode::FORBIDDEN, None, false),
            ServiceError::RateLimited { retry_after_secs, .. } => {
                crate::telemetry::record_rejection("rate_limited");
                (StatusCode::TOO_MANY_REQUESTS, Some(retry_after_secs), false)
            }
            ServiceError::TooManyRunning { .. } => {
                crate::telemetry::record_rejection("concurrency");
                (StatusCode::TOO_MANY_REQUESTS, Some(1), false)
            }
            ServiceError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, Some(1), false),
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, None, false),
            ServiceError::SessionBusy(_) => (StatusCode::CONFLICT, None, false),
            ServiceError::TooManySessions { .. } => (StatusCode::TOO_MANY_REQUESTS, None, false),
            ServiceError::Invalid(_) => (StatusCode::BAD_REQUEST, None, false),
            ServiceError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, None, false),
            ServiceError::File(message) if message.starts_with("EDQUOT") => {
                (StatusCode::PAYLOAD_TOO_LARGE, None, false)
            }
            ServiceError::File(_) => (StatusCode::CONFLICT, None, false),
            ServiceError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, None, false),
        };
        Self { status, kind, message, retry_after_secs, challenge }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "kind": self.kind, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub(super) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorKind::InvalidRequest, format!("no route for {}", uri.path()))
}
