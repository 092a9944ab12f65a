//! The error body every endpoint uses: `{"error": {"kind", "message"}}`, and the one
//! table that gives each kind its HTTP status ([`status`]). The console answers
//! with the same statuses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::Kind;
use crate::service::ServiceError;

/// The HTTP status of an error of each kind: sandgate's one table for HTTP. The
/// kinds of an execution's own outcome (a fault of the code) are answered 200 with
/// the outcome, not through this table; should one reach it, it is the request that
/// could not be served, a 422.
pub fn status(kind: Kind) -> StatusCode {
    match kind {
        Kind::Unauthorized => StatusCode::UNAUTHORIZED,
        Kind::Forbidden | Kind::ToolDenied | Kind::ModelDenied => StatusCode::FORBIDDEN,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::SessionBusy | Kind::Conflict | Kind::FileError => StatusCode::CONFLICT,
        Kind::RateLimited | Kind::BudgetExceeded => StatusCode::TOO_MANY_REQUESTS,
        Kind::InvalidRequest => StatusCode::BAD_REQUEST,
        Kind::Overloaded | Kind::Unavailable | Kind::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        Kind::UpstreamError | Kind::ToolError => StatusCode::BAD_GATEWAY,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Kind::Syntax
        | Kind::Exception
        | Kind::Timeout
        | Kind::OutOfFuel
        | Kind::OutOfMemory
        | Kind::StackOverflow
        | Kind::OutputLimit
        | Kind::CallLimit
        | Kind::Unsettled => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// The status of one service error: [`status`] of its kind, except where HTTP says
/// more about a request: a body too large (413) or too slow (408), and a workspace
/// quota passed (413).
pub fn status_of(error: &ServiceError) -> StatusCode {
    use crate::service::Rejected;
    match error {
        ServiceError::Rejected(Rejected::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        ServiceError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        ServiceError::File(message) if message.starts_with("EDQUOT") => StatusCode::PAYLOAD_TOO_LARGE,
        other => status(other.kind()),
    }
}

/// An HTTP error: status, kind and message, and `Retry-After` for overload.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: Kind,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error of `kind` with the status the table gives it.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self { status: status(kind), kind, message: message.into(), retry_after_secs: None }
    }

    /// The same error with another status, for what HTTP says more precisely (413,
    /// 408, 415).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        Self {
            status: status_of(&error),
            kind: error.kind(),
            retry_after_secs: error.retry_after_secs(),
            message: error.to_string(),
        }
    }
}

impl From<crate::service::Rejected> for ApiError {
    fn from(rejected: crate::service::Rejected) -> Self {
        ServiceError::from(rejected).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "kind": self.kind, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.kind == Kind::Unauthorized {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub(super) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(Kind::InvalidRequest, format!("no route for {}", uri.path())).with_status(StatusCode::NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_status_and_refusals_are_client_or_server_errors_as_they_should() {
        for kind in Kind::ALL {
            let code = status(kind).as_u16();
            assert!((400..600).contains(&code), "{kind}: {code}");
        }
        assert_eq!(status(Kind::RateLimited), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status(Kind::Overloaded), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(Kind::Unauthorized), StatusCode::UNAUTHORIZED);
    }
}
