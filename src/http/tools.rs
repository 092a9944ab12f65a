//! `GET /v1/tools?format=json|typescript|python`: the upstream MCP tools the caller may
//! use, as JSON (servers and tools with their schemas, declarations and Python stubs),
//! as one TypeScript declaration file, or as one Python stub module.

use crate::error::Kind;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::extract::Caller;
use super::{ApiError, AppState};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ToolsQuery {
    #[serde(default)]
    format: Option<String>,
}

pub(super) async fn list(
    State(app): State<AppState>,
    Caller(principal): Caller,
    query: Result<Query<ToolsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(Kind::InvalidRequest, e.body_text()))?;
    let (catalog, capabilities) = app.service.tool_catalog(&principal);
    let view = catalog.view_for(&capabilities);
    match query.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(serde_json::json!({
            "servers": view.servers(),
            "tools": view.tools().collect::<Vec<_>>(),
        }))
        .into_response()),
        "typescript" | "ts" => {
            let body = format!(
                "// Tools callable from sandgate code as `await tools.<server>.<tool>(args)`.\n{}",
                view.typescript()
            );
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
        }
        "python" | "py" => {
            let body = format!(
                "\"\"\"Tools callable from sandgate Python code as `await tools.<server>.<tool>(**args)`.\"\"\"\n\n{}",
                view.python()
            );
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
        }
        other => Err(ApiError::new(
            Kind::InvalidRequest,
            format!("unknown format `{other}`: use `json`, `typescript` or `python`"),
        )),
    }
}
