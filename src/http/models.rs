//! The model proxy's routes: `POST /v1/chat/completions` (OpenAI format),
//! `POST /v1/messages` (Anthropic format) and `GET /v1/models`.
//!
//! Both SDKs' ways of sending a key work: `Authorization: Bearer` and `x-api-key`.
//! Errors come in the error shape of the route's format, so SDKs raise their usual
//! exceptions; an upstream error is passed through as the provider sent it.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::auth::Principal;
use crate::error::Kind;
use crate::model::{Answer, Format, ModelError, Routed};
use crate::service::ServiceError;

/// The error `type` a route's SDKs know for each kind: sandgate's one table for the
/// model routes (their statuses are HTTP's, [`super::error::status`]). The OpenAI
/// format names the kind itself (`type` and `code`); the Anthropic format uses
/// Anthropic's types, with sandgate's kind beside them in `kind`.
pub fn error_type(format: Format, kind: Kind) -> &'static str {
    match format {
        Format::Anthropic => match kind {
            Kind::Unauthorized => "authentication_error",
            Kind::Forbidden | Kind::ModelDenied => "permission_error",
            Kind::NotFound => "not_found_error",
            Kind::RateLimited | Kind::BudgetExceeded => "rate_limit_error",
            Kind::Overloaded | Kind::Unavailable => "overloaded_error",
            Kind::InvalidRequest => "invalid_request_error",
            _ => "api_error",
        },
        _ => kind.as_str(),
    }
}

/// An error of `kind` in the route's format. Its status is the kind's
/// (`super::error::status`), or the provider's own for an error passed on from it.
fn error(format: Format, status: StatusCode, kind: Kind, message: &str, retry_after: Option<u64>) -> Response {
    let kind_type = error_type(format, kind);
    let body = match format {
        Format::Anthropic => {
            json!({"type": "error", "error": {"type": kind_type, "message": message, "kind": kind}})
        }
        _ => json!({"error": {"message": message, "type": kind_type, "code": kind_type, "param": null}}),
    };
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if kind == Kind::Unauthorized {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn principal(app: &AppState, headers: &HeaderMap, format: Format) -> Result<std::sync::Arc<Principal>, Box<Response>> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(crate::auth::bearer);
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    app.service.authenticate(bearer.or(api_key)).map_err(|e: ServiceError| {
        Box::new(error(format, super::error::status(e.kind()), e.kind(), &e.to_string(), None))
    })
}

fn routed_headers(response: &mut Response, routed: &Routed) {
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-sandgate-model", routed.model.clone()),
        ("x-sandgate-tier", routed.tier.clone()),
        ("x-sandgate-fallbacks", routed.fallbacks.len().to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

async fn proxy(app: AppState, headers: HeaderMap, body: Body, format: Format) -> Response {
    let principal = match principal(&app, &headers, format) {
        Ok(principal) => principal,
        Err(response) => return *response,
    };
    let limit = app.config.http.max_body_bytes;
    let bytes = match super::read_body(&headers, body, limit).await {
        Ok(bytes) => bytes,
        Err(refused) => return error(format, refused.status, refused.kind, &refused.message, None),
    };
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(body) => body,
        Err(e) => {
            let message = format!("invalid JSON body: {e}");
            return error(format, StatusCode::BAD_REQUEST, Kind::InvalidRequest, &message, None);
        }
    };
    let version = headers.get("anthropic-version").and_then(|v| v.to_str().ok()).map(str::to_string);
    let parent = crate::telemetry::trace::from_headers(&headers);
    match app.service.model_call(principal, format, body, version, parent).await {
        Ok(Answer::Whole { status, content_type, body, routed }) => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let content_type = content_type.unwrap_or_else(|| "application/json".into());
            if let Ok(value) = HeaderValue::from_str(&content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            routed_headers(&mut response, &routed);
            response
        }
        Ok(Answer::Stream { status, content_type, body, routed }) => {
            let mut response = Response::new(Body::from_stream(body));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let content_type = content_type.unwrap_or_else(|| "text/event-stream".into());
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&content_type) {
                headers.insert(header::CONTENT_TYPE, value);
            }
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
            routed_headers(&mut response, &routed);
            response
        }
        Err(ModelError::Upstream { status, body, content_type, message }) if !body.is_empty() => {
            tracing::warn!(%message, "model call failed upstream");
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(value) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
        Err(e) => {
            let retry = match &e {
                ModelError::RateLimited { retry_after_secs, .. } => Some(*retry_after_secs),
                ModelError::Store(_) => Some(1),
                _ => None,
            };
            let status = e
                .upstream_status()
                .and_then(|status| StatusCode::from_u16(status).ok())
                .unwrap_or_else(|| super::error::status(e.kind()));
            error(format, status, e.kind(), &e.to_string(), retry)
        }
    }
}

pub(super) async fn chat_completions(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    proxy(app, headers, body, Format::OpenAi).await
}

pub(super) async fn messages(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    proxy(app, headers, body, Format::Anthropic).await
}

pub(super) async fn list(State(app): State<AppState>, headers: HeaderMap) -> Response {
    match principal(&app, &headers, Format::OpenAi) {
        Ok(principal) => Json(app.service.models(&principal)).into_response(),
        Err(response) => *response,
    }
}
