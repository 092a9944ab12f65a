//! The model proxy's routes, one per wire format a client may speak:
//! `POST /v1/chat/completions` (OpenAI Chat Completions), `POST /v1/messages`
//! (Anthropic Messages), `POST /v1/responses` (OpenAI Responses),
//! `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent`
//! (Gemini), and `GET /v1/models`.
//!
//! Every SDK's way of sending a key works: `Authorization: Bearer`, `x-api-key`,
//! `x-goog-api-key` and Gemini's `?key=`. Any route reaches any model: sandgate
//! translates between formats when the provider speaks another. Errors come in the
//! error shape of the route's format, so SDKs raise their usual exceptions; an
//! upstream error is passed through as the provider sent it when the provider speaks
//! the route's format.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::AppState;
use crate::auth::Principal;
use crate::error::Kind;
use crate::model::{Answer, Call, Format, ModelError, Routed};
use crate::service::ServiceError;

/// The error `type` a route's SDKs know for each kind: sandgate's one table for the
/// model routes (see `model::wire::error_type`).
pub fn error_type(format: Format, kind: Kind) -> &'static str {
    crate::model::wire::error_type(format.wire(), kind)
}

/// An error of `kind` in the route's format. Its status is the kind's
/// (`super::error::status`), or the provider's own for an error passed on from it.
fn error(format: Format, status: StatusCode, kind: Kind, message: &str, retry_after: Option<u64>) -> Response {
    let body = crate::model::wire::error_body(format.wire(), status.as_u16(), kind, message);
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if kind == Kind::Unauthorized {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

async fn principal(
    app: &AppState,
    headers: &HeaderMap,
    format: Format,
) -> Result<std::sync::Arc<Principal>, Box<Response>> {
    principal_with(app, headers, None, format).await
}

/// The caller, by whichever credential header its SDK sends (or Gemini's `?key=`).
async fn principal_with(
    app: &AppState,
    headers: &HeaderMap,
    query_key: Option<&str>,
    format: Format,
) -> Result<std::sync::Arc<Principal>, Box<Response>> {
    let credential = super::credential(app, headers).or(query_key);
    app.service.authenticate(credential).await.map_err(|e: ServiceError| {
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

/// How a route names its model and streaming: in the body, or (Gemini) in the path.
enum Route {
    Body(Format),
    Gemini { model: String, stream: bool },
}

/// What a route asks of the model.
#[derive(Clone, Copy, PartialEq)]
enum Op {
    Generate,
    /// Count the request's input tokens (nothing is generated or charged).
    Count,
    /// Compact a Responses history (`/v1/responses/compact`).
    Compact,
}

impl Route {
    fn format(&self) -> Format {
        match self {
            Route::Body(format) => *format,
            Route::Gemini { .. } => Format::Gemini,
        }
    }
}

async fn proxy(
    app: AppState,
    headers: HeaderMap,
    query_key: Option<&str>,
    body: Body,
    route: Route,
    op: Op,
) -> Response {
    let format = route.format();
    let principal = match principal_with(&app, &headers, query_key, format).await {
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
    let mut call = match route {
        Route::Body(format) => Call::of(format, body),
        Route::Gemini { model, stream } => {
            Call { format: Format::Gemini, body, model, stream, headers: Vec::new(), agent_session: None }
        }
    };
    for name in crate::model::CLIENT_HEADERS {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            call.headers.push((name.to_string(), value.to_string()));
        }
    }
    call.agent_session = crate::request::agent_session(&headers);
    let answer = match op {
        Op::Generate => {
            let parent = crate::telemetry::trace::from_headers(&headers);
            app.service.model_call(principal, call, parent).await
        }
        Op::Count => app.service.count_tokens(principal, call).await,
        Op::Compact => app.service.compact(principal, call).await,
    };
    match answer {
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
    proxy(app, headers, None, body, Route::Body(Format::OpenAi), Op::Generate).await
}

pub(super) async fn messages(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    proxy(app, headers, None, body, Route::Body(Format::Anthropic), Op::Generate).await
}

/// `POST /v1/messages/count_tokens`.
pub(super) async fn count_tokens(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    proxy(app, headers, None, body, Route::Body(Format::Anthropic), Op::Count).await
}

/// `POST /v1/responses/compact`.
pub(super) async fn responses_compact(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    proxy(app, headers, None, body, Route::Body(Format::Responses), Op::Compact).await
}

pub(super) async fn responses(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    proxy(app, headers, None, body, Route::Body(Format::Responses), Op::Generate).await
}

#[derive(serde::Deserialize)]
pub(super) struct GeminiQuery {
    key: Option<String>,
}

/// `POST /v1beta/models/{model}:{action}` (and the same under `/v1/`, where newer
/// Gemini SDKs send it): `generateContent`,
/// `streamGenerateContent` (server-sent events with `?alt=sse`, which is the only
/// streaming form sandgate speaks), or `countTokens`.
pub(super) async fn gemini(
    State(app): State<AppState>,
    Path(target): Path<String>,
    Query(query): Query<GeminiQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some((model, action)) = target.rsplit_once(':') else {
        let message =
            format!("`{target}` names no method; use `MODEL:generateContent` or `MODEL:streamGenerateContent`");
        return error(Format::Gemini, StatusCode::NOT_FOUND, Kind::InvalidRequest, &message, None);
    };
    let (stream, op) = match action {
        "generateContent" => (false, Op::Generate),
        "streamGenerateContent" => (true, Op::Generate),
        "countTokens" => (false, Op::Count),
        other => {
            let message =
                format!("method `{other}` is not served; use generateContent, streamGenerateContent or countTokens");
            return error(Format::Gemini, StatusCode::NOT_FOUND, Kind::InvalidRequest, &message, None);
        }
    };
    let route = Route::Gemini { model: model.to_string(), stream };
    proxy(app, headers, query.key.as_deref(), body, route, op).await
}

/// `GET /v1/models`: OpenAI's list shape, or Anthropic's when the request carries
/// `anthropic-version` (as Claude Code's model discovery does). Both keep sandgate's
/// fields (tier, prices, context, capabilities, api).
pub(super) async fn list(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let anthropic = headers.contains_key("anthropic-version");
    let format = if anthropic { Format::Anthropic } else { Format::OpenAi };
    match principal(&app, &headers, format).await {
        Ok(principal) => {
            let list = app.service.models(&principal);
            if !anthropic {
                return Json(list).into_response();
            }
            let data: Vec<Value> = list["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|model| {
                    let mut entry = model.clone();
                    if let Some(entry) = entry.as_object_mut() {
                        entry.remove("object");
                        entry.remove("created");
                        entry.remove("owned_by");
                        entry.insert("type".into(), "model".into());
                        entry.insert("display_name".into(), model["id"].clone());
                        entry.insert("created_at".into(), "1970-01-01T00:00:00Z".into());
                    }
                    entry
                })
                .collect();
            let (first, last) = (data.first().map(|m| m["id"].clone()), data.last().map(|m| m["id"].clone()));
            Json(serde_json::json!({"data": data, "has_more": false, "first_id": first, "last_id": last}))
                .into_response()
        }
        Err(response) => *response,
    }
}
