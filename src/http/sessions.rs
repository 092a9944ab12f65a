//! Sessions: `POST /v1/sessions {language?, ttl_s?}` opens one, `GET /v1/sessions`
//! lists the caller's, `GET /v1/sessions/{id}` shows one and `DELETE` ends it.
//! `POST /v1/execute {session_id, code}` runs in one. Another principal's session is
//! a 404, exactly as a session that does not exist.
//!
//! A session's workspace: `GET /v1/sessions/{id}/files` lists it; `GET`, `PUT` and
//! `DELETE` on `/v1/sessions/{id}/files/{path}` read, write and remove one entry.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::extract::{Caller, JsonBody};
use super::{ApiError, AppState};
use crate::request::Language;
use futures::StreamExt;

use crate::service::{FileRead, SessionView as View};
use crate::store::StoredFile;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Open {
    #[serde(default)]
    language: Language,
    ttl_s: Option<u64>,
}

pub(super) async fn open(
    State(app): State<AppState>,
    Caller(principal): Caller,
    JsonBody(request): JsonBody<Open>,
) -> Result<Response, ApiError> {
    let session = app.service.open_session(&principal, request.language, request.ttl_s).await?;
    Ok((StatusCode::CREATED, Json(View::from(session))).into_response())
}

pub(super) async fn list(State(app): State<AppState>, Caller(principal): Caller) -> Result<Response, ApiError> {
    let sessions: Vec<View> = app.service.sessions(&principal).await?.into_iter().map(View::from).collect();
    Ok(Json(serde_json::json!({ "sessions": sessions })).into_response())
}

pub(super) async fn show(
    State(app): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
) -> Result<Json<View>, ApiError> {
    Ok(Json(app.service.session(&principal, &id).await?.into()))
}

pub(super) async fn end(
    State(app): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.service.end_session(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An entry of a workspace as the API lists it.
fn entry(file: &StoredFile) -> serde_json::Value {
    serde_json::json!({
        "path": file.path,
        "type": if file.dir { "directory" } else { "file" },
        "size": file.size,
    })
}

/// `GET /v1/sessions/{id}/files`: every entry of the session's workspace.
pub(super) async fn files(
    State(app): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let files = app.service.session_files(&principal, &id).await?;
    Ok(Json(serde_json::json!({ "files": files.iter().map(entry).collect::<Vec<_>>() })).into_response())
}

/// `GET /v1/sessions/{id}/files/{path}`: a file's bytes, streamed a chunk at a time,
/// or a directory's entries.
pub(super) async fn get_file(
    State(app): State<AppState>,
    Caller(principal): Caller,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    match app.service.session_file(&principal, &id, &path).await? {
        FileRead::Dir(entries) => {
            Ok(Json(serde_json::json!({ "files": entries.iter().map(entry).collect::<Vec<_>>() })).into_response())
        }
        FileRead::File(download) => {
            let length = download.file.size;
            let mut response = Body::from_stream(download.into_stream()).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            Ok(response)
        }
    }
}

/// `PUT /v1/sessions/{id}/files/{path}`: the body becomes the file (parent directories
/// are made), within the workspace's quotas. Nothing of the body is read before the
/// caller, the session and the quota are checked; then it is streamed to disk.
pub(super) async fn put_file(
    State(app): State<AppState>,
    Caller(principal): Caller,
    headers: HeaderMap,
    Path((id, path)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let stream = body.into_data_stream().map(|chunk| chunk.map_err(super::body_error));
    let size = app.service.upload(&principal, &id, &path, declared, stream).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "path": path, "size": size }))).into_response())
}

/// `DELETE /v1/sessions/{id}/files/{path}`: removes the entry and everything under it.
pub(super) async fn delete_file(
    State(app): State<AppState>,
    Caller(principal): Caller,
    Path((id, path)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    app.service.remove_session_file(&principal, &id, &path).await?;
    Ok(StatusCode::NO_CONTENT)
}
