//! Sessions: `POST /v1/sessions {language?, ttl_s?}` opens one, `GET /v1/sessions`
//! lists the caller's, `GET /v1/sessions/{id}` shows one and `DELETE` ends it.
//! `POST /v1/execute {session_id, code}` runs in one. Another principal's session is
//! a 404, exactly as a session that does not exist.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::sandbox::{ErrorKind, Language};
use crate::store::SessionRecord;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Open {
    #[serde(default)]
    language: Language,
    ttl_s: Option<u64>,
}

/// A session as the API shows it.
#[derive(Debug, Serialize)]
pub(super) struct View {
    session_id: String,
    language: String,
    created_at: String,
    last_used_at: String,
    expires_at: String,
    executions: u64,
    /// Bytes of its saved state (the changed pages of its memory).
    state_bytes: u64,
}

fn time(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

impl From<SessionRecord> for View {
    fn from(session: SessionRecord) -> Self {
        Self {
            created_at: time(session.created_at_ms),
            last_used_at: time(session.used_at_ms),
            expires_at: time(session.expires_at_ms()),
            session_id: session.id,
            language: session.language,
            executions: session.executions,
            state_bytes: session.image_bytes,
        }
    }
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
