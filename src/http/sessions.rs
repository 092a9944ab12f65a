//! Sessions: `POST /v1/sessions {language?, ttl_s?}` opens one, `GET /v1/sessions`
//! lists the caller's, `GET /v1/sessions/{id}` shows one and `DELETE` ends it.
//! `POST /v1/execute {session_id, code}` runs in one. Another principal's session is
//! a 404, exactly as a session that does not exist.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::sandbox::{ErrorKind, Language};
use crate::service::SessionView as View;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Open {
    #[serde(default)]
    language: Language,
    ttl_s: Option<u64>,
}

pub(super) async fn open(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let principal = super::authenticate(&app, &headers)?;
    let bytes = super::read_body(&headers, body, app.config.http.max_body_bytes).await?;
    let request: Open = if bytes.iter().all(u8::is_ascii_whitespace) {
        Open::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest, format!("invalid request body: {e}"))
        })?
    };
    let session = app.service.open_session(&principal, request.language, request.ttl_s).await?;
    Ok((StatusCode::CREATED, Json(View::from(session))).into_response())
}

pub(super) async fn list(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let principal = super::authenticate(&app, &headers)?;
    let sessions: Vec<View> = app.service.sessions(&principal).await?.into_iter().map(View::from).collect();
    Ok(Json(serde_json::json!({ "sessions": sessions })).into_response())
}

pub(super) async fn show(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<View>, ApiError> {
    let principal = super::authenticate(&app, &headers)?;
    Ok(Json(app.service.session(&principal, &id).await?.into()))
}

pub(super) async fn end(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let principal = super::authenticate(&app, &headers)?;
    app.service.end_session(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
