//! `POST /v1/execute`: JSON in, JSON out; or, with `Accept: text/event-stream`, console
//! lines as `log` events while the code runs and one final `result` event carrying the
//! same body the JSON response would have.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::extract::Caller;
use super::{ApiError, AppState};
use crate::error::Kind;
use crate::request::ExecuteRequest;

pub(super) async fn execute(
    State(app): State<AppState>,
    Caller(principal): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = execute_request(&app, &headers, body).await?;
    let prepared = app.service.prepare(principal, request).await?;

    if !wants_event_stream(&headers) {
        let outcome = app.service.run(prepared, None).await?;
        // Paused at a call that waits for approval: its handle follows it from here.
        if outcome.status == Some("paused") {
            let location = format!("/v1/executions/{}", outcome.execution_id);
            return Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(outcome)).into_response());
        }
        return Ok(Json(outcome).into_response());
    }

    // The execution is cancelled if this stream is dropped (the client went away)
    // before its result is sent; it is recorded either way.
    let (lines_tx, lines_rx) = mpsc::channel(crate::service::LINE_BUFFER);
    let finished = app.service.start(prepared, Some(lines_tx));
    let logs = ReceiverStream::new(lines_rx)
        .map(|line| Ok::<_, Infallible>(Event::default().event("log").json_data(line).unwrap_or_default()));
    let result = futures::stream::once(async move {
        let event = match finished.await {
            Ok(outcome) => Event::default().event("result").json_data(outcome),
            Err(rejected) => {
                let error = ApiError::from(rejected);
                Event::default()
                    .event("error")
                    .json_data(serde_json::json!({ "error": { "kind": error.kind, "message": error.message } }))
            }
        };
        Ok::<_, Infallible>(event.unwrap_or_default())
    });
    Ok(Sse::new(logs.chain(result)).keep_alive(KeepAlive::default()).into_response())
}

/// The body of `POST /v1/execute` (and `POST /v1/executions`), read and parsed, with
/// the caller's trace context from the headers.
pub(super) async fn execute_request(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<ExecuteRequest, ApiError> {
    let bytes = super::read_body(headers, body, app.config.http.max_body_bytes).await?;
    let mut request: ExecuteRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(Kind::InvalidRequest, format!("invalid request body: {e}")))?;
    // The execution's span joins the caller's trace.
    request.trace = crate::telemetry::trace::from_headers(headers);
    request.agent_session = crate::request::agent_session(headers);
    Ok(request)
}

fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|part| part.trim().starts_with("text/event-stream")))
}
